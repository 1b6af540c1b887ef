"""The array's data path (the block protocol hosts speak) and its replication port, in-process."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

import pytest
from conftest import wait_for

from dr_kit.errors import Conflict, InvalidInput, NotFound
from dr_kit.storage import wire
from dr_kit.storage.client import ArrayClient, RemoteVolume, new_pair_secret
from dr_kit.storage.server import CLOSE, OK, OPEN, READ, REQ, RESP, WRITE, ArrayProcess
from dr_kit.storage.wire import recv_exact

MiB = 1 << 20
TOKEN = "k" * 40


@pytest.fixture
def proc(tmp_path: Path):
    p = ArrayProcess(tmp_path / "arr", "main", token=TOKEN)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def _call(sock: socket.socket, op: int, h: int, off: int, length: int, payload: bytes = b"") -> tuple[int, bytes]:
    sock.sendall(REQ.pack(op, h, off, len(payload) or length) + payload)
    status, n = RESP.unpack(recv_exact(sock, RESP.size))
    return status, recv_exact(sock, n) if n else b""


def test_handles_are_not_reused_after_close(proc):
    c = ArrayClient(proc.endpoints()["mgmt_url"], token=TOKEN)
    for v in ("va", "vb", "vc"):
        c.create_volume(v, MiB)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(proc.sock_path))
        ha = struct.unpack("<IQ", _call(s, OPEN, 0, 0, 0, b"va")[1])[0]
        hb = struct.unpack("<IQ", _call(s, OPEN, 0, 0, 0, b"vb")[1])[0]
        assert _call(s, CLOSE, ha, 0, 0)[0] == OK
        hc = struct.unpack("<IQ", _call(s, OPEN, 0, 0, 0, b"vc")[1])[0]
        assert len({ha, hb, hc}) == 3, "a new handle took the number of an open one"
        assert _call(s, WRITE, hb, 0, 0, b"for vb")[0] == OK
        assert _call(s, READ, hb, 0, 6) == (OK, b"for vb")
        status, msg = _call(s, READ, ha, 0, 6)  # the closed handle is gone
        assert status != OK and b"no volume is open with handle" in msg
    assert proc.array.read("vb", 0, 6) == b"for vb"
    assert proc.array.read("vc", 0, 6) == bytes(6), "a write for one volume landed on another"


def test_data_path_errors_keep_their_type(proc):
    c = ArrayClient(proc.endpoints()["mgmt_url"], token=TOKEN)
    c.create_volume("secondary-copy", MiB)  # a name that says "secondary": still plain input
    v = RemoteVolume(str(proc.sock_path), "secondary-copy")
    with pytest.raises(InvalidInput, match="is outside the"):
        v.write(MiB - 2, b"too long")
    with pytest.raises(NotFound):
        RemoteVolume(str(proc.sock_path), "nope")
    proc.array.ensure_secondary_group("g", {1: ("backup-copy", MiB)}, 4 * MiB, 1)
    b = RemoteVolume(str(proc.sock_path), "backup-copy")
    with pytest.raises(Conflict, match="read-only"):
        b.write(0, b"x")
    v.close()
    b.close()


def test_unreachable_backup_is_reported_in_group_status(proc):
    c = ArrayClient(proc.endpoints()["mgmt_url"], token=TOKEN)
    c.create_volume("va", MiB)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there
    c.create_group("g", ["va"], f"127.0.0.1:{port}", secret=new_pair_secret())
    st = c.wait_group("g", lambda s: s["last_error"], timeout=10, what="a reported error")
    assert "cannot reach the backup array" in st["last_error"] and st["last_error_at"] > 0
    assert st["connected"] is False


def test_refused_replication_sessions_are_logged(proc, caplog, storage_log):
    host, port = proc.endpoints()["replication"].rsplit(":", 1)
    proc.array.authorize_pair("g", new_pair_secret())
    with storage_log("dr_kit.replication", "INFO"):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"\xff" * 64)  # not a frame of this protocol
        with socket.create_connection((host, int(port))) as s:
            wire.send_json(s, wire.HELLO, {"group": "g", "nonce": wire.nonce()})
            assert wire.recv(s)[0] == wire.CHALLENGE
            wire.send_json(s, wire.AUTH, {"proof": "0" * 64})
            ftype, payload = wire.recv(s)
            assert ftype == wire.ERROR and "authentication" in json.loads(payload)["message"]
        wait_for(lambda: len([r for r in caplog.records if "replication" in r.name]) >= 2,
                 timeout=10, what="log lines for both refusals")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "did not prove the pair secret" in text
    assert "too large" in text or "did not start with a pair handshake" in text
    time.sleep(0.1)
    assert proc.array.status()["groups"] == []
