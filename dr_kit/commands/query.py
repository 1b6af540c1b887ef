"""``dr-kit query``: one read-only SELECT on a snapshot group's sales or stock database."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from dr_kit.commands import CliProgress, site_from_args, site_options
from dr_kit.errors import InvalidInput

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", help="run a read-only SELECT on a snapshot group's databases",
                       description="Run one SELECT on the sales or stock database of a snapshot "
                       "group at the backup site (restored first when needed).  The database "
                       "itself keeps the query read-only (one statement, in a read-only "
                       "transaction that is rolled back); parameters are bound (write :name in "
                       "the SQL, pass --param name=value), never interpolated.")
    p.add_argument("sql", metavar="SQL", help='one SELECT statement, e.g. "SELECT COUNT(*) FROM orders"')
    p.add_argument("--namespace", "-n", required=True, metavar="NS", help="protected namespace")
    p.add_argument("--snapshot", required=True, metavar="NAME", help="snapshot group")
    p.add_argument("--db", choices=("sales", "stock"), default="sales", help="database (default sales)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="bind :K to V (integers and decimals are bound as numbers; repeatable)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--limit", type=int, metavar="N", help="fetch at most N rows")
    p.add_argument("--secret", metavar="NAME", help="real clusters: Secret with keys stock-url, "
                   "sales-url (and password) in the namespace; or set DR_KIT_STOCK_URL and "
                   "DR_KIT_SALES_URL")
    site_options(p, site="backup")
    p.set_defaults(func=_run)


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _NAME.match(key):
            raise InvalidInput(f"--param {item!r} must be NAME=VALUE with NAME a SQL identifier")
        if key in out:
            raise InvalidInput(f"--param {key} given twice")
        if _INT.match(value):
            out[key] = int(value)
        elif _FLOAT.match(value):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _cell(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bytes):
        return v.hex()
    return v


def _run(args: argparse.Namespace) -> int:
    from dr_kit import analytics, snapshots

    analytics.check_select(args.sql)  # refused before anything is opened or restored
    params = parse_params(args.param)
    if args.limit is not None and args.limit < 0:
        raise InvalidInput("--limit must be >= 0")
    site = site_from_args(args, "backup")
    progress = CliProgress() if args.format == "table" else None
    dbs = snapshots.open_snapshot_databases(site, args.snapshot, args.namespace,
                                            secret=args.secret, progress=progress)
    try:
        df = dbs.query(args.sql, params, db=args.db, limit=args.limit)
        prov = dbs.provenance
    finally:
        dbs.close()
    if args.format == "json":
        rows = [{k: _cell(v) for k, v in r.items()} for r in df.to_dict("records")]
        print(json.dumps({"provenance": prov.to_dict(), "columns": list(df.columns),
                          "rows": rows}, default=str))
    elif args.format == "csv":
        print(prov.stamp(), file=sys.stderr)
        sys.stdout.write(df.to_csv(index=False))
    else:
        print(f"# {prov.stamp()}")
        print(df.to_string(index=False) if len(df) else f"(no rows; columns: {', '.join(df.columns)})")
    return 0
