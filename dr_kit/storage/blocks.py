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

Memory stays bounded: data is moved chunk by chunk, never whole volumes.
"""

from __future__ import annotations

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
        """Called before the live volume's range is overwritten."""
        for c in chunks_of(offset, length):
            if c not in self.map:
                start = c * CHUNK
                n = min(CHUNK, self.live.size - start)
                self.data.write(start, self.live.read(start, n))
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
                    self.data.write(start, self.base.read(start, n))
                    self.map.add(c)
            self.data.write(offset, data)

    def sync(self) -> None:
        self.data.sync()

    def close(self) -> None:
        self.data.close()
        self.map.close()
