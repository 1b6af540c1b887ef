"""Serving the console with Voilà on 127.0.0.1, and stopping it without leftovers.

:class:`ConsoleServer` writes a copy of the console's notebook with its parameters
injected (as papermill does) into a private run folder, starts Voilà on it as a child
process bound to 127.0.0.1, waits until it listens, and on :meth:`~ConsoleServer.stop`
ends Voilà (which shuts its kernels down) and then any kernel process still alive.

Access: by default the console needs an access token (random, or
``$DR_KIT_CONSOLE_TOKEN``).  It reaches Voilà through the environment, never a command
line, and is never printed: the link that carries it is written to ``open.html`` in the
run folder, readable by its owner only (as Jupyter's ``jpserver-*-open.html``).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dr_kit.errors import InvalidInput, NotFound, Unavailable

HOST = "127.0.0.1"
DEFAULT_PORT = 8866
TOKEN_ENV = "DR_KIT_CONSOLE_TOKEN"
PARAMETERS = ("lab_dir", "kubeconfig", "main_context", "backup_context", "refresh_s",
              "window_s")


def notebook_path() -> Path:
    """The console's notebook, inside the package (an installed wheel carries it)."""
    from dr_kit.console import NOTEBOOK

    if not NOTEBOOK.is_file():
        raise NotFound(f"the console's notebook is missing ({NOTEBOOK}): a broken installation")
    return NOTEBOOK


def parameterized(source: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook ``source`` with a cell of ``params`` after its ``parameters`` cell."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidInput(f"unknown console parameters: {', '.join(unknown)}")
    nb = json.loads(source.read_text())
    cells = nb["cells"]
    at = next((i for i, c in enumerate(cells)
               if "parameters" in (c.get("metadata") or {}).get("tags", [])), None)
    if at is None:
        raise NotFound(f"{source} has no cell tagged 'parameters'")
    lines = [f"{k} = {params[k]!r}\n" for k in PARAMETERS if k in params]
    if lines:
        lines[-1] = lines[-1].rstrip("\n")
    cells.insert(at + 1, {"cell_type": "code", "execution_count": None, "id": "injected-params",
                          "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
                          "source": ["# Parameters\n", *lines]})
    return nb


def check_port(port: int) -> int:
    """``port`` when 127.0.0.1 can listen on it; a free one for 0; else InvalidInput."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidInput(f"--port {port!r}: a TCP port is 0..65535 (0 picks a free one)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InvalidInput(f"port {port} on {HOST} is in use; choose another with "
                                   "--port P (--port 0 picks a free one)") from None
            raise InvalidInput(f"cannot listen on {HOST}:{port}: {e.strerror}") from None
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return "no log"
    wanted = [ln for ln in lines if "Error" in ln or "error" in ln or "CRITICAL" in ln]
    return (wanted or lines or ["no output"])[-1][:300]


class ConsoleServer:
    """One Voilà process serving the console's notebook (see the module's docstring)."""

    def __init__(self, params: Mapping[str, Any], *, port: int = DEFAULT_PORT,
                 token: str | None = None, use_token: bool = True, debug: bool = False,
                 python: str = sys.executable) -> None:
        self.params = dict(params)
        self.port = port
        self.use_token = use_token
        self.token = (token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
                      ) if use_token else ""
        self.debug = debug
        self.python = python
        self.run_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._kernels: dict[int, float] = {}  # pid -> create time
        self.started_at: float | None = None
        self.ready_s: float | None = None

    # -- where ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    @property
    def open_file(self) -> Path | None:
        return self.run_dir / "open.html" if self.run_dir and self.use_token else None

    @property
    def log_file(self) -> Path | None:
        return self.run_dir / "voila.log" if self.run_dir else None

    def url_with_token(self) -> str:
        """The URL with its token (for a browser the caller drives; never print it)."""
        return f"{self.url}?token={self.token}" if self.token else self.url

    # -- start / stop --------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> str:
        """Start Voilà and wait until it listens; returns the URL (without the token)."""
        self.port = check_port(self.port)
        self.started_at = time.monotonic()
        self.run_dir = Path(tempfile.mkdtemp(prefix="dr-kit-console-"))
        os.chmod(self.run_dir, 0o700)
        nb = self.run_dir / "console.ipynb"
        nb.write_text(json.dumps(parameterized(notebook_path(), self.params), indent=1))
        if self.use_token:
            self._write_open_file()
        env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, "JUPYTER_TOKEN")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [self.python, "-m", "voila", str(nb), "--no-browser", f"--port={self.port}",
               f"--Voila.ip={HOST}", "--Voila.port_retries=0", "--theme=light",
               "--VoilaConfiguration.file_allowlist=^$",  # serves no file of the folder
               f"--VoilaConfiguration.show_tracebacks={self.debug}"]
        if self.use_token:
            env["JUPYTER_TOKEN"] = self.token  # read by the server; never on a command line
            cmd.append("--Voila.auto_token=True")
        out = None if self.debug else open(self.run_dir / "voila.log", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT if out else None,
                                         cwd=self.run_dir, env=env, start_new_session=True)
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None:
                why = _last_line(self.log_file) if self.log_file else "see above"
                self.stop()
                raise Unavailable(f"Voilà stopped while starting (exit {self.proc.returncode}):"
                                  f" {why}")
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"Voilà did not listen on {HOST}:{self.port} within "
                                  f"{timeout:g} s")
            time.sleep(0.1)
        self.ready_s = time.monotonic() - self.started_at
        return self.url

    def _write_open_file(self) -> None:
        assert self.open_file is not None
        link = self.url_with_token()
        fd = os.open(self.open_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'<!DOCTYPE html><html><head><meta charset="utf-8">'
                    f'<meta http-equiv="refresh" content="0;url={link}">'
                    f'<title>dr_kit DR console</title></head><body>'
                    f'<p>Opening the DR console: <a href="{link}">{self.url}</a></p>'
                    f'</body></html>')

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def track_kernels(self) -> list[int]:
        """Remember Voilà's kernel processes (to end any it leaves behind); their pids."""
        import psutil

        if not self.alive():
            return sorted(self._kernels)
        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return sorted(self._kernels)
        for c in children:
            try:
                if any("ipykernel" in part for part in c.cmdline()):
                    self._kernels[c.pid] = c.create_time()
            except psutil.Error:
                continue
        return sorted(self._kernels)

    def leftover_kernels(self) -> list[int]:
        """Kernels this server started that are still running."""
        import psutil

        left = []
        for pid, created in self._kernels.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                continue
        return sorted(left)

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """End Voilà (it shuts its kernels down), then any kernel left; remove the run folder.

        Returns what was done: Voilà's exit status and the kernels that had to be killed.
        """
        import psutil

        killed: list[int] = []
        code = None
        if self.proc is not None:
            self.track_kernels()
            if self.proc.poll() is None:
                self.proc.terminate()  # Voilà's SIGTERM handler stops and shuts kernels down
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
            for pid in self.leftover_kernels():
                try:
                    psutil.Process(pid).kill()
                    killed.append(pid)
                except psutil.Error:
                    continue
            if killed:
                psutil.wait_procs([p for p in (self._proc_or_none(pid) for pid in killed) if p],
                                  timeout=5)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return {"voila_exit": code, "kernels_killed": killed}

    @staticmethod
    def _proc_or_none(pid: int) -> Any:
        import psutil

        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None


__all__ = ["ConsoleServer", "check_port", "parameterized", "notebook_path", "HOST",
           "DEFAULT_PORT", "TOKEN_ENV"]
