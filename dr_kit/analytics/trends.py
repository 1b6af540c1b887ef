"""Trends over the shop's history: revenue with its 7-day moving average and week-over-week
change, and the category or channel mix per day, week or month.

The aggregation runs in the database (SQLAlchemy Core, window functions that SQLite,
PostgreSQL and Oracle share); pandas only divides the exact integer sums the database
returns, so the same image gives the same frame on all three.  Days are UTC calendar days
of ``ordered_at``; a day without orders has no row, and the windows count it as zero.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Integer, distinct, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Select
from sqlalchemy.sql.functions import FunctionElement

from dr_kit.analytics.databases import ShopDatabases
from dr_kit.analytics.shop import DAY, LINE_REVENUE, _bound, _frame, _rows, _window
from dr_kit.analytics.tables import order_lines, orders, products
from dr_kit.errors import InvalidInput

Period = Literal["day", "week", "month"]
Mix = Literal["category", "channel"]
EPOCH = date(1970, 1, 1)


class day_number(FunctionElement[int]):  # noqa: N801 - reads as the SQL function it renders
    """Days since 1970-01-01 of an ISO ``YYYY-MM-DD...`` text, as an integer, in SQL.

    Each dialect has its own date arithmetic, so the construct renders per dialect:
    SQLite ``julianday``, PostgreSQL ``date - date``, Oracle ``TO_DATE - DATE``.
    """

    type = Integer()
    inherit_cache = True
    name = "day_number"


def _arg(element: day_number, compiler: Any, **kw: Any) -> str:
    return compiler.process(list(element.clauses)[0], **kw)


@compiles(day_number)
def _day_number_sqlite(element: day_number, compiler: Any, **kw: Any) -> str:
    return f"CAST(julianday(substr({_arg(element, compiler, **kw)}, 1, 10)) - 2440587.5 AS INTEGER)"


@compiles(day_number, "postgresql")
def _day_number_postgresql(element: day_number, compiler: Any, **kw: Any) -> str:
    return f"(CAST(substr({_arg(element, compiler, **kw)}, 1, 10) AS DATE) - DATE '1970-01-01')"


@compiles(day_number, "oracle")
def _day_number_oracle(element: day_number, compiler: Any, **kw: Any) -> str:
    return (f"(TO_DATE(SUBSTR({_arg(element, compiler, **kw)}, 1, 10), 'YYYY-MM-DD') "
            "- DATE '1970-01-01')")


def _date_of(n: Any) -> str:
    return (EPOCH + timedelta(days=int(n))).isoformat()


# --- statements -------------------------------------------------------------------------------


def q_daily(since: str | None = None, until: str | None = None) -> Select:
    """Sales DB: per UTC day, orders, units and revenue (cents)."""
    stmt = (select(DAY.label("day"),
                   func.count(distinct(orders.c.order_id)).label("orders"),
                   func.sum(order_lines.c.quantity).label("units"),
                   func.sum(LINE_REVENUE).label("revenue_cents"))
            .select_from(orders.join(order_lines, order_lines.c.order_id == orders.c.order_id))
            .group_by(DAY))
    return _window(stmt, since, until)


def q_revenue_trend(since: str | None = None, until: str | None = None) -> Select:
    """Sales DB: per day, the revenue of the 7 days ending that day and of the 7 before.

    ``RANGE`` windows over the day number, so days without orders count as zero revenue;
    ``day_index`` is the day's distance from the first day of the window.
    """
    d = q_daily(since, until).subquery("d")
    dn = day_number(d.c.day)
    return (select(d.c.day, d.c.orders, d.c.units, d.c.revenue_cents,
                   func.sum(d.c.revenue_cents).over(order_by=dn, range_=(-6, 0))
                   .label("revenue_7d_cents"),
                   func.sum(d.c.revenue_cents).over(order_by=dn, range_=(-13, -7))
                   .label("revenue_prev_7d_cents"),
                   (dn - func.min(dn).over()).label("day_index"))
            .order_by(d.c.day))


def q_mix(by: Mix, period: Period, since: str | None = None, until: str | None = None) -> Select:
    """Sales DB: orders, units and revenue per ``period`` and product category or channel.

    The week is the ISO week, named by its Monday (as a day number: 1970-01-01 was a
    Thursday, so Monday is ``n - (n + 3) mod 7``).
    """
    key = {"category": products.c.category, "channel": orders.c.channel}[by]
    src = orders.join(order_lines, order_lines.c.order_id == orders.c.order_id)
    if by == "category":
        src = src.join(products, products.c.product_id == order_lines.c.product_id)
    daily = _window(select(DAY.label("day"), key.label("grp"),
                           func.count(distinct(orders.c.order_id)).label("orders"),
                           func.sum(order_lines.c.quantity).label("units"),
                           func.sum(LINE_REVENUE).label("revenue_cents"))
                    .select_from(src).group_by(DAY, key), since, until).subquery("daily")
    label: Any
    if period == "day":
        label = daily.c.day
    elif period == "month":
        label = func.substr(daily.c.day, literal_column("1"), literal_column("7"))
    else:
        n = day_number(daily.c.day)
        label = n - (n + literal_column("3")) % literal_column("7")
    tagged = select(label.label("period"), daily.c.grp, daily.c.orders, daily.c.units,
                    daily.c.revenue_cents).subquery("tagged")
    return (select(tagged.c.period, tagged.c.grp,
                   func.sum(tagged.c.orders).label("orders"),
                   func.sum(tagged.c.units).label("units"),
                   func.sum(tagged.c.revenue_cents).label("revenue_cents"))
            .group_by(tagged.c.period, tagged.c.grp)
            .order_by(tagged.c.period, tagged.c.grp))


def statements() -> dict[str, tuple[str, Select]]:
    return {
        "daily": ("sales", q_daily("2024-01-01", "2024-07-01")),
        "revenue_trend": ("sales", q_revenue_trend()),
        "revenue_trend_window": ("sales", q_revenue_trend("2024-01-01", "2024-07-01")),
        "mix_category_week": ("sales", q_mix("category", "week")),
        "mix_channel_month": ("sales", q_mix("channel", "month", "2024-01-01")),
        "mix_channel_day": ("sales", q_mix("channel", "day")),
    }


# --- analyses ---------------------------------------------------------------------------------


def revenue_trend(dbs: ShopDatabases, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Per UTC day: orders, units, revenue, its 7-day moving average and week-over-week change.

    Columns: ``day``, ``orders``, ``units``, ``revenue_cents``, ``revenue`` (currency
    units), ``revenue_ma7`` (average daily revenue over the 7 days ending that day, days
    without orders counting as 0; NaN for the first 6 days of the window, which lack a
    full week), ``wow_pct`` (revenue of the 7 days ending that day against the 7 days
    before, in percent; NaN for the first 13 days or when the week before sold nothing).
    ``[since, until)`` bounds the orders considered.
    """
    dbs._guard("revenue_trend")
    s, u = _bound(since, "since"), _bound(until, "until")
    cols = ["day", "orders", "units", "revenue_cents", "revenue_7d_cents",
            "revenue_prev_7d_cents", "day_index"]
    df = _frame(cols, _rows(dbs, "sales", q_revenue_trend(s, u)),
                ints=("orders", "units", "revenue_cents", "revenue_7d_cents", "day_index"),
                strs=("day",))
    prev = pd.to_numeric(df["revenue_prev_7d_cents"].astype(float))
    df["revenue"] = df["revenue_cents"] / 100.0
    df["revenue_ma7"] = (df["revenue_7d_cents"] / 700.0).where(df["day_index"] >= 6)
    df["wow_pct"] = ((df["revenue_7d_cents"] / prev - 1.0) * 100.0).where(
        (df["day_index"] >= 13) & (prev > 0))
    out = df[["day", "orders", "units", "revenue_cents", "revenue", "revenue_ma7",
              "wow_pct"]].copy()
    return dbs.result(out, "revenue_trend", since=s, until=u)


def mix_over_time(dbs: ShopDatabases, by: Mix = "category", period: Period = "week",
                  since: Any = None, until: Any = None) -> pd.DataFrame:
    """The category or channel mix per day, ISO week or month, in long form.

    Columns: the period (``day``/``week``/``month``: ``YYYY-MM-DD``, the week's Monday,
    or ``YYYY-MM``), the ``category`` or ``channel``, ``orders``, ``units``,
    ``revenue_cents``, ``revenue`` and ``share_pct`` (of the period's revenue).  For a
    chart: ``df.pivot(index=period, columns=by, values="share_pct")``.
    """
    if by not in ("category", "channel"):
        raise InvalidInput(f"by must be 'category' or 'channel', not {by!r}")
    if period not in ("day", "week", "month"):
        raise InvalidInput(f"period must be 'day', 'week' or 'month', not {period!r}")
    dbs._guard("mix_over_time")
    s, u = _bound(since, "since"), _bound(until, "until")
    rows = _rows(dbs, "sales", q_mix(by, period, s, u))
    df = _frame([period, by, "orders", "units", "revenue_cents"], rows,
                ints=("orders", "units", "revenue_cents"), strs=(by,))
    if period == "week":
        df[period] = [_date_of(n) for n in df[period]]
    df[period] = df[period].astype(object)
    df["revenue"] = df["revenue_cents"] / 100.0
    total = df.groupby(period)["revenue_cents"].transform("sum")
    df["share_pct"] = (100.0 * df["revenue_cents"] / total.where(total > 0)).astype(float)
    return dbs.result(df, "mix_over_time", by=by, period=period, since=s, until=u)


__all__ = ["day_number", "q_daily", "q_revenue_trend", "q_mix", "revenue_trend",
           "mix_over_time"]
