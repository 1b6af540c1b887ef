"""The runner against the lab's Kubernetes-API server (in a thread): it heals itself, serves
its health and metrics, writes only on change, keeps a fixed set of threads, and refuses a
namespace too big for one consistency group without creating anything."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client as k8s
from test_operator_e2e import GROUP_KEY, add_pvc, lab_server, play_plugin, vgrs, wait_for

from dr_kit.operator import cli
from dr_kit.operator import runner as runner_mod
from dr_kit.operator.reconcile import reconcile as real_reconcile
from dr_kit.operator.retry import Backoff


@pytest.fixture
def lab(tmp_path):
    with lab_server(tmp_path) as value:
        yield value


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{key} not in metrics")


def ns_rv(api, name: str = "shop") -> str:
    return k8s.CoreV1Api(api).read_namespace(name).metadata.resource_version


def test_any_exception_is_logged_and_retried_with_backoff_per_namespace(lab, monkeypatch):
    lab_dir, api, start = lab
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "calm"}})
    add_pvc(core, "db", "calm")
    failures = {"n": 0}

    def flaky(namespace, *a, **kw):  # a bug for the first passes of one namespace only
        if namespace["metadata"]["name"] == "shop" and failures["n"] < 3:
            failures["n"] += 1
            raise KeyError("status")
        return real_reconcile(namespace, *a, **kw)

    monkeypatch.setattr(runner_mod, "reconcile", flaky)
    runner = start(backoff=Backoff(base=0.2, cap=1.0))
    cli.protect("calm", lab_dir=lab_dir)
    wait_for(lambda: vgrs(api, "calm"), what="calm protected")
    t0 = time.monotonic()
    cli.protect("shop", lab_dir=lab_dir)
    wait_for(lambda: failures["n"] >= 1, what="the first failure")
    core.create_namespace({"metadata": {"name": "late", "labels": {
        "dr-kit.io/backup": "ConsistentCopyToCloud"}}})
    add_pvc(core, "db", "late")
    wait_for(lambda: vgrs(api, "late"), what="another namespace protected meanwhile")
    assert failures["n"] < 3  # ...while shop still waits for its retries
    wait_for(lambda: vgrs(api), what="shop protected after its retries")
    shop_after = time.monotonic() - t0
    assert failures["n"] == 3
    errors = runner.errors
    assert len(errors) == 3 and all("shop: KeyError: 'status'" in e for e in errors)
    assert shop_after >= 1.3  # backoff 0.2 + 0.4 + 0.8 s before the fourth attempt
    assert runner.liveness() == (True, "ok")  # every worker still runs
    assert runner.metrics.errors.labels(kind="unexpected")._value.get() == 3


def test_a_watch_that_breaks_relists_and_goes_on(lab, monkeypatch):
    lab_dir, api, start = lab
    real_apply = runner_mod.Cache.apply
    broke = threading.Event()

    def apply_once_broken(self, type_, obj):
        if self.kind == "PersistentVolumeClaim" and not broke.is_set():
            broke.set()
            raise RuntimeError("decoder bug")
        return real_apply(self, type_, obj)

    monkeypatch.setattr(runner_mod.Cache, "apply", apply_once_broken)
    runner = start()
    cli.protect("shop", lab_dir=lab_dir)
    wait_for(lambda: vgrs(api), what="the group")
    add_pvc(k8s.CoreV1Api(api), "audit-db")  # the event that breaks the PVC watch
    wait_for(broke.is_set, what="the broken event")
    wait_for(lambda: "audit-db" in (cli.protection_status("shop", lab_dir=lab_dir)["pvcs"]),
             what="audit-db to join after the relist")
    restarts = runner.metrics.watch_restarts.labels(kind="PersistentVolumeClaim",
                                                    cause="RuntimeError")._value.get()
    assert restarts == 1 and runner.liveness()[0]


def test_health_readiness_and_metrics_are_served_on_loopback(lab, monkeypatch):
    lab_dir, api, start = lab
    release = threading.Event()

    def slow(namespace, *a, **kw):
        if namespace["metadata"]["name"] == "slow":
            release.wait(10)
        return real_reconcile(namespace, *a, **kw)

    monkeypatch.setattr(runner_mod, "reconcile", slow)
    runner = start(serve="127.0.0.1:0")
    runner.stuck_seconds = 0.5
    url = runner.health.url
    assert url.startswith("http://127.0.0.1:")
    wait_for(lambda: http(url + "/readyz")[0] == 200, what="ready")
    assert http(url + "/healthz") == (200, "ok\n")
    assert http(url + "/nothing")[0] == 404

    cli.protect("shop", lab_dir=lab_dir)
    wait_for(lambda: vgrs(api), what="the group")
    (vgr,) = vgrs(api)
    play_plugin(api, vgr)
    wait_for(lambda: cli.protection_status("shop", lab_dir=lab_dir)["state"] == "Protected",
             what="Protected")
    wait_for(lambda: metric(http(url + "/metrics")[1],
                            "dr_kit_operator_protected_namespaces") == 1, what="the gauge")
    text = http(url + "/metrics")[1]
    assert metric(text, "dr_kit_operator_reconciles_total") >= 2
    assert metric(text, "dr_kit_operator_reconcile_duration_seconds_count") >= 2
    assert metric(text, "dr_kit_operator_reconcile_errors_total", 'kind="unexpected"') == 0
    assert metric(text, "dr_kit_operator_namespaces", 'state="Protected"') == 1
    assert metric(text, "dr_kit_operator_api_writes_total",
                  'kind="VolumeGroupReplication",verb="create"') == 1
    assert metric(text, "dr_kit_operator_ready") == 1

    # a reconcile that hangs makes the operator unhealthy (a restart cures it)
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "slow", "labels": {
        "dr-kit.io/backup": "ConsistentCopyToCloud"}}})
    wait_for(lambda: http(url + "/healthz")[0] == 503, what="liveness to fail")
    code, body = http(url + "/healthz")
    assert "on slow for" in body
    release.set()
    wait_for(lambda: http(url + "/healthz")[0] == 200, what="liveness back")


def test_status_is_written_only_when_it_changes(lab):
    lab_dir, api, start = lab
    runner = start(resync_seconds=60)
    cli.protect("shop", lab_dir=lab_dir)
    wait_for(lambda: vgrs(api), what="the group")
    (vgr,) = vgrs(api)
    play_plugin(api, vgr)
    wait_for(lambda: cli.protection_status("shop", lab_dir=lab_dir)["state"] == "Protected",
             what="Protected")
    time.sleep(0.5)
    rv, passes = ns_rv(api), runner.reconciles
    writes, ns_writes = _writes(runner), _writes(runner, "Namespace")
    co = k8s.CustomObjectsApi(api)
    for i in range(20):  # the plug-in refreshing its sync figures, as it does every pass
        co.patch_namespaced_custom_object_status(
            "replication.storage.openshift.io", "v1alpha1", "shop", "volumegroupreplications",
            vgr["metadata"]["name"], {"status": {"lastSyncTime": f"2020-01-01T00:00:{i:02d}Z",
                                                 "lastSyncBytes": i * 4096}})
    time.sleep(1.0)
    assert ns_rv(api) == rv and _writes(runner) == writes and runner.reconciles == passes
    # a real change: the plug-in says the group resyncs -> one status write, no longer Protected
    play_plugin(api, vgr, completed="False", resyncing="True")
    status = wait_for(lambda: (s := cli.protection_status("shop", lab_dir=lab_dir))["state"]
                      != "Protected" and s, what="not Protected")
    assert status["state"] == "Protecting" and status["message"].startswith("resyncing")
    time.sleep(0.5)
    assert _writes(runner, "Namespace") == ns_writes + 1


def _writes(runner, kind: str | None = None) -> float:
    total = 0.0
    for metric_family in runner.metrics.writes.collect():
        for s in metric_family.samples:
            if s.name.endswith("_total") and (kind is None or s.labels["kind"] == kind):
                total += s.value
    return total


def test_threads_stay_a_fixed_set_whatever_the_number_of_namespaces(lab):
    lab_dir, api, start = lab
    core = k8s.CoreV1Api(api)
    runner = start(workers=3)
    cli.protect("shop", lab_dir=lab_dir)
    wait_for(lambda: vgrs(api), what="the group")

    def mine() -> int:
        return sum(t.name.startswith("dr-kit-operator") for t in threading.enumerate())

    few = mine()
    assert few == len(runner.watched_kinds()) + 3 + 1  # watches + workers + resync
    for i in range(30):
        name = f"app{i}"
        core.create_namespace({"metadata": {"name": name, "labels": {
            "dr-kit.io/backup": "ConsistentCopyToCloud"}}})
        add_pvc(core, "data", name)
        add_pvc(core, "logs", name)
    wait_for(lambda: all(vgrs(api, f"app{i}") for i in range(30)), timeout=60,
             what="30 namespaces with a group each")
    assert mine() == few
    assert runner.queue.delayed == 0 and runner.errors == []


def test_stop_finishes_the_writers_and_does_not_wait_for_open_watches(lab):
    """A watch holds its request open until it times out (30 s by default), and only reads:
    stopping waits for the workers, not for the watches (it waited up to 5 s for them, past
    the 3 s `dr-kit lab down` gives an operator before SIGKILL); started again, the runner
    watches anew."""
    lab_dir, api, _ = lab
    runner = cli.runner_for(lab_dir=lab_dir, watch_seconds=30).start()
    try:
        wait_for(runner.synced, what="the watches' caches synced")
        time.sleep(0.3)  # every watch has its request open
    finally:
        t0 = time.monotonic()
        runner.stop()
        took = time.monotonic() - t0
    watches = [t for t in threading.enumerate() if t.name.startswith("dr-kit-operator-watch")]
    assert watches, "the watches should still be in their open requests"
    assert took < 3.0, f"stop took {took:.1f} s"
    assert not any(t.is_alive() for t in threading.enumerate()
                   if t.name.startswith("dr-kit-operator-worker"))
    runner.start()  # started again: new watches of its own, synced
    try:
        wait_for(runner.synced, what="the watches' caches synced again")
    finally:
        runner.stop()


def test_a_namespace_over_the_group_limit_is_refused_and_nothing_is_created(lab):
    lab_dir, api, start = lab
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "big"}})
    for i in range(101):
        add_pvc(core, f"pvc-{i:03d}", "big")
    runner = start()
    status = cli.protect("big", lab_dir=lab_dir, wait=20)
    assert status["state"] == "Refused"
    assert "has 101 PVCs" in status["message"] and "at most 100" in status["message"]
    time.sleep(0.5)
    assert vgrs(api, "big") == []
    labels = {(p.metadata.labels or {}).get(GROUP_KEY)
              for p in core.list_namespaced_persistent_volume_claim("big").items}
    assert labels == {None}
    classes = k8s.CustomObjectsApi(api).list_cluster_custom_object(
        "replication.storage.openshift.io", "v1alpha1", "volumegroupreplicationclasses")
    assert classes["items"] == []
    events = [e for e in core.list_namespaced_event("big").items
              if e.reason == "ProtectionRefused"]
    assert len(events) == 1 and events[0].type == "Warning"
    # one PVC fewer: the namespace fits and is protected as a whole
    core.delete_namespaced_persistent_volume_claim("pvc-100", "big")
    (vgr,) = wait_for(lambda: vgrs(api, "big"), timeout=20, what="the group")
    wait_for(lambda: cli.protection_status("big", lab_dir=lab_dir)["pvcCount"] == 100,
             what="100 members")
    assert runner.errors == []


def test_protection_status_without_a_namespace_is_one_table_of_all(lab, capsys):
    lab_dir, api, start = lab
    from test_operator_e2e import cli_main
    core = k8s.CoreV1Api(api)
    start()
    for name in ("erp", "crm"):
        core.create_namespace({"metadata": {"name": name}})
        add_pvc(core, "db", name)
        cli.protect(name, lab_dir=lab_dir)
    cli.protect("shop", lab_dir=lab_dir)
    (vgr,) = wait_for(lambda: vgrs(api), what="the shop group")
    wait_for(lambda: vgrs(api, "erp") and vgrs(api, "crm"), what="the other groups")
    play_plugin(api, vgr)
    wait_for(lambda: cli.protection_status("shop", lab_dir=lab_dir)["state"] == "Protected",
             what="Protected")
    capsys.readouterr()
    assert cli_main(["protection", "status", "--dir", str(lab_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["NAMESPACE", "STATE", "PVCS", "LAG", "LAG"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert sorted(rows) == ["crm", "erp", "shop"]
    assert rows["shop"].split()[1:3] == ["Protected", "2"] and "<= " in rows["shop"]
    assert "VolumeGroupReplication lastSyncTime" in rows["shop"]
    assert rows["erp"].split()[1:3] == ["Protecting", "1"] and "unknown" in rows["erp"]
    assert cli_main(["protection", "status", "--dir", str(lab_dir), "--json"]) == 0
    table = __import__("json").loads(capsys.readouterr().out)
    assert [r["namespace"] for r in table] == ["crm", "erp", "shop"]


def test_the_operator_survives_its_api_server_going_away_and_coming_back(tmp_path):
    from test_operator_e2e import apiserver
    token = "operator-test-token"
    server = apiserver.start_in_thread(tmp_path / "state", token)
    port = int(server.url.rsplit(":", 1)[1])
    apiserver.write_kubeconfig(tmp_path / "kubeconfig", {
        "main": (server.url, token, getattr(server, "ca_pem", None))})
    api = cli.api_client(lab_dir=tmp_path)
    k8s.StorageV1Api(api).create_storage_class(
        {"metadata": {"name": "lab-array"}, "provisioner": "array.lab.dr-kit.io"})
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "shop"}})
    add_pvc(core, "db")
    runner = cli.runner_for(lab_dir=tmp_path, watch_seconds=1, resync_seconds=60)
    runner.backoff = Backoff(base=0.1, cap=0.5)
    runner.start()
    try:
        cli.protect("shop", lab_dir=tmp_path)
        wait_for(lambda: vgrs(api), what="the group")
        server.stop()
        time.sleep(2)  # every watch fails meanwhile; the operator goes on retrying
        assert runner.liveness()[0]
        server = apiserver.start_in_thread(tmp_path / "state", token, port=port)
        core.create_namespace({"metadata": {"name": "later", "labels": {
            "dr-kit.io/backup": "ConsistentCopyToCloud"}}})
        add_pvc(core, "db", "later")
        wait_for(lambda: vgrs(api, "later"), timeout=30, what="a namespace labelled after "
                 "the API server came back")
        assert runner.liveness() == (True, "ok")
        assert sum(s.value for m in runner.metrics.watch_restarts.collect()
                   for s in m.samples if s.name.endswith("_total")) >= 1
    finally:
        runner.stop()
        server.stop()
