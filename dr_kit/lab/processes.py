"""The lab's background processes: start detached, wait until ready, check, stop.

A process record is the plain dict kept in ``lab.json``::

    {"pid": 1234, "create_time": 1718000000.12, "cmd": ["python", "-m", ...]}

``pid`` alone is not an identity (pids are reused); ``pid`` + ``create_time`` is.  Every
check and every signal goes through :func:`alive`, so the lab never signals a stranger.

    proc = spawn("main-array", cmd, log=..., env=..., ready_file=...)
    info = wait_ready(proc, deadline)        # the ready file's content, or raises
    alive(proc.record)                       # True while that very process runs
    stop([rec_a, rec_b, ...])                # in start order; stopped in reverse
    kill(rec)                                # SIGKILL, for fault drills
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from dr_kit.errors import Unavailable

Record = dict[str, Any]

# Children this interpreter started; polled so they are reaped instead of lingering as zombies.
_CHILDREN: dict[int, subprocess.Popen] = {}

# Variables never handed to a lab process unless the caller adds them on purpose.
_SECRET_ENV = ("DR_KIT_APISERVER_TOKEN", "DR_KIT_ARRAY_TOKEN", "DR_KIT_LINK_TOKEN")


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a lab process gets: ours without secrets, unbuffered, dr_kit importable."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the dr_kit package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Started:
    """A process just spawned by :func:`spawn`, not yet known to be ready."""

    name: str
    popen: subprocess.Popen
    record: Record
    log: Path
    log_offset: int
    ready_file: Path | None = None
    ready_pattern: re.Pattern[str] | None = None
    t0: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid


def spawn(name: str, cmd: Sequence[str], *, log: Path, env: Mapping[str, str],
          ready_file: Path | None = None, ready_pattern: str | None = None,
          cwd: Path | None = None) -> Started:
    """Start ``cmd`` detached (own session, stdin closed, output to ``log``).

    Readiness is a file the process writes (``ready_file``, removed first so a stale one
    is not mistaken for a new one) or, for processes without one, a line of its log
    matching ``ready_pattern``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(log, "ab") as out:
        out.write(f"=== {stamp} starting {name}\n".encode())
        out.flush()
        offset = out.tell()
        popen = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                 start_new_session=True, close_fds=True)
    _CHILDREN[popen.pid] = popen
    try:
        created = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:  # died at once; wait_ready reports why
        created = 0.0
    record = {"pid": popen.pid, "create_time": created, "cmd": list(cmd)}
    return Started(name, popen, record, log, offset, ready_file,
                   re.compile(ready_pattern) if ready_pattern else None)


def last_log_line(log: Path, offset: int = 0) -> str:
    """The last non-empty line written to ``log`` after ``offset`` (or a note that there is none)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else "(nothing in its log)"


def _log_matches(p: Started) -> bool:
    assert p.ready_pattern is not None
    try:
        with open(p.log, "rb") as f:
            f.seek(p.log_offset)
            return bool(p.ready_pattern.search(f.read().decode(errors="replace")))
    except OSError:
        return False


def wait_ready(p: Started, deadline: float, *, interval: float = 0.02) -> str:
    """Wait until ``p`` is ready; return the ready file's text ('' for log-pattern readiness).

    Raises :class:`Unavailable` with the last line of its log when the process exits first,
    or, after stopping it, when ``deadline`` (a ``time.monotonic()`` value) passes.
    """
    while True:
        if p.ready_file is not None and p.ready_file.exists():
            text = p.ready_file.read_text()
            if text.strip():
                return text
        elif p.ready_pattern is not None and _log_matches(p):
            return ""
        code = p.popen.poll()
        if code is not None:
            _CHILDREN.pop(p.pid, None)
            raise Unavailable(f"{p.name} exited with status {code} while starting: "
                              f"{last_log_line(p.log, p.log_offset)} (log: {p.log})")
        if time.monotonic() > deadline:
            stop([p.record], timeout=3.0)
            raise Unavailable(f"{p.name} was not ready in time; last log line: "
                              f"{last_log_line(p.log, p.log_offset)} (log: {p.log})")
        time.sleep(interval)


def _process(record: Record | None) -> psutil.Process | None:
    """The running process ``record`` describes, or None (gone, zombie or a reused pid)."""
    if not record or not record.get("pid"):
        return None
    pid = int(record["pid"])
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # ours and exited: reap it
        _CHILDREN.pop(pid, None)
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(record.get("create_time", 0.0))) > 0.05:
            return None  # the pid now belongs to another process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def alive(record: Record | None) -> bool:
    """True while the very process of ``record`` runs (same pid *and* creation time)."""
    return _process(record) is not None


def _signal(proc: psutil.Process, sig: int) -> None:
    """Signal the process and its process group (it leads its own session, see :func:`spawn`)."""
    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def kill(record: Record, *, timeout: float = 10.0) -> bool:
    """SIGKILL the process of ``record`` (and its process group) and wait until it is gone;
    False when it was not running."""
    proc = _process(record)
    if proc is None:
        return False
    _signal(proc, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive(record):
        if time.monotonic() > deadline:
            raise Unavailable(f"process {record['pid']} survived SIGKILL")
        time.sleep(0.01)
    return True


def stop(records: Sequence[Record], *, timeout: float = 10.0) -> list[Record]:
    """Stop the processes of ``records`` (given in start order).

    SIGTERM goes to each in reverse start order; a process still running after its grace
    time (``record["stop_grace"]`` seconds, else ``timeout``) gets SIGKILL.  Returns the
    records that were running.  Raises :class:`Unavailable` if one survives SIGKILL.
    """
    running = [r for r in records if alive(r)]
    t0 = time.monotonic()
    for rec in reversed(running):
        proc = _process(rec)
        if proc is not None:
            _signal(proc, signal.SIGTERM)
    left = running
    while left:
        now = time.monotonic()
        for rec in left:
            if now - t0 > float(rec.get("stop_grace") or timeout):
                proc = _process(rec)
                if proc is not None:
                    _signal(proc, signal.SIGKILL)
        if now - t0 > max([float(r.get("stop_grace") or timeout) for r in left]) + 5.0:
            raise Unavailable("could not stop process(es) " + ", ".join(str(r["pid"]) for r in left))
        time.sleep(0.02)
        left = [r for r in left if alive(r)]
    return running
