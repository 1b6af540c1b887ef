"""Block devices of the array: volume files, copy-on-write snapshots and writable clones.

- :class:`FileVolume` is a sparse file of fixed size.
- :class:`ChunkMap` is a persistent bitmap with one bit per chunk (64 KiB by default);
  used for snapshot preservation maps, clone overlays and the changed-region tracking of
  suspended pairs.  Its size is volume size / chunk / 8 bytes: 20 KiB for 10 GiB.
- A snapshot is a :class:`CowStore` attached to a live volume: before the live volume's
  chunk is overwritten for the first time, its old content is copied into the store.
  Creating one writes only an empty map and a sparse file: its cost does not depend on the
  volume's size.  :class:`SnapshotView` reads the frozen image.
- :class:`CloneVolume` is a writable device over any base (usually a snapshot view): its
  own chunks live in an overlay file, everything else is read from the base.

Thin stays thin: a zeroed range becomes a hole (``FileVolume.zero`` punches it), and a
snapshot or clone never stores a chunk that was a hole or zeros (its map bit alone says
the chunk is preserved or copied up; the data file reads zeros there).

Memory stays bounded: data is moved chunk by chunk, never whole volumes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from pathlib import Path
from typing import Protocol

CHUNK = 64 * 1024


class BlockDevice(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


def _check(size: int, offset: int, length: int, what: str) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        from dr_kit.errors import InvalidInput
        raise InvalidInput(f"{what}: range {offset}+{length} is outside the device ({size} bytes)")


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_fallocate = None
try:  # the file system frees the blocks of a zeroed range (not in Python's os module)
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # no libc fallocate: zeros are written instead
    _fallocate = None

ZERO_CHUNK = bytes(CHUNK)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Make ``offset .. offset+length`` read as zeros and free its blocks; False when the
    file system cannot (the caller writes zeros then)."""
    if _fallocate is None or length <= 0:
        return False
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def data_ranges(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The ``(from, to)`` ranges of ``start .. end`` that hold data (the rest are holes),
    found with SEEK_DATA / SEEK_HOLE: no byte is read."""
    out = []
    pos = start
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if d >= end:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, min(h, end)))
        pos = h
    return out


def is_zero(data: bytes | memoryview) -> bool:
    n = len(data)
    return data == ZERO_CHUNK if n == CHUNK else data == bytes(n)


class FileVolume:
    """A volume stored in a sparse file."""

    def __init__(self, path: str | Path, size: int | None = None, *, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            with open(self.path, "xb") as f:
                f.truncate(size or 0)
        self.fd = os.open(self.path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size if size is None else size

    def read(self, offset: int, length: int) -> bytes:
        _check(self.size, offset, length, self.path.name)
        data = os.pread(self.fd, length, offset)
        return data if len(data) == length else data + bytes(length - len(data))

    def write(self, offset: int, data: bytes) -> None:
        _check(self.size, offset, len(data), self.path.name)
        os.pwrite(self.fd, data, offset)

    def zero(self, offset: int, length: int) -> None:
        """Make the range read as zeros without allocating it (a hole)."""
        _check(self.size, offset, length, self.path.name)
        if not punch_hole(self.fd, offset, length):
            for pos in range(offset, offset + length, CHUNK):
                n = min(CHUNK, offset + length - pos)
                os.pwrite(self.fd, ZERO_CHUNK[:n], pos)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ChunkMap:
    """A persistent bitmap, one bit per chunk; a set bit is written to disk at once."""

    def __init__(self, path: str | Path, nchunks: int, *, create: bool = False) -> None:
        self.path = Path(path)
        self.nchunks = nchunks
        nbytes = (nchunks + 7) // 8
        if create:
            with open(self.path, "wb") as f:
                f.truncate(nbytes)
        self.fd = os.open(self.path, os.O_RDWR)
        self.bits = bytearray(os.pread(self.fd, nbytes, 0).ljust(nbytes, b"\0"))
        self.lock = threading.Lock()

    def __contains__(self, chunk: int) -> bool:
        return bool(self.bits[chunk >> 3] & (1 << (chunk & 7)))

    def add(self, chunk: int) -> bool:
        """Set a bit (persisted before returning); False when it was set already."""
        i, b = chunk >> 3, 1 << (chunk & 7)
        with self.lock:
            if self.bits[i] & b:
                return False
            self.bits[i] |= b
            os.pwrite(self.fd, bytes((self.bits[i],)), i)
        return True

    def discard(self, chunk: int) -> None:
        i, b = chunk >> 3, 1 << (chunk & 7)
        with self.lock:
            if self.bits[i] & b:
                self.bits[i] &= ~b & 0xFF
                os.pwrite(self.fd, bytes((self.bits[i],)), i)

    def add_many(self, chunks: list[int]) -> None:
        """Set several bits; the changed bytes are written in one go."""
        self._change(chunks, True)

    def discard_many(self, chunks: list[int]) -> None:
        self._change(chunks, False)

    def _change(self, chunks: list[int], value: bool) -> None:
        if not chunks:
            return
        with self.lock:
            lo = hi = -1
            for c in chunks:
                i, b = c >> 3, 1 << (c & 7)
                old = self.bits[i]
                new = old | b if value else old & ~b & 0xFF
                if new != old:
                    self.bits[i] = new
                    lo = i if lo < 0 else min(lo, i)
                    hi = max(hi, i)
            if lo >= 0:
                os.pwrite(self.fd, bytes(self.bits[lo:hi + 1]), lo)

    def set_all(self) -> None:
        with self.lock:
            self.bits[:] = b"\xff" * len(self.bits)
            os.pwrite(self.fd, bytes(self.bits), 0)

    def clear(self) -> None:
        with self.lock:
            self.bits[:] = bytes(len(self.bits))
            os.pwrite(self.fd, bytes(self.bits), 0)

    def __iter__(self):
        for i, byte in enumerate(self.bits):
            if byte:
                for k in range(8):
                    c = i * 8 + k
                    if byte & (1 << k) and c < self.nchunks:
                        yield c

    def count(self) -> int:
        return sum(1 for _ in self)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def is_hole(fd: int, offset: int, length: int) -> bool:
    """True when ``offset .. offset+length`` of the file holds no data (a sparse hole).

    Only ``ENXIO`` (no data at or after ``offset``) means a hole; any other error (a bad
    descriptor, an I/O error) is raised: the caller must not take unknown content for zeros.
    """
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as e:
        if e.errno == errno.ENXIO:
            return True
        raise


def chunks_of(offset: int, length: int, chunk: int = CHUNK) -> range:
    if length <= 0:
        return range(0)
    return range(offset // chunk, (offset + length - 1) // chunk + 1)


class CowStore:
    """The preserved chunks of one snapshot of one live volume."""

    def __init__(self, folder: str | Path, live: FileVolume, *, create: bool = False) -> None:
        folder = Path(folder)
        if create:
            folder.mkdir(parents=True, exist_ok=False)
        self.folder = folder
        self.live = live
        self.nchunks = (live.size + CHUNK - 1) // CHUNK
        self.data = FileVolume(folder / "cow.data", live.size, create=create)
        self.map = ChunkMap(folder / "cow.map", self.nchunks, create=create)

    def preserve(self, offset: int, length: int) -> None:
        """Called before the live volume's range is overwritten.  A chunk that was a hole
        or zeros stays a hole in the store (its bit alone says it is preserved)."""
        for c in chunks_of(offset, length):
            if c not in self.map:
                start = c * CHUNK
                n = min(CHUNK, self.live.size - start)
                if not is_hole(self.live.fd, start, n):
                    old = self.live.read(start, n)
                    if not is_zero(old):
                        self.data.write(start, old)
                self.map.add(c)  # data first, then the bit

    def close(self) -> None:
        self.data.close()
        self.map.close()


class SnapshotView:
    """Read-only view of a volume as it was when the snapshot was taken."""

    def __init__(self, store: CowStore) -> None:
        self.store = store
        self.size = store.live.size

    def read(self, offset: int, length: int) -> bytes:
        _check(self.size, offset, length, "snapshot")
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            c = pos // CHUNK
            n = min(end, (c + 1) * CHUNK) - pos
            src = self.store.data if c in self.store.map else self.store.live
            out += src.read(pos, n)
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        from dr_kit.errors import InvalidInput
        raise InvalidInput("a snapshot is read-only; restore it to a writable clone to change it")


class CloneVolume:
    """A writable clone: own chunks in an overlay, the rest read from a base device."""

    def __init__(self, folder: str | Path, base: BlockDevice, *, create: bool = False) -> None:
        folder = Path(folder)
        if create:
            folder.mkdir(parents=True, exist_ok=False)
        self.folder = folder
        self.base = base
        self.size = base.size
        nchunks = (self.size + CHUNK - 1) // CHUNK
        self.data = FileVolume(folder / "overlay.data", self.size, create=create)
        self.map = ChunkMap(folder / "overlay.map", nchunks, create=create)
        self.lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        _check(self.size, offset, length, "clone")
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            c = pos // CHUNK
            n = min(end, (c + 1) * CHUNK) - pos
            src = self.data if c in self.map else self.base
            out += src.read(pos, n)
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        _check(self.size, offset, len(data), "clone")
        with self.lock:
            for c in chunks_of(offset, len(data)):
                if c not in self.map:  # copy the chunk up before changing part of it
                    start = c * CHUNK
                    n = min(CHUNK, self.size - start)
                    base = self.base.read(start, n)
                    if not is_zero(base):  # zeros stay a hole in the overlay
                        self.data.write(start, base)
                    self.map.add(c)
            self.data.write(offset, data)

    def sync(self) -> None:
        self.data.sync()

    def close(self) -> None:
        self.data.close()
        self.map.close()
