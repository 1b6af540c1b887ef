"""What changed between two images of the shop, e.g. two snapshot groups ("since 09:00").

:func:`compare_snapshots` takes the two opened images (:class:`ShopDatabases`, or a pair
of engines ``(stock, sales)``), runs the same aggregate statements on each and subtracts:
new orders, revenue and units sold, stock movements and on hand, in total, per channel
and per product.  Order and movement ids only grow in the shop, so "new" means an id
above the earlier image's highest; orders the earlier image has beyond the later one's
highest are *lost* (comparing across a failover shows what did not survive it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine, distinct, func, select
from sqlalchemy.sql import Select

from dr_kit.analytics.databases import InconsistentCopyWarning, Provenance, ShopDatabases
from dr_kit.analytics.shop import (
    LINE_REVENUE,
    _frame,
    _merge_products,
    _rows,
    _stock_frame,
    q_revenue,
    q_stock_flows,
    q_units_sold,
)
from dr_kit.analytics.tables import order_lines, orders, stock_movements
from dr_kit.errors import InvalidInput

# --- statements -------------------------------------------------------------------------------


def q_order_totals(after_order: int | None = None) -> Select:
    """Sales DB: orders, units, revenue, first/last order id and time (above ``after_order``)."""
    stmt = (select(func.count(distinct(orders.c.order_id)).label("orders"),
                   func.sum(order_lines.c.quantity).label("units"),
                   func.sum(LINE_REVENUE).label("revenue_cents"),
                   func.min(orders.c.order_id).label("first_order"),
                   func.max(orders.c.order_id).label("last_order"),
                   func.min(orders.c.ordered_at).label("first_at"),
                   func.max(orders.c.ordered_at).label("last_at"))
            .select_from(orders.join(order_lines, order_lines.c.order_id == orders.c.order_id)))
    if after_order is not None:
        stmt = stmt.where(orders.c.order_id > after_order)
    return stmt


def q_movement_totals(after_movement: int | None = None) -> Select:
    """Stock DB: movements, units out for orders, units restocked, last movement id."""
    m = stock_movements.c
    stmt = select(func.count().label("movements"),
                  func.max(m.movement_id).label("last_movement"),
                  func.min(m.moved_at).label("first_at"),
                  func.max(m.moved_at).label("last_at"))
    if after_movement is not None:
        stmt = stmt.where(m.movement_id > after_movement)
    return stmt


def statements() -> dict[str, tuple[str, Select]]:
    return {
        "order_totals": ("sales", q_order_totals()),
        "new_orders": ("sales", q_order_totals(1000)),
        "movement_totals": ("stock", q_movement_totals()),
        "new_movements": ("stock", q_movement_totals(1000)),
        "new_stock_flows": ("stock", q_stock_flows().where(stock_movements.c.movement_id > 1000)),
    }


# --- the comparison ---------------------------------------------------------------------------


@dataclass
class Comparison:
    """The change from ``before`` to ``after``: a JSON-able summary and two frames."""

    before: Provenance
    after: Provenance
    summary: dict[str, Any]
    by_channel: pd.DataFrame = field(repr=False)
    by_product: pd.DataFrame = field(repr=False)

    def to_dict(self, *, products: bool = True) -> dict[str, Any]:
        """The summary, the per-channel change and (``products``) the products that changed."""
        out = dict(self.summary)
        out["by_channel"] = _records(self.by_channel)
        if products:
            changed = self.by_product[(self.by_product[["units_delta", "on_hand_delta",
                                                        "moved_delta", "restocked_delta"]]
                                       != 0).any(axis=1)]
            out["by_product"] = _records(changed)
        return out


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def _as_dbs(x: ShopDatabases | tuple[Engine, Engine], which: str) -> ShopDatabases:
    if isinstance(x, ShopDatabases):
        return x
    if (isinstance(x, tuple) and len(x) == 2
            and all(isinstance(e, Engine) for e in x)):
        return ShopDatabases(x[0], x[1])
    raise InvalidInput(f"{which} must be opened ShopDatabases or a (stock, sales) pair of "
                       f"engines, not {type(x).__name__}")


def _one(dbs: ShopDatabases, db: str, stmt: Select) -> dict[str, Any]:
    cols, rows = dbs.fetch(db, stmt)  # type: ignore[arg-type]
    return dict(zip(cols, rows[0], strict=True)) if rows else dict.fromkeys(cols)


def _int(v: Any) -> int:
    return int(v) if v is not None else 0


def _label(p: Provenance) -> str:
    name = f"snapshot {p.snapshot}" if p.snapshot else "live databases"
    return name + (f" (seq {p.sequence})" if p.sequence is not None else "")


def _point(p: Provenance, totals: dict[str, Any], moves: dict[str, Any]) -> dict[str, Any]:
    d = p.to_dict()
    return {"snapshot": p.snapshot, "sequence": p.sequence, "point_time": d["point_time"],
            "lag_seconds": p.lag_seconds, "consistent": p.consistent,
            "verdict": p.verdict.summary(), "orders": _int(totals["orders"]),
            "last_order": totals["last_order"], "last_order_at": totals["last_at"],
            "last_movement": moves["last_movement"]}


def compare_snapshots(before: ShopDatabases | tuple[Engine, Engine],
                      after: ShopDatabases | tuple[Engine, Engine]) -> Comparison:
    """What changed from the image ``before`` to the image ``after``.

    ``summary`` (JSON-able): ``new_orders`` (ids above ``before``'s last), ``lost_orders``
    (``before``'s orders above ``after``'s last), ``orders_delta``, ``units_delta`` and
    ``revenue_delta`` / ``revenue_delta_cents`` (sold, ``after`` minus ``before``),
    ``stock_movements`` (``new`` movements with their ``units_out``, ``units_in``,
    ``restocks``; ``delta``, the change in their number), ``on_hand_delta``, the time
    span of the new orders, and each side's consistency point and verdict.
    ``by_channel`` and ``by_product`` give the same per channel and per product; both
    carry ``after``'s provenance and ``before``'s in ``attrs["baseline"]``.
    """
    a, b = _as_dbs(before, "before"), _as_dbs(after, "after")
    for dbs in (a, b):
        dbs._guard("compare_snapshots")
    ta, tb = _one(a, "sales", q_order_totals()), _one(b, "sales", q_order_totals())
    ma, mb = _one(a, "stock", q_movement_totals()), _one(b, "stock", q_movement_totals())
    new = _one(b, "sales", q_order_totals(_int(ta["last_order"])))
    lost = _one(a, "sales", q_order_totals(_int(tb["last_order"])))
    new_moves = _one(b, "stock", q_movement_totals(_int(ma["last_movement"])))
    fcols = ["product_id", "units_moved", "orders_moved", "units_restocked", "restocks"]
    new_flows = _frame(fcols, _rows(b, "stock", q_stock_flows().where(
        stock_movements.c.movement_id > _int(ma["last_movement"]))), ints=tuple(fcols))

    # per channel
    ccols = ["channel", "orders", "units", "revenue_cents"]
    ca = _frame(ccols, _rows(a, "sales", q_revenue("channel")), ints=tuple(ccols[1:]),
                strs=("channel",))
    cb = _frame(ccols, _rows(b, "sales", q_revenue("channel")), ints=tuple(ccols[1:]),
                strs=("channel",))
    ch = ca.merge(cb, on="channel", how="outer", suffixes=("_before", "_after"), sort=True)
    for c in ("orders", "units", "revenue_cents"):
        ch[[f"{c}_before", f"{c}_after"]] = ch[[f"{c}_before", f"{c}_after"]].fillna(0)
        ch[f"{c}_delta"] = (ch[f"{c}_after"] - ch[f"{c}_before"]).astype("int64")
    ch["revenue_delta"] = ch["revenue_cents_delta"] / 100.0
    by_channel = ch[["channel", "orders_before", "orders_after", "orders_delta",
                     "units_delta", "revenue_cents_delta", "revenue_delta"]].astype(
        {"orders_before": "int64", "orders_after": "int64"}).rename(
        columns={"revenue_cents_delta": "revenue_delta_cents"})

    # per product
    def side(dbs: ShopDatabases) -> pd.DataFrame:
        scols = ["product_id", "units_sold", "orders", "revenue_cents"]
        sold = _frame(scols, _rows(dbs, "sales", q_units_sold()), ints=tuple(scols))
        flows = _frame(fcols, _rows(dbs, "stock", q_stock_flows()), ints=tuple(fcols))
        return _merge_products(_stock_frame(dbs)[["product_id", "name", "category", "on_hand"]],
                               sold[["product_id", "units_sold", "revenue_cents"]].merge(
                                   flows[["product_id", "units_moved", "units_restocked"]],
                                   on="product_id", how="outer"),
                               ints=("on_hand", "units_sold", "revenue_cents", "units_moved",
                                     "units_restocked"))
    pa, pb = side(a), side(b)
    pr = pa.merge(pb.drop(columns=["name", "category"]), on="product_id", how="outer",
                  suffixes=("_before", "_after"), sort=True)
    pr = pr.fillna({c: 0 for c in pr.columns if c.endswith(("_before", "_after"))})
    names = pb.set_index("product_id")[["name", "category"]]
    pr["name"] = pr["name"].where(pr["name"].notna(), pr["product_id"].map(names["name"]))
    pr["category"] = pr["category"].where(pr["category"].notna(),
                                          pr["product_id"].map(names["category"]))
    out = pr[["product_id", "name", "category"]].copy()
    out["units_delta"] = (pr["units_sold_after"] - pr["units_sold_before"]).astype("int64")
    out["revenue_delta_cents"] = (pr["revenue_cents_after"]
                                  - pr["revenue_cents_before"]).astype("int64")
    out["revenue_delta"] = out["revenue_delta_cents"] / 100.0
    out["on_hand_before"] = pr["on_hand_before"].astype("int64")
    out["on_hand_after"] = pr["on_hand_after"].astype("int64")
    out["on_hand_delta"] = out["on_hand_after"] - out["on_hand_before"]
    out["moved_delta"] = (pr["units_moved_after"] - pr["units_moved_before"]).astype("int64")
    out["restocked_delta"] = (pr["units_restocked_after"]
                              - pr["units_restocked_before"]).astype("int64")
    by_product = out.reset_index(drop=True)

    revenue_delta_cents = _int(tb["revenue_cents"]) - _int(ta["revenue_cents"])
    summary = {
        "before": _point(a.provenance, ta, ma),
        "after": _point(b.provenance, tb, mb),
        "new_orders": _int(new["orders"]),
        "lost_orders": _int(lost["orders"]),
        "orders_delta": _int(tb["orders"]) - _int(ta["orders"]),
        "units_delta": _int(tb["units"]) - _int(ta["units"]),
        "revenue_delta": revenue_delta_cents / 100.0,
        "revenue_delta_cents": revenue_delta_cents,
        "new_orders_revenue_cents": _int(new["revenue_cents"]),
        "first_new_order_at": new["first_at"], "last_new_order_at": new["last_at"],
        "stock_movements": {
            "new": _int(new_moves["movements"]),
            "delta": _int(mb["movements"]) - _int(ma["movements"]),
            "units_out": int(new_flows["units_moved"].sum()),
            "units_in": int(new_flows["units_restocked"].sum()),
            "restocks": int(new_flows["restocks"].sum()),
        },
        "on_hand_delta": int(by_product["on_hand_delta"].sum()),
        "consistent": a.provenance.consistent and b.provenance.consistent,
    }
    stamp = f"change from {_label(a.provenance)} to {_label(b.provenance)}"
    frames = []
    for df, name in ((by_channel, "compare_snapshots_by_channel"),
                     (by_product, "compare_snapshots_by_product")):
        if not a.provenance.consistent:
            warnings.warn(f"{name}: the earlier image: {a.provenance.stamp()}",
                          InconsistentCopyWarning, stacklevel=2)
        df = b.result(df, name)
        df.attrs["baseline"] = a.provenance
        df.attrs["stamp"] = (f"{stamp} | before: {a.provenance.stamp()} | after: "
                             f"{b.provenance.stamp()}")
        df.attrs["consistent"] = summary["consistent"]
        frames.append(df)
    return Comparison(a.provenance, b.provenance, summary, frames[0], frames[1])


__all__ = ["Comparison", "compare_snapshots", "q_order_totals", "q_movement_totals"]
