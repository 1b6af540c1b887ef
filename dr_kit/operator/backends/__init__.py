"""Manifest builders, one module per replication backend, and the resource table they share.

A builder returns a plain manifest dict; it never talks to a cluster.  Every kind the
operator reads or writes is listed once in :data:`dr_kit.kube.RESOURCES`, which the runner
uses for API paths and the RBAC renderer uses for rules.
"""

from __future__ import annotations

from dr_kit.kube import RESOURCES, Resource
from dr_kit.operator.policy import MANAGED_BY

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAMESPACE_LABEL = "dr-kit.io/namespace"  # on every owned object, cluster-scoped too


# Custom resources each backend needs on the cluster; missing ones refuse protection.
# (VolumeReplicationClass is needed too when the policy names one; VolumeReplication is
# only read, to spot PVCs already replicated on their own, and may be absent.)
REQUIRED_KINDS: dict[str, tuple[str, ...]] = {
    "csi-addons": ("VolumeGroupReplication", "VolumeGroupReplicationClass"),
    "hitachi": ("Replication", "ReplicationGroup"),
}


def owner_labels(namespace: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, OWNER_NAMESPACE_LABEL: namespace}


def is_owned(obj: dict) -> bool:
    return (obj.get("metadata", {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


__all__ = ["MANAGED_BY_LABEL", "OWNER_NAMESPACE_LABEL", "REQUIRED_KINDS", "RESOURCES",
           "Resource", "is_owned", "owner_labels"]
