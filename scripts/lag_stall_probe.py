"""Probe the time lag of new asynchronous groups for stalls: many short runs, worst figures.

    .venv/bin/python scripts/lag_stall_probe.py [--groups 12] [--seconds 3] [--rate 1000]

For each of ``--groups`` new groups (one 64 MiB volume, a 256 MiB journal, created one
after the other on the same main and backup arrays and link emulator, as ``dr-kit bench``
starts them), it writes 4 KiB at ``--rate`` writes/s for ``--seconds`` and samples the
group's time lag every 10 ms. It prints, per group, the worst lag, its p99 and how many
samples were above 20 ms, then the worst over all groups.

What it is for: a lag p99 of a few milliseconds hides rare stalls of hundreds, and one
run of the bench shows at most one. Stalls came from file-system work on the replication
loops (a file made, allocated or renamed waits for the file system's own journal while
other files are written out); this probe makes them countable. Nothing is tuned: the
figures are whatever this machine does. The arrays are stopped and their folder removed
at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from dr_kit.bench import Bench
from dr_kit.storage.client import create_pair

SAMPLE_S = 0.01
STALL_MS = 20.0


def _p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=12, help="new groups, one after the other")
    ap.add_argument("--seconds", type=float, default=3.0, help="writing time per group")
    ap.add_argument("--rate", type=int, default=1000, help="writes per second")
    a = ap.parse_args(argv)
    if not (1 <= a.groups <= 200 and 0.5 <= a.seconds <= 60 and 1 <= a.rate <= 5000):
        print("lag_stall_probe: --groups 1..200, --seconds 0.5..60, --rate 1..5000", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="lag-stall-probe-"))
    bench = Bench(root, quick=True, progress=lambda s: None, placement="sites")
    worst_all: list[float] = []
    try:
        for it in range(a.groups):
            name = f"probe{it}"
            bench.mc.create_volume(name, 64 << 20)
            create_pair(bench.mc, bench.bc, name, [name], bench.link.address,
                        journal_capacity=256 << 20)
            bench._wait_pair(name)
            vol = bench.mc.open_volume(name)
            data = os.urandom(4096)
            stop = threading.Event()
            lags: list[float] = []

            def sampler(name: str = name, lags: list[float] = lags,
                        stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    r = bench.mc.lag(name)
                    if r.time_lag_s is not None:
                        lags.append(r.time_lag_s * 1000.0)
                    stop.wait(SAMPLE_S)

            th = threading.Thread(target=sampler, daemon=True)
            t0 = time.monotonic()
            th.start()
            n = 0
            while time.monotonic() - t0 < a.seconds:
                vol.write((n % 4000) * 4096, data)
                n += 1
                d = t0 + n / a.rate - time.monotonic()
                if d > 0:
                    time.sleep(d)
            stop.set()
            th.join()
            vol.close()
            if not lags:
                print(f"group {it}: no lag sample", flush=True)
                continue
            worst_all.append(max(lags))
            print(f"group {it:>3}: {n} writes, lag worst {max(lags):7.1f} ms, p99 {_p99(lags):6.1f} ms, "
                  f"samples above {STALL_MS:.0f} ms: {sum(v > STALL_MS for v in lags)}", flush=True)
        if worst_all:
            stalled = sum(v > STALL_MS for v in worst_all)
            print(f"worst over {len(worst_all)} groups: {max(worst_all):.1f} ms; groups with a lag "
                  f"above {STALL_MS:.0f} ms: {stalled}")
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
