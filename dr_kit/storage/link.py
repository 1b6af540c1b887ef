"""A TCP link emulator placed between two arrays: one-way delay, rate limit, cut.

It forwards every byte in order in both directions.  ``delay_ms`` is added to each
direction (so a round trip pays twice), ``rate_mbit`` caps throughput per direction,
``cut()`` drops every connection and refuses new ones until ``restore()``.  It listens on
127.0.0.1 only.

It runs in a thread of any process (tests, the crash test), or as its own process with a
small control API that requires the token given in ``$DR_KIT_LINK_TOKEN``::

    DR_KIT_LINK_TOKEN=... python -m dr_kit.storage.link --target 127.0.0.1:PORT [--port P] [--ready-file F]
    POST /link {"delay_ms": 5, "rate_mbit": 100, "cut": false}   GET /link
    (Authorization: Bearer <token>, Content-Type: application/json)
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from dr_kit.errors import InvalidInput
from dr_kit.fsutil import write_json
from dr_kit.storage.httpapi import ApiHandler, ApiServer, token_from_env

TOKEN_ENV = "DR_KIT_LINK_TOKEN"


class _Pipe:
    """One direction of one connection: read, hold for the delay, pace, write."""

    def __init__(self, link: LinkEmulator, src: socket.socket, dst: socket.socket) -> None:
        self.link, self.src, self.dst = link, src, dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.cv = threading.Condition()
        self.closed = False
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self._writer, daemon=True).start()

    def _reader(self) -> None:
        try:
            while True:
                data = self.src.recv(256 * 1024)
                if not data:
                    break
                with self.cv:
                    self.queue.append((time.monotonic() + self.link.delay_ms / 1000.0, data))
                    self.cv.notify()
        except OSError:
            pass
        with self.cv:
            self.closed = True
            self.cv.notify()

    def _writer(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.queue and not self.closed:
                        self.cv.wait()
                    if not self.queue:
                        break
                    due, data = self.queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self.cv.wait(wait)
                        continue
                    self.queue.popleft()
                self.dst.sendall(data)
                self.link.bytes_forwarded += len(data)
                rate = self.link.rate_mbit
                if rate:
                    time.sleep(len(data) * 8 / (rate * 1e6))
        except OSError:
            pass
        for s in (self.dst, self.src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LinkEmulator:
    """Forward connections from 127.0.0.1:``port`` to ``target`` (HOST:PORT)."""

    def __init__(self, target: str, *, port: int = 0, delay_ms: float = 0.0,
                 rate_mbit: float = 0.0) -> None:
        host, _, p = target.rpartition(":")
        if not host or not p.isdigit():
            raise InvalidInput(f"link target must be HOST:PORT, got {target!r}")
        self.target = (host, int(p))
        self.delay_ms = 0.0
        self.rate_mbit = 0.0
        self.configure(delay_ms=delay_ms, rate_mbit=rate_mbit)
        self.is_cut = False
        self.bytes_forwarded = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", port))
        self.port = self._srv.getsockname()[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="link")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LinkEmulator:
        self._thread.start()
        return self

    def configure(self, *, delay_ms: float | None = None, rate_mbit: float | None = None) -> None:
        if delay_ms is not None:
            if not 0 <= float(delay_ms) <= 10_000:
                raise InvalidInput(f"link delay must be between 0 and 10000 ms, got {delay_ms}")
            self.delay_ms = float(delay_ms)
        if rate_mbit is not None:
            if float(rate_mbit) < 0:
                raise InvalidInput(f"link rate must be >= 0 Mbit/s (0 = unlimited), got {rate_mbit}")
            self.rate_mbit = float(rate_mbit)

    def cut(self) -> None:
        """Drop every connection now and refuse new ones."""
        with self._lock:
            self.is_cut = True
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.is_cut = False

    def state(self) -> dict[str, Any]:
        return {"listen": self.address, "target": f"{self.target[0]}:{self.target[1]}",
                "delay_ms": self.delay_ms, "rate_mbit": self.rate_mbit, "cut": self.is_cut,
                "connections": len(self._conns), "bytes_forwarded": self.bytes_forwarded}

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            if self.is_cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns += [client, upstream]
            _Pipe(self, client, upstream)
            _Pipe(self, upstream, client)

    def stop(self) -> None:
        self._stopping = True
        self.cut()
        self._srv.close()


class _Control(ApiHandler):
    server: ControlServer

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        link = self.server.link
        if path.rstrip("/") not in ("/link", ""):
            return 404, {"error": "NotFound", "message": f"no such control endpoint {path}; use /link"}
        if method == "GET":
            return 200, link.state()
        if method != "POST":
            return 405, {"error": "InvalidInput", "message": f"{method} is not supported; use GET or POST"}
        if not isinstance(body, dict):
            raise InvalidInput('the body must be a JSON object such as {"delay_ms": 5}')
        unknown = sorted(set(body) - {"delay_ms", "rate_mbit", "cut"})
        if unknown:
            raise InvalidInput(f"unknown link settings {', '.join(unknown)}; use delay_ms, rate_mbit, cut")
        for k in ("delay_ms", "rate_mbit"):
            v = body.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise InvalidInput(f"{k} must be a number, got {str(v)[:40]}")
        cut = body.get("cut")
        if cut is not None and not isinstance(cut, bool):
            raise InvalidInput(f"cut must be true or false, got {str(cut)[:40]}")
        link.configure(delay_ms=body.get("delay_ms"), rate_mbit=body.get("rate_mbit"))
        if cut is True:
            link.cut()
        elif cut is False:
            link.restore()
        return 200, link.state()


class ControlServer(ApiServer):
    """The link emulator's control API (HTTP/JSON on 127.0.0.1, bearer token)."""

    WORKERS = 2

    def __init__(self, link: LinkEmulator, port: int = 0, *, token: str) -> None:
        self.link = link
        super().__init__(port, _Control, token)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.storage.link")
    ap.add_argument("--target", required=True, help="HOST:PORT of the backup array's replication port")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--rate-mbit", type=float, default=0.0)
    ap.add_argument("--ready-file")
    a = ap.parse_args(argv)
    token = token_from_env(TOKEN_ENV)
    if token is None:
        print(f"error: set {TOKEN_ENV} to the token the control API must require (at least 16 "
              "characters)", file=sys.stderr)
        return 2
    try:
        link = LinkEmulator(a.target, port=a.port, delay_ms=a.delay_ms, rate_mbit=a.rate_mbit).start()
        ctl = ControlServer(link, a.control_port, token=token)
    except (InvalidInput, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    if a.ready_file:
        write_json(a.ready_file, {"pid": os.getpid(), "listen": link.address,
                                  "control_url": f"http://127.0.0.1:{ctl.server_address[1]}"})
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    link.stop()
    ctl.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
