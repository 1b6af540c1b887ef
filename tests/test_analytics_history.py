"""The history analyses: exact figures on SQLite, the same frames on PostgreSQL, Oracle rendering.

The image is the shop's own generated history (two months, seeded), loaded into plain
SQLite files.  Every expected figure is computed here in Python from the rows read back
with the ``sqlite3`` module, independently of the SQL under test.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import uuid
import warnings
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import apsw
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from dr_kit import analytics as an
from dr_kit.errors import InvalidInput
from dr_kit.shop.schema import SALES_DDL, STOCK_DDL
from dr_kit.shop.workload import seed

NOW = datetime(2025, 3, 14, 15, 30, 12, tzinfo=UTC)
PG_URL = os.environ.get("DR_KIT_PG_URL")


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("history")
    stock, sales = apsw.Connection(str(d / "stock.db")), apsw.Connection(str(d / "sales.db"))
    seed(stock, sales, history_days=60, history_orders=12_000, history_seed=3, now=NOW)
    stock.close()
    sales.close()
    return d


@pytest.fixture
def dbs(image):
    d = an.open_sqlite(image / "stock.db", image / "sales.db", snapshot="hist", sequence=77,
                       lag_seconds=0.5)
    yield d
    d.close()


@pytest.fixture(scope="module")
def raw(image):
    """The rows, as Python sees them."""
    orders = rows(image / "sales.db", "SELECT order_id, ordered_at, customer, channel FROM orders")
    lines = rows(image / "sales.db", "SELECT * FROM order_lines")
    products = {r[0]: r for r in rows(image / "sales.db", "SELECT * FROM products")}
    moves = rows(image / "stock.db", "SELECT * FROM stock_movements")
    levels = {r[0]: r for r in rows(image / "stock.db", "SELECT * FROM stock_levels")}
    return {"orders": {o[0]: o for o in orders}, "lines": lines, "products": products,
            "moves": moves, "levels": levels}


def daily_revenue(raw) -> dict[date, list[int]]:
    out: dict[date, list] = defaultdict(lambda: [set(), 0, 0])
    for oid, _, _, q, price in raw["lines"]:
        d = date.fromisoformat(raw["orders"][oid][1][:10])
        out[d][0].add(oid)
        out[d][1] += q
        out[d][2] += q * price
    return {d: [len(v[0]), v[1], v[2]] for d, v in sorted(out.items())}


# --- revenue trend -------------------------------------------------------------------------------


def test_revenue_trend_moving_average_and_week_over_week(dbs, raw):
    got = an.revenue_trend(dbs)
    daily = daily_revenue(raw)
    days = sorted(daily)
    assert got["day"].tolist() == [d.isoformat() for d in days]
    assert got["orders"].tolist() == [daily[d][0] for d in days]
    assert got["units"].tolist() == [daily[d][1] for d in days]
    assert got["revenue_cents"].tolist() == [daily[d][2] for d in days]
    first = days[0]
    for d, ma, wow in zip(days, got["revenue_ma7"], got["wow_pct"], strict=True):
        last7 = sum(daily.get(d - timedelta(days=i), [0, 0, 0])[2] for i in range(7))
        prev7 = sum(daily.get(d - timedelta(days=i), [0, 0, 0])[2] for i in range(7, 14))
        if (d - first).days < 6:
            assert math.isnan(ma)
        else:
            assert ma == pytest.approx(last7 / 700)
        if (d - first).days < 13:
            assert math.isnan(wow)
        else:
            assert wow == pytest.approx((last7 / prev7 - 1) * 100)
    assert list(got.columns) == ["day", "orders", "units", "revenue_cents", "revenue",
                                 "revenue_ma7", "wow_pct"]


def test_revenue_trend_counts_a_day_without_orders_as_zero(tmp_path):
    """Windows run over calendar days, not over rows: a gap is a day of zero revenue."""
    stock, sales = tmp_path / "stock.db", tmp_path / "sales.db"
    for path, ddl in ((stock, STOCK_DDL), (sales, SALES_DDL)):
        conn = sqlite3.connect(path)
        for stmt in ddl:
            conn.execute(stmt)
        conn.commit()
        conn.close()
    conn = sqlite3.connect(sales)
    conn.execute("INSERT INTO products VALUES (1, 'p', 'c', 100)")
    days = [date(2024, 5, 1) + timedelta(days=i) for i in range(20) if i not in (9, 10)]
    for i, d in enumerate(days, start=1):
        conn.execute("INSERT INTO orders VALUES (?, ?, 'c', 'web')", (i, f"{d}T10:00:00Z"))
        conn.execute("INSERT INTO order_lines VALUES (?, 1, 1, 1, ?)", (i, 1000 * i))
    conn.commit()
    conn.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", an.InconsistentCopyWarning)  # no stock rows at all
        d = an.open_sqlite(stock, sales)
        got = an.revenue_trend(d).set_index("day")
    rev = {dd: 1000 * i for i, dd in enumerate(days, start=1)}
    on = date(2024, 5, 14)  # the window 05-08..05-14 holds the two missing days
    assert got.loc[on.isoformat(), "revenue_ma7"] == pytest.approx(
        sum(rev.get(on - timedelta(days=i), 0) for i in range(7)) / 700)
    on = date(2024, 5, 20)
    assert got.loc[on.isoformat(), "wow_pct"] == pytest.approx(
        (sum(rev.get(on - timedelta(days=i), 0) for i in range(7))
         / sum(rev.get(on - timedelta(days=i), 0) for i in range(7, 14)) - 1) * 100)
    d.close()


def test_revenue_trend_window(dbs, raw):
    got = an.revenue_trend(dbs, since="2025-02-01", until="2025-03-01")
    assert got["day"].iloc[0] == "2025-02-01" and got["day"].iloc[-1] == "2025-02-28"
    assert got["revenue_ma7"].iloc[:6].isna().all() and got["revenue_ma7"].iloc[6:].notna().all()


# --- mix ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["category", "channel"])
@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_mix_over_time(dbs, raw, by, period):
    got = an.mix_over_time(dbs, by=by, period=period)
    exp: dict[tuple[str, str], list] = defaultdict(lambda: [set(), 0, 0])
    for oid, _, pid, q, price in raw["lines"]:
        o = raw["orders"][oid]
        d = date.fromisoformat(o[1][:10])
        key = {"day": d.isoformat(), "month": o[1][:7],
               "week": (d - timedelta(days=d.weekday())).isoformat()}[period]
        k2 = raw["products"][pid][2] if by == "category" else o[3]
        exp[(key, k2)][0].add(oid)
        exp[(key, k2)][1] += q
        exp[(key, k2)][2] += q * price
    keys = sorted(exp)
    assert list(zip(got[period], got[by], strict=True)) == keys
    assert got["orders"].tolist() == [len(exp[k][0]) for k in keys]
    assert got["revenue_cents"].tolist() == [exp[k][2] for k in keys]
    totals = Counter()
    for (p, _), v in exp.items():
        totals[p] += v[2]
    assert got["share_pct"].tolist() == pytest.approx(
        [100 * exp[k][2] / totals[k[0]] for k in keys])
    assert got.groupby(period)["share_pct"].sum().round(9).eq(100).all()


def test_channel_mix_shows_the_drift(dbs):
    mix = an.mix_over_time(dbs, by="channel", period="month").pivot(
        index="month", columns="channel", values="share_pct")
    assert mix["mobile"].iloc[-1] > mix["mobile"].iloc[0]
    assert mix["web"].iloc[-1] < mix["web"].iloc[0]


# --- products and stock -------------------------------------------------------------------------


def test_abc_classes(dbs, raw):
    got = an.abc_classes(dbs)
    revenue = Counter({pid: 0 for pid in raw["products"]})
    units = Counter()
    for _, _, pid, q, price in raw["lines"]:
        revenue[pid] += q * price
        units[pid] += q
    ranked = sorted(revenue, key=lambda p: (-revenue[p], p))
    total = sum(revenue.values())
    assert got["product_id"].tolist() == ranked
    assert got["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert got["revenue_cents"].tolist() == [revenue[p] for p in ranked]
    assert got["units"].tolist() == [units[p] for p in ranked]
    cum, classes = 0, []
    for p in ranked:
        before = 100 * cum / total
        classes.append("C" if revenue[p] == 0 else "A" if before < 80 else
                       "B" if before < 95 else "C")
        cum += revenue[p]
    assert got["abc"].tolist() == classes
    assert got["cum_pct"].iloc[-1] == pytest.approx(100)
    a = got[got["abc"] == "A"]
    assert a["share_pct"].sum() >= 80 and len(a) < len(got) / 2  # a long tail
    assert got.attrs["classes"] == {c: classes.count(c) for c in "ABC"}
    with pytest.raises(InvalidInput, match="a_pct"):
        an.abc_classes(dbs, a_pct=120)
    with pytest.raises(InvalidInput, match="must not exceed"):
        an.abc_classes(dbs, a_pct=90, b_pct=80)


def test_stock_cover_and_reorder_list(dbs, raw):
    got = an.stock_cover(dbs, window_days=14, lead_days=7, safety_days=3, target_days=21)
    last = max(o[1] for o in raw["orders"].values())
    start = (datetime.fromisoformat(last) - timedelta(days=14)).strftime(
        "%Y-%m-%dT%H:%M:%S") + last[19:]
    assert got.attrs["window_end"] == last and got.attrs["window_start"] == start
    sold = Counter()
    for oid, _, pid, q, _ in raw["lines"]:
        if start < raw["orders"][oid][1] <= last:
            sold[pid] += q
    restocked = Counter()
    for _, oid, pid, q, at in raw["moves"]:
        if oid is None and start < at <= last:
            restocked[pid] -= q
    by = got.set_index("product_id")
    assert sorted(by.index) == sorted(raw["levels"])
    for pid, level in raw["levels"].items():
        row = by.loc[pid]
        per_day = sold[pid] / 14
        assert row["on_hand"] == level[1] and row["sold_units"] == sold[pid]
        assert row["restocked_units"] == restocked[pid]
        assert row["units_per_day"] == pytest.approx(per_day)
        assert row["cover_days"] == (pytest.approx(level[1] / per_day) if per_day else math.inf)
        if sold[pid] + level[1]:
            assert row["sell_through_pct"] == pytest.approx(
                100 * sold[pid] / (sold[pid] + level[1]))
        point = math.ceil(per_day * 10)
        assert row["reorder_point"] == point
        assert bool(row["reorder"]) == (per_day > 0 and level[1] <= point)
        if row["reorder"]:
            assert row["order_units"] == max(0, math.ceil(per_day * 28) - level[1])
    assert got["cover_days"].tolist() == sorted(got["cover_days"])
    todo = an.reorder_list(dbs, window_days=14, lead_days=7, safety_days=3, target_days=21)
    assert todo["product_id"].tolist() == got[got["reorder"]]["product_id"].tolist()
    assert todo.attrs["analysis"] == "reorder_list" and todo.attrs["provenance"].snapshot == "hist"
    # the history leaves some products low: a reorder list with the defaults is not empty
    assert len(an.reorder_list(dbs)) >= 1
    for bad in ({"window_days": 0}, {"lead_days": -1}, {"target_days": float("nan")}):
        with pytest.raises(InvalidInput):
            an.stock_cover(dbs, **bad)


def test_reconciliation_balances_restocks(dbs, raw, image, tmp_path):
    got = an.reconciliation(dbs)
    assert (got["balance_diff"] == 0).all() and (got["difference"] == 0).all()
    restocked = Counter()
    for _, oid, pid, q, _ in raw["moves"]:
        if oid is None:
            restocked[pid] -= q
    by = got.set_index("product_id")
    assert by["units_restocked"].to_dict() == {p: restocked[p] for p in raw["levels"]}
    assert got.attrs["units_restocked"] == sum(restocked.values()) > 0
    assert got.attrs["unbalanced_products"] == 0
    # a restock movement lost without its stock update: that product is out of balance
    shutil.copy(image / "stock.db", tmp_path / "stock.db")
    shutil.copy(image / "sales.db", tmp_path / "sales.db")
    conn = sqlite3.connect(tmp_path / "stock.db")
    mid, pid = conn.execute("SELECT movement_id, product_id FROM stock_movements "
                            "WHERE order_id IS NULL ORDER BY movement_id LIMIT 1").fetchone()
    conn.execute("DELETE FROM stock_movements WHERE movement_id = ?", (mid,))
    conn.commit()
    conn.close()
    bad = an.open_sqlite(tmp_path / "stock.db", tmp_path / "sales.db")
    with pytest.warns(an.InconsistentCopyWarning):
        r = an.reconciliation(bad).set_index("product_id")
    assert r.loc[pid, "balance_diff"] == restocked_of(raw, mid) > 0
    assert (r.drop(index=pid)["balance_diff"] == 0).all()
    bad.close()


def restocked_of(raw, mid: int) -> int:
    return -next(m[3] for m in raw["moves"] if m[0] == mid)


# --- what changed between two images ------------------------------------------------------------


def cut_image(src: Path, dst: Path, last_order: int, last_movement: int) -> None:
    """The image as it was when ``last_order`` and ``last_movement`` were the newest."""
    dst.mkdir()
    for f in ("stock.db", "sales.db"):
        shutil.copy(src / f, dst / f)
    conn = sqlite3.connect(dst / "stock.db")
    conn.execute("UPDATE stock_levels SET on_hand = on_hand + COALESCE((SELECT SUM(quantity) "
                 "FROM stock_movements m WHERE m.product_id = stock_levels.product_id "
                 "AND m.movement_id > ?), 0)", (last_movement,))
    conn.execute("DELETE FROM stock_movements WHERE movement_id > ?", (last_movement,))
    conn.commit()
    conn.close()
    conn = sqlite3.connect(dst / "sales.db")
    conn.execute("DELETE FROM order_lines WHERE order_id > ?", (last_order,))
    conn.execute("DELETE FROM orders WHERE order_id > ?", (last_order,))
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def earlier(image, raw, tmp_path_factory):
    """The same shop 10 days before the end of the history."""
    cut_at = (NOW - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%S")
    k = max(o[0] for o in raw["orders"].values() if o[1] < cut_at)
    m = max(mv[0] for mv in raw["moves"] if mv[4] < cut_at)
    dst = tmp_path_factory.mktemp("earlier") / "img"
    cut_image(image, dst, k, m)
    return dst, k, m


def test_compare_snapshots(dbs, raw, earlier):
    path, k, m = earlier
    before = an.open_sqlite(path / "stock.db", path / "sales.db", snapshot="at-0900",
                            sequence=10)
    cmp = an.compare_snapshots(before, dbs)
    s = cmp.summary
    new = [o for o in raw["orders"].values() if o[0] > k]
    new_lines = [ln for ln in raw["lines"] if ln[0] > k]
    new_moves = [mv for mv in raw["moves"] if mv[0] > m]
    assert s["new_orders"] == len(new) > 0 and s["lost_orders"] == 0
    assert s["orders_delta"] == len(new)
    assert s["units_delta"] == sum(ln[3] for ln in new_lines)
    assert s["revenue_delta_cents"] == sum(ln[3] * ln[4] for ln in new_lines)
    assert s["revenue_delta"] == s["revenue_delta_cents"] / 100
    assert s["first_new_order_at"] == min(o[1] for o in new)
    assert s["last_new_order_at"] == max(o[1] for o in new)
    sm = s["stock_movements"]
    assert sm["new"] == sm["delta"] == len(new_moves)
    assert sm["units_out"] == sum(mv[3] for mv in new_moves if mv[1] is not None)
    assert sm["units_in"] == -sum(mv[3] for mv in new_moves if mv[1] is None)
    assert sm["restocks"] == sum(1 for mv in new_moves if mv[1] is None)
    assert s["on_hand_delta"] == sm["units_in"] - sm["units_out"]
    assert s["before"]["snapshot"] == "at-0900" and s["after"]["snapshot"] == "hist"
    assert s["before"]["last_order"] == k and s["consistent"] is True
    # per channel and per product add up to the totals
    assert cmp.by_channel["orders_delta"].sum() == s["new_orders"]
    assert cmp.by_channel["revenue_delta_cents"].sum() == s["revenue_delta_cents"]
    assert cmp.by_product["units_delta"].sum() == s["units_delta"]
    units = Counter()
    for ln in new_lines:
        units[ln[2]] += ln[3]
    assert cmp.by_product.set_index("product_id")["units_delta"].to_dict() == {
        p: units[p] for p in raw["levels"]}
    for df in (cmp.by_channel, cmp.by_product):
        assert df.attrs["provenance"].snapshot == "hist"
        assert df.attrs["baseline"].snapshot == "at-0900"
        assert df.attrs["stamp"].startswith("change from snapshot at-0900 (seq 10) to "
                                            "snapshot hist (seq 77)")
    d = cmp.to_dict()
    import json
    assert json.loads(json.dumps(d))["new_orders"] == len(new)
    assert all(r["units_delta"] or r["on_hand_delta"] for r in d["by_product"])
    # the other way round: what the earlier image lacks is reported as lost
    back = an.compare_snapshots(dbs, before).summary
    assert back["lost_orders"] == len(new) and back["new_orders"] == 0
    assert back["revenue_delta_cents"] == -s["revenue_delta_cents"]
    # a pair of engines works as well
    again = an.compare_snapshots((before.stock, before.sales), (dbs.stock, dbs.sales))
    assert again.summary["new_orders"] == len(new)
    before.close()


def test_compare_refuses_what_is_not_an_image(dbs):
    with pytest.raises(InvalidInput, match="before must be"):
        an.compare_snapshots("snap-1", dbs)


def test_every_new_frame_carries_provenance(dbs):
    for df in (an.revenue_trend(dbs), an.mix_over_time(dbs), an.abc_classes(dbs),
               an.stock_cover(dbs), an.reorder_list(dbs)):
        assert df.attrs["provenance"].snapshot == "hist"
        assert df.attrs["provenance"].sequence == 77
        assert "snapshot hist" in df.attrs["stamp"] and df.attrs["consistent"] is True


# --- the same frames on PostgreSQL --------------------------------------------------------------

FRAMES = {
    "revenue_trend": lambda d: an.revenue_trend(d),
    "revenue_trend_window": lambda d: an.revenue_trend(d, since="2025-02-01"),
    "mix_category_week": lambda d: an.mix_over_time(d, "category", "week"),
    "mix_channel_month": lambda d: an.mix_over_time(d, "channel", "month"),
    "mix_channel_day": lambda d: an.mix_over_time(d, "channel", "day"),
    "abc": lambda d: an.abc_classes(d),
    "stock_cover": lambda d: an.stock_cover(d, window_days=14),
    "reorder_list": lambda d: an.reorder_list(d),
    "reconciliation": lambda d: an.reconciliation(d),
}


def _copy_to(engine, path: Path, ddl: tuple[str, ...]) -> None:
    conn = sqlite3.connect(path)
    try:
        with engine.begin() as pg:
            for stmt in ddl:
                pg.exec_driver_sql(stmt)
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                cur = conn.execute(f"SELECT * FROM {table}")
                cols = [c[0] for c in cur.description]
                data = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
                if data:
                    pg.execute(text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                    f"({', '.join(':' + c for c in cols)})"), data)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pg_images(image, earlier):
    if not PG_URL:
        pytest.skip("DR_KIT_PG_URL is not set; start a server with scripts/postgres.sh "
                    "and export the URL it prints")
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:8]
    names = {k: f"drkit_h{tag}_{k}" for k in ("stock", "sales", "estock", "esales")}
    with admin.connect() as c:
        for s in names.values():
            c.exec_driver_sql(f"CREATE SCHEMA {s}")

    def url(schema: str) -> str:
        return f"{PG_URL}?options=-csearch_path%3D{schema}"

    for key, path, ddl in (("stock", image / "stock.db", STOCK_DDL),
                           ("sales", image / "sales.db", SALES_DDL),
                           ("estock", earlier[0] / "stock.db", STOCK_DDL),
                           ("esales", earlier[0] / "sales.db", SALES_DDL)):
        engine = create_engine(url(names[key]))
        _copy_to(engine, path, ddl)
        engine.dispose()
    yield {k: url(v) for k, v in names.items()}
    with admin.connect() as c:
        for s in names.values():
            c.exec_driver_sql(f"DROP SCHEMA {s} CASCADE")
    admin.dispose()


@pytest.mark.postgres
def test_postgres_gives_the_same_history_frames(pg_images, dbs, earlier):
    pg = an.open_databases(pg_images["stock"], pg_images["sales"], snapshot="hist", sequence=77,
                           lag_seconds=0.5)
    assert pg.provenance.verdict.consistent
    for name, run in FRAMES.items():
        x, y = run(dbs), run(pg)
        x.attrs, y.attrs = {}, {}
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=name)
    path = earlier[0]
    lite_before = an.open_sqlite(path / "stock.db", path / "sales.db", snapshot="at-0900")
    pg_before = an.open_databases(pg_images["estock"], pg_images["esales"], snapshot="at-0900")
    a, b = an.compare_snapshots(lite_before, dbs), an.compare_snapshots(pg_before, pg)
    strip = {"before", "after"}
    assert {k: v for k, v in a.summary.items() if k not in strip} == \
        {k: v for k, v in b.summary.items() if k not in strip}
    for x, y in ((a.by_channel, b.by_channel), (a.by_product, b.by_product)):
        x, y = x.copy(), y.copy()
        x.attrs, y.attrs = {}, {}
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    for d in (pg, lite_before, pg_before):
        d.close()
