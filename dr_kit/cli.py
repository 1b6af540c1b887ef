"""``dr-kit``: the command line.  Each area registers its own subcommands here.

Every user error ends in one line ``error: <what was wrong and what to do>`` and exit
status 2; no traceback is printed for them.

This entry point is the one place that may join the library and the lab: it registers the
lab's commands (``dr-kit lab``), the lab's scale benchmark (``dr-kit bench --scale``) and
the drills that need a whole lab (``dr-kit drill api-down``).

**Pipes.**  A reader that leaves early (``dr-kit query ... | head -c 100``) is not an
error: from then on the command's output is dropped, the command finishes its work (a
``lab up`` piped into ``head`` still starts the whole lab; nothing is left half-done) and
exits with its own status, 0 when it succeeded.  No traceback, no "Broken pipe" message.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from dr_kit.errors import DrKitError

Registrar = Callable[[argparse._SubParsersAction], None]


def _scale_bench(args: argparse.Namespace) -> int:
    from dr_kit.lab import bench_scale

    return bench_scale.cli(args)


def _registrars() -> list[Registrar]:
    """Every area's subcommands.  All of them are part of the package: an ImportError here
    is a broken installation and must show, not silently remove commands."""
    import functools

    from dr_kit import drills
    from dr_kit.commands import console, dr, lag, measure, notebooks, query, snapshot
    from dr_kit.lab import faults
    from dr_kit.lab.cli import add_parser as lab_parser
    from dr_kit.lab.controls import Lab
    from dr_kit.operator.cli import add_parser as operator_parser

    measure.plug_scale_bench(_scale_bench)
    for name, (fn, doc) in faults.LAB_DRILLS.items():
        drills.register_lab_drill(name, fn, doc)
    return [measure.add_parser, notebooks.add_parser, operator_parser, lab_parser,
            snapshot.add_parser, lag.add_parser, query.add_parser, console.add_parser,
            functools.partial(dr.add_parser, lab_controls=Lab)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dr-kit", description="Consistent asynchronous copy of a "
                                 "Kubernetes namespace to a backup site, snapshot groups, analytics.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for reg in _registrars():
        reg(sub)
    return ap


class QuietPipe(io.TextIOBase):
    """A text stream that goes quiet once its reader is gone (EPIPE): later writes are
    dropped, and the file descriptor is pointed at /dev/null so that the interpreter's
    final flush has nowhere to fail either."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def _gone(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._gone()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = QuietPipe(sys.stdout), QuietPipe(sys.stderr)
    try:
        return _main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


def _main(argv: list[str] | None) -> int:
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
