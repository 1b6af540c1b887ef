"""Take a snapshot's data to the analyst's own tools: export and diff.

:func:`export_snapshot` writes both databases of an opened image (a snapshot group's
:class:`~dr_kit.analytics.ShopDatabases`) to a new folder, as it is at the image's
consistency point, with ``provenance.json`` beside::

    parquet   stock/products.parquet, stock/stock_levels.parquet, stock/stock_movements.parquet,
              sales/products.parquet, sales/orders.parquet, sales/order_lines.parquet
    csv       the same names with .csv (a header row; NULL is an empty field)
    sqlite    stock.db and sales.db: ordinary SQLite database files (the ``sqlite3`` CLI
              opens them), copied page by page with SQLite's backup API from the image

``provenance.json`` says which snapshot, consistency point (sequence and time), lag at
snapshot time and consistency verdict the files hold, plus each file's rows and SHA-256.
A collapsed or corrupt image is refused unless ``allow_inconsistent=True`` (then
``provenance.json`` says so).  The files are written in a temporary folder beside the
target and renamed into place at the end, so a failed export leaves nothing behind.

:func:`diff_snapshots` is the JSON-able change between two images (new orders, revenue
and units delta, stock movements...), see :func:`dr_kit.analytics.compare_snapshots`.

A command needs only::

    dbs = snapshots.open_snapshot_databases(site, name, namespace)
    with dbs:
        report = export_snapshot(dbs, out, fmt, allow_inconsistent=flag)
    print(report.summary_line())
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, Integer, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import TableClause

from dr_kit.analytics import InconsistentCopyWarning, ShopDatabases, compare_snapshots
from dr_kit.analytics.tables import order_lines, orders, products, stock_levels, stock_movements
from dr_kit.errors import Conflict, DrKitError, InvalidInput
from dr_kit.shop.schema import SALES_DDL, STOCK_DDL

Format = Literal["parquet", "csv", "sqlite"]
FORMATS: tuple[str, ...] = ("parquet", "csv", "sqlite")

# each database's tables, with the key that orders their rows
TABLES: dict[str, tuple[tuple[TableClause, tuple[str, ...]], ...]] = {
    "stock": ((products, ("product_id",)), (stock_levels, ("product_id",)),
              (stock_movements, ("movement_id",))),
    "sales": ((products, ("product_id",)), (orders, ("order_id",)),
              (order_lines, ("order_id", "line_no"))),
}
DDL = {"stock": STOCK_DDL, "sales": SALES_DDL}


@dataclass
class ExportReport:
    """What was written where, and the provenance it carries."""

    folder: Path
    format: str
    provenance: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> info

    def summary_line(self) -> str:
        p = self.provenance
        rows = sum(f["rows"] for f in self.files.values() if f.get("rows") is not None)
        point = f"seq {p['sequence']}" if p.get("sequence") is not None else "seq unknown"
        at = f" at {p['time']}" if p.get("time") else ""
        what = p.get("snapshot") or "live databases"
        warn = "" if p["consistent"] else " (NOT a consistent copy: exported on request)"
        return (f"exported {what} ({point}{at}) as {self.format} to {self.folder}: "
                f"{len(self.files)} files, {rows} rows, provenance.json{warn}")

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "format": self.format, "files": self.files,
                "provenance": self.provenance}


def provenance_record(dbs: ShopDatabases) -> dict[str, Any]:
    """The JSON written as ``provenance.json``: snapshot, sequence, time, lag, verdict."""
    p = dbs.provenance
    d = p.to_dict()
    return {
        "snapshot": p.snapshot, "sequence": p.sequence, "time": d["point_time"],
        "lag_seconds": p.lag_seconds, "lag_entries": p.lag_entries, "lag_bytes": p.lag_bytes,
        "consistent": p.consistent, "verdict": d["verdict"], "stamp": d["stamp"],
        "source": p.source,
    }


def _target(out: str | os.PathLike[str]) -> Path:
    folder = Path(out).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidInput(f"export folder {folder} already exists and is not empty; "
                           "give a new or empty folder")
    if not folder.parent.is_dir():
        raise InvalidInput(f"export folder {folder}: its parent folder does not exist")
    return folder


def export_snapshot(dbs: ShopDatabases, out: str | os.PathLike[str], fmt: Format = "parquet", *,
                    allow_inconsistent: bool = False) -> ExportReport:
    """Write both databases of ``dbs`` to the new folder ``out`` as ``fmt``, with provenance.

    Refuses (:class:`~dr_kit.errors.Conflict`) an image whose verdict is not consistent
    unless ``allow_inconsistent``; an existing non-empty ``out`` or an unknown ``fmt`` is
    :class:`InvalidInput`.  Nothing is left behind on failure.
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    folder = _target(out)
    prov = provenance_record(dbs)
    if not prov["consistent"] and not allow_inconsistent:
        what = f"snapshot {prov['snapshot']}" if prov["snapshot"] else "the databases"
        raise Conflict(f"{what} is not a consistent copy ({dbs.provenance.verdict.summary()}); "
                       "not exported. Export it anyway with allow_inconsistent=True "
                       "(--allow-inconsistent)")
    if not prov["consistent"]:
        warnings.warn(f"exporting on request: {dbs.provenance.stamp()}", InconsistentCopyWarning,
                      stacklevel=2)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        files: dict[str, dict[str, Any]] = {}
        for db in ("stock", "sales"):
            if fmt == "sqlite":
                files.update(_export_sqlite(dbs, db, tmp))
            else:
                files.update(_export_tables(dbs, db, tmp, fmt))
        for info in files.values():
            info["sha256"] = _sha256(tmp / info["file"])
        record = {**prov, "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "format": fmt, "files": files}
        (tmp / "provenance.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(folder, fmt, prov, files)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(engine: Engine, tables: Sequence[tuple[TableClause, tuple[str, ...]]]
          ) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """All rows of ``tables`` read in one transaction (one consistent view of the database)."""
    out = {}
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            elif conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # one read snapshot for all tables
            try:
                for t, key in tables:
                    result = conn.execute(select(t).order_by(*(t.c[k] for k in key)))
                    out[t.name] = (list(result.keys()), [tuple(r) for r in result.all()])
            finally:
                conn.rollback()
    except sa_exc.SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        raise InvalidInput(f"export failed reading the database: {first}") from None
    return out


def _export_tables(dbs: ShopDatabases, db: str, folder: Path, fmt: str
                   ) -> dict[str, dict[str, Any]]:
    (folder / db).mkdir()
    data = _read(dbs.engines[db], TABLES[db])
    files = {}
    for t, _key in TABLES[db]:
        cols, rows = data[t.name]
        rel = f"{db}/{t.name}.{fmt}"
        if fmt == "parquet":
            _write_parquet(folder / rel, t, cols, rows)
        else:
            _write_csv(folder / rel, cols, rows)
        files[rel] = {"file": rel, "database": db, "table": t.name, "rows": len(rows),
                      "columns": cols}
    return files


def _write_parquet(path: Path, t: TableClause, cols: list[str], rows: list[tuple[Any, ...]]
                   ) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for i, c in enumerate(cols):
        kind = pa.int64() if isinstance(t.c[c].type, Integer) else pa.string()
        values = [r[i] for r in rows]
        if kind == pa.int64():
            values = [int(v) if v is not None else None for v in values]
        arrays.append(pa.array(values, type=kind))
    pq.write_table(pa.Table.from_arrays(arrays, names=cols), path)


def _write_csv(path: Path, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(["" if v is None else v for v in r] for r in rows)


def _export_sqlite(dbs: ShopDatabases, db: str, folder: Path) -> dict[str, dict[str, Any]]:
    """``<db>.db``: SQLite's backup API from an apsw image, else the rows into the shop DDL."""
    path = folder / f"{db}.db"
    engine = dbs.engines[db]
    copied = False
    if engine.dialect.name == "sqlite":
        copied = _backup(engine, path)
    if not copied:
        data = _read(engine, TABLES[db])
        conn = sqlite3.connect(path)
        try:
            for stmt in DDL[db]:
                conn.execute(stmt)
            for t, _key in TABLES[db]:
                cols, rows = data[t.name]
                marks = ", ".join("?" for _ in cols)
                conn.executemany(f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({marks})",
                                 rows)
            conn.commit()
        finally:
            conn.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        counts = {t.name: conn.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0]
                  for t, _ in TABLES[db]}
    finally:
        conn.close()
    if check != ["ok"]:
        raise DrKitError(f"the exported {db}.db failed PRAGMA integrity_check: {check[:3]}")
    return {f"{db}.db": {"file": f"{db}.db", "database": db, "rows": sum(counts.values()),
                         "tables": counts, "method": "backup" if copied else "rows"}}


def _backup(engine: Engine, path: Path) -> bool:
    """Copy the image page by page (SQLite's online backup) when it is an apsw connection."""
    import apsw

    from dr_kit.sqlite.dbapi import Connection as AdapterConnection

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        if not isinstance(raw, AdapterConnection):
            return False
        dest = apsw.Connection(str(path))
        try:
            with dest.backup("main", raw.apsw_connection, "main") as b:
                while not b.done:
                    b.step(-1)
        finally:
            dest.close()
    return True


def diff_snapshots(before: ShopDatabases, after: ShopDatabases, *, products: bool = True
                   ) -> dict[str, Any]:
    """What changed from ``before`` to ``after``, JSON-able.

    Keys: ``new_orders``, ``lost_orders``, ``orders_delta``, ``revenue_delta`` (currency
    units) and ``revenue_delta_cents``, ``units_delta``, ``stock_movements`` (``new``,
    ``delta``, ``units_out``, ``units_in``, ``restocks``), ``on_hand_delta``, the new
    orders' time span, ``before``/``after`` (snapshot, sequence, time, verdict),
    ``by_channel`` and (``products``) ``by_product`` for the products that changed.
    """
    return compare_snapshots(before, after).to_dict(products=products)


def diff_lines(d: dict[str, Any]) -> list[str]:
    """The diff for a terminal, a few lines."""
    b, a = d["before"], d["after"]

    def side(x: dict[str, Any]) -> str:
        name = x.get("snapshot") or "live"
        seq = x.get("sequence")
        return f"{name} (seq {seq if seq is not None else '?'}, {x.get('point_time') or '?'})"

    sm = d["stock_movements"]
    lines = [f"from {side(b)} to {side(a)}",
             f"new orders {d['new_orders']}" + (f", lost orders {d['lost_orders']}"
                                                if d["lost_orders"] else "")
             + (f" ({d['first_new_order_at']} .. {d['last_new_order_at']})"
                if d["new_orders"] else ""),
             f"revenue {d['revenue_delta']:+,.2f}, units {d['units_delta']:+,}",
             f"stock movements {sm['new']} new: {sm['units_out']} units out, "
             f"{sm['units_in']} in ({sm['restocks']} restocks); on hand {d['on_hand_delta']:+,}"]
    if not d.get("consistent", True):
        lines.append("!! one of the images is not a consistent copy: see their verdicts")
    return lines


__all__ = ["FORMATS", "ExportReport", "export_snapshot", "provenance_record",
           "diff_snapshots", "diff_lines"]
