"""Products and stock over the history: ABC classes, sell-through, days of cover, reorder list.

Revenue and units sold come from the sales database, on hand and stock movements from the
stock database; each side is one aggregate statement run in its database (window
functions for the ABC ranking), joined per product in pandas.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from sqlalchemy import func, literal_column, select
from sqlalchemy.sql import Select

from dr_kit.analytics.databases import ShopDatabases
from dr_kit.analytics.shop import (
    LINE_REVENUE,
    _bound,
    _frame,
    _merge_products,
    _minus_days,
    _positive_int,
    _rows,
    _stock_frame,
    _window,
    q_last_order_time,
    q_stock_flows,
    q_units_sold,
)
from dr_kit.analytics.tables import order_lines, orders, products, stock_movements
from dr_kit.errors import InvalidInput

# --- statements -------------------------------------------------------------------------------


def q_abc(since: str | None = None, until: str | None = None) -> Select:
    """Sales DB: every product ranked by revenue (ties by id), with the running total.

    Products without sales are kept (revenue 0, last).  ``cum_before_cents`` is the
    revenue of the products ranked above, ``total_cents`` that of all products.
    """
    sold = _window(select(order_lines.c.product_id,
                          func.sum(order_lines.c.quantity).label("units"),
                          func.sum(LINE_REVENUE).label("revenue_cents"))
                   .select_from(order_lines.join(orders,
                                                 orders.c.order_id == order_lines.c.order_id))
                   .group_by(order_lines.c.product_id), since, until).subquery("sold")
    units = func.coalesce(sold.c.units, literal_column("0"))
    revenue = func.coalesce(sold.c.revenue_cents, literal_column("0"))
    ranked = (select(products.c.product_id, products.c.name, products.c.category,
                     units.label("units"), revenue.label("revenue_cents"))
              .select_from(products.outerjoin(sold, sold.c.product_id == products.c.product_id))
              .subquery("ranked"))
    order = (ranked.c.revenue_cents.desc(), ranked.c.product_id)
    return (select(ranked.c.product_id, ranked.c.name, ranked.c.category, ranked.c.units,
                   ranked.c.revenue_cents,
                   func.row_number().over(order_by=order).label("rank"),
                   (func.sum(ranked.c.revenue_cents).over(order_by=order, rows=(None, 0))
                    - ranked.c.revenue_cents).label("cum_before_cents"),
                   func.sum(ranked.c.revenue_cents).over().label("total_cents"))
            .order_by(*order))


def statements() -> dict[str, tuple[str, Select]]:
    return {
        "abc": ("sales", q_abc()),
        "abc_window": ("sales", q_abc("2024-01-01", "2024-07-01")),
    }


# --- analyses ---------------------------------------------------------------------------------


def _share(part: pd.Series, whole: pd.Series) -> pd.Series:
    return (100.0 * part / whole.where(whole > 0)).astype(float)


def abc_classes(dbs: ShopDatabases, since: Any = None, until: Any = None, *,
                a_pct: float = 80.0, b_pct: float = 95.0) -> pd.DataFrame:
    """Products in ABC classes by revenue: A make the first ``a_pct`` % of it, B up to ``b_pct``.

    Ranked by revenue (ties by id).  A product is in A when the products ranked above it
    make less than ``a_pct`` % of the revenue (so the one crossing the line is A too),
    B likewise below ``b_pct`` %, C the rest, including products that sold nothing.
    Columns: ``rank``, ``product_id``, ``name``, ``category``, ``units``,
    ``revenue_cents``, ``revenue``, ``share_pct``, ``cum_pct`` (running share, this
    product included) and ``abc``.  ``df.attrs["classes"]`` counts the products per class.
    """
    for name, v in (("a_pct", a_pct), ("b_pct", b_pct)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100:
            raise InvalidInput(f"{name} must be a percentage in (0, 100], not {v!r}")
    if a_pct > b_pct:
        raise InvalidInput(f"a_pct ({a_pct}) must not exceed b_pct ({b_pct})")
    dbs._guard("abc_classes")
    s, u = _bound(since, "since"), _bound(until, "until")
    cols = ["product_id", "name", "category", "units", "revenue_cents", "rank",
            "cum_before_cents", "total_cents"]
    df = _frame(cols, _rows(dbs, "sales", q_abc(s, u)),
                ints=("product_id", "units", "revenue_cents", "rank", "cum_before_cents",
                      "total_cents"), strs=("name", "category"))
    before = _share(df["cum_before_cents"], df["total_cents"])
    df["revenue"] = df["revenue_cents"] / 100.0
    df["share_pct"] = _share(df["revenue_cents"], df["total_cents"])
    df["cum_pct"] = _share(df["cum_before_cents"] + df["revenue_cents"], df["total_cents"])
    df["abc"] = ["C" if r == 0 or math.isnan(b) else "A" if b < a_pct else
                 "B" if b < b_pct else "C"
                 for b, r in zip(before, df["revenue_cents"], strict=True)]
    out = df[["rank", "product_id", "name", "category", "units", "revenue_cents", "revenue",
              "share_pct", "cum_pct", "abc"]].copy()
    out = dbs.result(out, "abc_classes", since=s, until=u, a_pct=a_pct, b_pct=b_pct)
    out.attrs["classes"] = {c: int((out["abc"] == c).sum()) for c in "ABC"}
    return out


def _as_of(dbs: ShopDatabases, as_of: Any) -> str | None:
    if as_of is not None:
        return _bound(as_of, "as_of")
    _, rows = dbs.fetch("sales", q_last_order_time())
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


def stock_cover(dbs: ShopDatabases, window_days: int = 28, *, lead_days: float = 7.0,
                safety_days: float = 3.0, target_days: float = 21.0, as_of: Any = None
                ) -> pd.DataFrame:
    """Per product: sell-through and days of cover over the ``window_days`` before ``as_of``.

    ``as_of`` defaults to the newest order of the image (a snapshot is frozen: its "now"
    is its last order).  Columns: ``on_hand`` (now), ``sold_units`` (sales in the window
    ``(as_of - window_days, as_of]``), ``restocked_units`` (deliveries in it),
    ``units_per_day``, ``cover_days`` (on hand / units per day; ``inf`` when nothing
    sold), ``sell_through_pct`` (sold / (sold + on hand): the share of the units available
    in the window that sold), ``reorder_point`` (units for ``lead_days`` + ``safety_days``
    of demand), ``reorder`` (on hand at or below it) and ``order_units`` (to cover
    ``lead_days`` + ``target_days`` of demand).  Sorted by cover, lowest first.
    """
    _positive_int(window_days, "window_days")
    for name, v in (("lead_days", lead_days), ("safety_days", safety_days),
                    ("target_days", target_days)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v):
            raise InvalidInput(f"{name} must be a non-negative number of days, not {v!r}")
    dbs._guard("stock_cover")
    end = _as_of(dbs, as_of)
    stock = _stock_frame(dbs)[["product_id", "name", "category", "on_hand"]]
    if end is None:
        start = None
        sold = _frame(["product_id", "sold_units"], [], ints=("product_id", "sold_units"))
        flows = _frame(["product_id", "restocked_units"], [],
                       ints=("product_id", "restocked_units"))
    else:
        start = _minus_days(end, window_days)
        stmt = (q_units_sold().where(orders.c.ordered_at > start)
                .where(orders.c.ordered_at <= end))
        cols = ["product_id", "sold_units", "orders", "revenue_cents"]
        sold = _frame(cols, _rows(dbs, "sales", stmt), ints=tuple(cols))[
            ["product_id", "sold_units"]]
        fcols = ["product_id", "units_moved", "orders_moved", "restocked_units", "restocks"]
        moved = (q_stock_flows().where(stock_movements.c.moved_at > start)
                 .where(stock_movements.c.moved_at <= end))
        flows = _frame(fcols, _rows(dbs, "stock", moved),
                       ints=tuple(fcols))[["product_id", "restocked_units"]]
    df = _merge_products(stock, sold.merge(flows, on="product_id", how="outer"),
                         ints=("on_hand", "sold_units", "restocked_units"))
    df["units_per_day"] = df["sold_units"] / float(window_days)
    df["cover_days"] = [o / r if r > 0 else math.inf
                        for o, r in zip(df["on_hand"], df["units_per_day"], strict=True)]
    avail = df["sold_units"] + df["on_hand"].clip(lower=0)
    df["sell_through_pct"] = _share(df["sold_units"], avail)
    df["reorder_point"] = [math.ceil(r * (lead_days + safety_days)) for r in df["units_per_day"]]
    df["reorder"] = (df["units_per_day"] > 0) & (df["on_hand"] <= df["reorder_point"])
    df["order_units"] = [max(0, math.ceil(r * (lead_days + target_days)) - o) if flag else 0
                         for r, o, flag in zip(df["units_per_day"], df["on_hand"],
                                               df["reorder"], strict=True)]
    df["order_units"] = df["order_units"].astype("int64")
    df = df.sort_values(["cover_days", "product_id"], kind="stable").reset_index(drop=True)
    out = dbs.result(df, "stock_cover", window_days=window_days, lead_days=lead_days,
                     safety_days=safety_days, target_days=target_days, as_of=end)
    out.attrs["window_start"] = start
    out.attrs["window_end"] = end
    return out


def reorder_list(dbs: ShopDatabases, window_days: int = 28, *, lead_days: float = 7.0,
                 safety_days: float = 3.0, target_days: float = 21.0, as_of: Any = None
                 ) -> pd.DataFrame:
    """The products to reorder now (see :func:`stock_cover`), the most urgent first."""
    full = stock_cover(dbs, window_days, lead_days=lead_days, safety_days=safety_days,
                       target_days=target_days, as_of=as_of)
    out = full[full["reorder"]].reset_index(drop=True)
    out.attrs.update(full.attrs)
    out.attrs["analysis"] = "reorder_list"
    return out


__all__ = ["q_abc", "abc_classes", "stock_cover", "reorder_list"]
