"""Sales and stock analytics on the shop's two databases, stamped with where the data came from.

An analyst opens the pair once and calls analyses that return pandas DataFrames::

    dbs = open_sqlite(stock_path, sales_path, snapshot="snap-1", sequence=4711, ...)
    dbs = open_databases("oracle+oracledb://shop@db/stock", "oracle+oracledb://shop@db/sales")
    revenue_by_day(dbs)            # one row per day: orders, units, revenue_cents, revenue
    dbs.close()

Every result carries ``df.attrs["provenance"]`` (a :class:`Provenance`: snapshot name,
consistency point, lag at snapshot time, source and the consistency :class:`Verdict`
from :mod:`dr_kit.shop.consistency`) and ``df.attrs["stamp"]``, its one-line form.  When
the verdict says *collapsed* or *corrupt*, every result also raises an
:class:`InconsistentCopyWarning` and sets ``df.attrs["consistent"] = False``; with
``on_inconsistent="raise"`` the analyses refuse to run instead.

Aggregation happens in SQL (SQLAlchemy Core ``select()``), so big databases stay fast; the
statements are portable and run unchanged on SQLite, PostgreSQL and Oracle (the tests
compile all of them for Oracle, see :func:`statements`).  The stock and sales databases
are separate, so a figure that needs both (units sold vs on hand, days of cover, the
reconciliation) is one aggregate query per database, joined per product in pandas.

All connections only read, and the database enforces it (:mod:`dr_kit.analytics.readonly`):
SQLite through the read-only apsw adapter (:mod:`dr_kit.sqlite.dbapi`: an authorizer and
``PRAGMA query_only``); PostgreSQL through psycopg with ``default_transaction_read_only``,
every statement prepared (one command each) and ``SET TRANSACTION READ ONLY``; Oracle
inside ``SET TRANSACTION READ ONLY`` as a role that may only read.

Modules: ``tables`` (the shop's tables for SQLAlchemy Core), ``databases`` (the pair,
provenance, opening), ``readonly`` (read-only engines, ad hoc queries), ``shop`` (revenue,
best sellers, stock, reconciliation), ``trends`` (revenue trend, mix over time),
``inventory`` (ABC classes, sell-through, days of cover, reorder list), ``compare``
(what changed between two snapshot groups).
"""

from __future__ import annotations

from typing import Any

from dr_kit.analytics import compare as _compare
from dr_kit.analytics import inventory as _inventory
from dr_kit.analytics import shop as _shop
from dr_kit.analytics import trends as _trends
from dr_kit.analytics.compare import Comparison, compare_snapshots
from dr_kit.analytics.databases import (
    PASSWORD_ENV,
    InconsistentCopyWarning,
    Provenance,
    ShopDatabases,
    open_databases,
    open_sqlite,
)
from dr_kit.analytics.inventory import abc_classes, reorder_list, stock_cover
from dr_kit.analytics.readonly import check_select, mask_url, read_only_engine, run_query
from dr_kit.analytics.shop import (
    days_of_cover,
    low_stock,
    q_last_order_time,
    q_revenue,
    q_stock,
    q_top_products,
    q_units_moved,
    q_units_sold,
    reconciliation,
    revenue_by_category,
    revenue_by_channel,
    revenue_by_day,
    top_products,
    units_vs_stock,
)
from dr_kit.analytics.trends import mix_over_time, revenue_trend


def statements() -> dict[str, tuple[str, Any]]:
    """Every statement the analyses run, with the database it runs on (for review/compiling)."""
    out: dict[str, tuple[str, Any]] = {}
    for module in (_shop, _trends, _inventory, _compare):
        out.update(module.statements())
    return out


__all__ = [
    "check_select", "read_only_engine",
    "revenue_trend", "mix_over_time", "abc_classes", "stock_cover", "reorder_list",
    "compare_snapshots", "Comparison",
    "InconsistentCopyWarning", "Provenance", "ShopDatabases", "PASSWORD_ENV",
    "open_sqlite", "open_databases", "mask_url", "run_query", "statements",
    "revenue_by_day", "revenue_by_category", "revenue_by_channel", "top_products",
    "units_vs_stock", "low_stock", "days_of_cover", "reconciliation",
    "q_revenue", "q_top_products", "q_units_sold", "q_stock", "q_units_moved",
    "q_last_order_time",
]

