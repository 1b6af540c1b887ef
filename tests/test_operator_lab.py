"""The lab's own operator process, with the lab's storage plug-ins and arrays (slow).

- many namespaces labelled at once are each protected, by watch, with a fixed set of
  threads, and the operator serves its health and metrics;
- an idle, caught-up group reports a known lag, not "unknown";
- a group promoted behind the kit's back is never reported Protected.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from dr_kit.lab import manager
from dr_kit.lab.layout import LabDir
from dr_kit.operator import cli
from dr_kit.storage.client import ArrayClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LABEL = {"dr-kit.io/backup": "ConsistentCopyToCloud"}


def wait_for(cond, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("oplab") / "lab"
    try:
        manager.up(d, timeout=120)
        yield d
    finally:
        manager.down(d, purge=True)


def core(lab: Path) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(str(lab / "kubeconfig"), "main"))


def operator_process(lab: Path) -> psutil.Process:
    rec = LabDir.of(lab).load()["processes"]["operator"]
    return psutil.Process(rec["pid"])


def operator_url(lab: Path) -> str:
    log = LabDir.of(lab).log_file("operator").read_text()
    found = re.findall(r"health and metrics on (http://127\.0\.0\.1:\d+)", log)
    assert found, "the lab's operator does not say where it serves its health"
    return found[-1]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def states(lab: Path, names: list[str]) -> dict[str, str]:
    rows = cli.protection_table(lab_dir=lab)
    return {r["namespace"]: r["state"] for r in rows if r["namespace"] in names}


APPS = [f"app{i:02d}" for i in range(10)]


@pytest.fixture(scope="module")
def apps(lab: Path) -> dict[str, float]:
    """Ten namespaces of five PVCs, labelled within a moment and waited for until all are
    Protected (the tests below that look at them do not depend on running after the first)."""
    api = core(lab)
    for name in APPS:
        api.create_namespace({"metadata": {"name": name}})
        for j in range(5):
            api.create_namespaced_persistent_volume_claim(name, {
                "metadata": {"name": f"vol{j}"},
                "spec": {"storageClassName": "lab-array", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "16Mi"}}}})
    proc = operator_process(lab)
    threads_before = proc.num_threads()
    t0 = time.monotonic()
    for name in APPS:  # all labelled within a moment
        api.patch_namespace(name, {"metadata": {"labels": LABEL}})
    wait_for(lambda: set(states(lab, APPS).values()) == {"Protected"}, 300,
             "10 namespaces x 5 PVCs Protected")
    return {"took": time.monotonic() - t0, "threads_before": threads_before,
            "threads_after": proc.num_threads()}


def test_many_namespaces_labelled_at_once_are_all_protected(lab: Path, apps: dict[str, float]) -> None:
    names = APPS
    print(f"\n10x5 labelled -> all Protected (backup PVCs bound, groups replicating): "
          f"{apps['took']:.1f} s; operator threads {apps['threads_before']:.0f} -> "
          f"{apps['threads_after']:.0f}")
    assert apps["threads_after"] <= apps["threads_before"] + 2  # a fixed set, not one per namespace
    rows = {r["namespace"]: r for r in cli.protection_table(lab_dir=lab)}
    for name in names:
        assert rows[name]["pvcCount"] == 5 and rows[name]["backup"]["bound"] == 5

    # the lab's operator serves its health and metrics on a loopback port
    url = operator_url(lab)
    assert get(url + "/healthz") == (200, "ok\n") and get(url + "/readyz")[0] == 200
    text = get(url + "/metrics")[1]
    assert re.search(r"^dr_kit_operator_protected_namespaces (\d+)", text, re.M)
    protected = float(re.search(r"^dr_kit_operator_protected_namespaces (\S+)", text,
                                re.M).group(1))
    assert protected >= 10


def test_an_idle_caught_up_group_has_a_known_lag(lab: Path, apps: dict[str, float]) -> None:
    # app00 has never been written: caught up since its initial copy ended
    st = wait_for(lambda: (s := cli.protection_status("app00", lab_dir=lab))["lag"]["seconds"]
                  is not None and s, 30, "a known lag")
    assert st["state"] == "Protected" and st["lastSync"]
    assert st["lag"]["seconds"] < 5 and st["lag"]["bound"] == "upper"
    time.sleep(3)  # idle: the bound does not grow with the idle time
    assert cli.protection_status("app00", lab_dir=lab)["lag"]["seconds"] < 5


def test_writes_only_on_change_when_idle(lab: Path, apps: dict[str, float]) -> None:
    api = core(lab)
    names = APPS
    rvs = {n: api.read_namespace(n).metadata.resource_version for n in names}
    url = operator_url(lab)

    def writes() -> float:
        text = get(url + "/metrics")[1]
        return sum(float(v) for v in re.findall(
            r"^dr_kit_operator_api_writes_total\{[^}]*\} (\S+)", text, re.M))

    w0 = writes()
    time.sleep(10)
    w1 = writes()
    print(f"\noperator API writes while idle: {w1 - w0:.0f} in 10 s")
    assert w1 == w0
    assert {n: api.read_namespace(n).metadata.resource_version for n in names} == rvs


def test_a_group_promoted_behind_the_kits_back_is_not_protected(lab: Path) -> None:
    status = cli.protect("shop", lab_dir=lab, wait=120)
    assert status["state"] == "Protected", status
    st = LabDir.of(lab).load()
    main = ArrayClient(LabDir.of(lab).array_endpoint("main", st)["mgmt_url"],
                       token=LabDir.of(lab).array_token("main"))
    backup = ArrayClient(LabDir.of(lab).array_endpoint("backup", st)["mgmt_url"],
                         token=LabDir.of(lab).array_token("backup"))
    group = "shop-dr-kit-shop"  # the lab plug-in's array group for VolumeGroupReplication
    backup.group_action(group, "promote")
    main.delete_group(group)
    seen = wait_for(lambda: (s := cli.protection_status("shop", lab_dir=lab))["state"]
                    != "Protected" and s, 30, "the status to stop saying Protected")
    print(f"\nafter promotion behind the kit's back: {seen['state']} - {seen['message']}")
    assert seen["state"] in ("Protecting", "Degraded")
    for _ in range(10):  # and it stays so: the group does not replicate
        time.sleep(1)
        now = cli.protection_status("shop", lab_dir=lab)
        assert now["state"] != "Protected", now
