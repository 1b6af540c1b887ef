"""How long the shop's history takes to load, measured on array volumes.

Starts a temporary array, creates the two volumes, seeds the catalog and the history
(:func:`dr_kit.shop.history.seed_history`) through the VFS and judges the images::

    python -m dr_kit.shop.history_bench [--orders 100000] [--days 180] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

from dr_kit.errors import DrKitError
from dr_kit.shop.history import DEFAULT_DAYS, DEFAULT_ORDERS, DEFAULT_SEED, seed_history
from dr_kit.shop.workload import judge_images, open_shop
from dr_kit.shop.workload import seed as seed_catalog
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import start_array


def bench(*, orders: int = DEFAULT_ORDERS, days: int = DEFAULT_DAYS, seed: int = DEFAULT_SEED,
          volume_mib: int = 64, now: datetime | float | None = None) -> dict[str, Any]:
    """Start an array, seed the shop with history on two volumes through the VFS, judge it."""
    with tempfile.TemporaryDirectory(prefix="dr-kit-history-") as tmp:
        h = start_array(tmp, "bench")
        try:
            client = h.client
            for v in ("stock-db", "sales-db"):
                client.create_volume(v, volume_mib << 20)
            vfs = sqlite_vfs.register("history-bench", client.open_volume)
            stock, sales = open_shop(vfs)
            try:
                seed_catalog(stock, sales)
                t0 = time.perf_counter()
                summary = seed_history(stock, sales, days, seed=seed, now=now, orders=orders)
                total = time.perf_counter() - t0
                t1 = time.perf_counter()
                verdict = judge_images(stock, sales)
                judge_s = time.perf_counter() - t1
                counts = {
                    "stock_movements": next(stock.execute(
                        "SELECT COUNT(*) FROM stock_movements"))[0],
                    "orders": next(sales.execute("SELECT COUNT(*) FROM orders"))[0],
                    "order_lines": next(sales.execute("SELECT COUNT(*) FROM order_lines"))[0],
                }
                sizes = {"stock_bytes": next(stock.execute(
                    "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size"))[0],
                    "sales_bytes": next(sales.execute(
                        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size"))[0]}
            finally:
                stock.close()
                sales.close()
                vfs.forget("stock-db")
                vfs.forget("sales-db")
        finally:
            h.stop()
    return {"seed_history_seconds": round(total, 3),
            "generate_seconds": round(summary.generate_seconds, 3),
            "load_seconds": round(summary.load_seconds, 3),
            "judge_seconds": round(judge_s, 3), "rows": counts, **sizes,
            "verdict": verdict.summary(), "consistent": verdict.consistent,
            "summary": summary.to_dict()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.shop.history_bench",
                                 description="Generate the shop's history, load it into two "
                                 "databases on a temporary array's volumes and print the times.")
    ap.add_argument("--orders", type=int, default=DEFAULT_ORDERS)
    ap.add_argument("--days", type=int, default=DEFAULT_DAYS)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    a = ap.parse_args(argv)
    try:
        print(json.dumps(bench(orders=a.orders, days=a.days, seed=a.seed), indent=2))
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
