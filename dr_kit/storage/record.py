"""One journal entry: a write to a member volume of a consistency group.

Layout (little endian), the same on disk and on the wire::

    magic "DRJ1" | kind u8 | pad 3 | generation u32 | sequence u64 | time f64 |
    volume u32 | offset u64 | length u32 | crc32 u32 | data[length]

``crc32`` covers the header (with the crc field zero) and the data.  A record whose
checksum does not match, whose magic is wrong or which is cut short is never applied.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from dr_kit.errors import JournalError

MAGIC = b"DRJ1"
HEADER = struct.Struct("<4sB3xIQdIQII")
HEADER_SIZE = HEADER.size
KIND_WRITE = 1
MAX_DATA = 16 * 1024 * 1024


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


def encode(kind: int, generation: int, sequence: int, time: float, volume: int, offset: int,
           data: bytes) -> bytes:
    head = HEADER.pack(MAGIC, kind, generation, sequence, time, volume, offset, len(data), 0)
    crc = zlib.crc32(data, zlib.crc32(head))
    return head[:-4] + struct.pack("<I", crc) + data


def decode_header(head: bytes) -> tuple[int, int, int, float, int, int, int, int]:
    """Return (kind, generation, sequence, time, volume, offset, length, crc); raise on bad magic."""
    magic, kind, gen, seq, t, vol, off, length, crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise JournalError(f"bad journal record magic {magic!r}")
    if length > MAX_DATA:
        raise JournalError(f"journal record {seq} claims {length} bytes, more than {MAX_DATA}")
    return kind, gen, seq, t, vol, off, length, crc


def verify(head: bytes, data: bytes) -> Record:
    """Check a record's checksum and return it; raise JournalError when it does not match."""
    kind, gen, seq, t, vol, off, length, crc = decode_header(head)
    if len(data) != length:
        raise JournalError(f"journal record {seq} is cut short ({len(data)} of {length} bytes)")
    zeroed = head[:-4] + b"\0\0\0\0"
    if zlib.crc32(data, zlib.crc32(zeroed)) != crc:
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
