"""``dr-kit``: the command line.  Each area registers its own subcommands here.

Every user error ends in one line ``error: <what was wrong and what to do>`` and exit
status 2; no traceback is printed for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from dr_kit.errors import DrKitError

Registrar = Callable[[argparse._SubParsersAction], None]


def _crashtest_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crashtest", help="cut replication at random points and judge the backup images",
                       description="Run the shop workload with (a) one consistency group and (b) two "
                       "independent pairs, cut replication at random points, open the backup images "
                       "with SQLite and count collapsed and corrupt ones.")
    p.add_argument("--trials", type=int, default=50, help="cut points per configuration (default 50)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--rate", type=float, default=150.0, help="shop transactions per second (default 150)")
    p.add_argument("--only", choices=("consistency_group", "independent"), help="run one configuration")
    p.add_argument("--workdir", help="keep the arrays in this folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.set_defaults(func=_cmd_crashtest)


def _cmd_crashtest(args: argparse.Namespace) -> int:
    from dr_kit import crashtest

    def progress(cfg: str, i: int, t: crashtest.Trial) -> None:
        if not args.json:
            print(f"  {cfg:<17} trial {i + 1:>3}/{args.trials}  {t.cut:<13} {t.verdict}", flush=True)

    configs = (args.only,) if args.only else ("consistency_group", "independent")
    result = crashtest.run(args.trials, args.seed, rate=args.rate, workdir=args.workdir,
                           configs=configs, progress=progress)
    summary = {k: v for k, v in result.items() if k != "details"}
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))
        for cfg, d in result["details"].items():
            print(f"{cfg}: {d['committed_orders']} orders committed at the main site, at most "
                  f"{d['max_collapsed_orders']} orders without stock movement in one backup image")
    return 0


def _registrars() -> list[Registrar]:
    regs: list[Registrar] = [_crashtest_parser]
    try:
        from dr_kit.operator.cli import add_parser as operator_parser
        regs.append(operator_parser)
    except ImportError:  # pragma: no cover - optional area not installed
        pass
    try:
        from dr_kit.lab.cli import add_parser as lab_parser
        regs.append(lab_parser)
    except ImportError:  # pragma: no cover - optional area not installed
        pass
    from dr_kit.commands import lag, query, snapshot
    regs += [snapshot.add_parser, lag.add_parser, query.add_parser]
    return regs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dr-kit", description="Consistent asynchronous copy of a "
                                 "Kubernetes namespace to a backup site, snapshot groups, analytics.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for reg in _registrars():
        reg(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
