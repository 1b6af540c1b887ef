"""One journal entry: a write to a member volume of a consistency group.

Layout (little endian), the same on disk and on the wire::

    magic "DRJ2" | kind u8 | pad 3 | generation u32 | sequence u64 | time f64 |
    volume u32 | offset u64 | length u32 | crc u32 | data[length]

``crc`` is the CRC-32C (Castagnoli) of the header before it and then of the data,
computed with the processor's CRC instruction (the ``crc32c`` package): about five times
cheaper than zlib's CRC-32 on the commit path.  Records written before it (magic "DRJ1") carry
zlib's CRC-32 of the header with the crc field zero and the data; they are still read
and verified.  A record whose checksum does not match, whose magic is wrong or which is
cut short is never applied.

Kinds: ``KIND_WRITE`` is one write at ``offset``; ``KIND_WRITEV`` holds the ordered writes
a host sent together in one request (``count u32 | (offset u64, length u32) * count |
data``; the header's offset is 0).  Both are applied through :meth:`Record.extents`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from crc32c import crc32c as _crc32c

from dr_kit.errors import JournalError

MAGIC = b"DRJ2"
MAGIC_V1 = b"DRJ1"  # zlib CRC-32, read only
HEADER = struct.Struct("<4sB3xIQdIQII")
HEADER_SIZE = HEADER.size
KIND_WRITE = 1
KIND_WRITEV = 2
MAX_DATA = 16 * 1024 * 1024
EXTENT = struct.Struct("<QI")  # a write vector entry: offset, length
_COUNT = struct.Struct("<I")
_ZERO_CRC = b"\0\0\0\0"


def checksum(magic: bytes, head: bytes | memoryview, data: bytes | bytearray | memoryview) -> int:
    """The checksum of a record whose header, without its crc field, is ``head``."""
    if magic == MAGIC:
        return _crc32c(data, _crc32c(head))
    return zlib.crc32(data, zlib.crc32(_ZERO_CRC, zlib.crc32(head)))


@dataclass(frozen=True)
class Record:
    kind: int
    generation: int
    sequence: int
    time: float
    volume: int
    offset: int
    data: bytes

    @property
    def size(self) -> int:
        return HEADER_SIZE + len(self.data)

    def extents(self) -> list[tuple[int, bytes]]:
        """The (offset, data) writes this record carries, in order."""
        if self.kind == KIND_WRITE:
            return [(self.offset, self.data)]
        if self.kind != KIND_WRITEV:
            raise JournalError(f"journal record {self.sequence} has unknown kind {self.kind}")
        return split_extents(self.data, f"journal record {self.sequence}")


def split_extents(vector: bytes | memoryview, what: str = "write vector") -> list[tuple[int, bytes]]:
    """The (offset, data) writes of a write vector (``count u32 | (offset u64, length u32) *
    count | data``); JournalError when it does not add up."""
    return [(off, bytes(data)) for off, data in extent_views(vector, what)]


def extent_views(vector: bytes | memoryview, what: str = "write vector",
                 error: type[Exception] = JournalError) -> list[tuple[int, memoryview]]:
    """Like :func:`split_extents`, with each write's data a view of ``vector`` (no copy);
    ``error`` is raised when it does not add up."""
    n = len(vector)
    if n < 4:
        raise error(f"{what}: its write vector is cut short")
    (count,) = _COUNT.unpack_from(vector)
    pos = 4 + count * EXTENT.size
    if pos > n:
        raise error(f"{what}: its write vector claims {count} writes in {n} bytes")
    out = []
    view = memoryview(vector)
    unpack = EXTENT.unpack_from
    for i in range(count):
        off, length = unpack(vector, 4 + i * EXTENT.size)
        end = pos + length
        if end > n:
            raise error(f"{what}: its write vector does not add up")
        out.append((off, view[pos:end]))
        pos = end
    if pos != n:
        raise error(f"{what}: its write vector does not add up")
    return out


def scan(buf: bytes | memoryview, first_seq: int | None = None):
    """Verify consecutive encoded records in ``buf`` without copying them: yields
    ``(kind, generation, sequence, time, volume, offset, data view, end)`` for each, where
    ``end`` is the offset in ``buf`` just past the record.  Raises JournalError at the
    first record that is cut short, fails its checksum or (with ``first_seq``) is not the
    next in sequence."""
    view = memoryview(buf)
    pos, n, expect = 0, len(buf), first_seq
    unpack, size = HEADER.unpack_from, HEADER_SIZE
    while pos < n:
        if n - pos < size:
            raise JournalError("journal batch ends inside a record header")
        magic, kind, gen, seq, t, vol, off, length, crc = unpack(buf, pos)
        if magic != MAGIC and magic != MAGIC_V1:
            raise JournalError(f"bad journal record magic {magic!r}")
        if length > MAX_DATA:
            raise JournalError(f"journal record {seq} claims {length} bytes, more than {MAX_DATA}")
        end = pos + size + length
        if end > n:
            raise JournalError(f"journal record {seq} is cut short")
        data = view[pos + size:end]
        if checksum(magic, view[pos:pos + size - 4], data) != crc:
            raise JournalError(f"journal record {seq} (generation {gen}) fails its checksum")
        if expect is not None:
            if seq != expect:
                raise JournalError(f"record {expect} expected, found {seq}")
            expect += 1
        yield kind, gen, seq, t, vol, off, data, end
        pos = end


def pack_extents(extents: list[tuple[int, bytes | memoryview]]) -> tuple[int, int, bytes]:
    """(kind, offset, data) of a record holding ``extents``: one write, or a write vector."""
    if len(extents) == 1:
        return KIND_WRITE, extents[0][0], bytes(extents[0][1])
    head = struct.pack("<I", len(extents)) + b"".join(EXTENT.pack(o, len(d)) for o, d in extents)
    return KIND_WRITEV, 0, head + b"".join(bytes(d) for _, d in extents)


def encode_head(kind: int, generation: int, sequence: int, time: float, volume: int, offset: int,
                data: bytes | memoryview) -> bytes:
    """The header (with its checksum) of a record carrying ``data``; the record is the
    header followed by the data, so they can be written without joining them."""
    head = HEADER.pack(MAGIC, kind, generation, sequence, time, volume, offset, len(data), 0)[:-4]
    return head + struct.pack("<I", _crc32c(data, _crc32c(head)))


def encode(kind: int, generation: int, sequence: int, time: float, volume: int, offset: int,
           data: bytes) -> bytes:
    return encode_head(kind, generation, sequence, time, volume, offset, data) + bytes(data)


def decode_header(head: bytes) -> tuple[int, int, int, float, int, int, int, int]:
    """Return (kind, generation, sequence, time, volume, offset, length, crc); raise on bad magic."""
    magic, kind, gen, seq, t, vol, off, length, crc = HEADER.unpack(head)
    if magic != MAGIC and magic != MAGIC_V1:
        raise JournalError(f"bad journal record magic {magic!r}")
    if length > MAX_DATA:
        raise JournalError(f"journal record {seq} claims {length} bytes, more than {MAX_DATA}")
    return kind, gen, seq, t, vol, off, length, crc


def verify(head: bytes, data: bytes) -> Record:
    """Check a record's checksum and return it; raise JournalError when it does not match."""
    kind, gen, seq, t, vol, off, length, crc = decode_header(head)
    if len(data) != length:
        raise JournalError(f"journal record {seq} is cut short ({len(data)} of {length} bytes)")
    if checksum(head[:4], head[:-4], data) != crc:
        raise JournalError(f"journal record {seq} (generation {gen}) fails its checksum")
    return Record(kind, gen, seq, t, vol, off, bytes(data))


def decode(buf: bytes) -> Record:
    if len(buf) < HEADER_SIZE:
        raise JournalError("journal record shorter than its header")
    return verify(buf[:HEADER_SIZE], buf[HEADER_SIZE:])


def iter_records(buf: bytes):
    """Split a buffer of consecutive encoded records, verifying each."""
    pos = 0
    n = len(buf)
    while pos < n:
        if n - pos < HEADER_SIZE:
            raise JournalError("journal batch ends inside a record header")
        head = buf[pos:pos + HEADER_SIZE]
        length = decode_header(head)[6]
        end = pos + HEADER_SIZE + length
        if end > n:
            raise JournalError("journal batch ends inside a record")
        yield verify(head, buf[pos + HEADER_SIZE:end]), buf[pos:end]
        pos = end
