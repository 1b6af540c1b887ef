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

Recovery (``open``): every segment is scanned and verified.  A record cut short, failing
its checksum, or left over from the file's previous use (wrong sequence) at the end of
the last segment marks the end of the journal: it was never acknowledged, and is cut off.
Anything wrong elsewhere raises :class:`JournalError`.
"""

from __future__ import annotations

import json
import os
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dr_kit.errors import InvalidInput, JournalError
from dr_kit.storage import record as rec

MIN_CAPACITY = 1 << 20
SPARES = 2


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
        self._lock = threading.Lock()
        self.generation = 1
        self.next_seq = 1
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
        j._write_meta()
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
        return j

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
        tmp = self.path / "meta.tmp"
        tmp.write_text(json.dumps({"generation": self.generation, "next_seq": self.next_seq}))
        os.replace(tmp, self.path / "meta")

    # -- appending ------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        segs = self._segments
        if not segs:
            return 0
        return (len(segs) - 1) * self.segment_size + segs[-1].size

    def would_overflow(self, nbytes: int) -> bool:
        return self.used_bytes + nbytes > self.capacity

    def append(self, raw: bytes, time: float) -> None:
        """Append one encoded record whose sequence is ``next_seq`` (the caller checked)."""
        self.append_parts((raw,), len(raw), time)

    def append_entry(self, kind: int, volume: int, offset: int, data: bytes | memoryview,
                     time: float) -> bool:
        """Encode the next record (sequence ``next_seq``, this generation) carrying ``data``
        and append it: the commit path's one call.  False, with nothing written, when it
        would not fit in the journal's capacity."""
        size = rec.HEADER_SIZE + len(data)
        segs = self._segments
        used = (len(segs) - 1) * self.segment_size + segs[-1].size if segs else 0
        if used + size > self.capacity:
            return False
        head = rec.encode_head(kind, self.generation, self.next_seq, time, volume, offset, data)
        self.append_parts((head, data), size, time)
        return True

    def append_parts(self, parts: Sequence[bytes | memoryview], size: int, time: float) -> None:
        """Append one record given as consecutive parts (header, data) of ``size`` bytes."""
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
            i = j

    def _roll(self, need: int) -> _Segment:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        seg = _Segment(self.next_seq, self.path / f"{self.next_seq:020d}.seg")
        if self._spares:
            os.replace(self._spares.pop(), seg.path)
            self._fd = os.open(seg.path, os.O_RDWR)
        else:
            self._fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        size = max(self.segment_size, need)
        if os.fstat(self._fd).st_size < size:
            try:
                os.posix_fallocate(self._fd, 0, size)
            except OSError:  # file systems without fallocate: grow on write
                pass
        self._segments.append(seg)
        return seg

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
        return self._segments[0].first_seq if self._segments else self.next_seq

    def _find(self, seq: int) -> _Segment | None:
        for s in self._segments:
            if s.first_seq <= seq <= s.last_seq:
                return s
        return None

    def time_of(self, seq: int) -> float | None:
        with self._lock:
            s = self._find(seq)
            return s.times[seq - s.first_seq] if s else None

    def bytes_after(self, seq: int) -> int:
        """Bytes of the records after ``seq`` still held in this journal."""
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
        with self._lock:
            if next_seq is not None:
                self.next_seq = next_seq
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
        with self._lock:
            for seg in self._segments:
                if seg.rfd >= 0:
                    os.close(seg.rfd)
                    seg.rfd = -1
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._write_meta()
