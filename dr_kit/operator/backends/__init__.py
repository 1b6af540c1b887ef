"""Manifest builders, one module per replication backend, and the resource table they share.

A builder returns a plain manifest dict; it never talks to a cluster.  Every kind the
operator reads or writes is listed once in :data:`RESOURCES`, which the runner uses for
API paths and the RBAC renderer uses for rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from dr_kit.operator.policy import MANAGED_BY

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAMESPACE_LABEL = "dr-kit.io/namespace"  # on every owned object, cluster-scoped too


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def crd_name(self) -> str | None:
        """Name of the CustomResourceDefinition, None for built-in kinds."""
        if self.group in ("", "storage.k8s.io", "events.k8s.io"):
            return None
        return f"{self.plural}.{self.group}"


_REPL = "replication.storage.openshift.io"
_HSPC = "hspc.hitachi.com"

RESOURCES: dict[str, Resource] = {r.kind: r for r in (
    Resource("Namespace", "", "v1", "namespaces", False),
    Resource("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", True),
    Resource("Event", "", "v1", "events", True),
    Resource("StorageClass", "storage.k8s.io", "v1", "storageclasses", False),
    Resource("VolumeGroupReplication", _REPL, "v1alpha1", "volumegroupreplications", True),
    Resource("VolumeGroupReplicationClass", _REPL, "v1alpha1",
             "volumegroupreplicationclasses", False),
    Resource("VolumeReplication", _REPL, "v1alpha1", "volumereplications", True),
    Resource("VolumeReplicationClass", _REPL, "v1alpha1", "volumereplicationclasses", False),
    Resource("Replication", _HSPC, "v1", "replications", True),
    Resource("ReplicationGroup", _HSPC, "v1", "replicationgroups", True),
)}

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
