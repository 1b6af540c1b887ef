"""Snapshot groups against a real lab (``dr-kit lab up`` in a temporary directory).

Create, list, restore, open and delete a snapshot group while the shop writes; the
correctness check: the analytics on the snapshot equal the same analytics on the main
site's databases cut at the snapshot's consistency point; bad input changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dr_kit import analytics, cli, published, snapshots
from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.lab import site
from dr_kit.lab.layout import CSI_DRIVER, LabDir
from dr_kit.lag import read_lag
from dr_kit.sites import Site
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import ArrayClient

NS = "shop"


@pytest.fixture(scope="module")
def lab(shop_lab: Path) -> Path:
    wait_consistent(site("main", shop_lab))
    return shop_lab


@pytest.fixture(scope="module")
def sites(lab: Path) -> tuple[Site, Site]:
    return site("main", lab), site("backup", lab)


@pytest.fixture(autouse=True)
def _no_leftover_groups(sites: tuple[Site, Site]) -> Iterator[None]:
    """A test that fails half-way does not leave its snapshot groups to the next ones."""
    yield
    backup = sites[1]
    for name in _vgs_names(backup):
        with contextlib.suppress(DrKitError):
            snapshots.delete_snapshot_group(backup, name, NS)


def wait_consistent(main: Site, timeout: float = 40.0) -> None:
    """Until the initial copy is done: the backup is a consistent image."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reps = read_lag(main, NS)
        if reps and all(r.state == "pair" and r.consistent for r in reps):
            return
        time.sleep(0.2)
    raise AssertionError(f"the shop's group is not consistent after {timeout} s: {reps}")


def _vgs_names(site: Site, ns: str = NS) -> list[str]:
    return sorted(o["metadata"]["name"] for o in site.kube.items("VolumeGroupSnapshot", ns))


def _pvc_names(site: Site, ns: str = NS) -> list[str]:
    return sorted(p["metadata"]["name"] for p in site.kube.items("PersistentVolumeClaim", ns))


# -- the reference: the main site's databases, cut at the snapshot's consistency point ------


class MainReference:
    """A crash image of the main volumes (array snapshot + clones), cut to orders <= K.

    Orders commit in order-id order and stock movements in movement-id order, so the
    backup image holds orders 1..K and movements 1..M; deleting everything after K and M
    from a later main image (and putting the moved units back on hand) gives the main
    databases as they were at the snapshot's consistency point.
    """

    def __init__(self, main: Site, lab: Path, tag: str) -> None:
        ep = LabDir.of(lab).array_endpoint("main")  # the data path: the test's own access
        self.array = ArrayClient(ep["mgmt_url"], ep["data_socket"],
                                 token=LabDir.of(lab).array_token("main"))
        pvs = {pv["spec"]["csi"]["volumeHandle"]: pv for pv in main.kube.items("PersistentVolume")
               if pv["spec"].get("csi", {}).get("driver") == CSI_DRIVER}
        vols = {pv["spec"]["claimRef"]["name"]: h for h, pv in pvs.items()
                if pv["spec"].get("claimRef", {}).get("namespace") == NS}
        self.snap = f"ref-{tag}"
        self.array.create_snapshot(self.snap, volumes=[vols["stock-db"], vols["sales-db"]])
        self.clones = {"stock": f"{self.snap}-stock", "sales": f"{self.snap}-sales"}
        self.array.create_clone(self.clones["stock"], self.snap, vols["stock-db"])
        self.array.create_clone(self.clones["sales"], self.snap, vols["sales-db"])
        self.vfs = sqlite_vfs.register(f"test-main-ref-{tag}", self.array.open_volume)

    def cut(self, last_order: int, last_movement: int) -> None:
        stock = sqlite_vfs.connect(self.vfs, self.clones["stock"], "stock.db", create=False)
        sales = sqlite_vfs.connect(self.vfs, self.clones["sales"], "sales.db", create=False)
        try:
            with stock:
                stock.execute(
                    "UPDATE stock_levels SET on_hand = on_hand + COALESCE((SELECT SUM(quantity) "
                    "FROM stock_movements m WHERE m.product_id = stock_levels.product_id "
                    "AND m.movement_id > ?), 0)", (last_movement,))
                stock.execute("DELETE FROM stock_movements WHERE movement_id > ?", (last_movement,))
            with sales:
                sales.execute("DELETE FROM order_lines WHERE order_id > ?", (last_order,))
                sales.execute("DELETE FROM orders WHERE order_id > ?", (last_order,))
        finally:
            stock.close()
            sales.close()

    def max_order(self) -> int:
        con = sqlite_vfs.connect(self.vfs, self.clones["sales"], "sales.db", create=False)
        try:
            return next(con.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders"))[0]
        finally:
            con.close()

    def order_ids(self, through: int) -> list[int]:
        con = sqlite_vfs.connect(self.vfs, self.clones["sales"], "sales.db", create=False)
        try:
            return [r[0] for r in con.execute(
                "SELECT order_id FROM orders WHERE order_id <= ? ORDER BY order_id", (through,))]
        finally:
            con.close()

    def open(self) -> analytics.ShopDatabases:
        return analytics.open_sqlite(f"{self.clones['stock']}/stock.db",
                                     f"{self.clones['sales']}/sales.db", vfs=self.vfs.vfs_name)

    def close(self) -> None:
        for c in self.clones.values():
            self.vfs.forget(c)
            self.array.delete_volume(c)
        self.array.delete_snapshot(self.snap)


def _scalar(dbs: analytics.ShopDatabases, db: str, sql: str) -> Any:
    return analytics.run_query(dbs.engines[db], sql).iloc[0, 0]


ANALYSES = {
    "revenue_by_day": analytics.revenue_by_day,
    "revenue_by_category": analytics.revenue_by_category,
    "revenue_by_channel": analytics.revenue_by_channel,
    "top_products": lambda d: analytics.top_products(d, n=10),
    "top_products_units": lambda d: analytics.top_products(d, n=10, by="units"),
    "units_vs_stock": analytics.units_vs_stock,
    "low_stock": lambda d: analytics.low_stock(d, threshold=10_000),
    "days_of_cover": analytics.days_of_cover,
    "reconciliation": analytics.reconciliation,
}


# -- the whole life of a snapshot group while the shop writes ----------------------------------


def test_create_list_restore_open_delete_and_analytics_equal_main(lab: Path,
                                                                 sites: tuple[Site, Site]) -> None:
    main, backup = sites
    events: list[Any] = []
    t0 = time.monotonic()
    g = snapshots.create_snapshot_group(backup, "snap-a", NS, progress=events.append)
    took = time.monotonic() - t0
    assert g.ready and g.consistent is True and g.error is None
    assert g.sequence is not None and g.sequence > 0 and g.position.endswith(f"/{g.sequence}")
    assert g.point_time is not None and g.lag_seconds is not None and g.lag_seconds >= 0
    assert set(g.pvcs) == {"sales-db", "stock-db"}
    assert events and events[-1].done and "ready" in events[-1].message
    assert took < 10, f"snapshot group creation took {took:.1f} s"

    df = snapshots.list_snapshot_groups(backup, NS)
    row = df.set_index("name").loc["snap-a"]
    assert bool(row["ready"]) and int(row["sequence"]) == g.sequence
    assert row["point_time"] == g.point_time and pd.isna(row["restored"])

    # a reference image of the main site, taken after the snapshot
    ref = MainReference(main, lab, "a")
    try:
        restored = snapshots.restore_snapshot_group(backup, "snap-a", NS)
        assert restored == {"sales-db": "snap-a-sales-db", "stock-db": "snap-a-stock-db"}
        assert snapshots.restore_snapshot_group(backup, "snap-a", NS) == restored  # idempotent
        pvcs = backup.pvcs(NS).set_index("name")
        assert (pvcs.loc[list(restored.values()), "phase"] == "Bound").all()
        assert (pvcs.loc[list(restored.values()), "data_source"].str.startswith("VolumeSnapshot/")).all()
        assert pvcs.loc[list(restored.values()), "consistency_group"].isna().all()
        listed = snapshots.list_snapshot_groups(backup, NS).set_index("name").loc["snap-a", "restored"]
        assert listed == "snap-a-sales-db,snap-a-stock-db"

        with snapshots.open_snapshot_databases(backup, "snap-a", NS) as snap_dbs:
            prov = snap_dbs.provenance
            assert prov.consistent, prov.stamp()
            assert prov.snapshot == "snap-a" and prov.sequence == g.sequence
            assert prov.lag_seconds == pytest.approx(g.lag_seconds)
            assert f"seq {g.sequence}" in prov.stamp()
            k = int(_scalar(snap_dbs, "sales", "SELECT MAX(order_id) FROM orders"))
            m = int(_scalar(snap_dbs, "stock", "SELECT MAX(movement_id) FROM stock_movements"))
            snap_ids = analytics.run_query(snap_dbs.engines["sales"],
                                           "SELECT order_id FROM orders ORDER BY order_id")["order_id"].tolist()
            assert snap_ids and snap_ids[-1] == k
            last_at = _scalar(snap_dbs, "sales", f"SELECT ordered_at FROM orders WHERE order_id = {k}")
            assert pd.Timestamp(last_at, tz="UTC") <= g.point_time + pd.Timedelta(seconds=1)
            got = {name: fn(snap_dbs) for name, fn in ANALYSES.items()}
        assert k > 0
        assert ref.max_order() >= k, "the main image is later than the snapshot"
        # the main's orders up to K, no more and no fewer: a transaction that failed at the
        # main (its order id spent) leaves the same gap in both, a lost entry would not
        assert ref.order_ids(k) == snap_ids, "the snapshot holds the main's orders 1..K"
        ref.cut(k, m)
        with ref.open() as main_dbs:
            assert main_dbs.provenance.consistent
            want = {name: fn(main_dbs) for name, fn in ANALYSES.items()}
        for name in ANALYSES:
            assert len(got[name]) > 0, name
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
        assert got["reconciliation"].attrs["units_sold"] == want["reconciliation"].attrs["units_sold"]
    finally:
        ref.close()

    # a later snapshot group is at a later consistency point; both coexist
    g2 = snapshots.create_snapshot_group(backup, "snap-b", NS)
    assert g2.sequence > g.sequence and g2.point_time >= g.point_time
    assert _vgs_names(backup) == ["snap-a", "snap-b"]

    before_arrays = {s["name"] for s in backup.array.status()["snapshots"]}
    out = snapshots.delete_snapshot_group(backup, "snap-a", NS)
    assert out["restored_pvcs_deleted"] == ["snap-a-sales-db", "snap-a-stock-db"]
    assert _vgs_names(backup) == ["snap-b"]
    assert not [p for p in _pvc_names(backup) if p.startswith("snap-a-")]
    after = {s["name"] for s in backup.array.status()["snapshots"]}
    assert len(before_arrays - after) == 1 and g.array_snapshot not in after
    clones = [v for v in backup.array.status()["volumes"] if v.get("role") == "clone"]
    assert not clones, "the restored clones are gone with the group"

    # open restores on demand; delete cleans that restore too
    with snapshots.open_snapshot_databases(backup, "snap-b", NS) as dbs:
        assert dbs.provenance.sequence == g2.sequence and dbs.provenance.consistent
    snapshots.delete_snapshot_group(backup, "snap-b", NS)
    assert _vgs_names(backup) == [] and not backup.array.status()["snapshots"]
    assert _pvc_names(backup) == ["sales-db", "stock-db"]


# -- bad input: one clear error, nothing changed -----------------------------------------------


def test_bad_input_changes_nothing(sites: tuple[Site, Site]) -> None:
    main, backup = sites
    pvcs_before = _pvc_names(backup)
    with pytest.raises(NotFound, match="namespace 'nope' does not exist"):
        snapshots.create_snapshot_group(backup, "x", "nope")
    with pytest.raises(InvalidInput, match="not valid"):
        snapshots.create_snapshot_group(backup, "Bad_Name", NS)
    # a namespace that exists but is not protected
    main.kube.create("Namespace", {"metadata": {"name": "plain"}})
    backup.kube.create("Namespace", {"metadata": {"name": "plain"}})
    try:
        with pytest.raises(Conflict, match="not protected"):
            snapshots.create_snapshot_group(backup, "x", "plain", main_site=main)
        with pytest.raises(Conflict, match="no replicated PVCs"):
            snapshots.create_snapshot_group(backup, "x", "plain")  # the backup alone can tell
    finally:
        main.kube.delete("Namespace", "plain")
        backup.kube.delete("Namespace", "plain")
    # unknown snapshot group
    with pytest.raises(NotFound, match="snapshot group 'ghost' does not exist"):
        snapshots.restore_snapshot_group(backup, "ghost", NS)
    with pytest.raises(NotFound):
        snapshots.open_snapshot_databases(backup, "ghost", NS)
    with pytest.raises(NotFound):
        snapshots.delete_snapshot_group(backup, "ghost", NS)
    with pytest.raises(NotFound, match="does not exist"):
        snapshots.list_snapshot_groups(backup, "nope")
    assert _vgs_names(backup) == [] and _pvc_names(backup) == pvcs_before

    # a snapshot group that never becomes ready (a class of another driver)
    backup.kube.create("VolumeGroupSnapshotClass", {
        "metadata": {"name": "other-driver"}, "driver": "other.example.com",
        "deletionPolicy": "Delete"})
    try:
        pending = snapshots.create_snapshot_group(backup, "pending", NS, wait=False,
                                                  snapshot_class="other-driver")
        assert not pending.ready
        with pytest.raises(Conflict, match="not ready yet"):
            snapshots.restore_snapshot_group(backup, "pending", NS)
        with pytest.raises(Conflict, match="not ready yet"):
            snapshots.open_snapshot_databases(backup, "pending", NS)
        assert _pvc_names(backup) == pvcs_before
        with pytest.raises(Conflict, match="already exists"):
            snapshots.create_snapshot_group(backup, "pending", NS)
        # two classes and none marked default: name one
        default = "groupsnapshot.storage.kubernetes.io/is-default-class"
        backup.kube.patch("VolumeGroupSnapshotClass", "lab-array-group",
                          {"metadata": {"annotations": {default: None}}})
        try:
            with pytest.raises(InvalidInput, match="no default VolumeGroupSnapshotClass"):
                snapshots.create_snapshot_group(backup, "z", NS, main_site=main)
        finally:
            backup.kube.patch("VolumeGroupSnapshotClass", "lab-array-group",
                              {"metadata": {"annotations": {default: "true"}}})
        with pytest.raises(NotFound, match="VolumeGroupSnapshotClass 'nope'"):
            snapshots.create_snapshot_group(backup, "y", NS, snapshot_class="nope")
        with pytest.raises(Unavailable, match="not ready after"):
            snapshots.create_snapshot_group(backup, "slow", NS, snapshot_class="other-driver",
                                            timeout=0.3)
        snapshots.delete_snapshot_group(backup, "slow", NS)
        snapshots.delete_snapshot_group(backup, "pending", NS)
    finally:
        backup.kube.delete("VolumeGroupSnapshotClass", "other-driver")
    assert _vgs_names(backup) == []


def test_database_urls_bad_and_unreachable(sites: tuple[Site, Site]) -> None:
    _, backup = sites
    snapshots.create_snapshot_group(backup, "urls", NS)
    try:
        with pytest.raises(InvalidInput, match="malformed"):
            snapshots.open_snapshot_databases(backup, "urls", NS, stock_url="not a url",
                                              sales_url="not a url either")
        with pytest.raises(Unavailable, match="cannot reach the stock database") as e:
            snapshots.open_snapshot_databases(
                backup, "urls", NS, stock_url="postgresql+psycopg://shop:s3cret-pw@127.0.0.1:1/stock",
                sales_url="postgresql+psycopg://shop:s3cret-pw@127.0.0.1:1/sales")
        assert "s3cret-pw" not in str(e.value)
        with pytest.raises(NotFound, match="Secret 'db-urls'"):
            snapshots.open_snapshot_databases(backup, "urls", NS, secret="db-urls")
        # URLs and the password from a Secret; the password never shows
        enc = {k: base64.b64encode(v.encode()).decode() for k, v in {
            "stock-url": "postgresql+psycopg://shop@127.0.0.1:1/{snapshot}_stock",
            "sales-url": "postgresql+psycopg://shop@127.0.0.1:1/{snapshot}_sales",
            "password": "pw-from-secret"}.items()}
        backup.kube.create("Secret", {"metadata": {"name": "db-urls", "namespace": NS},
                                      "data": enc})
        with pytest.raises(Unavailable, match="urls_stock") as e:
            snapshots.open_snapshot_databases(backup, "urls", NS, secret="db-urls")
        assert "pw-from-secret" not in str(e.value)
        assert [p for p in _pvc_names(backup) if p.startswith("urls-")] == []
    finally:
        backup.kube.delete("Secret", "db-urls", NS, missing_ok=True)
        snapshots.delete_snapshot_group(backup, "urls", NS)


def test_restore_false_refuses_and_changes_nothing(sites: tuple[Site, Site]) -> None:
    _, backup = sites
    snapshots.create_snapshot_group(backup, "norestore", NS)
    try:
        with pytest.raises(Conflict, match="not restored"):
            snapshots.open_snapshot_databases(backup, "norestore", NS, restore=False)
        assert not [p for p in _pvc_names(backup) if p.startswith("norestore-")]
    finally:
        snapshots.delete_snapshot_group(backup, "norestore", NS)


# -- the command line --------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", analytics.InconsistentCopyWarning)
        rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_snapshot_and_query(lab: Path, sites: tuple[Site, Site],
                                capsys: pytest.CaptureFixture[str]) -> None:
    _, backup = sites
    d = str(lab)
    rc, out, err = run_cli(capsys, "snapshot", "create", "cli-1", "-n", NS, "--dir", d)
    assert rc == 0 and "snapshot group cli-1 ready" in out and "consistency point sequence" in out
    rc, out, _ = run_cli(capsys, "snapshot", "list", "-n", NS, "--dir", d, "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["cli-1"] and rows[0]["ready"] and rows[0]["sequence"] > 0
    assert rows[0]["scheduled"] is False and 0 <= rows[0]["age_s"] < 120  # taken by hand, now
    rc, out, _ = run_cli(capsys, "snapshot", "list", "-n", NS, "--dir", d)
    head, line = out.splitlines()[:2]
    assert head.split()[:4] == ["NAME", "READY", "CONSISTENT", "AGE"] and "LAG THEN" in head
    assert line.split()[:3] == ["cli-1", "yes", "yes"]

    rc, out, err = run_cli(capsys, "query", "-n", NS, "--snapshot", "cli-1", "--dir", d,
                           "SELECT channel, COUNT(*) AS n FROM orders WHERE order_id <= :k "
                           "GROUP BY channel ORDER BY channel", "--param", "k=20",
                           "--format", "json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["columns"] == ["channel", "n"] and sum(r["n"] for r in res["rows"]) == 20
    assert res["provenance"]["snapshot"] == "cli-1" and res["provenance"]["verdict"]["consistent"]
    rc, out, err = run_cli(capsys, "query", "-n", NS, "--snapshot", "cli-1", "--dir", d,
                           "--db", "stock", "SELECT COUNT(*) AS n FROM products", "--format", "csv")
    assert rc == 0 and out.splitlines()[0] == "n" and int(out.splitlines()[1]) > 0
    assert "snapshot cli-1" in err  # the stamp goes to stderr, the CSV stays clean
    rc, out, _ = run_cli(capsys, "query", "-n", NS, "--snapshot", "cli-1", "--dir", d,
                         "SELECT COUNT(*) AS n FROM orders")
    assert rc == 0 and out.startswith("# snapshot cli-1 | consistency point seq ")
    rc, out, _ = run_cli(capsys, "snapshot", "restore", "cli-1", "-n", NS, "--dir", d)
    assert rc == 0 and "sales-db -> cli-1-sales-db" in out

    pvcs = _pvc_names(backup)
    bad = [
        (["snapshot", "create", "x", "-n", "nope"], "namespace 'nope' does not exist"),
        (["snapshot", "create", "cli-1", "-n", NS], "already exists"),
        (["snapshot", "restore", "ghost", "-n", NS], "snapshot group 'ghost' does not exist"),
        (["snapshot", "delete", "ghost", "-n", NS], "snapshot group 'ghost' does not exist"),
        (["snapshot", "list", "-n", "nope"], "namespace 'nope' does not exist"),
        (["query", "-n", NS, "--snapshot", "cli-1", "DELETE FROM orders"], "read-only"),
        (["query", "-n", NS, "--snapshot", "cli-1", "SELECT 1; DROP TABLE orders"], "one statement"),
        (["query", "-n", NS, "--snapshot", "cli-1", "SELECT * FROM orders WHERE order_id = :id"],
         "not given: id"),
        (["query", "-n", NS, "--snapshot", "cli-1", "SELECT 1", "--param", "1x=2"], "NAME=VALUE"),
        (["query", "-n", NS, "--snapshot", "ghost", "SELECT 1"], "does not exist"),
        (["query", "-n", NS, "--snapshot", "cli-1", "SELECT * FROM no_such_table"], "query failed"),
    ]
    for argv, msg in bad:
        rc, out, err = run_cli(capsys, *argv, "--dir", d)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], \
            (argv, err)
    rc, _, err = run_cli(capsys, "snapshot", "list", "-n", NS, "--dir", str(lab / "no-lab"))
    assert rc == 2 and "no lab in" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, "snapshot", "list", "-n", NS, "--kubeconfig",
                         str(lab / "kubeconfig"), "--context", "nosuch")
    assert rc == 2 and "nosuch" in err and "contexts: main, backup" in err
    assert _pvc_names(backup) == pvcs and _vgs_names(backup) == ["cli-1"]

    rc, out, _ = run_cli(capsys, "snapshot", "delete", "cli-1", "-n", NS, "--dir", d)
    assert rc == 0 and "deleted snapshot group cli-1 and restored PVCs" in out
    assert _vgs_names(backup) == [] and _pvc_names(backup) == ["sales-db", "stock-db"]


def test_the_databases_secret_follows_the_restore(sites: tuple[Site, Site]) -> None:
    """What a DBA publishes (the lab's plug-in plays the part): the URLs of the restored
    databases in ``<group>-databases``, opened over the backup array's data path."""
    main, backup = sites
    secret = published.databases_secret("dba-1")
    g = snapshots.create_snapshot_group(backup, "dba-1", NS, main_site=main)
    try:
        assert g.ready and backup.kube.get("Secret", secret, NS) is None  # not restored yet
        restored = snapshots.restore_snapshot_group(backup, "dba-1", NS)
        deadline = time.monotonic() + 20
        while (obj := backup.kube.get("Secret", secret, NS)) is None:
            assert time.monotonic() < deadline, "the databases' Secret never appeared"
            time.sleep(0.2)
        urls = {k: published.secret_text(obj, k) for k in ("stock-url", "sales-url")}
        pvs = {p["metadata"]["name"]: p["spec"]["volumeName"]
               for p in backup.kube.items("PersistentVolumeClaim", NS)}
        assert urls["stock-url"].startswith("drkit+array://backup/" + pvs[restored["stock-db"]])
        assert urls["sales-url"].split("?")[0].endswith(f"{pvs[restored['sales-db']]}/sales.db")
        with snapshots.open_snapshot_databases(backup, "dba-1", NS, restore=False) as dbs:
            assert dbs.provenance.sequence == g.sequence and dbs.provenance.consistent
            assert f"Secret {NS}/{secret}" in dbs.provenance.source
        # the same URLs through SQLAlchemy alone, as an analyst's own code would open them
        from sqlalchemy import create_engine, text

        import dr_kit.sqlite.dialect  # noqa: F401 - registers drkit+array (an entry point too)

        engine = create_engine(urls["sales-url"])
        try:
            with engine.connect() as c:
                assert c.execute(text("SELECT COUNT(*) FROM orders")).scalar() > 0
                with pytest.raises(InvalidInput, match="read-only"):
                    c.execute(text("DELETE FROM orders"))
        finally:
            engine.dispose()
    finally:
        snapshots.delete_snapshot_group(backup, "dba-1", NS)
    deadline = time.monotonic() + 20
    while backup.kube.get("Secret", secret, NS) is not None:
        assert time.monotonic() < deadline, "the databases' Secret outlived the restore"
        time.sleep(0.2)


def test_inflight_order_is_rolled_back_on_the_clone(sites: tuple[Site, Site]) -> None:
    """Several snapshots while the shop writes: every one is consistent (crash recovery ran)."""
    _, backup = sites
    seqs = []
    for i in range(3):
        g = snapshots.create_snapshot_group(backup, f"burst-{i}", NS)
        seqs.append(g.sequence)
    try:
        for i in range(3):
            with snapshots.open_snapshot_databases(backup, f"burst-{i}", NS) as dbs:
                v = dbs.provenance.verdict
                assert v.consistent and v.collapsed_orders == 0, v.summary()
                with dbs.engines["stock"].connect() as c:
                    assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert seqs == sorted(seqs)
    finally:
        for i in range(3):
            snapshots.delete_snapshot_group(backup, f"burst-{i}", NS)
