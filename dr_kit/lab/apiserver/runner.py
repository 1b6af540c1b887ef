"""Running a site's API server: in a background thread (tests, lab code) or as a process.

``start_in_thread(state_dir, token)`` returns a :class:`ServerHandle` once the server is
listening; ``serve(...)`` is the coroutine behind ``python -m dr_kit.lab.apiserver``.
Both bind loopback addresses only: the lab never exposes a site beyond this machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .server import make_app
from .store import Store
from .tls import cert_path, read_ca, server_context

SHUTDOWN_TIMEOUT = 2.0


def check_loopback(host: str) -> str:
    """Return the address to bind, or raise ValueError for anything but loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--host must be a loopback address, not {host!r}") from None
    if not addr.is_loopback or addr.version != 4:
        raise ValueError(f"--host must be a 127.x.x.x loopback address, not {host!r}")
    return host


async def start(
    state_dir: str | os.PathLike[str],
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    fsync: bool = False,
    tls: bool = True,
) -> tuple[web.AppRunner, Store, int]:
    """Open the store and start listening; returns (runner, store, bound port).

    With ``tls`` (the default) the site serves HTTPS with its own certificate
    (:func:`~.tls.read_ca` gives the PEM clients must trust).
    """
    host = check_loopback(host)
    store = Store(state_dir, fsync=fsync)
    try:
        ssl_context = server_context(state_dir) if tls else None
        app = make_app(store, token)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        store.close()
        raise
    sockets = runner.addresses
    bound = sockets[0][1] if sockets else port
    return runner, store, bound


async def stop(runner: web.AppRunner, store: Store) -> None:
    try:
        await runner.cleanup()
    finally:
        store.close()


@dataclass
class ServerHandle:
    """A server running in a background thread. ``stop()`` is idempotent."""

    url: str
    port: int
    token: str
    state_dir: Path
    ca_pem: str | None
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _stopped: asyncio.Event = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)

    def kubeconfig_site(self) -> tuple[str, str, Path | None]:
        """``(url, token, ca_file)``, a value for :func:`~.kubeconfig.write_kubeconfig` (the
        CA named by its file: a client then writes no temporary copy of it)."""
        return (self.url, self.token, cert_path(self.state_dir) if self.ca_pem else None)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    state_dir: str | os.PathLike[str],
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    fsync: bool = False,
    tls: bool = True,
) -> ServerHandle:
    """Start a server in a daemon thread and return once it accepts connections."""
    ready = threading.Event()
    result: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stopped = asyncio.Event()
        try:
            runner, store, bound = await start(state_dir, token, host, port, fsync, tls)
        except BaseException as e:
            result["error"] = e
            ready.set()
            return
        result.update(port=bound, stopped=stopped)
        ready.set()
        await stopped.wait()
        await stop(runner, store)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"apiserver:{state_dir}", daemon=True)
    thread.start()
    ready.wait()
    if "error" in result:
        thread.join()
        raise result["error"]  # type: ignore[misc]
    bound = result["port"]
    assert isinstance(bound, int)
    bind = check_loopback(host)
    return ServerHandle(
        url=f"{'https' if tls else 'http'}://{bind}:{bound}",
        port=bound,
        token=token,
        state_dir=Path(state_dir),
        ca_pem=read_ca(state_dir) if tls else None,
        _loop=loop,
        _thread=thread,
        _stopped=result["stopped"],  # type: ignore[arg-type]
    )
