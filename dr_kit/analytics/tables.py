"""The shop's tables as SQLAlchemy Core sees them (the DDL lives in :mod:`dr_kit.shop.schema`)."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import (
    Integer,
    String,
    column,
    table,
)

# --- the shop's tables, as SQLAlchemy sees them (DDL lives in dr_kit.shop.schema) ---------

products = table(
    "products",
    column("product_id", Integer), column("name", String), column("category", String),
    column("unit_price_cents", Integer),
)
stock_levels = table(
    "stock_levels",
    column("product_id", Integer), column("on_hand", Integer), column("initial_units", Integer),
)
stock_movements = table(
    "stock_movements",
    column("movement_id", Integer), column("order_id", Integer), column("product_id", Integer),
    column("quantity", Integer), column("moved_at", String),
)
orders = table(
    "orders",
    column("order_id", Integer), column("ordered_at", String), column("customer", String),
    column("channel", String),
)
order_lines = table(
    "order_lines",
    column("order_id", Integer), column("line_no", Integer), column("product_id", Integer),
    column("quantity", Integer), column("unit_price_cents", Integer),
)

Db = Literal["stock", "sales"]

