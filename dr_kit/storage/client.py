"""Clients of an array: the management API, the data path, and starting array processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput, JournalError, NotFound, Unavailable
from dr_kit.storage.position import LagReport
from dr_kit.storage.record import EXTENT
from dr_kit.storage.server import (
    CLOSE,
    ERROR_CODES,
    OK,
    OPEN,
    READ,
    REQ,
    RESP,
    SYNC,
    TOKEN_ENV,
    WRITE,
    WRITEV,
)
from dr_kit.storage.wire import recv_exact

_ERRORS: dict[str, type[DrKitError]] = {"InvalidInput": InvalidInput, "NotFound": NotFound,
                                        "Conflict": Conflict, "JournalError": JournalError,
                                        "Unavailable": Unavailable}


_DATA_PATH = "the array's data path connection (array down?)"


class RemoteVolume:
    """A volume reached over the array's data path; one connection, thread safe."""

    def __init__(self, socket_path: str, name: str) -> None:
        self.name = name
        self.socket_path = socket_path
        self._lock = threading.Lock()
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(socket_path)
        except OSError as e:
            raise Unavailable(f"cannot reach the array data path at {socket_path}: {e.strerror}") from None
        out = self._call(OPEN, 0, 0, name.encode())
        self._handle, self.size = struct.unpack("<IQ", out)

    def _call(self, op: int, offset: int, length: int, payload: bytes = b"") -> bytes:
        with self._lock:
            try:
                h = getattr(self, "_handle", 0)
                n = len(payload) if payload else length
                self._sock.sendall(REQ.pack(op, h, offset, n) + payload)
                status, rlen = RESP.unpack(recv_exact(self._sock, RESP.size, _DATA_PATH))
                out = recv_exact(self._sock, rlen, _DATA_PATH) if rlen else b""
            except OSError as e:
                raise Unavailable(f"array data path failed for volume {self.name}: {e}") from None
        if status != OK:  # the status names the error's class
            raise ERROR_CODES.get(status, InvalidInput)(out.decode(errors="replace"))
        return out

    def read(self, offset: int, length: int) -> bytes:
        return self._call(READ, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._call(WRITE, offset, len(data), bytes(data))

    def writev(self, extents: list[tuple[int, bytes]]) -> None:
        """Several writes in one request, applied in order (one acknowledgement)."""
        head = struct.pack("<I", len(extents)) + b"".join(EXTENT.pack(o, len(d)) for o, d in extents)
        self._call(WRITEV, 0, 0, head + b"".join(bytes(d) for _, d in extents))

    def sync(self) -> None:
        self._call(SYNC, 0, 0)

    def close(self) -> None:
        try:
            self._call(CLOSE, 0, 0)
        except DrKitError:
            pass
        self._sock.close()


def new_pair_secret() -> str:
    """A fresh secret for one replication pair (give it to both arrays)."""
    return secrets.token_hex(32)


class ArrayClient:
    """The management API of one array (and its data path).

    ``token`` is the site's array token (sent as ``Authorization: Bearer``); without one,
    ``$DR_KIT_ARRAY_TOKEN`` is used.  The token is never part of an error message.
    """

    def __init__(self, mgmt_url: str, data_socket: str | None = None, *, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = mgmt_url.rstrip("/")
        self.data_socket = data_socket
        self.timeout = timeout
        self._token = token or os.environ.get(TOKEN_ENV, "").strip() or None

    def __repr__(self) -> str:
        return f"ArrayClient({self.url!r}, token={'set' if self._token else 'none'})"

    @classmethod
    def from_ready_file(cls, path: str | Path, *, token: str | None = None) -> ArrayClient:
        info = json.loads(Path(path).read_text())
        return cls(info["mgmt_url"], info["data_socket"], token=token)

    def _req(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
            except ValueError:
                raise Unavailable(f"array at {self.url} answered HTTP {e.code}") from None
            if e.code == 401:
                raise InvalidInput(f"the array at {self.url} refused the request: "
                                   + ("the token is not this array's" if self._token else
                                      f"no token (pass token= or set {TOKEN_ENV})")) from None
            raise _ERRORS.get(err.get("error", ""), DrKitError)(err.get("message", "")) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(f"array management API at {self.url} is unreachable ({reason})") from None

    # -- calls ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._req("GET", "/v1/status")

    def create_volume(self, name: str, size: int) -> dict[str, Any]:
        return self._req("POST", "/v1/volumes", {"name": name, "size": size})

    def delete_volume(self, name: str) -> None:
        self._req("DELETE", f"/v1/volumes/{name}")

    def create_group(self, name: str, volumes: list[str], remote: str, *, secret: str,
                     **opts: Any) -> dict[str, Any]:
        """A consistency group at this (main) array; the backup array must know ``secret``
        for it (:meth:`authorize_pair` there, or use :func:`create_pair`)."""
        return self._req("POST", "/v1/groups", {"name": name, "volumes": volumes, "remote": remote,
                                                "secret": secret, **opts})

    def authorize_pair(self, group: str, secret: str) -> None:
        """At a backup array: accept group ``group`` from a main array proving ``secret``."""
        self._req("POST", "/v1/pairs", {"group": group, "secret": secret})

    def forget_pair(self, group: str) -> None:
        self._req("DELETE", f"/v1/pairs/{group}")

    def delete_group(self, name: str, *, delete_volumes: bool = False) -> None:
        self._req("DELETE", f"/v1/groups/{name}" + ("?delete_volumes=1" if delete_volumes else ""))

    def add_member(self, group: str, volume: str, remote_name: str | None = None) -> dict[str, Any]:
        return self._req("POST", f"/v1/groups/{group}/members", {"volume": volume, "remote_name": remote_name})

    def remove_member(self, group: str, volume: str) -> dict[str, Any]:
        return self._req("DELETE", f"/v1/groups/{group}/members/{volume}")

    def group_action(self, name: str, action: str, **extra: Any) -> dict[str, Any]:
        return self._req("POST", f"/v1/groups/{name}/actions", {"action": action, **extra})

    def lag(self, group: str) -> LagReport:
        return LagReport.from_dict(self._req("GET", f"/v1/groups/{group}/lag"))

    def group_status(self, name: str) -> dict[str, Any]:
        for g in self.status()["groups"]:
            if g["name"] == name:
                return g
        raise NotFound(f"consistency group {name!r} does not exist on the array at {self.url}")

    def create_snapshot(self, name: str, *, group: str | None = None,
                        volumes: list[str] | None = None) -> dict[str, Any]:
        return self._req("POST", "/v1/snapshots", {"name": name, "group": group, "volumes": volumes})

    def snapshot(self, name: str) -> dict[str, Any]:
        return self._req("GET", f"/v1/snapshots/{name}")

    def delete_snapshot(self, name: str) -> None:
        self._req("DELETE", f"/v1/snapshots/{name}")

    def create_clone(self, name: str, snapshot: str, volume: str) -> dict[str, Any]:
        return self._req("POST", "/v1/clones", {"name": name, "snapshot": snapshot, "volume": volume})

    def open_volume(self, name: str) -> RemoteVolume:
        if not self.data_socket:
            raise InvalidInput("this array client has no data path socket")
        return RemoteVolume(self.data_socket, name)

    def wait_group(self, name: str, pred, *, timeout: float = 30.0, interval: float = 0.02,
                   what: str = "the expected state") -> dict[str, Any]:
        """Poll a group's status until ``pred(status)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.group_status(name)
                if pred(st):
                    return st
            except NotFound:
                st = None
            if time.monotonic() > deadline:
                raise Unavailable(f"group {name!r} did not reach {what} within {timeout:.0f} s "
                                  f"(last: {st and st.get('state')} {st and st.get('message')})")
            time.sleep(interval)


def create_pair(main: ArrayClient, backup: ArrayClient, name: str, volumes: list[str], remote: str,
                **opts: Any) -> dict[str, Any]:
    """Create consistency group ``name`` replicating from ``main`` to ``backup`` (reached at
    ``remote``): a fresh pair secret is given to the backup first, then to the main."""
    secret = new_pair_secret()
    backup.authorize_pair(name, secret)
    return main.create_group(name, volumes, remote, secret=secret, **opts)


@dataclass
class ArrayHandle:
    """An array running in a child process."""

    root: Path
    name: str
    proc: subprocess.Popen
    info: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None
    token: str = field(default="", repr=False)

    @property
    def client(self) -> ArrayClient:
        return ArrayClient(self.info["mgmt_url"], self.info["data_socket"], token=self.token)

    @property
    def replication(self) -> str:
        return self.info["replication"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no chance to clean up, like a power cut of the array controller."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def start_array(root: str | Path, name: str, *, repl_port: int = 0, mgmt_port: int = 0,
                fsync: bool = False, timeout: float = 20.0, token: str | None = None) -> ArrayHandle:
    """Start an array process on ``root`` and wait until it listens.  Its management API
    takes ``token`` (a fresh one when not given; the handle's client carries it)."""
    root = Path(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(32)
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    log_path = root / "array.log"
    cmd = [sys.executable, "-m", "dr_kit.storage.server", "--dir", str(root), "--name", name,
           "--ready-file", str(ready), "--repl-port", str(repl_port), "--mgmt-port", str(mgmt_port)]
    if fsync:
        cmd.append("--fsync")
    env = {**os.environ, TOKEN_ENV: token}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"array {name} exited at start (code {proc.returncode}): {tail[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise Unavailable(f"array {name} did not start within {timeout:.0f} s; see {log_path}")
        time.sleep(0.02)
    return ArrayHandle(root, name, proc, json.loads(ready.read_text()), log_path, token)
