"""Snapshot analytics: exact figures on SQLite, the same frames on PostgreSQL, Oracle rendering.

The shop images are generated here, deterministically, from the seed catalog: orders,
order lines and the stock movements they cause, plus restocks.  A *consistent* image may
have orders in flight (stock moved, sale not yet committed); a *collapsed* one has sales
whose stock movement never arrived.  Every expected figure is computed in Python from the
generated rows, independently of the SQL under test.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import oracle, postgresql, sqlite

from dr_kit import analytics as an
from dr_kit.errors import Conflict, DrKitError, InvalidInput
from dr_kit.shop.consistency import Verdict
from dr_kit.shop.schema import CHANNELS, SALES_DDL, STOCK_DDL, load_catalog

START = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


@dataclass
class Shop:
    """The rows of one image of both databases."""

    products: list[tuple] = field(default_factory=list)  # id, name, category, price
    levels: dict[int, list[int]] = field(default_factory=dict)  # id -> [on_hand, initial]
    movements: list[tuple] = field(default_factory=list)  # id, order, product, qty, at
    orders: list[tuple] = field(default_factory=list)  # id, at, customer, channel
    lines: list[tuple] = field(default_factory=list)  # order, line_no, product, qty, price

    @property
    def product(self) -> dict[int, tuple]:
        return {p[0]: p for p in self.products}


def make_shop(seed: int = 7, n_orders: int = 240, *, collapsed: int = 0, imbalanced: int = 0,
              in_flight: int = 0) -> Shop:
    """A deterministic shop image.

    ``collapsed``: that many orders keep their sale but lose their whole stock transaction
    (movements and on-hand update), as on a backup without a consistency group.
    ``imbalanced``: that many orders lose their movements but keep the on-hand update.
    ``in_flight``: the last orders have their stock transaction but not their sale.
    """
    rng = random.Random(seed)
    catalog = load_catalog()
    shop = Shop(products=[(p.product_id, p.name, p.category, p.unit_price_cents)
                          for p in catalog],
                levels={p.product_id: [p.initial_units, p.initial_units] for p in catalog})
    prices = {p.product_id: p.unit_price_cents for p in catalog}
    t = START
    mid = 1
    for oid in range(1, n_orders + 1):
        t += timedelta(minutes=rng.randint(5, 90), seconds=rng.randint(0, 59),
                       microseconds=rng.randint(0, 999999))
        chosen = rng.sample(sorted(prices), rng.randint(1, 3))
        order_lines = [(oid, i + 1, pid, rng.randint(1, 6), prices[pid])
                       for i, pid in enumerate(chosen)]
        # a few lines sold at a discount: revenue must use the line price, not the list price
        if rng.random() < 0.1:
            o, ln, pid, q, pr = order_lines[0]
            order_lines[0] = (o, ln, pid, q, pr * 9 // 10)
        movements = []
        for _, _, pid, q, _ in order_lines:
            movements.append((mid, oid, pid, q, iso(t)))
            mid += 1
        stock_committed = True
        sale_committed = oid <= n_orders - in_flight
        if stock_committed:
            shop.movements.extend(movements)
            for _, _, pid, q, _ in order_lines:
                shop.levels[pid][0] -= q
        if sale_committed:
            shop.orders.append((oid, iso(t), f"c{rng.randint(1, 60):03d}", rng.choice(CHANNELS)))
            shop.lines.extend(order_lines)
        if rng.random() < 0.04:  # a restock: negative movement, no order
            pid = rng.choice(sorted(prices))
            q = rng.randint(10, 50)
            shop.movements.append((mid, None, pid, -q, iso(t)))
            shop.levels[pid][0] += q
            mid += 1
    sold_ids = [o[0] for o in shop.orders]
    picks = random.Random(seed + 1).sample(sold_ids, collapsed + imbalanced)
    for k, oid in enumerate(picks):
        lost = [m for m in shop.movements if m[1] == oid]
        shop.movements = [m for m in shop.movements if m[1] != oid]
        if k < collapsed:  # the stock transaction never arrived: on hand not updated either
            for m in lost:
                shop.levels[m[2]][0] += m[3]
    return shop


def write_sqlite(shop: Shop, directory) -> tuple[str, str]:
    stock, sales = str(directory / "stock.db"), str(directory / "sales.db")
    for path, ddl in ((stock, STOCK_DDL), (sales, SALES_DDL)):
        conn = sqlite3.connect(path)
        for stmt in ddl:
            conn.execute(stmt)
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", shop.products)
        conn.commit()
        conn.close()
    conn = sqlite3.connect(stock)
    conn.executemany("INSERT INTO stock_levels VALUES (?, ?, ?)",
                     [(pid, v[0], v[1]) for pid, v in shop.levels.items()])
    conn.executemany("INSERT INTO stock_movements VALUES (?, ?, ?, ?, ?)", shop.movements)
    conn.commit()
    conn.close()
    conn = sqlite3.connect(sales)
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", shop.orders)
    conn.executemany("INSERT INTO order_lines VALUES (?, ?, ?, ?, ?)", shop.lines)
    conn.commit()
    conn.close()
    return stock, sales


def load_engine(shop: Shop, stock_engine, sales_engine) -> None:
    """The same rows into server databases (tables created from the schema DDL)."""
    for engine, ddl in ((stock_engine, STOCK_DDL), (sales_engine, SALES_DDL)):
        with engine.begin() as conn:
            for stmt in ddl:
                conn.exec_driver_sql(stmt)
            conn.execute(text("INSERT INTO products VALUES (:a, :b, :c, :d)"),
                         [dict(zip("abcd", p, strict=True)) for p in shop.products])
    with stock_engine.begin() as conn:
        conn.execute(text("INSERT INTO stock_levels VALUES (:a, :b, :c)"),
                     [{"a": pid, "b": v[0], "c": v[1]} for pid, v in shop.levels.items()])
        conn.execute(text("INSERT INTO stock_movements VALUES (:a, :b, :c, :d, :e)"),
                     [dict(zip("abcde", m, strict=True)) for m in shop.movements])
    with sales_engine.begin() as conn:
        conn.execute(text("INSERT INTO orders VALUES (:a, :b, :c, :d)"),
                     [dict(zip("abcd", o, strict=True)) for o in shop.orders])
        conn.execute(text("INSERT INTO order_lines VALUES (:a, :b, :c, :d, :e)"),
                     [dict(zip("abcde", ln, strict=True)) for ln in shop.lines])


# --- expectations computed in Python ----------------------------------------------------------


def expect_revenue(shop: Shop, key, since=None, until=None) -> pd.DataFrame:
    order = {o[0]: o for o in shop.orders}
    product = shop.product
    agg: dict[str, list] = defaultdict(lambda: [set(), 0, 0])
    for oid, _, pid, q, price in shop.lines:
        at = order[oid][1]
        if (since and at < since) or (until and at >= until):
            continue
        k = key(order[oid], product[pid])
        agg[k][0].add(oid)
        agg[k][1] += q
        agg[k][2] += q * price
    rows = [(k, len(v[0]), v[1], v[2]) for k, v in sorted(agg.items())]
    return pd.DataFrame(rows, columns=["key", "orders", "units", "revenue_cents"])


def expect_sold(shop: Shop, since=None, until=None, *, after=None, upto=None) -> dict[int, int]:
    order = {o[0]: o for o in shop.orders}
    out: dict[int, int] = defaultdict(int)
    for oid, _, pid, q, _ in shop.lines:
        at = order[oid][1]
        if (since and at < since) or (until and at >= until):
            continue
        if (after and at <= after) or (upto and at > upto):
            continue
        out[pid] += q
    return out


def expect_moved(shop: Shop) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for _, oid, pid, q, _ in shop.movements:
        if oid is not None:
            out[pid] += q
    return out


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop() -> Shop:
    return make_shop(seed=7, n_orders=240, in_flight=3)


@pytest.fixture(scope="module")
def files(shop, tmp_path_factory):
    return write_sqlite(shop, tmp_path_factory.mktemp("shop"))


@pytest.fixture
def dbs(files):
    d = an.open_sqlite(*files, snapshot="snap-1", sequence=4711,
                       point_time="2024-05-09T10:00:00+00:00", lag_entries=12, lag_bytes=49152,
                       lag_seconds=0.25)
    yield d
    d.close()


@pytest.fixture(scope="module")
def collapsed_files(tmp_path_factory):
    shop = make_shop(seed=11, n_orders=120, collapsed=4, imbalanced=1)
    return shop, write_sqlite(shop, tmp_path_factory.mktemp("collapsed"))


ANALYSES = {
    "revenue_by_day": lambda d: an.revenue_by_day(d),
    "revenue_by_day_window": lambda d: an.revenue_by_day(d, since="2024-05-03",
                                                         until="2024-05-06"),
    "revenue_by_category": lambda d: an.revenue_by_category(d),
    "revenue_by_channel": lambda d: an.revenue_by_channel(d),
    "top_products": lambda d: an.top_products(d, n=7),
    "top_products_units": lambda d: an.top_products(d, n=5, by="units"),
    "units_vs_stock": lambda d: an.units_vs_stock(d),
    "low_stock": lambda d: an.low_stock(d, threshold=1900),
    "days_of_cover": lambda d: an.days_of_cover(d, window_days=3),
    "reconciliation": lambda d: an.reconciliation(d),
}


# --- exact figures on SQLite ------------------------------------------------------------------


def test_generated_image_is_what_the_tests_think(shop, dbs):
    v = dbs.provenance.verdict
    assert v.consistent, v.summary()
    assert v.orders == 237 and v.in_flight_orders == 3
    assert v.integrity == {"stock": "ok", "sales": "ok"}


def test_revenue_by_day(shop, dbs):
    got = an.revenue_by_day(dbs)
    exp = expect_revenue(shop, lambda o, p: o[1][:10])
    assert got["day"].tolist() == exp["key"].tolist()
    for c in ("orders", "units", "revenue_cents"):
        assert got[c].tolist() == exp[c].tolist(), c
    assert got["revenue"].tolist() == [c / 100 for c in exp["revenue_cents"]]
    assert int(got["revenue_cents"].sum()) == sum(q * p for _, _, _, q, p in shop.lines)
    assert len(got) >= 5


def test_revenue_window_is_half_open(shop, dbs):
    got = an.revenue_by_day(dbs, since="2024-05-03", until="2024-05-06")
    exp = expect_revenue(shop, lambda o, p: o[1][:10], since="2024-05-03", until="2024-05-06")
    assert got["day"].tolist() == ["2024-05-03", "2024-05-04", "2024-05-05"]
    assert got["revenue_cents"].tolist() == exp["revenue_cents"].tolist()
    t = datetime(2024, 5, 3, 12, tzinfo=UTC)
    got = an.revenue_by_channel(dbs, since=t)
    exp = expect_revenue(shop, lambda o, p: o[3], since=iso(t)[:19])
    assert got["revenue_cents"].tolist() == exp["revenue_cents"].tolist()


def test_revenue_by_category_and_channel(shop, dbs):
    for fn, key, name in ((an.revenue_by_category, lambda o, p: p[2], "category"),
                          (an.revenue_by_channel, lambda o, p: o[3], "channel")):
        got = fn(dbs)
        exp = expect_revenue(shop, key)
        assert got[name].tolist() == exp["key"].tolist()
        for c in ("orders", "units", "revenue_cents"):
            assert got[c].tolist() == exp[c].tolist(), (name, c)
    assert set(an.revenue_by_channel(dbs)["channel"]) <= set(CHANNELS)


def test_top_products(shop, dbs):
    sold = expect_sold(shop)
    revenue: dict[int, int] = defaultdict(int)
    for _, _, pid, q, price in shop.lines:
        revenue[pid] += q * price
    by_rev = sorted(revenue, key=lambda p: (-revenue[p], p))[:7]
    got = an.top_products(dbs, n=7)
    assert got["product_id"].tolist() == by_rev
    assert got["revenue_cents"].tolist() == [revenue[p] for p in by_rev]
    assert got["units"].tolist() == [sold[p] for p in by_rev]
    assert got["name"].tolist() == [shop.product[p][1] for p in by_rev]
    by_units = sorted(sold, key=lambda p: (-sold[p], p))[:5]
    got = an.top_products(dbs, n=5, by="units")
    assert got["product_id"].tolist() == by_units
    assert got["units"].tolist() == [sold[p] for p in by_units]


def test_units_vs_stock(shop, dbs):
    got = an.units_vs_stock(dbs)
    sold = expect_sold(shop)
    assert got["product_id"].tolist() == sorted(shop.levels)
    assert got["units_sold"].tolist() == [sold.get(p, 0) for p in sorted(shop.levels)]
    assert got["on_hand"].tolist() == [shop.levels[p][0] for p in sorted(shop.levels)]
    assert got["initial_units"].tolist() == [shop.levels[p][1] for p in sorted(shop.levels)]
    assert got["sell_through"].tolist() == pytest.approx(
        [sold.get(p, 0) / shop.levels[p][1] for p in sorted(shop.levels)])
    assert str(got["units_sold"].dtype) == "int64"


def test_low_stock(shop, dbs):
    threshold = sorted(v[0] for v in shop.levels.values())[5]  # at least six products
    got = an.low_stock(dbs, threshold=threshold)
    exp = sorted((v[0], pid) for pid, v in shop.levels.items() if v[0] <= threshold)
    assert [(o, p) for o, p in zip(got["on_hand"], got["product_id"], strict=True)] == exp
    assert len(got) >= 6
    assert an.low_stock(dbs, threshold=0).empty
    with pytest.raises(InvalidInput, match="threshold"):
        an.low_stock(dbs, threshold=-1)


def test_days_of_cover(shop, dbs):
    got = an.days_of_cover(dbs, window_days=3)
    last = max(o[1] for o in shop.orders)
    start = iso(datetime.fromisoformat(last) - timedelta(days=3))
    assert got.attrs["window_end"] == last
    assert got.attrs["window_start"] == start
    sold = expect_sold(shop, after=start, upto=last)
    pids = sorted(shop.levels)
    assert got["units_sold"].tolist() == [sold.get(p, 0) for p in pids]
    for p, cover, avg in zip(pids, got["days_of_cover"], got["avg_daily_units"], strict=True):
        assert avg == pytest.approx(sold.get(p, 0) / 3)
        if sold.get(p, 0):
            assert cover == pytest.approx(shop.levels[p][0] / (sold[p] / 3))
        else:
            assert cover == math.inf
    assert any(c == math.inf for c in got["days_of_cover"]) or all(sold.get(p) for p in pids)


def test_days_of_cover_as_of(shop, dbs):
    got = an.days_of_cover(dbs, window_days=2, as_of="2024-05-04T00:00:00")
    sold = expect_sold(shop, after="2024-05-02T00:00:00", upto="2024-05-04T00:00:00")
    assert got["units_sold"].tolist() == [sold.get(p, 0) for p in sorted(shop.levels)]
    with pytest.raises(InvalidInput, match="window_days"):
        an.days_of_cover(dbs, window_days=0)


def test_reconciliation_of_a_consistent_image(shop, dbs):
    got = an.reconciliation(dbs)
    sold, moved = expect_sold(shop), expect_moved(shop)
    pids = sorted(shop.levels)
    assert got["units_sold"].tolist() == [sold.get(p, 0) for p in pids]
    assert got["units_moved"].tolist() == [moved.get(p, 0) for p in pids]
    assert got["difference"].tolist() == [sold.get(p, 0) - moved.get(p, 0) for p in pids]
    # in-flight orders only: stock ahead of sales, never behind
    assert (got["difference"] <= 0).all()
    assert set(got["status"]) <= {"ok", "moved, sale not recorded"}
    assert got.attrs["units_moved"] - got.attrs["units_sold"] == sum(
        q for o, _, _, q, _ in [(m[1], 0, 0, m[3], 0) for m in shop.movements]
        if o is not None and o > 237)


def test_reconciliation_of_a_collapsed_image(collapsed_files):
    shop, files = collapsed_files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dbs = an.open_sqlite(*files, snapshot="no-cg")
        got = an.reconciliation(dbs)
    assert any(issubclass(w.category, an.InconsistentCopyWarning) for w in caught)
    sold, moved = expect_sold(shop), expect_moved(shop)
    pids = sorted(shop.levels)
    assert got["difference"].tolist() == [sold.get(p, 0) - moved.get(p, 0) for p in pids]
    assert (got["status"] == "sold without stock movement").any()
    assert got.attrs["consistent"] is False
    dbs.close()


# --- provenance ------------------------------------------------------------------------------


def test_every_result_carries_provenance(dbs):
    for name, run in ANALYSES.items():
        df = run(dbs)
        prov = df.attrs["provenance"]
        assert isinstance(prov, an.Provenance), name
        assert prov.snapshot == "snap-1" and prov.sequence == 4711
        assert prov.lag_seconds == 0.25 and prov.lag_entries == 12
        assert prov.verdict.consistent
        assert df.attrs["consistent"] is True
        assert df.attrs["stamp"] == prov.stamp()
        assert df.attrs["analysis"]
    q = dbs.query("SELECT count(*) AS n FROM orders")
    assert q["n"].tolist() == [237]
    assert q.attrs["provenance"].snapshot == "snap-1"


def test_stamp_line(dbs):
    s = dbs.provenance.stamp()
    assert "\n" not in s
    assert "snapshot snap-1" in s
    assert "seq 4711 at 2024-05-09T10:00:00.000Z" in s
    assert "12 entries" in s and "49152 bytes" in s and "0.250 s" in s
    assert "consistent: 237 orders, 3 in flight" in s
    d = dbs.provenance.to_dict()
    assert d["verdict"]["consistent"] is True and d["point_time"].startswith("2024-05-09")


def test_unknown_lag_is_said_unknown_not_zero(files):
    d = an.open_sqlite(*files, snapshot="s", sequence=1, lag_entries=0, lag_seconds=None)
    assert "lag at snapshot 0 entries, time lag unknown" in d.provenance.stamp()
    assert d.provenance.lag_seconds is None
    d.close()
    d = an.open_sqlite(*files, snapshot="s")
    assert "lag at snapshot unknown" in d.provenance.stamp()
    d.close()
    with pytest.raises(InvalidInput, match="lag_seconds"):
        an.open_sqlite(*files, lag_seconds=-1)


def test_live_databases_are_stamped_as_such(files):
    d = an.open_sqlite(*files)
    assert d.provenance.stamp().startswith("live databases (no snapshot)")
    d.close()


def test_collapsed_copy_is_flagged_loudly_on_every_result(collapsed_files):
    _, files = collapsed_files
    dbs = an.open_sqlite(*files, snapshot="no-cg", sequence=99)
    v = dbs.provenance.verdict
    # 4 orders lost their whole stock transaction, 1 lost its movements only
    assert v.collapsed and v.collapsed_orders == 5 and v.imbalanced_products >= 1
    for name, run in ANALYSES.items():
        with pytest.warns(an.InconsistentCopyWarning, match="NOT A CONSISTENT COPY"):
            df = run(dbs)
        assert df.attrs["consistent"] is False, name
        assert "COLLAPSED: 5 of 120 orders" in df.attrs["stamp"]
        assert df.attrs["stamp"].startswith("!! NOT A CONSISTENT COPY")
        assert df.attrs["warning"] == df.attrs["stamp"]
    dbs.close()
    strict = an.open_sqlite(*files, snapshot="no-cg", on_inconsistent="raise")
    with pytest.raises(Conflict, match="not a consistent copy"):
        an.revenue_by_day(strict)
    with pytest.raises(Conflict):
        strict.query("SELECT 1")
    strict.close()


def test_corrupt_image_is_flagged(tmp_path):
    shop = make_shop(seed=3, n_orders=30)
    stock, sales = write_sqlite(shop, tmp_path)
    raw = bytearray(Path(sales).read_bytes())
    # clobber a whole table page: the verdict must not call this image consistent
    page = 4096
    assert len(raw) >= 4 * page
    for i in range(2 * page, 3 * page):
        raw[i] = 0x5A
    Path(sales).write_bytes(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dbs = an.open_sqlite(stock, sales, snapshot="bad")
            prov = dbs.provenance
        except DrKitError:
            return  # refusing to open a corrupt image is an acceptable, loud outcome
        assert not prov.consistent
        assert prov.verdict.corrupt
        assert "NOT A CONSISTENT COPY" in prov.stamp()
        dbs.close()


def test_analyses_read_only(files, dbs):
    before = Path(files[1]).read_bytes()
    with pytest.raises(InvalidInput, match="read-only"), dbs.sales.connect() as conn:
        conn.execute(text("DELETE FROM orders"))
    an.revenue_by_day(dbs)
    assert Path(files[1]).read_bytes() == before


def test_open_sqlite_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        an.open_sqlite(tmp_path / "stock.db", tmp_path / "sales.db")


def test_bad_parameters(dbs):
    with pytest.raises(InvalidInput, match="since"):
        an.revenue_by_day(dbs, since="yesterday")
    with pytest.raises(InvalidInput, match="positive"):
        an.top_products(dbs, n=0)
    with pytest.raises(InvalidInput, match="by must be"):
        an.top_products(dbs, by="profit")
    with pytest.raises(InvalidInput, match="on_inconsistent"):
        an.ShopDatabases(dbs.stock, dbs.sales, on_inconsistent="ignore")


# --- ad hoc queries -----------------------------------------------------------------------------


def test_run_query_select_with_bound_parameters(dbs):
    df = an.run_query(dbs.sales, "SELECT channel, count(*) AS n FROM orders "
                                 "WHERE ordered_at >= :since GROUP BY channel ORDER BY channel",
                      {"since": "2024-05-02"})
    assert list(df.columns) == ["channel", "n"]
    assert df["n"].sum() > 0
    inj = an.run_query(dbs.sales, "SELECT count(*) AS n FROM orders WHERE customer = :c",
                       {"c": "x' OR '1'='1"})
    assert inj["n"].tolist() == [0]
    df = an.run_query(dbs.sales, "WITH o AS (SELECT order_id FROM orders) "
                                 "SELECT count(*) AS n FROM o")
    assert df["n"].tolist() == [237]
    assert len(an.run_query(dbs.sales, "SELECT * FROM orders", limit=5)) == 5


@pytest.mark.parametrize("sql", [
    "DELETE FROM orders",
    "UPDATE orders SET channel = 'x'",
    "INSERT INTO orders VALUES (1, 'a', 'b', 'c')",
    "DROP TABLE orders",
    "PRAGMA query_only = 0",
    "SELECT 1; DELETE FROM orders",
    "SELECT 1; SELECT 2",
    "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
    "SELECT * INTO copy_of_orders FROM orders",
    "SELECT * FROM orders FOR UPDATE",
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "",
    "   -- only a comment",
])
def test_run_query_refuses_anything_but_one_select(dbs, files, sql):
    before = Path(files[1]).read_bytes()
    with pytest.raises(InvalidInput) as err:
        an.run_query(dbs.sales, sql)
    assert "\n" not in str(err.value)
    assert Path(files[1]).read_bytes() == before


def test_run_query_semicolons_in_strings_and_comments_are_fine(dbs):
    df = an.run_query(dbs.sales, "SELECT ';' AS a, 'x;y' AS b -- ; trailing\n;")
    assert df.iloc[0].tolist() == [";", "x;y"]
    df = an.run_query(dbs.sales, "SELECT 'it''s; fine' AS a /* ; */")
    assert df["a"].tolist() == ["it's; fine"]
    df = an.run_query(dbs.sales, "SELECT replace(channel, 'web', 'online') AS c, "
                                 "'delete me' AS note FROM orders WHERE order_id = :o", {"o": 1})
    assert df.columns.tolist() == ["c", "note"] and len(df) == 1


def test_run_query_errors_are_one_line(dbs):
    with pytest.raises(InvalidInput, match="not given: since"):
        an.run_query(dbs.sales, "SELECT * FROM orders WHERE ordered_at > :since")
    with pytest.raises(InvalidInput, match="no such table"):
        an.run_query(dbs.sales, "SELECT * FROM nope")
    with pytest.raises(InvalidInput, match="mapping"):
        an.run_query(dbs.sales, "SELECT 1", [1])


def test_run_query_on_plain_sqlite_engine_is_read_only(files):
    engine = create_engine(f"sqlite:///{files[1]}")
    with pytest.raises(InvalidInput):
        an.run_query(engine, "SELECT * FROM orders; DELETE FROM orders")
    assert an.run_query(engine, "SELECT count(*) AS n FROM orders")["n"].tolist() == [237]
    with engine.connect() as conn:  # query_only was restored for the pooled connection
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
    engine.dispose()


# --- URLs and secrets -------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55word"


def test_malformed_url_is_one_clear_line():
    with pytest.raises(InvalidInput, match="malformed stock database URL") as err:
        an.open_databases(f"not a url :{SECRET}@", "postgresql+psycopg://u@h/db")
    assert SECRET not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InvalidInput, match="no host"):
        an.open_databases("postgresql+psycopg:///db", "postgresql+psycopg://u@h/db")
    with pytest.raises(InvalidInput, match="unsupported"):
        an.open_databases(f"nosuchdb://u:{SECRET}@h/db", f"nosuchdb://u:{SECRET}@h/db")


def test_unreachable_database_is_unavailable_and_password_never_shown(monkeypatch):
    from dr_kit.errors import Unavailable
    url = f"postgresql+psycopg://shop:{SECRET}@127.0.0.1:1/stock"
    with pytest.raises(Unavailable, match="cannot reach the stock database") as err:
        an.open_databases(url, url, snapshot="s")
    msg = str(err.value)
    assert SECRET not in msg and "\n" not in msg and "***" in msg
    assert SECRET not in repr(err.value)
    monkeypatch.setenv(an.PASSWORD_ENV, SECRET)
    with pytest.raises(Unavailable) as err:
        an.open_databases("postgresql+psycopg://shop@127.0.0.1:1/stock",
                          "postgresql+psycopg://shop@127.0.0.1:1/sales")
    assert SECRET not in str(err.value)


def test_sqlite_urls_open_read_only(files):
    d = an.open_databases(f"sqlite:///{files[0]}", f"sqlite:///{files[1]}", snapshot="u")
    assert an.revenue_by_channel(d)["orders"].sum() == 237
    with pytest.raises(InvalidInput, match="read-only"):
        d.fetch("sales", text("DELETE FROM orders"))
    d.close()
    with pytest.raises(InvalidInput, match="file path"):
        an.open_databases("sqlite://", f"sqlite:///{files[1]}")


def test_mask_url():
    assert an.mask_url(f"oracle+oracledb://shop:{SECRET}@db:1521/?service_name=S") == \
        "oracle+oracledb://shop:***@db:1521/?service_name=S"
    assert SECRET not in an.mask_url(f"garbage://a:{SECRET}@@@")


# --- Oracle and PostgreSQL rendering ------------------------------------------------------------


@pytest.mark.parametrize("dialect", [oracle.dialect(), postgresql.dialect(), sqlite.dialect()],
                         ids=["oracle", "postgresql", "sqlite"])
def test_every_statement_compiles(dialect):
    for name, (db, stmt) in an.statements().items():
        sql = str(stmt.compile(dialect=dialect))
        assert sql.lstrip().upper().startswith("SELECT"), name
        assert db in ("stock", "sales")
        if dialect.name == "oracle":
            assert " LIMIT " not in sql.upper(), name
            assert '"' not in sql, (name, sql)  # no quoting needed: plain identifiers


def test_oracle_top_products_renders_a_row_limit():
    sql = str(an.q_top_products(5, "units").compile(dialect=oracle.dialect()))
    assert "FETCH FIRST" in sql.upper() or "ROWNUM" in sql.upper()


# --- the same frames on a real PostgreSQL -----------------------------------------------------

PG_URL = os.environ.get("DR_KIT_PG_URL")


def _frames(dbs) -> dict[str, pd.DataFrame]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", an.InconsistentCopyWarning)
        return {name: run(dbs) for name, run in ANALYSES.items()}


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name in ANALYSES:
        x, y = a[name].copy(), b[name].copy()
        x.attrs, y.attrs = {}, {}
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=name)


@pytest.fixture(scope="module")
def pg_schemas(shop):
    if not PG_URL:
        pytest.skip("DR_KIT_PG_URL is not set; start a server with scripts/postgres.sh "
                    "and export the URL it prints")
    admin = create_engine(PG_URL)
    tag = uuid.uuid4().hex[:8]
    names = {"stock": f"drkit_{tag}_stock", "sales": f"drkit_{tag}_sales",
             "cstock": f"drkit_{tag}_cstock", "csales": f"drkit_{tag}_csales"}
    with admin.begin() as conn:
        for s in names.values():
            conn.exec_driver_sql(f"CREATE SCHEMA {s}")

    def url(schema):
        return f"{PG_URL}?options=-csearch_path%3D{schema}"

    def writable(schema):
        return create_engine(url(schema))

    load_engine(shop, writable(names["stock"]), writable(names["sales"]))
    collapsed = make_shop(seed=11, n_orders=120, collapsed=4, imbalanced=1)
    load_engine(collapsed, writable(names["cstock"]), writable(names["csales"]))
    yield {k: url(v) for k, v in names.items()}
    with admin.begin() as conn:
        for s in names.values():
            conn.exec_driver_sql(f"DROP SCHEMA {s} CASCADE")
    admin.dispose()


@pytest.mark.postgres
def test_postgres_gives_the_same_frames_as_sqlite(pg_schemas, dbs):
    pg = an.open_databases(pg_schemas["stock"], pg_schemas["sales"], snapshot="snap-1",
                           sequence=4711)
    assert pg.provenance.verdict.to_dict() | {"integrity": {}} == \
        dbs.provenance.verdict.to_dict() | {"integrity": {}}
    _assert_same(_frames(dbs), _frames(pg))
    pg.close()


@pytest.mark.postgres
def test_postgres_collapsed_copy_is_flagged(pg_schemas, collapsed_files):
    pg = an.open_databases(pg_schemas["cstock"], pg_schemas["csales"], snapshot="no-cg")
    lite = an.open_sqlite(*collapsed_files[1], snapshot="no-cg")
    assert pg.provenance.verdict.collapsed_orders == 5
    with pytest.warns(an.InconsistentCopyWarning):
        df = an.revenue_by_day(pg)
    assert df.attrs["consistent"] is False
    _assert_same(_frames(lite), _frames(pg))
    pg.close()
    lite.close()


@pytest.mark.postgres
def test_postgres_connections_only_read(pg_schemas):
    pg = an.open_databases(pg_schemas["stock"], pg_schemas["sales"])
    with pytest.raises(InvalidInput, match="read-only transaction"):
        pg.fetch("sales", text("DELETE FROM orders"))
    with pytest.raises(InvalidInput, match="read-only transaction"):
        pg.fetch("stock", text("CREATE TABLE scratch (a INTEGER)"))
    with pytest.raises(InvalidInput):
        an.run_query(pg.sales, "SELECT 1; DELETE FROM orders")
    assert pg.query("SELECT count(*) AS n FROM orders")["n"].tolist() == [237]
    pg.close()


@pytest.mark.postgres
def test_postgres_password_is_never_shown(pg_schemas, monkeypatch):
    # the test cluster trusts local connections, so any password is accepted and unused
    monkeypatch.setenv(an.PASSWORD_ENV, SECRET)
    pg = an.open_databases(pg_schemas["stock"], pg_schemas["sales"], snapshot="s")
    assert pg.stock.url.password == SECRET
    for shown in (repr(pg), str(pg), pg.provenance.stamp(), repr(pg.provenance),
                  str(pg.stock), repr(pg.stock.url), str(pg.stock.url)):
        assert SECRET not in shown
    with pytest.raises(InvalidInput) as err:
        pg.query("SELECT * FROM nope")
    assert SECRET not in str(err.value)
    pg.close()


# --- a real Oracle, when one is given -------------------------------------------------------------

ORACLE_URL = os.environ.get("DR_KIT_ORACLE_URL")


@pytest.mark.oracle
@pytest.mark.skipif(not ORACLE_URL, reason="DR_KIT_ORACLE_URL is not set (a scratch schema on a "
                                          "real Oracle; the test drops and creates the shop "
                                          "tables in it)")
def test_oracle_gives_the_same_frames_as_sqlite(shop, dbs):
    from sqlalchemy import Column, Integer, MetaData, String, Table

    md = MetaData()
    Table("products", md, Column("product_id", Integer, primary_key=True),
          Column("name", String(100)), Column("category", String(40)),
          Column("unit_price_cents", Integer))
    Table("stock_levels", md, Column("product_id", Integer, primary_key=True),
          Column("on_hand", Integer), Column("initial_units", Integer))
    Table("stock_movements", md, Column("movement_id", Integer, primary_key=True),
          Column("order_id", Integer), Column("product_id", Integer),
          Column("quantity", Integer), Column("moved_at", String(32)))
    Table("orders", md, Column("order_id", Integer, primary_key=True),
          Column("ordered_at", String(32)), Column("customer", String(40)),
          Column("channel", String(20)))
    Table("order_lines", md, Column("order_id", Integer, primary_key=True),
          Column("line_no", Integer, primary_key=True), Column("product_id", Integer),
          Column("quantity", Integer), Column("unit_price_cents", Integer))
    engine = create_engine(ORACLE_URL)
    md.drop_all(engine)
    md.create_all(engine)
    t = md.tables
    with engine.begin() as conn:
        conn.execute(t["products"].insert(), [dict(zip(
            ["product_id", "name", "category", "unit_price_cents"], p, strict=True))
            for p in shop.products])
        conn.execute(t["stock_levels"].insert(), [
            {"product_id": p, "on_hand": v[0], "initial_units": v[1]}
            for p, v in shop.levels.items()])
        conn.execute(t["stock_movements"].insert(), [dict(zip(
            ["movement_id", "order_id", "product_id", "quantity", "moved_at"], m, strict=True))
            for m in shop.movements])
        conn.execute(t["orders"].insert(), [dict(zip(
            ["order_id", "ordered_at", "customer", "channel"], o, strict=True))
            for o in shop.orders])
        conn.execute(t["order_lines"].insert(), [dict(zip(
            ["order_id", "line_no", "product_id", "quantity", "unit_price_cents"], ln,
            strict=True)) for ln in shop.lines])
    engine.dispose()
    # one scratch schema holds both databases' tables (products is the same in both)
    ora = an.open_databases(ORACLE_URL, ORACLE_URL, snapshot="snap-1")
    assert ora.provenance.verdict.collapsed_orders == 0
    _assert_same(_frames(dbs), _frames(ora))
    ora.close()


def test_verdict_is_the_shared_one(dbs):
    assert isinstance(dbs.provenance.verdict, Verdict)
