"""The operator against the lab's Kubernetes-API server, through the official client.

Namespace ``shop`` with PVCs ``sales-db`` and ``stock-db``; the runner in a thread; label,
join, restart, unlabel.  The lab's storage controllers are not started here: a test plays
the replication plugin by writing the VolumeGroupReplication's status.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest
from kubernetes import client as k8s

from dr_kit.errors import DrKitError
from dr_kit.operator import cli
from dr_kit.operator.policy import Policy
from dr_kit.operator.runner import Kube, permissions

apiserver = pytest.importorskip("dr_kit.lab.apiserver")

REPL = ("replication.storage.openshift.io", "v1alpha1")
GROUP_KEY = "dr-kit.io/consistency-group"


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def lab_server(tmp_path):
    """A lab API server in a thread, the shop namespace with two PVCs, and ``start(**kw)``
    for runners (stopped at the end)."""
    server = apiserver.start_in_thread(tmp_path / "state", "operator-test-token")
    apiserver.write_kubeconfig(tmp_path / "kubeconfig", {
        "main": (server.url, "operator-test-token", getattr(server, "ca_pem", None))})
    api = cli.api_client(lab_dir=tmp_path)
    core = k8s.CoreV1Api(api)
    k8s.StorageV1Api(api).create_storage_class(
        {"metadata": {"name": "lab-array"}, "provisioner": "array.lab.dr-kit.io"})
    core.create_namespace({"metadata": {"name": "shop"}})
    for name in ("sales-db", "stock-db"):
        add_pvc(core, name)
    runners = []

    def start(*, backoff=None, **kw):
        kw.setdefault("resync_seconds", 1.0)
        runner = cli.runner_for(lab_dir=tmp_path, watch_seconds=1, **kw)
        if backoff is not None:
            runner.backoff = backoff
        runners.append(runner.start())
        return runner

    try:
        yield tmp_path, api, start
    finally:
        for r in runners:
            r.stop()
        server.stop()


@pytest.fixture
def lab(tmp_path):
    with lab_server(tmp_path) as value:
        yield value


def add_pvc(core: k8s.CoreV1Api, name: str, ns: str = "shop") -> None:
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": name},
        "spec": {"storageClassName": "lab-array", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})


def vgrs(api, ns="shop") -> list[dict]:
    return k8s.CustomObjectsApi(api).list_namespaced_custom_object(
        *REPL, ns, "volumegroupreplications")["items"]


def selected_pvcs(api, vgr: dict) -> set[str]:
    labels = vgr["spec"]["source"]["selector"]["matchLabels"]
    sel = ",".join(f"{k}={v}" for k, v in labels.items())
    pvcs = k8s.CoreV1Api(api).list_namespaced_persistent_volume_claim("shop",
                                                                       label_selector=sel)
    return {p.metadata.name for p in pvcs.items}


def conditions(completed="True", degraded="False", resyncing="False") -> list[dict]:
    """csi-addons' three conditions, as its replication controller sets them."""
    t = "2020-01-01T00:00:00Z"
    return [
        {"type": "Completed", "status": completed, "lastTransitionTime": t,
         "reason": "Promoted" if completed == "True" else "Resyncing", "message": ""},
        {"type": "Degraded", "status": degraded, "lastTransitionTime": t,
         "reason": "Healthy" if degraded == "False" else "VolumeDegraded", "message": ""},
        {"type": "Resyncing", "status": resyncing, "lastTransitionTime": t,
         "reason": "NotResyncing" if resyncing == "False" else "ResyncTriggered",
         "message": ""},
    ]


def play_plugin(api, vgr: dict, **conds) -> None:
    """What the replication plugin does: report the group primary with its PVCs."""
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        *REPL, "shop", "volumegroupreplications", vgr["metadata"]["name"],
        {"status": {"state": "Primary", "lastSyncTime": "2020-01-01T00:00:00Z",
                    "conditions": conditions(**conds),
                    "persistentVolumeClaimsRefList": [{"name": n} for n in
                                                      sorted(selected_pvcs(api, vgr))]}})


def test_label_join_restart_unlabel(lab, capsys):
    lab_dir, api, start = lab
    runner = start()
    core = k8s.CoreV1Api(api)

    t0 = time.monotonic()
    cli.protect("shop", lab_dir=lab_dir)
    (vgr,) = wait_for(lambda: vgrs(api), what="the VolumeGroupReplication")
    created_after = time.monotonic() - t0
    with capsys.disabled():
        print(f"\nlabel -> VolumeGroupReplication created: {created_after * 1000:.0f} ms")
    assert created_after < 5.0
    assert selected_pvcs(api, vgr) == {"sales-db", "stock-db"}

    play_plugin(api, vgr)
    status = wait_for(lambda: cli.protection_status("shop", lab_dir=lab_dir)["state"]
                      == "Protected" and cli.protection_status("shop", lab_dir=lab_dir),
                      what="Protected")
    assert status["pvcs"] == ["sales-db", "stock-db"] and status["lastSync"]
    # the lag is read now from lastSyncTime: an upper bound, its source named
    assert status["lag"]["bound"] == "upper" and status["lag"]["seconds"] > 3600
    assert status["lag"]["source"] == "VolumeGroupReplication status.lastSyncTime"
    assert status["sinceLastSyncSeconds"] > 0

    add_pvc(core, "audit-db")
    wait_for(lambda: selected_pvcs(api, vgr) == {"audit-db", "sales-db", "stock-db"},
             what="audit-db to join")
    assert len(vgrs(api)) == 1
    play_plugin(api, vgr)
    wait_for(lambda: cli.protection_status("shop", lab_dir=lab_dir)["pvcs"] ==
             ["audit-db", "sales-db", "stock-db"], what="status with audit-db")

    events = core.list_namespaced_event("shop").items
    reasons = {e.reason for e in events}
    assert {"Created", "Updated", "Protecting", "Protected"} <= reasons
    assert all(e.involved_object.kind == "Namespace" for e in events)

    # restart: a new operator converges to the same objects, creating nothing
    calls_before = set(runner.kube.calls)
    runner.stop()
    runner2 = start()
    wait_for(lambda: runner2.reconciles >= 2, what="the restarted operator to reconcile")
    assert len(vgrs(api)) == 1
    assert not {c for c in runner2.kube.calls if c[2] == "create" and c[1] != "events"}
    assert runner2.errors == []

    status = cli.unprotect("shop", lab_dir=lab_dir, wait=10)
    assert status["state"] == "Unprotected" and "backup data kept" in status["message"]
    assert vgrs(api) == []
    labels = {p.metadata.name: (p.metadata.labels or {}).get(GROUP_KEY)
              for p in core.list_namespaced_persistent_volume_claim("shop").items}
    assert labels == {"audit-db": None, "sales-db": None, "stock-db": None}
    classes = k8s.CustomObjectsApi(api).list_cluster_custom_object(
        *REPL, "volumegroupreplicationclasses")["items"]
    assert [c["metadata"]["name"] for c in classes] == ["dr-kit-lab-array"]  # shared: kept

    # what the runner did is what the ClusterRole grants (minus paths this run did not take)
    used = calls_before | runner2.kube.calls
    declared = {(g, r, v) for (g, r), verbs in permissions(Policy()).items() for v in verbs}
    assert used <= declared
    assert declared - used == {
        ("replication.storage.openshift.io", "volumegroupreplications", "patch"),
        ("replication.storage.openshift.io", "volumereplicationclasses", "create"),
    }

    code = cli_main(["protection", "status", "shop", "--dir", str(lab_dir)])
    assert code == 0 and "shop: Unprotected" in capsys.readouterr().out


def test_restart_mid_reconcile_converges_without_duplicates(lab):
    lab_dir, api, start = lab
    # a previous operator died after creating the class and labelling one PVC
    kube = Kube(cli.api_client(lab_dir=lab_dir))
    kube.create("VolumeGroupReplicationClass", {
        "apiVersion": "replication.storage.openshift.io/v1alpha1",
        "kind": "VolumeGroupReplicationClass",
        "metadata": {"name": "dr-kit-lab-array",
                     "labels": {"app.kubernetes.io/managed-by": "dr-kit-operator"}},
        "spec": {"provisioner": "array.lab.dr-kit.io"}})
    kube.patch("PersistentVolumeClaim", "sales-db",
               {"metadata": {"labels": {GROUP_KEY: "dr-kit-shop"}}}, "shop")
    kube.patch("Namespace", "shop",
               {"metadata": {"labels": {"dr-kit.io/backup": "ConsistentCopyToCloud"}}})
    runner = start()
    (vgr,) = wait_for(lambda: vgrs(api), what="the VolumeGroupReplication")
    wait_for(lambda: selected_pvcs(api, vgr) == {"sales-db", "stock-db"}, what="both PVCs")
    time.sleep(0.3)
    assert len(vgrs(api)) == 1 and runner.errors == []


def test_refusal_leaves_nothing_and_is_visible(lab, capsys):
    lab_dir, api, start = lab
    core = k8s.CoreV1Api(api)
    k8s.StorageV1Api(api).create_storage_class(
        {"metadata": {"name": "plain"}, "provisioner": "plain.example.com"})
    core.create_namespaced_persistent_volume_claim("shop", {
        "metadata": {"name": "logs"},
        "spec": {"storageClassName": "plain", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    start()
    assert cli_main(["protect", "shop", "--dir", str(lab_dir), "--wait", "10"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("shop: Refused - ")
    assert "storage class plain (PVC logs) has no replication class" in out
    assert vgrs(api) == []
    labels = [(p.metadata.labels or {}).get(GROUP_KEY)
              for p in core.list_namespaced_persistent_volume_claim("shop").items]
    assert labels == [None, None, None]
    events = [e for e in core.list_namespaced_event("shop").items
              if e.reason == "ProtectionRefused"]
    assert len(events) == 1 and events[0].type == "Warning"


def test_empty_namespace_then_hitachi_backend(lab):
    lab_dir, api, start = lab
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "empty"}})
    start(policy=Policy(allowed_backends=("hitachi",)))
    status = cli.protect("empty", lab_dir=lab_dir, backend="hitachi", wait=10,
                         policy=Policy(allowed_backends=("hitachi",)))
    assert status["state"] == "WaitingForPVCs" and "once a PVC appears" in status["message"]
    add_pvc(core, "first", "empty")
    add_pvc(core, "second", "empty")
    co = k8s.CustomObjectsApi(api)
    reps = wait_for(lambda: len(items := co.list_namespaced_custom_object(
        "hspc.hitachi.com", "v1", "empty", "replications")["items"]) == 2 and items,
        what="two Replications")
    assert {r["spec"]["consistencyGroupId"] for r in reps} == {0}
    assert {r["spec"]["parentName"] for r in reps} == {"dr-kit-empty"}
    (rg,) = co.list_namespaced_custom_object("hspc.hitachi.com", "v1", "empty",
                                             "replicationgroups")["items"]
    assert rg["spec"] == {"desiredPairState": "pair"}


def test_unknown_namespace_and_missing_kubeconfig_are_one_line_errors(lab, tmp_path):
    lab_dir, _, _ = lab
    with pytest.raises(DrKitError, match="namespace nowhere not found"):
        cli.protect("nowhere", lab_dir=lab_dir)
    with pytest.raises(DrKitError, match="kubeconfig .* does not exist"):
        cli.protection_status("shop", kubeconfig=tmp_path / "nope")


def test_undeclared_call_is_refused_before_it_is_sent(lab):
    lab_dir, _, _ = lab
    kube = Kube(cli.api_client(lab_dir=lab_dir), permissions(Policy()))
    with pytest.raises(DrKitError, match="not in its declared permissions"):
        kube.delete("Namespace", "shop")


def cli_main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="dr-kit")
    cli.add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_object_refused_by_the_api_is_rolled_back_and_said_once(lab):
    lab_dir, api, start = lab
    policy = Policy()
    object.__setattr__(policy, "replication_state", "sideways")  # slips past validation
    runner = start(policy=policy)
    status = cli.protect("shop", lab_dir=lab_dir, wait=10)
    assert status["state"] == "Refused"
    assert "the API refused to create VolumeGroupReplication shop/dr-kit-shop" in \
        status["message"]
    core = k8s.CoreV1Api(api)
    time.sleep(2.5)  # resyncs come and go: a permanent error waits for a change
    assert len(runner.errors) == 1 and runner.queue.delayed == 0
    core.patch_namespace("shop", {"metadata": {"annotations": {"touched": "yes"}}})
    wait_for(lambda: len(runner.errors) == 2, what="one retry after the namespace changed")
    time.sleep(1.5)
    assert len(runner.errors) == 2  # undoing its own pass does not trigger another one
    runner.stop()  # a retry in flight labels, fails and rolls back: look once it is done
    labels = [(p.metadata.labels or {}).get(GROUP_KEY)
              for p in core.list_namespaced_persistent_volume_claim("shop").items]
    assert labels == [None, None] and vgrs(api) == []
    refused = [e for e in core.list_namespaced_event("shop").items
               if e.reason == "ProtectionRefused"]
    assert len(refused) == 1  # said once


def test_backup_site_pvcs_gate_protected_and_are_deleted_by_policy(tmp_path):
    token = "operator-test-token"
    main = apiserver.start_in_thread(tmp_path / "main", token)
    backup = apiserver.start_in_thread(tmp_path / "backup", token)
    runner = None
    try:
        apiserver.write_kubeconfig(tmp_path / "kubeconfig", {
            "main": (main.url, token, getattr(main, "ca_pem", None)),
            "backup": (backup.url, token, getattr(backup, "ca_pem", None))})
        api = cli.api_client(lab_dir=tmp_path)
        bapi = cli.api_client(lab_dir=tmp_path, context="backup")
        core, bcore = k8s.CoreV1Api(api), k8s.CoreV1Api(bapi)
        k8s.StorageV1Api(api).create_storage_class(
            {"metadata": {"name": "lab-array"}, "provisioner": "array.lab.dr-kit.io"})
        core.create_namespace({"metadata": {"name": "shop"}})
        for name in ("sales-db", "stock-db"):
            add_pvc(core, name)
        policy = Policy(delete_backup_on_unprotect=True)
        runner = cli.runner_for(lab_dir=tmp_path, backup_context="backup", policy=policy,
                                resync_seconds=1.0, watch_seconds=1).start()
        t0 = time.monotonic()
        cli.protect("shop", lab_dir=tmp_path)
        (vgr,) = wait_for(lambda: vgrs(api), what="the VolumeGroupReplication")
        play_plugin(api, vgr)
        wait_for(lambda: "backup-site" in cli.protection_status("shop", lab_dir=tmp_path)
                 .get("message", ""), what="waiting for backup PVCs")
        # what the replication plugin does at the backup site
        bcore.create_namespace({"metadata": {"name": "shop"}})
        for name in ("sales-db", "stock-db"):
            add_pvc(bcore, name)
            bcore.patch_namespaced_persistent_volume_claim_status(
                name, "shop", {"status": {"phase": "Bound"}})
        status = wait_for(lambda: (s := cli.protection_status("shop", lab_dir=tmp_path))
                          ["state"] == "Protected" and s, what="Protected")
        assert status["backup"] == {"bound": 2, "of": 2, "notBound": {}}
        assert time.monotonic() - t0 < 10

        status = cli.unprotect("shop", lab_dir=tmp_path, wait=10)
        assert "backup data deleted" in status["message"]

        def backup_gone():
            left = bcore.list_namespaced_persistent_volume_claim("shop").items
            return all(p.metadata.deletion_timestamp for p in left)
        wait_for(backup_gone, what="backup PVCs deleted")
        assert runner.backup.calls == {("", "persistentvolumeclaims", v)
                                       for v in ("list", "watch", "delete")} | {
            ("", "namespaces", v) for v in ("list", "watch")}  # the DR state, read at both sites
    finally:
        if runner is not None:
            runner.stop()
        main.stop()
        backup.stop()
