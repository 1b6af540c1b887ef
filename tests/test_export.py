"""Export (Parquet, CSV, SQLite files) and diff of shop images, on real data.

The images are the shop's generated history in SQLite files, and once on a real array: a
snapshot of the two volumes, cloned and opened through the VFS, as a snapshot group is.
Exported files are read back with pyarrow, the csv module, the sqlite3 module and the
stock ``sqlite3`` command line tool (when installed) and compared row by row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import apsw
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine

from dr_kit import analytics as an
from dr_kit import export
from dr_kit.errors import Conflict, InvalidInput
from dr_kit.shop import history
from dr_kit.shop.workload import Shop, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs

NOW = datetime(2025, 3, 14, 15, 30, tzinfo=UTC)
PG_URL = os.environ.get("DR_KIT_PG_URL")
SQLITE3 = shutil.which("sqlite3")
TABLES = {"stock": ("products", "stock_levels", "stock_movements"),
          "sales": ("products", "orders", "order_lines")}
KEYS = {"products": "product_id", "stock_levels": "product_id", "stock_movements": "movement_id",
        "orders": "order_id", "order_lines": "order_id, line_no"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("img")
    stock, sales = apsw.Connection(str(d / "stock.db")), apsw.Connection(str(d / "sales.db"))
    seed(stock, sales, history_days=30, history_orders=12_000, now=NOW)
    stock.close()
    sales.close()
    return d


def table_rows(path: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY {KEYS[table]}").fetchall()
    finally:
        conn.close()


def open_image(d: Path, **prov) -> an.ShopDatabases:
    prov = {"snapshot": "snap-9", "sequence": 912, "point_time": "2025-03-14T15:30:00Z",
            "lag_seconds": 0.012, **prov}
    return an.open_sqlite(d / "stock.db", d / "sales.db", **prov)


def check_provenance(folder: Path, fmt: str, consistent: bool = True) -> dict:
    p = json.loads((folder / "provenance.json").read_text())
    assert p["snapshot"] == "snap-9" and p["sequence"] == 912
    assert p["time"] == "2025-03-14T15:30:00.000Z" and p["lag_seconds"] == 0.012
    assert p["consistent"] is consistent and p["verdict"]["consistent"] is consistent
    assert p["format"] == fmt and p["stamp"].count("\n") == 0
    for info in p["files"].values():
        data = (folder / info["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
    return p


def test_export_parquet(image, tmp_path):
    with open_image(image) as dbs:
        report = export.export_snapshot(dbs, tmp_path / "out", "parquet")
    out = tmp_path / "out"
    assert report.folder == out and "as parquet" in report.summary_line()
    p = check_provenance(out, "parquet")
    assert sorted(p["files"]) == sorted(f"{db}/{t}.parquet" for db, ts in TABLES.items()
                                        for t in ts)
    for db, tables in TABLES.items():
        for t in tables:
            got = pq.read_table(out / db / f"{t}.parquet")
            want = table_rows(image / f"{db}.db", t)
            assert [tuple(r.values()) for r in got.to_pylist()] == want, (db, t)
            assert p["files"][f"{db}/{t}.parquet"]["rows"] == len(want) > 0
    schema = pq.read_schema(out / "stock" / "stock_movements.parquet")
    assert str(schema.field("order_id").type) == "int64"  # restocks: NULL, not 0 or NaN
    assert str(schema.field("moved_at").type) == "string"
    restocks = [r for r in pq.read_table(out / "stock" / "stock_movements.parquet").to_pylist()
                if r["order_id"] is None]
    assert restocks and all(r["quantity"] < 0 for r in restocks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_export_csv(image, tmp_path):
    with open_image(image) as dbs:
        export.export_snapshot(dbs, tmp_path / "out", "csv")
    out = tmp_path / "out"
    check_provenance(out, "csv")
    for db, tables in TABLES.items():
        for t in tables:
            with (out / db / f"{t}.csv").open(newline="") as f:
                got = list(csv.reader(f))
            want = table_rows(image / f"{db}.db", t)
            assert len(got) == len(want) + 1
            assert got[1:] == [["" if v is None else str(v) for v in r] for r in want]


def test_export_sqlite_files_are_ordinary_databases(image, tmp_path):
    with open_image(image) as dbs:
        report = export.export_snapshot(dbs, tmp_path / "out", "sqlite")
    out = tmp_path / "out"
    p = check_provenance(out, "sqlite")
    assert sorted(p["files"]) == ["sales.db", "stock.db"]
    assert report.files["stock.db"]["method"] == "backup"
    for db, tables in TABLES.items():
        for t in tables:
            assert table_rows(out / f"{db}.db", t) == table_rows(image / f"{db}.db", t)
        if SQLITE3:
            run = subprocess.run([SQLITE3, "-readonly", str(out / f"{db}.db"),
                                  "PRAGMA integrity_check;",
                                  f"SELECT COUNT(*) FROM {tables[-1]};"],
                                 capture_output=True, text=True, timeout=60, check=True)
            assert run.stdout.split() == ["ok", str(len(table_rows(image / f"{db}.db",
                                                                    tables[-1])))]


@pytest.mark.skipif(not SQLITE3, reason="the sqlite3 command line tool is not installed "
                                        "(Debian: apt-get install sqlite3)")
def test_the_sqlite3_cli_opens_the_export(image, tmp_path):
    with open_image(image) as dbs:
        export.export_snapshot(dbs, tmp_path / "out", "sqlite")
    run = subprocess.run([SQLITE3, str(tmp_path / "out" / "sales.db"), ".tables"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.split() == ["order_lines", "orders", "products"]


def collapsed_copy(image: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in ("stock.db", "sales.db"):
        shutil.copy(image / f, dst / f)
    conn = sqlite3.connect(dst / "stock.db")  # two sales lose their stock transaction
    conn.execute("DELETE FROM stock_movements WHERE order_id IN (5, 6)")
    conn.commit()
    conn.close()
    return dst


def test_a_collapsed_image_is_refused_unless_allowed(image, tmp_path):
    bad = collapsed_copy(image, tmp_path / "bad")
    with pytest.warns(an.InconsistentCopyWarning), open_image(bad) as dbs:
        assert not dbs.provenance.consistent
        for fmt in export.FORMATS:
            with pytest.raises(Conflict, match="not a consistent copy.*allow_inconsistent"):
                export.export_snapshot(dbs, tmp_path / "out", fmt)
        assert not (tmp_path / "out").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
        report = export.export_snapshot(dbs, tmp_path / "out", "csv", allow_inconsistent=True)
    p = check_provenance(tmp_path / "out", "csv", consistent=False)
    assert p["verdict"]["collapsed_orders"] == 2
    assert "NOT a consistent copy" in report.summary_line()


def test_bad_targets_and_formats(image, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty").mkdir()
    with open_image(image) as dbs:
        with pytest.raises(InvalidInput, match="not empty"):
            export.export_snapshot(dbs, tmp_path / "full", "csv")
        with pytest.raises(InvalidInput, match="parquet, csv, sqlite"):
            export.export_snapshot(dbs, tmp_path / "o", "xlsx")
        with pytest.raises(InvalidInput, match="parent folder"):
            export.export_snapshot(dbs, tmp_path / "no" / "such" / "o", "csv")
        export.export_snapshot(dbs, tmp_path / "empty", "csv")  # an empty folder is fine
    assert (tmp_path / "empty" / "provenance.json").is_file()
    assert (tmp_path / "full" / "x").read_text() == "x"


def test_diff_snapshots(image, tmp_path):
    later = tmp_path / "later"
    later.mkdir()
    for f in ("stock.db", "sales.db"):
        shutil.copy(image / f, later / f)
    stock, sales = apsw.Connection(str(later / "stock.db")), apsw.Connection(str(later / "sales.db"))
    shop = Shop(stock, sales, seed_value=4)
    shop.run(0, count=40)
    stock.close()
    sales.close()
    with open_image(image) as a, open_image(later, snapshot="snap-10", sequence=950) as b:
        d = export.diff_snapshots(a, b)
    d = json.loads(json.dumps(d))
    assert {"new_orders", "revenue_delta", "units_delta", "stock_movements"} <= set(d)
    assert d["new_orders"] == 40 and d["lost_orders"] == 0
    added = table_rows(later / "sales.db", "order_lines")[len(table_rows(image / "sales.db",
                                                                         "order_lines")):]
    assert d["units_delta"] == sum(r[3] for r in added)
    assert d["revenue_delta"] == pytest.approx(sum(r[3] * r[4] for r in added) / 100)
    assert d["stock_movements"]["units_out"] == d["units_delta"]
    assert d["before"]["snapshot"] == "snap-9" and d["after"]["sequence"] == 950
    lines = export.diff_lines(d)
    assert lines[0].startswith("from snap-9 (seq 912") and "new orders 40" in lines[1]


# --- a real snapshot on an array, through the VFS -------------------------------------------------


@pytest.mark.slow
def test_export_of_a_snapshot_on_array_volumes(arrays, tmp_path):
    """History on two array volumes, a snapshot of both, clones opened through the VFS."""
    h = arrays.start("backup")
    client = h.client
    for v in ("stock-db", "sales-db"):
        client.create_volume(v, 64 << 20)
    vfs = sqlite_vfs.register(f"export-test-{uuid.uuid4().hex[:6]}", client.open_volume)
    stock, sales = open_shop(vfs)
    seed(stock, sales)
    history.seed_history(stock, sales, 60, orders=20_000, now=NOW)
    client.create_snapshot("snap-x", volumes=["stock-db", "sales-db"])
    Shop(stock, sales, seed_value=1).run(0, count=25)  # the live volumes move on
    want = {t: list(sales.execute(f"SELECT * FROM {t} ORDER BY {KEYS[t]}"))
            for t in ("orders", "order_lines")}
    stock.close()
    sales.close()
    client.create_clone("x-stock", "snap-x", "stock-db")
    client.create_clone("x-sales", "snap-x", "sales-db")
    dbs = an.open_sqlite("x-stock/stock.db", "x-sales/sales.db", vfs=vfs.vfs_name,
                         snapshot="snap-x", sequence=1, point_time=NOW, lag_seconds=0.0)
    try:
        assert dbs.provenance.consistent, dbs.provenance.stamp()
        export.export_snapshot(dbs, tmp_path / "sq", "sqlite")
        export.export_snapshot(dbs, tmp_path / "pq", "parquet")
    finally:
        dbs.close()
        for v in ("x-stock", "x-sales", "stock-db", "sales-db"):
            vfs.forget(v)
    frozen = table_rows(tmp_path / "sq" / "sales.db", "orders")
    assert frozen == want["orders"][: len(frozen)] and len(want["orders"]) == len(frozen) + 25
    assert pq.read_table(tmp_path / "pq" / "sales" / "orders.parquet").num_rows == len(frozen)
    conn = sqlite3.connect(tmp_path / "sq" / "stock.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    if SQLITE3:
        run = subprocess.run([SQLITE3, "-readonly", str(tmp_path / "sq" / "sales.db"),
                              "PRAGMA integrity_check;"], capture_output=True, text=True,
                             timeout=60, check=True)
        assert run.stdout.strip() == "ok"


# --- from PostgreSQL: the rows into the shop's schema ---------------------------------------------


@pytest.mark.postgres
def test_export_sqlite_from_postgres(image, tmp_path):
    if not PG_URL:
        pytest.skip("DR_KIT_PG_URL is not set; start a server with scripts/postgres.sh")
    from test_analytics_history import _copy_to

    from dr_kit.shop.schema import SALES_DDL, STOCK_DDL

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:8]
    schemas = {"stock": f"drkit_x{tag}_stock", "sales": f"drkit_x{tag}_sales"}
    with admin.connect() as c:
        for s in schemas.values():
            c.exec_driver_sql(f"CREATE SCHEMA {s}")
    try:
        urls = {k: f"{PG_URL}?options=-csearch_path%3D{v}" for k, v in schemas.items()}
        for db, ddl in (("stock", STOCK_DDL), ("sales", SALES_DDL)):
            e = create_engine(urls[db])
            _copy_to(e, image / f"{db}.db", ddl)
            e.dispose()
        with an.open_databases(urls["stock"], urls["sales"], snapshot="snap-9", sequence=912,
                               point_time="2025-03-14T15:30:00Z", lag_seconds=0.012) as pg:
            report = export.export_snapshot(pg, tmp_path / "out", "sqlite")
        assert report.files["sales.db"]["method"] == "rows"
        check_provenance(tmp_path / "out", "sqlite")
        for db, tables in TABLES.items():
            for t in tables:
                assert table_rows(tmp_path / "out" / f"{db}.db", t) == \
                    table_rows(image / f"{db}.db", t)
    finally:
        with admin.connect() as c:
            for s in schemas.values():
                c.exec_driver_sql(f"DROP SCHEMA {s} CASCADE")
        admin.dispose()
