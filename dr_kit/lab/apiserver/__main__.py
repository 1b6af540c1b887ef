"""``python -m dr_kit.lab.apiserver --state-dir DIR --token TOKEN [--port 0] [--ready-file F]``

Serves one site's API over HTTPS on loopback until SIGTERM or SIGINT, then exits 0. The
certificate clients must trust is ``DIR/tls/server.crt``. Once listening it writes the bound
port to the ready file (atomically). Errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from .runner import check_loopback, start, stop
from .store import StateCorrupt, StateDirBusy


def _write_ready(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


async def _main(args: argparse.Namespace) -> None:
    runner, store, port = await start(args.state_dir, args.token, args.host, args.port, args.fsync,
                                      tls=not args.no_tls)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if args.ready_file:
        _write_ready(Path(args.ready_file), port)
    logging.getLogger(__name__).info("serving on %s://%s:%d", "http" if args.no_tls else "https", args.host, port)
    await stopping.wait()
    await stop(runner, store)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dr_kit.lab.apiserver", description=__doc__)
    p.add_argument("--state-dir", required=True, help="directory holding the site's objects")
    p.add_argument("--token", default=os.environ.get("DR_KIT_APISERVER_TOKEN"),
                   help="bearer token clients must present (or $DR_KIT_APISERVER_TOKEN)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--ready-file", help="write the bound port here once serving")
    p.add_argument("--fsync", action="store_true", help="fsync the log after every write")
    p.add_argument("--no-tls", action="store_true",
                   help="serve plain HTTP (kubectl then sends no token; python clients only)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        if not args.token:
            raise ValueError("--token (or DR_KIT_APISERVER_TOKEN) is required")
        args.host = check_loopback(args.host)
        asyncio.run(_main(args))
    except (ValueError, StateDirBusy, StateCorrupt, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
