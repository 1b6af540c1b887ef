"""The array process: data path, management API and replication port of one array.

    python -m dr_kit.storage.server --dir ARRAY_DIR [--name main] [--ready-file F]

- data path: a Unix stream socket (``data.sock``) speaking a small block protocol
  (open, read, write, sync, close), the way a host reaches an external array's LUNs;
- management API: HTTP/JSON on 127.0.0.1 (volumes, groups, snapshots, clones, lag); every
  request needs the site's token (``Authorization: Bearer``), given to the process in
  ``$DR_KIT_ARRAY_TOKEN`` (never on the command line, where ``ps`` would show it);
- replication: TCP on 127.0.0.1, where main arrays send their journals; each group's
  session is authenticated both ways with the pair's secret (see ``replication``).

The data path socket is made 0600 and the array folder 0700: only the array's owner can
reach the volumes.

When everything listens, the process writes a JSON ready file with its pid and endpoints.
SIGTERM closes everything cleanly; SIGKILL is survived by the on-disk format.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import hashlib
import logging
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput, JournalError, NotFound, Unavailable
from dr_kit.fsutil import write_json
from dr_kit.storage.array import Array
from dr_kit.storage.groups import PrimaryGroup, SecondaryGroup
from dr_kit.storage.httpapi import ApiHandler, ApiServer, token_from_env
from dr_kit.storage.record import EXTENT  # WRITEV payload = a record's write vector
from dr_kit.storage.replication import ReplicationService
from dr_kit.storage.wire import recv_exact

REQ = struct.Struct("<BIQI")  # op, handle, offset, length
RESP = struct.Struct("<BI")  # status, length
OPEN, READ, WRITE, SYNC, CLOSE, SIZE, WRITEV = range(1, 8)
OK, FAIL = 0, 1
log = logging.getLogger("dr_kit.storage.server")
# a failed request's status names its error class; the message follows
ERROR_CODES: dict[int, type[DrKitError]] = {1: InvalidInput, 2: NotFound, 3: Conflict,
                                            4: Unavailable, 5: JournalError}
MAX_REQUEST = 64 << 20
TOKEN_ENV = "DR_KIT_ARRAY_TOKEN"


def socket_path_for(root: Path) -> Path:
    p = root / "data.sock"
    if len(str(p)) < 100:
        return p
    h = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"drkit-{h}.sock"


def _extents(payload: bytes | memoryview) -> list[tuple[int, memoryview]]:
    """The (offset, data) writes of a write vector, as views of the payload (no copies)."""
    if len(payload) < 4:
        raise InvalidInput("malformed write vector: cut short")
    (n,) = struct.unpack_from("<I", payload)
    pos = 4 + n * EXTENT.size
    if pos > len(payload):
        raise InvalidInput(f"malformed write vector: {n} writes claimed in {len(payload)} bytes")
    out = []
    view = memoryview(payload)
    for i in range(n):
        off, length = EXTENT.unpack_from(payload, 4 + i * EXTENT.size)
        out.append((off, view[pos:pos + length]))
        pos += length
    if pos != len(payload):
        raise InvalidInput("malformed write vector")
    return out


class _DataConn:
    """One host connection: its open volumes (handles are never reused, also after CLOSE)."""

    __slots__ = ("sock", "fd", "handles", "next_handle", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.handles: dict[int, str] = {}
        self.next_handle = 1
        self.buf = b""  # bytes received beyond the last request (a host that pipelines)


def _code(cls: type[DrKitError]) -> int:
    for code, c in ERROR_CODES.items():
        if issubclass(cls, c):
            return code
    return FAIL


_WAKE, _LISTEN = "wake", "listen"
RECV_SIZE = 64 * 1024


class _DataWorker(threading.Thread):
    """Serves its share of the host connections from one epoll set: a request is read,
    executed and answered in this thread (no hand-off on the commit path).  A write of a
    synchronous pair is parked until the backup acknowledges it, and the worker goes on
    serving its other connections meanwhile."""

    def __init__(self, server: DataPathServer, index: int) -> None:
        super().__init__(daemon=True, name=f"data-{index}")
        self.server = server
        self.ep = select.epoll()
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)
        self.fds: dict[int, _DataConn | str] = {self._rx.fileno(): _WAKE}
        self.ep.register(self._rx.fileno(), select.EPOLLIN)
        self.inbox: collections.deque[socket.socket] = collections.deque()
        self.parked: list[tuple[_DataConn, PrimaryGroup, int, float]] = []
        self.count = 0
        self.stopping = False

    def listen_on(self, sock: socket.socket) -> None:
        self.fds[sock.fileno()] = _LISTEN
        self.ep.register(sock.fileno(), select.EPOLLIN)

    def wake(self) -> None:
        try:
            self._tx.send(b"\0")
        except OSError:
            pass

    def adopt(self, sock: socket.socket) -> None:
        self.count += 1
        self.inbox.append(sock)
        self.wake()

    def run(self) -> None:
        fds = self.fds
        while not self.stopping:
            timeout = -1.0
            if self.parked:
                timeout = max(0.0, min(p[3] for p in self.parked) - time.monotonic())
            for fd, _ev in self.ep.poll(timeout):
                obj = fds.get(fd)
                if isinstance(obj, _DataConn):
                    self._serve(obj)
                elif obj == _WAKE:
                    try:
                        while self._rx.recv(4096):
                            pass
                    except OSError:
                        pass
                    while self.inbox:
                        sock = self.inbox.popleft()
                        conn = _DataConn(sock)
                        fds[conn.fd] = conn
                        self.ep.register(conn.fd, select.EPOLLIN)
                elif obj == _LISTEN:
                    self.server.accept()
            if self.parked:
                self._release_parked()
        for obj in list(fds.values()):
            if isinstance(obj, _DataConn):
                obj.sock.close()
        self.ep.close()

    def _close(self, conn: _DataConn) -> None:
        if self.fds.pop(conn.fd, None) is not None:
            with contextlib.suppress(OSError):
                self.ep.unregister(conn.fd)
        conn.sock.close()
        self.count -= 1

    @staticmethod
    def _reply(conn: _DataConn, status: int, out: bytes) -> None:
        conn.sock.sendall(RESP.pack(status, len(out)) + out)

    def _serve(self, conn: _DataConn) -> None:
        try:
            while True:
                waiting = self._request(conn)
                if waiting is not None or not conn.buf:
                    break
        except (Unavailable, OSError):
            self._close(conn)
            return
        except Exception:  # noqa: BLE001 - a bug ends this host connection, not the worker
            log.exception("data path request failed")
            self._close(conn)
            return
        if waiting is not None:  # a synchronous write: answered when the backup acknowledged it
            grp, seq = waiting
            self.ep.unregister(conn.fd)
            grp.sync_wakers.add(self.wake)
            self.parked.append((conn, grp, seq, time.monotonic() + grp.sync_timeout))

    def _release_parked(self) -> None:
        now = time.monotonic()
        keep = []
        for conn, grp, seq, deadline in self.parked:
            if not grp.sync_done(seq):
                if now < deadline:
                    keep.append((conn, grp, seq, deadline))
                    continue
                grp.sync_expired(seq)  # the pair is suspended; the host goes on
            try:
                self._reply(conn, OK, b"")
                self.ep.register(conn.fd, select.EPOLLIN)
            except OSError:
                self.fds.pop(conn.fd, None)
                conn.sock.close()
                self.count -= 1
        self.parked = keep

    def _read(self, conn: _DataConn) -> tuple[int, int, int, int, bytes | memoryview]:
        """One request: mostly a single recv (header and payload arrive together)."""
        sock = conn.sock
        data = conn.buf or sock.recv(RECV_SIZE)
        conn.buf = b""
        if not data:
            raise Unavailable("the host closed the data path connection")
        while len(data) < REQ.size:
            more = sock.recv(RECV_SIZE)
            if not more:
                raise Unavailable("the host closed the data path connection")
            data += more
        op, h, off, length = REQ.unpack_from(data)
        if length > MAX_REQUEST:  # a garbled stream: nothing after this can be trusted
            raise InvalidInput(f"data path request of {length} bytes is larger than {MAX_REQUEST}")
        need = REQ.size + (length if op in (OPEN, WRITE, WRITEV) else 0)
        if len(data) < need:
            data += recv_exact(sock, need - len(data), "data path")
        if len(data) > need:
            conn.buf = data[need:]
        payload = memoryview(data)[REQ.size:need] if need > REQ.size else b""
        return op, h, off, length, payload

    def _request(self, conn: _DataConn) -> tuple[PrimaryGroup, int] | None:
        array = self.server.array
        try:
            op, h, off, length, payload = self._read(conn)
        except InvalidInput as e:
            self._reply(conn, _code(InvalidInput), str(e).encode())
            raise Unavailable("garbled data path stream") from None
        handles = conn.handles
        try:
            if op not in (OPEN, SYNC) and h not in handles:
                raise NotFound(f"no volume is open with handle {h} on this connection")
            out = b""
            if op == WRITEV:
                waiting = array.writev(handles[h], _extents(payload), packed=payload, wait=False)
                if waiting is not None:
                    return waiting
            elif op == WRITE:
                waiting = array.writev(handles[h], [(off, payload)], wait=False)
                if waiting is not None:
                    return waiting
            elif op == READ:
                out = array.read(handles[h], off, length)
            elif op == OPEN:
                try:
                    name = bytes(payload).decode()
                except UnicodeDecodeError:
                    raise InvalidInput("a volume name must be UTF-8") from None
                v = array.volume(name)
                h, conn.next_handle = conn.next_handle, conn.next_handle + 1
                handles[h] = name
                out = struct.pack("<IQ", h, v.size)
            elif op == SIZE:
                out = struct.pack("<Q", array.volume(handles[h]).size)
            elif op == SYNC:
                out = b""  # writes are ordered and stored when acknowledged
            elif op == CLOSE:
                handles.pop(h, None)
            else:
                raise InvalidInput(f"unknown data path operation {op}")
            self._reply(conn, OK, out)
        except (DrKitError, struct.error) as e:
            err = e if isinstance(e, DrKitError) else InvalidInput(f"malformed request: {e}")
            self._reply(conn, _code(type(err)), str(err).encode())
        return None


class DataPathServer:
    """The data path: a Unix socket (0600) served by a fixed pool of selector workers, so
    the number of threads does not grow with hosts or volumes."""

    WORKERS = 4

    def __init__(self, path: Path, array: Array, workers: int | None = None) -> None:
        self.array = array
        self.path = path
        if path.exists():
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: only the owner can connect
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.workers = [_DataWorker(self, i) for i in range(workers or self.WORKERS)]
        self.workers[0].listen_on(self.sock)

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(True)
            # a request cut off midway does not hold a worker forever (a kernel timeout: no
            # extra poll per call, as Python's own socket timeout would add)
            tv = struct.pack("ll", 30, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            min(self.workers, key=lambda w: w.count).adopt(sock)

    def close(self) -> None:
        for w in self.workers:
            w.stopping = True
            w.wake()
        for w in self.workers:
            if w.is_alive():
                w.join(5)
        self.sock.close()


_STATUS = {InvalidInput: 400, NotFound: 404, Conflict: 409, Unavailable: 503}


def _status_of(e: DrKitError) -> int:
    return next((c for t, c in _STATUS.items() if isinstance(e, t)), 400)


class _Mgmt(ApiHandler):
    server: ManagementServer

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            raise NotFound(f"no such management endpoint {path}")
        if body is not None and not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        with self.server.ops_lock:
            return 200, self.server.handle(method, parts[1:], body or {}, query)


class ManagementServer(ApiServer):
    """The array's management API (HTTP/JSON on 127.0.0.1, bearer token)."""

    def __init__(self, array: Array, service: ReplicationService, port: int = 0, *,
                 token: str) -> None:
        self.array = array
        self.service = service
        self.ops_lock = threading.Lock()
        super().__init__(port, _Mgmt, token, status_of=_status_of)

    def handle(self, method: str, parts: list[str], body: dict[str, Any],
               query: dict[str, str]) -> Any:
        a = self.array
        match method, parts:
            case "GET", ["status"]:
                return a.status()
            case "GET", ["volumes"]:
                return a.status()["volumes"]
            case "POST", ["volumes"]:
                v = a.create_volume(_str(body, "name"), _int(body, "size"))
                return {"name": v.name, "id": v.id, "size": v.size}
            case "DELETE", ["volumes", name]:
                a.delete_volume(name)
                return {"deleted": name}
            case "POST", ["groups"]:
                g = a.create_primary_group(
                    _str(body, "name"), _strlist(body, "volumes"), _str(body, "remote"),
                    secret=_str(body, "secret"),
                    remote_names=_strmap(body, "remote_names"), mode=_str(body, "mode", "async"),
                    journal_capacity=_int(body, "journal_capacity", 64 << 20),
                    transfer_interval_ms=_num(body, "transfer_interval_ms", 0.0, hi=3_600_000),
                    sync_timeout_s=_num(body, "sync_timeout_s", 5.0, lo=0.001, hi=3600),
                    auto_resync=_bool(body, "auto_resync", True))
                self.service.ensure_threads()
                return {"name": g.name, "state": g.state}
            case "POST", ["pairs"]:
                name = _str(body, "group")
                a.authorize_pair(name, _str(body, "secret"))
                return {"group": name, "authorized": True}
            case "DELETE", ["pairs", name]:
                a.forget_pair(name)
                return {"deleted": name}
            case "GET", ["groups", name, "lag"]:
                main = a.group(name)
                if not isinstance(main, PrimaryGroup):
                    raise InvalidInput(f"lag is measured at the main site; {name!r} is a backup-side group here")
                return main.lag().to_dict()
            case "POST", ["groups", name, "members"]:
                g = a.add_member(name, _str(body, "volume"), _str(body, "remote_name", None))
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
                group = _str(body, "group", None)
                vols = _strlist(body, "volumes") if body.get("volumes") is not None else None
                return a.create_snapshot(_str(body, "name"), group=group, volumes=vols)
            case "GET", ["snapshots", name]:
                return a.snapshot_info(name)
            case "DELETE", ["snapshots", name]:
                a.delete_snapshot(name)
                return {"deleted": name}
            case "POST", ["clones"]:
                v = a.create_clone(_str(body, "name"), _str(body, "snapshot"), _str(body, "volume"))
                return {"name": v.name, "id": v.id, "size": v.size}
        raise NotFound(f"no such management endpoint {method} /v1/{'/'.join(parts)}")

    def _action(self, name: str, body: dict[str, Any]) -> Any:
        a = self.array
        g = a.group(name)
        act = _str(body, "action")
        if isinstance(g, PrimaryGroup):
            match act:
                case "suspend":  # held until a resync is asked for
                    g.suspend("suspended by request", hold=True)
                case "resync":
                    with g.lock:
                        g.conf.pop("held", None)
                        g.conf["resync_requested"] = True
                        g.signal()
                case "pause-transfer" | "resume-transfer":
                    with g.lock:
                        g.conf["transfer_paused"] = act == "pause-transfer"
                        g.signal()
                case "corrupt-next":
                    g.faults["corrupt_next"] = g.faults.get("corrupt_next", 0) + 1
                case "demote":
                    info = a.demote(name, split=_str(body, "split", None))
                    self.service.ensure_threads()
                    return info
                case "pair":
                    info = a.pair_with(name, _str(body, "remote"), _str(body, "secret"))
                    self.service.ensure_threads()
                    return info
                case "promote":  # already a main-side group: nothing to do
                    return a.promote(name, track=True)
                case "configure":
                    interval = _num(body, "transfer_interval_ms", None, hi=3_600_000)
                    resync = _bool(body, "auto_resync", None)
                    if interval is not None:
                        g.conf["transfer_interval_ms"] = interval
                    if resync is not None:
                        g.conf["auto_resync"] = resync
                case _:
                    raise InvalidInput(f"unknown main-side group action {act!r}; use suspend, resync, "
                                       "pause-transfer, resume-transfer, configure, demote, pair")
            return g.lag().to_dict()
        assert isinstance(g, SecondaryGroup)
        match act:
            case "pause-apply" | "resume-apply":
                g.paused = act == "pause-apply"
                g.kick()
            case "promote":
                pos = a.promote(name, track=bool(_bool(body, "track", False)),
                                clean=bool(_bool(body, "clean", False)),
                                remote=_str(body, "remote", None), secret=_str(body, "secret", None))
                self.service.ensure_threads()
                return pos
            case "demote":  # already a backup-side group: nothing to do
                return a.demote(name)
            case _:
                raise InvalidInput(f"unknown backup-side group action {act!r}; use pause-apply, "
                                   "resume-apply, promote")
        return {"name": name, "state": g.state, "paused": g.paused, "applied": g.applied_seq}


_MISSING: Any = object()


def _field(body: dict[str, Any], key: str, default: Any) -> Any:
    if key in body and body[key] is not None:
        return body[key]
    if default is _MISSING:
        raise InvalidInput(f"request body needs {key!r}")
    return default


def _str(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    v = _field(body, key, default)
    if v is not default and not isinstance(v, str):
        raise InvalidInput(f"{key!r} must be a string, got {type(v).__name__}")
    return v


def _int(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    v = _field(body, key, default)
    if v is not default and (isinstance(v, bool) or not isinstance(v, int)):
        raise InvalidInput(f"{key!r} must be an integer, got {str(v)[:40]}")
    return v


def _num(body: dict[str, Any], key: str, default: Any = _MISSING, *, lo: float = 0.0,
         hi: float = 1e9) -> Any:
    v = _field(body, key, default)
    if v is default:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise InvalidInput(f"{key!r} must be a number between {lo:g} and {hi:g}, got {str(v)[:40]}")
    return float(v)


def _bool(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    v = _field(body, key, default)
    if v is not default and not isinstance(v, bool):
        raise InvalidInput(f"{key!r} must be true or false, got {str(v)[:40]}")
    return v


def _strlist(body: dict[str, Any], key: str) -> list[str]:
    v = _field(body, key, _MISSING)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidInput(f"{key!r} must be a list of names")
    return v


def _strmap(body: dict[str, Any], key: str) -> dict[str, str] | None:
    v = _field(body, key, None)
    if v is not None and (not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values())):
        raise InvalidInput(f"{key!r} must map volume names to backup volume names")
    return v


class ArrayProcess:
    """Everything one array process runs; usable in-process for tests too."""

    def __init__(self, root: str | Path, name: str = "array", *, token: str, mgmt_port: int = 0,
                 repl_port: int = 0, fsync: bool = False) -> None:
        self.root = Path(root)
        self.array = Array(self.root, name, fsync=fsync)
        self.service = ReplicationService(self.array, port=repl_port)
        self.sock_path = socket_path_for(self.root)
        self.data = DataPathServer(self.sock_path, self.array)
        self.mgmt = ManagementServer(self.array, self.service, mgmt_port, token=token)
        self.threads = [threading.Thread(target=self.mgmt.serve_forever, daemon=True, name="mgmt")]

    def start(self) -> dict[str, Any]:
        self.service.start()
        self.data.start()
        for t in self.threads:
            t.start()
        return self.endpoints()

    def endpoints(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "name": self.array.name, "data_socket": str(self.sock_path),
                "mgmt_url": f"http://127.0.0.1:{self.mgmt.server_address[1]}",
                "replication": f"127.0.0.1:{self.service.port}"}

    def stop(self) -> None:
        self.service.stop()
        self.mgmt.shutdown()
        self.mgmt.server_close()
        self.data.close()
        self.array.close()
        try:
            self.sock_path.unlink()
        except OSError:
            pass


# bytes of freed memory the C allocator keeps at the top of its heap (glibc's M_TRIM_THRESHOLD),
# and the size from which a block is mapped on its own (M_MMAP_THRESHOLD; fixing the first
# turns off glibc's own raising of the second, and the backup's frames of up to 1 MiB were
# then each mapped and unmapped: its CPU per transaction grew by about 30 us)
HEAP_KEEP = 8 << 20
MAP_FROM = 16 << 20


def keep_freed_memory(nbytes: int = HEAP_KEEP, map_from: int = MAP_FROM) -> bool:
    """Let glibc keep up to ``nbytes`` of freed memory instead of giving it back at 128 KiB,
    and take blocks below ``map_from`` from its heap.

    The journal holds each queued entry's received buffer until its batch is written (up to
    1 MiB while the transfer is paused), then frees them together: with glibc's default the
    freed top of the heap was given back to the system and taken again each time, and a
    journaled request's round trip paid for it (`scripts/roundtrip_probe.py`: SYNC after a
    journaled WRITE 17.0-17.8 us against 14.8-15.8 us with 8 MiB kept; plain volumes 14.2-14.4
    either way).  False where the C library has no ``mallopt`` (not glibc): nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(-1, nbytes)) and bool(mallopt(-3, map_from))  # TRIM, MMAP thresholds


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
    token = token_from_env(TOKEN_ENV)
    if token is None:
        print(f"error: set {TOKEN_ENV} to the site's token (at least 16 characters); the "
              "management API refuses requests without it", file=sys.stderr)
        return 2
    try:
        proc = ArrayProcess(args.dir, args.name, token=token, mgmt_port=args.mgmt_port,
                            repl_port=args.repl_port, fsync=args.fsync)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.setswitchinterval(0.0002)  # the commit path must not wait long for the GIL
    keep_freed_memory()
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
