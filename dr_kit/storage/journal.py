"""A journal volume: checksummed records in segment files, kept until applied at the backup.

The journal of a consistency group holds every acknowledged write in one sequence.  It is
a folder of segment files named by their first sequence number plus a small ``meta`` file
(generation and the next sequence when the journal is empty).  Records are appended; whole
segments are deleted once every record in them is applied at the backup.

In memory the journal keeps, per retained record, only its time and its end offset (16
bytes), so time lag and byte lag can be answered without reading the disk; memory is
bounded by the journal's capacity, never by volume sizes.

Segment files are allocated at full size when created and recycled when freed (renamed
to the next segment's name), so appending a record overwrites allocated blocks instead
of growing a file: the commit path stays cheap.

The commit path does not write the record itself.  It queues the entry (sequence
assigned, data held by reference) and marks the regions it writes in an *in-flight map*, a
small file mapped into memory; the host's write is then acknowledged.  The queue is written
to the segments in batches by whoever reads the journal next (the replication sender, a
status query), by the commit path itself once 1 MiB is queued, and on close; each batch
then clears its marks.  So the commit path costs one mapped store per region instead of a
record's encoding, checksum and system call, and the records' work happens between the
host's requests, as the sending already does.  A store into a shared mapping is in the page
cache at once, as a written segment is: if the array process is killed, the in-flight map
names every region whose acknowledged write may be missing from the segments
(:meth:`Journal.in_flight`), and the group copies those regions by a resync instead of
losing them (see :meth:`dr_kit.storage.array.Array._open_primary`).

Recovery (``open``): every segment is scanned and verified.  A record cut short, failing
its checksum, or left over from the file's previous use (wrong sequence) at the end of
the last segment marks the end of the journal: it was never acknowledged, and is cut off.
Anything wrong elsewhere raises :class:`JournalError`.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dr_kit.errors import InvalidInput, JournalError
from dr_kit.fsutil import fsync_dir
from dr_kit.storage import record as rec
from dr_kit.storage.blocks import CHUNK

MIN_CAPACITY = 1 << 20
SPARES = 2
META_SIZE = 128  # bytes of the meta file: its JSON, padded with blanks
DRAIN_AT = 1 << 20  # queued bytes at which the commit path writes the queue itself
_IOV_MAX = 1024  # buffers per pwritev


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # file systems without fallocate: grow on write
        pass


class _InFlight:
    """The in-flight maps of one journal: per member volume a file of two halves (epochs)
    with one byte per chunk, mapped into memory.  A queued entry marks its regions in the
    current epoch; a drain flips the epoch, writes the entries queued before the flip and
    then clears that epoch's marks.  A byte is set before the volume is written, so after a
    kill every acknowledged write not yet in a segment lies in a marked chunk.  A batch
    whose write failed keeps its marks; they are cleared with the batch after the one
    that writes it (a mark set too long costs a region's copy after a kill, never a write)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.maps: dict[int, tuple[mmap.mmap, int]] = {}  # volume id -> (map, chunks)
        self.epoch = 0
        self.marked: tuple[list, list] = ([], [])  # per epoch: (map, start, stop) to clear

    def path(self, volume: int) -> Path:
        return self.folder / f"inflight-{volume}.map"

    def track(self, volume: int, nchunks: int) -> None:
        if volume in self.maps:
            return
        fd = os.open(self.path(volume), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)  # whatever it held was taken over by the caller
            os.ftruncate(fd, 2 * nchunks)
            self.maps[volume] = (mmap.mmap(fd, 2 * nchunks), nchunks)
        finally:
            os.close(fd)

    def mark(self, volume: int, extents: Sequence[tuple[int, bytes | memoryview]]) -> None:
        m, n = self.maps[volume]
        base = n if self.epoch else 0
        marked = self.marked[self.epoch]
        for off, data in extents:
            lo, hi = base + off // CHUNK, base + (off + len(data) - 1) // CHUNK + 1
            if hi == lo + 1:
                m[lo] = 1
            else:
                m[lo:hi] = b"\1" * (hi - lo)
            marked.append((m, lo, hi))

    def flip(self) -> int:
        old, self.epoch = self.epoch, 1 - self.epoch
        return old

    def clear(self, epoch: int) -> None:
        marked = self.marked[epoch]
        for m, lo, hi in marked:
            if hi == lo + 1:
                m[lo] = 0
            else:
                m[lo:hi] = bytes(hi - lo)
        marked.clear()

    def close(self) -> None:
        for m, _ in self.maps.values():
            m.close()
        self.maps.clear()


@dataclass
class _Segment:
    first_seq: int
    path: Path
    times: array = field(default_factory=lambda: array("d"))
    ends: array = field(default_factory=lambda: array("Q"))  # end offset of each record
    size: int = 0  # bytes of records in the segment (the last end)

    rfd: int = -1  # read descriptor, opened on first read, closed when the segment goes

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def start_of(self, seq: int) -> int:
        i = seq - self.first_seq
        return self.ends[i - 1] if i > 0 else 0


class Journal:
    """One journal volume.  Thread safe: one appender, any number of readers."""

    DRAIN_AT = DRAIN_AT

    def __init__(self, path: str | Path, capacity: int, *, fsync: bool = False,
                 segment_size: int | None = None) -> None:
        if capacity < MIN_CAPACITY:
            raise InvalidInput(
                f"journal capacity {capacity} bytes is too small to hold one entry; "
                f"give at least {MIN_CAPACITY} bytes (1 MiB)")
        self.path = Path(path)
        self.capacity = capacity
        self.fsync = fsync
        self.segment_size = segment_size or max(256 * 1024, min(8 << 20, capacity // 8))
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._spares: list[Path] = []
        self._lock = threading.Lock()  # the segments
        self._qlock = threading.Lock()  # the queue and the in-flight maps' epoch
        self._drain_lock = threading.Lock()  # one drain at a time
        self._queue: list[tuple[int, int, float, int, int, bytes | memoryview]] = []
        self._queued = 0  # bytes of the queued records
        self._flight: _InFlight | None = None
        self.generation = 1
        self.next_seq = 1  # the next entry's sequence (queued entries included)
        self._disk_next = 1  # the sequence of the next record written to a segment
        self.freed_through = 0

    # -- opening and recovery -------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, capacity: int, *, generation: int = 1, next_seq: int = 1,
               fsync: bool = False) -> Journal:
        j = cls(path, capacity, fsync=fsync)
        j.path.mkdir(parents=True, exist_ok=True)
        for p in list(j.path.glob("*.seg")) + list(j.path.glob("*.spare")):
            p.unlink()
        j.generation, j.next_seq, j.freed_through = generation, next_seq, next_seq - 1
        j._disk_next = next_seq
        for p in j.path.glob("inflight-*.map"):
            p.unlink()
        j._write_meta()
        # the first segment's file is made now, not by the first entry: making a file and
        # allocating its blocks waits for the file system's own journal, which can take
        # tens of milliseconds while other files are written out
        j._spares.append(j._new_file(j.path / f"{next_seq:020d}.spare", j.segment_size))
        if fsync:
            fsync_dir(j.path)
        return j

    @classmethod
    def open(cls, path: str | Path, capacity: int, *, fsync: bool = False) -> Journal:
        j = cls(path, capacity, fsync=fsync)
        meta = json.loads((j.path / "meta").read_text())
        j.generation, j.next_seq = int(meta["generation"]), int(meta["next_seq"])
        j.freed_through = j.next_seq - 1
        j._spares = sorted(j.path.glob("*.spare"))
        segs = sorted(j.path.glob("*.seg"), key=lambda p: int(p.stem))
        for i, p in enumerate(segs):
            seg = j._scan(p, last=(i == len(segs) - 1), end=int(segs[i + 1].stem) if i + 1 < len(segs) else None)
            if j._segments and seg.first_seq != j._segments[-1].last_seq + 1:
                raise JournalError(f"journal {j.path}: records {j._segments[-1].last_seq + 1}.."
                                   f"{seg.first_seq - 1} are missing")
            if seg.count:
                j._segments.append(seg)
            else:  # nothing valid in it: the journal goes on at the sequence it is named by
                j.next_seq = max(j.next_seq, seg.first_seq)
                j.freed_through = j.next_seq - 1
                p.unlink()
        if j._segments:
            j.freed_through = j._segments[0].first_seq - 1
            j.next_seq = j._segments[-1].last_seq + 1
        j._disk_next = j.next_seq
        return j

    # -- the in-flight maps -----------------------------------------------------------
    def in_flight(self) -> dict[int, set[int]]:
        """Chunks, per volume id, that the in-flight maps on disk mark: regions whose
        acknowledged writes may be missing from the segments (the array stopped with
        entries queued).  Read once at open, before :meth:`track` takes the maps over."""
        found: dict[int, set[int]] = {}
        for p in self.path.glob("inflight-*.map"):
            try:
                vid = int(p.stem.split("-", 1)[1])
            except ValueError:
                continue
            raw = p.read_bytes()
            half = len(raw) // 2
            if not half or not raw.strip(b"\0"):
                continue
            chunks = {i % half for i, b in enumerate(raw) if b}
            if chunks:
                found[vid] = chunks
        return found

    def track(self, volumes: dict[int, int]) -> None:
        """Queue the commit path's entries from now on, marking the regions they write
        in the in-flight maps of these volumes (volume id -> chunks); the maps start
        empty (call :meth:`in_flight` first).  Without this, entries are written at once."""
        with self._qlock:
            if self._flight is None:
                self._flight = _InFlight(self.path)
            for vid, n in volumes.items():
                self._flight.track(vid, max(1, n))

    def _scan(self, p: Path, last: bool, end: int | None = None) -> _Segment:
        seg = _Segment(int(p.stem), p)
        good = 0
        expect = seg.first_seq
        with p.open("rb") as f:
            while True:
                head = f.read(rec.HEADER_SIZE)
                if not head:
                    break
                try:
                    if len(head) < rec.HEADER_SIZE:
                        raise JournalError("record header cut short")
                    length = rec.decode_header(head)[6]
                    r = rec.verify(head, f.read(length))
                    if r.sequence != expect:
                        raise JournalError(f"record {expect} expected, found {r.sequence}")
                except JournalError as e:
                    if last or expect == end:  # the end: a torn write, padding or an old record
                        break
                    raise JournalError(f"journal {self.path}: segment {p.name}: {e}") from None
                good += rec.HEADER_SIZE + length
                seg.times.append(r.time)
                seg.ends.append(good)
                expect += 1
        seg.size = good
        return seg

    def _write_meta(self) -> None:
        """The generation and the next sequence, written over the file in place: one small
        write, no new file and no rename.  (A new file renamed over the old one makes ext4
        write the new file's data out at once; on the backup's receiving loop, where the
        last applied segment is freed, that held entries for up to 200 ms.)"""
        data = json.dumps({"generation": self.generation, "next_seq": self._disk_next}).encode()
        fd = os.open(self.path / "meta", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data.ljust(META_SIZE), 0)  # JSON allows the trailing blanks
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    # -- appending ------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        segs = self._segments
        held = (len(segs) - 1) * self.segment_size + segs[-1].size if segs else 0
        return held + self._queued

    def would_overflow(self, nbytes: int) -> bool:
        return self.used_bytes + nbytes > self.capacity

    def append(self, raw: bytes, time: float) -> None:
        """Append one encoded record whose sequence is ``next_seq`` (the caller checked)."""
        self.append_parts((raw,), len(raw), time)

    def append_entry(self, kind: int, volume: int, offset: int, data: bytes | memoryview,
                     time: float, regions: Sequence[tuple[int, bytes | memoryview]]) -> bool:
        """The next entry (sequence ``next_seq``, this generation) carrying ``data``, which
        writes ``regions`` (offset, data) of volume ``volume``: the commit path's one call,
        made before the volume is written.  With :meth:`track` on, the entry is queued
        (``data`` is kept by reference: it must not change) and its regions are marked in
        flight; otherwise the record is written at once.  False, with nothing done, when it
        would not fit in the journal's capacity."""
        size = rec.HEADER_SIZE + len(data)
        with self._qlock:
            segs = self._segments
            used = (len(segs) - 1) * self.segment_size + segs[-1].size if segs else 0
            if used + self._queued + size > self.capacity:
                return False
            flight = self._flight
            if flight is not None:
                flight.mark(volume, regions)
                self._queue.append((kind, self.next_seq, time, volume, offset, data))
                self._queued += size
                self.next_seq += 1
                if self._queued < self.DRAIN_AT:
                    return True
        if flight is None:
            head = rec.encode_head(kind, self.generation, self.next_seq, time, volume, offset, data)
            self.append_parts((head, data), size, time)
        else:
            try:
                self.drain()
            except OSError:  # the entry stays queued and marked: the next reader retries
                pass  # (and the sender says why it cannot); the host's write goes on
        return True

    def drain(self) -> None:
        """Write the queued entries to the segments (one system call per up to 512
        records) and clear their in-flight marks.  Returns once every entry queued before
        the call is in a segment (also when another thread's drain was writing them)."""
        if not self._queue and not self._drain_lock.locked():
            return
        with self._drain_lock:
            with self._qlock:
                queue, self._queue = self._queue, []
                flight = self._flight
                epoch = flight.flip() if flight is not None else 0
            if not queue:
                return
            try:
                with self._lock:
                    self._write_queue(queue)
            except BaseException:
                # what was not written goes back in front; its marks stay set until it is
                left = [q for q in queue if q[1] >= self._disk_next]
                with self._qlock:
                    self._queue[:0] = left
                    self._queued -= sum(rec.HEADER_SIZE + len(q[5]) for q in queue) - \
                        sum(rec.HEADER_SIZE + len(q[5]) for q in left)
                raise
            with self._qlock:
                self._queued -= sum(rec.HEADER_SIZE + len(q[5]) for q in queue)
            if flight is not None:
                flight.clear(epoch)

    def _write_queue(self, queue: list[tuple[int, int, float, int, int, bytes | memoryview]]) -> None:
        """Write queued entries in order, in batches that fill the last segment or the next
        (hold the segments' lock).  ``_disk_next`` says how far it got if a write fails."""
        parts: list[bytes | memoryview] = []
        times: list[float] = []
        sizes: list[int] = []
        first, room, batch = queue[0][1], 0, 0
        for kind, seq, t, volume, offset, data in queue:
            size = rec.HEADER_SIZE + len(data)
            if parts and (batch + size > room or len(parts) >= _IOV_MAX):
                self._write_locked(parts, times, sizes, first)
                parts, times, sizes, first, batch = [], [], [], seq, 0
            if not parts:  # a batch fills the last segment, or the next one
                seg = self._segments[-1] if self._segments else None
                room = self.segment_size - seg.size if seg is not None else 0
                if size > room:
                    room = max(self.segment_size, size)
            parts += (rec.encode_head(kind, self.generation, seq, t, volume, offset, data), data)
            times.append(t)
            sizes.append(size)
            batch += size
        if parts:
            self._write_locked(parts, times, sizes, first)
        if self.fsync:
            assert self._fd is not None
            os.fdatasync(self._fd)

    def _write_locked(self, parts: list[bytes | memoryview], times: list[float], sizes: list[int],
                      first: int) -> None:
        """Consecutive records (sequences ``first`` on) into the last segment, or a new one."""
        need = sum(sizes)
        seg = self._segments[-1] if self._segments else None
        if seg is None or seg.size + need > self.segment_size:
            seg = self._roll(need, first)
        elif self._fd is None:
            self._fd = os.open(seg.path, os.O_RDWR)
        assert self._fd is not None  # _roll opens the new segment
        os.pwritev(self._fd, parts, seg.size)
        seg.times.extend(times)
        for size in sizes:
            seg.size += size
            seg.ends.append(seg.size)
        self._disk_next = first + len(sizes)

    def append_parts(self, parts: Sequence[bytes | memoryview], size: int, time: float) -> None:
        """Append one record given as consecutive parts (header, data) of ``size`` bytes."""
        self.drain()
        with self._lock:
            segs = self._segments
            seg = segs[-1] if segs else None
            if seg is None or seg.size + size > self.segment_size:
                seg = self._roll(size)
            elif self._fd is None:
                self._fd = os.open(seg.path, os.O_RDWR)
            fd = self._fd
            assert fd is not None  # _roll opens the new segment
            os.pwritev(fd, parts, seg.size)
            if self.fsync:
                os.fdatasync(fd)
            seg.times.append(time)
            seg.size += size
            seg.ends.append(seg.size)
            self.next_seq += 1
            self._disk_next = self.next_seq

    def append_many(self, records: list[tuple[bytes, float]]) -> None:
        """Append consecutive encoded records (sequences ``next_seq`` on), few system calls."""
        buf = b"".join(r for r, _ in records)
        ends, end = [], 0
        for raw, _ in records:
            end += len(raw)
            ends.append(end)
        self.append_batch(buf, [t for _, t in records], ends)

    def append_batch(self, buf: bytes | memoryview, times: Sequence[float],
                     ends: Sequence[int]) -> None:
        """Append consecutive encoded records held back to back in ``buf`` (sequences
        ``next_seq`` on; ``ends[k]`` is where record k ends in ``buf``): one write per
        segment they land in."""
        self.drain()
        view = memoryview(buf)
        i, n = 0, len(ends)
        while i < n:
            with self._lock:
                start = ends[i - 1] if i else 0
                seg = self._segments[-1] if self._segments else None
                if seg is None or seg.size + ends[i] - start > self.segment_size:
                    seg = self._roll(ends[i] - start)
                elif self._fd is None:
                    self._fd = os.open(seg.path, os.O_RDWR)
                room = self.segment_size - seg.size
                j = i + 1
                while j < n and ends[j] - start <= room:
                    j += 1
                fd = self._fd
                assert fd is not None  # _roll opens the new segment
                os.pwrite(fd, view[start:ends[j - 1]], seg.size)
                if self.fsync:
                    os.fdatasync(fd)
                base = seg.size - start
                seg.times.extend(times[i:j])
                seg.ends.extend(e + base for e in ends[i:j])
                seg.size = seg.ends[-1]
                self.next_seq += j - i
                self._disk_next = self.next_seq
            i = j

    def _roll(self, need: int, first: int | None = None) -> _Segment:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        first = self.next_seq if first is None else first
        seg = _Segment(first, self.path / f"{first:020d}.seg")
        if self._spares:
            os.replace(self._spares.pop(), seg.path)
            self._fd = os.open(seg.path, os.O_RDWR)
        else:
            self._fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        size = max(self.segment_size, need)
        if os.fstat(self._fd).st_size < size:
            _allocate(self._fd, size)
        if self.fsync:  # the records synced into it are found after a power loss by its name
            fsync_dir(self.path)
        self._segments.append(seg)
        return seg

    @staticmethod
    def _new_file(path: Path, size: int) -> Path:
        """An empty file of ``size`` bytes with its blocks allocated (a spare segment)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _allocate(fd, size)
        finally:
            os.close(fd)
        return path

    def _retire(self, seg: _Segment) -> None:
        """A freed segment becomes a spare for a later roll (or is deleted)."""
        if seg.rfd >= 0:
            os.close(seg.rfd)
            seg.rfd = -1
        if len(self._spares) < SPARES:
            spare = self.path / f"{seg.first_seq:020d}.spare"
            os.replace(seg.path, spare)
            self._spares.append(spare)
        else:
            os.unlink(seg.path)

    # -- reading --------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def first_seq(self) -> int:
        """The first record held (queued ones included)."""
        return self._segments[0].first_seq if self._segments else self._disk_next

    def _find(self, seq: int) -> _Segment | None:
        for s in self._segments:
            if s.first_seq <= seq <= s.last_seq:
                return s
        return None

    def time_of(self, seq: int) -> float | None:
        self.drain()
        with self._lock:
            s = self._find(seq)
            return s.times[seq - s.first_seq] if s else None

    def bytes_after(self, seq: int) -> int:
        """Bytes of the records after ``seq`` still held in this journal."""
        self.drain()
        with self._lock:
            total = 0
            for s in self._segments:
                if s.last_seq <= seq:
                    continue
                total += s.size - (s.start_of(seq + 1) if s.first_seq <= seq else 0)
            return total

    def read_batch(self, from_seq: int, max_bytes: int = 1 << 20, through: int | None = None) -> bytes:
        """Raw encoded records from ``from_seq`` on (within one segment, at most ``max_bytes``
        unless a single record is larger); empty when there is none yet."""
        return self.read_records(from_seq, max_bytes, through)[0]

    def read_records(self, from_seq: int, max_bytes: int = 1 << 20,
                     through: int | None = None) -> tuple[bytes, int]:
        """Like :meth:`read_batch`, with the number of records read (from the index: no
        record is parsed)."""
        self.drain()
        with self._lock:
            s = self._find(from_seq)
            if s is None:
                if from_seq < self.first_seq:
                    raise JournalError(f"journal {self.path.name}: record {from_seq} was already freed")
                return b"", 0
            last = s.last_seq if through is None else min(s.last_seq, through)
            if last < from_seq:
                return b"", 0
            start = s.start_of(from_seq)
            i = from_seq - s.first_seq
            j = last - s.first_seq
            end = s.ends[j]
            if end - start > max_bytes:  # the largest prefix within max_bytes (at least one)
                lo, hi = i, j
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if s.ends[mid] - start <= max_bytes:
                        lo = mid
                    else:
                        hi = mid - 1
                j = lo
                end = s.ends[j]
            if s.rfd < 0:
                s.rfd = os.open(s.path, os.O_RDONLY)
            return os.pread(s.rfd, end - start, start), j - i + 1

    def iter_records(self, from_seq: int, through: int | None = None):
        """Verified records from ``from_seq`` through ``through`` (default: the last)."""
        seq = from_seq
        stop = self.last_seq if through is None else through
        while seq <= stop:
            buf = self.read_batch(seq, through=stop)
            if not buf:
                return
            for r, raw in rec.iter_records(buf):
                if r.sequence != seq:
                    raise JournalError(f"journal {self.path.name}: record {seq} expected, found {r.sequence}")
                yield r, raw
                seq += 1

    # -- freeing --------------------------------------------------------------------
    def free_through(self, seq: int) -> None:
        """Forget the records up to ``seq``: delete segments that hold only such records."""
        with self._lock:
            self.freed_through = max(self.freed_through, seq)
            while len(self._segments) > 1 and self._segments[0].last_seq <= self.freed_through:
                self._retire(self._segments.pop(0))
            if (len(self._segments) == 1 and self._segments[0].last_seq <= self.freed_through
                    and self._segments[0].size >= self.segment_size // 2):
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                self._retire(self._segments.pop(0))
                self._write_meta()

    def reset(self, generation: int, next_seq: int | None = None) -> None:
        """Start a new generation: drop every record (a resync will copy what they held)."""
        self.drain()
        with self._lock:
            if next_seq is not None:
                self.next_seq = next_seq
            self._disk_next = self.next_seq
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for s in self._segments:
                self._retire(s)
            self._segments.clear()
            self.generation = generation
            self.freed_through = self.next_seq - 1
            self._write_meta()

    def close(self) -> None:
        self.drain()
        with self._qlock:
            if self._flight is not None:
                self._flight.close()
                self._flight = None
        with self._lock:
            for seg in self._segments:
                if seg.rfd >= 0:
                    os.close(seg.rfd)
                    seg.rfd = -1
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._write_meta()
