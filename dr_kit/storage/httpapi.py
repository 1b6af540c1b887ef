"""The small HTTP/JSON server under the array's management API and the link's control API.

Both are doors into a site's storage, so every request must pass the same checks before
anything is done for it:

- ``Authorization: Bearer <token>`` with the site's token (compared in constant time);
- no foreign ``Origin`` (a web page in a local browser must not drive an array): a request
  carrying an ``Origin`` or ``Sec-Fetch-Site: cross-site`` that is not this server's own
  origin is refused;
- a body only as ``Content-Type: application/json`` (so no HTML form or ``text/plain``
  request can reach a handler), at most :data:`MAX_BODY` bytes, strict JSON: no ``NaN`` or
  ``Infinity``, no number too large to be finite, at most :data:`MAX_DEPTH` levels deep.

A refusal is a JSON error (``{"error", "message"}``) with 400, 401, 403, 413 or 415; a
handler's bug is a 500 with one line, logged; the connection is never just dropped.

The server runs a fixed pool of worker threads (not a thread per connection), and an idle
kept-alive connection is closed after :data:`IDLE_TIMEOUT` seconds so it cannot hold a
worker.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dr_kit.errors import DrKitError, InvalidInput

log = logging.getLogger("dr_kit.storage.http")

MAX_BODY = 1 << 20
MAX_DEPTH = 32
IDLE_TIMEOUT = 5.0


class Refused(Exception):
    """A request refused before any handler ran: HTTP code and one-line message."""

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code, self.error, self.message = code, error, message


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} is too large")
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a request body")


def _depth_ok(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON of a request body; InvalidInput saying what is wrong."""
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"request body of {len(raw)} bytes is larger than {MAX_BODY}")
    try:
        obj = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"request body is not valid JSON: {str(e)[:120]}") from None
    if not _depth_ok(obj, max_depth):
        raise InvalidInput(f"request body is nested more than {max_depth} levels deep")
    return obj


class ApiHandler(BaseHTTPRequestHandler):
    """Checks every request (token, origin, content type) and replies JSON.

    Subclasses implement :meth:`route` ``(method, path, query, body) -> (code, object)``.
    """

    server: ApiServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stall)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def reply(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="dr-kit"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(raw)

    # -- the checks ---------------------------------------------------------------------
    def _own_origins(self) -> set[str]:
        host, port = self.server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return {f"http://{host}:{port}", f"http://localhost:{port}"}

    def check(self, method: str) -> Any:
        """Refuse what must not reach a handler; returns the parsed body (or None)."""
        self._body_read = False
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self._own_origins():
            raise Refused(403, "Forbidden", f"requests from origin {origin[:80]!r} are refused")
        if (self.headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
            raise Refused(403, "Forbidden", "cross-site requests are refused")
        got = self.headers.get("Authorization") or ""
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(
                token.strip().encode(), self.server.token.encode()):
            raise Refused(401, "Unauthorized", "this API needs the site's token: send "
                          "'Authorization: Bearer <token>' (the token is kept in the lab folder)")
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise Refused(400, "InvalidInput", "chunked request bodies are not supported; send "
                          "Content-Length")
        try:
            length = int(length_text or 0)
        except ValueError:
            raise Refused(400, "InvalidInput", "Content-Length is not a number") from None
        if length < 0:
            raise Refused(400, "InvalidInput", "Content-Length is negative")
        if length > MAX_BODY:
            raise Refused(413, "InvalidInput", f"request body of {length} bytes is larger than {MAX_BODY}")
        if not length:
            return None
        raw = self.rfile.read(length)
        self._body_read = True
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise Refused(415, "InvalidInput", "request bodies must be JSON sent as "
                          f"Content-Type: application/json (got {ctype or 'none'!r})")
        try:
            return parse_json(raw)
        except InvalidInput as e:
            raise Refused(400, "InvalidInput", str(e)) from None

    def _serve(self, method: str) -> None:
        from urllib.parse import parse_qs, urlsplit

        try:
            body = self.check(method)
        except Refused as e:
            if not self._body_read:  # skip the unread body, or the stream is out of step
                self._discard_body()
            self.reply(e.code, {"error": e.error, "message": e.message})
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            code, result = self.route(method, url.path, query, body)
        except Refused as e:
            code, result = e.code, {"error": e.error, "message": e.message}
        except DrKitError as e:
            code, result = self.server.status_of(e), {"error": type(e).__name__, "message": str(e)}
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as e:
            code, result = 400, {"error": "InvalidInput", "message": f"bad request: {_one_line(e)}"}
        except Exception as e:  # noqa: BLE001 - a bug: say so in one line, keep serving
            log.exception("%s %s failed", method, url.path)
            code, result = 500, {"error": "InternalError", "message": _one_line(e)}
        self.reply(code, result)

    def _discard_body(self) -> None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if self.headers.get("Transfer-Encoding") or not 0 <= n <= MAX_BODY:
            self.close_connection = True  # cannot tell where the next request starts
        elif n:
            self.rfile.read(n)

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)[:200]


class ApiServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 with a fixed pool of workers and a bearer token."""

    daemon_threads = True
    allow_reuse_address = True
    WORKERS = 4

    def __init__(self, port: int, handler: type[ApiHandler], token: str, *,
                 status_of: Callable[[DrKitError], int] | None = None, workers: int | None = None) -> None:
        if not token or len(token) < 16:
            raise InvalidInput("the API token must be at least 16 characters")
        self.token = token
        self.status_of = status_of or (lambda e: 400)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, daemon=True, name=f"http-{i}")
                         for i in range(workers or self.WORKERS)]
        super().__init__(("127.0.0.1", port), handler)
        for t in self._workers:
            t.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._queue.put((request, client_address))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - a client that went away mid-request
                pass
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._queue.put(None)


def token_from_env(var: str) -> str | None:
    t = os.environ.get(var, "").strip()
    return t or None
