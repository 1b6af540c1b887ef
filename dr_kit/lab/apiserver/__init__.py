"""A Kubernetes-API-compatible control plane for one lab site.

Small and focused: it serves the kinds dr_kit uses (core volumes and namespaces, storage
classes, deployments and every CRD in ``dr_kit/crds``) so that the official ``kubernetes``
client and kubectl work against a lab site exactly as against a real cluster.

Public surface::

    start_in_thread(state_dir, token, host="127.0.0.1", port=0, tls=True) -> ServerHandle
    write_kubeconfig(path, {"main": handle.kubeconfig_site(), ...}, current="main") -> Path
    read_ca(state_dir) -> str   # PEM of the site's self-signed serving certificate
    python -m dr_kit.lab.apiserver --state-dir DIR --token TOKEN [--port N] [--ready-file F]
    python -m dr_kit.lab.apiserver.bench   # list and watch figures at 1,000 PVCs
"""

from .kubeconfig import kubeconfig_dict, write_kubeconfig
from .runner import ServerHandle, check_loopback, start_in_thread
from .selectors import match_selector
from .store import StateCorrupt, StateDirBusy
from .tls import read_ca

__all__ = [
    "ServerHandle",
    "StateCorrupt",
    "StateDirBusy",
    "check_loopback",
    "kubeconfig_dict",
    "match_selector",
    "read_ca",
    "start_in_thread",
    "write_kubeconfig",
]
