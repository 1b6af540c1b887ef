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
import selectors
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


QUEUE_MAX = 4 << 20  # bytes held per direction (beyond the rate x delay in flight)
READ_SIZE = 256 * 1024


class _Dir:
    """One direction of one connection: bytes read, held for the delay, paced, written."""

    __slots__ = ("src", "dst", "queue", "queued", "eof", "next_send", "pair")

    def __init__(self, src: socket.socket, dst: socket.socket, pair: _Pair) -> None:
        self.src, self.dst, self.pair = src, dst, pair
        self.queue: collections.deque[tuple[float, memoryview]] = collections.deque()
        self.queued = 0
        self.eof = False
        self.next_send = 0.0  # rate limit: not before this time


class _Pair:
    """A forwarded connection: the client's socket and the upstream one, both ways."""

    __slots__ = ("a", "b", "dirs", "closed", "masks")

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.a, self.b = a, b
        self.dirs = (_Dir(a, b, self), _Dir(b, a, self))
        self.closed = False
        self.masks = [0, 0]  # the events each socket (a, b) is registered for


class LinkEmulator:
    """Forward connections from 127.0.0.1:``port`` to ``target`` (HOST:PORT).

    One thread runs a selector over every forwarded connection, whatever their number:
    each direction reads what arrives, holds it ``delay_ms``, paces it to ``rate_mbit`` and
    writes it on; a direction holding more than its share stops reading (TCP back-pressure).
    """

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
        self._pairs: set[_Pair] = set()
        self._srv = socket.create_server(("127.0.0.1", port))
        self._srv.setblocking(False)
        self.port = self._srv.getsockname()[1]
        self._stopping = False
        self._sel = selectors.DefaultSelector()
        self._rx, self._tx = socket.socketpair()
        for sk in (self._rx, self._tx):
            sk.setblocking(False)
        self._sel.register(self._rx, selectors.EVENT_READ, "wake")
        self._sel.register(self._srv, selectors.EVENT_READ, "listen")
        self._cut_done = threading.Event()
        self._cut_request = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="link")

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
            if not 0 <= float(rate_mbit) <= 1e6:
                raise InvalidInput(f"link rate must be between 0 and 1000000 Mbit/s (0 = unlimited), got {rate_mbit}")
            self.rate_mbit = float(rate_mbit)

    def _wake(self) -> None:
        try:
            self._tx.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def cut(self) -> None:
        """Drop every connection now and refuse new ones (returns once they are dropped)."""
        self.is_cut = True
        if not self._thread.is_alive():
            self._drop_all()
            return
        self._cut_done.clear()
        self._cut_request = True
        self._wake()
        self._cut_done.wait(5.0)

    def restore(self) -> None:
        self.is_cut = False

    def state(self) -> dict[str, Any]:
        return {"listen": self.address, "target": f"{self.target[0]}:{self.target[1]}",
                "delay_ms": self.delay_ms, "rate_mbit": self.rate_mbit, "cut": self.is_cut,
                "connections": 2 * len(self._pairs), "bytes_forwarded": self.bytes_forwarded}

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping:
            timeout = self._work()
            try:
                events = self._sel.select(timeout)
            except OSError:
                return
            for key, mask in events:
                if key.data == "wake":
                    try:
                        while self._rx.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                elif key.data == "listen":
                    self._accept()
                else:
                    pair, _ = key.data
                    if pair.closed:
                        continue
                    if mask & selectors.EVENT_READ:
                        for d in pair.dirs:
                            if d.src is key.fileobj:
                                self._read(d)
            if self._cut_request:
                self._cut_request = False
                self._drop_all()
                self._cut_done.set()
        self._drop_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self.is_cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            for sk in (client, upstream):
                sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sk.setblocking(False)
            self._pairs.add(pair)
            self._interest(pair)

    def _interest(self, pair: _Pair) -> None:
        """Read where the direction has room (the selector is only told of changes: no
        system call per forwarded chunk)."""
        for i, (sk, d) in enumerate(((pair.a, pair.dirs[0]), (pair.b, pair.dirs[1]))):
            ev = selectors.EVENT_READ if not d.eof and d.queued < QUEUE_MAX else 0
            if ev == pair.masks[i]:
                continue
            try:
                if ev and pair.masks[i]:
                    self._sel.modify(sk, ev, (pair, sk))
                elif ev:
                    self._sel.register(sk, ev, (pair, sk))
                else:
                    self._sel.unregister(sk)
            except (KeyError, ValueError, OSError):
                pass
            pair.masks[i] = ev

    def _read(self, d: _Dir) -> None:
        try:
            data = d.src.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            d.eof = True
        else:
            d.queue.append((time.monotonic() + self.delay_ms / 1000.0, memoryview(data)))
            d.queued += len(data)
        self._interest(d.pair)

    def _work(self) -> float | None:
        """Write what is due on every connection; returns how long until more is due."""
        now = time.monotonic()
        soonest: float | None = None
        for pair in list(self._pairs):
            changed = False
            for d in pair.dirs:
                while d.queue:
                    due, data = d.queue[0]
                    when = max(due, d.next_send)
                    if when > now:
                        soonest = when - now if soonest is None else min(soonest, when - now)
                        break
                    try:
                        n = d.dst.send(data)
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except OSError:
                        self._close(pair)
                        changed = False
                        break
                    self.bytes_forwarded += n
                    d.queued -= n
                    changed = True
                    if self.rate_mbit:
                        d.next_send = max(now, d.next_send) + n * 8 / (self.rate_mbit * 1e6)
                    if n < len(data):
                        d.queue[0] = (due, data[n:])
                        if n == 0:  # the receiver is full: look again soon
                            soonest = 0.001 if soonest is None else min(soonest, 0.001)
                            break
                    else:
                        d.queue.popleft()
                if pair.closed:
                    break
                if d.eof and not d.queue:  # one side ended and all of it went on: end both
                    self._close(pair)
                    break
            if changed and not pair.closed:
                self._interest(pair)
        return soonest if soonest is not None else 0.5

    def _close(self, pair: _Pair) -> None:
        if pair.closed:
            return
        pair.closed = True
        self._pairs.discard(pair)
        for sk in (pair.a, pair.b):
            try:
                self._sel.unregister(sk)
            except (KeyError, ValueError):
                pass
            try:
                sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sk.close()

    def _drop_all(self) -> None:
        for pair in list(self._pairs):
            self._close(pair)

    def stop(self) -> None:
        self.is_cut = True
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5.0)
        else:
            self._drop_all()
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
