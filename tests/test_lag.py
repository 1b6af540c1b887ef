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

from dr_kit import cli, lag, published
from dr_kit.errors import InvalidInput, NotFound, Unavailable
from dr_kit.lab import Lab, site
from dr_kit.sites import Site

NS = "shop"
RULES = Path(__file__).resolve().parents[1] / "docs" / "prometheus-rules.yml"


@pytest.fixture(scope="module")
def lab(shop_lab: Path) -> Iterator[Path]:
    """The shared lab plus a VolumeGroupReplication whose selector matches no PVC: the
    array has no group for it (removed again at the end)."""
    main = site("main", shop_lab)
    k = main.kube
    k.create("Namespace", {"metadata": {"name": "pending"}})
    k.create("VolumeGroupReplication", {
        "metadata": {"name": "nothing-yet", "namespace": "pending"},
        "spec": {"volumeGroupReplicationClassName": "dr-kit-lab-array", "replicationState": "primary",
                 "source": {"selector": {"matchLabels": {"no": "such-pvc"}}}}})
    try:
        yield shop_lab
    finally:
        k.delete("VolumeGroupReplication", "nothing-yet", "pending", missing_ok=True)
        k.delete("Namespace", "pending", missing_ok=True)


@pytest.fixture(scope="module")
def main(lab: Path) -> Site:
    return site("main", lab)


def _pending_annotated(main: Site) -> None:
    """The plug-in names the array group of a resource before the group exists."""
    deadline = time.monotonic() + 20
    while not ((main.kube.get("VolumeGroupReplication", "nothing-yet", "pending") or {})
               .get("metadata", {}).get("annotations") or {}).get(published.ARRAY_GROUP):
        assert time.monotonic() < deadline, "the plug-in never annotated the pending group"
        time.sleep(0.1)


def test_read_lag_from_the_array(main: Site) -> None:
    reports = lag.read_lag(main, NS)
    assert len(reports) == 1
    r = reports[0]
    assert isinstance(r, lag.GroupLag) and r.source == "array" and r.namespace == NS
    assert r.group == "shop-dr-kit-shop" and r.resource == "VolumeGroupReplication shop/dr-kit-shop"
    assert not r.upper_bound and r.resolution_s is None and r.source_label == "array (exact)"
    assert r.position_known and r.main.generation >= 1 and r.applied is not None
    # the figures of one report agree with each other
    assert r.sequence_lag == r.main.sequence - r.applied.sequence
    assert (r.time_lag_s == 0.0) == (r.sequence_lag == 0) == (r.byte_lag == 0)
    assert r.time_lag_s is not None and r.time_lag_s < 5.0, r  # an unthrottled loopback link


def test_unknown_is_none_not_zero_before_the_group_exists(main: Site) -> None:
    _pending_annotated(main)
    (r,) = lag.read_lag(main, "pending")
    assert r.source == "array" and r.state == "pending" and r.namespace == "pending"
    assert r.sequence_lag is None and r.byte_lag is None and r.time_lag_s is None
    assert r.consistent is None and not r.position_known and "no consistency group" in r.message
    (s,) = lag.read_lag(main, "pending", source="k8s-status")
    assert s.time_lag_s is None and s.sequence_lag is None and "lastSyncTime" in s.message
    d = s.to_dict()
    assert d["time_lag_s"] is None and d["namespace"] == "pending"


def test_status_source_is_an_upper_bound_and_says_so(lab: Path, main: Site) -> None:
    (r,) = lag.read_lag(main, NS, source="k8s-status")
    assert r.source == "k8s-status" and r.group == "dr-kit-shop" and r.state == "replicating"
    assert r.sequence_lag is None and r.byte_lag is None  # the status cannot know them
    assert r.upper_bound and r.resolution_s == 1.0  # a Kubernetes time: whole seconds
    assert r.source_label == "≤, from lastSyncTime (1 s resolution)"
    assert r.time_lag_s is not None and r.time_lag_s < 30 and "upper bound" in r.message
    # the exact figure never exceeds the bound read just after it
    (exact,) = lag.read_lag(main, NS)
    (bound,) = lag.read_lag(main, NS, source="k8s-status")
    assert exact.time_lag_s is not None and bound.time_lag_s is not None
    assert exact.time_lag_s <= bound.time_lag_s + 1e-3, (exact, bound)
    with pytest.raises(NotFound, match="namespace 'nope' does not exist"):
        lag.read_lag(main, "nope")
    with pytest.raises(InvalidInput, match="source must be"):
        lag.read_lag(main, NS, source="guess")  # type: ignore[arg-type]


def test_a_driver_that_publishes_nothing_gives_the_status(lab: Path, monkeypatch) -> None:
    bare = Site.from_kubeconfig(lab / "kubeconfig", "main")
    monkeypatch.setattr(bare, "arrays", lambda **kw: {})  # as a vendor driver: no array endpoint
    assert not bare.has_array
    with pytest.raises(InvalidInput, match="publishes no array management endpoint"):
        bare.array  # noqa: B018
    assert [x.source for x in lag.read_lag(bare, NS)] == ["k8s-status"]  # auto falls back
    with pytest.raises(InvalidInput, match="publishes no array"):
        lag.read_lag(bare, NS, source="array")


def test_unreachable_array(lab: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Site.from_kubeconfig(lab / "kubeconfig", "main", array_url=f"http://127.0.0.1:{port}",
                                timeout=2)
    with pytest.raises(Unavailable, match="unreachable"):
        lag.read_lag(dead, NS)
    srv = lag.serve_metrics(dead, "127.0.0.1:0")
    try:
        fams = _scrape(srv.url)
    finally:
        srv.stop()
    assert fams["dr_kit_lag_up"][()] == 0.0 and "dr_kit_lag_time_seconds" not in fams


def test_sample_lag_and_percentiles(lab: Path, main: Site) -> None:
    _pending_annotated(main)
    seen: list[tuple[int, int]] = []
    df = lag.sample_lag(main, 1.0, 0.2, progress=lambda i, n, reps: seen.append((i, n)))
    assert list(df.columns) == lag.SAMPLE_COLUMNS
    assert seen[-1][0] == seen[-1][1] == 6
    shop = df[df["namespace"] == NS]
    pending = df[df["namespace"] == "pending"]
    assert len(shop) == 6 and len(pending) == 6
    assert shop["time"].is_monotonic_increasing and str(shop["time"].dt.tz) == "UTC"
    assert set(shop["source"]) == {"array"} and not shop["upper_bound"].any()
    assert ((shop["time_lag_s"] == 0) == (shop["sequence_lag"] == 0)).all()
    assert shop["time_lag_s"].max() < 5.0  # unthrottled loopback link
    # unknown stays unknown in the frame: NA, not 0
    assert pending["time_lag_s"].isna().all() and pending["sequence_lag"].isna().all()
    assert str(df["time_lag_s"].dtype) == "Float64" and str(df["sequence_lag"].dtype) == "Int64"

    p = lag.lag_percentiles(df).set_index("namespace")
    assert p.loc[NS, "samples"] == 6 and p.loc[NS, "unknown"] == 0
    assert p.loc[NS, "p50"] <= p.loc[NS, "p99"] <= p.loc[NS, "max"]
    assert p.loc[NS, "max"] == shop["time_lag_s"].max() and p.loc[NS, "source"] == "array (exact)"
    assert p.loc["pending", "unknown"] == 6 and pd.isna(p.loc["pending", "p99"])
    status = lag.sample_lag(main, 0.4, 0.2, NS, source="k8s-status")
    assert lag.lag_percentiles(status)["source"].tolist() == ["≤, from lastSyncTime (1 s resolution)"]
    with pytest.raises(InvalidInput):
        lag.sample_lag(main, 1, 0)
    with pytest.raises(InvalidInput):
        lag.lag_percentiles(df, q=(101,))

    # a slower link (the lab's control): the lag is visibly above zero while the shop writes
    controls = Lab(lab)
    controls.set_link(delay_ms=300)
    try:
        time.sleep(0.5)
        slow = lag.sample_lag(main, 1.0, 0.1, NS)
    finally:
        controls.set_link(delay_ms=0)
    assert slow["time_lag_s"].max() >= 0.1, slow
    assert slow["sequence_lag"].max() > 0, slow


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _labels(group: str, ns: str, source: str = "array", bound: str = "exact"
            ) -> tuple[tuple[str, str], ...]:
    return (("bound", bound), ("group", group), ("namespace", ns), ("source", source))


def test_exporter_serves_gauges_over_loopback(main: Site) -> None:
    _pending_annotated(main)
    srv = lag.serve_metrics(main, "127.0.0.1:0")
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        fams = _scrape(srv.url)
    finally:
        srv.stop()
    shop = _labels("shop-dr-kit-shop", NS)
    assert fams["dr_kit_lag_up"][()] == 1.0
    t, seq = fams["dr_kit_lag_time_seconds"][shop], fams["dr_kit_lag_sequence_entries"][shop]
    assert math.isfinite(t) and t < 5.0 and (t == 0) == (seq == 0)
    assert (fams["dr_kit_lag_bytes"][shop] == 0) == (seq == 0)
    assert math.isnan(fams["dr_kit_lag_time_resolution_seconds"][shop])  # exact
    assert fams["dr_kit_lag_time_known"][shop] == 1.0
    assert fams["dr_kit_backup_consistent"][shop] == 1.0
    assert fams["dr_kit_replication_state"][(*shop, ("state", "pair"))] == 1.0
    pend = _labels("pending-nothing-yet", "pending")
    assert math.isnan(fams["dr_kit_lag_time_seconds"][pend])  # unknown, not 0
    assert fams["dr_kit_lag_time_known"][pend] == 0.0
    srv = lag.serve_metrics(main, "127.0.0.1:0", namespace=NS, source="k8s-status")
    try:
        st = _scrape(srv.url)
    finally:
        srv.stop()
    upper = _labels("dr-kit-shop", NS, "k8s-status", "upper")
    assert st["dr_kit_lag_time_resolution_seconds"][upper] == 1.0
    assert st["dr_kit_lag_time_known"][upper] == 1.0

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
    assert [r["group"] for r in out] == ["shop-dr-kit-shop"] and out[0]["time_lag_s"] < 5.0
    assert out[0]["source"] == "array" and out[0]["upper_bound"] is False
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
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # as from a terminal: a test run started in the background by a
                            # non-interactive shell has SIGINT ignored, which children inherit
                            # (Python then installs no Ctrl-C handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/metrics" in line, line
        fams = _scrape(f"http://127.0.0.1:{port}/metrics")
        assert fams["dr_kit_lag_time_known"][_labels("shop-dr-kit-shop", NS)] == 1.0
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
    assert rc == 0


# -- many groups: one read, worst first ---------------------------------------------------------


class _FakeArray:
    def __init__(self, groups: dict[str, dict], calls: list[str]) -> None:
        self.groups, self.calls = groups, calls

    def status(self) -> dict:
        self.calls.append("status")
        return {"groups": [{"name": n, "side": "main", "lag": d} for n, d in self.groups.items()]}

    def lag(self, group: str):
        from dr_kit.storage.position import LagReport

        self.calls.append(f"lag {group}")
        if group not in self.groups:
            raise NotFound(group)
        return LagReport.from_dict(self.groups[group])


class _FakeAccess:
    management_url = "http://array"

    def __init__(self, array: _FakeArray) -> None:
        self.array = array

    def client(self, timeout: float = 10.0) -> _FakeArray:
        return self.array

    def __str__(self) -> str:
        return "array http://array"


class _FakeSite:
    """What read_lag asks of a Site: replication resources and the published array."""

    name, timeout, array_url = "main", 5.0, None

    def __init__(self, n: int, array: _FakeArray) -> None:
        self.access = _FakeAccess(array)
        self.objs = [("VolumeGroupReplication", {"metadata": {
            "name": "g", "namespace": f"app{i:03d}",
            "annotations": {published.ARRAY_GROUP: f"app{i:03d}-g"}}}) for i in range(n)]

    def replication_objects(self, namespace=None):
        return [o for o in self.objs if namespace in (None, o[1]["metadata"]["namespace"])]

    def arrays(self):
        return {"lab-array": self.access}

    def array_for(self, storage_class=None):
        return self.access

    @property
    def has_array(self) -> bool:
        return True

    def require_namespace(self, name: str) -> dict:
        return {}


def _lag_dict(group: str, t: float | None, seq: int | None = 0) -> dict:
    return {"group": group, "state": "pair", "main": "g1/10", "applied": "g1/9",
            "sequence_lag": seq, "byte_lag": None if seq is None else seq * 4096,
            "time_lag_s": t, "consistent": True, "measured_at": 1.0, "source": "array",
            "message": ""}


def test_many_groups_are_read_with_one_array_call_and_ranked_worst_first() -> None:
    calls: list[str] = []
    groups = {f"app{i:03d}-g": _lag_dict(f"app{i:03d}-g", i / 100, i) for i in range(100)}
    groups["app007-g"] = _lag_dict("app007-g", None, None)  # unknown
    del groups["app042-g"]  # labelled, no group on the array yet
    site_ = _FakeSite(100, _FakeArray(groups, calls))
    reports = lag.read_lag(site_)  # type: ignore[arg-type]
    assert calls == ["status"], "one status call for every group, not one call per group"
    assert len(reports) == 100 and all(r.source == "array" for r in reports)
    pending = next(r for r in reports if r.namespace == "app042")
    assert pending.time_lag_s is None and pending.state == "pending"
    ranked = lag.worst_first(reports)
    # unknown first (two of them, by namespace), then the largest time lag
    assert [r.namespace for r in ranked[:4]] == ["app007", "app042", "app099", "app098"]
    assert [r.time_lag_s for r in ranked[2:5]] == [0.99, 0.98, 0.97]
    # a read of one namespace asks for that group alone
    calls.clear()
    one = lag.read_lag(site_, "app003")  # type: ignore[arg-type]
    assert calls == ["lag app003-g"] and one[0].time_lag_s == 0.03


def test_cli_top_lists_the_worst_groups(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pending_annotated(site("main", lab))
    d = str(lab)
    assert cli.main(["lag", "--json", "--top", "1", "--dir", d]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in out] == ["pending-nothing-yet"]  # unknown lag ranks first
    assert cli.main(["lag", "--top", "1", "--dir", d]) == 0
    table = capsys.readouterr().out
    assert "pending-nothing-yet" in table and "shop-dr-kit-shop" not in table
    assert "(1 of 2 groups, worst first; --top 1)" in table
    for bad in ("0", "x", "-3"):
        assert cli.main(["lag", "--top", bad, "--dir", d]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--top takes a number" in err[0], err
