"""``dr-kit lag [--top N] [--json] [--serve ADDR]``: journal lag per consistency group, worst
first, once or as metrics."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from dr_kit.commands import site_from_args, site_options
from dr_kit.errors import InvalidInput


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lag", help="journal lag (RPO) per consistency group, once or as Prometheus metrics",
                       description="Read the replication lag of every consistency group at the main "
                       "site: from the array when the storage driver publishes it (exact), otherwise "
                       "from the replication resources' lastSyncTime (an upper bound, 1 s "
                       "resolution).  Groups are listed worst first: unknown lag, then the "
                       "largest time lag.  Unknown figures are shown as unknown, never as 0.")
    p.add_argument("--namespace", "-n", metavar="NS", help="only this namespace")
    p.add_argument("--top", metavar="N", help="only the N groups that lag most (unknown lag "
                   "counts as most)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON (worst first)")
    p.add_argument("--source", choices=("auto", "array", "k8s-status"), default="auto",
                   help="where to read the lag (default: the array where its driver publishes it)")
    p.add_argument("--serve", metavar="ADDR", help="serve Prometheus gauges at http://ADDR/metrics "
                   "until interrupted (e.g. 127.0.0.1:9469)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow --serve on a non-loopback address")
    site_options(p, site="main")
    p.set_defaults(func=_run)


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "unknown"
    if isinstance(v, float):
        return f"{v:.3f}{unit}"
    return f"{v}{unit}"


def _top(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise InvalidInput(f"--top takes a number of groups >= 1, got {value!r}")
    return n


def _run(args: argparse.Namespace) -> int:
    from dr_kit import lag

    top = _top(args.top)
    if args.serve is not None:
        host, port = lag.parse_listen(args.serve, allow_remote=args.allow_remote)  # before connecting
    site = site_from_args(args, "main")
    if args.serve is not None:
        srv = lag.serve_metrics(site, f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                                namespace=args.namespace, allow_remote=args.allow_remote,
                                source=args.source)
        print(f"serving lag metrics at {srv.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            srv.stop()
        return 0
    reports = lag.worst_first(lag.read_lag(site, args.namespace, source=args.source))
    total = len(reports)
    reports = reports[:top] if top is not None else reports
    if args.json:
        print(json.dumps([r.to_dict() for r in reports]))
        return 0
    if not reports:
        where = f" in namespace {args.namespace}" if args.namespace else ""
        print(f"no consistency groups{where} at the {site.name} site")
        return 0
    print(f"{'GROUP':<28} {'NAMESPACE':<14} {'STATE':<12} {'SEQ LAG':>8} {'BYTE LAG':>10} "
          f"{'TIME LAG':>10}  SOURCE")
    for r in reports:
        t = _fmt(r.time_lag_s, " s")
        t = f"≤ {t}" if r.upper_bound and r.time_lag_s is not None else t
        print(f"{r.group:<28} {r.namespace or '-':<14} {r.state:<12} {_fmt(r.sequence_lag):>8} "
              f"{_fmt(r.byte_lag):>10} {t:>10}  {r.source_label}"
              + (f"  ({r.message})" if r.message else ""))
    if len(reports) < total:
        print(f"({len(reports)} of {total} groups, worst first; --top {top})")
    return 0
