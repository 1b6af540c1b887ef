"""Process-level tests: a main and a backup array in two processes, replicating over TCP.

Each test starts its own arrays (and link emulators) through the ``arrays`` fixture, which
stops them all at teardown.  Synchronisation is by polling with timeouts.
"""

from __future__ import annotations

import os
import statistics
import struct
import threading
import time

import pytest
from conftest import wait_for

from dr_kit.storage.blocks import CHUNK
from dr_kit.storage.client import ArrayClient, create_pair

MiB = 1 << 20


def caught_up(mc: ArrayClient, group: str, timeout: float = 30.0) -> dict:
    """Wait until the main reports the pair caught up: sequence lag 0 and time lag 0.0."""
    return mc.wait_group(group, lambda s: s["state"] == "pair" and s["lag"]["consistent"] is True
                         and s["lag"]["sequence_lag"] == 0 and s["lag"]["time_lag_s"] == 0.0,
                         timeout=timeout, what="pair, caught up")


def image(client: ArrayClient, volume: str) -> bytes:
    v = client.open_volume(volume)
    try:
        return v.read(0, v.size)
    finally:
        v.close()


def stamp(i: int, n: int = 4096) -> bytes:
    head = f"write {i:08d} ".encode()
    return (head * (n // len(head) + 1))[:n]


class Writer(threading.Thread):
    """Writes numbered 4 KiB blocks in a loop; keeps what each acknowledged write put where."""

    def __init__(self, vol, size: int) -> None:
        super().__init__(daemon=True)
        self.vol, self.slots = vol, size // 4096
        self.acked: dict[int, bytes] = {}  # offset -> content of the last acknowledged write
        self.count = 0
        self.max_latency = 0.0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        try:
            while not self.halt.is_set():
                off = (i * 7 % self.slots) * 4096
                data = stamp(i)
                t0 = time.perf_counter()
                self.vol.write(off, data)
                self.max_latency = max(self.max_latency, time.perf_counter() - t0)
                self.acked[off] = data
                self.count += 1
                i += 1
                time.sleep(0.001)
        except BaseException as e:  # reported by the test
            self.error = e

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive()


@pytest.fixture
def writers():
    started: list[Writer] = []

    def start(vol, size: int) -> Writer:
        w = Writer(vol, size)
        started.append(w)
        w.start()
        return w

    yield start
    for w in started:
        w.halt.set()
        w.join(30)


def test_async_pair_initial_copy_replication_and_lag(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 4 * MiB)
    va = mc.open_volume("vol-a")
    before = os.urandom(200_000)
    va.write(3 * CHUNK + 5, before)  # data written before the pair exists
    va.write(4 * MiB - 4, b"tail")

    create_pair(mc, backup.client, "g", ["vol-a"], backup.replication)
    st = caught_up(mc, "g")
    assert st["copy"] == {"total": 64, "done": 64}, "initial copy progress: every region counted"
    bst = bc.group_status("g")
    assert bst["side"] == "backup" and bst["state"] == "pair" and bst["consistent"] is True

    # the pre-existing data is at the backup: read it through a snapshot and a writable clone
    bc.create_snapshot("s-init", group="g")
    bc.create_clone("c-init", "s-init", "vol-a")
    clone = bc.open_volume("c-init")
    assert clone.read(3 * CHUNK + 5, len(before)) == before
    assert clone.read(4 * MiB - 4, 4) == b"tail"
    assert image(bc, "c-init") == image(mc, "vol-a")

    # writes replicate
    for i in range(30):
        va.write(i * 50_000, stamp(i, 3000))
    caught_up(mc, "g")
    assert image(bc, "vol-a") == image(mc, "vol-a")
    lag = mc.lag("g")
    assert lag.caught_up and lag.sequence_lag == 0 and lag.time_lag_s == 0.0 and lag.byte_lag == 0
    assert lag.applied == lag.main and lag.main.sequence >= 30
    assert lag.consistent is True
    # the clone still shows the image of its snapshot, not the later writes
    assert clone.read(0, 3000) == bytes(3000)

    # apply paused at the backup: the lag is real, measured, and grows
    bc.group_action("g", "pause-apply")
    t_write = time.time()
    va.write(0, b"P" * 1000)
    first = wait_for(lambda: (lg := mc.lag("g")).sequence_lag and lg, what="a sequence lag")
    assert first.state == "pair" and first.sequence_lag == 1
    assert first.time_lag_s is not None and first.time_lag_s > 0
    assert first.byte_lag and first.byte_lag > 1000
    assert not first.caught_up
    assert first.time_lag_s <= time.time() - t_write + 0.05
    later = wait_for(lambda: (lg := mc.lag("g")).time_lag_s > first.time_lag_s + 0.1 and lg,
                     what="the time lag to grow")
    assert later.sequence_lag == 1
    assert bc.group_status("g")["apply_paused"] is True
    assert bc.open_volume("vol-a").read(0, 1000) != b"P" * 1000  # received, not applied

    bc.group_action("g", "resume-apply")
    caught_up(mc, "g")
    assert bc.open_volume("vol-a").read(0, 1000) == b"P" * 1000
    assert mc.lag("g").caught_up


def test_lag_unknown_until_the_backup_reports(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc = main.client
    link = arrays.link(backup.replication)
    link.cut()  # the backup cannot be reached from the start
    mc.create_volume("vol-a", 2 * MiB)
    create_pair(mc, backup.client, "g", ["vol-a"], link.address)
    mc.open_volume("vol-a").write(0, b"x" * 5000)
    time.sleep(0.3)  # give the sender time to fail a few connection attempts
    lag = mc.lag("g")
    assert lag.state == "copy"
    assert lag.sequence_lag is None and lag.time_lag_s is None and lag.byte_lag is None
    assert not lag.caught_up
    link.restore()
    caught_up(mc, "g")
    assert image(backup.client, "vol-a") == image(mc, "vol-a")


def test_backup_killed_under_load_restarts_and_catches_up(arrays, writers):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc = main.client
    for v in ("vol-a", "vol-b"):
        mc.create_volume(v, 2 * MiB)
    create_pair(mc, backup.client, "g", ["vol-a", "vol-b"], backup.replication)
    caught_up(mc, "g")
    wa = writers(mc.open_volume("vol-a"), 2 * MiB)
    wb = writers(mc.open_volume("vol-b"), 2 * MiB)
    wait_for(lambda: wa.count > 100 and wb.count > 100, what="writes under way")

    backup.kill()
    at_kill = (wa.count, wb.count)
    wait_for(lambda: wa.count > at_kill[0] + 100 and wb.count > at_kill[1] + 100,
             what="main writes going on while the backup is down")
    backup2 = arrays.restart(backup)
    wait_for(lambda: backup2.client.group_status("g")["received"] > 0, what="the backup receiving again")
    n = (wa.count, wb.count)
    wait_for(lambda: wa.count > n[0] + 50 and wb.count > n[1] + 50, what="writes after the restart")
    wa.stop()
    wb.stop()
    assert wa.error is None and wb.error is None
    assert wa.max_latency < 2.0 and wb.max_latency < 2.0, "the main site blocked on the backup"

    caught_up(mc, "g", timeout=60)
    bc = backup2.client
    for w, v in ((wa, "vol-a"), (wb, "vol-b")):
        main_img, backup_img = image(mc, v), image(bc, v)
        for off, data in w.acked.items():  # nothing acknowledged is lost, at either site
            assert main_img[off:off + 4096] == data
            assert backup_img[off:off + 4096] == data
        assert backup_img == main_img
    assert bc.group_status("g")["state"] == "pair"


def test_main_killed_keeps_every_acknowledged_write_and_resumes(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 4 * MiB)
    create_pair(mc, backup.client, "g", ["vol-a"], backup.replication, journal_capacity=4 * MiB)  # 512 KiB segments
    caught_up(mc, "g")
    va = mc.open_volume("vol-a")
    expect: dict[int, bytes] = {}
    for i in range(8):  # replicated before the crash
        expect[i * CHUNK] = stamp(i, CHUNK)
        va.write(i * CHUNK, expect[i * CHUNK])
    caught_up(mc, "g")
    mc.group_action("g", "pause-transfer")  # the rest stays in the main journal only
    for i in range(8, 40):  # 2 MiB: the journal holds several segments at the crash
        expect[i * CHUNK] = stamp(i, CHUNK)
        va.write(i * CHUNK, expect[i * CHUNK])
    expect[5 * CHUNK + 100] = b"overwrite after the pause"
    va.write(5 * CHUNK + 100, expect[5 * CHUNK + 100])
    va.close()

    main.kill()
    segs = list((main.root / "groups" / "g" / "journal").glob("*.seg"))
    assert len(segs) >= 2, "the crash should leave a journal of several segments to recover"
    main2 = arrays.restart(main, same_repl_port=False)
    mc2 = main2.client
    st = mc2.group_status("g")
    assert st["state"] != "error", st["message"]
    assert mc2.status()["problems"] == []
    want = bytearray(4 * MiB)
    for off, data in expect.items():  # in write order: the later write wins
        want[off:off + len(data)] = data
    got = image(mc2, "vol-a")
    for off, data in expect.items():
        assert got[off:off + len(data)] == want[off:off + len(data)], f"acknowledged write at {off} lost"
    assert got == bytes(want)

    mc2.group_action("g", "resume-transfer")
    caught_up(mc2, "g")
    va2 = mc2.open_volume("vol-a")
    va2.write(3 * MiB, b"after the restart")
    caught_up(mc2, "g")
    assert image(bc, "vol-a") == image(mc2, "vol-a")
    assert image(bc, "vol-a")[3 * MiB:3 * MiB + 17] == b"after the restart"


def test_main_killed_with_entries_queued_resyncs_their_regions(arrays):
    """SIGKILL right after writes whose journal entries were still queued (transfer paused:
    nothing reads the journal).  The restarted main keeps every acknowledged write, says
    which regions were not journaled, copies them by a resync, and the backup ends equal."""
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 2 * MiB)
    create_pair(mc, bc, "g", ["vol-a"], backup.replication, journal_capacity=4 * MiB)
    caught_up(mc, "g")
    va = mc.open_volume("vol-a")
    va.write(0, stamp(1))
    caught_up(mc, "g")
    mc.group_action("g", "pause-transfer")
    time.sleep(0.3)  # the sender has seen the pause (and written the queue, empty)
    va.write(0, stamp(2))  # queued: newer than the journaled write of the same region
    va.write(CHUNK * 20, stamp(3))
    expect = va.read(0, 2 * MiB)
    main.kill()
    main2 = arrays.restart(main, same_repl_port=False)
    mc2 = main2.client
    assert image(mc2, "vol-a") == expect
    st = mc2.group_status("g")
    assert "not yet in the journal" in st["message"] or (st.get("last_copy") or {}).get("regions") == 2, st
    mc2.group_action("g", "resume-transfer")
    caught_up(mc2, "g")
    assert image(bc, "vol-a") == expect


def test_journal_full_suspends_then_resync_with_guard_snapshot(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    link = arrays.link(backup.replication)
    mc.create_volume("vol-a", 4 * MiB)
    create_pair(mc, backup.client, "g", ["vol-a"], link.address, journal_capacity=MiB)
    caught_up(mc, "g")
    va = mc.open_volume("vol-a")
    for i in range(16):
        va.write(i * CHUNK, stamp(1000 + i, CHUNK))
    caught_up(mc, "g")
    at_cut = image(mc, "vol-a")

    link.cut()
    latencies = []
    for i in range(40):  # 2.5 MiB into a 1 MiB journal that cannot drain
        t0 = time.perf_counter()
        va.write(i * CHUNK, stamp(i, CHUNK))
        latencies.append(time.perf_counter() - t0)
    st = mc.wait_group("g", lambda s: s["state"] == "suspended", timeout=10, what="suspended")
    assert "journal full" in st["message"]
    for i in range(40, 45):  # writes go on while suspended
        t0 = time.perf_counter()
        va.write(i * CHUNK, stamp(i, CHUNK))
        latencies.append(time.perf_counter() - t0)
    assert max(latencies) < 1.0, f"a main write blocked for {max(latencies):.2f} s"
    assert statistics.median(latencies) < 0.05
    lag = mc.lag("g")
    assert lag.state == "suspended" and not lag.caught_up
    assert lag.time_lag_s is not None and lag.time_lag_s > 0
    assert lag.byte_lag and lag.byte_lag >= 2 * MiB
    main_img = image(mc, "vol-a")
    assert all(main_img[i * CHUNK:(i + 1) * CHUNK] == stamp(i, CHUNK) for i in range(45))

    # the link comes back, slowly: the resync takes long enough to be seen
    link.configure(rate_mbit=12)
    seen_main: set[str] = set()
    seen_backup: list[tuple[str, bool]] = []
    link.restore()
    deadline = time.monotonic() + 60
    while True:
        s = mc.group_status("g")
        seen_main.add(s["state"])
        b = bc.group_status("g")
        seen_backup.append((b["state"], b["consistent"]))
        if s["state"] == "pair" and s["lag"]["sequence_lag"] == 0 and s["lag"]["consistent"]:
            break
        assert time.monotonic() < deadline, f"no resync: {s['state']} {s['message']}"
        time.sleep(0.02)
    assert "resync" in seen_main, f"states seen at the main site: {seen_main}"
    assert ("resync", False) in seen_backup, "the backup must say it is not consistent while resyncing"
    assert all(not c for state, c in seen_backup if state == "resync")
    link.configure(rate_mbit=0)
    caught_up(mc, "g")

    snaps = {s["name"]: s for s in bc.status()["snapshots"]}
    guard = snaps.get("resync-guard-g")
    assert guard is not None, f"no guard snapshot at the backup: {sorted(snaps)}"
    assert guard["group"] == "g" and guard["consistent"] is True
    bc.create_clone("guard-img", "resync-guard-g", "vol-a")
    assert image(bc, "guard-img") == at_cut, "the guard snapshot must hold the last consistent image"
    assert image(bc, "vol-a") == image(mc, "vol-a")


def test_corrupt_entry_in_transit_is_refused(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 2 * MiB)
    create_pair(mc, backup.client, "g", ["vol-a"], backup.replication)
    caught_up(mc, "g")
    va = mc.open_volume("vol-a")
    va.write(0, b"G" * 4096)
    caught_up(mc, "g")

    mc.group_action("g", "corrupt-next")
    va.write(CHUNK, b"X" * 4096)
    st = mc.wait_group("g", lambda s: s["state"] == "error", timeout=20, what="error")
    assert "checksum" in st["message"] and "refused" in st["message"], st["message"]
    bst = bc.wait_group("g", lambda s: s["state"] == "error", timeout=10, what="error at the backup")
    assert "checksum" in bst["message"] and "nothing of it was applied" in bst["message"]
    b_img = image(bc, "vol-a")
    assert b_img[CHUNK:CHUNK + 4096] == bytes(4096), "the corrupt entry reached the backup volume"
    assert b"X" not in b_img
    assert b_img[:4096] == b"G" * 4096
    lag = mc.lag("g")
    assert lag.state == "error" and not lag.caught_up and lag.time_lag_s and lag.time_lag_s > 0

    t0 = time.perf_counter()
    va.write(2 * CHUNK, b"still writing")  # the main site goes on
    assert time.perf_counter() - t0 < 1.0

    mc.group_action("g", "resync")
    caught_up(mc, "g")
    assert image(bc, "vol-a") == image(mc, "vol-a")


def test_corrupt_entry_on_backup_disk_is_not_applied(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 2 * MiB)
    create_pair(mc, backup.client, "g", ["vol-a"], backup.replication)
    caught_up(mc, "g")
    va = mc.open_volume("vol-a")
    va.write(0, b"G" * 4096)
    caught_up(mc, "g")

    bc.group_action("g", "pause-apply")
    marker = b"MARKER-" + os.urandom(16).hex().encode()
    payload = (marker * 200)[:4096]
    va.write(2 * CHUNK, payload)
    head = mc.lag("g").main.sequence
    wait_for(lambda: bc.group_status("g")["received"] >= head, what="the entry stored at the backup")

    segs = sorted((backup.root / "groups" / "g" / "journal").glob("*.seg"))
    hits = [(p, p.read_bytes().find(payload)) for p in segs]
    hits = [(p, i) for p, i in hits if i >= 0]
    assert len(hits) == 1, "the entry must be in exactly one backup journal segment"
    path, pos = hits[0]
    with path.open("r+b") as f:  # one bit rots on the backup's journal volume
        f.seek(pos + 1000)
        b = f.read(1)
        f.seek(pos + 1000)
        f.write(bytes([b[0] ^ 0x10]))

    bc.group_action("g", "resume-apply")
    bst = bc.wait_group("g", lambda s: s["state"] == "error", timeout=20, what="error at the backup")
    assert "corrupt" in bst["message"] and "not applied" in bst["message"], bst["message"]
    assert "checksum" in bst["message"]
    b_img = image(bc, "vol-a")
    assert b_img[2 * CHUNK:2 * CHUNK + 4096] == bytes(4096), "a corrupt entry was applied"
    assert b_img[:4096] == b"G" * 4096
    # the pair, as the main site reports it, is in error too (no more writes needed to notice)
    st = mc.wait_group("g", lambda s: s["state"] == "error", timeout=10,
                       what="the main site to report the error")
    assert "corrupt" in st["message"] or "error" in st["message"]
    assert not mc.lag("g").caught_up


def test_sync_mode_waits_for_backup_and_suspends_on_cut(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    link = arrays.link(backup.replication, delay_ms=20)
    mc.create_volume("sync-v", 2 * MiB)
    mc.create_volume("async-v", 2 * MiB)
    create_pair(mc, backup.client, "gs", ["sync-v"], link.address, mode="sync", sync_timeout_s=1.0)
    create_pair(mc, backup.client, "ga", ["async-v"], link.address)
    caught_up(mc, "gs")
    caught_up(mc, "ga")
    vs, va = mc.open_volume("sync-v"), mc.open_volume("async-v")

    sync_lat, async_lat = [], []
    for i in range(8):
        t0 = time.perf_counter()
        vs.write(i * 4096, stamp(i))
        sync_lat.append(time.perf_counter() - t0)
        # acknowledged in sync mode: the backup holds it already, without waiting
        assert bc.group_status("gs")["received"] >= mc.lag("gs").main.sequence
        t0 = time.perf_counter()
        va.write(i * 4096, stamp(i))
        async_lat.append(time.perf_counter() - t0)
    assert min(sync_lat) >= 0.038, f"sync writes did not wait for the round trip: {sync_lat}"
    assert statistics.median(async_lat) < 0.015, f"async writes paid for the link: {async_lat}"
    assert statistics.median(async_lat) * 3 < statistics.median(sync_lat)

    link.cut()
    t0 = time.perf_counter()
    vs.write(100 * 4096, b"during the cut")
    took = time.perf_counter() - t0
    assert 0.8 <= took < 5.0, f"a sync write during a cut took {took:.2f} s (timeout 1 s)"
    st = mc.wait_group("gs", lambda s: s["state"] == "suspended", timeout=5, what="suspended")
    assert "synchronous" in st["message"]
    t0 = time.perf_counter()
    vs.write(101 * 4096, b"suspended: no waiting")
    assert time.perf_counter() - t0 < 0.5
    assert mc.open_volume("sync-v").read(100 * 4096, 14) == b"during the cut"


def test_snapshot_group_freezes_all_members_at_one_sequence(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    for v in ("ctr-a", "ctr-b"):
        mc.create_volume(v, 2 * MiB)
    create_pair(mc, backup.client, "g", ["ctr-a", "ctr-b"], backup.replication)
    caught_up(mc, "g")
    n0 = mc.lag("g").main.sequence
    a, b = mc.open_volume("ctr-a"), mc.open_volume("ctr-b")

    def block(k: int) -> bytes:
        return struct.pack("<Q", k) * 512

    done = threading.Event()
    progress = [0]
    errors: list[BaseException] = []

    def write_counters() -> None:
        k = 0
        try:
            while not done.is_set() and k < 100_000:
                k += 1
                a.write(0, block(k))  # sequence n0 + 2k - 1
                b.write(0, block(k))  # sequence n0 + 2k
                progress[0] = k
                time.sleep(0.0005)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=write_counters, daemon=True)
    t.start()
    snaps = []
    try:
        last = n0
        for i in range(4):
            start = progress[0]
            wait_for(lambda s=start: progress[0] > s + 25, what="counter writes")
            # the backup has applied more since the last snapshot: each one is at a new point
            wait_for(lambda s=last: mc.lag("g").applied.sequence > s, what="the backup applying")
            info = bc.create_snapshot(f"s{i}", group="g")
            last = info["sequence"]
            snaps.append(info)
            for v in ("ctr-a", "ctr-b"):
                bc.create_clone(f"s{i}-{v}", f"s{i}", v)
        wait_for(lambda: progress[0] > snaps[-1]["sequence"] // 2 + 25, what="writes after the snapshots")
    finally:
        done.set()
        t.join(30)
    assert not errors

    for i, info in enumerate(snaps):
        assert info["volumes"] == ["ctr-a", "ctr-b"] and info["group"] == "g"
        seq = info["sequence"]
        assert info["position"].endswith(f"/{seq}")
        m = seq - n0
        assert m > 0, "the snapshot must have been taken while writes were replicating"
        ka = struct.unpack_from("<Q", bc.open_volume(f"s{i}-ctr-a").read(0, 8))[0]
        kb = struct.unpack_from("<Q", bc.open_volume(f"s{i}-ctr-b").read(0, 8))[0]
        # the main site's image after write number `seq` of the group's single order
        assert (ka, kb) == ((m + 1) // 2, m // 2), f"snapshot {i} at sequence {seq}: a={ka} b={kb}"
        assert bc.open_volume(f"s{i}-ctr-a").read(0, 4096) == block(ka)
        assert bc.open_volume(f"s{i}-ctr-b").read(0, 4096) == block(kb)
    assert [s["sequence"] for s in snaps] == sorted(s["sequence"] for s in snaps)

    caught_up(mc, "g")
    final = progress[0]
    assert image(bc, "ctr-a")[:4096] == block(final) == image(bc, "ctr-b")[:4096]
    # the frozen images did not move while replication went on
    ka0 = struct.unpack_from("<Q", bc.open_volume("s0-ctr-a").read(0, 8))[0]
    assert ka0 == (snaps[0]["sequence"] - n0 + 1) // 2 < final


def test_a_volume_that_joins_during_the_initial_copy_is_copied_before_the_pair(arrays):
    """A member added while the group's initial copy runs is copied too: the group reaches
    pair only once the backup holds every member's data (the copy used to go through the
    members it started with, and the newcomer's regions stayed marked but never sent while
    the group said pair and consistent)."""
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    link = arrays.link(backup.replication, rate_mbit=40.0)  # 8 MiB take about 2 s
    mc.create_volume("big", 8 * MiB)
    mc.create_volume("late", 1 * MiB)
    mc.open_volume("big").write(0, os.urandom(8 * MiB))
    late = os.urandom(1 * MiB)
    mc.open_volume("late").write(0, late)
    create_pair(mc, bc, "g", ["big"], link.address)
    wait_for(lambda: mc.group_status("g")["copy"]["done"] > 0, timeout=30,
             what="the initial copy under way")
    assert mc.group_status("g")["state"] == "copy"
    mc.add_member("g", "late")
    st = caught_up(mc, "g", timeout=60)
    assert st["copy"]["total"] == st["copy"]["done"]
    assert image(bc, "late") == late and image(bc, "late") == image(mc, "late")
    assert image(bc, "big") == image(mc, "big")
