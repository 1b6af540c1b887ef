"""The embedded lab: two sites on one machine, each reached through a kubeconfig context.

``connect`` (what the notebooks call), ``site`` and ``Lab`` (the lab's controls) load on
first use, so the lab's processes (API servers, plug-ins) do not import the analyst
library they do not need.
"""

from typing import Any

_LAZY = {"Lab": "dr_kit.lab.controls", "connect": "dr_kit.lab.controls",
         "site": "dr_kit.lab.controls"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dr_kit.lab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["Lab", "connect", "site"]
