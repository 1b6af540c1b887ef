"""``dr-kit snapshot create|list|restore|delete|schedule|diff|export``: snapshot groups at
the backup site, their schedule, what changed between two, and their data as files."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

from dr_kit.commands import CliProgress, site_from_args, site_options
from dr_kit.errors import InvalidInput


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="snapshot groups of a protected namespace at the backup site",
                       description="Freeze a protected namespace's replicated volumes at the backup "
                       "site at one consistency point (a VolumeGroupSnapshot), list, restore to "
                       "writable PVCs, delete.")
    ssub = p.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser, *, name: bool, wait: bool) -> None:
        if name:
            q.add_argument("name", metavar="NAME", help="snapshot group name")
        q.add_argument("--namespace", "-n", required=True, metavar="NS", help="protected namespace")
        if wait:
            q.add_argument("--timeout", type=float, default=60.0, metavar="S",
                           help="seconds to wait (default 60)")
        q.add_argument("--json", action="store_true", help="print JSON only")
        site_options(q, site="backup")
        q.add_argument("--main-context", metavar="C", help="real clusters: the main site's "
                       "context in the same kubeconfig, to check that the namespace is protected")

    c = ssub.add_parser("create", help="take a snapshot group and wait until it is ready")
    common(c, name=True, wait=True)
    c.add_argument("--no-wait", action="store_true", help="return once requested")
    c.add_argument("--class", dest="snapshot_class", metavar="CLASS",
                   help="VolumeGroupSnapshotClass (default: the lab's or the cluster's default)")
    c.set_defaults(func=_create)
    ls = ssub.add_parser("list", help="snapshot groups with consistency point and lag at that moment")
    common(ls, name=False, wait=False)
    ls.set_defaults(func=_list)
    r = ssub.add_parser("restore", help="restore a snapshot group to writable PVCs")
    common(r, name=True, wait=True)
    r.set_defaults(func=_restore)
    d = ssub.add_parser("delete", help="delete a snapshot group and the PVCs restored from it")
    common(d, name=True, wait=True)
    d.set_defaults(func=_delete)

    sc = ssub.add_parser("schedule", help="take snapshot groups on a schedule, the newest kept",
                         description="Record at the backup site that the backup site's operator "
                         "takes a snapshot group of NS every DURATION and keeps the newest N "
                         "(a ConfigMap dr-kit-snapshot-schedule in NS). Without options: show it.")
    sc.add_argument("ns", metavar="NS", help="protected namespace")
    sc.add_argument("--every", metavar="DURATION", help="like 30s, 15m or 6h (units s, m, h)")
    sc.add_argument("--keep", metavar="N", help="how many good snapshot groups to keep")
    sc.add_argument("--class", dest="snapshot_class", metavar="CLASS",
                    help="VolumeGroupSnapshotClass (default: the cluster's default)")
    sc.add_argument("--ready-within", metavar="DURATION",
                    help="a group not ready by then is reported as failed (default 5m)")
    sc.add_argument("--off", action="store_true", help="remove the schedule (groups stay)")
    sc.add_argument("--json", action="store_true", help="print JSON only")
    site_options(sc, site="backup")
    sc.add_argument("--main-context", metavar="C", help="real clusters: the main site's context")
    sc.set_defaults(func=_schedule, namespace=None)

    df = ssub.add_parser("diff", help="what changed between two snapshot groups (orders, "
                         "revenue, units, stock movements)")
    df.add_argument("before", metavar="A", help="the earlier snapshot group")
    df.add_argument("after", metavar="B", help="the later snapshot group")
    common(df, name=False, wait=True)
    df.set_defaults(func=_diff)

    ex = ssub.add_parser("export", help="both databases of a snapshot group as Parquet, CSV or "
                         "SQLite files, with provenance.json")
    common(ex, name=True, wait=True)
    ex.add_argument("--format", required=True, metavar="parquet|csv|sqlite")
    ex.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    ex.add_argument("--allow-inconsistent", action="store_true",
                    help="export an image whose consistency verdict is not consistent")
    ex.set_defaults(func=_export)


def _sites(args: argparse.Namespace):  # noqa: ANN202
    from dr_kit.sites import Site

    backup = site_from_args(args, "backup")
    main = None
    if args.main_context:
        if not (args.kubeconfig or args.context):
            raise InvalidInput("--main-context goes with --kubeconfig/--context; a lab folder "
                               "(--dir) has its main site as context main")
        main = Site.from_kubeconfig(args.kubeconfig, args.main_context, name="main")
    elif not (args.kubeconfig or args.context):
        main = site_from_args(args, "main")
    return backup, main


def _progress(args: argparse.Namespace) -> CliProgress | None:
    return None if args.json else CliProgress()


def _create(args: argparse.Namespace) -> int:
    from dr_kit import snapshots

    backup, main = _sites(args)
    g = snapshots.create_snapshot_group(backup, args.name, args.namespace, wait=not args.no_wait,
                                        timeout=args.timeout, progress=_progress(args),
                                        snapshot_class=args.snapshot_class, main_site=main)
    if args.json:
        print(json.dumps(g.to_dict()))
    elif g.ready:
        seq = g.sequence if g.sequence is not None else "unknown"
        at = g.point_time.isoformat() if g.point_time is not None else "unknown"
        lag = f"{g.lag_seconds:.3f} s" if g.lag_seconds is not None else "unknown"
        print(f"snapshot group {g.name} ready in namespace {g.namespace}: consistency point "
              f"sequence {seq} at {at}, lag at snapshot {lag}, volumes {', '.join(g.pvcs) or '-'}")
    else:
        print(f"snapshot group {g.name} requested in namespace {g.namespace}")
    return 0


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(v, "item"):
        return v.item()
    return v


def _list(args: argparse.Namespace) -> int:
    from dr_kit import snapshots

    backup, _ = _sites(args)
    df = snapshots.list_snapshot_groups(backup, args.namespace)
    sched = snapshots.get_snapshot_schedule(backup, args.namespace)
    rows = [{k: _cell(v) for k, v in r.items()} for r in df.to_dict("records")]
    if args.json:
        print(json.dumps(rows))
        return 0
    if sched is not None:
        print(f"schedule: {sched.describe()} (taken by the backup site's operator)")
    if not rows:
        print(f"no snapshot groups in namespace {args.namespace}")
        return 0
    view = snapshots.snapshot_group_overview(df).to_dict("records")
    width = max(24, *(len(r["name"]) for r in view))
    print(f"{'NAME':<{width}} {'READY':<5} {'CONSISTENT':<10} {'AGE':>5} {'SEQUENCE':>9}  "
          f"{'CONSISTENCY POINT':<27} {'LAG THEN':>9}  RESTORED")
    for r, error in zip(view, (row["error"] for row in rows), strict=True):
        lag = r["lag then (s)"]
        point = r["point (UTC)"]
        print(f"{r['name']:<{width}} {r['ready']:<5} {r['consistent']:<10} {r['age']:>5} "
              f"{r['sequence']:>9}  {point + (' UTC' if point != 'unknown' else ''):<27} "
              f"{lag + (' s' if lag != 'unknown' else ''):>9}  {r['restored']}")
        if error:
            print(f"  error: {error}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from dr_kit import snapshots

    backup, main = _sites(args)
    ns = args.ns
    if args.off and (args.every or args.keep):
        raise InvalidInput("--off removes the schedule; it takes no --every or --keep")
    if args.off:
        gone = snapshots.remove_snapshot_schedule(backup, ns)
        out = {"namespace": ns, "schedule": None, "removed": gone}
        text = (f"snapshot schedule of {ns} removed (its snapshot groups stay)" if gone
                else f"namespace {ns} had no snapshot schedule")
    elif args.every or args.keep:
        if not (args.every and args.keep):
            raise InvalidInput("a schedule needs both --every (like 15m) and --keep (like 8)")
        s = snapshots.set_snapshot_schedule(backup, ns, args.every, args.keep,
                                            snapshot_class=args.snapshot_class,
                                            ready_within=args.ready_within, main_site=main)
        out = {"namespace": ns, "schedule": s.to_data()}
        fmt = "YYYYMMDD-HHMM" if s.every_s % 60 == 0 else "YYYYMMDD-HHMMSS"
        text = (f"snapshot schedule of {ns} at the backup site: {s.describe()}; the backup "
                f"site's operator takes them, named {ns}-{fmt} (UTC)")
    else:
        now = snapshots.get_snapshot_schedule(backup, ns)
        out = {"namespace": ns, "schedule": now.to_data() if now else None}
        text = f"{ns}: {now.describe()}" if now else f"namespace {ns} has no snapshot schedule"
    print(json.dumps(out) if args.json else text)
    return 0


def _diff(args: argparse.Namespace) -> int:
    from dr_kit import export, snapshots

    backup, _ = _sites(args)
    ns, prog = args.namespace, _progress(args)
    with _warnings_as_lines(), \
            snapshots.opened_snapshot(backup, args.before, ns, progress=prog,
                                      timeout=args.timeout) as a, \
            snapshots.opened_snapshot(backup, args.after, ns, progress=prog,
                                      timeout=args.timeout) as b:
        if prog is not None:
            print(f"comparing {args.before} with {args.after} ...", file=sys.stderr)
        d = export.diff_snapshots(a, b)
    print(json.dumps(d, default=str) if args.json else "\n".join(export.diff_lines(d)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from dr_kit import export, snapshots

    if args.format not in export.FORMATS:  # before anything is restored
        raise InvalidInput(f"--format {args.format!r}: choose parquet, csv or sqlite")
    backup, _ = _sites(args)
    with _warnings_as_lines(), snapshots.opened_snapshot(
            backup, args.name, args.namespace, progress=_progress(args),
            timeout=args.timeout) as dbs:
        t0 = time.monotonic()
        if not args.json:
            print(f"exporting {args.name} as {args.format} to {args.out} ...", file=sys.stderr)
        report = export.export_snapshot(dbs, args.out, args.format,
                                        allow_inconsistent=args.allow_inconsistent)
    print(json.dumps(report.to_dict(), default=str) if args.json else
          f"{report.summary_line()} ({time.monotonic() - t0:.1f} s)")
    return 0


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """A library warning (an inconsistent copy) as one ``warning:`` line on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _restore(args: argparse.Namespace) -> int:
    from dr_kit import snapshots

    backup, _ = _sites(args)
    out = snapshots.restore_snapshot_group(backup, args.name, args.namespace,
                                           timeout=args.timeout, progress=_progress(args))
    if args.json:
        print(json.dumps(out))
    else:
        for src, dst in sorted(out.items()):
            print(f"{src} -> {dst}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dr_kit import snapshots

    backup, _ = _sites(args)
    out = snapshots.delete_snapshot_group(backup, args.name, args.namespace,
                                          timeout=args.timeout, progress=_progress(args))
    if args.json:
        print(json.dumps(out))
    else:
        extra = (f" and restored PVCs {', '.join(out['restored_pvcs_deleted'])}"
                 if out["restored_pvcs_deleted"] else "")
        print(f"deleted snapshot group {out['deleted']}{extra}")
    return 0
