"""Writing a kubeconfig with one context (cluster + bearer-token user) per site."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

# (url, token), (url, token, ca_pem) or (url, token, ca_file)
Site = Sequence[str | os.PathLike[str] | None]


def _cluster(site: Site) -> dict:
    url, ca = site[0], (site[2] if len(site) > 2 else None)
    cluster: dict = {"server": str(url)}
    if isinstance(ca, os.PathLike):
        # named, not embedded: a client given the data writes it to a temporary file of
        # its own, which a process killed with SIGKILL leaves behind
        cluster["certificate-authority"] = str(Path(ca).resolve())
    elif ca:
        cluster["certificate-authority-data"] = base64.b64encode(ca.encode()).decode()
    elif str(url).startswith("https://"):
        cluster["insecure-skip-tls-verify"] = True
    return cluster


def kubeconfig_dict(
    sites: Mapping[str, Site], current: str | None = None, namespace: str = "default"
) -> dict:
    """The kubeconfig document for ``{context_name: (server_url, token[, ca])}``, where
    ``ca`` is the CA's PEM (embedded) or the path of its file (named).

    An https site given without its CA is written with ``insecure-skip-tls-verify``.
    """
    if not sites:
        raise ValueError("at least one site is needed")
    current = current or next(iter(sites))
    if current not in sites:
        raise ValueError(f"current context {current!r} is not one of {sorted(sites)}")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": n, "cluster": _cluster(site)} for n, site in sites.items()],
        "users": [{"name": n, "user": {"token": site[1]}} for n, site in sites.items()],
        "contexts": [
            {"name": n, "context": {"cluster": n, "user": n, "namespace": namespace}}
            for n in sites
        ],
        "current-context": current,
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    sites: Mapping[str, Site],
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
