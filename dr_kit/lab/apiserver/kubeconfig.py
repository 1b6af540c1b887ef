"""Writing a kubeconfig with one context (cluster + bearer-token user) per site."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml


def kubeconfig_dict(
    sites: Mapping[str, tuple[str, str]], current: str | None = None, namespace: str = "default"
) -> dict:
    """The kubeconfig document for ``{context_name: (server_url, token)}``."""
    if not sites:
        raise ValueError("at least one site is needed")
    current = current or next(iter(sites))
    if current not in sites:
        raise ValueError(f"current context {current!r} is not one of {sorted(sites)}")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": n, "cluster": {"server": url}} for n, (url, _) in sites.items()],
        "users": [{"name": n, "user": {"token": tok}} for n, (_, tok) in sites.items()],
        "contexts": [
            {"name": n, "context": {"cluster": n, "user": n, "namespace": namespace}}
            for n in sites
        ],
        "current-context": current,
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    sites: Mapping[str, tuple[str, str]],
    current: str | None = None,
    namespace: str = "default",
) -> Path:
    """Write the kubeconfig atomically with mode 0600 (it holds tokens). Returns the path."""
    path = Path(path)
    text = yaml.safe_dump(kubeconfig_dict(sites, current, namespace), sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
