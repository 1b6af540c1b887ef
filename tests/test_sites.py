"""Sites against a real lab: the frames the notebooks show side by side, the array its
driver publishes, and one clear error line for a bad kubeconfig, a bad context, refused
credentials, an unreachable site."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from dr_kit import published, sites
from dr_kit.errors import InvalidInput, NotFound, Unavailable
from dr_kit.lab import site
from dr_kit.sites import ProgressEvent, Site, side_by_side

NS = "shop"


@pytest.fixture(scope="module")
def pair(shop_lab: Path) -> tuple[Site, Site]:
    return site("main", shop_lab), site("backup", shop_lab)


def test_sites_know_the_array_their_driver_publishes(shop_lab: Path,
                                                    pair: tuple[Site, Site]) -> None:
    main, backup = pair
    assert main.context == "main" and main.kubeconfig == str(shop_lab / "kubeconfig")
    assert main.has_array and backup.has_array
    (m,), (b,) = main.arrays().values(), backup.arrays().values()
    assert m.storage_class == "lab-array" and m.secret == "lab-storage/array-credentials"
    assert m.management_url != b.management_url and m.management_url.startswith("http://127.0.0.1:")
    assert main.array.status()["name"] == "main" and backup.array.status()["name"] == "backup"
    assert "token" not in repr(main).lower() and "kubeconfig" not in repr(main)
    assert isinstance(main.ping(), dict) and main.ping().get("gitVersion")


class _FakeKube:
    """Storage classes and Secrets as dicts, for the publication rules alone."""

    def __init__(self, classes: list[dict[str, Any]], secrets: dict[tuple[str, str], Any]) -> None:
        self.classes, self.secrets = classes, secrets

    def items(self, kind: str, namespace: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        assert kind == "StorageClass"
        return self.classes

    def get(self, kind: str, name: str, namespace: str | None = None) -> Any:
        got = self.secrets.get((namespace or "", name))
        if isinstance(got, Exception):
            raise got
        return got


def _site_with(kube: _FakeKube, array_url: str | None = None) -> Site:
    s = Site.__new__(Site)
    s.name, s.timeout, s.array_url, s._arrays, s.kube = "main", 1.0, array_url, None, kube  # type: ignore[assignment]
    return s


def _sc(name: str, secret: str | None, ns: str | None = "drv") -> dict[str, Any]:
    params = {}
    if secret:
        params = {published.SECRET_NAME_PARAM: secret, published.SECRET_NAMESPACE_PARAM: ns}
    return {"metadata": {"name": name}, "parameters": params}


def _secret(**values: str) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


def test_publication_rules_without_a_cluster() -> None:
    url = published.MANAGEMENT_URL_KEY
    s = _site_with(_FakeKube(
        [_sc("fast", "creds"), _sc("plain", None), _sc("vendor", "vendor-creds"),
         _sc("hidden", "secret-we-may-not-read")],
        {("drv", "creds"): _secret(**{url: "http://10.0.0.1:8080", "token": "t0ken"}),
         ("drv", "vendor-creds"): _secret(user="admin", password="x"),  # not dr_kit's array API
         ("drv", "secret-we-may-not-read"): InvalidInput("forbidden")}))
    arrays = s.arrays()
    assert list(arrays) == ["fast"] and arrays["fast"].token == "t0ken"
    assert "t0ken" not in repr(arrays["fast"]) and "t0ken" not in str(arrays["fast"])
    assert s.array_for("fast") is arrays["fast"] and s.array_for() is arrays["fast"]
    assert s.has_array
    nothing = _site_with(_FakeKube([_sc("plain", None)], {}))
    assert nothing.arrays() == {} and not nothing.has_array
    with pytest.raises(InvalidInput, match="publishes no array management endpoint"):
        nothing.array  # noqa: B018
    given = _site_with(_FakeKube([], {}), array_url="http://127.0.0.1:1")
    assert given.has_array and given.array_for().management_url == "http://127.0.0.1:1"
    two = _site_with(_FakeKube(
        [_sc("a", "ca"), _sc("b", "cb")],
        {("drv", "ca"): _secret(**{url: "http://a"}), ("drv", "cb"): _secret(**{url: "http://b"})}))
    assert two.array_for() is None and two.array_for("b").management_url == "http://b"


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
    # nothing replicates from the backup site: it holds no replication resource, or (after a
    # DR cycle on this shared lab) the secondary role's one
    assert backup.replication(NS)["state"].isin(["Secondary"]).all()

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
    for site_pvs in side_by_side(main, backup, "pvs", namespace=NS):  # only the namespace's claims
        assert len(site_pvs) >= 2 and site_pvs["claim"].str.startswith(f"{NS}/").all()
    ns = side_by_side(main, backup, "namespaces", how="frame")
    assert bool(ns.loc[NS, ("main", "protected")])
    rep = side_by_side(main, backup, "replication", namespace=NS, how="frame")
    assert len(rep) == 1 and rep.iloc[0][("main", "state")] == "Primary"
    assert pd.isna(rep.iloc[0][("backup", "state")]) or rep.iloc[0][("backup", "state")] == "Secondary"
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


def test_bad_kubeconfig_context_and_unreachable(shop_lab: Path, tmp_path: Path) -> None:
    lab = shop_lab
    with pytest.raises(InvalidInput, match=r"'nosuch'.*contexts: main, backup"):
        Site.from_kubeconfig(lab / "kubeconfig", "nosuch")
    with pytest.raises(NotFound, match="does not exist"):
        Site.from_kubeconfig(tmp_path / "missing", "main")
    junk = tmp_path / "junk"
    junk.write_text("this: [is not a kubeconfig")
    with pytest.raises(InvalidInput):
        Site.from_kubeconfig(junk, "main")
    with pytest.raises(NotFound, match="no lab in"):
        site("main", tmp_path / "no-lab")
    with pytest.raises(InvalidInput, match="'main' or 'backup'"):
        site("elsewhere", lab)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Site.from_kubeconfig(_kubeconfig_with(lab, tmp_path, server=f"https://127.0.0.1:{port}"),
                                "main", timeout=3)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable") as e:
        down.namespaces()
    assert time.monotonic() - t0 < 10 and "\n" not in str(e.value)
    with pytest.raises(Unavailable, match="unreachable"):
        down.array  # noqa: B018 - looking for what the driver publishes needs the API

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


def test_side_by_side_pvs_keeps_a_released_pv_of_a_claim_made_again(monkeypatch) -> None:
    """A claim deleted and made again (a restore, twice) leaves its old PV Released: the
    claim's row is its bound PV, the released one a row of its own."""
    def pvs(*rows: tuple[str, str | None, str]) -> pd.DataFrame:
        return pd.DataFrame([dict.fromkeys(sites.PV_COLUMNS) | {"name": n, "claim": c, "phase": ph}
                             for n, c, ph in rows], columns=sites.PV_COLUMNS)

    tables = {"main": pvs(("pv-1", "shop/a", "Bound"), ("pv-x", None, "Available")),
              "backup": pvs(("pv-old", "shop/a", "Released"), ("pv-new", "shop/a", "Bound"))}
    monkeypatch.setattr(sites, "frame", lambda site, what, namespace=None: tables[site.name])

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    f = side_by_side(Named("main"), Named("backup"), "pvs", how="frame")  # type: ignore[arg-type]
    assert f.loc["shop/a", ("backup", "name")] == "pv-new"
    assert f.loc["shop/a", ("main", "name")] == "pv-1"
    assert f.loc["shop/a (pv-old)", ("backup", "phase")] == "Released"
    assert f.loc["(unclaimed) pv-x", ("main", "phase")] == "Available"
