"""The operator's pure reconcile function, on plain dicts: every refusal, join/leave,
unlabel, idempotence and restart convergence, for both backends."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from dr_kit.errors import InvalidInput
from dr_kit.operator.backends import RESOURCES
from dr_kit.operator.policy import HitachiSettings, Policy, ReplicationClass
from dr_kit.operator.reconcile import (
    BACKEND_ANNOTATION,
    PROTECTED,
    PROTECTING,
    REFUSED,
    UNPROTECTED,
    WAITING,
    Plan,
    reconcile,
    selector_matches,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LABEL = {"dr-kit.io/backup": "ConsistentCopyToCloud"}
GROUP_KEY = "dr-kit.io/consistency-group"
CSI_KINDS = {"VolumeGroupReplication", "VolumeGroupReplicationClass", "VolumeReplication",
             "VolumeReplicationClass"}
ALL_KINDS = CSI_KINDS | {"Replication", "ReplicationGroup"}


def merge(target: dict, patch: dict) -> dict:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class Cluster:
    """Just enough of a cluster to apply plans: objects keyed by (kind, namespace, name)."""

    def __init__(self, namespace: str = "shop", pvcs=("sales-db", "stock-db"),
                 labels: dict | None = None, storage_class: str = "lab-array"):
        self.objects: dict[tuple, dict] = {}
        self.ns = namespace
        self.add({"kind": "Namespace", "metadata": {"name": namespace,
                                                    "labels": dict(labels or {})}})
        self.add({"kind": "StorageClass", "metadata": {"name": "lab-array"},
                  "provisioner": "array.lab.dr-kit.io"})
        self.add({"kind": "StorageClass", "metadata": {"name": "plain"},
                  "provisioner": "plain.example.com"})
        for p in pvcs:
            self.add_pvc(p, storage_class)

    def add(self, obj: dict) -> dict:
        md = obj["metadata"]
        ns = md.get("namespace") if RESOURCES[obj["kind"]].namespaced else None
        self.objects[(obj["kind"], ns, md["name"])] = obj
        return obj

    def add_pvc(self, name: str, sc: str | None = "lab-array", labels=None) -> dict:
        spec = {} if sc is None else {"storageClassName": sc}
        return self.add({"kind": "PersistentVolumeClaim",
                         "metadata": {"name": name, "namespace": self.ns,
                                      "labels": dict(labels or {})}, "spec": spec})

    def of(self, kind: str) -> list[dict]:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    @property
    def namespace(self) -> dict:
        return self.objects[("Namespace", None, self.ns)]

    def label(self, value: str | None = "ConsistentCopyToCloud") -> None:
        labels = self.namespace["metadata"].setdefault("labels", {})
        if value is None:
            labels.pop("dr-kit.io/backup", None)
        else:
            labels["dr-kit.io/backup"] = value

    def reconcile(self, policy: Policy | None = None, **kw) -> Plan:
        kw.setdefault("now", T0)
        kw.setdefault("available_kinds", ALL_KINDS)
        existing = [o for o in self.objects.values() if o["kind"] in ALL_KINDS]
        return reconcile(self.namespace, self.of("PersistentVolumeClaim"), existing,
                         self.of("StorageClass"), policy or Policy(), **kw)

    def apply(self, plan: Plan) -> None:
        for a in plan.actions:
            key = (a.ref.kind, a.ref.namespace, a.ref.name)
            if a.op == "create":
                assert key not in self.objects, f"duplicate create of {a.ref}"
                self.objects[key] = copy.deepcopy(a.body)
            elif a.op == "patch":
                merge(self.objects[key], a.body)
            else:
                del self.objects[key]
        if plan.status_changed:
            ann = self.namespace["metadata"].setdefault("annotations", {})
            ann["dr-kit.io/protection-status"] = plan.status_json()

    def converge(self, policy: Policy | None = None, **kw) -> Plan:
        plan = self.reconcile(policy, **kw)
        self.apply(plan)
        again = self.reconcile(policy, **kw)
        assert again.changes_nothing, [str(a) for a in again.actions]
        return plan

    def status(self) -> dict:
        return json.loads(self.namespace["metadata"]["annotations"]["dr-kit.io/protection-status"])


def pvc_labels(cluster: Cluster) -> dict[str, str | None]:
    return {p["metadata"]["name"]: p["metadata"]["labels"].get(GROUP_KEY)
            for p in cluster.of("PersistentVolumeClaim")}


def csi_conditions(completed="True", degraded="False", resyncing="False",
                   reasons=("Promoted", "Healthy", "NotResyncing"), message="") -> list[dict]:
    return [{"type": t, "status": v, "reason": r, "message": message,
             "lastTransitionTime": "2030-01-01T00:00:00Z"}
            for t, v, r in zip(("Completed", "Degraded", "Resyncing"),
                               (completed, degraded, resyncing), reasons, strict=True)]


def mark_replicating(cluster: Cluster, sync: str = "2030-01-01T00:00:05Z") -> None:
    for vgr in cluster.of("VolumeGroupReplication"):
        names = [n for n, g in pvc_labels(cluster).items() if g == vgr["metadata"]["name"]]
        vgr["status"] = {"state": "Primary", "lastSyncTime": sync,
                         "conditions": csi_conditions(),
                         "persistentVolumeClaimsRefList": [{"name": n} for n in names]}
    for rep in cluster.of("Replication"):
        rep["status"] = {"pairState": "PAIR"}


# -- csi-addons --------------------------------------------------------------------------


def test_unlabelled_namespace_is_left_alone():
    c = Cluster()
    plan = c.reconcile()
    assert plan.changes_nothing and plan.status is None and not plan.events


def test_label_creates_one_group_covering_exactly_the_pvcs():
    c = Cluster(labels=LABEL)
    c.add_pvc("elsewhere").update(metadata={"name": "elsewhere", "namespace": "other"})
    plan = c.converge()
    ops = [str(a) for a in plan.actions]
    assert ops == [
        "create VolumeGroupReplicationClass dr-kit-lab-array",
        "patch PersistentVolumeClaim shop/sales-db",
        "patch PersistentVolumeClaim shop/stock-db",
        "create VolumeGroupReplication shop/dr-kit-shop",
    ]
    (vgr,) = c.of("VolumeGroupReplication")
    assert vgr["spec"]["volumeGroupReplicationClassName"] == "dr-kit-lab-array"
    assert vgr["spec"]["replicationState"] == "primary"
    selected = {p["metadata"]["name"] for p in c.of("PersistentVolumeClaim")
                if p["metadata"].get("namespace") == "shop"
                and selector_matches(vgr["spec"]["source"]["selector"], p["metadata"]["labels"])}
    assert selected == {"sales-db", "stock-db"}
    (cls,) = c.of("VolumeGroupReplicationClass")
    assert cls["spec"]["provisioner"] == "array.lab.dr-kit.io"  # the storage class's own
    st = c.status()
    assert st["state"] == PROTECTING and st["pvcs"] == ["sales-db", "stock-db"]
    assert st["group"] == {"name": "dr-kit-shop", "id": None}
    assert "lastSync" not in st and "lagSeconds" not in st  # moving figures: read live
    assert st["lagSource"].startswith("VolumeGroupReplication status.lastSyncTime")
    reasons = [e.reason for e in plan.events]
    assert reasons.count("Created") == 2 and "Protecting" in reasons


def test_status_turns_protected_when_the_plugin_reports_and_backup_pvcs_bound():
    c = Cluster(labels=LABEL)
    c.converge()
    mark_replicating(c)
    backup = [{"metadata": {"name": n, "namespace": "shop"}, "status": {"phase": "Pending"}}
              for n in ("sales-db", "stock-db")]
    c.converge(backup_pvcs=backup)
    assert c.status()["state"] == PROTECTING and "backup-site" in c.status()["message"]
    for b in backup:
        b["status"]["phase"] = "Bound"
    plan = c.converge(backup_pvcs=backup, now=T0 + timedelta(seconds=3))
    st = c.status()
    assert st["state"] == PROTECTED and st["reason"] == "Replicating"
    assert st["since"] == "2030-01-01T00:00:03Z"
    assert st["backup"] == {"bound": 2, "of": 2, "notBound": {}}
    assert st["replication"]["conditions"] == {
        "Completed": "True/Promoted", "Degraded": "False/Healthy",
        "Resyncing": "False/NotResyncing"}
    assert [e.reason for e in plan.events] == ["Protected"]


def test_degraded_condition_is_reported():
    c = Cluster(labels=LABEL)
    c.converge()
    (vgr,) = c.of("VolumeGroupReplication")
    vgr["status"] = {"state": "Primary", "conditions": [
        {"type": "Degraded", "status": "True", "message": "journal full", "reason": "X",
         "lastTransitionTime": "2030-01-01T00:00:00Z"}]}
    plan = c.converge()
    assert c.status()["state"] == "Degraded" and c.status()["message"] == \
        "degraded (X): journal full"
    assert plan.events[-1].type == "Warning"


def test_reconcile_is_idempotent_and_later_time_changes_nothing():
    c = Cluster(labels=LABEL)
    c.converge()
    later = c.reconcile(now=T0 + timedelta(hours=1))
    assert later.changes_nothing and not later.events


def test_third_pvc_joins_and_deleted_pvc_leaves_the_same_group():
    c = Cluster(labels=LABEL)
    c.converge()
    c.add_pvc("audit-db")
    plan = c.converge()
    assert [str(a) for a in plan.actions] == ["patch PersistentVolumeClaim shop/audit-db"]
    assert pvc_labels(c) == dict.fromkeys(["audit-db", "sales-db", "stock-db"], "dr-kit-shop")
    assert len(c.of("VolumeGroupReplication")) == 1
    assert c.status()["pvcs"] == ["audit-db", "sales-db", "stock-db"]
    assert any("audit-db joined" in e.message for e in plan.events)
    del c.objects[("PersistentVolumeClaim", "shop", "audit-db")]
    plan = c.converge()
    assert plan.actions == [] and c.status()["pvcs"] == ["sales-db", "stock-db"]


def test_terminating_pvc_is_not_a_member():
    c = Cluster(labels=LABEL)
    c.add_pvc("going")["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    c.converge()
    assert c.status()["pvcs"] == ["sales-db", "stock-db"]
    assert pvc_labels(c)["going"] is None


def test_restored_snapshot_clones_are_never_members():
    """At the backup site, analysts' clones of a snapshot group live beside the replicated
    PVCs, some still carrying the group label; when that site protects the namespace (after
    a failover) they stay out of the group and lose the label its selector matches."""
    c = Cluster(labels=LABEL)
    c.add_pvc("snap-1-sales-db", labels={"dr-kit.io/restored-from": "snap-1",
                                         GROUP_KEY: "dr-kit-shop"})
    c.add_pvc("snap-1-stock-db", labels={"dr-kit.io/restored-from": "snap-1"})
    c.converge()
    assert c.status()["pvcs"] == ["sales-db", "stock-db"]
    assert pvc_labels(c) == {"sales-db": "dr-kit-shop", "snap-1-sales-db": None,
                             "snap-1-stock-db": None, "stock-db": "dr-kit-shop"}
    (vgr,) = c.of("VolumeGroupReplication")
    sel = vgr["spec"]["source"]["selector"]
    assert [n for n, p in ((p["metadata"]["name"], p) for p in c.of("PersistentVolumeClaim"))
            if selector_matches(sel, p["metadata"]["labels"])] == ["sales-db", "stock-db"]


def test_unlabel_removes_replication_keeps_class_and_backup():
    c = Cluster(labels=LABEL)
    c.converge()
    c.label(None)
    plan = c.converge()
    assert [str(a) for a in plan.actions] == [
        "delete VolumeGroupReplication shop/dr-kit-shop",
        "patch PersistentVolumeClaim shop/sales-db",
        "patch PersistentVolumeClaim shop/stock-db",
    ]
    assert plan.backup_actions == []
    assert c.of("VolumeGroupReplication") == [] and len(c.of("VolumeGroupReplicationClass")) == 1
    assert set(pvc_labels(c).values()) == {None}
    st = c.status()
    assert st["state"] == UNPROTECTED and "backup data kept" in st["message"]
    assert st["pvcs"] == [] and st["group"] is None


def test_unlabel_with_delete_policy_deletes_backup_pvcs_only_with_a_backup_site():
    policy = Policy(delete_backup_on_unprotect=True)
    c = Cluster(labels=LABEL)
    c.converge(policy)
    c.label(None)
    plan = c.reconcile(policy, backup_site=True)
    assert [str(a) for a in plan.backup_actions] == [
        "delete PersistentVolumeClaim shop/sales-db", "delete PersistentVolumeClaim shop/stock-db"]
    plan = c.reconcile(policy, backup_site=False)
    assert plan.backup_actions == [] and "KEPT" in plan.status["message"]
    assert any(e.type == "Warning" and e.reason == "BackupDataKept" for e in plan.events)


def test_wrong_label_value_is_unprotect_and_says_why():
    c = Cluster(labels=LABEL)
    c.converge()
    c.label("yes")
    c.converge()
    assert c.status()["state"] == UNPROTECTED and "is not ConsistentCopyToCloud" in \
        c.status()["message"]


def test_empty_namespace_waits_for_a_pvc_then_protects():
    c = Cluster(labels=LABEL, pvcs=())
    plan = c.converge()
    assert plan.actions == [] and c.status()["state"] == WAITING
    assert "once a PVC appears" in c.status()["message"]
    c.add_pvc("first")
    c.converge()
    assert len(c.of("VolumeGroupReplication")) == 1 and c.status()["pvcs"] == ["first"]
    del c.objects[("PersistentVolumeClaim", "shop", "first")]
    c.converge()
    assert c.of("VolumeGroupReplication") == [] and c.status()["state"] == WAITING


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_restart_mid_apply_converges_without_duplicates(stop_after):
    c = Cluster(labels=LABEL)
    plan = c.reconcile()
    partial = Plan(namespace="shop", actions=plan.actions[:stop_after])
    c.apply(partial)  # the operator died after `stop_after` writes
    c.converge()
    assert len(c.of("VolumeGroupReplication")) == 1
    assert len(c.of("VolumeGroupReplicationClass")) == 1
    assert set(pvc_labels(c).values()) == {"dr-kit-shop"}


def test_existing_class_for_the_provisioner_is_reused_when_policy_has_no_mapping():
    c = Cluster(labels=LABEL, pvcs=())
    c.add_pvc("db", "plain")
    c.add({"kind": "VolumeGroupReplicationClass", "metadata": {"name": "vendor-class"},
           "spec": {"provisioner": "plain.example.com"}})
    c.converge()
    (vgr,) = c.of("VolumeGroupReplication")
    assert vgr["spec"]["volumeGroupReplicationClassName"] == "vendor-class"
    assert len(c.of("VolumeGroupReplicationClass")) == 1


def test_policy_volume_replication_class_is_created_and_named():
    policy = Policy(storage_classes={"lab-array": ReplicationClass(
        name="gold", parameters={"schedulingInterval": "1m"},
        volume_replication_class="gold-vr")})
    c = Cluster(labels=LABEL)
    c.converge(policy)
    (vrc,) = c.of("VolumeReplicationClass")
    assert vrc["spec"] == {"provisioner": "array.lab.dr-kit.io",
                           "parameters": {"schedulingInterval": "1m"}}
    assert c.of("VolumeGroupReplication")[0]["spec"]["volumeReplicationClassName"] == "gold-vr"


def test_default_storage_class_is_used_for_pvcs_without_one():
    c = Cluster(labels=LABEL, pvcs=())
    c.objects[("StorageClass", None, "lab-array")]["metadata"]["annotations"] = {
        "storageclass.kubernetes.io/is-default-class": "true"}
    c.add_pvc("db", None)
    c.converge()
    assert c.status()["state"] == PROTECTING


# -- refusals: each leaves nothing half-created -------------------------------------------


def assert_refused(c: Cluster, *needles: str, policy: Policy | None = None, **kw) -> Plan:
    before = copy.deepcopy({k: v for k, v in c.objects.items() if k[0] != "Namespace"})
    plan = c.reconcile(policy, **kw)
    assert plan.refusal and plan.actions == [] and plan.backup_actions == []
    for needle in needles:
        assert needle in plan.refusal, plan.refusal
    assert plan.status["state"] == REFUSED
    assert any(e.type == "Warning" and e.reason == "ProtectionRefused" for e in plan.events)
    c.apply(plan)
    after = {k: v for k, v in c.objects.items() if k[0] != "Namespace"}
    assert after == before
    again = c.reconcile(policy, **kw)
    assert again.changes_nothing and not again.events  # refused once, said once
    return plan


def test_refuses_pvc_in_another_vgr():
    c = Cluster(labels=LABEL)
    c.objects[("PersistentVolumeClaim", "shop", "stock-db")]["metadata"]["labels"]["app"] = "x"
    c.add({"kind": "VolumeGroupReplication",
           "metadata": {"name": "theirs", "namespace": "shop"},
           "spec": {"source": {"selector": {"matchLabels": {"app": "x"}}}}})
    assert_refused(c, "PVC stock-db is already in VolumeGroupReplication theirs")


def test_refuses_pvc_in_another_group_label_volume_replication_or_hitachi_replication():
    c = Cluster(labels=LABEL, pvcs=())
    c.add_pvc("a", labels={GROUP_KEY: "dr-kit-elsewhere"})
    c.add_pvc("b")
    c.add_pvc("c")
    c.add({"kind": "VolumeReplication", "metadata": {"name": "vr-b", "namespace": "shop"},
           "spec": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "b"}}})
    c.add({"kind": "Replication", "metadata": {"name": "r-c", "namespace": "shop"},
           "spec": {"persistentVolumeClaimName": "c"}})
    assert_refused(c, "PVC a is labelled", "VolumeReplication vr-b", "Replication r-c")


def test_refuses_storage_class_without_replication_class():
    c = Cluster(labels=LABEL)
    c.add_pvc("logs", "plain")
    assert_refused(c, "storage class plain (PVC logs) has no replication class")


def test_refuses_missing_storage_class_and_static_pvcs():
    c = Cluster(labels=LABEL)
    c.add_pvc("x", "gone")
    assert_refused(c, "storage class gone, which does not exist")
    c = Cluster(labels=LABEL)
    c.add_pvc("x", "")
    assert_refused(c, "static PV")
    c = Cluster(labels=LABEL)
    c.add_pvc("x", None)
    assert_refused(c, "no default")


def test_refuses_mixed_replication_classes():
    policy = Policy(storage_classes={"lab-array": ReplicationClass(name="a"),
                                     "plain": ReplicationClass(name="b")})
    c = Cluster(labels=LABEL)
    c.add_pvc("logs", "plain")
    assert_refused(c, "different replication classes", policy=policy)


def test_refuses_unknown_backend_annotation():
    c = Cluster(labels=LABEL)
    c.namespace["metadata"]["annotations"] = {BACKEND_ANNOTATION: "netapp"}
    assert_refused(c, "unknown backend 'netapp'")


def test_refuses_missing_crds_and_names_them():
    c = Cluster(labels=LABEL)
    assert_refused(c, "volumegroupreplications.replication.storage.openshift.io",
                   "volumegroupreplicationclasses.replication.storage.openshift.io",
                   available_kinds=set())
    c = Cluster(labels=LABEL)
    plan = assert_refused(c, "replications.hspc.hitachi.com", "replicationgroups.hspc.hitachi.com",
                          policy=Policy(backend="hitachi"), available_kinds=CSI_KINDS)
    assert "volumegroup" not in plan.refusal


def test_refusal_of_a_new_pvc_keeps_the_existing_group_intact():
    c = Cluster(labels=LABEL)
    c.converge()
    c.add_pvc("logs", "plain")
    plan = assert_refused(c, "storage class plain")
    st = plan.status
    assert st["pvcs"] == ["sales-db", "stock-db"] and st["group"]["name"] == "dr-kit-shop"
    assert len(c.of("VolumeGroupReplication")) == 1
    del c.objects[("PersistentVolumeClaim", "shop", "logs")]
    c.converge()
    assert c.status()["state"] == PROTECTING


def test_refuses_changed_immutable_class_instead_of_half_replacing():
    c = Cluster(labels=LABEL)
    c.converge()
    policy = Policy(storage_classes={"lab-array": ReplicationClass(name="other")})
    assert_refused(c, "immutable", policy=policy)


def test_refuses_foreign_object_with_the_group_name():
    c = Cluster(labels=LABEL)
    c.add({"kind": "VolumeGroupReplication",
           "metadata": {"name": "dr-kit-shop", "namespace": "shop"},
           "spec": {"source": {"selector": {"matchLabels": {"nothing": "here"}}}}})
    assert_refused(c, "not the operator's")


def test_unknown_backend_in_policy_is_invalid_input():
    with pytest.raises(InvalidInput, match="unknown operator backend"):
        Policy(backend="netapp")


# -- hitachi -------------------------------------------------------------------------------

HITACHI = Policy(backend="hitachi", hitachi=HitachiSettings(pvol_journal_id=1,
                                                            svol_journal_id=2,
                                                            consistency_group_ids=(10, 20)))


def test_hitachi_one_replication_per_pvc_sharing_one_group_id():
    c = Cluster(labels=LABEL)
    plan = c.converge(HITACHI, taken_group_ids={10: "other-ns"})
    assert [str(a) for a in plan.actions] == [
        "patch PersistentVolumeClaim shop/sales-db",
        "patch PersistentVolumeClaim shop/stock-db",
        "create ReplicationGroup shop/dr-kit-shop",
        "create Replication shop/sales-db",
        "create Replication shop/stock-db",
    ]
    reps = c.of("Replication")
    for r in reps:
        s = r["spec"]
        assert s["replicationType"] == "UR" and s["isConsistency"] is True
        assert s["consistencyGroupId"] == 11  # 10 is taken by another namespace
        assert (s["pvolJournalId"], s["svolJournalId"]) == (1, 2)
        assert s["parentName"] == "dr-kit-shop" and s["storageClassName"] == "lab-array"
        assert s["copyGroupName"] == "drkit-shop"
    assert {r["spec"]["persistentVolumeClaimName"] for r in reps} == {"sales-db", "stock-db"}
    assert c.of("ReplicationGroup")[0]["spec"]["desiredPairState"] == "pair"
    assert c.status()["group"] == {"name": "dr-kit-shop", "id": 11}
    assert c.of("VolumeGroupReplication") == []
    mark_replicating(c)
    c.converge(HITACHI)
    assert c.status()["state"] == PROTECTED


def test_hitachi_group_id_is_kept_even_if_taken_list_changes():
    c = Cluster(labels=LABEL)
    c.converge(HITACHI)
    assert c.status()["group"]["id"] == 10
    c.add_pvc("audit-db")
    plan = c.converge(HITACHI, taken_group_ids={10: "shop", 12: "x"})
    assert [str(a) for a in plan.actions] == ["patch PersistentVolumeClaim shop/audit-db",
                                              "create Replication shop/audit-db"]
    assert c.objects[("Replication", "shop", "audit-db")]["spec"]["consistencyGroupId"] == 10


def test_hitachi_leave_unlabel_and_restart():
    c = Cluster(labels=LABEL)
    plan = c.reconcile(HITACHI)
    c.apply(Plan(namespace="shop", actions=plan.actions[:3]))  # died before the Replications
    c.converge(HITACHI)
    assert len(c.of("Replication")) == 2 and len(c.of("ReplicationGroup")) == 1
    del c.objects[("PersistentVolumeClaim", "shop", "stock-db")]
    plan = c.converge(HITACHI)
    assert [str(a) for a in plan.actions] == ["delete Replication shop/stock-db"]
    c.label(None)
    plan = c.converge(HITACHI)
    assert [str(a) for a in plan.actions] == ["delete Replication shop/sales-db",
                                              "delete ReplicationGroup shop/dr-kit-shop",
                                              "patch PersistentVolumeClaim shop/sales-db"]
    assert c.status()["state"] == UNPROTECTED


def test_hitachi_refusals():
    c = Cluster(labels=LABEL)
    c.add_pvc("logs", "plain")
    assert_refused(c, "storage class plain (PVC logs) has no replication class", policy=HITACHI)
    c = Cluster(labels=LABEL)
    full = {i: f"ns{i}" for i in range(10, 21)}
    assert_refused(c, "no free consistency group id in 10..20", policy=HITACHI,
                   taken_group_ids=full)
    pinned = Policy(backend="hitachi", hitachi=HitachiSettings(namespace_group_ids={"shop": 5}))
    c = Cluster(labels=LABEL)
    assert_refused(c, "consistency group id 5 (pinned in the policy) is used by namespace x",
                   policy=pinned, taken_group_ids={5: "x"})


def test_backend_annotation_switches_one_namespace_to_an_allowed_backend():
    c = Cluster(labels=LABEL)
    c.namespace["metadata"]["annotations"] = {BACKEND_ANNOTATION: "hitachi"}
    assert_refused(c, "backend 'hitachi'", "is not enabled")
    c.converge(Policy(allowed_backends=("hitachi",)))
    assert len(c.of("Replication")) == 2 and c.of("VolumeGroupReplication") == []


def test_long_names_are_shortened_stably():
    p = Policy()
    long_ns = "n" * 70
    assert len(p.group_name(long_ns)) == 63 and p.group_name(long_ns) == p.group_name(long_ns)
    assert len(p.copy_group_name(long_ns)) <= 29


def test_policy_round_trips_through_dict():
    p = Policy(backend="hitachi", delete_backup_on_unprotect=True, allowed_backends=("hitachi",),
               storage_classes={"x": ReplicationClass("rc", "prov", {"a": "1"}, "vrc")},
               hitachi=HitachiSettings(pvol_journal_id=3, consistency_group_ids=(1, 9)))
    assert Policy.from_dict(p.to_dict()) == p
    with pytest.raises(InvalidInput, match="unknown policy key"):
        Policy.from_dict({"bakend": "x"})


# -- truthful, quiet status ------------------------------------------------------------------


def test_status_annotation_does_not_move_with_the_sync_figures():
    c = Cluster(labels=LABEL)
    c.converge()
    mark_replicating(c, sync="2030-01-01T00:00:05Z")
    c.converge()
    assert c.status()["state"] == PROTECTED
    (vgr,) = c.of("VolumeGroupReplication")
    for i in range(5):  # what a plug-in refreshes on every pass
        vgr["status"].update(lastSyncTime=f"2030-01-01T00:01:0{i}Z", lastSyncBytes=i * 512,
                             lastSyncDuration=f"0.00{i}s")
        for cnd in vgr["status"]["conditions"]:
            cnd["lastTransitionTime"] = f"2030-01-01T00:01:0{i}Z"
        plan = c.reconcile(now=T0 + timedelta(seconds=i))
        assert plan.changes_nothing and not plan.events


def test_resyncing_group_is_not_protected_and_says_why():
    c = Cluster(labels=LABEL)
    c.converge()
    mark_replicating(c)
    c.converge()
    (vgr,) = c.of("VolumeGroupReplication")
    vgr["status"]["conditions"] = csi_conditions(
        completed="False", resyncing="True", reasons=("Resyncing", "Healthy", "ResyncTriggered"),
        message="initial copy")
    plan = c.converge()
    st = c.status()
    assert st["state"] == PROTECTING and st["reason"] == "Resyncing"
    assert st["message"].startswith("resyncing (ResyncTriggered); the backup is not")
    vgr["status"]["conditions"][0]["message"] = "initial copy (7/9 regions copied)"
    assert c.reconcile().changes_nothing  # progress is not a state change
    assert [e.reason for e in plan.events] == ["Protecting"]


# -- limits: refused as a whole ----------------------------------------------------------------


def test_more_pvcs_than_one_volume_group_replication_holds_is_refused_as_a_whole():
    c = Cluster(labels=LABEL, pvcs=[f"p{i:03d}" for i in range(100)])
    c.converge()
    assert c.status()["state"] == PROTECTING and c.status()["pvcCount"] == 100
    c.add_pvc("p100")  # the 101st
    plan = assert_refused(c, "has 101 PVCs", "holds at most 100",
                          "csi-addons VolumeGroupReplication API allows 100 PVCs")
    assert plan.status["pvcCount"] == 100  # what is protected stays protected and shown
    assert pvc_labels(c)["p100"] is None
    c = Cluster(labels=LABEL, pvcs=[f"p{i:03d}" for i in range(101)])
    assert_refused(c, "has 101 PVCs")
    assert c.of("VolumeGroupReplication") == [] and c.of("VolumeGroupReplicationClass") == []


def test_hitachi_backend_states_and_enforces_its_own_limit():
    from dr_kit.operator.backends import hitachi
    assert hitachi.MAX_PAIRS == 8192 and "8,192" in hitachi.LIMIT_REASON
    c = Cluster(labels=LABEL, pvcs=[f"p{i}" for i in range(101)])
    c.converge(HITACHI)  # 101 is fine for Hitachi
    assert len(c.of("Replication")) == 101
    c = Cluster(labels=LABEL, pvcs=[f"p{i}" for i in range(8193)])
    assert_refused(c, "has 8193 PVCs", "at most 8192", "Universal Replicator journal",
                   policy=HITACHI)


def test_status_of_thousands_of_pvcs_counts_them_within_the_annotation_budget():
    names = [f"data-{'x' * 50}-{i:05d}" for i in range(1500)]
    c = Cluster(labels=LABEL, pvcs=names)
    c.converge(HITACHI)
    st = c.status()
    assert st["pvcCount"] == 1500 and st["pvcs"] is None
    assert len(json.dumps(st)) < 64 * 1024


# -- DR state: only the primary site protects ------------------------------------------------

def dr(primary: str) -> dict:
    return {"dr-kit.io/dr-state": json.dumps({"primary": primary})}


def test_the_site_that_is_not_primary_creates_and_changes_nothing():
    c = Cluster(labels=LABEL)
    c.namespace["metadata"]["annotations"] = dr("backup")
    plan = c.converge()  # the operator at the main site, the backup site is primary
    assert plan.actions == [] and plan.backup_actions == []
    st = c.status()
    assert st["state"] == "Standby" and "the backup site is primary" in st["message"]
    assert [e.reason for e in plan.events] == ["Standby"]
    # the backup site's operator is the one that protects (toward the main site)
    c2 = Cluster(labels=LABEL)
    c2.namespace["metadata"]["annotations"] = dr("backup")
    c2.converge(site="backup")
    assert len(c2.of("VolumeGroupReplication")) == 1 and c2.status()["state"] == PROTECTING


def test_a_demoted_group_is_not_patched_back_to_primary_by_the_old_main():
    c = Cluster(labels=LABEL)
    c.converge()
    (vgr,) = c.of("VolumeGroupReplication")
    vgr["spec"]["replicationState"] = "secondary"  # a role swap demoted it here
    c.namespace["metadata"]["annotations"]["dr-kit.io/dr-state"] = json.dumps(
        {"primary": "backup", "operation": "relocate"})
    plan = c.converge()
    assert plan.actions == [] and vgr["spec"]["replicationState"] == "secondary"
    assert c.status()["state"] == "Standby" and c.status()["pvcs"] == ["sales-db", "stock-db"]


def test_unreadable_dr_state_is_refused_before_anything_is_created():
    for raw in ("primary: backup", json.dumps({"primary": "elsewhere"}), "[]"):
        c = Cluster(labels=LABEL)
        c.namespace["metadata"]["annotations"] = {"dr-kit.io/dr-state": raw}
        assert_refused(c, "dr-kit.io/dr-state is unreadable", "nothing is created")


@pytest.mark.parametrize(("site", "primary"), [("main", "main"), ("main", "backup"),
                                              ("backup", "backup"), ("backup", "main")])
def test_unprotect_works_at_either_site_and_never_deletes_the_primarys_data(site, primary):
    policy = Policy(delete_backup_on_unprotect=True)
    c = Cluster(labels=LABEL)
    c.namespace["metadata"]["annotations"] = dr(primary)
    c.converge(policy, site=primary)  # protected from its primary
    c.label(None)
    plan = c.reconcile(policy, site=site, backup_site=True)
    assert [a.ref.kind for a in plan.actions][0] == "VolumeGroupReplication"
    assert {a.op for a in plan.actions} == {"delete", "patch"}
    deletes_other_site = [str(a) for a in plan.backup_actions]
    if site == primary:  # the other site holds the copy: the policy may delete it
        assert deletes_other_site == ["delete PersistentVolumeClaim shop/sales-db",
                                      "delete PersistentVolumeClaim shop/stock-db"]
    else:  # the other site is primary: its data is production, never deleted from here
        assert deletes_other_site == []
        assert "other site KEPT" in plan.status["message"]
    c.apply(plan)
    assert c.of("VolumeGroupReplication") == [] and c.status()["state"] == UNPROTECTED


def test_many_pvcs_joining_make_one_event_not_one_each():
    c = Cluster(labels=LABEL, pvcs=[f"p{i:02d}" for i in range(30)])
    plan = c.converge()
    joined = [e for e in plan.events if "joined consistency group" in e.message]
    assert len(joined) == 1 and joined[0].message.startswith("PVCs p00, p01,")
    assert "and 10 more" in joined[0].message
    assert len(plan.events) == 4  # class created, group created, PVCs joined, Protecting
