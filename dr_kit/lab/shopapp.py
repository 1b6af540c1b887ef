"""The shop application of the lab, as a process: ``python -m dr_kit.lab.shopapp --dir DIR``.

Like a pod using two PVCs, it resolves ``NS/sales-db`` and ``NS/stock-db`` to their PVs at
its site (``--site``, default main; ``--namespace``, default shop), attaches the array
volumes through that site's array data path, creates and seeds the databases when they
are new, and runs business transactions at the rate in its control file (``DIR/shop.json``
by default: ``{"rate": N}``; 0 pauses).  Every half second it reports to its status file
(``DIR/shop-status.json`` by default): committed and failed transactions, the commit
latency percentiles of the last second, the last order id, the order id it started
after, and its state (``running``, or ``degraded`` with the error and since when).  With ``--verify`` it first judges the two images it opened (the consistency
verdict, reported as ``verdict``) — what a DR test's or failover's application checks.

When its array goes away (killed, restarted), transactions fail; after two failures in a
row the shop closes its databases and opens them again through a fresh data path, with a
backoff (0.2 s doubling to 5 s), as an application reconnects to its storage: when the
array is back, SQLite's own recovery runs and the shop carries on from the last committed
order.  It needs its API server only to find its volumes when it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import apsw

from dr_kit.errors import DrKitError, Unavailable
from dr_kit.fsutil import write_json
from dr_kit.kube import Kube, api_client
from dr_kit.lab.layout import SHOP_NAMESPACE, SHOP_PVCS, LabDir
from dr_kit.shop.history import history_options
from dr_kit.shop.workload import Shop, error_line, judge_images, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.client import ArrayClient


def resolve_volumes(kube: Kube, namespace: str = SHOP_NAMESPACE, timeout: float = 30.0) -> dict[str, str]:
    """PVC name -> array volume, once the shop's PVCs are bound."""
    deadline = time.monotonic() + timeout
    while True:
        out: dict[str, str] = {}
        pvs = {pv["metadata"]["name"]: pv for pv in kube.items("PersistentVolume")}
        for pvc in SHOP_PVCS:
            p = kube.get("PersistentVolumeClaim", pvc, namespace)
            pv = pvs.get(((p or {}).get("spec") or {}).get("volumeName") or "")
            if p and p.get("status", {}).get("phase") == "Bound" and pv:
                out[pvc] = pv["spec"]["csi"]["volumeHandle"]
        if len(out) == len(SHOP_PVCS):
            return out
        if time.monotonic() > deadline:
            raise Unavailable(f"PVCs {', '.join(SHOP_PVCS)} in namespace {namespace} are not bound "
                              f"after {timeout:.0f} s")
        time.sleep(0.2)


class ShopApp:
    def __init__(self, lab: LabDir, *, site: str = "main", namespace: str = SHOP_NAMESPACE,
                 status: str | None = None, control: str | None = None, verify: bool = False) -> None:
        self.lab = lab
        self.site, self.namespace = site, namespace
        self.status_path = Path(status) if status else lab.shop_status
        self.control_path = Path(control) if control else lab.shop_control
        state = lab.load()
        ep = lab.array_endpoint(site, state)
        self.array = ArrayClient(ep["mgmt_url"], ep["data_socket"], token=lab.array_token(site))
        self.kube = Kube(api_client(lab.kubeconfig, site), where=f"the {site} site's API server")
        self.volumes = resolve_volumes(self.kube, namespace)
        vfs = sqlite_vfs.register(f"lab-shop-{site}-{namespace}", self.array.open_volume)
        self.stock, self.sales = open_shop(vfs, stock_volume=self.volumes["stock-db"],
                                           sales_volume=self.volumes["sales-db"])
        self.verdict = judge_images(self.stock, self.sales).to_dict() if verify else None
        seed(self.stock, self.sales, None, **history_options())  # 180 days of history when new
        self.shop = Shop(self.stock, self.sales, keep_latencies=0)
        self.vfs = vfs
        self.first_order = self.shop.next_order - 1  # the last order in the images it opened
        self.stopping = threading.Event()
        self.failures_in_row = 0
        self.reconnects = 0
        self.degraded_since: float | None = None
        self.recent: deque[tuple[float, float]] = deque(maxlen=5000)  # (time, latency ms)
        self.committed = self.failed = 0
        self.last_error = ""
        self.last_order = self.shop.next_order - 1
        self.rate = self._read_rate()

    def _read_rate(self) -> float:
        """The rate in ``DIR/shop.json``, as ``dr-kit lab workload`` checks it (a file edited
        by hand with a rate out of bounds pauses the shop rather than spinning it)."""
        from dr_kit.lab.manager import check_rate

        try:
            return check_rate(json.loads(self.control_path.read_text()).get("rate", 0.0))
        except (OSError, ValueError, TypeError, AttributeError, DrKitError):
            return 0.0

    def _report(self) -> None:
        now = time.time()
        window = [lat for t, lat in self.recent if now - t <= 1.0]
        lats = sorted(window)
        status: dict[str, Any] = {
            "pid": os.getpid(), "rate": self.rate, "committed": self.committed, "failed": self.failed,
            "last_order": self.last_order, "last_error": self.last_error, "updated": now,
            "volumes": self.volumes, "tx_last_second": len(window), "site": self.site,
            "namespace": self.namespace, "started_after_order": self.first_order,
            "verdict": self.verdict,
            "p50_ms": statistics.median(lats) if lats else None,
            "p99_ms": lats[min(len(lats) - 1, int(len(lats) * 0.99))] if lats else None,
            "state": "degraded" if self.degraded_since is not None else "running",
            "degraded_since": self.degraded_since, "reconnects": self.reconnects}
        try:
            write_json(self.status_path, status)
        except OSError:
            pass  # the lab folder is gone (a purge while stopping): nobody to report to

    def _reopen(self) -> bool:
        """Close the databases and open them again (a fresh data path); False when the
        array does not answer yet."""
        for conn in (self.stock, self.sales):
            try:
                conn.close()
            except (apsw.Error, DrKitError, OSError):
                pass
        try:
            # a fresh data path: the array may be a new process (new socket, new port), and
            # the VFS's cached devices still hold the dead one's connections
            state = self.lab.load()
            ep = self.lab.array_endpoint(self.site, state)
            self.array = ArrayClient(ep["mgmt_url"], ep["data_socket"],
                                     token=self.lab.array_token(self.site))
            self.vfs = sqlite_vfs.register(f"lab-shop-{self.site}-{self.namespace}",
                                           self.array.open_volume)
            for vol in self.volumes.values():
                try:
                    self.vfs.forget(vol)
                except (DrKitError, OSError):
                    pass  # the old connection is gone already
            self.stock, self.sales = open_shop(self.vfs, stock_volume=self.volumes["stock-db"],
                                               sales_volume=self.volumes["sales-db"])
            self.shop = Shop(self.stock, self.sales, keep_latencies=0)
        except (apsw.Error, DrKitError, OSError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            return False
        self.reconnects += 1
        self.last_order = self.shop.next_order - 1
        return True

    def run(self) -> None:
        next_report = 0.0
        next_tx = time.monotonic()
        last_rate_check = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - last_rate_check > 0.5:
                rate = self._read_rate()
                if rate != self.rate:
                    self.rate = rate
                    next_tx = now
                last_rate_check = now
            if now >= next_report:
                self._report()
                next_report = now + 0.5
            if self.rate <= 0:
                self.stopping.wait(0.1)
                continue
            if now < next_tx:
                self.stopping.wait(min(next_tx - now, 0.1))
                continue
            t0 = time.perf_counter()
            try:
                self.last_order = self.shop.transact()
                self.committed += 1
                self.recent.append((time.time(), (time.perf_counter() - t0) * 1000))
                self.failures_in_row = 0
                self.degraded_since = None
            except (apsw.Error, DrKitError, OSError) as e:
                self.failed += 1
                self.failures_in_row += 1
                self.last_error = error_line(e)
                if self.degraded_since is None:
                    self.degraded_since = time.time()
                self._recover()
            next_tx = max(next_tx + 1.0 / self.rate, time.monotonic() - 1.0)
        self._report()

    def _recover(self) -> None:
        """After two failures in a row: reopen the databases, with a backoff, until they
        open or the shop is stopped."""
        if self.failures_in_row < 2:
            self.stopping.wait(0.2)
            return
        delay = 0.2
        while not self.stopping.is_set():
            self._report()
            if self._reopen():
                return
            self.stopping.wait(delay)
            delay = min(delay * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.lab.shopapp")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--site", default="main", choices=("main", "backup"))
    ap.add_argument("--namespace", default=SHOP_NAMESPACE)
    ap.add_argument("--status", help="status file (default DIR/shop-status.json)")
    ap.add_argument("--control", help="control file with the rate (default DIR/shop.json)")
    ap.add_argument("--verify", action="store_true", help="judge the images before the first transaction")
    a = ap.parse_args(argv)
    try:
        app = ShopApp(LabDir.of(a.dir), site=a.site, namespace=a.namespace, status=a.status,
                      control=a.control, verify=a.verify)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app._report()
    if a.ready_file:
        write_json(a.ready_file, {"pid": os.getpid(), "volumes": app.volumes, "site": app.site,
                                  "namespace": app.namespace, "started_after_order": app.first_order,
                                  "verdict": app.verdict})
    signal.signal(signal.SIGTERM, lambda *_: app.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: app.stopping.set())
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
