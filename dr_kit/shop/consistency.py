"""The consistency verdict on a pair of (stock, sales) images: consistent or *collapsed*.

Defined once here and used everywhere an image is judged (crash tests, snapshot
analytics, drills).  The checks only need a way to run a query on each database, so the
same code judges SQLite images opened through the array VFS (apsw) and SQLAlchemy
connections to PostgreSQL or Oracle.

Rules (brief section 4), on a crash-consistent image of both databases:
- every order in sales has its stock movements in stock ("no sale without stock movement");
- per product, ``on_hand + SUM(movements) = initial_units``;
- ``PRAGMA integrity_check`` is ``ok`` on both (SQLite only).
An order whose stock movement is present but whose sale is not is *in flight* (the
business transaction commits stock first), which is allowed.

A movement's ``quantity`` is the units that *left* the stock: positive for an order line
(``order_id`` set), negative for a restock (``order_id`` NULL: units that came in, from a
delivery in the shop's history or a top-up by the workload).  So the balance rule reads
``on_hand = initial_units - units sold + units restocked`` and holds through restocks,
as long as a restock's movement and its ``on_hand`` update commit together (they do: one
stock transaction).  A restock has no order, so it never counts as in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Query = Callable[[str], Iterable[Sequence[Any]]]

ORDER_IDS_SALES = "SELECT order_id FROM orders ORDER BY order_id"
ORDER_IDS_STOCK = (
    "SELECT DISTINCT order_id FROM stock_movements WHERE order_id IS NOT NULL ORDER BY order_id"
)
STOCK_IMBALANCE = (
    "SELECT l.product_id, l.on_hand, l.initial_units, COALESCE(m.moved, 0) AS moved "
    "FROM stock_levels l LEFT JOIN "
    "(SELECT product_id, SUM(quantity) AS moved FROM stock_movements GROUP BY product_id) m "
    "ON m.product_id = l.product_id "
    "WHERE l.on_hand + COALESCE(m.moved, 0) <> l.initial_units"
)


@dataclass
class Verdict:
    """Outcome of judging one image pair.  ``consistent`` is the headline."""

    orders: int = 0
    collapsed_orders: int = 0  # orders in sales with no stock movement
    in_flight_orders: int = 0  # stock movements whose sale is not (yet) in sales
    imbalanced_products: int = 0  # products breaking on_hand + moved = initial
    integrity: dict[str, str] = field(default_factory=dict)  # db -> "ok" or the problem
    error: str | None = None  # the image could not be read at all

    @property
    def corrupt(self) -> bool:
        return self.error is not None or any(v != "ok" for v in self.integrity.values())

    @property
    def collapsed(self) -> bool:
        return self.collapsed_orders > 0 or self.imbalanced_products > 0

    @property
    def consistent(self) -> bool:
        return not self.corrupt and not self.collapsed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(consistent=self.consistent, collapsed=self.collapsed, corrupt=self.corrupt)
        return d

    def summary(self) -> str:
        if self.error:
            return f"unreadable: {self.error}"
        if self.corrupt:
            bad = ", ".join(f"{k}: {v}" for k, v in self.integrity.items() if v != "ok")
            return f"corrupt ({bad})"
        if self.collapsed:
            return (f"COLLAPSED: {self.collapsed_orders} of {self.orders} orders without stock "
                    f"movement, {self.imbalanced_products} products out of balance")
        return f"consistent: {self.orders} orders, {self.in_flight_orders} in flight"


def judge(stock: Query, sales: Query, *, integrity: dict[str, str] | None = None) -> Verdict:
    """Judge an image pair given a query function for each database.

    ``integrity`` carries the result of the engine's own integrity check when it has one
    (SQLite's ``PRAGMA integrity_check``); pass None for servers that have none.
    """
    v = Verdict(integrity=dict(integrity or {}))
    sales_ids = [r[0] for r in sales(ORDER_IDS_SALES)]
    stock_ids = {r[0] for r in stock(ORDER_IDS_STOCK)}
    v.orders = len(sales_ids)
    sales_set = set(sales_ids)
    v.collapsed_orders = sum(1 for o in sales_ids if o not in stock_ids)
    v.in_flight_orders = sum(1 for o in stock_ids if o not in sales_set)
    v.imbalanced_products = sum(1 for _ in stock(STOCK_IMBALANCE))
    return v
