"""Hitachi backend (``hspc.hitachi.com/v1``): one ``Replication`` per PVC, one ``ReplicationGroup``.

Every Replication of a namespace is asynchronous Universal Replicator (``UR``) with
``isConsistency: true``, the namespace's single ``consistencyGroupId``, the journal ids of
the policy and ``parentName`` pointing at the namespace's ReplicationGroup: one journal,
one write order for all the namespace's volumes.

Limit: the plug-in's resources state no maximum number of pairs per consistency group.
The array's does: every pair of one UR consistency group shares its journals, and a
Universal Replicator journal holds at most 8,192 data volumes (Hitachi's UR
documentation).  The operator therefore refuses a namespace of more than
:data:`MAX_PAIRS` PVCs, as a whole, before creating anything.
"""

from __future__ import annotations

from dr_kit.operator.backends import RESOURCES, owner_labels
from dr_kit.operator.policy import Policy

REPLICATION = RESOURCES["Replication"]
REPLICATION_GROUP = RESOURCES["ReplicationGroup"]
GROUP_ID_LABEL = "dr-kit.io/consistency-group-id"
MAX_PAIRS = 8192
LIMIT_REASON = "a Universal Replicator journal, shared by one consistency group, holds at " \
    "most 8,192 data volumes"


def replication_name(policy: Policy, namespace: str, pvc: str) -> str:
    """Name of the Replication object for ``pvc`` (the PVC's own name: one per PVC)."""
    return pvc


def replication_group(policy: Policy, namespace: str, group_id: int) -> dict:
    name = policy.group_name(namespace)
    return {
        "apiVersion": REPLICATION_GROUP.api_version,
        "kind": REPLICATION_GROUP.kind,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**owner_labels(namespace), policy.group_label_key: name,
                                GROUP_ID_LABEL: str(group_id)}},
        "spec": {"desiredPairState": policy.hitachi.desired_pair_state},
    }


def replication(policy: Policy, namespace: str, pvc: str, storage_class: str,
                group_id: int) -> dict:
    h = policy.hitachi
    group = policy.group_name(namespace)
    spec: dict = {
        "persistentVolumeClaimName": pvc,
        "storageClassName": storage_class,
        "copyGroupName": policy.copy_group_name(namespace),
        "copyPairName": policy.copy_pair_name(namespace, pvc),
        "replicationType": "UR",
        "isConsistency": True,
        "consistencyGroupId": group_id,
        "pvolJournalId": h.pvol_journal_id,
        "svolJournalId": h.svol_journal_id,
        "parentName": group,
    }
    if h.fence_level:
        spec["fenceLevel"] = h.fence_level
    return {
        "apiVersion": REPLICATION.api_version,
        "kind": REPLICATION.kind,
        "metadata": {"name": replication_name(policy, namespace, pvc), "namespace": namespace,
                     "labels": {**owner_labels(namespace), policy.group_label_key: group,
                                GROUP_ID_LABEL: str(group_id)}},
        "spec": spec,
    }
