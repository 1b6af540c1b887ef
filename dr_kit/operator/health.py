"""The operator's own health and metrics: ``/healthz``, ``/readyz``, ``/metrics``.

- ``/healthz`` (liveness) fails only in the catastrophic cases a restart cures: a thread of
  the operator ended, a watch has been silent far longer than its timeout (a hung
  connection), or one reconcile has run for minutes.
- ``/readyz`` (readiness): every watch cache has been listed once and the operator is live.
- ``/metrics``: Prometheus text, from a registry of the runner's own (reconciles, errors,
  reconcile duration, namespaces per protection state, queue depth, API writes, watch
  restarts, threads).  Progress is measured here, not by the probes.

One HTTP thread serves them one request at a time (probes and scrapes are rare and short).
The address is 127.0.0.1 unless the operator runs in a cluster, where the kubelet probes
the pod's own address.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from dr_kit.errors import InvalidInput
from dr_kit.operator.status import (
    DEGRADED,
    PROTECTED,
    PROTECTING,
    REFUSED,
    STANDBY,
    UNPROTECTED,
    WAITING,
)

log = logging.getLogger("dr_kit.operator")

STATES = (PROTECTED, PROTECTING, DEGRADED, REFUSED, WAITING, STANDBY, UNPROTECTED)
DEFAULT_ADDRESS = "127.0.0.1:9471"


class Metrics:
    """The runner's metrics, in a registry of its own (several runners in one process stay
    apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter("dr_kit_operator_reconciles", "Namespace reconciles run",
                                  registry=r)
        self.errors = Counter("dr_kit_operator_reconcile_errors",
                              "Failed namespace reconciles, by kind of error "
                              "(temporary: retried after a delay; permanent: retried when the "
                              "namespace changes; unexpected: any other exception, retried "
                              "with backoff)", ["kind"], registry=r)
        self.duration = Histogram("dr_kit_operator_reconcile_duration_seconds",
                                  "Time to read, decide and apply one namespace",
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                           2.5, 5, 10, 30), registry=r)
        self.protected = Gauge("dr_kit_operator_protected_namespaces",
                               "Namespaces whose consistency group is replicating (Protected)",
                               registry=r)
        self.namespaces = Gauge("dr_kit_operator_namespaces",
                                "Namespaces the operator handles, by protection state",
                                ["state"], registry=r)
        self.queue = Gauge("dr_kit_operator_queue_depth",
                           "Namespaces waiting to be reconciled (ready now)", registry=r)
        self.writes = Counter("dr_kit_operator_api_writes",
                              "Writes the operator sent to the API (create, patch, delete)",
                              ["verb", "kind"], registry=r)
        self.watch_restarts = Counter("dr_kit_operator_watch_restarts",
                                      "Watches restarted with a relist, by kind and cause",
                                      ["kind", "cause"], registry=r)
        self.threads = Gauge("dr_kit_operator_threads", "Threads of the operator process",
                             registry=r)
        self.threads.set_function(lambda: threading.active_count())
        self.ready = Gauge("dr_kit_operator_ready", "1 when every watch cache is synced",
                           registry=r)
        for s in STATES:
            self.namespaces.labels(state=s)
        for k in ("temporary", "permanent", "unexpected"):
            self.errors.labels(kind=k)

    def set_states(self, counts: dict[str, int]) -> None:
        for s in STATES:
            self.namespaces.labels(state=s).set(counts.get(s, 0))
        self.protected.set(counts.get(PROTECTED, 0))

    def text(self) -> bytes:
        return generate_latest(self.registry)


def parse_address(addr: str, *, allow_remote: bool = False) -> tuple[str, int] | None:
    """``HOST:PORT`` (``:PORT`` = all addresses) -> (host, port); ``off`` -> None.

    Outside a cluster only a loopback address is accepted: nothing of the operator is
    served to the network by accident."""
    text = addr.strip()
    if text.lower() in ("", "off", "none"):
        return None
    host, sep, port_s = text.rpartition(":")
    if not sep:
        raise InvalidInput(f"--serve {addr!r}: expected HOST:PORT (e.g. 127.0.0.1:9471) or off")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_s)
    except ValueError:
        raise InvalidInput(f"--serve {addr!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--serve {addr!r}: the port must be 0..65535")
    if not allow_remote:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidInput(f"--serve {addr!r}: outside a cluster the operator serves its "
                               f"health and metrics on a loopback address only (e.g. "
                               f"127.0.0.1:{port})")
    return host, port


Check = Callable[[], tuple[bool, str]]


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on one thread."""

    def __init__(self, address: tuple[str, int], *, live: Check, ready: Check,
                 metrics: Metrics) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            timeout = 5.0  # a silent client cannot hold the one thread

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.text(), CONTENT_TYPE_LATEST)
                elif path in checks:
                    try:
                        ok, detail = checks[path]()
                    except Exception as exc:  # noqa: BLE001 - a probe answers, whatever happens
                        ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"
                    self._send(200 if ok else 503, (detail + "\n").encode(),
                               "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: /healthz, /readyz, /metrics\n",
                               "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("health: " + format, *args)

        try:
            self.server = HTTPServer(address, Handler)
        except OSError as exc:
            raise InvalidInput(f"cannot serve health and metrics on {address[0]}:{address[1]}: "
                               f"{exc.strerror or exc}; pick another --serve address") from None
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.5}, name="dr-kit-operator-health", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


__all__ = ["DEFAULT_ADDRESS", "HealthServer", "Metrics", "parse_address"]
