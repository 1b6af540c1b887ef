"""The array process: data path, management API and replication port of one array.

    python -m dr_kit.storage.server --dir ARRAY_DIR [--name main] [--ready-file F]

- data path: a Unix stream socket (``data.sock``) speaking a small block protocol
  (open, read, write, sync, close), the way a host reaches an external array's LUNs;
- management API: HTTP/JSON on 127.0.0.1 (volumes, groups, snapshots, clones, lag);
- replication: TCP on 127.0.0.1, where main arrays send their journals.

When everything listens, the process writes a JSON ready file with its pid and endpoints.
SIGTERM closes everything cleanly; SIGKILL is survived by the on-disk format.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.fsutil import write_json
from dr_kit.storage.array import Array
from dr_kit.storage.groups import PrimaryGroup, SecondaryGroup
from dr_kit.storage.record import EXTENT  # WRITEV payload = a record's write vector
from dr_kit.storage.replication import ReplicationService
from dr_kit.storage.wire import recv_exact

REQ = struct.Struct("<BIQI")  # op, handle, offset, length
RESP = struct.Struct("<BI")  # status, length
OPEN, READ, WRITE, SYNC, CLOSE, SIZE, WRITEV = range(1, 8)
OK, FAIL = 0, 1


def socket_path_for(root: Path) -> Path:
    p = root / "data.sock"
    if len(str(p)) < 100:
        return p
    h = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"drkit-{h}.sock"


def _extents(payload: bytes) -> list[tuple[int, memoryview]]:
    """The (offset, data) writes of a write vector, as views of the payload (no copies)."""
    (n,) = struct.unpack_from("<I", payload)
    pos = 4 + n * EXTENT.size
    out = []
    view = memoryview(payload)
    for i in range(n):
        off, length = EXTENT.unpack_from(payload, 4 + i * EXTENT.size)
        out.append((off, view[pos:pos + length]))
        pos += length
    if pos != len(payload):
        raise InvalidInput("malformed write vector")
    return out


class _DataConn(socketserver.BaseRequestHandler):
    server: DataPathServer

    def handle(self) -> None:
        array = self.server.array
        sock: socket.socket = self.request
        handles: dict[int, str] = {}
        try:
            while True:
                op, h, off, length = REQ.unpack(recv_exact(sock, REQ.size, "data path"))
                payload = recv_exact(sock, length, "data path") if op in (OPEN, WRITE, WRITEV) and length else b""
                try:
                    if op == WRITE:
                        array.write(handles[h], off, payload)
                        out = b""
                    elif op == WRITEV:
                        array.writev(handles[h], _extents(payload), packed=payload)
                        out = b""
                    elif op == READ:
                        out = array.read(handles[h], off, length)
                    elif op == OPEN:
                        name = payload.decode()
                        v = array.volume(name)
                        h = len(handles) + 1
                        handles[h] = name
                        out = struct.pack("<IQ", h, v.size)
                    elif op == SIZE:
                        out = struct.pack("<Q", array.volume(handles[h]).size)
                    elif op == SYNC:
                        out = b""  # writes are ordered and stored when acknowledged
                    elif op == CLOSE:
                        handles.pop(h, None)
                        out = b""
                    else:
                        raise InvalidInput(f"unknown data path operation {op}")
                    sock.sendall(RESP.pack(OK, len(out)) + out)
                except (DrKitError, KeyError) as e:
                    msg = str(e).encode()
                    sock.sendall(RESP.pack(FAIL, len(msg)) + msg)
        except (Unavailable, OSError):
            return


class DataPathServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, array: Array) -> None:
        self.array = array
        if path.exists():
            path.unlink()
        super().__init__(str(path), _DataConn)


_STATUS = {InvalidInput: 400, NotFound: 404, Conflict: 409}


class _Mgmt(BaseHTTPRequestHandler):
    server: ManagementServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _reply(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return {}
        try:
            body = json.loads(self.rfile.read(n))
        except ValueError:
            raise InvalidInput("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if parts[:1] != ["v1"]:
                raise NotFound(f"no such management endpoint {url.path}")
            body = self._body() if method in ("POST", "PUT") else {}
            with self.server.ops_lock:
                result = self.server.handle(method, parts[1:], body, query)
            self._reply(200, result)
        except DrKitError as e:
            code = next((c for t, c in _STATUS.items() if isinstance(e, t)), 500)
            self._reply(code, {"error": type(e).__name__, "message": str(e)})
        except (KeyError, TypeError, ValueError) as e:
            self._reply(400, {"error": "InvalidInput", "message": f"bad request: {e}"})

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


class ManagementServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, array: Array, service: ReplicationService, port: int = 0) -> None:
        self.array = array
        self.service = service
        self.ops_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Mgmt)

    def handle(self, method: str, parts: list[str], body: dict[str, Any],
               query: dict[str, str]) -> Any:
        a = self.array
        match method, parts:
            case "GET", ["status"]:
                return a.status()
            case "GET", ["volumes"]:
                return a.status()["volumes"]
            case "POST", ["volumes"]:
                v = a.create_volume(body["name"], int(body["size"]))
                return {"name": v.name, "id": v.id, "size": v.size}
            case "DELETE", ["volumes", name]:
                a.delete_volume(name)
                return {"deleted": name}
            case "POST", ["groups"]:
                g = a.create_primary_group(
                    body["name"], list(body["volumes"]), body["remote"],
                    remote_names=body.get("remote_names"), mode=body.get("mode", "async"),
                    journal_capacity=int(body.get("journal_capacity", 64 << 20)),
                    transfer_interval_ms=float(body.get("transfer_interval_ms", 0.0)),
                    sync_timeout_s=float(body.get("sync_timeout_s", 5.0)))
                if "auto_resync" in body:
                    g.conf["auto_resync"] = bool(body["auto_resync"])
                self.service.ensure_threads()
                return {"name": g.name, "state": g.state}
            case "GET", ["groups", name, "lag"]:
                main = a.group(name)
                if not isinstance(main, PrimaryGroup):
                    raise InvalidInput(f"lag is measured at the main site; {name!r} is a backup-side group here")
                return main.lag().to_dict()
            case "POST", ["groups", name, "members"]:
                g = a.add_member(name, body["volume"], body.get("remote_name"))
                return {"name": name, "members": sorted(v.name for v in g.members.values()), "state": g.state}
            case "DELETE", ["groups", name, "members", volume]:
                g = a.remove_member(name, volume)
                return {"name": name, "members": sorted(v.name for v in g.members.values()), "state": g.state}
            case "POST", ["groups", name, "actions"]:
                return self._action(name, body)
            case "DELETE", ["groups", name]:
                if isinstance(a.group(name), PrimaryGroup):
                    a.delete_primary_group(name)
                else:
                    a.delete_secondary_group(name, delete_volumes=query.get("delete_volumes") in ("1", "true"))
                self.service.ensure_threads()
                return {"deleted": name}
            case "POST", ["snapshots"]:
                return a.create_snapshot(body["name"], group=body.get("group"), volumes=body.get("volumes"))
            case "GET", ["snapshots", name]:
                return a.snapshot_info(name)
            case "DELETE", ["snapshots", name]:
                a.delete_snapshot(name)
                return {"deleted": name}
            case "POST", ["clones"]:
                v = a.create_clone(body["name"], body["snapshot"], body["volume"])
                return {"name": v.name, "id": v.id, "size": v.size}
        raise NotFound(f"no such management endpoint {method} /v1/{'/'.join(parts)}")

    def _action(self, name: str, body: dict[str, Any]) -> Any:
        a = self.array
        g = a.group(name)
        act = body.get("action")
        if isinstance(g, PrimaryGroup):
            match act:
                case "suspend":
                    g.suspend("suspended by request")
                case "resync":
                    with g.lock:
                        g.conf["resync_requested"] = True
                        g.changed.notify_all()
                case "pause-transfer" | "resume-transfer":
                    with g.lock:
                        g.conf["transfer_paused"] = act == "pause-transfer"
                        g.changed.notify_all()
                case "corrupt-next":
                    g.faults["corrupt_next"] = g.faults.get("corrupt_next", 0) + 1
                case "configure":
                    if "transfer_interval_ms" in body:
                        g.conf["transfer_interval_ms"] = float(body["transfer_interval_ms"])
                    if "auto_resync" in body:
                        g.conf["auto_resync"] = bool(body["auto_resync"])
                case _:
                    raise InvalidInput(f"unknown main-side group action {act!r}; use suspend, resync, "
                                       "pause-transfer, resume-transfer, configure")
            return g.lag().to_dict()
        assert isinstance(g, SecondaryGroup)
        match act:
            case "pause-apply" | "resume-apply":
                g.paused = act == "pause-apply"
                g.kick()
            case "promote":
                pos = a.promote(name)
                self.service.ensure_threads()
                return pos
            case _:
                raise InvalidInput(f"unknown backup-side group action {act!r}; use pause-apply, "
                                   "resume-apply, promote")
        return {"name": name, "state": g.state, "paused": g.paused, "applied": g.applied_seq}


class ArrayProcess:
    """Everything one array process runs; usable in-process for tests too."""

    def __init__(self, root: str | Path, name: str = "array", *, mgmt_port: int = 0,
                 repl_port: int = 0, fsync: bool = False) -> None:
        self.root = Path(root)
        self.array = Array(self.root, name, fsync=fsync)
        self.service = ReplicationService(self.array, port=repl_port)
        self.sock_path = socket_path_for(self.root)
        self.data = DataPathServer(self.sock_path, self.array)
        self.mgmt = ManagementServer(self.array, self.service, mgmt_port)
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True)
                        for s in (self.data, self.mgmt)]

    def start(self) -> dict[str, Any]:
        self.service.start()
        for t in self.threads:
            t.start()
        return self.endpoints()

    def endpoints(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "name": self.array.name, "data_socket": str(self.sock_path),
                "mgmt_url": f"http://127.0.0.1:{self.mgmt.server_address[1]}",
                "replication": f"127.0.0.1:{self.service.port}"}

    def stop(self) -> None:
        self.service.stop()
        for s in (self.data, self.mgmt):
            s.shutdown()
            s.server_close()
        self.array.close()
        try:
            self.sock_path.unlink()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.storage.server",
                                 description="Run one software storage array.")
    ap.add_argument("--dir", required=True, help="array folder (created when missing)")
    ap.add_argument("--name", default="array")
    ap.add_argument("--mgmt-port", type=int, default=0)
    ap.add_argument("--repl-port", type=int, default=0)
    ap.add_argument("--fsync", action="store_true", help="fdatasync journal writes (power-loss safety)")
    ap.add_argument("--ready-file", help="write endpoints as JSON here once listening")
    args = ap.parse_args(argv)
    try:
        proc = ArrayProcess(args.dir, args.name, mgmt_port=args.mgmt_port,
                            repl_port=args.repl_port, fsync=args.fsync)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.setswitchinterval(0.0002)  # the commit path must not wait long for the GIL
    info = proc.start()
    if args.ready_file:
        write_json(args.ready_file, info)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
