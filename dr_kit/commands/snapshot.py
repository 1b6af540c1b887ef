"""``dr-kit snapshot create|list|restore|delete``: snapshot groups at the backup site."""

from __future__ import annotations

import argparse
import json
import math
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
    rows = [{k: _cell(v) for k, v in r.items()} for r in df.to_dict("records")]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no snapshot groups in namespace {args.namespace}")
        return 0
    head = f"{'NAME':<24} {'READY':<5} {'SEQUENCE':>9} {'CONSISTENCY POINT':<32} {'LAG S':>8}  RESTORED"
    print(head)
    for r in rows:
        lag = f"{r['lag_seconds']:.3f}" if r["lag_seconds"] is not None else "unknown"
        seq = str(r["sequence"]) if r["sequence"] is not None else "-"
        ready = "yes" if r["ready"] else ("error" if r["error"] else "no")
        print(f"{r['name']:<24} {ready:<5} {seq:>9} {r['point_time'] or '-':<32} {lag:>8}  "
              f"{r['restored'] or '-'}")
        if r["error"]:
            print(f"  error: {r['error']}")
    return 0


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
