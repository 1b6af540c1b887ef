"""The console and JupyterLab, clicked in a real browser.

Playwright drives Debian's ``chromium`` (``/usr/bin/chromium``, never a browser of its
own: ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``), headless, with an empty profile and the
background-networking flags off, so it opens nothing but 127.0.0.1.  Each test starts a
fresh lab (the shop not protected yet), serves the page on 127.0.0.1 with an access token,
and clicks through it as a person would.  Screenshots go to the test's folder
(``tmp_path``); the timings to ``timings.json`` beside them and to the test's output.

Every process started here (the lab, ``dr-kit console``, ``jupyter lab``, their kernels)
is stopped at teardown, also when a test fails.  Skipped with a reason when chromium or
playwright is missing (``scripts/test.sh`` installs chromium when it runs as root).
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1480, "height": 1750}
DR_KIT = [sys.executable, "-m", "dr_kit.cli"]


def _require_browser() -> None:
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}); `apt-get install "
                    "chromium` (scripts/test.sh does it when run as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    """A fresh lab with the shop writing 20 transactions/s and not protected yet."""
    _require_browser()  # no lab for a test that will be skipped
    from dr_kit.lab import manager

    d = tmp_path / "lab"
    try:
        manager.up(d, rate=20)
        yield d
    finally:
        try:
            manager.down(d)
        except Exception as e:  # noqa: BLE001 - teardown must go on
            print(f"lab down: {e}", file=sys.stderr)


class Proc:
    """A child process whose output lines are read in a thread; stopped at teardown with
    every Jupyter kernel it started."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.kernels: dict[int, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.log.append(line.rstrip())
            self.lines.put(line.rstrip())

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.p.poll() is not None and self.lines.empty():
                    break
                continue
            m = re.search(pattern, line)
            if m:
                return m
        pytest.fail(f"no line matching {pattern!r} within {timeout:g} s; output:\n"
                    + "\n".join(self.log[-30:]))

    def wait_port(self, port: int, timeout: float) -> None:
        """Until 127.0.0.1:``port`` accepts a connection; fails with the output when the
        process ends first or the time runs out (a URL line can come before the port
        answers, or the server can stop right after printing it)."""
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                if self.p.poll() is not None:
                    break
                time.sleep(0.2)
        state = f"exited with {self.p.returncode}" if self.p.poll() is not None else "still running"
        pytest.fail(f"nothing answers on 127.0.0.1:{port} ({state}); output:\n" + "\n".join(self.log[-30:]))

    def track_kernels(self) -> list[int]:
        import psutil

        try:
            for c in psutil.Process(self.p.pid).children(recursive=True):
                try:
                    if any("ipykernel" in part for part in c.cmdline()):
                        self.kernels[c.pid] = c.create_time()
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return sorted(self.kernels)

    def alive_kernels(self) -> list[int]:
        import psutil

        alive = []
        for pid, created in self.kernels.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                continue
        return alive

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; then any kernel left behind."""
        import psutil

        self.track_kernels()
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        for pid in self.alive_kernels():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


@pytest.fixture
def browser(tmp_path: Path, procs: list[Proc]) -> Iterator[Any]:
    """A headless chromium with an empty profile (a persistent context on a new folder).

    Closed before the processes it shows stop (``procs``), after a last screenshot."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT)
        ctx.set_default_timeout(30_000)
        try:
            yield ctx
        finally:
            for i, page in enumerate(ctx.pages):  # the last state, for a failure's story
                try:
                    page.screenshot(path=str(tmp_path / f"last-{i}.png"), full_page=True)
                except Exception:  # noqa: BLE001 - teardown must go on
                    pass
            ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(pred: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _secrets_of(lab_dir: Path) -> list[str]:
    """The lab's credentials, which no page may show: the kubeconfig's tokens and every
    token or password in the sites' Secrets (the array's, the databases')."""
    import base64

    import yaml

    from dr_kit.sites import Site

    cfg = yaml.safe_load((lab_dir / "kubeconfig").read_text())
    found = [u["user"]["token"] for u in cfg.get("users", [])
             if (u.get("user") or {}).get("token")]
    for context in ("main", "backup"):
        for secret in Site.from_kubeconfig(lab_dir / "kubeconfig", context).kube.items("Secret"):
            for key, value in (secret.get("data") or {}).items():
                if "token" in key or "password" in key:
                    found.append(base64.b64decode(value).decode())
    assert found
    return [f for f in found if len(f) >= 8]


def _shot(page: Any, path: Path) -> None:
    """A screenshot of the console down to its last card (no empty page below it)."""
    box = page.locator(".drk").first.bounding_box()
    if box and box["y"] + box["height"] <= VIEWPORT["height"]:
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                              "height": box["y"] + box["height"] + 12})
    else:
        page.screenshot(path=str(path), full_page=True)


def _record(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    (tmp_path / "timings.json").write_text(json.dumps(figures, indent=2))
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


# -- (a) the console ---------------------------------------------------------------------------


def test_console_protect_lag_snapshot_by_clicking(lab: Path, procs: list[Proc], browser: Any,
                                                  tmp_path: Path) -> None:
    t_test = time.monotonic()
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "DR_KIT_CONSOLE_TOKEN": token}
    t0 = time.monotonic()
    console = Proc([*DR_KIT, "console", "--dir", str(lab), "--port", "0", "--refresh", "2"],
                   env, tmp_path)
    procs.append(console)
    m = console.wait_line(r"DR console: (http://127\.0\.0\.1:\d+/)", timeout=120)
    url = m.group(1)
    server_ready_s = time.monotonic() - t0
    assert token not in "\n".join(console.log), "the access token was printed"
    # the line after the URL names the 0600 file holding the token (printed just after it)
    if not any("file://" in ln and "open.html" in ln for ln in console.log):
        console.wait_line(r"file://.*open\.html", timeout=30)

    page = browser.pages[0] if browser.pages else browser.new_page()
    denied = page.goto(url)  # without the token: refused (a login page, not the console)
    assert denied is not None and page.locator(".drk").count() == 0
    page.goto(f"{url}?token={token}")
    page.locator(".drk-ns-shop").wait_for(timeout=120_000)
    first_render_s = time.monotonic() - t0
    _shot(page, tmp_path / "console-1-start.png")

    main_site = page.locator(".drk-main-site")
    backup_site = page.locator(".drk-backup-site")
    assert "main site" in main_site.inner_text()
    assert "backup site" in backup_site.inner_text()
    row = page.locator(".drk-ns-shop")
    assert "Unprotected" in row.inner_text()
    assert "shop/sales-db" in main_site.inner_text()
    assert "shop/sales-db" not in backup_site.inner_text()  # no copy before protecting

    # the refresh period, as the page shows it
    counter = page.locator(".drk-updated")
    changes: list[tuple[float, str | None]] = []
    while len(changes) < 5:  # the times four refreshes arrive, after a first one
        v = counter.get_attribute("data-refreshes")
        if not changes or v != changes[-1][1]:
            changes.append((time.monotonic(), v))
        assert time.monotonic() - changes[0][0] < 30, f"the console did not refresh: {changes}"
        time.sleep(0.05)
    refresh_period_s = (changes[-1][0] - changes[1][0]) / 3

    # protect the shop by clicking: its lag appears, the backup PVCs appear
    t1 = time.monotonic()
    page.locator(".drk-action-shop").click()
    lag_cell = page.locator(".drk-lag-shop")
    _wait(lambda: re.fullmatch(r"≤?\s?\d+(\.\d+)? (ms|s)", lag_cell.inner_text().strip()),
          120, "the shop's lag in its row")
    protect_to_lag_s = time.monotonic() - t1
    _wait(lambda: "shop/sales-db" in backup_site.inner_text()
          and "shop/stock-db" in backup_site.inner_text(), 60, "the backup PVCs")
    _wait(lambda: "Protected" in row.inner_text(), 60, "the Protected state")
    lag_table = page.locator(".drk-lag-table")  # drawn after the rows: wait for it too
    _wait(lambda: "shop" in lag_table.inner_text()
          and "array (exact)" in lag_table.inner_text(), 30, "the lag table with its source")
    assert "Unprotect" in page.locator(".drk-action-shop").inner_text()
    time.sleep(4.5)  # two refreshes more: the lag figure has a line
    _shot(page, tmp_path / "console-2-protected.png")

    # take a snapshot group by clicking: it is listed, ready
    t2 = time.monotonic()
    assert page.locator(".drk-snap-ns select").input_value() == "shop"
    page.locator(".drk-snapshot").click()
    snap_list = page.locator(".drk-snap-list")
    m2 = _wait(lambda: re.search(r"(console-\d{8}-\d{6})", snap_list.inner_text()), 90,
               "the new snapshot group in the list")
    name = m2.group(1)
    _wait(lambda: "ready" in snap_list.inner_text(), 60, "the snapshot group ready")
    snapshot_listed_s = time.monotonic() - t2
    assert name in page.locator(".drk-snap-status").inner_text()
    _shot(page, tmp_path / "console-3-snapshot.png")

    # the newest snapshot's headline analytics, stamped with its provenance
    stamp = page.locator(".drk-stamp")
    _wait(lambda: stamp.count() and name in stamp.inner_text(), 180, "the analytics stamp")
    analytics_s = time.monotonic() - t2
    assert "consistent" in stamp.inner_text() and "consistency point" in stamp.inner_text()
    assert page.locator(".drk-kpi").count() >= 4
    time.sleep(1.0)
    _shot(page, tmp_path / "console-4-analytics.png")
    html = page.content()
    for secret in _secrets_of(lab):
        assert secret not in html, "a credential is shown on the page"

    # Ctrl-C: the console stops, and so do its kernels
    kernels = console.track_kernels()
    assert kernels, "no kernel was seen serving the page"
    t3 = time.monotonic()
    console.p.send_signal(signal.SIGINT)
    assert console.p.wait(60) == 0, console.log
    stop_s = time.monotonic() - t3
    assert any("console stopped" in ln for ln in console.log), console.log
    _wait(lambda: not console.alive_kernels(), 10, "the kernels to end")

    # the real-cluster path: the same lab through its kubeconfig, no lab controls
    t4 = time.monotonic()
    real = Proc([*DR_KIT, "console", "--kubeconfig", str(lab / "kubeconfig"), "--main-context",
                 "main", "--backup-context", "backup", "--port", "0"], env, tmp_path)
    procs.append(real)
    url = real.wait_line(r"DR console: (http://127\.0\.0\.1:\d+/)", timeout=120).group(1)
    assert any("context main" in ln and "context backup" in ln for ln in real.log), real.log
    page.goto(f"{url}?token={token}")
    page.locator(".drk-ns-shop").wait_for(timeout=120_000)
    real_render_s = time.monotonic() - t4
    _wait(lambda: "Protected" in page.locator(".drk-ns-shop").inner_text()
          and name in page.locator(".drk-snap-list").inner_text(), 30,
          "the protected shop and its snapshot group through the kubeconfig")
    _shot(page, tmp_path / "console-5-kubeconfig.png")
    real.track_kernels()
    real.p.send_signal(signal.SIGTERM)
    assert real.p.wait(60) == 0, real.log
    _wait(lambda: not real.alive_kernels(), 10, "the kernels to end")
    _record(tmp_path, "console", {
        "kubeconfig_path_first_render_s": round(real_render_s, 1),
        "server_ready_s": round(server_ready_s, 1), "first_render_s": round(first_render_s, 1),
        "refresh_period_s": round(refresh_period_s, 2),
        "protect_click_to_lag_s": round(protect_to_lag_s, 1),
        "snapshot_click_to_listed_s": round(snapshot_listed_s, 1),
        "snapshot_click_to_analytics_s": round(analytics_s, 1), "stop_s": round(stop_s, 1),
        "test_s": round(time.monotonic() - t_test, 1)})


# -- (b) JupyterLab ------------------------------------------------------------------------------


def _notebook_copy(src: Path, dst: Path, params: dict[str, Any]) -> None:
    """``src`` with an injected-parameters cell after its parameters cell (as papermill)."""
    nb = json.loads(src.read_text())
    cells = nb["cells"]
    at = next(i for i, c in enumerate(cells)
              if "parameters" in (c.get("metadata") or {}).get("tags", []))
    source = "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cells.insert(at + 1, {"cell_type": "code", "execution_count": None, "id": "injected",
                          "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
                          "source": source})
    dst.write_text(json.dumps(nb, indent=1))


def test_jupyterlab_notebook_01_label_button(lab: Path, procs: list[Proc], browser: Any,
                                             tmp_path: Path) -> None:
    t_test = time.monotonic()
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _notebook_copy(ROOT / "notebooks" / "01_protect_namespace.ipynb",
                   nbdir / "01_protect_namespace.ipynb",
                   {"lab_dir": str(lab), "interactive": True,
                    "results_file": str(tmp_path / "results" / "01.json")})
    token = secrets.token_urlsafe(16)
    port = _free_port()
    jdir = tmp_path / "jupyter"
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(jdir / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(jdir / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(jdir / "workspaces"),
           "JUPYTER_CONFIG_DIR": str(jdir / "config")}
    # no news or update checks: the page opens nothing but 127.0.0.1
    (jdir / "settings" / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (jdir / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
     ).write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    t0 = time.monotonic()
    jlab = Proc([sys.executable, "-m", "jupyter", "lab", "--no-browser",
                 "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                 "--ServerApp.port_retries=0", f"--ServerApp.root_dir={nbdir}",
                 "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                 *(["--allow-root"] if os.geteuid() == 0 else [])], env, nbdir)
    procs.append(jlab)
    jlab.wait_line(rf"http://127\.0\.0\.1:{port}/", timeout=120)
    jlab.wait_port(port, timeout=60)

    page = browser.pages[0] if browser.pages else browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/lab/tree/01_protect_namespace.ipynb?token={token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    # the kernel is up when the status bar says Idle
    page.get_by_text(re.compile(r"Python 3.*\|\s*Idle")).first.wait_for(timeout=120_000)
    lab_open_s = time.monotonic() - t0
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item:not(.lm-mod-disabled)", has_text="Run All Cells").first.click()
    button = page.locator("button", has_text="Label namespace ConsistentCopyToCloud")
    button.wait_for(timeout=180_000)
    cells_ran_s = time.monotonic() - t0
    # before the click: the backup site has no PV of the shop (the notebook's own tables)
    before = page.locator(".jp-OutputArea-output").filter(has_text="backup site").first
    before.wait_for()
    assert "shop/sales-db" not in page.locator(
        "div:has(> h4:text-is('backup site'))").first.inner_text()
    button.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "jupyterlab-1-before.png"))

    t1 = time.monotonic()
    button.click()
    widget = page.locator(".widget-vbox", has=button)
    backup_col = widget.locator("div:has(> h4:text-is('backup site'))")
    _wait(lambda: backup_col.count() and "shop/sales-db" in backup_col.first.inner_text()
          and "shop/stock-db" in backup_col.first.inner_text(), 150,
          "the backup site's PVs of the shop under the button")
    click_to_pvcs_s = time.monotonic() - t1
    backup_col.first.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "jupyterlab-2-after.png"))
    _record(tmp_path, "jupyterlab", {
        "jupyterlab_open_s": round(lab_open_s, 1), "cells_ran_s": round(cells_ran_s, 1),
        "click_to_backup_pvcs_s": round(click_to_pvcs_s, 1),
        "test_s": round(time.monotonic() - t_test, 1)})
