"""A minimal file table on a volume, so SQLite's files live on array volumes.

A volume is a block device.  SQLite needs a few files per database: the database itself
and its rollback journal (or WAL).  The first 4 KiB of the volume hold a superblock with
one 64-byte entry per file slot (name, flags, start, capacity, size); slot 0 is the
database, slot 1 its ``-journal``, slot 2 its ``-wal``.  File data lives in fixed regions
(a sixteenth of the volume for the journal, a quarter for the WAL, the rest for the
database).

Every change (file data, a new size, a deletion) is a plain write to the volume, so it
takes the array's data path and journal in the order SQLite issued it: any prefix of
those writes is a state SQLite's own crash recovery understands.  Data is written before
the size that covers it.

Writes between two flushes are gathered and sent as one request of ordered extents
(sequential writes to one file, such as a journal record written as page number, page and
checksum, become one extent).  SQLite only relies on the order of writes across its syncs,
and the array keeps the order of the extents anyway, so any prefix of them is a state
SQLite's recovery understands.  Gathered writes are sent at every sync and unlock (a
committed transaction is on the array when SQLite reports the commit), before a read of
a file with gathered writes, and before any change of the file table.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

from dr_kit.errors import InvalidInput
from dr_kit.storage.blocks import BlockDevice

MAGIC = b"DRKFS001"
SUPER = struct.Struct("<8sII")
ENTRY = struct.Struct("<32sIIQQQ")  # name, flags, pad, start, capacity, size
ENTRY_BASE = 64
DATA_START = 64 * 1024
GATHER_MAX = 1 << 20
SUFFIXES = ("", "-journal", "-wal")
EXISTS = 1


@dataclass
class _Entry:
    name: str
    flags: int
    start: int
    capacity: int
    size: int


class VolumeFS:
    """The file table of one volume; one instance per open volume in a process."""

    def __init__(self, dev: BlockDevice, volume: str) -> None:
        self.dev = dev
        self.volume = volume
        self.lock = threading.RLock()
        # (slot, offset, data) in order; a negative offset -(o+1) is a file table entry at o
        self._pending: list[tuple[int, int, bytearray]] = []
        self._pending_bytes = 0
        self._size_dirty: set[int] = set()
        head = dev.read(0, ENTRY_BASE + ENTRY.size * len(SUFFIXES))
        magic, _version, n = SUPER.unpack_from(head)
        self.entries: list[_Entry] | None = None
        if magic == MAGIC:
            self.entries = []
            for i in range(n):
                name, flags, _pad, start, cap, size = ENTRY.unpack_from(head, ENTRY_BASE + i * ENTRY.size)
                self.entries.append(_Entry(name.rstrip(b"\0").decode(), flags, start, cap, size))
        elif any(head):
            raise InvalidInput(f"volume {volume!r} holds data that is not a dr_kit database volume")

    @property
    def formatted(self) -> bool:
        return self.entries is not None

    def format(self, dbname: str) -> None:
        """Lay out the regions for database ``dbname`` on an empty volume."""
        if len(dbname.encode()) > 32 - len("-journal"):
            raise InvalidInput(f"database file name {dbname!r} is too long (at most 24 bytes)")
        size = self.dev.size
        # a rollback journal holds the old content of the pages a transaction changes; a
        # WAL every page it writes (until a checkpoint), so it gets the larger region
        journal = max(256 * 1024, min(size // 16, 64 << 20)) // 4096 * 4096
        wal = max(256 * 1024, min(size // 4, 256 << 20)) // 4096 * 4096
        db_cap = size - DATA_START - journal - wal
        if db_cap < 256 * 1024:
            raise InvalidInput(f"volume {self.volume!r} ({size} bytes) is too small for a database")
        starts = (DATA_START, DATA_START + db_cap, DATA_START + db_cap + journal)
        caps = (db_cap, journal, wal)
        self.entries = [_Entry(dbname + suf, EXISTS if i == 0 else 0, starts[i], caps[i], 0)
                        for i, suf in enumerate(SUFFIXES)]
        raw = bytearray(SUPER.pack(MAGIC, 1, len(SUFFIXES)).ljust(ENTRY_BASE, b"\0"))
        for e in self.entries:
            raw += self._pack(e)
        self.dev.write(0, bytes(raw))

    @staticmethod
    def _pack(e: _Entry) -> bytes:
        return ENTRY.pack(e.name.encode(), e.flags, 0, e.start, e.capacity, e.size)

    def slot(self, filename: str, *, create: bool = False) -> int:
        """Slot index of a file name such as ``shop.db-journal`` (formatting when allowed)."""
        if self.entries is None:
            if not create:
                raise InvalidInput(f"volume {self.volume!r} holds no database yet")
            base = filename
            for suf in SUFFIXES[1:]:
                if filename.endswith(suf):
                    base = filename[: -len(suf)]
            self.format(base)
        assert self.entries is not None
        for i, e in enumerate(self.entries):
            if e.name == filename:
                return i
        names = ", ".join(e.name for e in self.entries)
        raise InvalidInput(f"volume {self.volume!r} holds database files {names}; "
                           f"{filename!r} is not one of them")

    def _store(self, i: int) -> None:
        assert self.entries is not None
        self.dev.write(ENTRY_BASE + i * ENTRY.size, self._pack(self.entries[i]))

    def flush(self) -> None:
        """Send gathered writes as one ordered request: each file's data, then the size
        that covers it, in the order SQLite wrote them."""
        with self.lock:
            if not self._pending and not self._size_dirty:
                return
            assert self.entries is not None
            extents = [(self.entries[slot].start + off, bytes(buf)) if off >= 0 else (-off - 1, bytes(buf))
                       for slot, off, buf in self._pending]
            extents += [(ENTRY_BASE + i * ENTRY.size, self._pack(self.entries[i])) for i in sorted(self._size_dirty)]
            writev = getattr(self.dev, "writev", None)
            if writev is not None and len(extents) > 1:
                writev(extents)  # all or nothing: a write vector is validated before it is applied
            else:
                for k, (off, data) in enumerate(extents):
                    try:
                        self.dev.write(off, data)
                    except BaseException:
                        self._drop_sent(k)
                        raise
            # only what the array acknowledged is forgotten: after a failure the same writes
            # are sent again at the next flush (SQLite retries or rolls back; nothing is lost)
            self._pending.clear()
            self._pending_bytes = 0
            self._size_dirty.clear()

    def _drop_sent(self, k: int) -> None:
        """The first ``k`` gathered extents reached the device one by one; keep the rest."""
        n = min(k, len(self._pending))
        del self._pending[:n]
        self._pending_bytes = sum(len(p[2]) for p in self._pending)

    def exists(self, i: int) -> bool:
        assert self.entries is not None
        return bool(self.entries[i].flags & EXISTS)

    def capacity(self, i: int) -> int:
        assert self.entries is not None
        return self.entries[i].capacity

    def size(self, i: int) -> int:
        assert self.entries is not None
        return self.entries[i].size

    def create(self, i: int) -> None:
        with self.lock:
            e = self.entries[i]  # type: ignore[index]
            if not e.flags & EXISTS:
                self.flush()
                e.flags |= EXISTS
                e.size = 0
                self._store(i)

    def delete(self, i: int) -> None:
        with self.lock:
            e = self.entries[i]  # type: ignore[index]
            if e.flags & EXISTS or e.size:
                self.flush()
                e.flags &= ~EXISTS
                e.size = 0
                self._store(i)

    def read(self, i: int, offset: int, length: int) -> bytes:
        with self.lock:
            if any(p[0] == i and p[1] >= 0 for p in self._pending):
                self.flush()
            e = self.entries[i]  # type: ignore[index]
            if offset >= e.size:
                return b""
            n = min(length, e.size - offset)
            return self.dev.read(e.start + offset, n)

    def write(self, i: int, offset: int, data: bytes) -> None:
        with self.lock:
            assert self.entries is not None  # formatted: write() is reached through open files
            e = self.entries[i]
            end = offset + len(data)
            if end > e.capacity:
                raise InvalidInput(f"file {e.name} on volume {self.volume!r} would grow past its "
                                   f"region ({e.capacity} bytes); use a larger volume")
            if self._pending_bytes + len(data) > GATHER_MAX:
                self.flush()
            p = self._pending[-1] if self._pending else None
            if p is not None and p[0] != i and p[1] >= 0 and p[0] in self._size_dirty:
                # another file's writes come next: the size covering that file's data goes
                # first, as SQLite would have it on a device that keeps the order of writes
                j = p[0]
                self._size_dirty.discard(j)
                at = ENTRY_BASE + j * ENTRY.size
                self._pending.append((j, -at - 1, bytearray(self._pack(self.entries[j]))))
                p = self._pending[-1]
            if p is not None and p[0] == i and p[1] >= 0 and p[1] + len(p[2]) == offset:
                p[2].extend(data)
            else:
                self._pending.append((i, offset, bytearray(data)))
            self._pending_bytes += len(data)
            if end > e.size:
                e.size = end  # stored after the data, at the next flush
                self._size_dirty.add(i)

    def truncate(self, i: int, size: int) -> None:
        with self.lock:
            e = self.entries[i]  # type: ignore[index]
            if size != e.size:
                self.flush()
                e.size = min(size, e.capacity)
                self._store(i)
