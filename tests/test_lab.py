"""The lab as a user meets it: real processes in a temporary directory, driven by `dr-kit lab`.

One lab serves the whole module; the tests run in file order (crash and restart last) and
the module ends by checking that no process the lab ever started is still running.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.rest import ApiException

from dr_kit.lab import manager, processes
from dr_kit.lab.apiserver.tls import cert_path
from dr_kit.lab.layout import SHOP_NAMESPACE, SHOP_PVCS, LabDir

pytestmark = pytest.mark.timeout(240)

SEEN: dict[int, float] = {}  # every (pid, create_time) the lab recorded during the module


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dr_kit.cli", "lab", *args], capture_output=True,
                          text=True, timeout=timeout)


def records(lab: Path) -> dict[str, dict]:
    recs = json.loads((lab / "lab.json").read_text())["processes"]
    for r in recs.values():
        SEEN[r["pid"]] = r["create_time"]
    return recs


def running(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def client(lab: Path, site: str) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(lab / "kubeconfig"), context=site)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("lab") / "dr-lab"
    t0 = time.monotonic()
    r = run_cli("up", "--dir", str(d))
    up_seconds = time.monotonic() - t0
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "starting main array ... ok" in r.stdout
        print(f"lab up in {up_seconds:.1f} s")
        records(d)
        yield d
    finally:
        if (d / "lab.json").exists():
            records(d)
            manager.down(d, purge=True)
            assert not d.exists()
        left = [pid for pid, ct in SEEN.items() if running(pid, ct)]
        assert not left, f"orphan processes: {left}"


def test_up_starts_every_process_and_seeds_the_shop(lab: Path) -> None:
    recs = records(lab)
    assert set(recs) == set(manager.START_ORDER)
    assert all(processes.alive(r) for r in recs.values())
    state = json.loads((lab / "lab.json").read_text())
    assert state["version"] == 1 and state["seeded"] is True
    assert set(state["ports"]) >= set(manager.PORT_NAMES)
    assert state["endpoints"]["link"]["target"] == f"127.0.0.1:{state['ports']['backup_repl']}"
    assert stat.S_IMODE((lab / "lab.json").stat().st_mode) == 0o600
    core = k8s.CoreV1Api(client(lab, "main"))
    pvcs = core.list_namespaced_persistent_volume_claim(SHOP_NAMESPACE).items
    assert {p.metadata.name: p.status.phase for p in pvcs} == {n: "Bound" for n in SHOP_PVCS}
    assert {p.spec.resources.requests["storage"] for p in pvcs} == {"64Mi"}
    dep = k8s.AppsV1Api(client(lab, "main")).read_namespaced_deployment("shop", SHOP_NAMESPACE)
    assert dep.status.ready_replicas == 1
    assert k8s.StorageV1Api(client(lab, "backup")).read_storage_class("lab-array").provisioner
    custom = k8s.CustomObjectsApi(client(lab, "backup"))
    vgsc = custom.get_cluster_custom_object("groupsnapshot.storage.k8s.io", "v1beta2",
                                            "volumegroupsnapshotclasses", "lab-array-group")
    assert vgsc["deletionPolicy"] == "Delete"


def test_second_up_is_a_no_op(lab: Path) -> None:
    before = records(lab)
    mtime = (lab / "lab.json").stat().st_mtime_ns
    r = run_cli("up", "--dir", str(lab))
    assert r.returncode == 0, r.stderr
    assert "running" in r.stdout and "starting" not in r.stdout
    assert records(lab) == before
    assert (lab / "lab.json").stat().st_mtime_ns == mtime


def test_kubeconfig_has_two_token_contexts_and_no_token_leaks(lab: Path) -> None:
    kc = lab / "kubeconfig"
    assert stat.S_IMODE(kc.stat().st_mode) == 0o600
    doc = yaml.safe_load(kc.read_text())
    assert {c["name"] for c in doc["contexts"]} == {"main", "backup"}
    tokens = [u["user"]["token"] for u in doc["users"]]
    assert len(tokens) == 2 and all(len(t) >= 32 for t in tokens) and tokens[0] != tokens[1]
    # each site's CA named by its file, so a client writes no temporary copy of it (which
    # a process killed with SIGKILL would leave behind)
    for c in doc["clusters"]:
        assert "certificate-authority-data" not in c["cluster"], c
        assert Path(c["cluster"]["certificate-authority"]).read_text().startswith("-----BEGIN CERTIFICATE")
    leaks = [lab / "lab.json", *sorted((lab / "logs").glob("*.log"))]
    for f in leaks:
        text = f.read_text(errors="replace")
        assert not any(t in text for t in tokens), f"token in {f}"
    for rec in records(lab).values():
        assert not any(t in " ".join(rec["cmd"]) for t in tokens)


def test_a_client_of_the_lab_trusts_the_sites_certificate_files(lab: Path) -> None:
    """The official client reads the CA from the site's own file: no temporary copy (which
    a process killed with SIGKILL would leave behind)."""
    for site in ("main", "backup"):
        api = client(lab, site)
        assert Path(api.configuration.ssl_ca_cert) == cert_path(LabDir.of(lab).api_dir(site)).resolve()
        assert k8s.CoreV1Api(api).list_namespace().items


def test_official_client_lists_labels_patches_and_watches(lab: Path) -> None:
    for site in ("main", "backup"):
        names = {n.metadata.name for n in k8s.CoreV1Api(client(lab, site)).list_namespace().items}
        assert "default" in names
        assert (SHOP_NAMESPACE in names) == (site == "main")
    core = k8s.CoreV1Api(client(lab, "main"))
    core.create_namespace({"metadata": {"name": "lab-test"}})
    core.patch_namespace("lab-test", {"metadata": {"labels": {"tier": "gold"}}})
    labelled = core.list_namespace(label_selector="tier=gold").items
    assert [n.metadata.name for n in labelled] == ["lab-test"]
    core.patch_namespace("lab-test", {"metadata": {"annotations": {"note": "patched"}}})
    assert core.read_namespace("lab-test").metadata.annotations["note"] == "patched"

    # a new PVC of class lab-array is bound by the provisioner; the watch sees it happen
    start = core.list_namespaced_persistent_volume_claim("lab-test").metadata.resource_version
    core.create_namespaced_persistent_volume_claim("lab-test", {
        "metadata": {"name": "scratch"},
        "spec": {"storageClassName": "lab-array", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Mi"}}}})
    phases = []
    for ev in watch.Watch().stream(core.list_namespaced_persistent_volume_claim, "lab-test",
                                   resource_version=start, timeout_seconds=15):
        phases.append((ev["type"], ev["object"].status.phase if ev["object"].status else None))
        if phases[-1][1] == "Bound":
            break
    assert phases[0][0] == "ADDED" and phases[-1][1] == "Bound", phases


def test_token_refusal_and_schema_rejection(lab: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load((lab / "kubeconfig").read_text())
    for u in doc["users"]:
        u["user"]["token"] = "not-the-token"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(doc))
    api = k8s_config.new_client_from_config(config_file=str(tmp_path / "kubeconfig"),
                                            context="backup")
    with pytest.raises(ApiException) as e:
        k8s.CoreV1Api(api).list_namespace()
    assert e.value.status == 401
    custom = k8s.CustomObjectsApi(client(lab, "backup"))
    with pytest.raises(ApiException) as e:
        custom.create_cluster_custom_object(
            "snapshot.storage.k8s.io", "v1", "volumesnapshotclasses",
            {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
             "metadata": {"name": "no-driver"}, "deletionPolicy": "Delete"})
    assert e.value.status == 422 and "driver" in json.loads(e.value.body)["message"]


def test_status_json_shape(lab: Path) -> None:
    r = run_cli("status", "--dir", str(lab), "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["running"] is True
    assert set(st["processes"]) == set(manager.START_ORDER)
    assert all(p["alive"] and p["pid"] for p in st["processes"].values())
    for site in ("main", "backup"):
        s = st["sites"][site]
        assert s["api"]["reachable"] and s["array"]["reachable"]
        assert s["api"]["url"].startswith("https://127.0.0.1:")
    main = st["sites"]["main"]
    assert SHOP_NAMESPACE in main["namespaces"]
    vols = {v["name"] for v in main["array"]["volumes"]}
    assert {c["volume"] for c in main["pvcs"] if c["namespace"] == SHOP_NAMESPACE} <= vols
    assert isinstance(st["groups"], list)
    assert st["link"]["reachable"] and st["link"]["cut"] is False
    assert st["shop"]["alive"] and st["shop"]["control"]["rate"] == manager.DEFAULT_RATE
    human = run_cli("status", "--dir", str(lab))
    assert human.returncode == 0 and "main-array" in human.stdout and "consistency groups" in human.stdout


def _shop_report(lab: Path, pred, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rep = json.loads((lab / "shop-status.json").read_text())
            if pred(rep):
                return rep
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, "shop status did not change in time"
        time.sleep(0.2)


def test_workload_rate_zero_pauses_the_shop(lab: Path) -> None:
    _shop_report(lab, lambda r: r["committed"] > 0)
    r = run_cli("workload", "--dir", str(lab), "--rate", "0")
    assert r.returncode == 0 and "paused" in r.stdout
    assert json.loads((lab / "shop.json").read_text())["rate"] == 0
    rep = _shop_report(lab, lambda r: r["rate"] == 0)
    time.sleep(1.0)
    assert json.loads((lab / "shop-status.json").read_text())["committed"] == rep["committed"]
    assert run_cli("workload", "--dir", str(lab), "--rate", "5").returncode == 0
    _shop_report(lab, lambda r: r["rate"] == 5 and r["committed"] > rep["committed"])


def test_link_cut_restore_delay(lab: Path) -> None:
    r = run_cli("link", "--dir", str(lab), "--cut")
    assert r.returncode == 0 and "CUT" in r.stdout
    assert manager.status(lab)["link"]["cut"] is True
    r = run_cli("link", "--dir", str(lab), "--restore", "--delay", "5", "--rate", "100")
    assert r.returncode == 0, r.stderr
    link = manager.status(lab)["link"]
    assert (link["cut"], link["delay_ms"], link["rate_mbit"]) == (False, 5.0, 100.0)
    state = json.loads((lab / "lab.json").read_text())
    assert state["link_settings"] == {"delay_ms": 5.0, "rate_mbit": 100.0}
    assert run_cli("link", "--dir", str(lab), "--delay", "0", "--rate", "0").returncode == 0


@pytest.mark.parametrize("args", [
    ("workload", "--rate", "-1"),
    ("up", "--rate", "-1"),
    ("link", "--delay", "abc"),
    ("link", "--delay", "-5"),
    ("workload", "--rate", "fast"),
    ("workload", "--rate", "1e9"),
    ("workload", "--rate", "inf"),
])
def test_bad_input_is_one_error_line(lab: Path, args: tuple[str, ...]) -> None:
    r = run_cli(*args, "--dir", str(lab))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_status_of_an_unknown_dir(tmp_path: Path) -> None:
    r = run_cli("status", "--dir", str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and r.stderr.startswith("error: no lab in") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


def test_up_after_a_crash_restarts_only_the_dead(lab: Path) -> None:
    before = records(lab)
    for name in ("link", "main-array"):
        os.kill(before[name]["pid"], signal.SIGKILL)
    r = run_cli("up", "--dir", str(lab))
    assert r.returncode == 0, r.stderr
    assert "starting replication link ... ok" in r.stdout and "main array ... ok" in r.stdout
    assert "backup array ... ok" not in r.stdout
    after = records(lab)
    # only the dead restart; the shop outlives its array and reconnects to the new one
    restarted = {"link", "main-array"}
    assert all(after[n]["pid"] != before[n]["pid"] for n in restarted)
    assert {n: r for n, r in after.items() if n not in restarted} == \
        {n: r for n, r in before.items() if n not in restarted}
    assert "shop application ... ok" not in r.stdout
    assert json.loads((lab / "shop.json").read_text())["rate"] > 0
    c0 = json.loads((lab / "shop-status.json").read_text())["committed"]
    _shop_report(lab, lambda rep: rep["pid"] == before["shop"]["pid"]
                 and rep["committed"] > c0 and rep["state"] == "running", timeout=60)


def test_shop_pod_reports_the_process_truthfully(lab: Path) -> None:
    core = k8s.CoreV1Api(client(lab, "main"))
    apps = k8s.AppsV1Api(client(lab, "main"))

    def pod_phase() -> str | None:
        try:
            return core.read_namespaced_pod("shop-0", SHOP_NAMESPACE).status.phase
        except k8s.ApiException:
            return None

    deadline = time.monotonic() + 15
    while pod_phase() != "Running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_phase() == "Running"
    assert apps.read_namespaced_deployment_status("shop", SHOP_NAMESPACE).status.ready_replicas == 1
    os.kill(records(lab)["shop"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while pod_phase() != "Failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    pod = core.read_namespaced_pod("shop-0", SHOP_NAMESPACE)
    assert pod.status.phase == "Failed"
    assert "is gone" in pod.status.container_statuses[0].state.terminated.message
    assert not apps.read_namespaced_deployment_status("shop", SHOP_NAMESPACE).status.ready_replicas
    r = run_cli("up", "--dir", str(lab))  # restarts the dead shop
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 15
    while pod_phase() != "Running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_phase() == "Running"


def test_kill_9_shows_in_status_and_down_still_cleans_up(lab: Path) -> None:
    recs = records(lab)
    os.kill(recs["main-array"]["pid"], signal.SIGKILL)
    time.sleep(0.3)
    r = run_cli("status", "--dir", str(lab), "--json")
    assert r.returncode == 1
    st = json.loads(r.stdout)
    assert st["running"] is False
    assert st["processes"]["main-array"]["alive"] is False
    assert st["sites"]["main"]["array"]["reachable"] is False
    assert all(p["alive"] for n, p in st["processes"].items() if n != "main-array")
    assert "DEAD" in run_cli("status", "--dir", str(lab)).stdout

    r = run_cli("down", "--dir", str(lab))
    assert r.returncode == 0, r.stderr
    assert not [n for n, rec in recs.items() if running(rec["pid"], rec["create_time"])]
    assert LabDir.of(lab).load()["processes"] == {}


def test_ensure_up_after_down_keeps_the_objects(lab: Path) -> None:
    lines: list[str] = []
    result = manager.ensure_up(lab, progress=lines.append)  # in this process, as a notebook does
    assert result["already_running"] is False and len(result["started"]) == len(manager.START_ORDER)
    assert not [ln for ln in lines if ln.startswith("creating")]  # seeded once
    assert manager.ensure_up(lab)["already_running"] is True
    records(lab)
    core = k8s.CoreV1Api(client(lab, "main"))
    assert core.read_namespace("lab-test").metadata.labels["tier"] == "gold"
    pvcs = {p.metadata.name: p.status.phase for p in
            core.list_namespaced_persistent_volume_claim(SHOP_NAMESPACE).items}
    assert pvcs == {n: "Bound" for n in SHOP_PVCS}
    state = json.loads((lab / "lab.json").read_text())
    assert state["link_settings"] == {"delay_ms": 0.0, "rate_mbit": 0.0}
    _shop_report(lab, lambda rep: rep["pid"] == state["processes"]["shop"]["pid"]
                 and rep["committed"] > 0, timeout=15)


@pytest.mark.parametrize("text, rate", [('{"rate": 5}', 5.0), ('{"rate": 0}', 0.0),
                                        ('{"rate": Infinity}', 0.0), ('{"rate": NaN}', 0.0),
                                        ('{"rate": 1e9}', 0.0), ('{"rate": -1}', 0.0),
                                        ('{"rate": "fast"}', 0.0), ('[]', 0.0)])
def test_the_shop_reads_its_rate_within_the_bounds(tmp_path: Path, text: str, rate: float) -> None:
    """A shop.json edited by hand out of bounds pauses the shop; it never spins."""
    from types import SimpleNamespace

    from dr_kit.lab.shopapp import ShopApp

    (tmp_path / "shop.json").write_text(text)
    app = object.__new__(ShopApp)
    app.lab = SimpleNamespace(shop_control=tmp_path / "shop.json")  # type: ignore[assignment]
    app.control_path = tmp_path / "shop.json"  # each application instance has its own control file
    assert app._read_rate() == rate
