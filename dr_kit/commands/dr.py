"""``dr-kit dr test|failover|relocate|failback|status NS``: DR operations of a namespace.

Both sites are reached through kubeconfig contexts: ``--dir DIR`` (a lab folder, default
``.dr-lab``: contexts ``main`` and ``backup``, and the lab's controls for its
applications) or ``--kubeconfig K --main-context M --backup-context B`` (real clusters:
applications are Deployments/StatefulSets, scaled).  Progress goes to stderr, the result
to stdout (``--json``: the figures as JSON).  A refusal is one ``error:`` line, exit 2,
nothing changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dr_kit.commands import DEFAULT_DIR
from dr_kit.controls import LabControls
from dr_kit.errors import InvalidInput, NotFound
from dr_kit.sites import Site

ControlsFactory = Callable[[str], LabControls]

LINES = {
    "test": ("consistent", "test_rto_s", "test_transactions", "replication_suspended",
             "resync_after", "lag_p99_ms_during_test"),
    "relocate": ("primary", "rpo_orders", "rto_s", "final_sync_s", "resync_bytes"),
    "failover": ("primary", "rpo_orders", "rpo_orders_max", "rpo_estimated", "rto_s", "consistent",
                 "fenced"),
    "failback": ("primary", "resync_bytes", "volume_bytes", "rpo_orders", "rto_s", "consistent"),
}


def _sites(args: argparse.Namespace) -> tuple[Site, Site, str | None]:
    real = bool(args.kubeconfig or args.main_context or args.backup_context)
    if real and args.dir:
        raise InvalidInput("use either --dir (the lab) or --kubeconfig with --main-context and "
                           "--backup-context (real clusters), not both")
    if real:
        if not (args.main_context and args.backup_context):
            raise InvalidInput("real clusters need --main-context and --backup-context")
        if args.main_context == args.backup_context:
            raise InvalidInput("--main-context and --backup-context name the same context")
        return (Site.from_kubeconfig(args.kubeconfig, args.main_context, name="main"),
                Site.from_kubeconfig(args.kubeconfig, args.backup_context, name="backup"), None)
    lab_dir = Path(args.dir or DEFAULT_DIR)
    kubeconfig = lab_dir / "kubeconfig"
    if not kubeconfig.is_file():
        raise NotFound(f"no lab in {lab_dir.resolve()}; start one with: dr-kit lab up --dir "
                       f"{lab_dir.resolve()}, or name real clusters with --kubeconfig")
    return (Site.from_kubeconfig(kubeconfig, "main", name="main"),
            Site.from_kubeconfig(kubeconfig, "backup", name="backup"), str(lab_dir))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, lab_controls: ControlsFactory | None) -> int:
    from dr_kit.dr.ops import DR

    main, backup, lab_dir = _sites(args)
    controls = lab_controls(lab_dir) if lab_dir is not None and lab_controls is not None else None
    dr = DR(main, backup, args.namespace, controls=controls, progress=None if args.quiet else _say,
            timeout=args.timeout, warn=_say)
    op = args.dr_command
    if op == "test":
        out = dr.test_cleanup() if args.cleanup else dr.test(keep=args.keep, seconds=args.seconds)
    elif op == "failover":
        out = dr.failover(force=args.force)
    elif op == "relocate":
        out = dr.abort() if args.abort else dr.relocate()
    elif op == "failback":
        out = dr.failback()
    else:
        out = dr.status()
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "lag_series"}, indent=2,
                         sort_keys=True, default=str))
    else:
        print(render(op, out))
    return 0


def render(op: str, out: dict[str, Any]) -> str:
    """The result of an operation (or the status) as a few lines."""
    if op == "status":
        return render_status(out)
    if op == "test" and out.get("cleaned"):
        return f"DR test environment {out.get('namespace')} removed"
    if op == "relocate" and out.get("aborted"):
        return (f"relocate aborted at step {out.get('at_step')}: the {out.get('primary')} site is "
                "primary, its application running")
    keys = LINES.get(op, ())
    figures = ", ".join(f"{k}={_fmt(out.get(k))}" for k in keys)
    return f"{op}: {figures}"


def render_status(st: dict[str, Any]) -> str:
    from dr_kit.dr.ops import status_text

    return status_text(st)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def add_parser(subparsers: argparse._SubParsersAction, *,
               lab_controls: ControlsFactory | None = None) -> None:
    """Register ``dr``.  ``lab_controls(dir)`` gives a lab folder's controls (the command
    line's entry point passes the lab's; the library itself knows no lab)."""
    dr = subparsers.add_parser("dr", help="DR operations: test, failover, relocate, failback, status",
                               description="Disaster-recovery operations of a protected namespace, "
                               "each resumable and recorded on both sites (dr-kit.io/dr-state).")
    sub = dr.add_subparsers(dest="dr_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("namespace", metavar="NS")
        g = p.add_argument_group("sites", "the lab (--dir) or real clusters (--kubeconfig with "
                                 "--main-context and --backup-context)")
        g.add_argument("--dir", metavar="DIR", help=f"lab directory (default {DEFAULT_DIR})")
        g.add_argument("--kubeconfig", metavar="K")
        g.add_argument("--main-context", metavar="M")
        g.add_argument("--backup-context", metavar="B")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds per wait (default 120)")
        p.set_defaults(func=lambda a: _run(a, lab_controls))

    p = sub.add_parser("test", help="rehearse: snapshot group -> clones in NS-drtest -> the "
                       "application there, verified; replication never paused")
    common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", action="store_true", help="leave the test environment running")
    g.add_argument("--cleanup", action="store_true", help="remove a kept test environment")
    p.add_argument("--seconds", type=float, default=3.0, help="how long the test application runs")
    p = sub.add_parser("failover", help="unplanned: the primary site is lost; promote the other")
    common(p)
    p.add_argument("--force", action="store_true",
                   help="fail over onto a copy that is not known consistent (says what is lost)")
    p = sub.add_parser("relocate", help="planned: move the application to the other site, RPO 0")
    common(p)
    p.add_argument("--abort", action="store_true",
                   help="call off a running relocate that has not promoted the other site yet: "
                   "the application runs at its source again, nothing lost")
    p = sub.add_parser("failback", help="after a failover: resync by changed regions, relocate home")
    common(p)
    p = sub.add_parser("status", help="the namespace's DR state and both sites' view")
    common(p)


__all__ = ["add_parser", "render", "render_status"]
