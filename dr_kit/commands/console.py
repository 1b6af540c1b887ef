"""``dr-kit console``: the live DR console, served by Voilà on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dr_kit.commands import DEFAULT_DIR
from dr_kit.errors import DrKitError, InvalidInput, Unavailable


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="the live DR console in a browser (Voilà, 127.0.0.1)",
                       description="Serve the live DR console on 127.0.0.1: both sites side by "
                       "side (namespaces, PVCs, roles), protect/unprotect per namespace, the lag "
                       "of every consistency group refreshed every few seconds, snapshot groups "
                       "and the headline analytics of the newest one.  Runs until Ctrl-C.")
    g = p.add_argument_group("sites", "the lab (--dir, started when it is not running) or real "
                             "clusters (--kubeconfig with a context per site)")
    g.add_argument("--dir", metavar="DIR", help=f"lab directory (default {DEFAULT_DIR})")
    g.add_argument("--kubeconfig", metavar="K", help="kubeconfig of real clusters")
    g.add_argument("--main-context", metavar="M", help="the main site's context (default main)")
    g.add_argument("--backup-context", metavar="B",
                   help="the backup site's context (default backup)")
    p.add_argument("--port", type=int, default=8866, metavar="P",
                   help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
    p.add_argument("--refresh", type=float, default=3.0, metavar="S",
                   help="seconds between refreshes (default 3)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without an access token (anyone on this machine can then use "
                   "the console and its credentials)")
    p.add_argument("--debug", action="store_true",
                   help="Voilà's log on stderr and tracebacks in the page")
    p.set_defaults(func=_run)


def _params(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The notebook's parameters and a line saying which sites; checks the sites first."""
    from dr_kit.sites import Site

    if not args.refresh >= 0.5 or args.refresh > 3600:
        raise InvalidInput(f"--refresh {args.refresh:g}: choose 0.5 to 3600 seconds")
    real = bool(args.kubeconfig)
    if args.dir and (real or args.main_context or args.backup_context):
        raise InvalidInput("use either --dir (the lab) or --kubeconfig with --main-context/"
                           "--backup-context (real clusters), not both")
    main_ctx, backup_ctx = args.main_context or "main", args.backup_context or "backup"
    if main_ctx == backup_ctx:
        raise InvalidInput(f"the main and backup sites are the same context {main_ctx!r}; "
                           "name two with --main-context and --backup-context")
    common = {"refresh_s": float(args.refresh), "window_s": 300.0}
    if real or args.main_context or args.backup_context:
        kubeconfig = str(Path(args.kubeconfig).expanduser().resolve()) if args.kubeconfig \
            else None
        main = Site.from_kubeconfig(kubeconfig, main_ctx, name="main")
        backup = Site.from_kubeconfig(kubeconfig, backup_ctx, name="backup")
        for site in (main, backup):
            site.ping()  # one error line when a site cannot be reached
        where = (f"main site: context {main_ctx} ({main.host}); backup site: context "
                 f"{backup_ctx} ({backup.host})")
        return {**common, "lab_dir": None, "kubeconfig": kubeconfig or _default_kubeconfig(),
                "main_context": main_ctx, "backup_context": backup_ctx}, where
    lab_dir = Path(args.dir or DEFAULT_DIR).expanduser().resolve()
    if lab_dir.exists() and not lab_dir.is_dir():
        raise InvalidInput(f"--dir {lab_dir} is not a directory")
    where = f"the lab in {lab_dir}"
    if not (lab_dir / "kubeconfig").is_file():
        where += " (none yet: the console starts one, about 20 s)"
    else:
        try:
            Site.from_kubeconfig(lab_dir / "kubeconfig", "main", name="main").ping()
        except DrKitError:
            where += " (not running: the console starts it)"
    return {**common, "lab_dir": str(lab_dir), "kubeconfig": None, "main_context": "main",
            "backup_context": "backup"}, where


def _default_kubeconfig() -> str:
    import os

    return os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or \
        str(Path("~/.kube/config").expanduser())


class _Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP: stop the console."""


def _raise_stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def _run(args: argparse.Namespace) -> int:
    from dr_kit.console.server import ConsoleServer, check_port

    check_port(args.port)  # before anything else: a port in use is one line
    params, where = _params(args)
    server = ConsoleServer(params, port=args.port, use_token=not args.no_token,
                           debug=args.debug)
    # Ctrl-C, kill and a closed terminal all stop it cleanly (SIGINT too when started in the
    # background, where it is ignored by default); a SIGHUP ignored by nohup stays ignored
    stops = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else [])
    previous = {s: signal.signal(s, _raise_stop) for s in stops}
    try:
        t0 = time.monotonic()
        url = server.start()
        print(f"DR console: {url}  ({where}; refresh every {args.refresh:g} s; started in "
              f"{time.monotonic() - t0:.1f} s)", flush=True)
        if server.open_file is not None:
            print(f"  open it through file://{server.open_file} (it carries the access token; "
                  "only you can read it)", flush=True)
        else:
            print("  no access token: anyone on this machine can use it", flush=True)
        print("  Ctrl-C stops it", flush=True)
        while server.alive():
            server.track_kernels()
            time.sleep(1.0)
        code = server.proc.returncode if server.proc else None
        raise Unavailable(f"Voilà stopped by itself (exit {code}); run again with --debug to "
                          "see why")
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        done = server.stop()
        if server.started_at is not None:
            killed = done["kernels_killed"]
            print("console stopped" + (f"; ended {len(killed)} kernel(s) Voilà left behind"
                                       if killed else ""), file=sys.stderr, flush=True)
    return 0
