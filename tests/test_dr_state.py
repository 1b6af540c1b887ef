"""The DR state (pure): reading, merging the two sites' copies, transitions; the operator's
decisions from it (fencing a returning old main, hands off the roles while an operation
runs); the kill hook's reading of its environment variable."""

from __future__ import annotations

import json

import pytest

from dr_kit.dr import ops
from dr_kit.dr import state as drs
from dr_kit.errors import InvalidInput
from dr_kit.operator.policy import Policy
from dr_kit.operator.reconcile import STANDBY, reconcile

POLICY = Policy()
GROUP = POLICY.group_name("shop")


def test_no_state_means_the_main_site_is_primary_and_nothing_runs():
    st = drs.merge([None, None])
    assert st.primary == "main" and st.rev == 0 and not st.busy and not st.test_running
    assert drs.parse(None) is None
    assert drs.of_namespace({"metadata": {"annotations": {}}}) is None


def test_round_trip_and_transitions():
    st = drs.DrState()
    op = drs.Operation(name="relocate", id="abc", started=1.0, target="backup")
    st = st.bump(operation=op)
    st = st.with_step("quiesce")
    st = st.with_step("quiesce", done="quiesce", t_quiesce=2.0)
    st = st.swapped("backup").bump()
    assert st.primary == "backup" and st.epoch == 1 and st.busy
    again = drs.parse(st.to_json())
    assert again == st
    assert again.operation.done == ("quiesce",) and again.operation.data["t_quiesce"] == 2.0
    done = again.finished(3.0, rpo_orders=0)
    assert not done.busy and done.history[-1]["op"] == "relocate" and done.history[-1]["rpo_orders"] == 0
    assert done.rev == again.rev + 1
    assert drs.parse(done.to_json()).history == done.history


def test_the_newer_revision_wins_whichever_site_holds_it():
    old = drs.DrState(primary="main", rev=4)
    new = drs.DrState(primary="backup", rev=9, epoch=1)
    assert drs.merge([old, new]) is new and drs.merge([new, old]) is new
    assert drs.merge([None, old]) is old


@pytest.mark.parametrize("raw", ["{", "[]", '{"primary": "moon"}', '{"primary": "main", "rev": "x"}'])
def test_an_unreadable_state_is_an_error_not_a_guess(raw):
    with pytest.raises(InvalidInput, match="dr-kit.io/dr-state"):
        drs.parse(raw)


def test_a_test_environment_counts_as_running_until_cleaned():
    assert drs.DrState(test={"namespace": "shop-drtest", "state": "running"}).test_running
    assert not drs.DrState(test={"namespace": "shop-drtest", "state": "cleaned"}).test_running


# -- the operator, from the DR state ---------------------------------------------------------

def _ns(state: drs.DrState | None, *, labelled: bool = True) -> dict:
    ann = {drs.ANNOTATION: state.to_json()} if state else {}
    labels = {POLICY.label_key: POLICY.label_value} if labelled else {}
    return {"metadata": {"name": "shop", "labels": labels, "annotations": ann}}


def _vgr(state: str) -> dict:
    return {"apiVersion": "replication.storage.openshift.io/v1alpha1", "kind": "VolumeGroupReplication",
            "metadata": {"name": GROUP, "namespace": "shop",
                         "labels": {"app.kubernetes.io/managed-by": "dr-kit-operator",
                                    "dr-kit.io/namespace": "shop", POLICY.group_label_key: GROUP}},
            "spec": {"volumeGroupReplicationClassName": "dr-kit-lab-array", "replicationState": state,
                     "autoResync": False,
                     "source": {"selector": {"matchLabels": {POLICY.group_label_key: GROUP}}}}}


PVC = {"metadata": {"name": "sales-db", "namespace": "shop", "labels": {POLICY.group_label_key: GROUP}},
       "spec": {"storageClassName": "lab-array"}}
SC = {"metadata": {"name": "lab-array"}, "provisioner": "lab.dr-kit.io"}
VGRC = {"kind": "VolumeGroupReplicationClass", "metadata": {"name": "dr-kit-lab-array"},
        "spec": {"provisioner": "lab.dr-kit.io"}}


def test_a_returning_old_main_learns_from_the_other_site_and_fences_its_copy():
    stale = drs.DrState(primary="main", rev=3)  # what the main site recorded before it went down
    newer = drs.DrState(primary="backup", rev=8, epoch=1)  # written at the backup meanwhile
    plan = reconcile(_ns(stale), [PVC], [_vgr("primary"), VGRC], [SC], POLICY, site="main",
                     peer_annotations=_ns(newer)["metadata"]["annotations"])
    assert plan.status["state"] == STANDBY
    assert [(a.op, a.ref.kind, a.body) for a in plan.actions] == [
        ("patch", "VolumeGroupReplication", {"spec": {"replicationState": "secondary"}})]
    assert any(e.reason == "Fenced" for e in plan.events)
    # without the other site's state it still believes it is primary
    plan = reconcile(_ns(stale), [PVC], [_vgr("primary"), VGRC], [SC], POLICY, site="main")
    assert plan.status["state"] != STANDBY


def test_while_an_operation_runs_the_operator_leaves_the_roles_to_it():
    running = drs.DrState(primary="main", rev=5).bump(
        operation=drs.Operation(name="relocate", id="x", started=1.0, step="demote"))
    # at the primary: the copy being demoted is not patched back to primary
    plan = reconcile(_ns(running), [PVC], [_vgr("secondary"), VGRC], [SC], POLICY, site="main")
    assert not [a for a in plan.actions if a.ref.kind == "VolumeGroupReplication"]
    # at the standby: the copy being promoted is not fenced
    plan = reconcile(_ns(running), [PVC], [_vgr("primary"), VGRC], [SC], POLICY, site="backup")
    assert plan.actions == [] and plan.status["state"] == STANDBY
    # once it is over, the primary's operator keeps its copy primary again
    idle = drs.DrState(primary="main", rev=7)
    plan = reconcile(_ns(idle), [PVC], [_vgr("secondary"), VGRC], [SC], POLICY, site="main")
    assert [(a.op, a.body) for a in plan.actions if a.ref.kind == "VolumeGroupReplication"] == [
        ("patch", {"spec": {"replicationState": "primary"}})]


def test_protection_runs_from_the_new_primary_after_a_swap():
    swapped = drs.DrState(primary="backup", rev=9, epoch=1)
    plan = reconcile(_ns(swapped), [PVC], [VGRC], [SC], POLICY, site="backup")
    creates = [a for a in plan.actions if a.op == "create" and a.ref.kind == "VolumeGroupReplication"]
    assert creates and creates[0].body["spec"]["replicationState"] == "primary"
    plan = reconcile(_ns(swapped), [PVC], [_vgr("secondary"), VGRC], [SC], POLICY, site="main")
    assert plan.status["state"] == STANDBY and plan.actions == []  # already secondary: nothing


def test_unprotect_works_at_either_site():
    swapped = drs.DrState(primary="backup", rev=9, epoch=1)
    for site in ("main", "backup"):
        plan = reconcile(_ns(swapped, labelled=False), [PVC], [_vgr("secondary" if site == "main" else "primary")],
                         [SC], POLICY, site=site)
        assert ("delete", "VolumeGroupReplication") in [(a.op, a.ref.kind) for a in plan.actions]


def test_an_unreadable_state_at_the_other_site_refuses_rather_than_guesses():
    plan = reconcile(_ns(drs.DrState(rev=1)), [PVC], [_vgr("primary"), VGRC], [SC], POLICY, site="main",
                     peer_annotations={drs.ANNOTATION: "{"})
    assert plan.refusal and plan.actions == []


# -- the kill hook ----------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "op", "index", "step", "kills"), [
    ("3", "relocate", 3, "final-sync", True), ("final-sync", "relocate", 3, "final-sync", True),
    ("relocate:3", "relocate", 3, "final-sync", True), ("failover:3", "relocate", 3, "final-sync", False),
    ("2", "relocate", 3, "final-sync", False), ("", "relocate", 3, "final-sync", False)])
def test_kill_hook_reads_its_variable(monkeypatch, env, op, index, step, kills):
    killed = []
    monkeypatch.setenv(ops.KILL_ENV, env)
    monkeypatch.setattr(ops.os, "kill", lambda pid, sig: killed.append(sig))
    ops._kill_hook(op, index, step)
    assert bool(killed) is kills


def test_state_json_is_compact_and_sorted():
    raw = drs.DrState(primary="backup", rev=2).to_json()
    assert json.loads(raw)["primary"] == "backup" and " " not in raw


def test_status_text_is_a_headline_and_a_table_of_both_sites():
    from dr_kit.dr.ops import status_text

    st = {"namespace": "shop", "primary": "backup", "epoch": 3, "rev": 9, "backend": "csi-addons",
          "operation": {"name": "failback", "step": "resync"}, "test": None,
          "failover": {"from": "main"}, "history": [{"op": "failover", "primary": "backup"}],
          "sites": {"main": {"reachable": True, "role_asked": "resync", "role": "secondary",
                             "in_sync": False, "array": {"side": "backup", "state": "resync",
                                                         "consistent": False}},
                    "backup": {"reachable": True, "role_asked": "primary", "role": "primary",
                               "in_sync": True, "array": None}},
          "application": {"running": True, "site": "backup", "committed": 120}}
    lines = status_text(st).splitlines()
    assert lines[0].startswith("namespace shop: primary backup (epoch 3") and "failback running at step resync" in lines[0]
    assert "failback pending" in lines[1]
    header = lines[2].split()
    assert header[:2] == ["SITE", "REACHABLE"] and "APPLICATION" in header
    main_row, backup_row = lines[3], lines[4]
    assert main_row.split()[:5] == ["main", "yes", "resync", "secondary", "no"]
    assert "not consistent" in main_row and main_row.rstrip().endswith("-")
    assert backup_row.split()[:5] == ["backup", "yes", "primary", "primary", "yes"]
    assert backup_row.endswith("running (120 committed)")
    # the columns line up: each row's second column starts where the header's does
    col = lines[2].index("REACHABLE")
    assert main_row[col:col + 3] == "yes" and backup_row[col:col + 3] == "yes"
    assert lines[-1] == "history: failover -> backup"
    st["history"] = [{"op": "failover", "primary": "backup"},
                     {"op": "relocate", "primary": "backup", "called_off": "the backup site's copy ..."}]
    assert status_text(st).splitlines()[-1] == "history: failover -> backup, relocate (called off) -> backup"
    st["test"], st["failover"], st["history"] = {"state": "cleaned", "namespace": "shop-drtest"}, None, []
    assert status_text(st).splitlines()[1] == "last DR test: its environment shop-drtest removed"
