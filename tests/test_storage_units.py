"""Unit tests of the storage engine's value types, journal records, journal volumes and blocks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dr_kit.errors import InvalidInput, JournalError
from dr_kit.storage import record as rec
from dr_kit.storage.array import Vol
from dr_kit.storage.blocks import (
    CHUNK,
    ChunkMap,
    CloneVolume,
    CowStore,
    FileVolume,
    SnapshotView,
    chunks_of,
)
from dr_kit.storage.journal import MIN_CAPACITY, Journal
from dr_kit.storage.position import JournalPosition, LagReport

# -- positions ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,gen,seq", [("g1/0", 1, 0), ("g1/42", 1, 42), ("g7/123456789", 7, 123456789),
                                          (" g2/5 ", 2, 5)])
def test_position_parse_and_str_round_trip(text, gen, seq):
    p = JournalPosition.parse(text)
    assert (p.generation, p.sequence) == (gen, seq)
    assert str(p) == text.strip()
    assert JournalPosition.parse(str(p)) == p


def test_position_ordering_is_generation_then_sequence():
    ps = [JournalPosition.parse(t) for t in ("g2/1", "g1/10", "g1/9", "g3/0", "g2/100")]
    assert [str(p) for p in sorted(ps)] == ["g1/9", "g1/10", "g2/1", "g2/100", "g3/0"]
    assert JournalPosition(1, 5) < JournalPosition(1, 6) < JournalPosition(2, 0)
    assert JournalPosition(1, 5).advance(3) == JournalPosition(1, 8)
    assert JournalPosition(1, 5).entries_behind(JournalPosition(1, 9)) == 4
    assert JournalPosition(1, 9).entries_behind(JournalPosition(1, 5)) == 0


@pytest.mark.parametrize("bad", ["", "1/2", "g1", "g1/", "g/1", "gx/1", "g1/-3", "g-1/3", "G1/2",
                                 "g1/2/3", "g1.0/2", "position"])
def test_position_bad_strings_raise_invalid_input(bad):
    with pytest.raises(InvalidInput, match="journal position"):
        JournalPosition.parse(bad)


def test_position_negative_values_raise():
    with pytest.raises(InvalidInput):
        JournalPosition(1, -1)
    with pytest.raises(InvalidInput):
        JournalPosition(-1, 1)


def _lag(**kw) -> LagReport:
    base = dict(group="shop", state="pair", main=JournalPosition(1, 10), applied=JournalPosition(1, 10),
                sequence_lag=0, byte_lag=0, time_lag_s=0.0, consistent=True, measured_at=1000.5,
                message="")
    base.update(kw)
    return LagReport(**base)


def test_lag_report_round_trip_and_caught_up():
    r = _lag()
    d = r.to_dict()
    assert d["main"] == "g1/10" and d["applied"] == "g1/10"
    assert LagReport.from_dict(d) == r
    assert r.caught_up

    behind = _lag(applied=JournalPosition(1, 7), sequence_lag=3, byte_lag=300, time_lag_s=0.25)
    assert not behind.caught_up
    assert LagReport.from_dict(behind.to_dict()) == behind

    # sequence lag 0 but a time lag: not caught up (and the reverse)
    assert not _lag(time_lag_s=0.1).caught_up
    assert not _lag(sequence_lag=1).caught_up


def test_lag_report_unknown_stays_none_never_zero():
    r = _lag(state="copy", applied=None, sequence_lag=None, byte_lag=None, time_lag_s=None,
             consistent=None)
    d = r.to_dict()
    assert d["applied"] is None and d["sequence_lag"] is None
    assert d["byte_lag"] is None and d["time_lag_s"] is None and d["consistent"] is None
    back = LagReport.from_dict(d)
    assert back == r
    assert back.time_lag_s is None and back.sequence_lag is None and back.applied is None
    assert not back.caught_up


# -- records -----------------------------------------------------------------------------


def test_record_encode_decode_round_trip():
    data = os.urandom(5000)
    raw = rec.encode(rec.KIND_WRITE, 3, 77, 1234.5, 9, 65536, data)
    assert len(raw) == rec.HEADER_SIZE + len(data)
    r = rec.decode(raw)
    assert (r.kind, r.generation, r.sequence, r.time, r.volume, r.offset, r.data) == \
        (rec.KIND_WRITE, 3, 77, 1234.5, 9, 65536, data)
    assert r.size == len(raw)
    empty = rec.decode(rec.encode(rec.KIND_WRITE, 1, 1, 0.0, 1, 0, b""))
    assert empty.data == b""


@pytest.mark.parametrize("where", ["header", "data", "last"])
def test_record_flipped_bit_fails_checksum(where):
    raw = bytearray(rec.encode(rec.KIND_WRITE, 1, 5, 10.0, 2, 4096, b"x" * 100))
    i = {"header": 12, "data": rec.HEADER_SIZE + 50, "last": len(raw) - 1}[where]
    raw[i] ^= 0x01
    with pytest.raises(JournalError, match="checksum"):
        rec.decode(bytes(raw))


def test_record_bad_magic_and_cut_short_raise():
    raw = rec.encode(rec.KIND_WRITE, 1, 5, 10.0, 2, 0, b"y" * 100)
    with pytest.raises(JournalError, match="magic"):
        rec.decode(b"XXXX" + raw[4:])
    with pytest.raises(JournalError, match="cut short"):
        rec.decode(raw[:-1])
    with pytest.raises(JournalError, match="shorter than its header"):
        rec.decode(raw[: rec.HEADER_SIZE - 1])
    two = raw + rec.encode(rec.KIND_WRITE, 1, 6, 11.0, 2, 0, b"z" * 10)
    assert [r.sequence for r, _ in rec.iter_records(two)] == [5, 6]
    with pytest.raises(JournalError, match="ends inside a record"):
        list(rec.iter_records(two[:-3]))
    with pytest.raises(JournalError, match="header"):
        list(rec.iter_records(raw + two[len(raw): len(raw) + 10]))


def test_write_vector_record_round_trip():
    extents = [(4096, b"journal page"), (65536, os.urandom(3000)), (128, b"size entry")]
    kind, off, payload = rec.pack_extents(extents)
    assert kind == rec.KIND_WRITEV and off == 0
    r = rec.decode(rec.encode(kind, 1, 9, 5.0, 3, off, payload))
    assert r.extents() == extents
    one = rec.pack_extents([(77, b"single")])
    assert one == (rec.KIND_WRITE, 77, b"single")
    assert rec.decode(rec.encode(*one[:1], 1, 10, 5.0, 3, one[1], one[2])).extents() == [(77, b"single")]
    # a vector whose table does not match its data is refused, even with a good checksum
    bad = rec.decode(rec.encode(rec.KIND_WRITEV, 1, 11, 5.0, 3, 0, payload + b"extra"))
    with pytest.raises(JournalError, match="does not add up"):
        bad.extents()
    odd = rec.decode(rec.encode(7, 1, 12, 5.0, 3, 0, b"x"))
    with pytest.raises(JournalError, match="unknown kind"):
        odd.extents()


# -- journal -----------------------------------------------------------------------------

CAP = 4 << 20  # 4 MiB: segments of 512 KiB


def _append(j: Journal, data: bytes, *, t: float | None = None, volume: int = 1, offset: int = 0) -> int:
    seq = j.next_seq
    t = time.time() if t is None else t
    j.append(rec.encode(rec.KIND_WRITE, j.generation, seq, t, volume, offset, data), t)
    return seq


def _payload(seq: int, n: int = 1000) -> bytes:
    return (f"record-{seq:06d}-".encode() * (n // 14 + 1))[:n]


def _records(j: Journal, first: int | None = None) -> list[tuple[int, float, bytes]]:
    return [(r.sequence, r.time, r.data) for r, _ in j.iter_records(j.first_seq if first is None else first)]


def _seg_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"), key=lambda p: int(p.stem))


def _fill_segments(j: Journal, n: int, size: int) -> None:
    """Append records of ``size`` bytes until the journal has ``n`` segment files (bounded)."""
    for _ in range(10_000):
        if len(_seg_files(j.path)) >= n:
            return
        _append(j, _payload(j.next_seq, size))
    raise AssertionError(f"journal did not reach {n} segments")


def test_journal_reopen_keeps_positions_and_times(tmp_path):
    j = Journal.create(tmp_path / "j", CAP)
    times = {}
    for i in range(300):  # ~900 KiB: two segments of 512 KiB
        seq = _append(j, _payload(i + 1, 3000), t=1000.0 + i)
        times[seq] = 1000.0 + i
    assert (j.first_seq, j.last_seq) == (1, 300)
    assert len(_seg_files(tmp_path / "j")) >= 2, "the test wants records in several segments"
    before = _records(j)
    j.close()

    j2 = Journal.open(tmp_path / "j", CAP)
    assert (j2.first_seq, j2.last_seq, j2.next_seq, j2.generation) == (1, 300, 301, 1)
    assert _records(j2) == before
    assert all(j2.time_of(s) == t for s, t in times.items())
    assert j2.time_of(301) is None and j2.time_of(0) is None
    assert [s for s, _, _ in before] == list(range(1, 301))
    assert before[41][2] == _payload(42, 3000)


def test_journal_torn_tail_is_cut_off_and_appends_continue(tmp_path):
    j = Journal.create(tmp_path / "j", CAP)
    for i in range(1, 21):
        _append(j, _payload(i), t=float(i))
    end_of_19 = j._segments[-1].ends[-2]
    end_of_20 = j._segments[-1].ends[-1]
    seg = _seg_files(tmp_path / "j")[-1]
    # a torn write: the last record lost its final byte (the process died mid-write)
    with seg.open("r+b") as f:
        f.truncate(end_of_20 - 1)
    del j  # no clean close: like a kill -9

    j2 = Journal.open(tmp_path / "j", CAP)
    assert j2.last_seq == 19 and j2.next_seq == 20
    assert JournalPosition(j2.generation, j2.last_seq) == JournalPosition(1, 19)
    assert j2.time_of(20) is None and j2.time_of(19) == 19.0
    assert j2.bytes_after(0) == end_of_19
    # appending works again, and the new record 20 (not the torn one) reads back
    _append(j2, b"new twenty", t=20.5)
    _append(j2, b"twenty-one", t=21.0)
    recs = _records(j2)
    assert [s for s, _, _ in recs] == list(range(1, 22))
    assert recs[19] == (20, 20.5, b"new twenty") and recs[20] == (21, 21.0, b"twenty-one")
    j2.close()
    j3 = Journal.open(tmp_path / "j", CAP)
    assert _records(j3) == recs


def test_journal_garbage_after_last_record_is_cut(tmp_path):
    """A record with a wrong checksum at the very end (torn header) is the end of the journal."""
    j = Journal.create(tmp_path / "j", CAP)
    for i in range(1, 6):
        _append(j, _payload(i), t=float(i))
    end = j._segments[-1].ends[-1]
    seg = _seg_files(tmp_path / "j")[-1]
    raw6 = bytearray(rec.encode(rec.KIND_WRITE, 1, 6, 6.0, 1, 0, _payload(6)))
    raw6[rec.HEADER_SIZE + 3] ^= 0x40  # written, but one byte never reached the disk right
    with seg.open("r+b") as f:
        f.seek(end)
        f.write(raw6)
    j2 = Journal.open(tmp_path / "j", CAP)
    assert j2.last_seq == 5
    assert [s for s, _, _ in _records(j2)] == [1, 2, 3, 4, 5]


def test_journal_corrupt_record_in_non_last_segment_raises(tmp_path):
    j = Journal.create(tmp_path / "j", CAP)
    _fill_segments(j, 3, 20000)
    j.close()
    first = _seg_files(tmp_path / "j")[0]
    with first.open("r+b") as f:
        f.seek(rec.HEADER_SIZE + 100)  # in the data of the first record
        b = f.read(1)
        f.seek(rec.HEADER_SIZE + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(JournalError, match=rf"segment {first.name}: journal record 1 \(generation 1\) fails its checksum"):
        Journal.open(tmp_path / "j", CAP)


def test_journal_missing_segment_raises(tmp_path):
    j = Journal.create(tmp_path / "j", CAP)
    _fill_segments(j, 3, 20000)
    j.close()
    second = _seg_files(tmp_path / "j")[1]
    third = _seg_files(tmp_path / "j")[2]
    second.unlink()
    # either the gap itself is named, or the segment before it, whose records stop short
    gap = rf"records {int(second.stem)}\.\.{int(third.stem) - 1} are missing"
    with pytest.raises(JournalError, match=rf"{gap}|segment {_seg_files(tmp_path / 'j')[0].name}"):
        Journal.open(tmp_path / "j", CAP)


@pytest.mark.parametrize("cap", [0, 1, 4096, MIN_CAPACITY - 1])
def test_journal_capacity_below_minimum_raises(tmp_path, cap):
    with pytest.raises(InvalidInput, match="1 MiB"):
        Journal.create(tmp_path / "j", cap)
    assert not (tmp_path / "j").exists()
    Journal.create(tmp_path / "ok", MIN_CAPACITY).close()


def test_journal_free_through_recycles_segments_and_refuses_freed_reads(tmp_path):
    path = tmp_path / "j"
    j = Journal.create(path, CAP)
    _fill_segments(j, 4, 30000)
    first_of_third = j._segments[2].first_seq
    used_before = j.used_bytes
    j.free_through(first_of_third - 1)  # everything in the first two segments
    assert j.first_seq == first_of_third
    assert len(_seg_files(path)) == 2
    assert len(list(path.glob("*.spare"))) == 2  # recycled, not deleted
    assert j.used_bytes < used_before
    with pytest.raises(JournalError, match="already freed"):
        j.read_batch(1)
    with pytest.raises(JournalError, match="already freed"):
        list(j.iter_records(first_of_third - 1))
    assert j.time_of(1) is None
    assert [s for s, _, _ in _records(j)][0] == first_of_third
    # freeing part of a segment keeps it
    j.free_through(first_of_third)
    assert j.first_seq == first_of_third

    # appends now reuse a spare segment file instead of creating one
    spares = {p.name for p in path.glob("*.spare")}
    current = j._segments[-1].first_seq
    for _ in range(100):  # bounded: a segment holds ~17 of these records
        if j._segments[-1].first_seq != current:
            break
        _append(j, _payload(j.next_seq, 30000))
    assert j._segments[-1].first_seq != current
    assert len({p.name for p in path.glob("*.spare")}) == len(spares) - 1
    last = j.last_seq
    j.close()
    j2 = Journal.open(path, CAP)
    assert (j2.first_seq, j2.last_seq) == (first_of_third, last)


def test_journal_freed_everything_then_reopen_keeps_sequence(tmp_path):
    path = tmp_path / "j"
    j = Journal.create(path, MIN_CAPACITY)
    _fill_segments(j, 2, 30000)
    _append(j, _payload(j.next_seq, 30000))
    last = j.last_seq
    j.free_through(last)
    assert j.bytes_after(last) == 0
    j.close()
    j2 = Journal.open(path, MIN_CAPACITY)
    assert j2.next_seq == last + 1
    s = _append(j2, b"after")
    assert s == last + 1


@pytest.mark.parametrize("fsync", [True, False])
def test_a_syncing_journal_makes_its_segment_names_and_meta_durable(tmp_path, monkeypatch, fsync):
    """With ``fsync`` (power-loss safety) a record synced into a segment must be found by
    the segment's name, and the meta file read: the folder is synced when a roll names a
    segment, the meta when it is written.  Without it neither is (the hot path's cost)."""
    from dr_kit.storage import journal as journal_mod

    dirs: list[Path] = []
    files: list[str] = []
    real_dir, real_data = journal_mod.fsync_dir, os.fdatasync
    monkeypatch.setattr(journal_mod, "fsync_dir", lambda p: (dirs.append(Path(p)), real_dir(p)))
    monkeypatch.setattr(os, "fdatasync", lambda fd: (files.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                     real_data(fd)))
    path = tmp_path / "j"
    j = Journal.create(path, MIN_CAPACITY, fsync=fsync)
    made = len(dirs)
    _append(j, _payload(1, 30000))  # the first segment is named by this roll
    rolled = len(dirs) - made
    j.close()
    if fsync:
        assert made == 1 and rolled == 1 and set(dirs) == {path}
        assert any(f.endswith("/meta") for f in files) and any(f.endswith(".seg") for f in files)
    else:
        assert not dirs and not files


def test_journal_hot_path_makes_no_file(tmp_path):
    """The first entry writes into the segment file made with the journal, and freeing the
    last segment rewrites the meta file in place: the receiving and sending loops never
    create or rename a file there (that waited for the file system's journal, up to
    hundreds of milliseconds, while other files were written out)."""
    path = tmp_path / "j"
    j = Journal.create(path, MIN_CAPACITY, next_seq=5)
    (spare,) = path.glob("*.spare")
    made = spare.stat().st_ino
    assert spare.stat().st_blocks * 512 >= j.segment_size  # allocated with the journal
    meta = (path / "meta").stat().st_ino
    _append(j, _payload(5, 30000))
    (seg,) = _seg_files(path)
    assert seg.stat().st_ino == made and not list(path.glob("*.spare"))
    while j._segments[-1].size < j.segment_size // 2:  # the only segment half full, then
        _append(j, _payload(j.next_seq, 30000))  # all of it applied: it is freed
    assert len(_seg_files(path)) == 1
    j.free_through(j.last_seq)
    assert not _seg_files(path)  # retired to a spare
    assert (path / "meta").stat().st_ino == meta and not (path / "meta.tmp").exists()
    last = j.last_seq
    j.close()
    j2 = Journal.open(path, MIN_CAPACITY)
    assert j2.next_seq == last + 1


def test_journal_sequence_survives_crash_after_roll_with_freed_predecessors(tmp_path):
    """Records 1..n were applied and freed; the process dies right after rolling to a new
    segment (its first record torn).  The journal must go on at n+1, not restart at 1:
    sequence numbers are the group's write order and must never repeat."""
    path = tmp_path / "j"
    j = Journal.create(path, MIN_CAPACITY)  # segments of 256 KiB
    _fill_segments(j, 2, 60000)
    new_first = j._segments[-1].first_seq
    j.free_through(new_first - 1)  # the backup applied everything before the new segment
    assert [p.name for p in _seg_files(path)] == [f"{new_first:020d}.seg"]
    with _seg_files(path)[0].open("r+b") as f:  # the only record of it is torn
        f.truncate(rec.HEADER_SIZE + 10)
    del j  # crash: no close

    j2 = Journal.open(path, MIN_CAPACITY)
    assert j2.next_seq == new_first, (
        f"journal restarted at sequence {j2.next_seq} after a crash; records up to "
        f"{new_first - 1} were already written (and applied), so it must go on at {new_first}")


def test_journal_bytes_after_and_time_of(tmp_path):
    j = Journal.create(tmp_path / "j", CAP)
    sizes = {}
    for i in range(1, 51):
        data = _payload(i, 1000 + 10 * i)
        _append(j, data, t=500.0 + i)
        sizes[i] = rec.HEADER_SIZE + len(data)
    total = sum(sizes.values())
    assert j.bytes_after(0) == total
    assert j.bytes_after(50) == 0
    assert j.bytes_after(10) == sum(sizes[i] for i in range(11, 51))
    assert j.bytes_after(49) == sizes[50]
    assert j.time_of(1) == 501.0 and j.time_of(50) == 550.0 and j.time_of(51) is None
    assert j.used_bytes == total
    assert not j.would_overflow(CAP - total)
    assert j.would_overflow(CAP - total + 1)
    batch = j.read_batch(10, through=12)
    assert [r.sequence for r, _ in rec.iter_records(batch)] == [10, 11, 12]
    small = j.read_batch(10, max_bytes=sizes[10] + sizes[11])
    assert [r.sequence for r, _ in rec.iter_records(small)] == [10, 11]
    assert j.read_batch(51) == b""


# -- blocks ------------------------------------------------------------------------------


def _pattern(tag: int, n: int) -> bytes:
    return bytes((tag + i) & 0xFF for i in range(n))


def _live(dev: FileVolume) -> Vol:
    """A live volume with snapshots: the array's own Vol (preserve, then write)."""
    return Vol(name="v", id=1, dev=dev, role="data")


def test_file_volume_is_sparse_and_bounds_checked(tmp_path):
    v = FileVolume(tmp_path / "v.vol", 64 << 20, create=True)
    assert os.stat(v.path).st_size == 64 << 20
    assert os.stat(v.path).st_blocks * 512 <= 64 * 1024
    assert v.read(10 << 20, 100) == bytes(100)
    v.write(123, b"abc")
    assert v.read(120, 8) == b"\0\0\0abc\0\0"
    with pytest.raises(InvalidInput):
        v.write((64 << 20) - 2, b"abc")
    with pytest.raises(InvalidInput):
        v.read(-1, 10)
    with pytest.raises(FileExistsError):
        FileVolume(tmp_path / "v.vol", 1 << 20, create=True)
    v.close()


def test_snapshot_keeps_old_content_after_live_writes(tmp_path):
    size = 1 << 20
    live = _live(FileVolume(tmp_path / "v.vol", size, create=True))
    live.write(0, _pattern(1, size))
    store = CowStore(tmp_path / "snap", live.dev, create=True)
    live.cows.append(store)
    snap = SnapshotView(store)
    original = _pattern(1, size)

    live.write(100, b"X" * 10)  # inside chunk 0
    live.write(CHUNK - 5, b"Y" * 10)  # across chunks 0 and 1
    live.write(5 * CHUNK, b"Z" * CHUNK)  # a whole chunk
    live.write(5 * CHUNK + 7, b"W" * 3)  # the same chunk again: preserved only once
    assert snap.read(0, size) == original
    assert live.read(100, 10) == b"X" * 10
    assert live.read(5 * CHUNK, 10) == b"ZZZZZZZWWW"
    assert sorted(store.map) == [0, 1, 5]
    with pytest.raises(InvalidInput, match="read-only"):
        snap.write(0, b"no")

    # the preservation map and data survive a reopen of the store
    store.close()
    store2 = CowStore(tmp_path / "snap", live.dev)
    assert SnapshotView(store2).read(0, size) == original


def test_snapshot_creation_does_not_copy_data(tmp_path):
    big = FileVolume(tmp_path / "big.vol", 64 << 20, create=True)
    for off in range(0, 64 << 20, 1 << 20):  # real data in every MiB
        big.write(off, _pattern(off >> 20, 8192))
    store = CowStore(tmp_path / "snap-big", big, create=True)
    data_st = os.stat(store.data.path)
    assert data_st.st_size == 64 << 20
    assert data_st.st_blocks * 512 <= 64 * 1024, "creating a snapshot allocated data blocks"
    assert os.stat(store.map.path).st_size == (64 << 20) // CHUNK // 8
    assert store.map.count() == 0

    def cost(size: int, tag: str) -> float:
        vol = FileVolume(tmp_path / f"{tag}.vol", size, create=True)
        vol.write(size - 4096, b"q" * 4096)
        best = float("inf")
        for k in range(5):
            t0 = time.perf_counter()
            s = CowStore(tmp_path / f"snap-{tag}-{k}", vol, create=True)
            best = min(best, time.perf_counter() - t0)
            s.close()
        vol.close()
        return best

    small, large = cost(1 << 20, "small"), cost(256 << 20, "large")
    # same order of cost: a copy of 256 MiB would take far more than these few syscalls
    assert large < 10 * small + 0.005, f"snapshot of 256 MiB took {large * 1000:.2f} ms vs {small * 1000:.2f} ms for 1 MiB"


def test_clone_writes_touch_neither_snapshot_nor_live(tmp_path):
    size = 1 << 20
    live = _live(FileVolume(tmp_path / "v.vol", size, create=True))
    live.write(0, _pattern(3, size))
    store = CowStore(tmp_path / "snap", live.dev, create=True)
    live.cows.append(store)
    snap = SnapshotView(store)
    clone = CloneVolume(tmp_path / "clone", snap, create=True)
    before = _pattern(3, size)
    assert clone.read(0, size) == before

    clone.write(2 * CHUNK + 10, b"C" * 20)  # partial chunk
    clone.write(CHUNK - 3, b"D" * 6)  # across two chunks, partially
    assert snap.read(0, size) == before
    assert live.read(0, size) == before
    expect = bytearray(before)
    expect[2 * CHUNK + 10: 2 * CHUNK + 30] = b"C" * 20
    expect[CHUNK - 3: CHUNK + 3] = b"D" * 6
    assert clone.read(0, size) == bytes(expect)  # the rest of each touched chunk is kept
    assert sorted(clone.map) == [0, 1, 2]

    # a live write after the clone: the clone still shows the snapshot's content there
    live.write(4 * CHUNK, b"L" * 100)
    assert clone.read(4 * CHUNK, 100) == before[4 * CHUNK: 4 * CHUNK + 100]
    assert snap.read(4 * CHUNK, 100) == before[4 * CHUNK: 4 * CHUNK + 100]
    with pytest.raises(InvalidInput):
        clone.write(size - 1, b"xx")

    clone.close()
    reopened = CloneVolume(tmp_path / "clone", snap)
    assert reopened.read(0, size) == bytes(expect)


def test_chunk_map_persists_bits(tmp_path):
    m = ChunkMap(tmp_path / "m.map", 1000, create=True)
    assert os.stat(m.path).st_size == 125
    assert m.add(3) and m.add(999) and m.add(512)
    assert not m.add(3)
    assert 3 in m and 4 not in m
    m.discard(512)
    m.discard(7)  # not set: nothing happens
    m.close()
    m2 = ChunkMap(tmp_path / "m.map", 1000)
    assert list(m2) == [3, 999] and m2.count() == 2
    m2.set_all()
    assert m2.count() == 1000  # bits past the last chunk are not counted
    m2.close()
    m3 = ChunkMap(tmp_path / "m.map", 1000)
    assert m3.count() == 1000
    m3.clear()
    m3.close()
    assert ChunkMap(tmp_path / "m.map", 1000).count() == 0


def test_chunks_of():
    assert list(chunks_of(0, CHUNK)) == [0]
    assert list(chunks_of(CHUNK - 1, 2)) == [0, 1]
    assert list(chunks_of(3 * CHUNK, 1)) == [3]
    assert list(chunks_of(10, 0)) == []


# -- review findings ------------------------------------------------------------------------


def test_is_hole_only_for_holes(tmp_path):
    from dr_kit.storage.blocks import is_hole

    v = FileVolume(tmp_path / "v.vol", 4 * CHUNK, create=True)
    v.write(CHUNK, b"x" * 100)
    assert is_hole(v.fd, 0, CHUNK) is True
    assert is_hole(v.fd, CHUNK, CHUNK) is False
    assert is_hole(v.fd, 3 * CHUNK, CHUNK) is True  # ENXIO: no data after the offset
    fd = v.fd
    v.close()
    with pytest.raises(OSError):  # a bad descriptor is not a hole: its content is unknown
        is_hole(fd, 0, CHUNK)


class _FlakyDevice:
    """A device whose next writes fail (the array went away), then work again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray(size)
        self.fail = 0

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.buf[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.writev([(offset, data)])

    def writev(self, extents: list[tuple[int, bytes]]) -> None:
        from dr_kit.errors import Unavailable

        if self.fail:
            self.fail -= 1
            raise Unavailable("array data path failed")
        for off, d in extents:
            self.buf[off:off + len(d)] = d


def test_volfs_keeps_gathered_writes_when_sending_them_fails():
    from dr_kit.errors import Unavailable
    from dr_kit.sqlite.volfs import VolumeFS

    dev = _FlakyDevice(4 << 20)
    fs = VolumeFS(dev, "v")
    slot = fs.slot("db", create=True)
    fs.write(slot, 0, b"A" * 5000)
    fs.write(slot, 5000, b"B" * 100)
    dev.fail = 1
    with pytest.raises(Unavailable):
        fs.flush()
    fs.flush()  # the retry sends what the failed flush did not deliver
    again = VolumeFS(dev, "v")  # what the device holds now
    assert again.size(slot) == 5100
    assert again.read(slot, 0, 5100) == b"A" * 5000 + b"B" * 100


def test_volfs_write_by_write_failure_resends_only_the_rest():
    from dr_kit.errors import Unavailable
    from dr_kit.sqlite.volfs import VolumeFS

    dev = _FlakyDevice(4 << 20)
    dev.writev = None  # type: ignore[assignment]  # a device without write vectors
    calls = []

    def write(offset: int, data: bytes) -> None:
        calls.append(offset)
        if len(calls) == 2:
            raise Unavailable("gone")
        dev.buf[offset:offset + len(data)] = data

    dev.write = write  # type: ignore[method-assign]
    fs = VolumeFS(dev, "v")
    slot = fs.slot("db", create=True)
    fs.write(slot, 0, b"A" * 10)
    fs.write(slot, 100_000, b"C" * 10)  # a second extent
    with pytest.raises(Unavailable):
        fs.flush()
    sent_before = len(calls)
    fs.flush()
    assert calls[sent_before:][0] == calls[1], "the retry starts with the extent that failed"
    again = VolumeFS(dev, "v")
    assert again.read(slot, 0, 10) == b"A" * 10 and again.read(slot, 100_000, 10) == b"C" * 10


def test_listener_failures_are_logged(tmp_path, caplog, storage_log):
    from dr_kit.storage.array import Array

    a = Array(tmp_path / "b", "backup")
    g = a.ensure_secondary_group("g", {1: ("vol-a", 1 << 20)}, 4 << 20, 1)

    def broken() -> None:
        raise OSError("connection reset")

    g.listeners.append(broken)
    with storage_log("dr_kit.storage.groups", "WARNING"):
        g._notify()
    assert any("connection reset" in r.getMessage() for r in caplog.records)


# -- per-batch paths: journal batches, in-place record scans, frames, gathering -----------------


def test_journal_append_batch_spans_segments_and_reads_back(tmp_path):
    """A received batch is stored with one write per segment it lands in; the index and a
    reopen see every record."""
    j = Journal.create(tmp_path / "j", CAP)
    raws = [rec.encode(rec.KIND_WRITE, 1, s, 100.0 + s, 1, 0, _payload(s, 3000)) for s in range(1, 401)]
    buf = b"".join(raws)
    ends, end = [], 0
    for r in raws:
        end += len(r)
        ends.append(end)
    j.append_batch(buf[:ends[199]], [100.0 + s for s in range(1, 201)], ends[:200])
    rest = [e - ends[199] for e in ends[200:]]
    j.append_batch(buf[ends[199]:], [100.0 + s for s in range(201, 401)], rest)
    assert (j.first_seq, j.last_seq) == (1, 400)
    assert len(_seg_files(tmp_path / "j")) >= 2
    expect = [(s, 100.0 + s, _payload(s, 3000)) for s in range(1, 401)]
    assert _records(j) == expect
    assert j.time_of(250) == 350.0 and j.bytes_after(399) == len(raws[-1])
    j.close()
    assert _records(Journal.open(tmp_path / "j", CAP)) == expect


def test_record_scan_checks_in_place_and_yields_views():
    kind, off, vector = rec.pack_extents([(0, b"x" * 10), (50, b"yy")])
    raws = [rec.encode(rec.KIND_WRITE, 2, 10, 1.5, 3, 4096, b"a" * 100),
            rec.encode(kind, 2, 11, 1.6, 3, off, vector)]
    buf = b"".join(raws)
    out = list(rec.scan(buf, 10))
    assert [(k, g, s, t, v, o, e) for k, g, s, t, v, o, _, e in out] == [
        (rec.KIND_WRITE, 2, 10, 1.5, 3, 4096, len(raws[0])),
        (rec.KIND_WRITEV, 2, 11, 1.6, 3, 0, len(buf))]
    assert isinstance(out[0][6], memoryview) and bytes(out[0][6]) == b"a" * 100
    assert [(o, bytes(d)) for o, d in rec.extent_views(out[1][6])] == [(0, b"x" * 10), (50, b"yy")]
    with pytest.raises(JournalError, match="record 9 expected, found 10"):
        list(rec.scan(buf, 9))
    flipped = bytearray(buf)
    flipped[len(raws[0]) + rec.HEADER_SIZE + 3] ^= 1
    with pytest.raises(JournalError, match="record 11 .* fails its checksum"):
        list(rec.scan(bytes(flipped), 10))
    with pytest.raises(JournalError, match="cut short"):
        list(rec.scan(buf[:-1], 10))
    with pytest.raises(JournalError, match="does not add up"):
        rec.extent_views(bytes(out[1][6])[:-1])


def test_frame_reader_gives_the_same_frames_whatever_the_pieces():
    from dr_kit.storage import wire

    frames = [(wire.ENTRIES, 1, os.urandom(5000)), (wire.ACKB, 1, wire.ACK_BIN.pack(5, 4, 1.5, 1, 1)),
              (wire.STATE, 2, b"{}"), (wire.BYE, 3, b"")]
    stream = b"".join(wire.frame(t, c, p) for t, c, p in frames)
    for cut in (1, 9, 10, 100, 5009, 5010, len(stream) - 1, len(stream)):
        r = wire.FrameReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert [(t, c, bytes(p)) for t, c, p in got] == frames, cut
        assert not r.buf


@pytest.mark.parametrize("records,seconds,window", [
    (1, 0.001, 0.001), (1, 0.0001, 0.001), (10, 0.01, 0.001), (0, 0.5, 0.001),
    (5, 0.001, 0.005), (30, 0.003, 0.01), (10_000, 0.01, 0.01)])
def test_gathering_window_grows_with_the_write_rate_and_is_bounded(records, seconds, window):
    from dr_kit.storage.replication import GATHER_MAX_S, GATHER_MIN_S, gather_window

    assert GATHER_MIN_S <= gather_window(records, seconds) <= GATHER_MAX_S
    assert gather_window(records, seconds) == pytest.approx(window)


def test_keep_freed_memory_sets_glibc_thresholds_or_changes_nothing(monkeypatch):
    import ctypes
    import platform

    from dr_kit.storage import server

    if platform.libc_ver()[0] == "glibc":
        assert server.keep_freed_memory() is True
    calls = []

    class NoMallopt:  # a C library without mallopt (not glibc)
        def __init__(self, _name):
            pass

        def __getattr__(self, name):
            calls.append(name)
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert server.keep_freed_memory() is False and calls == ["mallopt"]


def test_a_channel_opened_on_a_connection_already_lost_fails_at_once():
    """Groups waiting for the same new connection get it even when the peer dropped it at
    once (the link emulator does so while the backup array restarts): a channel opened on
    it then fails at once, instead of sending its handshake nowhere and waiting out the
    handshake's 10 s (replication stalled that long after a backup array restarted)."""
    import asyncio
    import types

    from dr_kit.errors import Unavailable
    from dr_kit.storage import wire
    from dr_kit.storage.replication import _MainLane

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peer = types.SimpleNamespace(remote=f"127.0.0.1:{port}", lanes={})
        loop = asyncio.get_running_loop()
        _, lane = await loop.create_connection(lambda: _MainLane(None, peer, "prio"), "127.0.0.1", port)
        for _ in range(200):
            if lane.closed:
                break
            await asyncio.sleep(0.01)
        assert lane.closed
        ch = lane.open_channel()
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="lost"):
            ch.send_json(wire.HELLO, {"group": "g", "nonce": "n", "lane": "prio"})
        with pytest.raises(Unavailable, match="lost"):
            await ch.next(10.0)
        assert time.monotonic() - t0 < 1.0
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("fsync", [True, False])
def test_a_syncing_array_makes_its_configuration_durable_before_naming_it(tmp_path, monkeypatch, fsync):
    """``array.json`` is replaced by a rename: with ``fsync`` the new file is synced before
    the rename and the folder after it, so a power loss leaves the old file or the whole new
    one, never an empty one under the name."""
    from dr_kit.storage import array as array_mod
    from dr_kit.storage.array import Array

    calls: list[str] = []
    real_fsync, real_replace, real_dir = os.fsync, os.replace, array_mod.fsync_dir
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(
        "fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(f"replace {Path(b).name}"), real_replace(a, b)))
    monkeypatch.setattr(array_mod, "fsync_dir", lambda p: (calls.append(f"dir {Path(p).name}"), real_dir(p)))
    a = Array(tmp_path / "a", "a", fsync=fsync)
    calls.clear()
    a.create_volume("v", 1 << 20)
    saves = [c for c in calls if c.startswith(("fsync array.json", "replace array.json", "dir a"))]
    if fsync:
        assert saves[:3] == ["fsync array.json.tmp", "replace array.json", "dir a"], calls
    else:
        assert saves and all(c == "replace array.json" for c in saves), calls
    assert json.loads((tmp_path / "a" / "array.json").read_text())["volumes"]["v"]
