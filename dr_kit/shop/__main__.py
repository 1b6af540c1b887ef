"""The shop workload as its own process, against an array's data path.

    python -m dr_kit.shop --socket ARRAY_DATA_SOCKET --stock-volume V --sales-volume V
                          [--rate TX_PER_S] [--status FILE] [--seed N]

Used where the application must be a separate process (crash drills: the application
and the main array are killed together).  It seeds the databases when they are new and
writes its progress (committed transactions, last order) to the status file every 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from dr_kit.errors import DrKitError
from dr_kit.fsutil import write_json
from dr_kit.shop.workload import Shop, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import RemoteVolume


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.shop")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--stock-volume", default="stock-db")
    ap.add_argument("--sales-volume", default="sales-db")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--status")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        vfs = sqlite_vfs.register("shop-proc", lambda name: RemoteVolume(a.socket, name))
        stock, sales = open_shop(vfs, stock_volume=a.stock_volume, sales_volume=a.sales_volume)
        seed(stock, sales)
        shop = Shop(stock, sales, seed_value=a.seed, keep_latencies=0)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = {"committed": 0, "last_order": shop.next_order - 1, "last_commit": None}
    stop = threading.Event()

    def on_commit(order: int, _ms: float) -> None:
        state["committed"] += 1
        state["last_order"] = order
        state["last_commit"] = time.time()

    def report() -> None:
        while not stop.is_set():
            if a.status:
                write_json(a.status, {**state, "pid": os.getpid()})
            stop.wait(0.1)

    threading.Thread(target=report, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: shop.request_stop())
    shop.run(a.rate, on_commit=on_commit)
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
