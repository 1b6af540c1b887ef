"""The shop analyses: revenue, best sellers, stock, days of cover, reconciliation."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    case,
    distinct,
    func,
    literal_column,
    select,
)
from sqlalchemy.sql import Select

from dr_kit.analytics.databases import ShopDatabases
from dr_kit.analytics.tables import (
    Db,
    order_lines,
    orders,
    products,
    stock_levels,
    stock_movements,
)
from dr_kit.errors import InvalidInput

# --- parameters -----------------------------------------------------------------------------


def _bound(value: date | datetime | str | None, name: str) -> str | None:
    """A time bound as ISO text comparable with the stored ISO-8601 UTC strings."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{name} {value!r} is not an ISO-8601 date or time") from None
        return value
    raise InvalidInput(f"{name} must be a date, datetime or ISO string, not {type(value).__name__}")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"{name} must be a positive integer, not {value!r}")
    return value


# --- statements -----------------------------------------------------------------------------

DAY = func.substr(orders.c.ordered_at, literal_column("1"), literal_column("10"))
LINE_REVENUE = order_lines.c.quantity * order_lines.c.unit_price_cents


def _window(stmt: Select, since: str | None, until: str | None) -> Select:
    if since is not None:
        stmt = stmt.where(orders.c.ordered_at >= since)
    if until is not None:
        stmt = stmt.where(orders.c.ordered_at < until)
    return stmt


def q_revenue(by: Literal["day", "category", "channel"], since: str | None = None,
              until: str | None = None) -> Select:
    """Sales DB: orders, units and revenue (cents) per day, product category or channel."""
    key = {"day": DAY, "category": products.c.category, "channel": orders.c.channel}[by]
    src = orders.join(order_lines, order_lines.c.order_id == orders.c.order_id)
    if by == "category":
        src = src.join(products, products.c.product_id == order_lines.c.product_id)
    stmt = (select(key.label(by),
                   func.count(distinct(orders.c.order_id)).label("orders"),
                   func.sum(order_lines.c.quantity).label("units"),
                   func.sum(LINE_REVENUE).label("revenue_cents"))
            .select_from(src).group_by(key).order_by(key))
    return _window(stmt, since, until)


def q_top_products(n: int, by: Literal["revenue", "units"], since: str | None = None,
                   until: str | None = None) -> Select:
    """Sales DB: the ``n`` best products by revenue or units (ties by product id)."""
    units = func.sum(order_lines.c.quantity)
    revenue = func.sum(LINE_REVENUE)
    metric = revenue if by == "revenue" else units
    stmt = (select(products.c.product_id, products.c.name, products.c.category,
                   units.label("units"), revenue.label("revenue_cents"))
            .select_from(order_lines.join(orders, orders.c.order_id == order_lines.c.order_id)
                         .join(products, products.c.product_id == order_lines.c.product_id))
            .group_by(products.c.product_id, products.c.name, products.c.category)
            .order_by(metric.desc(), products.c.product_id)
            .limit(n))
    return _window(stmt, since, until)


def q_units_sold(since: str | None = None, until: str | None = None) -> Select:
    """Sales DB: units sold, order lines and revenue per product."""
    stmt = (select(order_lines.c.product_id,
                   func.sum(order_lines.c.quantity).label("units_sold"),
                   func.count(distinct(order_lines.c.order_id)).label("orders"),
                   func.sum(LINE_REVENUE).label("revenue_cents"))
            .select_from(order_lines.join(orders, orders.c.order_id == order_lines.c.order_id))
            .group_by(order_lines.c.product_id)
            .order_by(order_lines.c.product_id))
    return _window(stmt, since, until)


def q_stock(threshold: int | None = None) -> Select:
    """Stock DB: products with on hand and initial units (at or below ``threshold`` if given)."""
    stmt = (select(products.c.product_id, products.c.name, products.c.category,
                   stock_levels.c.on_hand, stock_levels.c.initial_units)
            .select_from(products.join(stock_levels,
                                       stock_levels.c.product_id == products.c.product_id)))
    if threshold is not None:
        stmt = stmt.where(stock_levels.c.on_hand <= threshold).order_by(
            stock_levels.c.on_hand, products.c.product_id)
    else:
        stmt = stmt.order_by(products.c.product_id)
    return stmt


def q_units_moved() -> Select:
    """Stock DB: units moved out for orders, and the orders moved, per product."""
    return (select(stock_movements.c.product_id,
                   func.sum(stock_movements.c.quantity).label("units_moved"),
                   func.count(distinct(stock_movements.c.order_id)).label("orders_moved"))
            .where(stock_movements.c.order_id.is_not(None))
            .group_by(stock_movements.c.product_id)
            .order_by(stock_movements.c.product_id))


def q_stock_flows(since: str | None = None, until: str | None = None) -> Select:
    """Stock DB, per product: units moved out for orders (and the orders), units restocked
    (restock movements: negative quantity, no order) and the restocks, optionally for the
    movements in ``[since, until)``."""
    m = stock_movements.c
    is_sale = m.order_id.is_not(None)
    stmt = (select(m.product_id,
                   func.sum(case((is_sale, m.quantity), else_=literal_column("0")))
                   .label("units_moved"),
                   func.count(distinct(m.order_id)).label("orders_moved"),
                   func.sum(case((is_sale, literal_column("0")), else_=-m.quantity))
                   .label("units_restocked"),
                   func.sum(case((is_sale, literal_column("0")), else_=literal_column("1")))
                   .label("restocks"))
            .group_by(m.product_id).order_by(m.product_id))
    if since is not None:
        stmt = stmt.where(m.moved_at >= since)
    if until is not None:
        stmt = stmt.where(m.moved_at < until)
    return stmt


def q_last_order_time() -> Select:
    """Sales DB: the time of the newest order (the image's "now")."""
    return select(func.max(orders.c.ordered_at).label("last_order_at"))


def statements() -> dict[str, tuple[Db, Select]]:
    """Every statement the analyses run, with the database it runs on (for review/compiling)."""
    return {
        "revenue_by_day": ("sales", q_revenue("day", "2024-01-01", "2024-02-01")),
        "revenue_by_category": ("sales", q_revenue("category")),
        "revenue_by_channel": ("sales", q_revenue("channel")),
        "top_products_revenue": ("sales", q_top_products(10, "revenue")),
        "top_products_units": ("sales", q_top_products(5, "units", "2024-01-01")),
        "units_sold": ("sales", q_units_sold()),
        "units_sold_window": ("sales", q_units_sold("2024-01-01T00:00:00", "2024-01-08")),
        "last_order_time": ("sales", q_last_order_time()),
        "stock": ("stock", q_stock()),
        "low_stock": ("stock", q_stock(20)),
        "units_moved": ("stock", q_units_moved()),
        "stock_flows": ("stock", q_stock_flows()),
        "stock_flows_window": ("stock", q_stock_flows("2024-01-01", "2024-02-01")),
    }


# --- frames -----------------------------------------------------------------------------------


def _frame(columns: list[str], rows: list[tuple[Any, ...]], ints: tuple[str, ...] = (),
           strs: tuple[str, ...] = ()) -> pd.DataFrame:
    """A DataFrame with fixed dtypes, so SQLite, PostgreSQL and Oracle give equal frames."""
    df = pd.DataFrame(rows, columns=columns)
    for c in ints:
        df[c] = df[c].fillna(0).astype("int64")
    for c in strs:
        df[c] = df[c].astype(object)
    return df


def _rows(dbs: ShopDatabases, db: Db, stmt: Select) -> list[tuple[Any, ...]]:
    return dbs.fetch(db, stmt)[1]


# --- analyses ---------------------------------------------------------------------------------


def _revenue(dbs: ShopDatabases, by: Literal["day", "category", "channel"],
             since: Any, until: Any) -> pd.DataFrame:
    name = f"revenue_by_{by}"
    dbs._guard(name)
    s, u = _bound(since, "since"), _bound(until, "until")
    cols = [by, "orders", "units", "revenue_cents"]
    df = _frame(cols, _rows(dbs, "sales", q_revenue(by, s, u)),
                ints=("orders", "units", "revenue_cents"), strs=(by,))
    df["revenue"] = df["revenue_cents"] / 100.0
    return dbs.result(df, name, since=s, until=u)


def revenue_by_day(dbs: ShopDatabases, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Per UTC day (``YYYY-MM-DD``): orders, units, revenue_cents, revenue; ``[since, until)``."""
    return _revenue(dbs, "day", since, until)


def revenue_by_category(dbs: ShopDatabases, since: Any = None, until: Any = None
                        ) -> pd.DataFrame:
    """Per product category: orders, units, revenue_cents, revenue."""
    return _revenue(dbs, "category", since, until)


def revenue_by_channel(dbs: ShopDatabases, since: Any = None, until: Any = None
                       ) -> pd.DataFrame:
    """Per sales channel (web, mobile, store, marketplace): orders, units, revenue."""
    return _revenue(dbs, "channel", since, until)


def top_products(dbs: ShopDatabases, n: int = 10, by: Literal["revenue", "units"] = "revenue",
                 since: Any = None, until: Any = None) -> pd.DataFrame:
    """The ``n`` best-selling products by revenue or units: id, name, category, units, revenue."""
    _positive_int(n, "n")
    if by not in ("revenue", "units"):
        raise InvalidInput(f"by must be 'revenue' or 'units', not {by!r}")
    dbs._guard("top_products")
    s, u = _bound(since, "since"), _bound(until, "until")
    cols = ["product_id", "name", "category", "units", "revenue_cents"]
    df = _frame(cols, _rows(dbs, "sales", q_top_products(n, by, s, u)),
                ints=("product_id", "units", "revenue_cents"), strs=("name", "category"))
    df["revenue"] = df["revenue_cents"] / 100.0
    return dbs.result(df, "top_products", n=n, by=by, since=s, until=u)


def _stock_frame(dbs: ShopDatabases, threshold: int | None = None) -> pd.DataFrame:
    cols = ["product_id", "name", "category", "on_hand", "initial_units"]
    return _frame(cols, _rows(dbs, "stock", q_stock(threshold)),
                  ints=("product_id", "on_hand", "initial_units"), strs=("name", "category"))


def _sold_frame(dbs: ShopDatabases, since: str | None = None, until: str | None = None
                ) -> pd.DataFrame:
    cols = ["product_id", "units_sold", "orders", "revenue_cents"]
    return _frame(cols, _rows(dbs, "sales", q_units_sold(since, until)),
                  ints=tuple(cols))


def _merge_products(stock: pd.DataFrame, other: pd.DataFrame, ints: tuple[str, ...]
                    ) -> pd.DataFrame:
    """Per product of the stock DB, with ``other``'s columns (0 where it has no row).

    Products that appear only in ``other`` (sold but unknown to stock) are kept too.
    """
    df = stock.merge(other, on="product_id", how="outer", sort=True)
    for c in ints:
        df[c] = df[c].fillna(0).astype("int64")
    for c in ("name", "category"):
        if c in df:
            df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df.reset_index(drop=True)


def units_vs_stock(dbs: ShopDatabases) -> pd.DataFrame:
    """Per product: units_sold (sales DB) next to on_hand and initial_units (stock DB).

    ``sell_through`` is units sold / initial units.
    """
    dbs._guard("units_vs_stock")
    sold = _sold_frame(dbs)[["product_id", "units_sold", "revenue_cents"]]
    df = _merge_products(_stock_frame(dbs), sold,
                         ints=("on_hand", "initial_units", "units_sold", "revenue_cents"))
    df["sell_through"] = [u / i if i else math.nan
                          for u, i in zip(df["units_sold"], df["initial_units"], strict=True)]
    return dbs.result(df, "units_vs_stock")


def low_stock(dbs: ShopDatabases, threshold: int = 20) -> pd.DataFrame:
    """Products with ``on_hand <= threshold`` units, lowest first; ``fraction_left`` of initial."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise InvalidInput(f"threshold must be a non-negative integer (units), not {threshold!r}")
    dbs._guard("low_stock")
    df = _stock_frame(dbs, threshold)
    df["fraction_left"] = [o / i if i else math.nan
                           for o, i in zip(df["on_hand"], df["initial_units"], strict=True)]
    return dbs.result(df, "low_stock", threshold=threshold)


def _minus_days(as_of: str, days: int) -> str:
    """``as_of`` moved back by ``days``, written in the same ISO style as ``as_of``."""
    try:
        t = datetime.fromisoformat(as_of)
    except ValueError:
        raise InvalidInput(f"as_of {as_of!r} is not an ISO-8601 time") from None
    start = t - timedelta(days=days)
    if len(as_of) >= 19:  # keep separator, fraction and offset exactly as stored
        return start.strftime("%Y-%m-%d") + as_of[10] + start.strftime("%H:%M:%S") + as_of[19:]
    return start.date().isoformat()


def days_of_cover(dbs: ShopDatabases, window_days: int = 7, as_of: Any = None) -> pd.DataFrame:
    """Per product: on hand / average daily units sold over the ``window_days`` before ``as_of``.

    ``as_of`` defaults to the newest order in the image (a snapshot is frozen, so "now"
    is its last order, not the wall clock).  The window is ``(as_of - window_days, as_of]``.
    ``days_of_cover`` is ``inf`` for a product that sold nothing in the window.
    """
    _positive_int(window_days, "window_days")
    dbs._guard("days_of_cover")
    if as_of is None:
        _, rows = dbs.fetch("sales", q_last_order_time())
        end = rows[0][0] if rows and rows[0][0] is not None else None
    else:
        end = _bound(as_of, "as_of")
    stock = _stock_frame(dbs)
    if end is None:  # no orders at all
        start = None
        sold = _frame(["product_id", "units_sold"], [], ints=("product_id", "units_sold"))
    else:
        start = _minus_days(str(end), window_days)
        cols = ["product_id", "units_sold", "orders", "revenue_cents"]
        stmt = (q_units_sold().where(orders.c.ordered_at > start)
                .where(orders.c.ordered_at <= str(end)))
        sold = _frame(cols, _rows(dbs, "sales", stmt), ints=tuple(cols))
        sold = sold[["product_id", "units_sold"]]
    df = _merge_products(stock[["product_id", "name", "category", "on_hand"]], sold,
                         ints=("on_hand", "units_sold"))
    df["avg_daily_units"] = df["units_sold"] / float(window_days)
    df["days_of_cover"] = [o / a if a > 0 else math.inf
                           for o, a in zip(df["on_hand"], df["avg_daily_units"], strict=True)]
    out = dbs.result(df, "days_of_cover", window_days=window_days, as_of=end)
    out.attrs["window_start"] = start
    out.attrs["window_end"] = end
    return out


def reconciliation(dbs: ShopDatabases) -> pd.DataFrame:
    """Per product: units sold (sales DB) vs units moved out for orders, and the stock balance.

    ``difference = units_sold - units_moved``; ``status`` is ``ok`` (0), ``sold without
    stock movement`` (> 0: the collapsed case) or ``moved, sale not recorded`` (< 0:
    orders in flight, which a consistent image may contain).  The stock DB's own balance:
    ``initial_units``, ``units_restocked`` (restock movements), ``on_hand`` and
    ``balance_diff = on_hand + units_moved - units_restocked - initial_units``, 0 when the
    balance rule holds (non-zero: a movement without its stock update, or the reverse).
    """
    dbs._guard("reconciliation")
    sold = _sold_frame(dbs)[["product_id", "units_sold", "orders"]]
    cols = ["product_id", "units_moved", "orders_moved", "units_restocked", "restocks"]
    moved = _frame(cols, _rows(dbs, "stock", q_stock_flows()), ints=tuple(cols))
    stock = _stock_frame(dbs)[["product_id", "name", "category", "on_hand", "initial_units"]]
    df = _merge_products(stock, sold.merge(moved, on="product_id", how="outer"),
                         ints=("units_sold", "orders", "units_moved", "orders_moved",
                               "units_restocked", "restocks", "on_hand", "initial_units"))
    df = df.rename(columns={"orders": "orders_sold"})
    df["difference"] = df["units_sold"] - df["units_moved"]
    df["status"] = ["ok" if d == 0 else
                    "sold without stock movement" if d > 0 else "moved, sale not recorded"
                    for d in df["difference"]]
    df["balance_diff"] = (df["on_hand"] + df["units_moved"] - df["units_restocked"]
                          - df["initial_units"])
    df = df[["product_id", "name", "category", "units_sold", "orders_sold", "units_moved",
             "orders_moved", "difference", "status", "initial_units", "units_restocked",
             "restocks", "on_hand", "balance_diff"]]
    out = dbs.result(df, "reconciliation")
    out.attrs["units_sold"] = int(df["units_sold"].sum())
    out.attrs["units_moved"] = int(df["units_moved"].sum())
    out.attrs["units_restocked"] = int(df["units_restocked"].sum())
    out.attrs["unbalanced_products"] = int((df["balance_diff"] != 0).sum())
    return out
