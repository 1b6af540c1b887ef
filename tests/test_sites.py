"""Sites against a real lab: the frames the notebooks show side by side, and one clear
error line for a bad kubeconfig, a bad context, refused credentials, an unreachable site."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dr_kit import sites
from dr_kit.errors import InvalidInput, NotFound, Unavailable
from dr_kit.lab import manager
from dr_kit.operator.cli import protect
from dr_kit.sites import ProgressEvent, Site, side_by_side

NS = "shop"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("sitelab")
    manager.up(d)
    try:
        assert protect(NS, lab_dir=d, wait=40)["state"] == "Protected"
        yield d
    finally:
        manager.down(d, purge=True)


@pytest.fixture(scope="module")
def pair(lab: Path) -> tuple[Site, Site]:
    return Site.lab("main", lab), Site.lab("backup", lab)


def test_lab_sites_know_their_array(lab: Path, pair: tuple[Site, Site]) -> None:
    main, backup = pair
    assert main.mode == backup.mode == "lab" and main.context == "main"
    assert main.has_array and main.array_url != backup.array_url
    assert main.array.status()["name"] == "main" and backup.array.status()["name"] == "backup"
    assert main.peer().name == "backup" and backup.peer().name == "main"
    assert "token" not in repr(main).lower() and "array http://127.0.0.1:" in repr(main)
    assert isinstance(main.ping(), dict)


def test_frames(pair: tuple[Site, Site]) -> None:
    main, backup = pair
    ns = main.namespaces().set_index("name")
    assert list(main.namespaces().columns) == sites.NAMESPACE_COLUMNS
    assert bool(ns.loc[NS, "protected"]) and ns.loc[NS, "protection_state"] == "Protected"
    assert not bool(ns.loc["default", "protected"])
    assert NS in backup.namespaces()["name"].tolist()

    mp, bp = main.pvcs(NS), backup.pvcs(NS)
    assert list(mp.columns) == sites.PVC_COLUMNS
    assert mp["name"].tolist() == bp["name"].tolist() == ["sales-db", "stock-db"]
    assert (mp["phase"] == "Bound").all() and (bp["phase"] == "Bound").all()
    assert set(mp["consistency_group"]) == set(bp["consistency_group"]) == {"dr-kit-shop"}
    assert bp["replicated_from"].tolist() == ["main", "main"] and mp["replicated_from"].isna().all()
    assert (mp["capacity"] == 64 * 2**20).all() and str(mp["capacity"].dtype) == "Int64"
    assert str(mp["created"].dt.tz) == "UTC"
    assert len(main.pvcs()) >= 2  # all namespaces

    pvs = main.pvs()
    assert list(pvs.columns) == sites.PV_COLUMNS
    shop_pvs = pvs[pvs["claim"].str.startswith(f"{NS}/", na=False)]
    assert sorted(shop_pvs["claim"]) == ["shop/sales-db", "shop/stock-db"]
    assert (shop_pvs["volume_handle"] == shop_pvs["name"]).all()
    by_claim = shop_pvs.set_index("claim")["volume_handle"]
    assert by_claim["shop/sales-db"] == mp.set_index("name").loc["sales-db", "volume"]
    bpv = backup.pvs().set_index("claim")
    assert bpv.loc["shop/sales-db", "replicated_from"] == "main"
    assert bpv.loc["shop/sales-db", "reclaim_policy"] == "Retain"

    deadline = time.monotonic() + 20
    while True:
        rep = main.replication(NS)
        if (len(rep) and rep["completed"].fillna(False).iloc[0]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert list(rep.columns) == sites.REPLICATION_COLUMNS and len(rep) == 1
    r = rep.iloc[0]
    assert r["kind"] == "VolumeGroupReplication" and r["name"] == "dr-kit-shop"
    assert r["state"] == "Primary" and bool(r["completed"]) and not bool(r["degraded"])
    assert str(rep["completed"].dtype) == "boolean"
    assert r["pvcs"] == "sales-db,stock-db" and not pd.isna(r["last_sync_time"])
    assert r["last_sync_duration_s"] >= 0 and r["last_sync_bytes"] >= 0
    assert backup.replication(NS).empty  # nothing replicates from the backup site

    snaps = backup.snapshots(NS)
    assert snaps.empty and list(snaps.columns) == sites.SNAPSHOT_COLUMNS
    assert main.snapshots().empty


def test_side_by_side(pair: tuple[Site, Site]) -> None:
    main, backup = pair
    a, b = side_by_side(main, backup, "pvcs", namespace=NS)
    assert a["name"].tolist() == b["name"].tolist()
    f = side_by_side(main, backup, "pvcs", namespace=NS, how="frame")
    assert set(f.columns.get_level_values(0)) == {"main", "backup"}
    assert f.loc[(NS, "sales-db"), ("main", "volume")] == f.loc[(NS, "sales-db"), ("backup", "volume")]
    pv = side_by_side(main, backup, "pvs", how="frame")
    assert pv.loc["shop/stock-db", ("backup", "replicated_from")] == "main"
    ns = side_by_side(main, backup, "namespaces", how="frame")
    assert bool(ns.loc[NS, ("main", "protected")])
    rep = side_by_side(main, backup, "replication", namespace=NS, how="frame")
    assert len(rep) == 1 and pd.isna(rep.iloc[0][("backup", "state")])
    with pytest.raises(InvalidInput, match="what must be"):
        side_by_side(main, backup, "pods")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="how must be"):
        side_by_side(main, backup, how="grid")  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="namespace 'nope' does not exist at the main site"):
        side_by_side(main, backup, "pvcs", namespace="nope")


def _kubeconfig_with(lab: Path, tmp_path: Path, **change: str) -> Path:
    doc = yaml.safe_load((lab / "kubeconfig").read_text())
    for c in doc["clusters"]:
        if "server" in change:
            c["cluster"]["server"] = change["server"]
    for u in doc["users"]:
        if "token" in change:
            u["user"]["token"] = change["token"]
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_bad_kubeconfig_context_and_unreachable(lab: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"'nosuch'.*contexts: main, backup"):
        Site.from_kubeconfig(lab / "kubeconfig", "nosuch")
    with pytest.raises(NotFound, match="does not exist"):
        Site.from_kubeconfig(tmp_path / "missing", "main")
    junk = tmp_path / "junk"
    junk.write_text("this: [is not a kubeconfig")
    with pytest.raises(InvalidInput):
        Site.from_kubeconfig(junk, "main")
    with pytest.raises(NotFound, match="no lab in"):
        Site.lab("main", tmp_path / "no-lab")
    with pytest.raises(InvalidInput, match="'main' or 'backup'"):
        Site.lab("elsewhere", lab)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Site.from_kubeconfig(_kubeconfig_with(lab, tmp_path, server=f"https://127.0.0.1:{port}"),
                                "main", timeout=3)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable") as e:
        down.namespaces()
    assert time.monotonic() - t0 < 10 and "\n" not in str(e.value)
    with pytest.raises(InvalidInput, match="no known array management endpoint"):
        down.array  # noqa: B018

    (tmp_path / "bad").mkdir()
    refused = Site.from_kubeconfig(_kubeconfig_with(lab, tmp_path / "bad", token="wrong"), "main")
    with pytest.raises(InvalidInput, match="refused the kubeconfig credentials") as e:
        refused.pvs()
    assert "wrong" not in str(e.value)


def test_small_helpers() -> None:
    assert sites.parse_duration("1.5s") == 1.5
    assert sites.parse_duration("2m3s") == 123.0
    assert sites.parse_duration("150ms") == pytest.approx(0.15)
    assert sites.parse_duration("soon") is None and sites.parse_duration(None) is None
    events: list[ProgressEvent] = []
    calls = iter([(False, "a"), (False, "b"), (True, "done")])
    assert sites.wait_until(lambda: next(calls), task="t", timeout=5, progress=events.append,
                            interval=0.01) == "done"
    assert events[0].message == "a" and events[-1].done and str(events[-1]).startswith("t: done")
    with pytest.raises(Unavailable, match="not done after"):
        sites.wait_until(lambda: (False, "never"), task="t", timeout=0.05, interval=0.01)
