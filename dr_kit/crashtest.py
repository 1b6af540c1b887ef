"""The crash-consistency demonstration: cut replication at random points, judge the backup.

Two configurations run the same shop workload against a main array, replicating over a
link emulator to a backup array in another process:

- ``consistency_group``: both volumes in one consistency group (one journal, one order);
- ``independent``: one pair per volume, each journal read on its own transfer cycle, as
  independent asynchronous copies are.

At each trial a random cut stops replication (transfer stopped, backup array killed with
SIGKILL and restarted, apply stopped, or link cut).  A snapshot of both backup volumes is
taken, restored to writable clones, opened with SQLite (which runs its crash recovery)
and judged by :func:`dr_kit.shop.workload.judge_images`.  Then replication resumes and
the next trial follows.  The images are real: nothing is simulated but the two sites
being on one machine.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_kit.errors import DrKitError, InvalidInput
from dr_kit.shop.images import judge_snapshot
from dr_kit.shop.workload import Shop, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import ArrayHandle, create_pair, start_array
from dr_kit.storage.link import LinkEmulator

CUTS = ("stop-transfer", "kill-backup", "stop-apply", "cut-link")
VOLUMES = ("stock-db", "sales-db")


@dataclass
class Config:
    name: str
    groups: dict[str, list[str]]  # group -> member volumes
    intervals_ms: dict[str, float]  # group -> transfer cycle


CONFIGS = {
    "consistency_group": Config("consistency_group", {"shop": list(VOLUMES)}, {"shop": 40.0}),
    # each journal has its own transfer cycle; their phases drift independently
    "independent": Config("independent", {"stock": ["stock-db"], "sales": ["sales-db"]},
                          {"stock": 40.0, "sales": 15.0}),
}


@dataclass
class Trial:
    cut: str
    orders: int
    collapsed_orders: int
    in_flight: int
    corrupt: bool
    verdict: str


@dataclass
class ConfigResult:
    trials: list[Trial] = field(default_factory=list)
    committed: int = 0

    def summary(self) -> dict[str, int]:
        return {"trials": len(self.trials),
                "collapsed": sum(1 for t in self.trials if t.collapsed_orders and not t.corrupt),
                "corrupt": sum(1 for t in self.trials if t.corrupt)}


def _wait(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise DrKitError(f"crash test: timed out waiting for {what}")
        time.sleep(0.01)


class _Bench:
    """Two arrays, a link, the shop, for one configuration."""

    def __init__(self, root: Path, conf: Config, rate: float, seed_value: int) -> None:
        self.root, self.conf = root, conf
        self.main = start_array(root / "main", "main")
        self.backup: ArrayHandle = start_array(root / "backup", "backup")
        self.link = LinkEmulator(self.backup.replication).start()
        mc = self.main.client
        for v in VOLUMES:
            mc.create_volume(v, 16 << 20)
        self.vfs_main = sqlite_vfs.register(f"crash-main-{conf.name}-{seed_value}", mc.open_volume)
        self.stock, self.sales = open_shop(self.vfs_main)
        seed(self.stock, self.sales)
        for g, members in conf.groups.items():
            create_pair(mc, self.backup.client, g, members, self.link.address,
                        transfer_interval_ms=conf.intervals_ms[g])
        for g in conf.groups:
            mc.wait_group(g, lambda s: s["state"] == "pair" and s["lag"]["consistent"], timeout=60,
                          what="the end of the initial copy")
        self.shop = Shop(self.stock, self.sales, seed_value=seed_value).start(rate)
        self.vfs_backup = sqlite_vfs.register(f"crash-backup-{conf.name}-{seed_value}", self._open_backup)

    def _open_backup(self, name: str):
        return self.backup.client.open_volume(name)

    # -- cuts -----------------------------------------------------------------------
    def cut(self, kind: str) -> None:
        mc, bc = self.main.client, self.backup.client
        if kind == "stop-transfer":
            for g in self.conf.groups:
                mc.group_action(g, "pause-transfer")
        elif kind == "stop-apply":
            for g in self.conf.groups:
                bc.group_action(g, "pause-apply")
        elif kind == "cut-link":
            self.link.cut()
        elif kind == "kill-backup":
            self.backup.kill()
            self.backup = start_array(self.root / "backup", "backup", repl_port=int(self.backup.replication.rsplit(":", 1)[1]))
            for g in self.conf.groups:
                bc = self.backup.client
                bc.group_action(g, "pause-apply")  # judge what survived the kill

    def heal(self, kind: str) -> None:
        mc, bc = self.main.client, self.backup.client
        if kind == "stop-transfer":
            for g in self.conf.groups:
                mc.group_action(g, "resume-transfer")
        elif kind in ("stop-apply", "kill-backup"):
            for g in self.conf.groups:
                bc.group_action(g, "resume-apply")
        elif kind == "cut-link":
            self.link.restore()

    def judge(self, trial: int):
        bc = self.backup.client
        snap = f"t{trial}"
        bc.create_snapshot(snap, volumes=list(VOLUMES))  # both volumes at one instant
        try:
            return judge_snapshot(bc, self.vfs_backup, snap).verdict
        finally:
            bc.delete_snapshot(snap)

    def close(self) -> int:
        stats = self.shop.stop()
        for c in (self.stock, self.sales):
            c.close()
        self.link.stop()
        self.main.stop()
        self.backup.stop()
        return stats.committed


def run(trials: int = 50, seed_value: int = 1, *, rate: float = 150.0, workdir: str | Path | None = None,
        configs: tuple[str, ...] = ("consistency_group", "independent"),
        progress: Callable[[str, int, Trial], None] | None = None) -> dict[str, Any]:
    """Run the demonstration; returns ``{config: {"trials", "collapsed", "corrupt"}, ...}``."""
    if trials < 1:
        raise InvalidInput(f"--trials must be at least 1, got {trials}")
    if rate <= 0:
        raise InvalidInput(f"--rate must be positive, got {rate}")
    for c in configs:
        if c not in CONFIGS:
            raise InvalidInput(f"unknown configuration {c!r}; use {', '.join(CONFIGS)}")
    rng = random.Random(seed_value)
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="dr-kit-crashtest-")) if own else Path(workdir)  # type: ignore[arg-type]
    results: dict[str, Any] = {}
    try:
        for cname in configs:
            res = ConfigResult()
            bench = _Bench(root / cname, CONFIGS[cname], rate, seed_value)
            try:
                for i in range(trials):
                    time.sleep(rng.uniform(0.05, 0.35))
                    kind = rng.choice(CUTS)
                    bench.cut(kind)
                    v = bench.judge(i)
                    t = Trial(kind, v.orders, v.collapsed_orders, v.in_flight_orders, v.corrupt, v.summary())
                    res.trials.append(t)
                    if progress:
                        progress(cname, i, t)
                    bench.heal(kind)
            finally:
                res.committed = bench.close()
            results[cname] = res
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {c: r.summary() for c, r in results.items()}
    out["details"] = {c: {"committed_orders": r.committed,
                          "max_collapsed_orders": max((t.collapsed_orders for t in r.trials), default=0),
                          "cuts": [t.cut for t in r.trials]} for c, r in results.items()}
    return out
