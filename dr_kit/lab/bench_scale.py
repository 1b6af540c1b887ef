"""``dr-kit bench --scale NSxPVC``: many applications protected at once, on a fresh lab.

    result = run(100, 10, progress=print)       # the figures below, as numbers
    print(render(result))                       # the table, with the targets

Steps (every figure is measured in this one run):

1. a lab in a temporary folder, the shop protected and running at ``rate`` transactions/s;
2. ``NS`` namespaces of ``PVC`` PVCs of 64 MiB each, created through the API and bound by
   the lab's provisioner; about 1 MiB of real (non-zero) data is written into each volume
   through the main array's data path, spread over 16 extents, so the copies carry data;
3. the shop's time lag is read from the main array every 0.1 s from here on, and the
   threads, RSS and CPU time of every lab process every 0.5 s; ``steady`` seconds pass;
4. every namespace is labelled at once (four writers); then
   - ``protect_all_s``: labels -> every VolumeGroupReplication says replicating (Completed,
     not Degraded, not Resyncing) and every backup PVC is bound,
   - ``copy_all_s``: labels -> every array group is past its initial copy (state ``pair``);
5. ``shop_lag_p99_ms_steady`` (before the labels) and ``shop_lag_p99_ms_during_copy``
   (labels -> all copies done); ``backup_over_main_allocated``: the allocated bytes
   (``st_blocks``) of every backup volume over those of every main volume; ``lag_read_s``:
   one read of every group's lag (``dr_kit.lag.read_lag``, what ``dr-kit lag`` and the
   exporter do; the median of three); ``threads_max`` and ``rss_mb_max``: the largest over
   the lab's processes, with each process's own figures beside them.

It starts and inspects a whole lab, so it lives with the lab; ``dr-kit bench --scale``
reaches it through the command line's entry point (the library never imports the lab).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import math
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from dr_kit import published
from dr_kit.errors import DrKitError, InvalidInput, Unavailable
from dr_kit.kube import Kube, api_client
from dr_kit.lab import manager
from dr_kit.lab.controllers import group_name
from dr_kit.lab.layout import SHOP_NAMESPACE, STORAGE_CLASS, LabDir
from dr_kit.storage.client import ArrayClient

Progress = Callable[[str], None]

MAX_NAMESPACES = 1000
MAX_PVCS = 100  # a VolumeGroupReplication holds at most 100 PVCs (csi-addons)
DATA_EXTENTS = 16  # the ~1 MiB of data per volume, in this many extents spread over it

# (key, what, target, comparison); the last one compares two measured figures
TARGETS: list[tuple[str, str, float, str]] = [
    ("protect_all_s", "labels -> all protected (s)", 60, "<="),
    ("copy_all_s", "labels -> all initial copies done (s)", 300, "<="),
    ("backup_over_main_allocated", "backup / main allocated bytes", 1.2, "<="),
    ("threads_max", "threads, largest lab process", 64, "<="),
    ("rss_mb_max", "RSS MB, largest lab process", 300, "<="),
    ("lag_read_s", "one read of every group's lag (s)", 1, "<="),
    ("shop_lag_p99_ms_steady", "shop lag p99 before the labels (ms)", math.nan, ""),
    ("shop_lag_p99_ms_during_copy", "shop lag p99 during the copies (ms)", 100, "<="),
]
DURING_OVER_STEADY = 5.0  # and during <= 5 x steady


def parse_scale(text: str) -> tuple[int, int]:
    """``"100x10"`` -> (100, 10): namespaces and PVCs per namespace."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise InvalidInput(f"--scale takes NSxPVC (namespaces x PVCs each, e.g. 100x10), got {text!r}")
    ns, pvcs = int(m.group(1)), int(m.group(2))
    if not 1 <= ns <= MAX_NAMESPACES:
        raise InvalidInput(f"--scale: namespaces must be 1..{MAX_NAMESPACES}, got {ns}")
    if not 1 <= pvcs <= MAX_PVCS:
        raise InvalidInput(f"--scale: PVCs per namespace must be 1..{MAX_PVCS} (a "
                           f"VolumeGroupReplication holds at most {MAX_PVCS}), got {pvcs}")
    return ns, pvcs


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, math.ceil(0.99 * len(v)) - 1)]


class _Monitor:
    """Samples the shop group's lag (0.1 s) and every lab process (0.5 s) in two threads."""

    def __init__(self, lab: LabDir, array: ArrayClient, shop_group: str) -> None:
        self.lab, self.array, self.shop_group = lab, array, shop_group
        self.lags: list[tuple[float, float | None]] = []  # (monotonic time, lag ms)
        self.procs: dict[str, psutil.Process] = {}
        for name, rec in (lab.load().get("processes") or {}).items():
            try:
                p = psutil.Process(rec["pid"])
                if abs(p.create_time() - float(rec.get("create_time") or 0)) < 0.05:
                    self.procs[name] = p
            except psutil.Error:
                pass
        self.threads: dict[str, int] = {}
        self.rss: dict[str, int] = {}
        self.cpu0: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.stop = threading.Event()
        self._workers = [threading.Thread(target=self._lag_loop, daemon=True, name="scale-lag"),
                         threading.Thread(target=self._proc_loop, daemon=True, name="scale-procs")]

    def start(self) -> _Monitor:
        self._sample_procs()
        self.cpu0 = dict(self.cpu)
        for t in self._workers:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(5)
        self._sample_procs()

    def mark_cpu(self) -> None:
        """CPU time is counted from here (the labels)."""
        self._sample_procs()
        self.cpu0 = dict(self.cpu)

    def _lag_loop(self) -> None:
        while not self.stop.wait(0.1):
            try:
                t = self.array.lag(self.shop_group).time_lag_s
            except DrKitError:
                t = None
            self.lags.append((time.monotonic(), None if t is None else t * 1000.0))

    def _proc_loop(self) -> None:
        while not self.stop.wait(0.5):
            self._sample_procs()

    def _sample_procs(self) -> None:
        for name, p in self.procs.items():
            try:
                with p.oneshot():
                    self.threads[name] = max(self.threads.get(name, 0), p.num_threads())
                    self.rss[name] = max(self.rss.get(name, 0), p.memory_info().rss)
                    ct = p.cpu_times()
                    self.cpu[name] = ct.user + ct.system
            except psutil.Error:
                pass

    def lag_p99(self, t0: float, t1: float) -> tuple[float | None, int]:
        """p99 of the known lag samples in [t0, t1] (ms) and the number of unknown ones."""
        window = [v for t, v in self.lags if t0 <= t <= t1]
        return _p99([v for v in window if v is not None]), sum(v is None for v in window)


def _allocated(folder: Path) -> int:
    total = 0
    for f in folder.glob("*.vol"):
        try:
            total += os.stat(f).st_blocks * 512
        except OSError:
            pass
    return total


def _pvc(name: str, size: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}}}


def _in_pool(fn: Callable[[Any], Any], items: list[Any], workers: int = 4) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _replicating(vgr: dict[str, Any]) -> bool:
    c = {x.get("type"): x.get("status") for x in (vgr.get("status") or {}).get("conditions") or []}
    return (c.get("Completed"), c.get("Degraded"), c.get("Resyncing")) == ("True", "False", "False")


def run(namespaces: int, pvcs: int, *, rate: float = 100.0, size: str = "64Mi",
        data_bytes: int = 1 << 20, steady_s: float = 10.0, timeout: float = 900.0,
        workdir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
        series: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the scale benchmark on a fresh lab (in ``workdir``, kept, or a temporary folder,
    removed); returns the figures (see the module doc).  ``series``, when given, receives
    the time series behind them: ``shop_lag`` ((seconds since the labels, lag ms or None)
    per sample) and ``groups`` ((seconds, groups on the array, groups in pair state, and
    the shop group's state, connected, journal bytes used, main position, received and
    applied at the backup, last error))."""
    say = progress or (lambda s: None)
    if workdir is not None and LabDir.of(workdir).exists():
        raise InvalidInput(f"{workdir} holds a lab already; the scale benchmark needs a fresh one")
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="dr-kit-scale-"))
    lab = LabDir.of(root / "lab")
    out: dict[str, Any] = {"namespaces": namespaces, "volumes": namespaces * pvcs}
    out["cpus"] = psutil.cpu_count() or 0
    out["load_avg_1m_start"] = round(psutil.getloadavg()[0], 2)
    t_start = time.monotonic()
    try:
        say(f"starting a lab in {lab.root} (shop at {rate:g} tx/s) ...")
        manager.up(lab.root, rate=rate, timeout=180)
        main = Kube(api_client(lab.kubeconfig, "main"), where="the main API server")
        backup = Kube(api_client(lab.kubeconfig, "backup"), where="the backup API server")
        from dr_kit.operator.cli import protect
        from dr_kit.operator.policy import Policy

        policy = Policy()
        shop = protect(SHOP_NAMESPACE, lab_dir=lab.root, wait=120)
        if shop.get("state") != "Protected":
            raise Unavailable(f"the shop was not protected: {shop}")
        vgr = main.items("VolumeGroupReplication", SHOP_NAMESPACE)[0]
        shop_group = (vgr["metadata"].get("annotations") or {}).get(published.ARRAY_GROUP) or \
            group_name(SHOP_NAMESPACE, vgr["metadata"]["name"])
        state = lab.load()
        ep = lab.array_endpoint("main", state)
        array = ArrayClient(ep["mgmt_url"], ep["data_socket"], token=lab.array_token("main"))
        bep = lab.array_endpoint("backup", state)
        backup_array = ArrayClient(bep["mgmt_url"], token=lab.array_token("backup"))

        names = [f"app{i:04d}" for i in range(namespaces)]
        say(f"creating {namespaces} namespaces x {pvcs} PVCs of {size} ...")
        t = time.monotonic()

        def create(ns: str) -> None:
            main.create("Namespace", {"metadata": {"name": ns}})
            for j in range(pvcs):
                main.create("PersistentVolumeClaim", {**_pvc(f"vol{j:02d}", size),
                                                      "metadata": {"name": f"vol{j:02d}", "namespace": ns}})

        _in_pool(create, names)
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while True:
            bound = [p for p in main.items("PersistentVolumeClaim")
                     if p["metadata"]["namespace"] in wanted
                     and (p.get("status") or {}).get("phase") == "Bound"]
            if len(bound) == namespaces * pvcs:
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"only {len(bound)} of {namespaces * pvcs} PVCs bound in time")
            time.sleep(0.5)
        out["create_bound_s"] = round(time.monotonic() - t, 1)

        say(f"writing {data_bytes / 2**20:g} MiB of data into each of the {len(bound)} volumes ...")
        t = time.monotonic()
        pvs = {pv["metadata"]["name"]: pv for pv in main.items("PersistentVolume")}
        vols = [pvs[p["spec"]["volumeName"]]["spec"]["csi"]["volumeHandle"] for p in bound]
        block = random.Random(1).randbytes(max(1, data_bytes // DATA_EXTENTS))

        def fill(vol: str) -> None:
            v = array.open_volume(vol)
            try:
                stride = v.size // DATA_EXTENTS
                tag = hashlib.sha256(vol.encode()).digest()
                v.writev([(i * stride, tag + block[len(tag):]) for i in range(DATA_EXTENTS)])
                v.sync()
            finally:
                v.close()

        _in_pool(fill, vols)
        out["data_write_s"] = round(time.monotonic() - t, 1)

        mon = _Monitor(lab, array, shop_group).start()
        try:
            say(f"shop steady for {steady_s:g} s ...")
            t_steady = time.monotonic()
            time.sleep(steady_s)
            say(f"labelling {namespaces} namespaces at once ...")
            mon.mark_cpu()
            t_label = time.monotonic()
            _in_pool(lambda ns: main.patch("Namespace", ns, {"metadata": {"labels": {
                policy.label_key: policy.label_value}}}), names)
            out["label_all_s"] = round(time.monotonic() - t_label, 2)
            protect_s = copy_s = None
            groups_expected = namespaces
            progress_rows: list[tuple[Any, ...]] = []
            last_note = 0.0
            while time.monotonic() - t_label < timeout:
                now = time.monotonic()
                if copy_s is None:
                    all_groups = array.status()["groups"]
                    gs = [g for g in all_groups
                          if g.get("side") == "main" and g["name"].split("-", 1)[0] in wanted]
                    paired = sum(1 for g in gs if g.get("state") == "pair")
                    sg: dict[str, Any] = next((g for g in all_groups
                                               if g["name"] == shop_group), {})
                    bg: dict[str, Any] = next((g for g in backup_array.status()["groups"]
                                               if g["name"] == shop_group), {})
                    progress_rows.append((round(now - t_label, 2), len(gs), paired,
                                          sg.get("state"), sg.get("connected"),
                                          (sg.get("journal") or {}).get("used_bytes"),
                                          (sg.get("lag") or {}).get("main"), bg.get("received"),
                                          bg.get("applied"), sg.get("last_error")))
                    if len(gs) == groups_expected and paired == len(gs):
                        copy_s = now - t_label
                if protect_s is None:
                    vgrs = [v for v in main.items("VolumeGroupReplication")
                            if v["metadata"]["namespace"] in wanted]
                    good = sum(1 for v in vgrs if _replicating(v))
                    bbound = sum(1 for p in backup.items("PersistentVolumeClaim")
                                 if p["metadata"]["namespace"] in wanted
                                 and (p.get("status") or {}).get("phase") == "Bound")
                    if good == namespaces and bbound == namespaces * pvcs:
                        protect_s = now - t_label
                    elif now - last_note > 10:
                        say(f"  {now - t_label:.0f} s: {good}/{namespaces} groups replicating, "
                            f"{bbound}/{namespaces * pvcs} backup PVCs bound")
                        last_note = now
                if protect_s is not None and copy_s is not None:
                    break
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            t_done = time.monotonic()
            mon.finish()
        finally:
            mon.stop.set()
        out["protect_all_s"] = None if protect_s is None else round(protect_s, 1)
        out["copy_all_s"] = None if copy_s is None else round(copy_s, 1)
        steady, unknown_steady = mon.lag_p99(t_steady, t_label)
        during, unknown_during = mon.lag_p99(t_label, t_label + (copy_s or (t_done - t_label)))
        out["shop_lag_p99_ms_steady"] = None if steady is None else round(steady, 1)
        out["shop_lag_p99_ms_during_copy"] = None if during is None else round(during, 1)
        out["shop_lag_samples_unknown"] = unknown_steady + unknown_during
        if series is not None:
            series["shop_lag"] = [(round(t - t_label, 2), v) for t, v in mon.lags]
            series["groups"] = progress_rows
        main_alloc = _allocated(lab.array_dir("main") / "volumes")
        backup_alloc = _allocated(lab.array_dir("backup") / "volumes")
        out["main_allocated_mb"] = round(main_alloc / 1e6, 1)
        out["backup_allocated_mb"] = round(backup_alloc / 1e6, 1)
        out["backup_over_main_allocated"] = round(backup_alloc / main_alloc, 3) if main_alloc else None

        from dr_kit import lag
        from dr_kit.lab import site

        main_site = site("main", lab.root)
        reads, n_groups = [], 0
        for _ in range(3):
            t = time.monotonic()
            n_groups = len(lag.read_lag(main_site))
            reads.append(time.monotonic() - t)
        out["lag_read_s"] = round(statistics.median(reads), 3)
        out["lag_read_groups"] = n_groups
        out["threads_max"] = max(mon.threads.values())
        out["rss_mb_max"] = round(max(mon.rss.values()) / 2**20, 1)
        for name in sorted(mon.procs):
            key = name.replace("-", "_")
            out[f"threads_max_{key}"] = mon.threads.get(name, 0)
            out[f"rss_mb_max_{key}"] = round(mon.rss.get(name, 0) / 2**20, 1)
            out[f"cpu_s_{key}"] = round(mon.cpu.get(name, 0.0) - mon.cpu0.get(name, 0.0), 1)
        out["load_avg_1m_end"] = round(psutil.getloadavg()[0], 2)
        out["total_s"] = round(time.monotonic() - t_start, 1)
        return out
    finally:
        try:
            if lab.exists():
                manager.down(lab.root, purge=workdir is None)
        finally:
            if workdir is None:
                shutil.rmtree(root, ignore_errors=True)


def verdicts(r: dict[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    """(what, measured, target, met) rows of the table; met is None when not measured."""
    rows: list[tuple[str, Any, str, bool | None]] = []
    for key, what, goal, op in TARGETS:
        v = r.get(key)
        if not op:
            rows.append((what, v, "", None))
            continue
        rows.append((what, v, f"{op} {goal:g}", None if v is None else v <= goal))
    steady, during = r.get("shop_lag_p99_ms_steady"), r.get("shop_lag_p99_ms_during_copy")
    ratio = during / steady if during is not None and steady else None
    rows.append(("shop lag p99 during / steady", None if ratio is None else round(ratio, 2),
                 f"<= {DURING_OVER_STEADY:g}", None if ratio is None else ratio <= DURING_OVER_STEADY))
    return rows


def render(r: dict[str, Any]) -> str:
    """The printed table: the targets, then each lab process's threads, RSS and CPU."""
    lines = [f"dr-kit bench --scale {r['namespaces']}x{r['volumes'] // max(1, r['namespaces'])}: "
             f"{r['namespaces']} namespaces, {r['volumes']} volumes of 64 MiB with ~1 MiB of data each",
             "", f"{'figure':<40} {'measured':>10}   {'target':<8} verdict"]
    for what, v, goal, ok in verdicts(r):
        shown = "timeout" if v is None else f"{v:g}"
        verdict = "" if ok is None and not goal else "not measured" if ok is None else \
            "met" if ok else "MISSED"
        lines.append(f"{what:<40} {shown:>10}   {goal:<8} {verdict}".rstrip())
    procs = sorted({k[len("threads_max_"):] for k in r if k.startswith("threads_max_")})
    lines += ["", f"{'lab process':<22} {'threads max':>11} {'RSS MB max':>11} {'CPU s':>8}"]
    for p in procs:
        lines.append(f"{p.replace('_', '-'):<22} {r[f'threads_max_{p}']:>11} "
                     f"{r[f'rss_mb_max_{p}']:>11.1f} {r[f'cpu_s_{p}']:>8.1f}")
    lines += ["", f"labels written in {r.get('label_all_s')} s; PVCs created and bound in "
              f"{r.get('create_bound_s')} s; allocated: main {r.get('main_allocated_mb')} MB, "
              f"backup {r.get('backup_allocated_mb')} MB; lag read of {r.get('lag_read_groups')} groups; "
              f"CPU seconds counted from the labels to the end",
              f"load average (1 min) on {r.get('cpus')} CPUs: {r.get('load_avg_1m_start')} at the "
              f"start, {r.get('load_avg_1m_end')} at the end; {r.get('total_s')} s in all"]
    return "\n".join(lines)




@contextlib.contextmanager
def _stopped_as_by_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, a closed terminal, a CI timeout) end the benchmark as
    Ctrl-C does: :func:`run`'s cleanup stops the lab it started and removes its folder.
    A second signal during that cleanup is ignored.  Only on the main thread (where
    signal handlers live); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    ctrl_c = signal.getsignal(signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}  # nohup-style ignoring is kept
    previous[signal.SIGINT] = ctrl_c
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def cli(args: Any) -> int:
    """``dr-kit bench --scale NSxPVC [--json] [--out DIR] [--workdir DIR]``."""
    import json

    ns, pvcs = parse_scale(args.scale)
    series: dict[str, Any] = {}
    with _stopped_as_by_ctrl_c():
        result = run(ns, pvcs, workdir=args.workdir, series=series,
                     progress=None if args.json else (lambda s: print(s, flush=True)))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(result, indent=2))
        (out / "scale-series.json").write_text(json.dumps(series))
    if args.json:
        print(json.dumps(result))
    else:
        print()
        print(render(result))
    return 0


__all__ = ["run", "render", "verdicts", "parse_scale", "cli", "TARGETS"]
