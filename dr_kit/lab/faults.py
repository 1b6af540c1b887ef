"""Fault drills that need a whole lab (API servers, plug-ins, operator, shop).

``dr-kit drill api-down`` (registered with :mod:`dr_kit.drills` by the command line's
entry point) runs :func:`api_down` on a fresh lab in a temporary folder:

1. the lab is started, the shop protected and running at ``rate`` transactions/s;
2. for each site in turn, its API server is killed (SIGKILL) under load; while it is down
   ``dr-kit lab status`` is read (what it says is degraded is recorded), and the shop keeps
   committing (it needs its API server only to start); after ``down_s`` seconds the API
   server is started again as ``lab up`` would (only the dead process);
3. recovery: the plug-ins, the operator and the shop must be the very processes that ran
   before (same pids: they survived, nobody restarted them), ``lab status`` must report
   nothing degraded, and the replication status must follow the array again (a
   ``lastSyncTime`` written after the restart);
4. a new namespace is created and labelled after both outages: the operator and both
   sites' plug-ins protect it (the backup PVCs bound);
5. nothing lost: the shop is paused, the backup catches up, a snapshot group is taken at
   the backup site and opened: its image is consistent and holds the last order the shop
   acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from dr_kit.errors import DrKitError, Unavailable
from dr_kit.lab import manager
from dr_kit.lab.layout import SHOP_NAMESPACE, STORAGE_CLASS, LabDir

Progress = Callable[[str], None]

# the processes that must survive an API server's loss in place
SURVIVORS = ("main-array", "backup-array", "link", "main-controllers", "backup-controllers",
             "shop", "operator")


def _wait(pred: Callable[[], Any], what: str, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except DrKitError as e:  # a server still coming back: try again
            last = f"{type(e).__name__}: {e}"
            time.sleep(interval)
            continue
        if last and not isinstance(last, str):
            return last
        time.sleep(interval)
    raise Unavailable(f"drill: timed out after {timeout:.0f} s waiting for {what} (last: {last})")


def _shop(lab: LabDir) -> dict[str, Any]:
    return manager._read_json(lab.shop_status) or {}


def _pids(lab: LabDir) -> dict[str, int]:
    return {n: int(r["pid"]) for n, r in (lab.load().get("processes") or {}).items()}


def _last_sync(vgr: dict[str, Any] | None) -> float | None:
    raw = ((vgr or {}).get("status") or {}).get("lastSyncTime")
    if not raw:
        return None
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()


def api_down(root: Path, say: Progress, *, rate: float = 100.0, down_s: float = 5.0,
             timeout: float = 90.0) -> dict[str, Any]:
    """Kill each site's API server under load; see the module doc.  Returns the figures
    with ``ok``."""
    from dr_kit import snapshots
    from dr_kit.lab import site
    from dr_kit.operator.cli import protect

    lab = LabDir.of(root / "lab")
    say(f"  starting a lab in {lab.root}, the shop at {rate:g} tx/s ...")
    manager.up(lab.root, rate=rate, timeout=180)
    try:
        state = protect(SHOP_NAMESPACE, lab_dir=lab.root, wait=60)
        if state.get("state") != "Protected":
            raise Unavailable(f"drill: the shop was not protected: {state}")
        main, backup = site("main", lab.root), site("backup", lab.root)
        vgr_name = main.kube.items("VolumeGroupReplication", SHOP_NAMESPACE)[0]["metadata"]["name"]
        before = _pids(lab)
        outages = []
        for s in ("main", "backup"):
            name = f"{s}-api"
            committed0 = int(_shop(lab).get("committed") or 0)
            pids0 = _pids(lab)
            t_kill = time.time()
            pid = manager.kill(lab.root, name)
            say(f"  killed the {s} API server (pid {pid}, SIGKILL) under load")
            time.sleep(min(2.5, down_s))  # the processes notice and report (every second)
            degraded = manager.status(lab.root)["degraded"]
            for line in degraded:
                say(f"    lab status, degraded: {line}")
            time.sleep(max(0.0, down_s - (time.time() - t_kill)))
            committed_down = int(_shop(lab).get("committed") or 0) - committed0
            t_restart = time.time()
            manager.up(lab.root, timeout=60)
            restarted = sorted(n for n, p in _pids(lab).items() if pids0.get(n) != p)
            say(f"  started again like lab up: {', '.join(restarted)} "
                f"({time.time() - t_restart:.1f} s)")

            def recovered(t_restart: float = t_restart) -> bool | str:
                st = manager.status(lab.root)
                if st["degraded"]:
                    return "; ".join(st["degraded"])
                vgr = main.kube.get("VolumeGroupReplication", vgr_name, SHOP_NAMESPACE)
                t = _last_sync(vgr)
                if t is None or t < int(t_restart) + 1:
                    return f"lastSyncTime {((vgr or {}).get('status') or {}).get('lastSyncTime')}"
                return True

            try:
                _wait(recovered, f"the lab to recover from the {s} API server's loss", timeout)
                recovered_s: float | None = time.time() - t_restart
                say(f"  recovered {recovered_s:.1f} s after the restart began: nothing degraded, "
                    "the replication status written again")
            except Unavailable as e:
                recovered_s = None
                say(f"  NOT recovered: {e}")
            outages.append({"site": s, "down_s": round(t_restart - t_kill, 1),
                            "degraded_seen": degraded,
                            "shop_committed_while_down": committed_down,
                            "restarted": restarted,
                            "recovered_s": None if recovered_s is None else round(recovered_s, 1)})
        survived = [n for n in SURVIVORS if _pids(lab).get(n) == before.get(n)]

        # the operator and both plug-ins at work after the outages
        ns = "after-api-down"
        main.kube.create("Namespace", {"metadata": {"name": ns}})
        for pvc in ("db-a", "db-b"):
            main.kube.create("PersistentVolumeClaim", {"metadata": {"name": pvc, "namespace": ns},
                             "spec": {"storageClassName": STORAGE_CLASS,
                                      "accessModes": ["ReadWriteOnce"],
                                      "resources": {"requests": {"storage": "1Mi"}}}})
        t_new = time.time()
        new_state = protect(ns, lab_dir=lab.root, wait=timeout).get("state")
        new_bound = _wait(lambda: sorted(
            p["metadata"]["name"] for p in backup.kube.items("PersistentVolumeClaim", ns)
            if (p.get("status") or {}).get("phase") == "Bound") == ["db-a", "db-b"],
            f"the backup PVCs of namespace {ns}", timeout) is True
        say(f"  a namespace labelled after the outages: {new_state} in {time.time() - t_new:.1f} s")

        # nothing lost: every acknowledged order reaches the backup, in a consistent image
        manager.set_workload(lab.root, 0)
        rep0 = _wait(lambda: (lambda r: r if r.get("rate") == 0 and r.get("tx_last_second") == 0
                              else None)(_shop(lab)), "the shop to pause", 30)
        time.sleep(0.6)  # one more report after the pause
        shop = _shop(lab)
        group = next(g for g in main.array.status()["groups"] if g["side"] == "main"
                     and g["name"].startswith(f"{SHOP_NAMESPACE}-"))["name"]
        _wait(lambda: main.array.lag(group).sequence_lag == 0, "the backup to catch up", timeout)
        snap = "api-down-check"
        snapshots.create_snapshot_group(backup, snap, SHOP_NAMESPACE, timeout=timeout)
        with snapshots.open_snapshot_databases(backup, snap, SHOP_NAMESPACE, timeout=timeout) as dbs:
            consistent = bool(dbs.provenance.verdict.consistent)
            row = dbs.query("SELECT MAX(order_id) AS last, COUNT(*) AS n FROM orders").iloc[0]
            backup_last = int(row["last"])
        acked = int(shop.get("last_order") or rep0.get("last_order") or 0)
        say(f"  the shop acknowledged order {acked} last; the backup's snapshot holds up to "
            f"{backup_last}, {'consistent' if consistent else 'COLLAPSED'}")
        ok = (len(survived) == len(SURVIVORS) and all(o["recovered_s"] is not None for o in outages)
              and all(o["shop_committed_while_down"] > 0 for o in outages)
              and all(o["degraded_seen"] for o in outages)
              and new_state == "Protected" and new_bound and consistent and backup_last == acked)
        return {"ok": ok, "outages": outages, "survived": survived,
                "recovered_s_max": max((o["recovered_s"] or 0.0) for o in outages),
                "new_namespace": new_state, "orders_acknowledged": acked,
                "orders_at_backup": backup_last, "consistent": consistent,
                "shop_committed": int(shop.get("committed") or 0),
                "shop_failed": int(shop.get("failed") or 0)}
    finally:
        manager.down(lab.root, purge=True)


LAB_DRILLS: dict[str, tuple[Callable[[Path, Progress], dict[str, Any]], str]] = {
    "api-down": (api_down, "kill -9 each site's API server under load: plug-ins, operator and "
                 "shop recover in place, nothing lost"),
}

__all__ = ["api_down", "LAB_DRILLS", "SURVIVORS"]
