"""DR operations on a lab, as a user runs them with `dr-kit dr`: a DR test that never
pauses replication, relocate and back without a copy, failover with fencing of the
returning old main, failback by changed regions, the refusals, and resume after a SIGKILL
of the command at several steps.  One lab for the module; the tests run in file order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for

from dr_kit.dr.ops import DR, KILL_ENV
from dr_kit.errors import Conflict
from dr_kit.lab import Lab, manager, site
from dr_kit.operator.cli import protect

pytestmark = pytest.mark.timeout(600)
NS = "shop"
RATE = 20.0


def dr_cli(lab: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dr_kit.cli", "dr", *args, NS, "--dir", str(lab),
                           "--json", "--quiet"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def ok(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def dr_of(lab: Path) -> DR:
    return DR(site("main", lab), site("backup", lab), NS, controls=Lab(lab), progress=None)


def shop_processes(lab: Path) -> list[dict]:
    from dr_kit.lab import processes

    recs = json.loads((lab / "lab.json").read_text())["processes"]
    return [r for n, r in recs.items() if (n == "shop" or n.startswith("app-")) and processes.alive(r)]


def in_sync(lab: Path) -> dict:
    """Both sites agree: one copy primary and in sync, the other secondary and in sync, the
    application running (once) at the primary."""
    def check():
        st = dr_of(lab).status()
        p, s = st["primary"], "backup" if st["primary"] == "main" else "main"
        copy = st["sites"][s]["array"] or {}  # before the first move it has no resource of its own
        good = (st["operation"] is None and st["sites"][p]["role"] == "primary" and st["sites"][p]["in_sync"]
                and st["sites"][s]["role"] in ("secondary", None)
                and copy.get("side") == "backup" and copy.get("state") == "pair" and copy.get("consistent")
                and (st["application"] or {}).get("running") and st["application"]["site"] == p)
        return st if good else None
    st = wait_for(check, timeout=60, interval=0.3, what="both sites in sync")
    assert len(shop_processes(lab)) == 1, shop_processes(lab)
    return st


def events(lab: Path, reason: str) -> list[dict]:
    return [e for e in site("main", lab).kube.items("Event", NS) if e.get("reason") == reason]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("dr") / "lab"
    failed_before = request.session.testsfailed
    manager.up(d, rate=RATE)
    try:
        assert protect(NS, lab_dir=d, wait=60)["state"] == "Protected"
        st = dr_of(d).status()
        wait_for(lambda: dr_of(d).status()["sites"]["main"]["in_sync"], timeout=60, interval=0.3,
                 what="the shop replicating in sync")
        assert st["primary"] == "main" and st["operation"] is None
        yield d
    finally:
        # a failure keeps the lab's files (controller and array logs) under pytest's folder
        manager.down(d, purge=request.session.testsfailed == failed_before)


def test_dr_test_runs_the_application_on_clones_while_replication_goes_on(lab):
    out = ok(dr_cli(lab, "test", "--seconds", "2"))
    assert out["consistent"] is True and out["verdict"]["collapsed_orders"] == 0
    assert out["test_transactions"] >= 5 and out["test_rto_s"] > 0
    assert out["replication_suspended"] is False and out["resync_after"] is False
    assert out["sequence_continued"] is True  # production kept writing and replicating
    assert out["lag_p99_ms_during_test"] is not None and out["lag_p99_ms_during_test"] < 2000
    assert out["lag_source"] == "array (exact)" and out["revenue_days"] > 100
    backup = site("backup", lab)
    assert backup.namespace("shop-drtest") is None  # cleaned up
    assert not backup.kube.items("VolumeGroupSnapshot", NS)
    assert [v for v in backup.array.status()["volumes"] if v["role"] == "clone"] == []
    assert len(events(lab, "DRTestStep")) == 8


def test_status_as_json_and_as_a_table(lab):
    st = ok(dr_cli(lab, "status"))
    assert set(st) == {"namespace", "primary", "epoch", "rev", "operation", "test", "failover",
                       "history", "backend", "sites", "application"}
    assert st["primary"] == "main" and st["operation"] is None and set(st["sites"]) == {"main", "backup"}
    assert {"reachable", "role_asked", "role", "in_sync", "array"} <= set(st["sites"]["main"])
    r = subprocess.run([sys.executable, "-m", "dr_kit.cli", "dr", "status", NS, "--dir", str(lab)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("namespace shop: primary main") and "no operation running" in lines[0]
    assert lines[1] == "last DR test: its environment shop-drtest removed"  # the test above
    assert lines[2].split()[:2] == ["SITE", "REACHABLE"]
    assert lines[3].split()[:2] == ["main", "yes"] and "running" in lines[3]
    assert lines[4].split()[:2] == ["backup", "yes"]


def test_relocate_while_a_kept_test_runs_is_refused_with_nothing_changed(lab):
    kept = ok(dr_cli(lab, "test", "--seconds", "1", "--keep"))
    assert kept["kept"] is True and site("backup", lab).namespace("shop-drtest") is not None
    before = dr_of(lab).state()
    r = dr_cli(lab, "relocate")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "DR test" in r.stderr, r.stderr
    assert dr_of(lab).state() == before  # nothing changed, not even the state's revision
    r = dr_cli(lab, "test")
    assert r.returncode == 2 and "running already" in r.stderr
    r = dr_cli(lab, "failover")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "failover refused: a DR test" in r.stderr
    assert "--cleanup" in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert dr_of(lab).state() == before
    ok(dr_cli(lab, "test", "--cleanup"))
    assert site("backup", lab).namespace("shop-drtest") is None
    r = dr_cli(lab, "test", "--cleanup")
    assert r.returncode == 2 and "no DR test environment" in r.stderr


def test_failback_without_a_failover_is_refused(lab):
    before = dr_of(lab).state()
    r = dr_cli(lab, "failback")
    assert r.returncode == 2 and "no failover" in r.stderr and r.stderr.count("\n") == 1
    assert "the main site has been primary since the protection" in r.stderr  # tests move nothing
    assert dr_of(lab).state() == before


def test_relocate_and_back_swap_roles_without_a_copy_and_lose_nothing(lab):
    in_sync(lab)
    out = ok(dr_cli(lab, "relocate"))
    assert out["primary"] == "backup" and out["rpo_orders"] == 0 and out["resync_bytes"] == 0
    assert out["without_copy"] is True and out["position_demoted"] == out["position_promoted"]
    assert out["rto_s"] > 0 and out["final_sync_s"] is not None
    st = in_sync(lab)
    assert st["sites"]["backup"]["array"]["side"] == "main" and st["primary"] == "backup"
    # the operator protects from the new primary; the old one is standby
    from dr_kit.operator.policy import Policy
    from dr_kit.operator.reconcile import read_status

    def protected(where: str, state: str):
        ns = site(where, lab).namespace(NS)
        return (read_status(ns["metadata"].get("annotations") or {}, Policy()) or {}).get("state") == state
    wait_for(lambda: protected("backup", "Protected"), timeout=60, what="Protected at the backup site")
    wait_for(lambda: protected("main", "Standby"), timeout=60, what="Standby at the main site")
    with pytest.raises(Exception, match="read-only"):  # the main copy is fenced
        _write_main(lab)
    back = ok(dr_cli(lab, "relocate"))
    assert back["primary"] == "main" and back["rpo_orders"] == 0 and back["resync_bytes"] == 0
    assert back["without_copy"] is True
    in_sync(lab)


def _volume(lab: Path, where: str, pvc: str = "sales-db"):
    """A shop volume at one site's array, opened as a host opens it."""
    vol = site(where, lab).pvcs(NS).set_index("name").loc[pvc, "volume"]
    state = json.loads((lab / "lab.json").read_text())
    from dr_kit.storage.client import ArrayClient

    ep = state["endpoints"][where]["array"]
    return ArrayClient(ep["mgmt_url"], ep["data_socket"], token=(lab / "tokens" / f"{where}-array.token")
                       .read_text().strip()).open_volume(vol)


def _write_main(lab: Path) -> None:
    """Write to a shop volume at the main array, as a host would (refused when fenced)."""
    v = _volume(lab, "main")
    try:
        v.write(0, b"\0" * 4096)
    finally:
        v.close()


@pytest.mark.parametrize("step", ["2", "4", "5"])
def test_relocate_resumes_after_a_kill_at_any_step(lab, step):
    in_sync(lab)
    start = dr_of(lab).state()
    r = dr_cli(lab, "relocate", env={KILL_ENV: f"relocate:{step}"})
    assert r.returncode == -9, r.stdout + r.stderr
    mid = dr_of(lab).state()
    assert mid.operation is not None and mid.operation.name == "relocate"
    assert len(mid.operation.done) == int(step)
    out = ok(dr_cli(lab, "relocate"))  # the same command again finishes it
    assert out["rpo_orders"] == 0 and out["resync_bytes"] == 0 and out["without_copy"] is True
    assert out["primary"] != start.primary
    st = in_sync(lab)  # one application, at the new primary, in sync both ways
    assert st["epoch"] == start.epoch + 1
    if st["primary"] != "main":
        ok(dr_cli(lab, "relocate"))
        in_sync(lab)


def test_a_move_whose_demotion_is_not_clean_is_called_off_and_loses_nothing(lab):
    """A write lands at the primary after the final sync's last check and before the
    demotion (here: the demotion asked by hand while the link is cut): promoting the other
    copy would lose it, so the relocate is called off, the old primary's copy is primary
    again, and a resync brings the write to the other site."""
    in_sync(lab)
    assert dr_of(lab).state().primary == "main"
    r = dr_cli(lab, "relocate", env={KILL_ENV: "relocate:final-sync"})
    assert r.returncode == -9, r.stdout + r.stderr
    lab_ctl = Lab(lab)
    lab_ctl.set_link(cut=True)
    marker = os.urandom(4096)
    v = _volume(lab, "main")  # the volume's last block: past the end of the shop's files
    try:
        tail = v.size - 4096
        v.write(tail, marker)
    finally:
        v.close()
    d = dr_of(lab)
    d.ensure_role_object("main", "secondary")
    d.wait_role("main", "secondary")
    lab_ctl.set_link(cut=False)
    # resumes at the demotion, finds it not clean, and is killed while calling the move off
    r = dr_cli(lab, "relocate", env={KILL_ENV: "relocate:calling-off"})
    assert r.returncode == -9, r.stdout + r.stderr
    assert dr_of(lab).state().operation.data.get("calling_off")
    r = dr_cli(lab, "relocate")  # the same command again finishes calling it off
    assert r.returncode not in (0, -9), r.stdout + r.stderr
    assert "called off" in r.stderr and "primary again" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    st = in_sync(lab)
    assert st["primary"] == "main" and st["operation"] is None
    assert dr_of(lab).state().history[-1].get("called_off")
    b = _volume(lab, "backup")
    try:
        assert b.read(tail, 4096) == marker  # the write after the final sync reached the backup
    finally:
        b.close()
    assert events(lab, "DRCalledOff")


def test_a_relocate_stuck_at_its_final_sync_is_aborted_and_the_application_runs_again(lab):
    """The link drops as a relocate begins: the final sync cannot finish, and
    `relocate --abort` calls the move off (nothing was demoted): the application runs at
    the source again.  With no operation running, an abort is refused."""
    in_sync(lab)
    primary = dr_of(lab).state().primary
    r = dr_cli(lab, "relocate", env={KILL_ENV: "relocate:prepare"})
    assert r.returncode == -9, r.stdout + r.stderr
    lab_ctl = Lab(lab)
    lab_ctl.set_link(cut=True)
    try:
        time.sleep(0.5)  # the application writes what the backup will not get in time
        r = dr_cli(lab, "relocate", "--timeout", "2")
        assert r.returncode != 0 and "final sync" in r.stderr, r.stderr
        assert not shop_processes(lab)  # stopped by the move, and the move cannot finish
        r = dr_cli(lab, "relocate", "--abort")
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert out["aborted"] is True and out["primary"] == primary and out["at_step"] == "final-sync"
    finally:
        lab_ctl.set_link(cut=False)
    st = in_sync(lab)
    assert st["primary"] == primary and st["operation"] is None
    assert dr_of(lab).state().history[-1]["called_off"] == "aborted by request at step final-sync"
    r = dr_cli(lab, "relocate", "--abort")
    assert r.returncode == 2 and "no DR operation" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_failover_to_an_inconsistent_copy_is_refused_unless_forced(lab):
    main = site("main", lab)
    group = main.array.status()["groups"][0]["name"]
    main.array.group_action(group, "corrupt-next")  # the backup refuses it and goes to error
    backup = site("backup", lab)
    wait_for(lambda: backup.array.group_status(group)["state"] == "error", timeout=30,
             what="the backup copy in error")
    before = dr_of(lab).state()
    r = dr_cli(lab, "failover")
    assert r.returncode == 2 and "not known consistent" in r.stderr and "--force" in r.stderr
    assert r.stderr.count("\n") == 1
    assert dr_of(lab).state() == before and backup.array.group_status(group)["side"] == "backup"
    # --force says what is lost first, then fails over; the main site answers, so it is
    # fenced at once (its shop stopped, its copy demoted) and the failback brings it home
    r = dr_cli(lab, "failover", "--force")
    out = ok(r)
    assert "forced onto a copy that is not known consistent" in r.stderr and "would be lost" in r.stderr
    assert out["primary"] == "backup" and out["fenced"] is True and out["rpo_estimated"] is False
    assert main.array.group_status(group)["side"] == "backup"  # the old main's copy, demoted
    back = ok(dr_cli(lab, "failback"))
    assert back["primary"] == "main" and back["consistent"] is True
    in_sync(lab)


def test_failover_fences_the_returning_main_and_failback_copies_only_changed_regions(lab):
    in_sync(lab)
    lab_ctl = Lab(lab)
    lab_ctl.set_link(cut=True)  # the main keeps writing what the backup never gets
    time.sleep(1.5)
    lab_ctl.crash_site("main")  # the disaster
    lab_ctl.set_link(cut=False)
    out = ok(dr_cli(lab, "failover"))
    assert out["primary"] == "backup" and out["rpo_estimated"] is True and out["fenced"] is False
    assert out["rto_s"] > 0 and out["consistent"] is True
    # estimated from what the backup last heard: a lower bound when the link failed first
    assert out["rpo_orders"] is not None and out["rpo_orders"] >= 0
    st = dr_of(lab).status()
    assert st["failover"]["from"] == "main" and st["application"]["site"] == "backup"

    manager.up(lab)  # the old main returns: fenced, its application not restarted
    wait_for(lambda: (dr_of(lab).status()["sites"]["main"]["array"] or {}).get("side") == "backup",
             timeout=60, interval=0.3, what="the old main's copy demoted (fenced)")
    main_copy = dr_of(lab).status()["sites"]["main"]["array"]
    assert main_copy["demoted"]["lost_entries"] >= 10 and main_copy["divergent_regions"] >= 1
    assert Lab(lab).application_status(NS)["site"] == "backup" and len(shop_processes(lab)) == 1
    with pytest.raises(Exception, match="read-only"):
        _write_main(lab)

    back = ok(dr_cli(lab, "failback"))
    assert back["primary"] == "main" and back["consistent"] is True
    assert back["rpo_estimated"] is False and back["rpo_orders"] >= 1  # counted in the old image
    assert back["lost_writes"] == main_copy["demoted"]["lost_entries"]
    assert 0 < back["resync_bytes"] <= 0.10 * back["volume_bytes"], back
    assert back["relocate_resync_bytes"] == 0 and back["rto_s"] > 0
    st = in_sync(lab)
    assert st["failover"] is None and st["primary"] == "main"


def test_failover_and_failback_resume_after_kills(lab):
    in_sync(lab)
    Lab(lab).crash_site("main")
    r = dr_cli(lab, "failover", env={KILL_ENV: "failover:3"})
    assert r.returncode == -9
    assert dr_of(lab).state().operation.step == "promote"
    out = ok(dr_cli(lab, "failover"))
    assert out["primary"] == "backup" and out["rto_s"] > 0
    manager.up(lab)
    for step in ("failback:3", "failback:10"):
        r = dr_cli(lab, "failback", env={KILL_ENV: step})
        assert r.returncode == -9, r.stdout + r.stderr
    out = ok(dr_cli(lab, "failback"))
    assert out["primary"] == "main" and out["resync_bytes"] <= 0.10 * out["volume_bytes"]
    in_sync(lab)


def _hitachi_namespace(lab: Path, ns: str, cg: int):
    """A namespace of two PVCs protected with the operator's Hitachi resources, made here
    (the lab's operator runs the default policy, csi-addons only); returns the policy."""
    from dr_kit.operator.backends import hitachi
    from dr_kit.operator.policy import Policy

    main = site("main", lab)
    main.kube.create("Namespace", {"metadata": {"name": ns}})
    for pvc in ("sales-db", "stock-db"):
        main.kube.create("PersistentVolumeClaim", {
            "metadata": {"name": pvc, "namespace": ns},
            "spec": {"storageClassName": "lab-array", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "4Mi"}}}})
    pol = Policy(backend="hitachi")
    group = pol.group_name(ns)
    for pvc in ("sales-db", "stock-db"):
        main.kube.patch("PersistentVolumeClaim", pvc, {"metadata": {"labels": {pol.group_label_key: group}}}, ns)
        main.kube.create("Replication", hitachi.replication(pol, ns, pvc, "lab-array", cg))
    main.kube.create("ReplicationGroup", hitachi.replication_group(pol, ns, cg))
    main.kube.patch("Namespace", ns, {"metadata": {"annotations": {"dr-kit.io/backend": "hitachi"}}})
    return pol


def test_relocate_with_the_hitachi_backend_and_no_lab_controls(lab):
    """Hitachi's resources carry the roles (ReplicationGroup desiredPairState), and the
    real-cluster path (no lab controls: applications are Deployments) moves a namespace
    that has none."""
    pol = _hitachi_namespace(lab, "hshop", 7)
    dr = DR(site("main", lab), site("backup", lab), "hshop", controls=None, progress=None, policy=pol)
    wait_for(lambda: dr.status()["sites"]["main"]["in_sync"], timeout=60, interval=0.3,
             what="hshop replicating in sync")
    out = dr.relocate()
    assert out["primary"] == "backup" and out["without_copy"] is True and out["resync_bytes"] == 0
    rg = site("backup", lab).kube.get("ReplicationGroup", dr.group, "hshop")
    assert rg["spec"]["desiredPairState"] == "pair" and rg["status"]["role"] == "Primary"
    assert site("main", lab).kube.get("ReplicationGroup", dr.group, "hshop")["spec"]["desiredPairState"] == "svol"
    wait_for(lambda: dr.status()["sites"]["backup"]["in_sync"], timeout=60, interval=0.3,
             what="hshop replicating back in sync")
    back = dr.relocate()
    assert back["primary"] == "main" and back["without_copy"] is True


def test_a_hitachi_split_stays_split_until_paired_again(lab):
    """desiredPairState split (Hitachi's pairsplit): the pair is suspended and stays so,
    its changes tracked, instead of resyncing by itself; pair resyncs it."""
    main = site("main", lab)
    group = _hitachi_namespace(lab, "hsplit", 8).group_name("hsplit")

    def pair_state() -> str | None:
        return (main.kube.get("ReplicationGroup", group, "hsplit").get("status") or {}).get("pairState")

    wait_for(lambda: pair_state() == "PAIR", timeout=60, what="hsplit in PAIR")
    main.kube.patch("ReplicationGroup", group, {"spec": {"desiredPairState": "split"}}, "hsplit")
    wait_for(lambda: pair_state() == "PSUS", timeout=30, what="hsplit split (PSUS)")
    copy_group = main.kube.items("Replication", "hsplit")[0]["status"]["copyGroup"]  # the array's name

    def array_group() -> dict:
        return next(g for g in main.array.status()["groups"] if g["name"] == copy_group)

    copies = (array_group().get("last_copy") or {}).get("started")
    seen = set()
    for _ in range(25):  # and it stays split (it resynced by itself, flapping, before)
        seen.add((pair_state(), array_group()["state"]))
        time.sleep(0.2)
    assert seen == {("PSUS", "suspended")}, seen
    assert (array_group().get("last_copy") or {}).get("started") == copies, "a resync began while split"
    main.kube.patch("ReplicationGroup", group, {"spec": {"desiredPairState": "pair"}}, "hsplit")
    wait_for(lambda: pair_state() == "PAIR", timeout=30, what="hsplit paired again")


def test_a_hitachi_move_whose_demotion_is_not_clean_is_called_off(lab):
    """The call-off of the csi-addons test above, on Hitachi's resources: the roles are
    ReplicationGroup desiredPairState values, and the call-off makes the main copy P-VOL
    again and resyncs the write the backup never got."""
    ns = "hcall"
    pol = _hitachi_namespace(lab, ns, 9)
    main, backup = site("main", lab), site("backup", lab)
    d = DR(main, backup, ns, controls=None, progress=None, policy=pol)
    wait_for(lambda: d.status()["sites"]["main"]["in_sync"], timeout=60, interval=0.3,
             what=f"{ns} replicating in sync")

    r = subprocess.run([sys.executable, "-m", "dr_kit.cli", "dr", "relocate", ns, "--dir", str(lab),
                        "--json", "--quiet"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, KILL_ENV: "relocate:final-sync"})
    assert r.returncode == -9, r.stdout + r.stderr
    lab_ctl = Lab(lab)
    lab_ctl.set_link(cut=True)
    marker = os.urandom(4096)
    state = json.loads((lab / "lab.json").read_text())
    from dr_kit.storage.client import ArrayClient

    def volume(where: str):
        ep = state["endpoints"][where]["array"]
        name = site(where, lab).pvcs(ns).set_index("name").loc["stock-db", "volume"]
        return ArrayClient(ep["mgmt_url"], ep["data_socket"], token=(lab / "tokens" / f"{where}-array.token")
                           .read_text().strip()).open_volume(name)

    try:
        v = volume("main")
        try:
            tail = v.size - 4096
            v.write(tail, marker)
        finally:
            v.close()
        d.ensure_role_object("main", "secondary")  # desiredPairState svol, by hand
        d.wait_role("main", "secondary")
    finally:
        lab_ctl.set_link(cut=False)
    # resumed with the lab's controls: at the demotion, it finds it not clean and calls the
    # move off, but the lab's shop cannot start on these volumes (they hold no shop): one
    # line says where the call-off stands and how to finish it
    r = subprocess.run([sys.executable, "-m", "dr_kit.cli", "dr", "relocate", ns, "--dir", str(lab),
                        "--json", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode not in (0, -9) and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert "is being called off" in r.stderr and "primary again, but the application did not start" \
        in r.stderr and f"dr-kit dr relocate {ns}` again" in r.stderr, r.stderr
    assert d.state().operation.data.get("calling_off")
    # the same move resumed without the lab's controls (nothing to start) finishes it
    with pytest.raises(Conflict, match="called off") as e:
        d.relocate()
    assert "primary again" in str(e.value)
    group = pol.group_name(ns)
    assert main.kube.get("ReplicationGroup", group, ns)["spec"]["desiredPairState"] == "pair"
    assert backup.kube.get("ReplicationGroup", group, ns)["spec"]["desiredPairState"] == "svol"
    st = wait_for(lambda: (s := d.status())["sites"]["main"]["in_sync"] and s, timeout=60, interval=0.3,
                  what=f"{ns} in sync from the main site again")
    assert st["primary"] == "main" and st["operation"] is None
    assert d.state().history[-1].get("called_off")
    b = volume("backup")
    try:
        assert b.read(tail, 4096) == marker  # the write after the final sync reached the backup
    finally:
        b.close()


def test_unprotect_from_the_new_primary_after_a_swap(lab):
    ok(dr_cli(lab, "relocate"))
    in_sync(lab)
    from dr_kit.operator.cli import unprotect

    st = unprotect(NS, kubeconfig=lab / "kubeconfig", context="backup", lab_dir=None, wait=60)
    assert st["state"] == "Unprotected"
    for where in ("main", "backup"):
        wait_for(lambda w=where: not [g for g in site(w, lab).array.status()["groups"]
                                      if g["name"].startswith("shop-")], timeout=60,
                 what=f"no replication group of shop left at the {where} array")
    # the data stays at both sites
    assert site("main", lab).pvcs(NS)["phase"].eq("Bound").all()
    assert site("backup", lab).pvcs(NS)["phase"].eq("Bound").all()
