"""The scale benchmark (``dr-kit bench --scale``): its parsing and table, and a small run
of it as the suite's scale smoke (10 namespaces x 5 PVCs on a fresh lab).  The full
100x10 belongs to the benchmark, not to the suite."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from dr_kit import cli
from dr_kit.errors import InvalidInput
from dr_kit.lab import bench_scale

KEYS = ("namespaces", "volumes", "protect_all_s", "copy_all_s", "backup_over_main_allocated",
        "threads_max", "rss_mb_max", "lag_read_s", "shop_lag_p99_ms_steady",
        "shop_lag_p99_ms_during_copy")


def test_parse_scale() -> None:
    assert bench_scale.parse_scale("100x10") == (100, 10)
    assert bench_scale.parse_scale(" 3 X 2 ") == (3, 2)
    for bad, msg in (("100", "NSxPVC"), ("ax3", "NSxPVC"), ("0x5", "namespaces must be"),
                     ("5x101", "at most 100"), ("1001x1", "namespaces must be")):
        with pytest.raises(InvalidInput, match=msg):
            bench_scale.parse_scale(bad)


def test_verdicts_and_table_say_met_missed_and_timeout() -> None:
    r = {"namespaces": 100, "volumes": 1000, "protect_all_s": 48.0, "copy_all_s": None,
         "backup_over_main_allocated": 1.01, "threads_max": 16, "rss_mb_max": 320.0,
         "lag_read_s": 0.2, "shop_lag_p99_ms_steady": 10.0, "shop_lag_p99_ms_during_copy": 60.0,
         "threads_max_main_array": 14, "rss_mb_max_main_array": 40.0, "cpu_s_main_array": 12.5}
    rows = {what: (v, ok) for what, v, _goal, ok in bench_scale.verdicts(r)}
    assert rows["labels -> all protected (s)"] == (48.0, True)
    assert rows["labels -> all initial copies done (s)"] == (None, None)  # timed out
    assert rows["RSS MB, largest lab process"] == (320.0, False)
    assert rows["shop lag p99 during / steady"] == (6.0, False)  # 60 > 5 x 10
    table = bench_scale.render(r)
    assert "MISSED" in table and "timeout" in table and "main-array" in table


@pytest.mark.parametrize("argv, msg", [
    (["bench", "--scale", "0x5"], "namespaces must be"),
    (["bench", "--scale", "nonsense"], "NSxPVC"),
    (["bench", "--scale", "2x1", "--quick"], "do not apply to --scale"),
])
def test_bad_scale_is_one_error_line(argv, msg, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute alone; far longer on a loaded machine
def test_scale_smoke_10x5(tmp_path) -> None:
    """10 namespaces x 5 PVCs labelled at once on a fresh lab, through the command line."""
    p = subprocess.run([sys.executable, "-m", "dr_kit.cli", "bench", "--scale", "10x5", "--json",
                        "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert json.loads((tmp_path / "out" / "scale.json").read_text()) == r
    for key in KEYS:
        assert isinstance(r[key], (int, float)) and not math.isnan(r[key]), (key, r)
    assert r["namespaces"] == 10 and r["volumes"] == 50
    assert all(isinstance(v, (int, float)) for v in r.values()), "every top-level value a number"
    # every namespace protected and copied, long before the 900 s the run allows
    assert 0 < r["copy_all_s"] < 300 and 0 < r["protect_all_s"] < 300
    # thin stays thin: 5 x 10 x ~1 MiB of data, not 50 x 64 MiB, at the backup
    assert r["backup_over_main_allocated"] <= 1.2
    assert r["backup_allocated_mb"] < 50 * 64 / 4
    # bounded threads in every lab process
    assert r["threads_max"] <= 64
    for name in ("main_controllers", "backup_controllers", "operator", "main_array",
                 "backup_array", "link"):
        assert 1 <= r[f"threads_max_{name}"] <= 32, (name, r[f"threads_max_{name}"])
    assert r["lag_read_groups"] == 11  # the shop's group and the ten new ones


def test_a_status_read_that_crossed_a_creation_keeps_the_new_group() -> None:
    """The lab plug-ins' view of an array: a group created while a status read was under
    way must not vanish from the view when that (older) read lands, or it would be created
    again with another pair secret and never replicate."""
    from dr_kit.lab.controllers import ArrayView

    class Slow:
        def __init__(self) -> None:
            self.groups: list[dict] = []
            self.during = None

        def status(self) -> dict:
            seen = list(self.groups)  # the array's answer is taken now ...
            if self.during:
                self.during()  # ... while the plug-in creates a group
            return {"groups": seen, "volumes": []}

    client = Slow()
    view = ArrayView(client, "main")  # type: ignore[arg-type]
    assert view.refresh() and view.group("g") is None
    new = {"name": "g", "side": "main", "state": "copy", "members": {}}

    def create() -> None:
        client.groups.append(new)
        view.put_group(new)

    client.during = create
    assert view.refresh()
    assert view.group("g") == new, "the crossed read made the new group look absent"
    client.during = None
    assert view.refresh() and view.group("g") == new  # a later read shows it: the truth
    client.groups.clear()
    assert view.refresh() and view.group("g") is None  # and a later read is believed


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_stops_the_lab_the_scale_benchmark_started(tmp_path) -> None:
    """``kill`` (SIGTERM) of a running ``bench --scale`` ends it as Ctrl-C does: every lab
    process it started is stopped, and it says it was interrupted."""
    import signal
    import time

    import psutil

    work = tmp_path / "w"
    p = subprocess.Popen([sys.executable, "-m", "dr_kit.cli", "bench", "--scale", "2x1",
                          "--workdir", str(work)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        seen = []
        for line in p.stdout:  # the lab is up once the namespaces are being created
            seen.append(line)
            if line.startswith("creating 2 namespaces"):
                break
        else:
            pytest.fail(f"the benchmark ended before its lab was up: {''.join(seen)[-2000:]}")
        lab_procs = [c for c in psutil.Process(p.pid).children(recursive=True)]
        assert lab_procs, "the lab's processes are children of the benchmark"
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in lab_procs):
        assert time.monotonic() < deadline, [c for c in lab_procs if c.is_running()]
        time.sleep(0.2)
