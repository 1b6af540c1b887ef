"""Framing of the replication link between two arrays.

A frame is ``length u32 | type u8 | payload``; control payloads are JSON, journal batches
are raw journal records (each carries its own checksum), copy payloads are
``volume u32 | offset u64 | flags u8 | data``.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from dr_kit.errors import Unavailable

FRAME = struct.Struct("<IB")
COPY = struct.Struct("<IQB")

HELLO, STATE, ENTRIES, ACK, COPYDATA, RESYNC_START, COPY_DONE, ERROR = range(1, 9)
COPY_ZERO = 1
MAX_FRAME = 64 << 20


def send(sock: socket.socket, ftype: int, payload: bytes = b"") -> None:
    sock.sendall(FRAME.pack(len(payload), ftype) + payload)


def send_json(sock: socket.socket, ftype: int, obj: dict[str, Any]) -> None:
    send(sock, ftype, json.dumps(obj).encode())


def recv_exact(sock: socket.socket, n: int, what: str = "replication link") -> bytes:
    """Exactly ``n`` bytes from a stream socket; Unavailable when the peer closes it."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise Unavailable(f"{what} closed by the peer")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[int, bytes]:
    length, ftype = FRAME.unpack(recv_exact(sock, FRAME.size))
    if length > MAX_FRAME:
        raise Unavailable(f"replication frame of {length} bytes is too large; the link is garbled")
    return ftype, recv_exact(sock, length) if length else b""
