"""Where the package's files are: the seed catalog (``data/``) and the walkthrough notebooks.

The repository's top-level ``data/`` and ``notebooks/`` are their single source.  A built
wheel carries copies of them inside the package (``dr_kit/_bundle/``, made at build time
by ``setup.py``); an editable install or a source checkout reads them where they are.
An environment variable given for a resource always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from dr_kit.errors import NotFound

PACKAGE = Path(__file__).resolve().parent
BUNDLE = PACKAGE / "_bundle"
CHECKOUT = PACKAGE.parent


def resource_dir(name: str, *, env: str | None = None) -> Path:
    """The folder ``name`` (``data`` or ``notebooks``): ``$env``, the package's bundled copy,
    or the checkout's folder."""
    if env and os.environ.get(env):
        return Path(os.environ[env])
    bundled = BUNDLE / name
    if bundled.is_dir():
        return bundled
    here = CHECKOUT / name
    if here.is_dir() and (CHECKOUT / "pyproject.toml").is_file():
        return here
    hint = f"; set {env} to its folder" if env else ""
    raise NotFound(f"the package's {name}/ folder is missing (neither {bundled} nor {here})"
                   f"{hint}")


def data_dir() -> Path:
    """The seed catalog's folder (``$DR_KIT_DATA`` first)."""
    return resource_dir("data", env="DR_KIT_DATA")


def notebooks_dir() -> Path:
    """The walkthrough notebooks' folder (``$DR_KIT_NOTEBOOKS`` first)."""
    return resource_dir("notebooks", env="DR_KIT_NOTEBOOKS")


__all__ = ["data_dir", "notebooks_dir", "resource_dir"]
