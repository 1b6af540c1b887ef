"""Framing of the replication link between two arrays, and the pair handshake.

A main array keeps two TCP connections ("lanes") to each backup array it replicates to,
whatever the number of consistency groups: the *priority* lane carries control frames,
journal entries and acknowledgements; the *bulk* lane carries initial-copy and resync
data, so a copy never queues in front of a running group's entries.  Every group's
session is a *channel* on a lane (a number chosen by the main array).

A frame is ``length u32 | type u8 | channel u32 | payload``; control payloads are JSON
(but the frequent acknowledgement of a replicating pair, ``ACKB``, is a fixed struct),
journal batches are raw journal records (each carries its own checksum), copy payloads
are ``generation u32 | volume u32 | offset u64 | length u32 | flags u8 | data``.  A copy
frame with ``COPY_ZERO`` carries no data: ``length`` bytes at ``offset`` are zeros (the
backup keeps or makes them a hole, so thin volumes stay thin).

Handshake (per pair and lane: both ends prove the pair's secret before any data flows)::

    main   -> HELLO      {"group", "nonce": nm, "lane"}
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

FRAME = struct.Struct("<IBI")  # length, type, channel
COPY = struct.Struct("<IIQIB")  # generation, volume, offset, length, flags

(HELLO, STATE, ENTRIES, ACK, COPYDATA, RESYNC_START, COPY_DONE, ERROR, CHALLENGE, AUTH,
 BYE, ACKB) = range(1, 13)
# ACKB: the backup's positions while a pair replicates, without JSON: received, applied,
# applied write's main-site time, generation, flags (1: consistent)
ACK_BIN = struct.Struct("<QQdIB")
COPY_ZERO = 1
MAX_FRAME = 64 << 20
PRIO, BULK = "prio", "bulk"


def frame(ftype: int, channel: int, payload: bytes | memoryview = b"") -> bytes:
    return FRAME.pack(len(payload), ftype, channel) + bytes(payload)


def json_frame(ftype: int, channel: int, obj: dict[str, Any]) -> bytes:
    return frame(ftype, channel, json.dumps(obj).encode())


def send(sock: socket.socket, ftype: int, payload: bytes = b"", channel: int = 0) -> None:
    sock.sendall(frame(ftype, channel, payload))


def send_json(sock: socket.socket, ftype: int, obj: dict[str, Any], channel: int = 0) -> None:
    send(sock, ftype, json.dumps(obj).encode(), channel)


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
    """One frame from a blocking socket (its channel is not returned; see :func:`recv_frame`)."""
    ftype, _channel, payload = recv_frame(sock)
    return ftype, payload


def recv_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    length, ftype, channel = FRAME.unpack(recv_exact(sock, FRAME.size))
    if length > MAX_FRAME:
        raise Unavailable(f"replication frame of {length} bytes is too large; the link is garbled")
    return ftype, channel, recv_exact(sock, length) if length else b""


class FrameReader:
    """Splits a byte stream into frames, whatever the pieces it arrives in."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Add received bytes; returns the complete frames (type, channel, payload)."""
        if not self.buf:  # the common case: frames start at the start of what arrived
            out, pos = self._whole(data)
            if pos < len(data):
                self.buf += memoryview(data)[pos:]
            return out
        buf = self.buf
        buf += data
        out = []
        pos, n = 0, len(buf)
        with memoryview(buf) as view:
            while n - pos >= FRAME.size:
                length, ftype, channel = FRAME.unpack_from(buf, pos)
                if length > MAX_FRAME:
                    raise Unavailable(f"replication frame of {length} bytes is too large; the link is garbled")
                end = pos + FRAME.size + length
                if end > n:
                    break
                out.append((ftype, channel, bytes(view[pos + FRAME.size:end])))
                pos = end
        if pos:
            del buf[:pos]
        return out


    @staticmethod
    def _whole(data: bytes) -> tuple[list[tuple[int, int, bytes]], int]:
        """The complete frames at the start of ``data`` (a payload that is all of ``data``
        past its header is that same object's slice, one copy), and where they end."""
        out = []
        pos, n = 0, len(data)
        while n - pos >= FRAME.size:
            length, ftype, channel = FRAME.unpack_from(data, pos)
            if length > MAX_FRAME:
                raise Unavailable(f"replication frame of {length} bytes is too large; the link is garbled")
            end = pos + FRAME.size + length
            if end > n:
                break
            out.append((ftype, channel, data[pos + FRAME.size:end]))
            pos = end
        return out, pos


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
