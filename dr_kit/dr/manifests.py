"""What DR operations write to the clusters, as plain manifests (pure: no I/O).

- **Roles** of a site's copy of the consistency group.  csi-addons: the
  VolumeGroupReplication's ``spec.replicationState`` (``primary``: this site's copy is the
  one the application writes; ``secondary``: demoted, its volumes refuse writes;
  ``resync``: secondary, and resynchronised from the other site's primary copy).  The
  Hitachi backend carries the same roles in its ReplicationGroup's ``desiredPairState``
  (``pair`` / ``svol`` / ``resync``; the lab's plug-in reads them, see docs).
- **A DR test's environment**: the snapshot group's volume snapshots imported into the
  test namespace (pre-provisioned VolumeSnapshotContents with ``deletionPolicy: Retain``
  and VolumeSnapshots bound to them, the standard way to restore a snapshot in another
  namespace), PVCs restored from them under the production PVCs' names, and a copy of
  the namespace's Deployments/StatefulSets.
- **Scaling** an application down (its replica count remembered in an annotation) and up.

Every manifest here validates against the upstream CRDs in ``dr_kit/crds`` (tests).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from dr_kit.errors import InvalidInput
from dr_kit.kube import RESOURCES, SNAP_GROUP
from dr_kit.operator.backends import csi_addons, hitachi, owner_labels
from dr_kit.operator.policy import Policy

ROLES = ("primary", "secondary", "resync")
ROLE_VALUE = {"csi-addons": {"primary": "primary", "secondary": "secondary", "resync": "resync"},
              "hitachi": {"primary": "pair", "secondary": "svol", "resync": "resync"}}
ROLE_KIND = {"csi-addons": "VolumeGroupReplication", "hitachi": "ReplicationGroup"}
REPLICAS_ANNOTATION = "dr-kit.io/replicas"  # an application's replicas, kept while scaled to 0
DRTEST_LABEL = "dr-kit.io/dr-test-of"  # on everything a DR test creates: the tested namespace
APP_KINDS = ("Deployment", "StatefulSet")


def _check(backend: str, role: str) -> None:
    if backend not in ROLE_VALUE:
        raise InvalidInput(f"unknown backend {backend!r}; choose one of {', '.join(ROLE_VALUE)}")
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def role_patch(backend: str, role: str) -> tuple[str, dict[str, Any]]:
    """(kind, merge patch) that asks a site's copy to take ``role``."""
    _check(backend, role)
    if backend == "csi-addons":
        return "VolumeGroupReplication", {"spec": {"replicationState": ROLE_VALUE[backend][role]}}
    return "ReplicationGroup", {"spec": {"desiredPairState": ROLE_VALUE[backend][role]}}


def role_of(backend: str, obj: Mapping[str, Any] | None) -> str | None:
    """The role a site's role object asks for (None when there is none)."""
    if not obj:
        return None
    spec = obj.get("spec") or {}
    value = spec.get("replicationState" if backend == "csi-addons" else "desiredPairState")
    back = {v: k for k, v in ROLE_VALUE[backend].items()}
    if backend == "hitachi" and value == "split":
        return "primary"  # a split primary is still the primary copy
    return back.get(str(value)) if value is not None else "primary"


def observed_role(backend: str, obj: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """(role the storage plug-in reports: ``primary``/``secondary``/None, replicating and
    in sync).  csi-addons: ``status.state`` and the Completed condition; Hitachi: the
    ReplicationGroup's ``status.pairState`` with ``status.role`` when the plug-in says."""
    if not obj:
        return None, False
    st = obj.get("status") or {}
    if backend == "csi-addons":
        state = str(st.get("state") or "").lower() or None
        done = any(c.get("type") == "Completed" and c.get("status") == "True"
                   for c in st.get("conditions") or [])
        return (state if state in ("primary", "secondary") else None), done
    role = str(st.get("role") or "").lower() or None
    return (role if role in ("primary", "secondary") else None), st.get("pairState") == "PAIR"


def status_note(obj: Mapping[str, Any] | None) -> str:
    """What the plug-in's status says beside the role, for progress and timeout messages:
    its message, else Hitachi's pair state (a ReplicationGroup carries no message), else
    that there is no status yet."""
    st = (obj or {}).get("status") or {}
    if st.get("message"):
        return str(st["message"])
    if st.get("pairState"):
        return f"pair state {st['pairState']}"
    return "no status yet"


def role_object(backend: str, policy: Policy, namespace: str, role: str, *,
                class_name: str | None = None) -> dict[str, Any]:
    """The whole role object for a site that has none yet (the body the operator makes
    there when the site is primary, so the operator finds it its own)."""
    _check(backend, role)
    if backend == "csi-addons":
        if not class_name:
            raise InvalidInput("a VolumeGroupReplication needs its class name")
        body = csi_addons.volume_group_replication(policy, namespace, class_name)
        body["spec"]["replicationState"] = ROLE_VALUE[backend][role]
        return body
    raise InvalidInput("the Hitachi role object is copied from the other site (role_copy)")


def role_copy(obj: Mapping[str, Any], role: str, backend: str) -> dict[str, Any]:
    """A role object of the other site (VolumeGroupReplication, ReplicationGroup or one of
    its Replications) for this site: identity and spec kept, server fields and status
    dropped, the role set."""
    _check(backend, role)
    out = _clean(obj)
    spec = out.setdefault("spec", {})
    if obj.get("kind") == "VolumeGroupReplication":
        spec["replicationState"] = ROLE_VALUE[backend][role]
    elif obj.get("kind") == "ReplicationGroup":
        spec["desiredPairState"] = ROLE_VALUE[backend][role]
    return out


def class_copy(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A replication class of the other site for this one (cluster-scoped, spec kept)."""
    return _clean(obj)


def _clean(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("status",)}
    md = out.setdefault("metadata", {})
    for k in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
              "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "ownerReferences",
              "finalizers"):
        md.pop(k, None)
    ann = {k: v for k, v in (md.get("annotations") or {}).items()
           if not k.startswith(("storage.dr-kit.io/", "lab.dr-kit.io/",
                                "kubectl.kubernetes.io/last-applied"))}
    if ann:
        md["annotations"] = ann
    else:
        md.pop("annotations", None)
    if out.get("kind") in RESOURCES:
        out.setdefault("apiVersion", RESOURCES[out["kind"]].api_version)
    return out


def hitachi_members(policy: Policy, namespace: str, pvcs: Iterable[str], storage_class: str,
                    group_id: int) -> list[dict[str, Any]]:
    """The Hitachi Replications of a namespace (one per PVC), as the operator makes them."""
    return [hitachi.replication(policy, namespace, p, storage_class, group_id) for p in sorted(pvcs)]


# -- a DR test's environment -----------------------------------------------------------------


def test_namespace(namespace: str, test_ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": test_ns, "labels": {DRTEST_LABEL: namespace,
                                                     "app.kubernetes.io/managed-by": "dr-kit"}}}


def snapshot_imports(namespace: str, test_ns: str, volume_snapshots: Mapping[str, Mapping[str, Any]],
                     contents: Mapping[str, Mapping[str, Any]], *, prefix: str
                     ) -> list[dict[str, Any]]:
    """Pre-provisioned VolumeSnapshotContents (Retain: deleting them leaves the array's
    snapshot to its group) and VolumeSnapshots in the test namespace, one per source PVC.

    ``volume_snapshots``: source PVC -> its VolumeSnapshot in the production namespace;
    ``contents``: source PVC -> that snapshot's bound VolumeSnapshotContent."""
    out: list[dict[str, Any]] = []
    labels = {DRTEST_LABEL: namespace, "app.kubernetes.io/managed-by": "dr-kit"}
    for pvc in sorted(volume_snapshots):
        content = contents.get(pvc) or {}
        handle = ((content.get("status") or {}).get("snapshotHandle")
                  or ((content.get("spec") or {}).get("source") or {}).get("snapshotHandle"))
        driver = (content.get("spec") or {}).get("driver")
        if not handle or not driver:
            raise InvalidInput(f"the volume snapshot of PVC {pvc} has no snapshot handle yet")
        name = f"{prefix}-{pvc}"[:253]
        vsc: dict[str, Any] = {"apiVersion": RESOURCES["VolumeSnapshotContent"].api_version,
               "kind": "VolumeSnapshotContent",
               "metadata": {"name": f"{test_ns}-{name}"[:253], "labels": dict(labels)},
               "spec": {"deletionPolicy": "Retain", "driver": driver,
                        "source": {"snapshotHandle": handle},
                        "volumeSnapshotRef": {"kind": "VolumeSnapshot", "apiVersion":
                                              RESOURCES["VolumeSnapshot"].api_version,
                                              "name": name, "namespace": test_ns}}}
        cls = (content.get("spec") or {}).get("volumeSnapshotClassName")
        if cls:
            vsc["spec"]["volumeSnapshotClassName"] = cls
        vs = {"apiVersion": RESOURCES["VolumeSnapshot"].api_version, "kind": "VolumeSnapshot",
              "metadata": {"name": name, "namespace": test_ns, "labels": {**labels, "dr-kit.io/pvc": pvc}},
              "spec": {"source": {"volumeSnapshotContentName": vsc["metadata"]["name"]}}}
        out += [vsc, vs]
    return out


def restored_pvcs(test_ns: str, sources: Mapping[str, Mapping[str, Any]], snapshot_of: Mapping[str, str],
                  namespace: str) -> list[dict[str, Any]]:
    """PVCs in the test namespace under the production PVCs' names (so the application's
    copy mounts them unchanged), each restored from its imported VolumeSnapshot."""
    out = []
    for pvc, src in sorted(sources.items()):
        spec = src.get("spec") or {}
        size = (((src.get("status") or {}).get("capacity") or {}).get("storage")
                or ((spec.get("resources") or {}).get("requests") or {}).get("storage"))
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc, "namespace": test_ns,
                         "labels": {DRTEST_LABEL: namespace, "app.kubernetes.io/managed-by": "dr-kit"}},
            "spec": {"accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": str(size)}},
                     "dataSource": {"apiGroup": SNAP_GROUP, "kind": "VolumeSnapshot",
                                    "name": snapshot_of[pvc]}}}
        if spec.get("storageClassName"):
            body["spec"]["storageClassName"] = spec["storageClassName"]
        out.append(body)
    return out


def application_copy(apps: Iterable[Mapping[str, Any]], test_ns: str, namespace: str) -> list[dict[str, Any]]:
    """The namespace's Deployments and StatefulSets for the test namespace: same pods, same
    claim names (the restored PVCs carry them), one replica, labelled as a DR test's."""
    out = []
    for app in apps:
        if app.get("kind") not in APP_KINDS:
            continue
        body = _clean(app)
        body.setdefault("apiVersion", "apps/v1")
        md = body["metadata"]
        md["namespace"] = test_ns
        md["labels"] = {**(md.get("labels") or {}), DRTEST_LABEL: namespace}
        md.pop("annotations", None)
        body.setdefault("spec", {})["replicas"] = 1
        out.append(body)
    return out


def scale_patch(replicas: int, remember: int | None = None) -> dict[str, Any]:
    """A merge patch setting an application's replicas (remembering the former count)."""
    patch: dict[str, Any] = {"spec": {"replicas": int(replicas)}}
    if remember is not None:
        patch["metadata"] = {"annotations": {REPLICAS_ANNOTATION: str(int(remember))}}
    return patch


__all__ = ["ROLES", "ROLE_VALUE", "ROLE_KIND", "REPLICAS_ANNOTATION", "DRTEST_LABEL",
           "role_patch", "role_of", "observed_role", "status_note", "role_object", "role_copy", "class_copy",
           "hitachi_members", "test_namespace", "snapshot_imports", "restored_pvcs",
           "application_copy", "scale_patch", "owner_labels"]
