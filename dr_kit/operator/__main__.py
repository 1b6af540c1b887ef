"""``python -m dr_kit.operator run|manifests``: the operator's commands and nothing else.

The same as ``dr-kit operator run|manifests``, in a lean process: it imports the operator
and the Kubernetes client only, not the analytics, notebooks and data libraries the whole
``dr-kit`` command registers (about 100 MB of memory less), which is what the Deployment
and the lab run.
"""

from __future__ import annotations

import argparse
import sys

from dr_kit.errors import DrKitError
from dr_kit.operator.cli import add_operator_commands


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.operator",
                                 description="the dr-kit namespace operator")
    add_operator_commands(ap.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
