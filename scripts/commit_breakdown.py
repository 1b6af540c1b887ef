"""Where a shop transaction's time goes: replication off, journal only and asynchronous copy.

    .venv/bin/python scripts/commit_breakdown.py [--rounds 16] [--placement sites|shared] [--json]

What it shows: the bench's commit latency (``dr-kit bench``, first section) as one median
per mode, split into the client round trip of each kind of data path request the shop's
SQLite sends (WRITE: WAL frames, SYNC, READ, WRITEV: several extents, such as a checkpoint)
and the shop's own time (the transaction's time less its round trips: SQLite and Python in
the shop's process).  The three modes run as the bench runs them: three shops on their own
volumes of one main array, the journal-only one on an asynchronous group whose transfer
stays paused, the async one streaming to a backup array through a link emulator with no
delay, blocks of 50 transactions interleaved, after 400 unrecorded transactions per shop
(the WAL has been checkpointed by then, so every block sees the same file state).

Each round trip is timed around the client's request call, in the shop's process.  The
figures are medians over every transaction of the run (800 per mode with the default 16
rounds), so the per-request differences between modes are steady to about a microsecond
from run to run, far steadier than the bench's ratio.  Nothing is tuned: the figures are
whatever this machine does.  The arrays are stopped and their folder removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

from dr_kit.bench import Bench
from dr_kit.errors import DrKitError
from dr_kit.shop.workload import Shop
from dr_kit.storage import client as storage_client
from dr_kit.storage.server import READ, SYNC, WRITE, WRITEV

MODES = ("off", "journal", "async")
OPS = {WRITE: "write", SYNC: "sync", READ: "read", WRITEV: "writev"}
BLOCK = 50
WARM = 400


def breakdown(rounds: int, placement: str = "sites") -> dict[str, dict[str, Any]]:
    calls: list[tuple[int, int]] = []
    original = storage_client.RemoteVolume._call
    clock = time.perf_counter_ns

    def timed(self: Any, op: int, offset: int, length: int, payload: bytes = b"") -> bytes:
        t0 = clock()
        try:
            return original(self, op, offset, length, payload)
        finally:
            calls.append((op, clock() - t0))

    root = Path(tempfile.mkdtemp(prefix="dr-kit-breakdown-"))
    bench = Bench(root, quick=True, progress=lambda s: None, placement=placement)
    conns: list[Any] = []
    storage_client.RemoteVolume._call = timed  # type: ignore[method-assign]
    try:
        shops: dict[str, Shop] = {}
        for mode in MODES:  # as the bench makes them
            shops[mode] = bench.commit_shop(mode)
            conns += [shops[mode].stock, shops[mode].sales]
        for shop in shops.values():
            shop.run(0, count=WARM)
        tx: dict[str, list[float]] = {m: [] for m in MODES}
        own: dict[str, list[float]] = {m: [] for m in MODES}
        per_op: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        for _ in range(rounds):
            for mode, shop in shops.items():
                for _ in range(BLOCK):  # one transaction at a time: its own round trips
                    calls.clear()
                    shop.stats.latencies_ms.clear()
                    shop.run(0, count=1)
                    t_us = shop.stats.latencies_ms[0] * 1000
                    tx[mode].append(t_us)
                    own[mode].append(t_us - sum(ns for _, ns in calls) / 1000)
                    for op, ns in calls:
                        per_op[mode].setdefault(OPS.get(op, str(op)), []).append(ns / 1000)
        med = statistics.median
        out: dict[str, dict[str, Any]] = {}
        n = rounds * BLOCK
        for mode in MODES:
            row: dict[str, Any] = {"tx_p50_us": round(med(tx[mode]), 1), "own_p50_us": round(med(own[mode]), 1)}
            for op, values in sorted(per_op[mode].items()):
                row[f"{op}_p50_us"] = round(med(values), 1)
                row[f"{op}_per_tx"] = round(len(values) / n, 2)
            out[mode] = row
        return out
    finally:
        storage_client.RemoteVolume._call = original  # type: ignore[method-assign]
        try:
            for c in conns:
                with contextlib.suppress(apsw.Error):  # a broken data path: closing is best effort
                    c.close()
        finally:
            bench.close()
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=16,
                    help=f"blocks of {BLOCK} transactions per mode (default 16)")
    ap.add_argument("--placement", choices=("sites", "shared"), default="sites",
                    help="as dr-kit bench: each site on its own CPU (default), or the scheduler's")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    try:
        rows = breakdown(args.rounds, args.placement)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows))
        return 0
    ops = [op for op in OPS.values() if f"{op}_p50_us" in rows["off"]]
    print(f"median per shop transaction (us), placement {args.placement}, "
          f"{args.rounds * BLOCK} transactions per mode; requests per transaction in brackets")
    print(f"{'mode':<8} {'tx':>7} {'/ off':>6} {'own':>6} " + " ".join(f"{op:>13}" for op in ops))
    base = rows["off"]["tx_p50_us"]
    for mode, r in rows.items():
        cells = " ".join(f"{r.get(f'{op}_p50_us', 0):>6} [{r.get(f'{op}_per_tx', 0):4.2f}]" for op in ops)
        print(f"{mode:<8} {r['tx_p50_us']:>7} {r['tx_p50_us'] / base:>6.3f} {r['own_p50_us']:>6} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
