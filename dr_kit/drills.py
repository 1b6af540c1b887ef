"""Fault drills: each breaks something on purpose and shows that nothing is lost.

``dr-kit drill NAME`` runs one (``all`` runs them in turn) against two array processes,
the link emulator and the shop on this machine, prints one verdict line with its figures,
and returns the figures (``--json``).

- ``backup-down``   the backup array is killed (SIGKILL) under load: the main site's commit
                    latency is unaffected; after a restart the backup catches up and holds
                    exactly what the main site acknowledged.
- ``journal-full``  the link is cut until the journal is full: the main site does not block,
                    the pair is suspended; after the link is back a resync runs with
                    progress while the last consistent image is kept in a guard snapshot;
                    consistency returns.
- ``corrupt``       a journal entry is corrupted in transit, then another on the backup's
                    disk: each is detected, never applied, reported; a resync recovers.
- ``main-crash``    the main array and the shop application are killed (SIGKILL) together
                    mid-transaction: the backup is consistent; the data lost is what the lag
                    said it would be (RPO).
- ``failover``      after a main-site crash the backup is promoted, the shop opens there (the
                    databases run their crash recovery), the invariants hold, and the shop
                    serves again: RPO and RTO are reported.
- ``api-down``      (on a whole lab) each site's API server is killed (SIGKILL) under load and
                    started again as ``lab up`` would: the plug-ins, the operator and the
                    shop recover in place, the replication status follows again, and no
                    acknowledged order is missing at either site.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dr_kit.errors import DrKitError, InvalidInput
from dr_kit.shop.consistency import Verdict
from dr_kit.shop.images import judge_snapshot
from dr_kit.shop.workload import Shop, judge_images, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import ArrayClient, ArrayHandle, create_pair, start_array
from dr_kit.storage.link import LinkEmulator
from dr_kit.storage.position import JournalPosition

Progress = Callable[[str], None]
VOLS = ("stock-db", "sales-db")
GROUP = "shop"



def _head(client: ArrayClient, group: str) -> JournalPosition:
    """The main site's journal position of ``group`` (a main array knows its own)."""
    pos = client.lag(group).main
    if pos is None:
        raise DrKitError(f"the array reports no journal position for group {group}")
    return pos


def _wait(pred: Callable[[], Any], what: str, timeout: float = 60.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() > deadline:
            raise DrKitError(f"drill: timed out waiting for {what}")
        time.sleep(interval)


def _digest(client: ArrayClient, volume: str) -> str:
    v = client.open_volume(volume)
    h = hashlib.sha256()
    for off in range(0, v.size, 1 << 20):
        h.update(v.read(off, min(1 << 20, v.size - off)))
    v.close()
    return h.hexdigest()


class Sites:
    """A main and a backup array with the shop's two volumes in one consistency group."""

    def __init__(self, root: Path, *, journal_capacity: int = 64 << 20, volume_size: int = 16 << 20) -> None:
        self.root = root
        self.main: ArrayHandle = start_array(root / "main", "main")
        self.backup: ArrayHandle = start_array(root / "backup", "backup")
        self.link = LinkEmulator(self.backup.replication).start()
        for v in VOLS:
            self.main.client.create_volume(v, volume_size)
        self.vfs_main = sqlite_vfs.register(f"drill-main-{id(self)}", self._main_volume)
        self.vfs_backup = sqlite_vfs.register(f"drill-backup-{id(self)}", self._backup_volume)
        stock, sales = open_shop(self.vfs_main)
        seed(stock, sales)
        stock.close()
        sales.close()
        self._forget(self.vfs_main)
        create_pair(self.main.client, self.backup.client, GROUP, list(VOLS), self.link.address,
                    journal_capacity=journal_capacity, auto_resync=True)
        self.wait_pair()
        self.shop: Shop | None = None
        self.proc: subprocess.Popen | None = None
        self._n = 0

    def _main_volume(self, name: str):
        return self.main.client.open_volume(name)

    def _backup_volume(self, name: str):
        return self.backup.client.open_volume(name)

    @staticmethod
    def _forget(vfs: sqlite_vfs.ArrayVFS) -> None:
        for v in list(vfs._fs):
            vfs.forget(v)

    def wait_pair(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.main.client.wait_group(GROUP, lambda s: s["state"] == "pair" and s["lag"]["consistent"],
                                           timeout=timeout, what="a consistent pair")

    def wait_caught_up(self, timeout: float = 60.0) -> None:
        _wait(lambda: self.main.client.lag(GROUP).caught_up, "the backup to catch up", timeout)

    # -- the shop in this process or as its own process ------------------------------
    def start_shop(self, rate: float) -> Shop:
        stock, sales = open_shop(self.vfs_main)
        self.shop = Shop(stock, sales, seed_value=11, keep_latencies=10**6).start(rate)
        return self.shop

    def stop_shop(self) -> None:
        if self.shop:
            self.shop.stop()
            self.shop.stock.close()
            self.shop.sales.close()
            self.shop = None
            self._forget(self.vfs_main)

    def start_shop_process(self, rate: float) -> Path:
        status = self.root / "shop-status.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dr_kit.shop", "--socket", self.main.info["data_socket"],
             "--rate", str(rate), "--status", str(status), "--seed", "11"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: status.exists() and json.loads(status.read_text() or "{}").get("committed", 0) > 20,
              "the shop process to commit transactions", 30)
        return status

    # -- judging images ---------------------------------------------------------------
    def judge_backup(self, snapshot: str | None = None, *, group: str | None = GROUP) -> tuple[Verdict, dict[str, Any]]:
        """Judge the backup volumes (as they are now, or a given snapshot) through clones."""
        bc = self.backup.client
        self._n += 1
        made = snapshot is None
        snap = snapshot or f"drill-{self._n}"
        info = bc.create_snapshot(snap, group=group) if made else bc.snapshot(snap)
        try:
            j = judge_snapshot(bc, self.vfs_backup, snap, tag=f"c{self._n}")
        finally:
            if made:
                bc.delete_snapshot(snap)
        return j.verdict, dict(info, last_order=j.last_order, last_order_time=j.last_order_time)

    def close(self) -> None:
        self.stop_shop()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.link.stop()
        for h in (self.main, self.backup):
            h.stop()


def _latency_window(shop: Shop, seconds: float) -> list[float]:
    shop.stats.latencies_ms.clear()
    time.sleep(seconds)
    return list(shop.stats.latencies_ms)


def _p50(v: list[float]) -> float | None:
    return statistics.median(v) if v else None


# -- the drills ---------------------------------------------------------------------

def backup_down(sites: Sites, say: Progress, *, rate: float = 100.0, seconds: float = 2.0) -> dict[str, Any]:
    shop = sites.start_shop(rate)
    before = _latency_window(shop, seconds)
    say(f"  killing the backup array (pid {sites.backup.pid}) under load")
    port = int(sites.backup.replication.rsplit(":", 1)[1])
    sites.backup.kill()
    during = _latency_window(shop, seconds)
    committed_while_down = len(during)
    sites.backup = start_array(sites.root / "backup", "backup", repl_port=port)
    say("  backup restarted; waiting for it to catch up")
    t0 = time.monotonic()
    sites.wait_caught_up()
    catch_up = time.monotonic() - t0
    sites.stop_shop()
    sites.wait_caught_up()
    same = all(_digest(sites.main.client, v) == _digest(sites.backup.client, v) for v in VOLS)
    verdict, _ = sites.judge_backup()
    ok = same and verdict.consistent and committed_while_down > 0
    return {"ok": ok, "p50_ms_before": _p50(before), "p50_ms_backup_down": _p50(during),
            "transactions_while_down": committed_while_down, "catch_up_s": catch_up,
            "backup_equals_main": same, "verdict": verdict.summary()}


def journal_full(sites: Sites, say: Progress, *, rate: float = 150.0) -> dict[str, Any]:
    mc = sites.main.client
    shop = sites.start_shop(rate)
    before = _latency_window(shop, 1.0)
    say("  cutting the link; the journal (1 MiB) fills up")
    sites.link.cut()
    t0 = time.monotonic()
    _wait(lambda: mc.group_status(GROUP)["state"] == "suspended", "the pair to suspend", 60)
    fill_s = time.monotonic() - t0
    suspended = _latency_window(shop, 1.0)
    lag = mc.lag(GROUP)
    say(f"  suspended after {fill_s:.1f} s ({lag.message}); main still commits: "
        f"{len(suspended)} transactions in 1 s")
    generation = _head(mc, GROUP).generation
    sites.link.restore()
    seen_resync, progress, guard_verdict = False, [], None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = mc.group_status(GROUP)
        if st["state"] == "resync":
            seen_resync = True
            if st["copy"]["total"]:
                progress.append(st["copy"]["done"] / st["copy"]["total"])
            if guard_verdict is None:
                snaps = [s["name"] for s in sites.backup.client.status()["snapshots"]]
                if f"resync-guard-{GROUP}" in snaps:
                    guard_verdict, _ = sites.judge_backup(f"resync-guard-{GROUP}")
        if st["state"] == "pair" and st["lag"]["consistent"]:
            break
        time.sleep(0.01)
    if guard_verdict is None and f"resync-guard-{GROUP}" in [s["name"] for s in sites.backup.client.status()["snapshots"]]:
        guard_verdict, _ = sites.judge_backup(f"resync-guard-{GROUP}")
    # a short resync can end between two polls: the new journal generation proves it ran
    seen_resync = seen_resync or _head(mc, GROUP).generation > generation
    sites.stop_shop()
    sites.wait_caught_up()
    same = all(_digest(mc, v) == _digest(sites.backup.client, v) for v in VOLS)
    verdict, _ = sites.judge_backup()
    ok = bool(suspended) and seen_resync and same and verdict.consistent and bool(guard_verdict and guard_verdict.consistent)
    return {"ok": ok, "p50_ms_before": _p50(before), "p50_ms_suspended": _p50(suspended),
            "seconds_to_fill_journal": fill_s, "resync_seen": seen_resync,
            "resync_progress_samples": len(progress), "guard_snapshot": guard_verdict.summary() if guard_verdict else None,
            "backup_equals_main": same, "verdict": verdict.summary()}


def corrupt(sites: Sites, say: Progress) -> dict[str, Any]:
    mc, bc = sites.main.client, sites.backup.client
    shop = sites.start_shop(50.0)
    time.sleep(0.3)
    mc.group_action(GROUP, "corrupt-next")
    st = mc.wait_group(GROUP, lambda s: s["state"] == "error", timeout=30, what="the error state")
    transit_msg = st["message"]
    say(f"  in transit: {transit_msg}")
    v1, _ = sites.judge_backup()
    mc.group_action(GROUP, "resync")
    sites.wait_pair()
    # on the backup's disk
    bc.group_action(GROUP, "pause-apply")
    time.sleep(0.3)
    head = _head(mc, GROUP).sequence
    _wait(lambda: bc.group_status(GROUP)["received"] >= head, "entries stored at the backup")
    bst = bc.group_status(GROUP)
    applied = int(bst["applied"].split("/")[1])
    segs = sorted((sites.backup.root / "groups" / GROUP / "journal").glob("*.seg"))
    flipped = False
    for p in segs:  # flip one byte inside the first unapplied record's data
        first = int(p.stem)
        if first <= applied + 1:
            from dr_kit.storage.journal import Journal
            j = Journal.open(p.parent, 1 << 30)
            raw = j.read_batch(applied + 1, max_bytes=1)
            j.close()
            with p.open("r+b") as f:
                data = p.read_bytes()
                pos = data.find(raw)
                if pos >= 0:
                    f.seek(pos + len(raw) - 1)
                    b = f.read(1)
                    f.seek(pos + len(raw) - 1)
                    f.write(bytes([b[0] ^ 0xFF]))
                    flipped = True
    bc.group_action(GROUP, "resume-apply")
    bst = bc.wait_group(GROUP, lambda s: s["state"] == "error", timeout=30, what="the error at the backup")
    disk_msg = bst["message"]
    say(f"  on disk: {disk_msg}")
    v2, _ = sites.judge_backup()
    mc.wait_group(GROUP, lambda s: s["state"] == "error", timeout=30, what="the main site to see the error")
    mc.group_action(GROUP, "resync")
    sites.wait_pair()
    sites.stop_shop()
    sites.wait_caught_up()
    v3, _ = sites.judge_backup()
    same = all(_digest(mc, v) == _digest(bc, v) for v in VOLS)
    del shop
    ok = flipped and v1.consistent and v2.consistent and v3.consistent and same and "checksum" in disk_msg
    return {"ok": ok, "in_transit": transit_msg, "on_disk": disk_msg, "image_after_transit_error": v1.summary(),
            "image_after_disk_error": v2.summary(), "after_resync": v3.summary(), "backup_equals_main": same}


def _kill_main(sites: Sites) -> float:
    """SIGKILL the shop process and the main array together; returns the time of the kill."""
    t = time.time()
    assert sites.proc is not None
    sites.proc.kill()
    sites.main.kill()
    sites.proc.wait()
    return t


def _main_orders(sites: Sites) -> tuple[int, str | None, Verdict]:
    stock, sales = open_shop(sites.vfs_main)
    try:
        verdict = judge_images(stock, sales)
        n, t = next(sales.execute("SELECT MAX(order_id), MAX(ordered_at) FROM orders"))
    finally:
        stock.close()
        sales.close()
        sites._forget(sites.vfs_main)
    return n or 0, t, verdict


def main_crash(sites: Sites, say: Progress, *, rate: float = 120.0, seconds: float = 2.0) -> dict[str, Any]:
    status = sites.start_shop_process(rate)
    samples = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        samples.append(sites.main.client.lag(GROUP))
        time.sleep(0.05)
    lag_before = samples[-1]
    t_kill = _kill_main(sites)
    acked = json.loads(status.read_text())
    say(f"  killed the shop and the main array at {time.strftime('%H:%M:%S', time.localtime(t_kill))}; "
        f"last lag seen: {lag_before.time_lag_s * 1000 if lag_before.time_lag_s is not None else float('nan'):.1f} ms")
    bc = sites.backup.client
    _wait(lambda: int(bc.group_status(GROUP)["applied"].split("/")[1]) >= bc.group_status(GROUP)["received"],
          "the backup to apply what it received")
    verdict, info = sites.judge_backup()
    sites.main = start_array(sites.root / "main", "main")
    main_last, main_time, main_verdict = _main_orders(sites)
    backup_last = info["last_order"] or 0
    lost = main_last - backup_last
    window = _seconds_between(info["last_order_time"], main_time)
    ok = verdict.consistent and main_verdict.consistent and main_last >= acked["last_order"] and lost >= 0
    return {"ok": ok, "verdict": verdict.summary(), "orders_acknowledged": acked["last_order"],
            "orders_at_main_after_restart": main_last, "orders_at_backup": backup_last, "orders_lost": lost,
            "lost_window_s": window, "lag_before_crash_s": lag_before.time_lag_s,
            "main_verdict": main_verdict.summary()}


def _seconds_between(a: str | None, b: str | None) -> float | None:
    from datetime import datetime
    if not a or not b:
        return None
    fa = datetime.strptime(a, "%Y-%m-%dT%H:%M:%S.%fZ")
    fb = datetime.strptime(b, "%Y-%m-%dT%H:%M:%S.%fZ")
    return max(0.0, (fb - fa).total_seconds())


def failover(sites: Sites, say: Progress, *, rate: float = 120.0, seconds: float = 1.5) -> dict[str, Any]:
    status = sites.start_shop_process(rate)
    time.sleep(seconds)
    lag_before = sites.main.client.lag(GROUP)
    t_disaster = _kill_main(sites)
    acked = json.loads(status.read_text())
    say("  main site lost; promoting the backup")
    bc = sites.backup.client
    pos = bc.group_action(GROUP, "promote")
    t_promoted = time.time()
    stock, sales = open_shop(sites.vfs_backup)  # the databases run their crash recovery here
    verdict = judge_images(stock, sales)
    backup_last = next(sales.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders"))[0]
    backup_time = next(sales.execute("SELECT MAX(ordered_at) FROM orders"))[0]
    shop = Shop(stock, sales, seed_value=12)
    first = shop.transact()
    t_serving = time.time()
    shop.run(0, count=20)
    stock.close()
    sales.close()
    sites._forget(sites.vfs_backup)
    sites.main = start_array(sites.root / "main", "main")
    main_last, main_time, _ = _main_orders(sites)
    rto = t_serving - t_disaster
    lost = max(0, main_last - backup_last)
    ok = verdict.consistent and first > backup_last and acked["last_order"] <= main_last
    say(f"  serving again at the backup {rto:.2f} s after the disaster (promotion took {t_promoted - t_disaster:.2f} s)")
    return {"ok": ok, "verdict": verdict.summary(), "promoted_at": pos, "rto_s": rto,
            "rpo_orders_lost": lost, "rpo_window_s": _seconds_between(backup_time, main_time),
            "lag_before_disaster_s": lag_before.time_lag_s, "orders_at_backup": backup_last,
            "orders_at_main": main_last, "first_order_at_backup": first}


DRILLS: dict[str, tuple[Callable[..., dict[str, Any]], dict[str, Any]]] = {
    "backup-down": (backup_down, {}),
    "journal-full": (journal_full, {"journal_capacity": 1 << 20}),
    "corrupt": (corrupt, {}),
    "main-crash": (main_crash, {}),
    "failover": (failover, {}),
}


# Drills that need a whole lab (API servers, plug-ins, operator): run by the lab, which
# this module must not import; the command line's entry point registers them.
# name -> (fn(workdir, say) -> result, one line saying what it does)
LabDrill = Callable[[Path, Progress], dict[str, Any]]
LAB_DRILLS: dict[str, tuple[LabDrill, str]] = {}


def register_lab_drill(name: str, fn: LabDrill, doc: str) -> None:
    """Add a drill that runs on a fresh lab in the folder it is given."""
    LAB_DRILLS[name] = (fn, doc)


def names() -> list[str]:
    """Every drill, the arrays' first."""
    return [*DRILLS, *(n for n in LAB_DRILLS if n not in DRILLS)]


def run(name: str, *, workdir: str | Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run one drill on fresh arrays (or a fresh lab); returns its figures with ``ok`` and
    ``line``."""
    if name not in DRILLS and name not in LAB_DRILLS:
        raise InvalidInput(f"unknown drill {name!r}; choose one of {', '.join(names())} or all")
    say = progress or (lambda s: None)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"dr-kit-drill-{name}-"))
    t0 = time.monotonic()
    try:
        if name in DRILLS:
            fn, setup = DRILLS[name]
            sites = Sites(root, **setup)
            try:
                result = fn(sites, say)
            finally:
                sites.close()
        else:
            result = LAB_DRILLS[name][0](root, say)
        result["seconds"] = time.monotonic() - t0
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    result["drill"] = name
    result["line"] = f"{name}: {'PASS' if result['ok'] else 'FAIL'} — " + ", ".join(
        f"{k}={_fmt(v)}" for k, v in result.items()
        if k not in ("ok", "drill", "line", "promoted_at") and not isinstance(v, (list, dict)))
    return result


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
