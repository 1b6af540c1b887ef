"""Shared fixtures: array processes, link emulators and polling helpers for the storage tests.

Every process or link started through these fixtures is stopped by a finalizer, also when
a test fails, so no array process outlives the test that started it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dr_kit.storage.client import ArrayHandle, start_array
from dr_kit.storage.link import LinkEmulator


def wait_for(pred: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.02,
             what: str = "the condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Arrays:
    """Starts array processes and link emulators; stops all of them at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handles: list[ArrayHandle] = []
        self.links: list[LinkEmulator] = []

    def start(self, name: str, *, repl_port: int = 0) -> ArrayHandle:
        h = start_array(self.root / name, name, repl_port=repl_port)
        self.handles.append(h)
        return h

    def restart(self, h: ArrayHandle, *, same_repl_port: bool = True) -> ArrayHandle:
        """Start an array again on the folder (and replication port) of a stopped one."""
        assert not h.alive(), "stop or kill the array before restarting it"
        port = int(h.replication.rsplit(":", 1)[1]) if same_repl_port else 0
        return self.start(h.name, repl_port=port)

    def link(self, target: str, **kw: Any) -> LinkEmulator:
        link = LinkEmulator(target, **kw).start()
        self.links.append(link)
        return link

    def close(self) -> None:
        for link in self.links:
            link.stop()
        for h in self.handles:  # SIGTERM to all first: they shut down in parallel
            if h.alive():
                h.proc.terminate()
        for h in self.handles:
            try:
                h.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
            finally:
                if h.alive():
                    h.kill()


@pytest.fixture
def arrays(tmp_path: Path):
    a = Arrays(tmp_path)
    try:
        yield a
    finally:
        a.close()
