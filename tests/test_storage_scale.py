"""Thin copies, fair copies and bounded resources.

- Thin stays thin: an initial copy or a resync never allocates at the backup what the main
  never wrote (or zeroed), snapshots and clones never store holes or zeros.
- Copies stream with windowed acknowledgements and yield to groups that already replicate.
- Threads per process do not grow with groups or volumes.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from dr_kit.storage.array import Array
from dr_kit.storage.blocks import CHUNK, CloneVolume, CowStore, FileVolume, SnapshotView, is_hole
from dr_kit.storage.client import ArrayClient, create_pair
from dr_kit.storage.replication import ReplicationService

MiB = 1 << 20


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def caught_up(mc: ArrayClient, group: str, timeout: float = 60.0) -> dict:
    return mc.wait_group(group, lambda s: s["state"] == "pair" and s["lag"]["consistent"] is True
                         and s["lag"]["sequence_lag"] == 0, timeout=timeout, what="pair, caught up")


def image(client: ArrayClient, volume: str) -> bytes:
    v = client.open_volume(volume)
    try:
        return v.read(0, v.size)
    finally:
        v.close()


# -- thin --------------------------------------------------------------------------------------


def test_snapshots_and_clones_do_not_store_holes_or_zeros(tmp_path):
    live = FileVolume(tmp_path / "live.vol", 64 * CHUNK, create=True)
    live.write(0, b"D" * CHUNK)  # chunk 0 holds data, chunk 1 zeros, the rest holes
    live.write(CHUNK, bytes(CHUNK))
    store = CowStore(tmp_path / "snap", live, create=True)
    for c in range(64):  # every chunk overwritten after the snapshot
        store.preserve(c * CHUNK, CHUNK)
        live.write(c * CHUNK, b"N" * CHUNK)
    assert allocated(store.data.path) <= 2 * CHUNK, "a snapshot stored holes or zeros"
    view = SnapshotView(store)
    assert view.read(0, CHUNK) == b"D" * CHUNK and view.read(CHUNK, 2 * CHUNK) == bytes(2 * CHUNK)
    clone = CloneVolume(tmp_path / "clone", view, create=True)
    for c in range(1, 64):  # a small write into each chunk that was a hole or zeros
        clone.write(c * CHUNK + 100, b"c")
    assert allocated(clone.data.path) <= 63 * 8192, "a clone copied zeros up"
    assert clone.read(CHUNK, 200) == bytes(100) + b"c" + bytes(99)
    assert clone.read(0, CHUNK) == b"D" * CHUNK


def test_initial_copy_of_a_sparse_volume_stays_thin(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("sparse", 64 * MiB)
    v = mc.open_volume("sparse")
    for i in range(8):  # 8 scattered regions of data ...
        v.write(i * 7 * MiB + 12345, os.urandom(100_000))
    v.write(40 * MiB, bytes(2 * MiB))  # ... and 2 MiB of zeros the main allocated
    v.close()
    main_alloc = allocated(main.root / "volumes" / "sparse.vol")
    assert main_alloc >= 2 * MiB
    create_pair(mc, bc, "g", ["sparse"], backup.replication)
    st = caught_up(mc, "g")
    assert st["copy"]["total"] == 1024 and st["copy"]["done"] == 1024
    backup_alloc = allocated(backup.root / "volumes" / "sparse.vol")
    assert backup_alloc <= main_alloc - 2 * MiB + 64 * 1024, \
        f"backup allocated {backup_alloc} bytes for {main_alloc - 2 * MiB} bytes of data"
    assert image(bc, "sparse") == image(mc, "sparse")


def test_resync_makes_a_region_the_main_zeroed_a_hole_at_the_backup(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol", 16 * MiB)
    v = mc.open_volume("vol")
    old = os.urandom(MiB)
    v.write(4 * MiB, old)  # region R
    v.write(8 * MiB, os.urandom(MiB))
    create_pair(mc, bc, "g", ["vol"], backup.replication, auto_resync=False)
    caught_up(mc, "g")
    bpath = backup.root / "volumes" / "vol.vol"
    before = allocated(bpath)
    assert not is_hole(os.open(bpath, os.O_RDONLY), 4 * MiB, MiB)

    mc.group_action("g", "suspend")
    v.write(4 * MiB, bytes(MiB))  # the main zeroes region R (its blocks stay allocated there)
    v.write(12 * MiB, b"new data after the split" * 100)
    v.close()
    mc.group_action("g", "resync")
    caught_up(mc, "g")
    assert image(bc, "vol") == image(mc, "vol")
    fd = os.open(bpath, os.O_RDONLY)
    try:
        assert is_hole(fd, 4 * MiB, MiB), "the zeroed region still takes blocks at the backup"
    finally:
        os.close(fd)
    assert allocated(bpath) <= before - MiB + 64 * 1024
    # the guard snapshot kept region R as it was, and stays thin itself
    snaps = {s["name"]: s for s in bc.status()["snapshots"]}
    assert "resync-guard-g" in snaps
    bc.create_clone("guard-img", "resync-guard-g", "vol")
    g = bc.open_volume("guard-img")
    assert g.read(4 * MiB, MiB) == old
    g.close()
    cow = backup.root / "snapshots" / "resync-guard-g" / "vol" / "cow.data"
    assert allocated(cow) <= MiB + 2 * 64 * 1024


# -- fair and streaming --------------------------------------------------------------------------


def test_a_replicating_group_keeps_its_lag_while_other_groups_copy(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    link = arrays.link(backup.replication, rate_mbit=400)  # 50 MB/s: the copies take a while
    mc.create_volume("app", 4 * MiB)
    create_pair(mc, bc, "app", ["app"], link.address)
    caught_up(mc, "app")
    bulk = [f"bulk-{i}" for i in range(8)]
    chunk = os.urandom(MiB)
    for name in bulk:  # 8 x 16 MiB of real data to copy
        mc.create_volume(name, 16 * MiB)
        bv = mc.open_volume(name)
        for off in range(0, 16 * MiB, MiB):
            bv.write(off, chunk)
        bv.close()

    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def app_writes() -> None:
        av = mc.open_volume("app")
        i = 0
        try:
            while not stop.is_set():
                av.write((i % 512) * 4096, os.urandom(4096))
                i += 1
                time.sleep(0.005)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            av.close()

    def sample() -> None:
        while not stop.is_set():
            lag = mc.lag("app")
            if lag.time_lag_s is not None:
                samples.append((time.monotonic(), lag.time_lag_s))
            time.sleep(0.02)

    threads = [threading.Thread(target=app_writes, daemon=True), threading.Thread(target=sample, daemon=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        steady = [lag for _, lag in samples]
        t0 = time.monotonic()
        for name in bulk:
            create_pair(mc, bc, name, [name], link.address)
        for name in bulk:
            caught_up(mc, name, timeout=120)
        t1 = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors
    during = [lag for t, lag in samples if t0 <= t <= t1]
    assert t1 - t0 > 1.5, "the copies were too quick to tell anything"
    assert len(during) > 20
    p99 = sorted(during)[int(0.99 * (len(during) - 1))]
    print(f"app lag p50/p99 steady {statistics.median(steady) * 1000:.1f}/"
          f"{sorted(steady)[int(0.99 * (len(steady) - 1))] * 1000:.1f} ms; during "
          f"{t1 - t0:.1f} s of copies {statistics.median(during) * 1000:.1f}/{p99 * 1000:.1f} ms")
    # a copy queued in front of the application's entries would show seconds of lag here
    assert p99 < 0.5, f"the application's lag p99 was {p99 * 1000:.0f} ms while other groups copied"
    caught_up(mc, "app")
    assert image(bc, "app") == image(mc, "app")
    assert image(bc, "bulk-3") == image(mc, "bulk-3")


class _Gate:
    """Wraps a callable so that it blocks, in whatever thread calls it, until opened."""

    def __init__(self, fn) -> None:
        self.fn, self.entered, self.opened = fn, threading.Event(), threading.Event()

    def __call__(self, *args, **kw):
        self.entered.set()
        self.opened.wait(30)
        return self.fn(*args, **kw)


def test_a_new_groups_slow_setup_at_the_backup_does_not_hold_running_groups(tmp_path):
    """Creating a group's backup side (volumes, journal, array.json) and beginning its copy
    are disk work that takes tens of milliseconds per group, seconds when a hundred groups
    announce themselves at once on a loaded disk.  They run in the backup's helper thread:
    while they are held up indefinitely here, the event loop keeps receiving and applying the
    entries of the group already replicating (in-process arrays, no link)."""
    main, backup = Array(tmp_path / "main", "main"), Array(tmp_path / "backup", "backup")
    msvc, bsvc = ReplicationService(main), ReplicationService(backup)
    gates: list[_Gate] = []
    try:
        msvc.start()
        bsvc.start()
        remote = f"127.0.0.1:{bsvc.port}"
        for name in ("app", "new"):
            main.create_volume(name, 4 * MiB)
            main.write(name, 0, os.urandom(MiB))
        for name in ("app", "new"):
            secret = secrets.token_hex(32)
            backup.authorize_pair(name, secret)
            if name == "app":
                main.create_primary_group(name, [name], remote, secret=secret)
            else:  # its backup side's creation is held up ...
                create = backup.ensure_secondary_group = _Gate(backup.ensure_secondary_group)
                gates.append(create)
                main.create_primary_group(name, [name], remote, secret=secret)
            msvc.ensure_threads()
            if name == "app":
                wait_for(lambda: main.primary["app"].lag().caught_up, what="app replicating")

        def app_writes_arrive(i: int) -> None:
            main.write("app", i * 4096, os.urandom(4096))
            head = main.primary["app"].journal.next_seq - 1
            wait_for(lambda: backup.secondary["app"].applied_seq >= head, timeout=10,
                     what=f"the app's entry {head} applied at the backup")

        assert create.entered.wait(10), "the new group was never announced"
        app_writes_arrive(1)  # ... while the app's entries keep flowing
        assert "new" not in backup.secondary and not create.opened.is_set()

        begin = bsvc.start_copy = _Gate(bsvc.start_copy)  # the copy's beginning held up ...
        gates.append(begin)
        create.opened.set()
        assert begin.entered.wait(10), "the new group's copy never began"
        app_writes_arrive(2)  # ... and still the app's entries flow
        begin.opened.set()
        wait_for(lambda: main.primary["new"].lag().caught_up, what="the new group copied")
        assert backup.volume("new").read(0, 4 * MiB) == main.volume("new").read(0, 4 * MiB)
        wait_for(lambda: main.primary["app"].lag().caught_up, what="app caught up")
        assert backup.volume("app").read(0, 4 * MiB) == main.volume("app").read(0, 4 * MiB)
    finally:
        for g in gates:
            g.opened.set()
        msvc.stop()
        bsvc.stop()
        main.close()
        backup.close()


# -- bounded resources ---------------------------------------------------------------------------


def _link_process(tmp_path: Path, target: str) -> tuple[subprocess.Popen, str]:
    ready = tmp_path / "link.ready"
    env = {**os.environ, "DR_KIT_LINK_TOKEN": "l" * 40}
    p = subprocess.Popen([sys.executable, "-m", "dr_kit.storage.link", "--target", target,
                          "--ready-file", str(ready)], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(ready.exists, timeout=20, what="the link process")
    import json
    return p, json.loads(ready.read_text())["listen"]


@pytest.mark.slow
def test_threads_stay_flat_from_2_to_200_volumes(arrays, tmp_path):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    link, address = _link_process(tmp_path, backup.replication)
    procs = {"main array": psutil.Process(main.pid), "backup array": psutil.Process(backup.pid),
             "link": psutil.Process(link.pid)}

    def measure() -> dict[str, tuple[int, float]]:
        return {n: (p.num_threads(), p.memory_info().rss / 1e6) for n, p in procs.items()}

    def protect(group: str, vols: list[str]) -> None:
        for v in vols:
            mc.create_volume(v, MiB)
            rv = mc.open_volume(v)
            rv.write(0, os.urandom(8192))
            rv.close()
        create_pair(mc, bc, group, vols, address)

    try:
        protect("g0", ["g0-v0", "g0-v1"])
        caught_up(mc, "g0")
        at2 = measure()
        for g in range(1, 23):  # 22 more groups of 9: 200 volumes in 23 groups
            protect(f"g{g}", [f"g{g}-v{i}" for i in range(9)])
        peak = measure()
        for g in range(23):
            caught_up(mc, f"g{g}")
            peak = {n: (max(peak[n][0], t), max(peak[n][1], r)) for n, (t, r) in measure().items()}
        at200 = measure()
    finally:
        link.terminate()
        link.wait(10)
    print("threads, RSS MB at 2 volumes:", at2, "at 200 volumes:", at200, "peak:", peak)
    for name in procs:
        assert peak[name][0] <= 32, f"{name}: {peak[name][0]} threads"
        assert at200[name][0] <= at2[name][0] + 1, f"{name}: threads grew from {at2[name][0]} to {at200[name][0]}"
        assert peak[name][1] < 300
    assert len(mc.status()["volumes"]) == 200
