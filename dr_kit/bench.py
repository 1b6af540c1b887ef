"""Benchmarks of the brief's targets, measured side by side in one run (``dr-kit bench``).

Everything runs in one process tree on this machine: a main and a backup array process,
a link emulator process between them, and the shop (SQLite through the array VFS) in this
process.  Modes are interleaved in short blocks so that ratios compare like with like on
a shared, noisy machine.  The figures are whatever this machine does; nothing is tuned
per run.

- commit latency of the shop, replication off / asynchronous / synchronous, at link
  delays 0, 5 and 20 ms (one way, so the round trip is twice that), and on an asynchronous
  group whose transfer stays paused ("journal only"), which splits the asynchronous
  overhead into the commit path's journal entries and the streaming beside it;
- journal lag (time, entries, bytes) at 100 and 1,000 writes/s, and backup apply
  throughput against the write rate;
- snapshot group creation for 1 MiB and 1 GiB volumes, and clone open time;
- initial copy throughput of a 1 GiB volume (``--quick``: 256 MiB), with progress;
- peak RSS of the array processes during the large runs;
- CPU time of the array processes per shop transaction, by component (:meth:`Bench.cpu`);
- where the processes run (``placement``): by default each site gets a CPU of its own,
  the shop and the main array on one, the link emulator and the backup array on the
  other (``sites``); ``shared`` leaves them to the scheduler (see :func:`site_cpus`);
- the PostgreSQL anchor (:mod:`dr_kit.bench_postgres`, when its server binaries are
  installed): a primary without standby and a primary with an asynchronous streaming
  standby run the same shop transactions in blocks interleaved with ours, through a link
  emulator set to the same delay, and its replay lag is measured as ours is.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from dr_kit import bench_postgres
from dr_kit.bench_postgres import SETTINGS, AnchorUnavailable, PgShop, PostgresAnchor
from dr_kit.errors import DrKitError, InvalidInput
from dr_kit.shop.workload import Shop, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import ArrayClient, ArrayHandle, create_pair, start_array
from dr_kit.storage.link import TOKEN_ENV as LINK_TOKEN_ENV
from dr_kit.storage.position import JournalPosition

Progress = Callable[[str], None]
# commit latency: transactions per block, long against the asynchronous sender's gathering
# window (at most 10 ms) so that an async block pays for the transfers of its own writes;
# the order of the modes is fixed, so the tail of an async block's transfer falls into the
# sync block that follows it, never into an off or journal-only block
COMMIT_BLOCK = 50
# the interleaved modes: "journal" is an asynchronous group whose transfer stays paused (its
# entries are written on the commit path, nothing is streamed): async/off = journal/off
# (the commit path's own cost) x async/journal (what streaming beside it adds)
COMMIT_MODES = ("off", "journal", "async", "sync")
PLACEMENTS = ("sites", "shared")


def site_cpus(placement: str) -> tuple[int, int] | None:
    """The CPU of the main site and the CPU of the backup site for ``placement``.

    ``sites``: two CPUs this process may run on, the first for the shop and the main
    array (host and array take turns on a request, as over a SAN), the second for the
    link emulator and the backup array, so the backup site's work takes no CPU time
    from the main site's.  Left to the scheduler instead, a request and its answer
    cross between CPUs, and where idle CPUs halt at once (virtual machines without
    guest halt polling) each crossing waits for a CPU to wake, which costs more the
    longer it idled: the overhead of a few microseconds of journal work comes out
    several times larger, and varies from run to run.  ``shared`` (or fewer than two
    CPUs): None, the scheduler places everything."""
    if placement not in PLACEMENTS:
        raise InvalidInput(f"unknown placement {placement!r}; use sites or shared")
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "shared" or len(cpus) < 2:
        return None
    return cpus[0], cpus[1]


def pin(pid: int, cpu: int, *, children: bool = True) -> None:
    """Every thread of process ``pid`` (and of its descendants) on ``cpu``; threads and
    processes they start later inherit it.  A process that ended meanwhile is skipped."""
    try:
        top = psutil.Process(pid)
        procs = [top, *(top.children(recursive=True) if children else ())]
    except psutil.Error:
        return
    for _ in range(2):  # a thread started by one not yet pinned is caught the second time
        for p in procs:
            try:
                threads = p.threads()
            except psutil.Error:
                continue
            for t in threads:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(t.id, {cpu})



def _head(client: ArrayClient, group: str) -> JournalPosition:
    """The main site's journal position of ``group`` (a main array knows its own)."""
    pos = client.lag(group).main
    if pos is None:
        raise DrKitError(f"the array reports no journal position for group {group}")
    return pos


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def ratio_intervals(phases: dict[str, tuple[list[list[float]], list[list[float]]]], *, q: float = 50,
                    resamples: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% intervals of the ratio of two modes' ``q``-th percentiles, per phase and for
    their largest (key ``"max"``), by a paired bootstrap over the rounds of interleaved
    blocks: ``phases`` maps a phase to (numerator blocks, denominator blocks), block ``i``
    of both measured in the same round.  A resample draws rounds with replacement and keeps
    each round's two blocks together, so what moved both modes in a round (the machine's
    other work) moves both sides of the ratio.  Deterministic for given data and ``seed``."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {name: [] for name in phases}
    draws["max"] = []
    for _ in range(resamples):
        worst = 0.0
        for name, (num, den) in phases.items():
            n = min(len(num), len(den))
            pick = [rng.randrange(n) for _ in range(n)]
            a = pct([x for i in pick for x in num[i]], q)
            b = pct([x for i in pick for x in den[i]], q)
            r = a / b if a is not None and b else float("nan")
            draws[name].append(r)
            worst = max(worst, r)
        draws["max"].append(worst)
    out: dict[str, tuple[float, float]] = {}
    for name, values in draws.items():
        values.sort()
        out[name] = (values[int(0.025 * (len(values) - 1))], values[int(round(0.975 * (len(values) - 1)))])
    return out


class _Link:
    """The link emulator as its own process (so it takes no CPU time from the shop)."""

    def __init__(self, root: Path, target: str, name: str = "link") -> None:
        ready = root / f"{name}.ready"
        self.token = secrets.token_urlsafe(32)
        self.proc = subprocess.Popen([sys.executable, "-m", "dr_kit.storage.link", "--target", target,
                                      "--ready-file", str(ready)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, LINK_TOKEN_ENV: self.token})
        deadline = time.monotonic() + 20
        while not ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise DrKitError("the bench's link emulator did not start within 20 s; run the bench again")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.address, self.control = info["listen"], info["control_url"]

    def set(self, **body: Any) -> None:
        import urllib.request
        req = urllib.request.Request(self.control + "/link", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.token}"})
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _cpu_clock(pid: int) -> Callable[[], float]:
    """CPU seconds (user + system, all threads, also those that ended) of process ``pid``:
    its POSIX CPU-time clock (nanoseconds) where the C library has one, else the kernel's
    tick counts (10 ms steps) through psutil."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        clockid = ctypes.c_int()
        if libc.clock_getcpuclockid(pid, ctypes.byref(clockid)) == 0:
            time.clock_gettime(clockid.value)
            return lambda: time.clock_gettime(clockid.value)
    except (OSError, AttributeError):
        pass
    proc = psutil.Process(pid)

    def ticks() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    return ticks


class _Rss:
    """Samples the peak RSS of processes in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, max(p.memory_info().rss for p in self.procs))
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def __enter__(self) -> _Rss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


class Bench:
    def __init__(self, root: Path, *, quick: bool, progress: Progress,
                 placement: str = "sites") -> None:
        self.root, self.quick, self.say = root, quick, progress
        self.cpus = site_cpus(placement)
        self.allowed = os.sched_getaffinity(0)  # this process's CPUs, given back at close
        self.main: ArrayHandle = start_array(root / "main", "main")
        self.backup: ArrayHandle = start_array(root / "backup", "backup")
        self.link = _Link(root, self.backup.replication)
        if self.cpus:
            main_cpu, backup_cpu = self.cpus
            pin(os.getpid(), main_cpu, children=False)  # the shop runs in this process
            pin(self.main.pid, main_cpu)
            pin(self.backup.pid, backup_cpu)
            pin(self.link.proc.pid, backup_cpu)
        self.mc: ArrayClient = self.main.client
        self.bc: ArrayClient = self.backup.client
        self.vfs = sqlite_vfs.register(f"bench-{os.getpid()}", self.mc.open_volume)
        self.pg: PostgresAnchor | None = None
        self.pg_link: _Link | None = None
        self.pg_note: str | None = None
        self.pg_result: dict[str, Any] = {}
        self.ratio_ci: dict[str, tuple[float, float]] = {}
        self.pg_ratio_ci: dict[str, tuple[float, float]] = {}

    def start_anchor(self) -> None:
        """Start the PostgreSQL anchor; when it cannot run, keep a one-line note instead."""
        def via_link(target: str) -> str:
            self.pg_link = _Link(self.root, target, name="pg-link")
            return self.pg_link.address

        try:
            self.pg = PostgresAnchor.create()  # known to kill() from here on
            self.pg.launch(via_link, progress=self.say)
            if self.cpus:  # placed as ours: primaries with the shop, standby with its link
                for srv, cpu in ((self.pg.off, self.cpus[0]), (self.pg.primary, self.cpus[0]),
                                 (self.pg.standby, self.cpus[1])):
                    if srv.pid:
                        pin(srv.pid, cpu)
                assert self.pg_link is not None
                pin(self.pg_link.proc.pid, self.cpus[1])
            self.say(f"  PostgreSQL {self.pg.version}: standby streaming through its own link emulator")
        except AnchorUnavailable as e:
            self.pg_note = str(e)
            self.say(f"note: PostgreSQL anchor not run: {e}")
            if self.pg:
                self.pg.close()
                self.pg = None
            if self.pg_link:
                self.pg_link.stop()
                self.pg_link = None

    def set_delay(self, delay_ms: float) -> None:
        self.link.set(delay_ms=delay_ms)
        if self.pg_link:
            self.pg_link.set(delay_ms=delay_ms)

    def kill(self) -> None:
        """On an interrupt: stop every process this bench started, touching no connection
        or lock that the interrupted code may hold."""
        if self.pg:
            self.pg.kill()
        for link in (self.pg_link, self.link):
            if link:
                link.proc.kill()
        for h in (self.main, self.backup):
            h.kill()

    def close(self) -> None:
        if self.cpus:  # this process's threads may run anywhere again
            for t in psutil.Process().threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(t.id, self.allowed)
        try:
            if self.pg:
                self.pg.close()
            if self.pg_link:
                self.pg_link.stop()
        finally:
            self.link.stop()
            self.main.stop()
            self.backup.stop()

    def _wait_pair(self, group: str, timeout: float = 600.0, progress: bool = False) -> None:
        last = -1.0
        deadline = time.monotonic() + timeout
        while True:
            st = self.mc.group_status(group)
            if st["state"] == "pair" and st["lag"]["consistent"]:
                return
            if progress and st["copy"]["total"]:
                frac = st["copy"]["done"] / st["copy"]["total"]
                if frac - last >= 0.1:
                    self.say(f"    initial copy {group}: {frac:5.0%} of {st['copy']['total']} regions")
                    last = frac
            if st["state"] == "error":  # stays so until someone acts: waiting cannot help
                raise DrKitError(f"bench group {group} failed before reaching pair: {st['message']}")
            if time.monotonic() > deadline:
                raise DrKitError(f"bench group {group} did not reach pair in {timeout:.0f} s: "
                                 f"{st['state']} {st['message']}")
            time.sleep(0.05)

    # -- 1. commit latency ------------------------------------------------------------
    def commit_shop(self, mode: str) -> Shop:
        """The shop of one commit mode (``COMMIT_MODES``), seeded on volumes of its own:
        replication off, or a group whose transfer stays paused (journal only), streams
        (async) or waits for the backup (sync)."""
        vols = {"stock": f"{mode}-stock", "sales": f"{mode}-sales"}
        for v in vols.values():
            self.mc.create_volume(v, 32 << 20)
        stock, sales = open_shop(self.vfs, stock_volume=vols["stock"], sales_volume=vols["sales"])
        seed(stock, sales)
        if mode != "off":
            # the journal-only group holds every entry of the run (nothing is freed)
            extra = {"journal_capacity": 256 << 20} if mode == "journal" else {}
            create_pair(self.mc, self.bc, f"bench-{mode}", list(vols.values()), self.link.address,
                        mode="sync" if mode == "sync" else "async", **extra)
            self._wait_pair(f"bench-{mode}")
            if mode == "journal":
                self.mc.group_action("bench-journal", "pause-transfer")
        return Shop(stock, sales, seed_value=7, keep_latencies=10**6)

    def commit_latency(self, rounds: int | None = None) -> dict[str, Any]:
        pg = self.pg
        self.say("commit latency: replication off / journal only / async / sync" +
                 (", and PostgreSQL off / async," if pg else "") + " interleaved")
        shops: dict[str, Shop | PgShop] = {mode: self.commit_shop(mode) for mode in COMMIT_MODES}
        if pg:
            shops["pg_off"], shops["pg_async"] = pg.shops["off"], pg.shops["async"]
        out: dict[str, Any] = {}
        pg_out: dict[str, Any] = {}
        rounds = rounds or (8 if self.quick else 16)
        block = COMMIT_BLOCK
        for shop in shops.values():  # one unrecorded block each: caches and prepared statements
            shop.run(0, count=block)
        ours: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        theirs: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        for delay in (0, 5, 20):
            self.set_delay(delay)
            blocks: dict[str, list[list[float]]] = {m: [] for m in shops}
            t_mode: dict[str, float] = {m: 0.0 for m in shops}
            for _ in range(rounds):
                for mode, shop in shops.items():
                    n = block if mode != "sync" else 20 if delay < 5 else 5
                    shop.stats.latencies_ms.clear()
                    t0 = time.perf_counter()
                    shop.run(0, count=n)
                    t_mode[mode] += time.perf_counter() - t0
                    blocks[mode].append(list(shop.stats.latencies_ms))
            rows: dict[str, dict[str, Any]] = {
                mode: {"p10_ms": pct(values, 10), "p50_ms": pct(values, 50), "p99_ms": pct(values, 99),
                       "n": len(values), "tx_per_s": len(values) / t_mode[mode] if t_mode[mode] else None}
                for mode, values in ((m, [x for b in bs for x in b]) for m, bs in blocks.items())}
            row: dict[str, Any] = {m: rows[m] for m in COMMIT_MODES}
            row["async_over_off_p50"] = row["async"]["p50_ms"] / row["off"]["p50_ms"]
            row["journal_over_off_p50"] = row["journal"]["p50_ms"] / row["off"]["p50_ms"]
            row["async_over_journal_p50"] = row["async"]["p50_ms"] / row["journal"]["p50_ms"]
            # the fastest tenth of the transactions waited for nothing but their own work:
            # their difference is the commit path's journal entries; the rest of the p50's
            # difference is contention (CPU, interpreter lock) with the replication's work
            row["async_minus_off_p10_ms"] = row["async"]["p10_ms"] - row["off"]["p10_ms"]
            row["async_over_off_p99"] = row["async"]["p99_ms"] / row["off"]["p99_ms"]
            row["async_over_off_tps"] = row["async"]["tx_per_s"] / row["off"]["tx_per_s"]
            row["sync_over_off_p50"] = row["sync"]["p50_ms"] / row["off"]["p50_ms"]
            out[f"{delay}ms"] = row
            ours[f"{delay}ms"] = (blocks["async"], blocks["off"])
            if pg:
                theirs[f"{delay}ms"] = (blocks["pg_async"], blocks["pg_off"])
            line = (f"  delay {delay:>2} ms: p50 off {row['off']['p50_ms']:.2f} ms, journal only "
                    f"{row['journal']['p50_ms']:.2f} ms ({row['journal_over_off_p50']:.2f}x), async "
                    f"{row['async']['p50_ms']:.2f} ms ({row['async_over_off_p50']:.2f}x; p10 "
                    f"{row['async_minus_off_p10_ms'] * 1000:+.0f} us), sync "
                    f"{row['sync']['p50_ms']:.2f} ms ({row['sync_over_off_p50']:.1f}x)")
            if pg:
                prow: dict[str, Any] = {"off": rows["pg_off"], "async": rows["pg_async"]}
                prow["async_over_off_p50"] = prow["async"]["p50_ms"] / prow["off"]["p50_ms"]
                prow["async_over_off_p99"] = prow["async"]["p99_ms"] / prow["off"]["p99_ms"]
                prow["async_over_off_tps"] = prow["async"]["tx_per_s"] / prow["off"]["tx_per_s"]
                pg_out[f"{delay}ms"] = prow
                line += (f"; PostgreSQL off {prow['off']['p50_ms']:.2f} ms, async "
                         f"{prow['async']['p50_ms']:.2f} ms ({prow['async_over_off_p50']:.2f}x)")
            self.say(line)
        self.set_delay(0)
        # how far the ratios would move with other rounds of the same run (the machine's
        # noise between blocks): paired bootstrap intervals, ours and PostgreSQL's
        self.ratio_ci = ratio_intervals(ours)
        for d, (lo, hi) in self.ratio_ci.items():
            if d in out:
                out[d]["async_over_off_p50_ci95"] = [lo, hi]
        lo, hi = self.ratio_ci["max"]
        line = f"  async / off p50, worst delay: 95% interval {lo:.2f}-{hi:.2f}x"
        if theirs:
            self.pg_ratio_ci = ratio_intervals(theirs)
            for d, (plo, phi) in self.pg_ratio_ci.items():
                if d in pg_out:
                    pg_out[d]["async_over_off_p50_ci95"] = [plo, phi]
            plo, phi = self.pg_ratio_ci["max"]
            self.pg_result["async_over_off_p50_max_ci95"] = [plo, phi]
            line += f"; PostgreSQL's {plo:.2f}-{phi:.2f}x"
        self.say(line + " (rounds resampled)")
        for mode in COMMIT_MODES:
            shop = shops[mode]
            assert isinstance(shop, Shop)
            shop.stock.close()
            shop.sales.close()
        for mode in COMMIT_MODES[1:]:
            self.mc.delete_group(f"bench-{mode}")
            self.bc.delete_group(f"bench-{mode}", delete_volumes=True)
        if pg_out:
            self.pg_result["commit"] = pg_out
        return out

    # -- 2. lag -----------------------------------------------------------------------
    def lag(self) -> dict[str, Any]:
        self.say("journal lag at 100 and 1,000 writes/s (4 KiB writes, loopback link)")
        self.mc.create_volume("lag-vol", 64 << 20)
        # a journal that holds the whole apply backlog below, so the pair never suspends
        create_pair(self.mc, self.bc, "bench-lag", ["lag-vol"], self.link.address, journal_capacity=256 << 20)
        self._wait_pair("bench-lag")
        vol = self.mc.open_volume("lag-vol")
        data = os.urandom(4096)
        out: dict[str, Any] = {}
        seconds = 3.0 if self.quick else 6.0
        for rate in (100, 1000):
            stop = threading.Event()
            samples: list[tuple[float, int, int]] = []

            def sampler(stop: threading.Event = stop, samples: list = samples) -> None:
                while not stop.is_set():
                    r = self.mc.lag("bench-lag")
                    if r.time_lag_s is not None and r.sequence_lag is not None and r.byte_lag is not None:
                        samples.append((r.time_lag_s, r.sequence_lag, r.byte_lag))
                    stop.wait(0.01)

            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < seconds:
                vol.write((n % 4000) * 4096, data)
                n += 1
                delay = t0 + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            achieved = n / (time.monotonic() - t0)
            stop.set()
            th.join()
            tl = [s[0] * 1000 for s in samples]
            out[str(rate)] = {"writes_per_s": achieved, "samples": len(samples),
                              "time_lag_ms_p50": pct(tl, 50), "time_lag_ms_p99": pct(tl, 99),
                              "entries_p50": pct([s[1] for s in samples], 50),
                              "entries_p99": pct([s[1] for s in samples], 99),
                              "bytes_p50": pct([s[2] for s in samples], 50),
                              "bytes_p99": pct([s[2] for s in samples], 99)}
            self.say(f"  {rate:>5} writes/s (achieved {achieved:.0f}): time lag p50 "
                     f"{out[str(rate)]['time_lag_ms_p50']:.2f} ms, p99 {out[str(rate)]['time_lag_ms_p99']:.2f} ms")
        # apply throughput: hold the apply, build a backlog, release it and time the catch-up
        backlog = 5000 if self.quick else 20000
        self.bc.group_action("bench-lag", "pause-apply")
        t0 = time.monotonic()
        for i in range(backlog):
            vol.write((i % 4000) * 4096, data)
        write_rate = backlog / (time.monotonic() - t0)
        head = _head(self.mc, "bench-lag").sequence
        deadline = time.monotonic() + 120
        while self.bc.group_status("bench-lag")["received"] < head and time.monotonic() < deadline:
            time.sleep(0.01)
        t1 = time.monotonic()
        self.bc.group_action("bench-lag", "resume-apply")
        while True:
            applied = int(self.bc.group_status("bench-lag")["applied"].split("/")[1])
            if applied >= head or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        apply_rate = backlog / (time.monotonic() - t1)
        state = self.mc.group_status("bench-lag")["state"]
        if state != "pair":
            raise DrKitError(f"apply measurement invalid: the pair went to {state} during the backlog; "
                             "run the bench again")
        out["apply_writes_per_s"] = apply_rate
        out["backlog_write_rate"] = write_rate
        out["apply_over_write_rate"] = apply_rate / 1000.0
        self.say(f"  backup applies {apply_rate:,.0f} writes/s = {apply_rate / 1000:.1f}x the 1,000 writes/s load")
        vol.close()
        self.mc.delete_group("bench-lag")
        self.bc.delete_group("bench-lag", delete_volumes=True)
        if self.pg:
            self.postgres_lag(seconds)
        return out

    def postgres_lag(self, seconds: float, rate: int = 1000) -> None:
        """PostgreSQL's replay lag, defined as ours (see :mod:`dr_kit.bench_postgres`)."""
        assert self.pg is not None
        self.say(f"PostgreSQL replay lag at {rate:,} writes/s (one 4 KiB row per commit, standby "
                 "behind its link emulator)")
        r = self.pg.lag(rate, seconds)
        tl, view = r["samples_ms"], r["replay_lag_view_ms"]
        pl = self.pg_result["lag"] = {
            "writes_per_s": r["writes_per_s"], "samples": len(tl),
            "time_lag_ms_p50": pct(tl, 50), "time_lag_ms_p99": pct(tl, 99),
            "replay_lag_view_samples": len(view), "replay_lag_view_ms_p50": pct(view, 50),
            "replay_lag_view_ms_p99": pct(view, 99)}
        self.say(f"  {rate:>5} writes/s (achieved {pl['writes_per_s']:.0f}): time lag p50 "
                 f"{pl['time_lag_ms_p50']:.2f} ms, p99 {pl['time_lag_ms_p99']:.2f} ms")

    def postgres_verify(self) -> None:
        """The standby replayed everything: row counts equal the primary's after catch-up."""
        assert self.pg is not None
        self.say("PostgreSQL standby: waiting for it to replay everything, comparing row counts")
        standby = self.pg_result["standby"] = self.pg.catch_up()
        self.pg_result["wal_senders"] = self.pg.wal_senders()
        self.pg_result["version"] = self.pg.version
        self.pg_result["settings"] = dict(SETTINGS)
        if not standby["standby_rows_match"]:
            raise DrKitError(f"PostgreSQL standby rows differ from the primary's after catch-up: "
                             f"{standby['rows']}")
        self.say(f"  standby rows equal the primary's: {standby['rows']['standby']}")

    # -- CPU by component --------------------------------------------------------------
    def cpu(self) -> dict[str, Any]:
        """CPU time of the array processes per shop transaction, by component.

        The same shop transaction runs in short interleaved blocks on volumes without
        replication (off), on volumes of an asynchronous group whose transfer is paused
        (journal only), and on the same group streaming (journal + transfer + backup).
        Per block: user + system CPU of the main array, backup array, link emulator and
        this process (the shop, SQLite and the VFS client).  The streaming block ends when
        the backup has applied everything, so its CPU for those transactions is counted.
        The order of the three blocks rotates from round to round.  Other work on a shared
        machine only adds CPU time to a block (cache misses, time the hypervisor takes), so
        each mode's figure is its least disturbed block (``us_per_tx``: the minimum over
        rounds; ``us_per_tx_median`` beside it), and each component a difference of those.

        - main_journal = main CPU (transfer paused) - main CPU (off): the journal-free
          data path is the baseline;
        - transfer = main CPU (streaming) - main CPU (transfer paused);
        - backup = backup CPU (streaming) - backup CPU (off; its idle work).
        Each is a difference of measured times, so noise can make a small one negative.
        """
        n_block, rounds = (100, 6) if self.quick else (200, 10)
        self.say(f"CPU time per shop transaction by component ({n_block * rounds} transactions "
                 "per mode: off / journal only / streaming)")
        shops: dict[str, Shop] = {}
        for mode in ("off", "async"):
            vols = [f"cpu-{mode}-stock", f"cpu-{mode}-sales"]
            for v in vols:
                self.mc.create_volume(v, 32 << 20)
            stock, sales = open_shop(self.vfs, stock_volume=vols[0], sales_volume=vols[1])
            seed(stock, sales)
            if mode == "async":
                create_pair(self.mc, self.bc, "bench-cpu", vols, self.link.address, mode="async",
                            journal_capacity=256 << 20)
                self._wait_pair("bench-cpu")
            shops[mode] = Shop(stock, sales, seed_value=7)
        procs = {"main": _cpu_clock(self.main.pid), "backup": _cpu_clock(self.backup.pid),
                 "link": _cpu_clock(self.link.proc.pid), "shop": _cpu_clock(os.getpid())}

        def cpu_now() -> dict[str, float]:
            return {k: clock() for k, clock in procs.items()}

        def caught_up(timeout: float = 60.0) -> None:
            head = _head(self.mc, "bench-cpu").sequence
            deadline = time.monotonic() + timeout
            while int(self.bc.group_status("bench-cpu")["applied"].split("/")[1]) < head:
                if time.monotonic() > deadline:
                    raise DrKitError("CPU measurement invalid: the backup did not catch up; run the bench again")
                time.sleep(0.01)

        modes = ("off", "journal", "streaming")
        spent: dict[str, list[dict[str, float]]] = {m: [] for m in modes}  # us/tx per round

        def block(mode: str) -> None:
            if mode == "journal":
                self.mc.group_action("bench-cpu", "pause-transfer")
            c0 = cpu_now()
            shops["off" if mode == "off" else "async"].run(0, count=n_block)
            # the last writes' transfer (gathered for at most 10 ms) and apply happen in the
            # block; every mode then asks both arrays once, so the asking costs the same
            time.sleep(0.03)
            if mode == "streaming":
                caught_up()
            else:
                _head(self.mc, "bench-cpu")
                self.bc.group_status("bench-cpu")
            c1 = cpu_now()
            spent[mode].append({k: (c1[k] - c0[k]) / n_block * 1e6 for k in procs})
            if mode == "journal":
                self.mc.group_action("bench-cpu", "resume-transfer")
                caught_up()  # the paused backlog crosses outside every measured block

        for shop in shops.values():  # unmeasured warm-up
            shop.run(0, count=n_block)
        caught_up()
        for r in range(rounds):  # the order rotates, so no mode always follows another
            for mode in modes[r % 3:] + modes[:r % 3]:
                block(mode)
        if self.mc.group_status("bench-cpu")["state"] != "pair":
            raise DrKitError("CPU measurement invalid: the pair left the pair state; run the bench again")

        # CPU time on a shared machine only grows with other work (cache misses, time the
        # hypervisor takes): each mode's least disturbed block is its best estimate
        best = {m: {k: min(r[k] for r in spent[m]) for k in procs} for m in modes}
        us = best
        out: dict[str, Any] = {
            "transactions_per_mode": n_block * rounds,
            "rounds": rounds,
            "us_per_tx": best,
            "us_per_tx_median": {m: {k: statistics.median(r[k] for r in spent[m]) for k in procs}
                                 for m in modes},
            "main_journal": best["journal"]["main"] - best["off"]["main"],
            "transfer": best["streaming"]["main"] - best["journal"]["main"],
            "backup": best["streaming"]["backup"] - best["off"]["backup"],
            "link": best["streaming"]["link"] - best["off"]["link"],
            "shop_process_async_minus_off": best["streaming"]["shop"] - best["off"]["shop"],
        }
        self.say(f"  main array: {us['off']['main']:.0f} us/tx off, +{out['main_journal']:.0f} journal, "
                 f"+{out['transfer']:.0f} transfer; backup array {out['backup']:.0f} us/tx; "
                 f"link emulator {out['link']:.0f} us/tx")
        for shop in shops.values():
            shop.stock.close()
            shop.sales.close()
        self.mc.delete_group("bench-cpu")
        self.bc.delete_group("bench-cpu", delete_volumes=True)
        return out

    # -- 3+4+5. snapshots, initial copy, memory ---------------------------------------
    def big(self) -> dict[str, Any]:
        big = (256 << 20) if self.quick else (1 << 30)
        label = f"{big >> 20} MiB"
        out: dict[str, Any] = {"large_volume_bytes": big}
        self.say(f"initial copy of a {label} volume (filled with data), with progress")
        self.mc.create_volume("big", big)
        vol = self.mc.open_volume("big")
        chunk = os.urandom(1 << 20)
        for off in range(0, big, 1 << 20):
            vol.write(off, chunk)
        vol.close()
        with _Rss([self.main.pid, self.backup.pid]) as rss_small:
            self.mc.create_volume("small", 1 << 20)
            create_pair(self.mc, self.bc, "bench-small", ["small"], self.link.address)
            self._wait_pair("bench-small")
        with _Rss([self.main.pid, self.backup.pid]) as rss:
            t0 = time.monotonic()
            create_pair(self.mc, self.bc, "bench-big", ["big"], self.link.address)
            self._wait_pair("bench-big", progress=True)
            secs = time.monotonic() - t0
        out["initial_copy_mb_per_s"] = big / secs / 1e6
        out["peak_rss_mb_large"] = rss.peak / 1e6
        out["peak_rss_mb_small"] = rss_small.peak / 1e6
        self.say(f"  {big / 1e6:.0f} MB copied in {secs:.1f} s = {out['initial_copy_mb_per_s']:.0f} MB/s; "
                 f"peak array RSS {out['peak_rss_mb_large']:.0f} MB (1 MiB run: {out['peak_rss_mb_small']:.0f} MB)")
        self.say("snapshot group creation, 1 MiB vs large volume")
        times: dict[str, list[float]] = {"bench-small": [], "bench-big": []}
        for i in range(5 if self.quick else 10):
            for g in times:
                t0 = time.perf_counter()
                self.bc.create_snapshot(f"{g}-s{i}", group=g)
                times[g].append((time.perf_counter() - t0) * 1000)
        small, large = statistics.median(times["bench-small"]), statistics.median(times["bench-big"])
        out["snapshot_ms_1m"], out["snapshot_ms_large"] = small, large
        out["snapshot_ratio_large_over_1m"] = large / small
        t0 = time.perf_counter()
        self.bc.create_clone("big-clone", "bench-big-s0", "big")
        cv = self.bc.open_volume("big-clone")
        first = cv.read(0, 4096)
        out["clone_open_ms"] = (time.perf_counter() - t0) * 1000
        assert len(first) == 4096
        cv.close()
        self.say(f"  snapshot group: {small:.2f} ms (1 MiB) vs {large:.2f} ms ({label}), ratio "
                 f"{out['snapshot_ratio_large_over_1m']:.2f}; clone open {out['clone_open_ms']:.1f} ms")
        return out


def run(*, quick: bool = False, workdir: str | Path | None = None,
        progress: Progress | None = None, anchor: str = "auto",
        placement: str = "sites") -> dict[str, Any]:
    """Run the benchmarks; ``anchor`` is ``auto`` (PostgreSQL when its server binaries are
    installed), ``postgres`` or ``none``.  An anchor that cannot run leaves a note in
    ``result["postgres"]["skipped"]`` and None for its figures, never a failure.
    ``placement`` is ``sites`` or ``shared`` (:func:`site_cpus`); this process's CPUs are
    given back at the end."""
    if anchor not in ("auto", "postgres", "none"):
        raise InvalidInput(f"unknown anchor {anchor!r}; use postgres or none")
    cpus = site_cpus(placement)
    say = progress or (lambda s: None)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dr-kit-bench-"))
    bench: Bench | None = None
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}

    def on_interrupt() -> None:
        if bench:
            bench.kill()
        for p in psutil.Process().children(recursive=True):  # e.g. while Bench() was starting
            if p.pid not in children_before:
                try:
                    p.kill()
                except psutil.Error:
                    pass
        bench_postgres.remove_leftovers()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    previous = _exit_on_interrupt(on_interrupt)
    load_start = os.getloadavg()
    try:
        bench = Bench(root, quick=quick, progress=say, placement=placement)
        if cpus:
            say(f"placement: the shop and the main array on CPU {cpus[0]}, the link emulator "
                f"and the backup array on CPU {cpus[1]}")
        if anchor == "none":
            bench.pg_note = "turned off (--anchor none)"
        else:
            bench.start_anchor()
        commit = bench.commit_latency()
        lag = bench.lag()
        cpu = bench.cpu()
        big = bench.big()
        if bench.pg:
            bench.postgres_verify()
    finally:
        try:
            if bench:
                bench.close()
        finally:
            if workdir is None:
                shutil.rmtree(root, ignore_errors=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    delays = ("0ms", "5ms", "20ms")
    worst = max(delays, key=lambda d: commit[d]["async_over_off_p50"])
    pg = bench.pg_result if bench.pg else {"skipped": bench.pg_note}
    return {
        "async_over_off_p50_max": max(commit[d]["async_over_off_p50"] for d in delays),
        # where the figure above would fall with other rounds of this run (95%, bootstrap)
        "async_over_off_p50_max_ci95": list(bench.ratio_ci["max"]) if bench.ratio_ci else None,
        # its split at the same (worst) delay: the commit path's journal entries alone, and
        # what streaming beside them adds (the product of the two is the ratio above)
        "journal_over_off_p50_at_worst": commit[worst]["journal_over_off_p50"],
        "async_over_journal_p50_at_worst": commit[worst]["async_over_journal_p50"],
        "async_over_off_tps_min": min(commit[d]["async_over_off_tps"] for d in delays),
        "sync_over_off_p50_at_20ms": commit["20ms"]["sync_over_off_p50"],
        "sync_over_off_growth_20ms_over_0ms": (commit["20ms"]["sync_over_off_p50"]
                                               / commit["0ms"]["sync_over_off_p50"]),
        "lag_p99_ms_at_1000": lag["1000"]["time_lag_ms_p99"],
        "apply_over_write_rate": lag["apply_over_write_rate"],
        "snapshot_ratio_1g_over_1m": big["snapshot_ratio_large_over_1m"],
        "peak_rss_mb_1g": big["peak_rss_mb_large"],
        "cpu_us_per_tx_main_journal": cpu["main_journal"],
        "cpu_us_per_tx_transfer": cpu["transfer"],
        "cpu_us_per_tx_backup": cpu["backup"],
        **postgres_keys(pg),
        "quick": quick,
        # the figures depend on what else this machine ran meanwhile: say how loaded it was
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_start": load_start[0],
                    "loadavg_1m_end": os.getloadavg()[0],
                    "placement": {"mode": "sites", "main_cpu": cpus[0], "backup_cpu": cpus[1]}
                    if cpus else {"mode": "shared"}},
        "commit": commit, "lag": lag, "cpu": cpu, "large": big, "postgres": pg,
    }


def postgres_keys(pg: dict[str, Any]) -> dict[str, float | None]:
    """PostgreSQL's headline figures, defined as ours (worst link delay); None if not run."""
    delays = ("0ms", "5ms", "20ms")
    commit = pg.get("commit")
    return {
        "postgres_async_over_off_p50": max(commit[d]["async_over_off_p50"] for d in delays) if commit else None,
        "postgres_async_over_off_tps_min": min(commit[d]["async_over_off_tps"] for d in delays) if commit else None,
        "postgres_lag_p99_ms": pg["lag"]["time_lag_ms_p99"] if "lag" in pg else None,
    }


def _exit_on_interrupt(cleanup: Callable[[], None]) -> dict[int, Any]:
    """Ctrl-C and SIGTERM stop everything the bench started and exit (130 / 143).

    An exception raised at an arbitrary point, Python's default for Ctrl-C, can land in an
    SQLite VFS callback, where SQLite turns it into an I/O error and the shop retries
    forever; so the handler itself cleans up and leaves with ``os._exit``.  Returns the
    previous handlers to restore (none when not on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            print("\nbench interrupted: stopping its arrays, link emulators and PostgreSQL servers",
                  file=sys.stderr, flush=True)
            cleanup()
        finally:
            os._exit(128 + signum)

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(s) is not signal.SIG_IGN}  # nohup-style ignoring is kept


TARGETS = [
    ("async_over_off_p50_max", "<=", 1.10, "async/off commit p50, worst delay"),
    ("sync_over_off_p50_at_20ms", ">", 1.0, "sync/off commit p50 at 20 ms"),
    ("sync_over_off_growth_20ms_over_0ms", ">", 1.0, "sync/off at 20 ms / sync/off at 0 ms"),
    ("lag_p99_ms_at_1000", "<=", 5.0, "lag p99 at 1,000 writes/s (ms)"),
    ("apply_over_write_rate", ">=", 10.0, "backup apply / write rate"),
    ("snapshot_ratio_1g_over_1m", "<=", 2.0, "snapshot time large / 1 MiB"),
]

COMPARISON = [
    ("async_over_off_p50_max", "postgres_async_over_off_p50", "async/off commit p50, worst delay"),
    ("async_over_off_tps_min", "postgres_async_over_off_tps_min", "async/off throughput, worst delay"),
    ("lag_p99_ms_at_1000", "postgres_lag_p99_ms", "lag p99 at 1,000 writes/s (ms)"),
]

BREAKDOWN = [
    ("journal_over_off_p50_at_worst", "journal only / off (commit path)"),
    ("async_over_journal_p50_at_worst", "async / journal only (streaming)"),
]

CPU_KEYS = [
    ("cpu_us_per_tx_main_journal", "main array, journal (async - off)"),
    ("cpu_us_per_tx_transfer", "main array, transfer"),
    ("cpu_us_per_tx_backup", "backup array (receive, apply)"),
]


def comparison(result: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """Our figure and PostgreSQL's (None when the anchor did not run), side by side."""
    return [(label, result[ours], result[theirs]) for ours, theirs, label in COMPARISON]


def verdicts(result: dict[str, Any]) -> list[tuple[str, float, str, float, bool]]:
    ops = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
           ">=": lambda a, b: a >= b}
    return [(label, result[k], op, target, ops[op](result[k], target)) for k, op, target, label in TARGETS]


def plot(result: dict[str, Any]):
    """One figure: commit latency per mode and link delay, and the lag percentiles (with
    PostgreSQL's beside them when the anchor ran)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    delays = ["0ms", "5ms", "20ms"]
    series = [(mode.replace("journal", "journal only"), [result["commit"][d][mode]["p50_ms"] for d in delays])
              for mode in COMMIT_MODES if mode in result["commit"]["0ms"]]
    pg_commit = result.get("postgres", {}).get("commit")
    if pg_commit:
        series += [(f"PostgreSQL {mode}", [pg_commit[d][mode]["p50_ms"] for d in delays])
                   for mode in ("off", "async")]
    w = 0.8 / len(series)
    for i, (label, vals) in enumerate(series):
        a.bar([x + i * w for x in range(3)], vals, width=w, label=label)
    a.set_xticks([x + 0.4 - w / 2 for x in range(3)], [f"link delay {d}" for d in delays])
    a.set_yscale("log")
    a.set_ylabel("shop commit latency p50 (ms, log)")
    a.set_title("No slowdown: asynchronous copy vs off vs synchronous")
    a.legend()
    rates = ["100", "1000"]
    b.bar([0, 1], [result["lag"][r]["time_lag_ms_p50"] for r in rates], width=0.35, label="p50")
    b.bar([0.35, 1.35], [result["lag"][r]["time_lag_ms_p99"] for r in rates], width=0.35, label="p99")
    b.axhline(5, color="red", linestyle="--", label="target p99 <= 5 ms")
    if result.get("postgres_lag_p99_ms") is not None:
        b.scatter([1.35], [result["postgres_lag_p99_ms"]], marker="D", color="black", zorder=3,
                  label="PostgreSQL p99, same run")
    b.set_xticks([0.17, 1.17], [f"{r} writes/s" for r in rates])
    b.set_ylabel("journal time lag (ms)")
    b.set_title("Journal lag on loopback")
    b.legend()
    place = result.get("machine", {}).get("placement", {})
    if place.get("mode") == "sites":
        where = (f"shop and main array on CPU {place['main_cpu']}, link emulator and backup "
                 f"array on CPU {place['backup_cpu']}")
    else:
        where = "processes placed by the scheduler"
    fig.suptitle(f"dr-kit bench{' --quick' if result.get('quick') else ''}: {where}", fontsize=9)
    fig.tight_layout()
    return fig
