"""Framing of the replication link between two arrays, and the pair handshake.

A frame is ``length u32 | type u8 | payload``; control payloads are JSON, journal batches
are raw journal records (each carries its own checksum), copy payloads are
``volume u32 | offset u64 | flags u8 | data``.

Handshake (per pair, both ends prove the pair's secret before any data flows)::

    main   -> HELLO      {"group", "nonce": nm}
    backup -> CHALLENGE  {"nonce": nb, "proof": HMAC(secret, backup|group|nm|nb)}
    main   checks the proof (a stranger posing as the backup gets nothing more)
    main   -> AUTH       {"proof": HMAC(secret, main|group|nm|nb), members, generation, ...}
    backup checks the proof (a stranger posing as the main is refused: nothing is created,
           no entry is accepted) and answers STATE

Both nonces are fresh random values, so a recorded handshake cannot be replayed.  The
secret itself never crosses the link.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import struct
from typing import Any

from dr_kit.errors import Unavailable

FRAME = struct.Struct("<IB")
COPY = struct.Struct("<IQB")

HELLO, STATE, ENTRIES, ACK, COPYDATA, RESYNC_START, COPY_DONE, ERROR, CHALLENGE, AUTH = range(1, 11)
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


def nonce() -> str:
    return secrets.token_hex(16)


def proof(secret: str, role: str, group: str, nonce_main: str, nonce_backup: str) -> str:
    """What ``role`` ("main" or "backup") sends to prove it holds the pair's secret."""
    msg = f"dr-kit-pair|{role}|{group}|{nonce_main}|{nonce_backup}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def proof_ok(secret: str, role: str, group: str, nonce_main: str, nonce_backup: str,
             got: object) -> bool:
    if not isinstance(got, str):
        return False
    return hmac.compare_digest(proof(secret, role, group, nonce_main, nonce_backup).encode(),
                               got.encode())
