"""Shared fixtures: array processes, link emulators and polling helpers for the storage tests.

Every process or link started through these fixtures is stopped by a finalizer, also when
a test fails, so no array process outlives the test that started it.
"""

from __future__ import annotations

import logging
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


# -- the shared lab and the slow marker ---------------------------------------------------------

# Modules whose tests start processes without one of the fixtures below (kubectl, array
# pairs of their own, papermill kernels, whole labs): all of them are ``slow``.
PROCESS_MODULES = {"test_apiserver", "test_bench", "test_crashtest", "test_drills", "test_lab",
                   "test_lab_controllers", "test_operator_e2e", "test_package",
                   "test_storage_replication", "test_vfs"}
PROCESS_FIXTURES = {"arrays", "shop_lab"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that spawns processes, so ``-m "not slow"`` (``make
    test-fast``) is the quick inner loop."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in PROCESS_MODULES or PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shop_lab(tmp_path_factory: pytest.TempPathFactory):
    """One running lab for the session: the shop protected, its backup consistent, and the
    replication status following the array.  Tests that use it leave it as they found it
    (they delete what they create, restore the link and the rate); tests that break a lab
    on purpose start their own."""
    from dr_kit import lag
    from dr_kit.lab import manager, site
    from dr_kit.operator.cli import protect

    d = tmp_path_factory.mktemp("shared") / "lab"
    manager.up(d, rate=SHARED_RATE)
    try:
        state = protect("shop", lab_dir=d, wait=40)
        assert state["state"] == "Protected", state
        main = site("main", d)

        def ready() -> bool:
            arr = lag.read_lag(main, "shop")
            st = lag.read_lag(main, "shop", source="k8s-status")
            return (any(r.state == "pair" and r.consistent for r in arr)
                    and [r.state for r in st] == ["replicating"])

        wait_for(ready, timeout=60, interval=0.2, what="the shop's group in pair, consistent")
        yield d
    finally:
        manager.down(d, purge=True)


SHARED_RATE = 25.0  # the shop's transactions per second in the shared lab


@pytest.fixture
def storage_log(monkeypatch, caplog):
    """``storage_log(name, level)``: caplog for one storage logger, also when a library's
    logging configuration disabled the loggers that existed when it ran."""

    def capture(name: str, level: str = "INFO"):
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
        return caplog.at_level(level, logger=name)

    capture.records = caplog.records  # type: ignore[attr-defined]
    return capture
