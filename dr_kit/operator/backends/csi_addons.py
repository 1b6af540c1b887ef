"""csi-addons backend: one VolumeGroupReplication per protected namespace.

The group's selector is a single label the operator owns (``<group label>=<group name>``),
so it never has to change (upstream makes ``spec.source`` immutable): PVCs join and leave
the group by gaining or losing that label.  Upstream allows at most :data:`MAX_PVCS` PVCs in
one group; a namespace with more is refused as a whole (never a half group).
"""

from __future__ import annotations

from collections.abc import Mapping

from dr_kit.operator.backends import RESOURCES, owner_labels
from dr_kit.operator.policy import Policy

VGR = RESOURCES["VolumeGroupReplication"]
# "The maximum number of allowed PVCs in the group is 100." (upstream API,
# VolumeGroupReplication status.persistentVolumeClaimsRefList)
MAX_PVCS = 100
LIMIT_REASON = "the csi-addons VolumeGroupReplication API allows 100 PVCs per group"
VGRC = RESOURCES["VolumeGroupReplicationClass"]
VRC = RESOURCES["VolumeReplicationClass"]


def group_selector(policy: Policy, namespace: str) -> dict:
    return {"matchLabels": {policy.group_label_key: policy.group_name(namespace)}}


def volume_group_replication(policy: Policy, namespace: str, class_name: str,
                             volume_replication_class: str | None = None) -> dict:
    name = policy.group_name(namespace)
    spec: dict = {
        "volumeGroupReplicationClassName": class_name,
        "replicationState": policy.replication_state,
        "autoResync": policy.auto_resync,
        "source": {"selector": group_selector(policy, namespace)},
    }
    if volume_replication_class:
        spec["volumeReplicationClassName"] = volume_replication_class
    return {
        "apiVersion": VGR.api_version,
        "kind": VGR.kind,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**owner_labels(namespace), policy.group_label_key: name}},
        "spec": spec,
    }


def volume_group_replication_class(name: str, provisioner: str,
                                   parameters: Mapping[str, str], namespace: str) -> dict:
    return _class(VGRC.api_version, VGRC.kind, name, provisioner, parameters, namespace)


def volume_replication_class(name: str, provisioner: str, parameters: Mapping[str, str],
                             namespace: str) -> dict:
    return _class(VRC.api_version, VRC.kind, name, provisioner, parameters, namespace)


def _class(api_version: str, kind: str, name: str, provisioner: str,
           parameters: Mapping[str, str], namespace: str) -> dict:
    spec: dict = {"provisioner": provisioner}
    if parameters:
        spec["parameters"] = {str(k): str(v) for k, v in parameters.items()}
    # The namespace label records who asked for the class first; classes are shared and
    # are never deleted by the operator.
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "labels": owner_labels(namespace)}, "spec": spec}
