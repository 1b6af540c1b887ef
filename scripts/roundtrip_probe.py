"""Probe the data path's round trips: plain volumes against journaled ones, by think time.

    .venv/bin/python scripts/roundtrip_probe.py [--rounds 40] [--think 0,50,100]
        [--placement sites|shared] [--json]

What it shows: the shop's commit sends, per database, a WRITE (its WAL frames) and then a
SYNC, which the array answers without doing anything.  On a virtual machine whose idle
CPUs halt at once (no guest halt polling), a request that reaches a halted CPU waits for
it to wake up; how long each side has been idle decides that, so a few microseconds more
of work on one request can cost tens more on the next.  This probe measures it without
SQLite: a main and a backup array and a link emulator (as ``dr-kit bench`` starts them),
two plain volumes and two volumes of an asynchronous group whose transfer stays paused
(journal only); for each think time (a busy wait before each WRITE, standing in for the
shop's own CPU work) it alternates blocks on the two kinds and prints the median client
round trip of the WRITE (4,120 bytes, one WAL frame) and of the SYNC after it.

``--placement`` is the bench's (:func:`dr_kit.bench.site_cpus`): ``shared`` shows the
halted-CPU effect, ``sites`` (the default, as the bench) the round trips without it.

Nothing is tuned: the figures are whatever this machine does.  The arrays are stopped
and their folder removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dr_kit.bench import Bench
from dr_kit.storage.client import create_pair
from dr_kit.storage.server import SYNC

FRAME = 4096 + 24  # one WAL frame: its header and a page


def _spin(us: int) -> None:
    end = time.perf_counter_ns() + us * 1000
    while time.perf_counter_ns() < end:
        pass


def probe(rounds: int, thinks: list[int], placement: str = "sites") -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="dr-kit-rtprobe-"))
    bench = Bench(root, quick=True, progress=lambda s: None, placement=placement)
    try:
        for name in ("plain-1", "plain-2", "journal-1", "journal-2"):
            bench.mc.create_volume(name, 32 << 20)
        create_pair(bench.mc, bench.bc, "probe", ["journal-1", "journal-2"], bench.link.address,
                    mode="async", journal_capacity=256 << 20)
        bench._wait_pair("probe")
        bench.mc.group_action("probe", "pause-transfer")
        vols = {n: bench.mc.open_volume(n) for n in ("plain-1", "plain-2", "journal-1", "journal-2")}
        data = os.urandom(FRAME)
        out = []
        for think in thinks:
            rt: dict[str, dict[str, list[int]]] = {k: {"write": [], "sync": []} for k in ("plain", "journal")}
            for _ in range(rounds):
                for kind in ("plain", "journal"):
                    for i in range(50):
                        for n in ("1", "2"):  # the shop's two databases, one after the other
                            v = vols[f"{kind}-{n}"]
                            _spin(think)
                            t0 = time.perf_counter_ns()
                            v.write((1 << 20) + (i % 1000) * FRAME, data)
                            t1 = time.perf_counter_ns()
                            v._call(SYNC, 0, 0)
                            t2 = time.perf_counter_ns()
                            rt[kind]["write"].append(t1 - t0)
                            rt[kind]["sync"].append(t2 - t1)
            row: dict[str, Any] = {"think_us": think}
            for kind, d in rt.items():
                for op, values in d.items():
                    row[f"{kind}_{op}_us"] = round(statistics.median(values) / 1000, 1)
            out.append(row)
        for v in vols.values():
            v.close()
        return out
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="blocks of 50 request pairs per kind (default 40)")
    ap.add_argument("--think", default="0,50,100", help="think times before each WRITE, in us (default 0,50,100)")
    ap.add_argument("--placement", choices=("sites", "shared"), default="sites",
                    help="as dr-kit bench: each site on its own CPU (default), or the scheduler's")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    try:
        thinks = [int(x) for x in args.think.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--think takes whole microseconds separated by commas, got {args.think!r}")
    if args.rounds < 1 or not thinks or min(thinks) < 0:
        ap.error("--rounds must be at least 1 and --think non-negative microseconds")
    rows = probe(args.rounds, thinks, args.placement)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"median client round trip (us), placement {args.placement}: WRITE of one WAL frame, "
          "then the SYNC after it")
    print(f"{'think':>7} {'plain WRITE':>12} {'journal WRITE':>14} {'plain SYNC':>11} {'journal SYNC':>13}")
    for r in rows:
        print(f"{r['think_us']:>5}us {r['plain_write_us']:>12} {r['journal_write_us']:>14} "
              f"{r['plain_sync_us']:>11} {r['journal_sync_us']:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
