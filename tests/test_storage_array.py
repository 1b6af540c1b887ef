"""The array engine in-process (no network): refusals change nothing, restart, main-side redo."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound
from dr_kit.storage.array import Array
from dr_kit.storage.blocks import CHUNK

MiB = 1 << 20
NOWHERE = "127.0.0.1:9"  # no sender runs in-process: the remote is never dialled
SECRET = "s" * 64


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with the content of array.json (and sizes of the rest)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name == "array.json":
            out[rel] = p.read_bytes()
        elif p.is_file():
            out[rel] = str(p.stat().st_size).encode()
        else:
            out[rel] = None
    return out


@pytest.fixture
def arr(tmp_path):
    a = Array(tmp_path / "arr", "main")
    a.create_volume("vol-a", 2 * MiB)
    a.create_volume("vol-b", 2 * MiB)
    a.create_volume("vol-c", 2 * MiB)
    a.create_primary_group("grp", ["vol-a"], NOWHERE, secret=SECRET)
    yield a
    a.close()


REFUSALS = [
    # (description, call, error type, words the message must contain)
    ("unknown volume in a group", lambda a: a.create_primary_group("g2", ["nope"], NOWHERE, secret=SECRET), NotFound, "nope"),
    ("unknown volume among known ones", lambda a: a.create_primary_group("g2", ["vol-b", "nope"], NOWHERE, secret=SECRET),
     NotFound, "nope"),
    ("volume already in another group", lambda a: a.create_primary_group("g2", ["vol-b", "vol-a"], NOWHERE, secret=SECRET),
     Conflict, "already in consistency group 'grp'"),
    ("group name taken", lambda a: a.create_primary_group("grp", ["vol-b"], NOWHERE, secret=SECRET), Conflict, "already exists"),
    ("snapshot of an unknown group", lambda a: a.create_snapshot("s1", group="nope"), NotFound, "nope"),
    ("snapshot of a main-side group", lambda a: a.create_snapshot("s1", group="grp"), InvalidInput, "backup site"),
    ("snapshot of nothing", lambda a: a.create_snapshot("s1"), InvalidInput, "name a consistency group"),
    ("snapshot of an unknown volume", lambda a: a.create_snapshot("s1", volumes=["vol-b", "nope"]), NotFound, "nope"),
    ("journal too small", lambda a: a.create_primary_group("g2", ["vol-b"], NOWHERE, secret=SECRET, journal_capacity=64 * 1024),
     InvalidInput, "too small"),
    ("bad copy mode", lambda a: a.create_primary_group("g2", ["vol-b"], NOWHERE, secret=SECRET, mode="semi"), InvalidInput, "mode"),
    ("bad remote", lambda a: a.create_primary_group("g2", ["vol-b"], "backup-host", secret=SECRET), InvalidInput, "HOST:PORT"),
    ("empty group", lambda a: a.create_primary_group("g2", [], NOWHERE, secret=SECRET), InvalidInput, "at least one volume"),
    ("bad backup volume name", lambda a: a.create_primary_group("g2", ["vol-b"], NOWHERE, secret=SECRET,
                                                                remote_names={"vol-b": "Bad_Name"}),
     InvalidInput, "Bad_Name"),
    ("bad group name", lambda a: a.create_primary_group("Grp_2", ["vol-b"], NOWHERE, secret=SECRET), InvalidInput, "Grp_2"),
    ("bad volume name", lambda a: a.create_volume("Vol_X", 2 * MiB), InvalidInput, "Vol_X"),
    ("volume name too long", lambda a: a.create_volume("v" * 64, 2 * MiB), InvalidInput, "63 characters"),
    ("volume name with a slash", lambda a: a.create_volume("a/b", 2 * MiB), InvalidInput, "a/b"),
    ("bad snapshot name", lambda a: a.create_snapshot("-snap", volumes=["vol-b"]), InvalidInput, "-snap"),
    ("duplicate volume", lambda a: a.create_volume("vol-b", 2 * MiB), Conflict, "already exists"),
    ("volume too small", lambda a: a.create_volume("tiny", 4096), InvalidInput, "1 MiB"),
    ("volume size not an integer", lambda a: a.create_volume("frac", 1.5 * MiB), InvalidInput, "integer"),
    ("unknown volume write", lambda a: a.write("nope", 0, b"x"), NotFound, "nope"),
    ("write past the end", lambda a: a.write("vol-b", 2 * MiB - 1, b"xy"), InvalidInput, "outside"),
    ("clone of an unknown snapshot", lambda a: a.create_clone("c1", "nope", "vol-b"), NotFound, "nope"),
    ("delete a grouped volume", lambda a: a.delete_volume("vol-a"), Conflict, "grp"),
    ("delete an unknown group", lambda a: a.delete_primary_group("nope"), NotFound, "nope"),
]


@pytest.mark.parametrize("what,call,err,words", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_input_raises_and_changes_nothing(arr, what, call, err, words):
    before = _tree(arr.root)
    vols, groups, snaps = set(arr.volumes), set(arr.primary), set(arr.snapshots)
    with pytest.raises(err) as exc:
        call(arr)
    assert isinstance(exc.value, DrKitError)
    msg = str(exc.value)
    assert words in msg and "\n" not in msg
    assert _tree(arr.root) == before, f"{what}: the array folder changed"
    assert (set(arr.volumes), set(arr.primary), set(arr.snapshots)) == (vols, groups, snaps)
    assert arr.volume("vol-a").primary is arr.primary["grp"]
    assert arr.volume("vol-b").primary is None


def test_snapshot_of_clone_and_clone_of_missing_volume_refused(arr):
    arr.create_snapshot("s1", volumes=["vol-b"])
    arr.create_clone("c1", "s1", "vol-b")
    before = _tree(arr.root)
    with pytest.raises(InvalidInput, match="clone"):
        arr.create_snapshot("s2", volumes=["c1"])
    with pytest.raises(NotFound, match="vol-c"):
        arr.create_clone("c2", "s1", "vol-c")
    with pytest.raises(Conflict, match="already exists"):
        arr.create_clone("c1", "s1", "vol-b")
    with pytest.raises(Conflict, match="already exists"):
        arr.create_snapshot("s1", volumes=["vol-c"])
    with pytest.raises(Conflict, match="clones"):
        arr.delete_snapshot("s1")
    with pytest.raises(Conflict, match="snapshots"):
        arr.delete_volume("vol-b")
    assert _tree(arr.root) == before


def test_restart_keeps_volumes_groups_snapshots_and_data(tmp_path):
    root = tmp_path / "arr"
    a = Array(root, "main")
    a.create_volume("data-1", 4 * MiB)
    a.create_volume("data-2", 2 * MiB)
    blob = os.urandom(3 * CHUNK + 17)
    a.write("data-1", 5000, blob)
    a.write("data-2", MiB, b"second volume")
    a.create_snapshot("before", volumes=["data-1"])
    a.write("data-1", 5000, b"Z" * 100)  # after the snapshot
    a.create_clone("restored", "before", "data-1")
    a.write("restored", 0, b"clone-own")
    a.create_primary_group("grp", ["data-2"], NOWHERE, secret=SECRET)
    a.write("data-2", 0, b"journaled")
    a.close()

    b = Array(root)
    try:
        assert b.name == "main"
        assert set(b.volumes) == {"data-1", "data-2", "restored"}
        assert b.volume("data-1").size == 4 * MiB
        assert b.read("data-1", 5000, 100) == b"Z" * 100
        assert b.read("data-1", 5100, len(blob) - 100) == blob[100:]
        assert b.read("data-2", MiB, 13) == b"second volume"
        assert b.read("data-2", 0, 9) == b"journaled"
        assert b.read("restored", 5000, len(blob)) == blob  # the snapshot's image, not the later write
        assert b.read("restored", 0, 9) == b"clone-own"
        assert set(b.primary) == {"grp"} and b.volume("data-2").primary is b.primary["grp"]
        assert b.primary["grp"].journal.last_seq == 1
        assert b.problems == []
        # the snapshot still preserves: a new live write does not reach the clone
        b.write("data-1", 5000, b"Y" * 100)
        assert b.read("restored", 5000, 100) == blob[:100]
        # a new volume does not reuse an id
        ids = {v.id for v in b.volumes.values()}
        assert b.create_volume("data-3", MiB).id not in ids
    finally:
        b.close()


def test_main_side_redo_reapplies_journaled_writes(tmp_path):
    """A write was journaled and acknowledged, but its volume write never reached the disk:
    reopening the array re-applies it from the journal, in order."""
    root = tmp_path / "arr"
    a = Array(root, "main")
    a.create_volume("db", 2 * MiB)
    a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET)
    writes = [(0, b"A" * 5000), (3 * CHUNK - 10, os.urandom(CHUNK)), (100, b"overwritten first"),
              (MiB, b"B" * 100)]
    for off, data in writes:
        a.write("db", off, data)
    a.writev("db", [(MiB + 4096, b"vector one"), (200, b"vector two"), (MiB + 4100, b"VV")])
    expect = a.read("db", 0, 2 * MiB)
    assert expect[MiB + 4096:MiB + 4106] == b"vectVV one" and expect[200:210] == b"vector two"
    a.close()

    vol_file = root / "volumes" / "db.vol"
    with vol_file.open("r+b") as f:  # the volume writes are lost
        f.write(bytes(2 * MiB))
    assert vol_file.read_bytes() == bytes(2 * MiB)

    b = Array(root)
    try:
        assert b.read("db", 0, 2 * MiB) == expect
        assert b.read("db", 100, 17) == b"overwritten first"
        assert b.problems == []
    finally:
        b.close()


def _paired(root: Path, size: int = 2 * MiB, capacity: int = 4 * MiB):
    a = Array(root, "main")
    a.create_volume("db", size)
    g = a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET, journal_capacity=capacity)
    for m in g.dirty.values():
        m.clear()  # as after the initial copy
    with g.lock:
        g.conf["state"] = "pair"
        g._save()
    return a, g


def test_queued_entries_are_read_in_order_and_their_marks_cleared_once_written(tmp_path):
    """The commit path queues its entries; any reader of the journal writes the queue
    first, and a written batch clears its in-flight marks."""
    a, g = _paired(tmp_path / "arr")
    try:
        j = g.journal
        a.write("db", 5, b"first")
        a.writev("db", [(3 * CHUNK + 7, b"two"), (10 * CHUNK - 1, b"spans two chunks")])
        assert j.last_seq == 2 and j.used_bytes > 0
        assert not list(j.path.glob("*.seg")) or j._disk_next == 1  # nothing written yet
        marks = (j.path / f"inflight-{a.volume('db').id}.map").read_bytes()
        half = len(marks) // 2
        assert {i % half for i, b in enumerate(marks) if b} == {0, 3, 9, 10}
        got = [(r.sequence, [(o, bytes(d)) for o, d in r.extents()]) for r, _ in j.iter_records(1)]
        assert got == [(1, [(5, b"first")]),
                       (2, [(3 * CHUNK + 7, b"two"), (10 * CHUNK - 1, b"spans two chunks")])]
        assert (j.path / f"inflight-{a.volume('db').id}.map").read_bytes() == bytes(len(marks))
        assert j.in_flight() == {}
    finally:
        a.close()


def test_commit_path_writes_the_queue_itself_past_a_bound(tmp_path):
    a, g = _paired(tmp_path / "arr", size=4 * MiB, capacity=8 * MiB)
    try:
        j = g.journal
        for i in range(40):  # 2.5 MiB, nobody reads the journal
            a.write("db", i * CHUNK, bytes([i + 1]) * CHUNK)
        assert j._queued < j.DRAIN_AT  # the bound holds
        assert j._disk_next > 1  # records were written on the way
        assert [r.sequence for r, _ in j.iter_records(1)] == list(range(1, 41))
    finally:
        a.close()


def test_a_caller_buffer_changed_after_the_write_does_not_change_its_entry(tmp_path):
    a, g = _paired(tmp_path / "arr")
    try:
        buf = bytearray(b"as acknowledged")
        a.write("db", 0, buf)
        buf[:2] = b"XX"
        (r, _), = g.journal.iter_records(1)
        assert r.data == b"as acknowledged"
    finally:
        a.close()


def test_kill_with_entries_queued_keeps_the_newest_writes_and_resyncs_their_regions(tmp_path):
    """The array is killed after acknowledging writes whose entries were still queued (the
    folder is copied as it stands, as a kill leaves it).  Reopened: redo must not roll the
    in-flight regions back to older journaled data, and those regions go to a resync."""
    root = tmp_path / "arr"
    a, g = _paired(root)
    try:
        a.write("db", 0, b"A" * 100)  # journaled: written to a segment by the read below
        a.write("db", 5 * CHUNK, b"journaled only")
        assert g.journal.time_of(2) is not None
        a.write("db", 0, b"B" * 50)  # queued: newer than the journaled write of chunk 0
        a.writev("db", [(7 * CHUNK, b"C" * 10), (9 * CHUNK + 5, b"D" * 3)])
        expect = a.read("db", 0, 2 * MiB)
        import shutil
        shutil.copytree(root, tmp_path / "killed")
    finally:
        a.close()
    b = Array(tmp_path / "killed")
    try:
        assert b.read("db", 0, 2 * MiB) == expect  # B over A: redo skipped chunk 0
        grp = b.primary["grp"]
        assert grp.state == "suspended"
        assert "not yet in the journal" in grp.conf["message"] and "3 regions" in grp.conf["message"]
        assert set(grp.dirty[b.volume("db").id]) == {0, 7, 9}
        assert grp.journal.last_seq == 2  # the queued entries never reached the journal
        assert grp.journal.in_flight() == {}  # taken over: a second restart does not repeat it
    finally:
        b.close()


def test_an_array_that_syncs_its_journal_writes_each_record_before_acknowledging(tmp_path):
    a = Array(tmp_path / "arr", "main", fsync=True)
    try:
        a.create_volume("db", 2 * MiB)
        g = a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET)
        a.write("db", 0, b"synced")
        assert g.journal._queue == [] and g.journal._disk_next == 2  # in a segment already
        assert not list(g.journal.path.glob("inflight-*.map"))
    finally:
        a.close()


def test_a_failed_batch_write_keeps_the_entries_queued_and_marked(tmp_path, monkeypatch):
    a, g = _paired(tmp_path / "arr")
    try:
        j = g.journal
        a.write("db", 0, b"one")
        a.write("db", 2 * CHUNK, b"two")
        real = os.pwritev

        def failing(*args):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "pwritev", failing)
        with pytest.raises(OSError):
            j.drain()
        assert j.in_flight() == {a.volume("db").id: {0, 2}}  # still marked
        monkeypatch.setattr(os, "pwritev", real)
        a.write("db", 4 * CHUNK, b"three")
        got = [(r.sequence, bytes(r.data)) for r, _ in j.iter_records(1)]
        assert got == [(1, b"one"), (2, b"two"), (3, b"three")]
        a.write("db", 6 * CHUNK, b"four")  # the failed batch's marks go with the next one
        j.drain()
        assert j.in_flight() == {} and j.used_bytes == j.bytes_after(0)
    finally:
        a.close()


def test_a_failed_write_of_the_queue_on_the_commit_path_does_not_fail_the_write(tmp_path, monkeypatch):
    """Past the bound the commit path writes the queue itself; if that fails the host's
    write still lands on the volume (its entry stays queued): a write refused to the host
    must never be shipped to the backup without being on the main volume."""
    a, g = _paired(tmp_path / "arr")
    try:
        monkeypatch.setattr(g.journal, "DRAIN_AT", 1)

        def failing(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "pwritev", failing)
        a.write("db", 0, b"lands")
        assert a.read("db", 0, 5) == b"lands"
        monkeypatch.undo()
        (r, _), = g.journal.iter_records(1)
        assert r.data == b"lands"
    finally:
        a.close()


def test_clean_close_leaves_nothing_in_flight(tmp_path):
    root = tmp_path / "arr"
    a, g = _paired(root)
    a.write("db", 0, b"A" * 100)
    a.close()
    b = Array(root)
    try:
        assert b.primary["grp"].state == "pair"
        assert b.primary["grp"].journal.last_seq == 1
    finally:
        b.close()


@pytest.mark.parametrize("stop", ["suspend", "fail"])
def test_restart_keeps_the_writes_made_after_a_suspension(tmp_path, stop):
    """Records kept in a suspended (or failed) group's journal are older than the direct
    writes made since: a restart must not redo them over those acknowledged writes."""
    root = tmp_path / "arr"
    a = Array(root, "main")
    a.create_volume("db", 2 * MiB)
    a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET)
    a.write("db", 0, b"AAAA")  # journaled (retained: the backup never took it)
    a.write("db", MiB, b"only in the journal's time")
    getattr(a.primary["grp"], stop)("the link is down")
    a.write("db", 0, b"BBBB")  # written directly, its region tracked for the resync
    expect = a.read("db", 0, 2 * MiB)
    a.close()
    b = Array(root)
    try:
        assert b.read("db", 0, 4) == b"BBBB"
        assert b.read("db", 0, 2 * MiB) == expect
        assert b.primary["grp"].state == ("suspended" if stop == "suspend" else "error")
    finally:
        b.close()


def test_corrupt_main_journal_puts_group_in_error_on_open(tmp_path):
    root = tmp_path / "arr"
    a = Array(root, "main")
    a.create_volume("db", 2 * MiB)
    a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET, journal_capacity=MiB)
    for i in range(12):  # 12 x 64 KiB: several segments of 256 KiB
        a.write("db", i * CHUNK, bytes([i + 1]) * CHUNK)
    a.close()
    first = sorted((root / "groups" / "grp" / "journal").glob("*.seg"))[0]
    with first.open("r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")
    b = Array(root)
    try:
        assert b.conf["primary_groups"]["grp"]["state"] == "error"
        assert any("grp" in p and "checksum" in p for p in b.problems), b.problems
    finally:
        b.close()


def test_journal_full_suspends_without_blocking_and_tracks_changes(tmp_path):
    a = Array(tmp_path / "arr", "main")
    try:
        a.create_volume("db", 4 * MiB)
        g = a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET, journal_capacity=MiB)
        for m in g.dirty.values():
            m.clear()  # as after the initial copy
        g.conf["state"] = "pair"
        slowest = 0.0
        for i in range(40):  # 2.5 MiB of writes into a 1 MiB journal nobody drains
            t0 = time.perf_counter()
            a.write("db", i * CHUNK, bytes([i + 1]) * CHUNK)
            slowest = max(slowest, time.perf_counter() - t0)
        assert g.state == "suspended"
        assert "journal full" in g.conf["message"]
        assert slowest < 1.0
        assert all(a.read("db", i * CHUNK, CHUNK) == bytes([i + 1]) * CHUNK for i in range(40))
        dirty = set(g.dirty[a.volume("db").id])
        assert dirty and dirty <= set(range(40)) and 39 in dirty
        lag = g.lag()
        assert lag.state == "suspended"
        assert lag.sequence_lag is None
        assert lag.time_lag_s is not None and lag.time_lag_s > 0
        assert lag.byte_lag and lag.byte_lag >= len(dirty) * CHUNK
        assert not lag.caught_up
    finally:
        a.close()


def test_lag_is_unknown_not_zero_before_the_backup_reports(tmp_path):
    a = Array(tmp_path / "arr", "main")
    try:
        a.create_volume("db", 2 * MiB)
        a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET)
        a.write("db", 0, b"x" * 100)
        lag = a.primary["grp"].lag()
        assert lag.state == "copy"
        assert lag.sequence_lag is None and lag.time_lag_s is None
        assert lag.time_lag_s != 0.0 and not lag.caught_up
        assert str(lag.main) == "g1/1"
    finally:
        a.close()


def test_write_vector_with_a_bad_range_writes_nothing(arr):
    grp = arr.primary["grp"]
    seq = grp.journal.last_seq
    for name in ("vol-a", "vol-b"):  # grouped (journaled) and plain
        with pytest.raises(InvalidInput, match="outside"):
            arr.writev(name, [(0, b"first extent"), (2 * MiB - 1, b"past the end")])
        assert arr.read(name, 0, 12) == bytes(12)
    assert grp.journal.last_seq == seq
    arr.writev("vol-a", [(0, b"first"), (CHUNK, b"second"), (2, b"over")])
    assert arr.read("vol-a", 0, 6) == b"fiover" and arr.read("vol-a", CHUNK, 6) == b"second"
    assert grp.journal.last_seq > seq


# -- review findings ------------------------------------------------------------------------


def test_snapshot_of_a_volume_list_sees_each_write_wholly_before_or_after(tmp_path):
    """A host writes round k to v0, then v1, ... then v7 (each after the previous one was
    acknowledged).  A snapshot of the list must never show a later volume ahead of an
    earlier one: that would be a write whose predecessor is missing."""
    import struct
    import threading

    class SlowList(list):
        def append(self, item) -> None:  # attaching a snapshot takes a while: a wide window
            time.sleep(0.002)
            super().append(item)

    a = Array(tmp_path / "arr", "main")
    names = [f"v{i}" for i in range(8)]
    for n in names:
        a.create_volume(n, MiB).cows = SlowList()
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            for n in names:
                a.write(n, 0, struct.pack("<Q", k) * 8)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        bad = []
        for i in range(20):
            a.create_snapshot(f"s{i}", volumes=names)
            for n in names:
                a.create_clone(f"s{i}-{n}", f"s{i}", n)
            ks = [struct.unpack("<Q", a.read(f"s{i}-{n}", 0, 8))[0] for n in names]
            if any(later > earlier for earlier, later in zip(ks, ks[1:], strict=False)) or ks[0] - ks[-1] > 1:
                bad.append(ks)
    finally:
        stop.set()
        t.join(10)
    assert not bad, f"snapshots that are no instant of the host's writes: {bad[:3]}"


def _secondary(tmp_path: Path) -> Array:
    a = Array(tmp_path / "backup", "backup")
    a.ensure_secondary_group("g", {1: ("vol-a", MiB)}, 4 * MiB, 1)
    a.secondary["g"].conf["consistent"] = True
    return a


def test_guard_snapshot_is_saved_with_its_flag(tmp_path):
    a = _secondary(tmp_path)
    saved: list[dict] = []
    real_save = a._save

    def recording_save() -> None:
        real_save()
        import json
        saved.append(json.loads((a.root / "array.json").read_text()))

    a._save = recording_save  # type: ignore[method-assign]
    name, note = a.take_guard("g")
    assert name == "resync-guard-g" and note == ""
    first = next(c for c in saved if name in c["snapshots"])  # the first state on disk with it
    assert first["snapshots"][name].get("guard") is True, "a guard was on disk without its flag"
    assert first["snapshots"][name]["consistent"] is True


def test_guard_that_cannot_be_replaced_is_kept_and_said(tmp_path, caplog, storage_log):
    a = _secondary(tmp_path)
    first, _ = a.take_guard("g")
    a.create_clone("restored", first, "vol-a")  # someone restored the old guard: it must stay
    a.secondary["g"].applied.store(7, 1, time.time())  # the backup moved on since
    with storage_log("dr_kit.storage.array", "WARNING"):
        second, note = a.take_guard("g")
    assert second != first and second in a.conf["snapshots"] and first in a.conf["snapshots"]
    assert a.snapshot_info(second)["sequence"] == 7 and a.snapshot_info(second)["guard"] is True
    assert first in note and "clones" in note
    assert any(first in r.getMessage() for r in caplog.records)
    made = a.snapshot_info(second)["created"]
    third, note3 = a.take_guard("g")  # the unreplaceable one is still said, the newer replaced
    guards = sorted(s for s in a.conf["snapshots"] if s.startswith("resync-guard-g"))
    assert guards == sorted({first, third}) and a.snapshot_info(third)["created"] > made
    assert first in note3
    a.delete_volume("restored")
    a.delete_secondary_group("g")  # the group's guards go with it
    assert not [s for s in a.conf["snapshots"] if s.startswith("resync-guard-g")]


def test_backup_applies_a_caught_up_batch_at_receipt_and_a_backlog_in_workers(tmp_path):
    """A batch received by a caught-up group is applied by the receiver from memory; with
    applying paused it waits in the journal for the apply workers, which verify what is on
    the disk and apply in order."""
    from dr_kit.storage import record as rec

    a = _secondary(tmp_path)
    g = a.secondary["g"]
    g.conf["state"] = "pair"
    kicks: list[str] = []
    g.wakeup = lambda: kicks.append("kick")
    vol = a.volume("vol-a")

    def batch(first: int, n: int, fill: bytes) -> bytes:
        return b"".join(rec.encode(rec.KIND_WRITE, 1, first + i, 10.0 + first + i, 1, 4096 * i,
                                   fill * 4096) for i in range(n))

    assert g.receive(batch(1, 3, b"a"), apply=True) == 3
    assert (g.received_seq, g.applied_seq, kicks) == (3, 3, [])
    assert vol.read(0, 3 * 4096) == b"a" * (3 * 4096) and g.applied.time == 13.0

    g.paused = True  # e.g. a drill holds the applier: the receiver leaves it to the workers
    assert g.receive(batch(4, 2, b"b"), apply=True) == 0
    assert (g.received_seq, g.applied_seq, kicks) == (5, 3, ["kick"])
    assert vol.read(0, 4096) == b"a" * 4096
    g.paused = False
    assert g.receive(batch(6, 1, b"c"), apply=True) == 0  # not caught up: no inline apply
    assert g.apply_available() == 3
    assert g.applied_seq == 6 and vol.read(0, 4096) == b"c" * 4096
    assert vol.read(4096, 4096) == b"b" * 4096
    a.close()


def test_an_initial_copy_begun_again_starts_a_new_generation_and_ends_only_when_all_is_copied(tmp_path):
    """An initial copy whose session failed begins again in a new generation (the backup
    then drops the frames and confirmations the abandoned copy still has in flight), with
    the entries the backup has not applied re-sent as copied regions; and a copy does not
    end while regions are still marked (a volume joined meanwhile)."""
    a = Array(tmp_path / "arr", "main")
    a.create_volume("db", 2 * MiB)
    g = a.create_primary_group("grp", ["db"], NOWHERE, secret=SECRET, journal_capacity=4 * MiB)
    try:
        dmap = g.dirty[a.volume("db").id]
        gen, _, initial = g.begin_copy()
        assert initial and gen == 1 and g.conf["state"] == "copy"
        dmap.clear()  # every region sent, then the session failed before the copy ended
        a.write("db", 3 * CHUNK + 1, b"written during the copy")  # journaled, not applied there
        gen2, first2, initial2 = g.begin_copy()
        assert initial2 and gen2 == 2 and g.conf["state"] == "copy"
        assert first2 == g.journal.next_seq and g.journal.last_seq < g.journal.first_seq  # reset
        assert list(dmap) == [3]  # the entry's region is copied instead
        with pytest.raises(DrKitError, match="1 regions were marked"):
            g.end_copy()
        assert g.conf["state"] == "copy"  # nothing changed
        dmap.clear()
        g.end_copy()
        assert g.conf["state"] == "pair" and g.conf["last_copy"]["ended"] is not None
        gen3, _, initial3 = g.begin_copy()  # a later resync: not initial, its own generation
        assert not initial3 and gen3 == 3
        g.suspend("suspended by request")  # while the resync runs: it does not end in pair
        with pytest.raises(DrKitError, match="became suspended during the copy"):
            g.end_copy()
        assert g.conf["state"] == "suspended" and g.conf["message"] == "suspended by request"
    finally:
        a.close()
