"""The lab's storage plug-ins with the operator: label -> replication -> backup PVs,
joining PVC, group snapshot, restore, unlabel.  Real array processes, real API servers on
loopback, the controllers and the operator in threads of this process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dr_kit import published
from dr_kit.kube import Kube, api_client
from dr_kit.lab.apiserver import start_in_thread, write_kubeconfig
from dr_kit.lab.controllers import GSNAP, SiteController
from dr_kit.lab.layout import CSI_DRIVER, LabDir
from dr_kit.operator.cli import runner_for
from dr_kit.storage.client import start_array
from dr_kit.storage.link import LinkEmulator

LABEL = {"dr-kit.io/backup": "ConsistentCopyToCloud"}


def wait(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return r
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pvc(name: str, size: str = "16Mi", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"storageClassName": "lab-array", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}, **spec}}


@pytest.fixture
def lab(tmp_path: Path):
    lab = LabDir.of(tmp_path)
    ma = start_array(tmp_path / "main/array", "main")
    ba = start_array(tmp_path / "backup/array", "backup")
    lab.tokens.mkdir(mode=0o700)
    for site, h in (("main", ma), ("backup", ba)):  # the arrays' tokens, where the lab keeps them
        lab.token_file(f"{site}-array").write_text(h.token)
    link = LinkEmulator(ba.replication).start()
    ms = start_in_thread(tmp_path / "main/api", "tok-main")
    bs = start_in_thread(tmp_path / "backup/api", "tok-backup")
    write_kubeconfig(lab.kubeconfig, {"main": ms.kubeconfig_site(), "backup": bs.kubeconfig_site()}, current="main")

    def ep(h):
        return {k: h.info[k] for k in ("mgmt_url", "data_socket", "replication")}

    lab.save({"version": 1, "processes": {}, "endpoints": {
        "main": {"api": ms.url, "array": ep(ma)}, "backup": {"api": bs.url, "array": ep(ba)},
        "link": {"listen": link.address}}})
    mk, bk = Kube(api_client(lab.kubeconfig, "main")), Kube(api_client(lab.kubeconfig, "backup"))
    for k in (mk, bk):
        k.create("StorageClass", {"metadata": {"name": "lab-array"}, "provisioner": CSI_DRIVER})
    bk.create("VolumeGroupSnapshotClass", {
        "apiVersion": "/".join(GSNAP), "kind": "VolumeGroupSnapshotClass",
        "metadata": {"name": "lab-array-group"}, "driver": CSI_DRIVER, "deletionPolicy": "Delete"})
    mk.create("Namespace", {"metadata": {"name": "shop"}})
    for name in ("sales-db", "stock-db"):
        mk.create("PersistentVolumeClaim", pvc(name))
    ctls = [SiteController(lab, s, poll=0.1).start() for s in ("main", "backup")]
    op = runner_for(str(lab.kubeconfig), "main", "backup")
    op.start()
    servers = {"main": ms, "backup": bs}
    yield {"mk": mk, "bk": bk, "ma": ma, "ba": ba, "op": op, "ctls": ctls, "lab": lab,
           "servers": servers, "root": tmp_path}
    op.stop()
    for c in ctls:
        c.stop()
    for h in (ma, ba):
        h.stop()
    link.stop()
    for srv in servers.values():
        srv.stop()


def bound(k: Kube, ns: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in k.items("PersistentVolumeClaim", ns) if p.get("status", {}).get("phase") == "Bound")


def test_label_to_replicating_backup_snapshot_restore_unlabel(lab):
    mk, bk, ma, ba = lab["mk"], lab["bk"], lab["ma"], lab["ba"]
    wait(lambda: bound(mk, "shop") == ["sales-db", "stock-db"], "main PVCs bound")
    pv_handles = {pv["spec"]["csi"]["volumeHandle"] for pv in mk.items("PersistentVolume")}
    assert pv_handles <= {v["name"] for v in ma.client.status()["volumes"]}

    t0 = time.monotonic()
    mk.patch("Namespace", "shop", {"metadata": {"labels": LABEL}})

    def replicating():
        vgrs = mk.items("VolumeGroupReplication", "shop")
        return vgrs and any(c["type"] == "Completed" and c["status"] == "True"
                            for c in vgrs[0].get("status", {}).get("conditions", []))
    wait(replicating, "the group replicating")
    wait(lambda: bound(bk, "shop") == ["sales-db", "stock-db"], "backup PVCs bound")
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"label -> backup PVs bound and replicating took {elapsed:.1f} s"
    groups = [g for g in ma.client.status()["groups"] if g["side"] == "main"]
    assert len(groups) == 1 and len(groups[0]["members"]) == 2  # ONE consistency group
    vgr = mk.items("VolumeGroupReplication", "shop")[0]
    assert {r["name"] for r in vgr["status"]["persistentVolumeClaimsRefList"]} == {"sales-db", "stock-db"}
    assert vgr["status"]["state"] == "Primary"
    # what the plug-in publishes: the array group behind the resource
    assert vgr["metadata"]["annotations"][published.ARRAY_GROUP] == groups[0]["name"]

    # a third PVC joins the same group
    mk.create("PersistentVolumeClaim", pvc("audit-db", "8Mi"))
    wait(lambda: bound(bk, "shop") == ["audit-db", "sales-db", "stock-db"], "third backup PVC", 40)
    wait(lambda: len(ma.client.group_status(groups[0]["name"])["members"]) == 3, "third member")
    assert len([g for g in ma.client.status()["groups"] if g["side"] == "main"]) == 1

    # a group snapshot at the backup: one sequence for all members
    wait(lambda: ma.client.group_status(groups[0]["name"])["state"] == "pair", "pair again", 40)
    bk.create("VolumeGroupSnapshot", {
        "apiVersion": "/".join(GSNAP), "kind": "VolumeGroupSnapshot", "metadata": {"name": "snap1", "namespace": "shop"},
        "spec": {"volumeGroupSnapshotClassName": "lab-array-group", "source": {"selector": {"matchLabels": {}}}}})
    vgs = wait(lambda: (lambda o: o if (o or {}).get("status", {}).get("readyToUse") else None)(
        bk.get("VolumeGroupSnapshot", "snap1", "shop")), "group snapshot ready")
    ann = vgs["metadata"]["annotations"]
    assert ann[published.SNAPSHOT_CONSISTENT] == "true" and published.SNAPSHOT_SEQUENCE in ann
    snaps = bk.items("VolumeSnapshot", "shop")
    assert sorted(s["metadata"]["name"] for s in snaps) == ["snap1-audit-db", "snap1-sales-db", "snap1-stock-db"]
    assert all(s["status"]["readyToUse"] and s["status"]["volumeGroupSnapshotName"] == "snap1" for s in snaps)
    info = ba.client.snapshot(ann[published.SNAPSHOT_ARRAY_SNAPSHOT])
    assert info["sequence"] == int(ann[published.SNAPSHOT_SEQUENCE]) and len(info["volumes"]) == 3

    # restore one snapshot to a writable PVC
    bk.create("PersistentVolumeClaim", pvc("restored-sales", dataSource={
        "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io", "name": "snap1-sales-db"}))
    wait(lambda: "restored-sales" in bound(bk, "shop"), "restored PVC bound")
    clone = bk.get("PersistentVolumeClaim", "restored-sales", "shop")["spec"]["volumeName"]
    assert next(v for v in ba.client.status()["volumes"] if v["name"] == clone)["role"] == "clone"

    # unlabel: replication removed, backup data kept
    mk.patch("Namespace", "shop", {"metadata": {"labels": {"dr-kit.io/backup": None}}})
    wait(lambda: not mk.items("VolumeGroupReplication", "shop"), "VGR removed")
    wait(lambda: not ma.client.status()["groups"], "array group removed at main")
    assert {"sales-db", "stock-db", "audit-db"} <= set(bound(bk, "shop"))
    assert not [g for g in ba.client.status()["groups"]], "backup side of the group removed"


def test_plugins_survive_the_loss_and_return_of_their_api_server(lab):
    """The main API server goes away (its connections reset mid-watch, as urllib3's
    ProtocolError) and comes back on the same port: the plug-ins' threads all live on,
    their health says what is degraded meanwhile, and afterwards they provision again."""
    from dr_kit.lab.controllers import health_file

    mk, ctls, servers = lab["mk"], lab["ctls"], lab["servers"]
    main_ctl = ctls[0]
    wait(lambda: bound(mk, "shop") == ["sales-db", "stock-db"], "main PVCs bound")
    wait(main_ctl.synced, "caches synced")
    threads = {t.name for t in main_ctl.threads()}
    ms = servers["main"]
    port = ms.port
    ms.stop()
    health = wait(lambda: (lambda h: h if h["degraded"] else None)(main_ctl.health()),
                  "the health to say what is degraded")
    assert any("the main API server" in d for d in health["degraded"]), health
    assert health["api"]["main"]["ok"] is False and health["api"]["backup"]["ok"] is True
    time.sleep(2.0)  # handlers fail meanwhile (retried with backoff), nothing dies
    assert all(t.is_alive() for t in main_ctl.threads())
    assert {t.name for t in main_ctl.threads()} == threads
    servers["main"] = start_in_thread(lab["root"] / "main/api", "tok-main", port=port)
    wait(lambda: not main_ctl.health()["degraded"], "the health to clear", 30)
    mk.create("PersistentVolumeClaim", pvc("after-db", "4Mi"))
    wait(lambda: "after-db" in bound(mk, "shop"), "a PVC bound after the API server came back", 30)
    main_ctl.write_health()
    written = json.loads(Path(health_file(lab["lab"], "main")).read_text())
    assert written["degraded"] == [] and written["synced"] is True
    assert written["threads"] >= len(threads)


def test_plugins_stop_without_waiting_for_their_open_watches_and_start_again(lab):
    """The watches hold their requests open (30 s) and only read: a stop waits for the
    workers, not for them (it waited 5 s, so each `lab down` took that long per site)."""
    ctl = lab["ctls"][0]
    wait(ctl.synced, "the main site's caches synced")
    time.sleep(0.3)  # every watch has its request open
    t0 = time.monotonic()
    ctl.stop()
    took = time.monotonic() - t0
    assert took < 3.0, f"stop took {took:.1f} s"
    ctl.start()  # again: new watches, synced, and the fixture stops it at the end
    wait(ctl.synced, "the main site's caches synced again")


def test_a_new_group_waits_for_its_unbound_members_then_is_made_without_them(lab):
    """The plug-in makes a group with all its members at once: while a member's PVC is not
    bound the group waits (a member that joined later would be copied afterwards, the group
    reading as in sync in between), and after its patience it is made with the bound ones."""
    from dr_kit.lab.controllers import hitachi_group_name
    from dr_kit.operator.backends import hitachi
    from dr_kit.operator.policy import Policy

    mk, ma = lab["mk"], lab["ma"]
    wait(lambda: bound(mk, "shop") == ["sales-db", "stock-db"], "main PVCs bound")
    # restored from a snapshot that does not exist: it stays Pending
    mk.create("PersistentVolumeClaim", pvc("later-db", dataSource={
        "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io", "name": "not-there"}))
    pol = Policy(backend="hitachi")
    for name in ("sales-db", "stock-db", "later-db"):
        mk.create("Replication", hitachi.replication(pol, "shop", name, "lab-array", 9))
    t0 = time.monotonic()
    mk.create("ReplicationGroup", hitachi.replication_group(pol, "shop", 9))
    gname = hitachi_group_name("shop", "9")

    def made() -> dict[str, Any] | None:
        return next((g for g in ma.client.status()["groups"] if g["name"] == gname), None)

    time.sleep(2.0)
    assert made() is None, "the group was made while one of its members was not bound"
    g = wait(made, "the group made with its bound members", timeout=30)
    assert time.monotonic() - t0 >= 9.5  # the controllers' patience, 10 s
    assert sorted(g["members"].values() if isinstance(g["members"], dict) else g["members"]) == sorted(
        pv["spec"]["csi"]["volumeHandle"] for pv in mk.items("PersistentVolume"))
    assert "later-db" not in bound(mk, "shop")
