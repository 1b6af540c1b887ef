"""A reader that leaves early (``dr-kit ... | head``) is not an error: no traceback, no
"Broken pipe", the command's own exit status (see dr_kit/cli.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from dr_kit.cli import QuietPipe


class _Gone(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_quiet_pipe_drops_output_once_the_reader_is_gone() -> None:
    ok = io.StringIO()
    q = QuietPipe(ok)
    assert q.write("hello\n") == 6 and ok.getvalue() == "hello\n" and not q.broken
    gone = QuietPipe(_Gone())
    assert gone.write("x" * 100) == 100  # no exception: the reader left
    assert gone.broken
    gone.flush()
    assert gone.write("more") == 4


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``dr-kit ARGV`` with stdout a pipe whose reader has gone, as ``| head -c 0``."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "dr_kit.cli", *argv], stdout=w,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)


def test_a_command_into_a_closed_pipe_ends_quietly() -> None:
    p = _run_into_closed_pipe("operator", "manifests")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr == b"", p.stderr.decode()


def test_query_into_head_ends_quietly(shop_lab) -> None:
    """The case as a user meets it: a query's JSON piped into ``head -c 100`` (far more
    output than head reads or a pipe holds), under ``set -o pipefail``."""
    from dr_kit import snapshots
    from dr_kit.lab import site

    backup = site("backup", shop_lab)
    snapshots.create_snapshot_group(backup, "pipe-check", "shop")
    try:
        cmd = (f"set -o pipefail; {sys.executable} -m dr_kit.cli query --dir {shop_lab} "
               f"--namespace shop --snapshot pipe-check --format json "
               f"'SELECT * FROM orders' | head -c 100")
        p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert len(p.stdout) == 100 and p.stdout.lstrip().startswith(("[", "{"))  # JSON
        assert p.stderr == "", p.stderr
    finally:
        snapshots.delete_snapshot_group(backup, "pipe-check", "shop")
