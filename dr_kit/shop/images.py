"""Judging a snapshot of the shop's volumes on an array, the way an analyst's database
would see it: restore both volumes to writable clones, open them with SQLite (which runs
its crash recovery on the clones), judge them, and remove the clones again."""

from __future__ import annotations

from dataclasses import dataclass

from dr_kit.shop.consistency import Verdict
from dr_kit.shop.workload import SALES_DB, STOCK_DB, judge_images
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import ArrayClient


@dataclass
class Judged:
    verdict: Verdict
    last_order: int | None
    last_order_time: str | None


def judge_snapshot(client: ArrayClient, vfs: sqlite_vfs.ArrayVFS, snapshot: str, *,
                   stock_volume: str = "stock-db", sales_volume: str = "sales-db",
                   tag: str = "judge") -> Judged:
    """The consistency verdict on the shop image held by ``snapshot`` on this array."""
    clones = {"stock": f"{snapshot}-{tag}-stock", "sales": f"{snapshot}-{tag}-sales"}
    client.create_clone(clones["stock"], snapshot, stock_volume)
    try:
        client.create_clone(clones["sales"], snapshot, sales_volume)
        stock = sqlite_vfs.connect(vfs, clones["stock"], STOCK_DB, create=False)
        sales = sqlite_vfs.connect(vfs, clones["sales"], SALES_DB, create=False)
        try:
            verdict = judge_images(stock, sales)
            last, when = next(sales.execute("SELECT MAX(order_id), MAX(ordered_at) FROM orders"))
        finally:
            stock.close()
            sales.close()
    finally:
        for c in clones.values():
            vfs.forget(c)
            try:
                client.delete_volume(c)
            except Exception:  # noqa: BLE001 - a clone that was never made
                pass
    return Judged(verdict, last, when)
