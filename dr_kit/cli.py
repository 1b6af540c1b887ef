"""``dr-kit``: the command line.  Each area registers its own subcommands here.

Every user error ends in one line ``error: <what was wrong and what to do>`` and exit
status 2; no traceback is printed for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dr_kit.errors import DrKitError

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    """Every area's subcommands.  All of them are part of the package: an ImportError here
    is a broken installation and must show, not silently remove commands."""
    from dr_kit.commands import console, lag, measure, notebooks, query, snapshot
    from dr_kit.lab.cli import add_parser as lab_parser
    from dr_kit.operator.cli import add_parser as operator_parser

    return [measure.add_parser, notebooks.add_parser, operator_parser, lab_parser,
            snapshot.add_parser, lag.add_parser, query.add_parser, console.add_parser]


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
