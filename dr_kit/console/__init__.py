"""The live DR console: both sites side by side, protection, lag, snapshot groups, analytics.

``dr-kit console`` serves it with Voilà on 127.0.0.1 (:mod:`dr_kit.console.server`); the
dashboard itself (:class:`Console`) is an ipywidget tree that a notebook can display too.
The notebook Voilà runs (``console.ipynb``, beside this file) only connects to the sites
and shows a :class:`Console`; everything else lives here and is tested without a browser.
"""

from __future__ import annotations

from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "console.ipynb"

_LAZY = {"Console": "dr_kit.console.dashboard", "SiteActions": "dr_kit.console.dashboard",
         "failure": "dr_kit.console.dashboard",
         "read_state": "dr_kit.console.state", "namespace_rows": "dr_kit.console.state"}


def __getattr__(name: str):  # noqa: ANN202 - widgets and plots load on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dr_kit.console' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["Console", "SiteActions", "failure", "read_state", "namespace_rows", "NOTEBOOK"]
