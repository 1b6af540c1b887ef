"""Tables of the shop's two databases, written once in portable SQL.

stock DB: ``products``, ``stock_levels``, ``stock_movements``
sales DB: ``products`` (the catalog the shop sells from), ``orders``, ``order_lines``

Money is stored in integer cents and times as ISO-8601 UTC text, so that SQLite,
PostgreSQL and Oracle hold exactly the same values.  A stock movement with a positive
quantity is goods leaving for an order (``order_id`` set); a negative quantity is a
restock (``order_id`` NULL, units coming in).  Invariant per product on any consistent
image: ``on_hand + SUM(movements.quantity) = initial_units`` (``initial_units`` is the
stock the shop opened with, before any history; see :mod:`dr_kit.shop.consistency`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dr_kit.errors import InvalidInput

STOCK_DDL = (
    """CREATE TABLE IF NOT EXISTS products (
        product_id INTEGER PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        category VARCHAR(40) NOT NULL,
        unit_price_cents INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS stock_levels (
        product_id INTEGER PRIMARY KEY REFERENCES products(product_id),
        on_hand INTEGER NOT NULL,
        initial_units INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS stock_movements (
        movement_id INTEGER PRIMARY KEY,
        order_id INTEGER,
        product_id INTEGER NOT NULL REFERENCES products(product_id),
        quantity INTEGER NOT NULL,
        moved_at VARCHAR(32) NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stock_movements_order ON stock_movements(order_id)",
)

SALES_DDL = (
    """CREATE TABLE IF NOT EXISTS products (
        product_id INTEGER PRIMARY KEY,
        name VARCHAR(100) NOT NULL,
        category VARCHAR(40) NOT NULL,
        unit_price_cents INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        order_id INTEGER PRIMARY KEY,
        ordered_at VARCHAR(32) NOT NULL,
        customer VARCHAR(40) NOT NULL,
        channel VARCHAR(20) NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS order_lines (
        order_id INTEGER NOT NULL REFERENCES orders(order_id),
        line_no INTEGER NOT NULL,
        product_id INTEGER NOT NULL,
        quantity INTEGER NOT NULL,
        unit_price_cents INTEGER NOT NULL,
        PRIMARY KEY (order_id, line_no))""",
)

CHANNELS = ("web", "mobile", "store", "marketplace")
# the catalog's prices (``unit_price_cents``) are cents of this currency; revenue figures
# (``revenue``, ``revenue_delta``) are in whole units of it
CURRENCY = "EUR"


@dataclass(frozen=True)
class Product:
    product_id: int
    name: str
    category: str
    unit_price_cents: int
    initial_units: int


def data_dir() -> Path:
    """The folder holding the seed catalog (``$DR_KIT_DATA``, the package's copy of the
    repository's ``data/``, or that folder in a checkout: :mod:`dr_kit.resources`)."""
    from dr_kit.resources import data_dir as resource_data_dir

    return resource_data_dir()


def load_catalog(path: str | Path | None = None) -> list[Product]:
    """Read the seed catalog CSV (product_id,name,category,unit_price_cents,initial_units)."""
    p = Path(path) if path else data_dir() / "catalog.csv"
    if not p.is_file():
        raise InvalidInput(f"catalog file {p} not found; set DR_KIT_DATA to the folder holding catalog.csv")
    out = []
    with p.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                out.append(Product(int(row["product_id"]), row["name"], row["category"],
                                   int(row["unit_price_cents"]), int(row["initial_units"])))
            except (KeyError, ValueError) as e:
                raise InvalidInput(f"{p}:{i}: bad catalog row ({e}); expected "
                                   "product_id,name,category,unit_price_cents,initial_units") from None
    if not out:
        raise InvalidInput(f"catalog {p} has no products")
    return out
