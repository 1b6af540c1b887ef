"""Journal lag against a real lab: array and status sources, unknown is never 0, sampling,
percentiles, the Prometheus exporter (scraped over loopback), the rule file, the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dr_kit import cli, lag
from dr_kit.errors import InvalidInput, NotFound, Unavailable
from dr_kit.lab import manager
from dr_kit.operator.cli import protect
from dr_kit.sites import REPL, Site

NS = "shop"
RULES = Path(__file__).resolve().parents[1] / "docs" / "prometheus-rules.yml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("laglab")
    manager.up(d, rate=25)
    try:
        assert protect(NS, lab_dir=d, wait=40)["state"] == "Protected"
        main = Site.lab("main", d)
        deadline = time.monotonic() + 40
        while not (any(r.state == "pair" and r.consistent for r in lag.read_lag(main, NS))
                   and [r.state for r in lag.read_lag(main, NS, source="k8s-status")]
                   == ["replicating"]):  # the resource status follows the array a pass later
            assert time.monotonic() < deadline, "the shop's group never reached pair"
            time.sleep(0.2)
        _pending_group(main)
        yield d
    finally:
        manager.down(d, purge=True)


def _pending_group(main: Site) -> None:
    """A VolumeGroupReplication whose selector matches no PVC: the array has no group for it."""
    k = main.kube
    k.call(k.core.create_namespace, {"metadata": {"name": "pending"}})
    k.call(k.custom.create_namespaced_custom_object, *REPL, "pending", "volumegroupreplications", {
        "apiVersion": "/".join(REPL), "kind": "VolumeGroupReplication",
        "metadata": {"name": "nothing-yet", "namespace": "pending"},
        "spec": {"volumeGroupReplicationClassName": "dr-kit-lab-array", "replicationState": "primary",
                 "source": {"selector": {"matchLabels": {"no": "such-pvc"}}}}})


@pytest.fixture(scope="module")
def main(lab: Path) -> Site:
    return Site.lab("main", lab)


def test_read_lag_from_the_array(main: Site) -> None:
    reports = lag.read_lag(main, NS)
    assert len(reports) == 1
    r = reports[0]
    assert isinstance(r, lag.GroupLag) and r.source == "array" and r.namespace == NS
    assert r.group == "shop-dr-kit-shop" and r.resource == "VolumeGroupReplication shop/dr-kit-shop"
    assert r.position_known and r.main.generation >= 1
    assert r.sequence_lag is not None and r.sequence_lag >= 0
    assert r.byte_lag is not None and r.byte_lag >= 0
    assert r.time_lag_s is not None and r.time_lag_s >= 0
    assert (r.time_lag_s == 0.0) == (r.sequence_lag == 0)


def test_unknown_is_none_not_zero_before_the_group_exists(main: Site) -> None:
    (r,) = lag.read_lag(main, "pending")
    assert r.source == "array" and r.state == "pending" and r.namespace == "pending"
    assert r.sequence_lag is None and r.byte_lag is None and r.time_lag_s is None
    assert r.consistent is None and not r.position_known and "no consistency group" in r.message
    (s,) = lag.read_lag(main, "pending", source="k8s-status")
    assert s.time_lag_s is None and s.sequence_lag is None and "lastSyncTime" in s.message
    d = s.to_dict()
    assert d["time_lag_s"] is None and d["namespace"] == "pending"


def test_status_source_and_a_site_without_array(lab: Path, main: Site) -> None:
    (r,) = lag.read_lag(main, NS, source="k8s-status")
    assert r.source == "k8s-status" and r.group == "dr-kit-shop" and r.state == "replicating"
    assert r.sequence_lag is None and r.byte_lag is None  # the status cannot know them
    assert r.time_lag_s is not None and 0 <= r.time_lag_s < 30
    real = Site.from_kubeconfig(lab / "kubeconfig", "main")
    assert not real.has_array
    with pytest.raises(InvalidInput, match="no known array management endpoint"):
        real.array  # noqa: B018
    assert [x.source for x in lag.read_lag(real, NS)] == ["k8s-status"]  # auto falls back
    with pytest.raises(InvalidInput, match="no known array"):
        lag.read_lag(real, NS, source="array")
    with pytest.raises(NotFound, match="namespace 'nope' does not exist"):
        lag.read_lag(main, "nope")
    with pytest.raises(InvalidInput, match="source must be"):
        lag.read_lag(main, NS, source="guess")  # type: ignore[arg-type]


def test_unreachable_array(lab: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = Site("main", kubeconfig=lab / "kubeconfig", context="main",
                array_url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(Unavailable, match="unreachable"):
        lag.read_lag(site, NS)
    srv = lag.serve_metrics(site, "127.0.0.1:0")
    try:
        fams = _scrape(srv.url)
    finally:
        srv.stop()
    assert fams["dr_kit_lag_up"][()] == 0.0 and "dr_kit_lag_time_seconds" not in fams


def test_sample_lag_and_percentiles(lab: Path, main: Site) -> None:
    seen: list[tuple[int, int]] = []
    df = lag.sample_lag(main, 1.0, 0.2, progress=lambda i, n, reps: seen.append((i, n)))
    assert list(df.columns) == lag.SAMPLE_COLUMNS
    assert seen[-1][0] == seen[-1][1] == 6
    shop = df[df["namespace"] == NS]
    pending = df[df["namespace"] == "pending"]
    assert len(shop) == 6 and len(pending) == 6
    assert shop["time"].is_monotonic_increasing and str(shop["time"].dt.tz) == "UTC"
    assert (shop["sequence_lag"] >= 0).all() and (shop["byte_lag"] >= 0).all()
    assert (shop["time_lag_s"] >= 0).all() and set(shop["source"]) == {"array"}
    # unknown stays unknown in the frame: NA, not 0
    assert pending["time_lag_s"].isna().all() and pending["sequence_lag"].isna().all()
    assert str(df["time_lag_s"].dtype) == "Float64" and str(df["sequence_lag"].dtype) == "Int64"

    p = lag.lag_percentiles(df).set_index("namespace")
    assert p.loc[NS, "samples"] == 6 and p.loc[NS, "unknown"] == 0
    assert 0 <= p.loc[NS, "p50"] <= p.loc[NS, "p99"] <= p.loc[NS, "max"]
    assert p.loc["pending", "unknown"] == 6 and pd.isna(p.loc["pending", "p99"])
    with pytest.raises(InvalidInput):
        lag.sample_lag(main, 1, 0)
    with pytest.raises(InvalidInput):
        lag.lag_percentiles(df, q=(101,))

    # a slower link: the time lag is visibly above zero while the shop writes
    manager.set_link(lab, delay_ms=300)
    try:
        time.sleep(0.5)
        slow = lag.sample_lag(main, 1.0, 0.1, NS)
    finally:
        manager.set_link(lab, delay_ms=0)
    assert slow["time_lag_s"].max() >= 0.1, slow
    assert (slow["time_lag_s"].dropna() >= 0).all()


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _labels(group: str, ns: str, source: str = "array") -> tuple[tuple[str, str], ...]:
    return (("group", group), ("namespace", ns), ("source", source))


def test_exporter_serves_gauges_over_loopback(main: Site) -> None:
    srv = lag.serve_metrics(main, "127.0.0.1:0")
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        fams = _scrape(srv.url)
    finally:
        srv.stop()
    shop = _labels("shop-dr-kit-shop", NS)
    assert fams["dr_kit_lag_up"][()] == 1.0
    assert fams["dr_kit_lag_time_seconds"][shop] >= 0
    assert fams["dr_kit_lag_sequence_entries"][shop] >= 0
    assert fams["dr_kit_lag_bytes"][shop] >= 0
    assert fams["dr_kit_lag_time_known"][shop] == 1.0
    assert fams["dr_kit_backup_consistent"][shop] == 1.0
    assert fams["dr_kit_replication_state"][(*shop, ("state", "pair"))] == 1.0
    pend = _labels("pending-nothing-yet", "pending")
    assert math.isnan(fams["dr_kit_lag_time_seconds"][pend])  # unknown, not 0
    assert fams["dr_kit_lag_time_known"][pend] == 0.0

    # every metric the example rules use is one the exporter serves
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert {r["alert"] for g in rules["groups"] for r in g["rules"]} >= {
        "DrKitReplicationLagAboveRPO", "DrKitReplicationLagUnknown"}
    used = {m for e in exprs for m in re.findall(r"\bdr_kit_[a-z_]+", e)}
    assert used and used <= set(fams), used - set(fams)
    assert all(r.get("for") for g in rules["groups"] for r in g["rules"])


def test_listen_address_is_loopback_unless_allowed() -> None:
    assert lag.parse_listen("127.0.0.1:9469") == ("127.0.0.1", 9469)
    assert lag.parse_listen("[::1]:9469") == ("::1", 9469)
    assert lag.parse_listen("localhost:1") == ("localhost", 1)
    assert lag.parse_listen(":9469") == ("127.0.0.1", 9469)
    for bad in ("0.0.0.0:9469", "192.0.2.1:80", "[::]:9469"):
        with pytest.raises(InvalidInput, match="non-loopback"):
            lag.parse_listen(bad)
    assert lag.parse_listen("0.0.0.0:9469", allow_remote=True) == ("0.0.0.0", 9469)
    for bad in ("9469", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(InvalidInput):
            lag.parse_listen(bad)


def test_cli_lag(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(lab)
    assert cli.main(["lag", "--json", "-n", NS, "--dir", d]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in out] == ["shop-dr-kit-shop"] and out[0]["time_lag_s"] >= 0
    assert cli.main(["lag", "--dir", d]) == 0
    table = capsys.readouterr().out
    assert "shop-dr-kit-shop" in table and re.search(r"pending-nothing-yet .* unknown", table)
    for argv, msg in ((["lag", "--serve", "0.0.0.0:9469"], "non-loopback"),
                      (["lag", "-n", "nope"], "namespace 'nope' does not exist"),
                      (["lag", "--serve", "nonsense"], "HOST:PORT")):
        assert cli.main([*argv, "--dir", d]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err


def test_cli_serve_until_interrupted(lab: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dr_kit.cli", "lag", "--serve",
                             f"127.0.0.1:{port}", "--dir", str(lab)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/metrics" in line, line
        fams = _scrape(f"http://127.0.0.1:{port}/metrics")
        assert fams["dr_kit_lag_time_known"][_labels("shop-dr-kit-shop", NS)] == 1.0
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
    assert rc == 0
