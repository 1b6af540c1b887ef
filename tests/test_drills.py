"""Fault drills end to end (real array processes, SIGKILL, corruption on the wire and on disk)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dr_kit import drills


@pytest.mark.parametrize("name", list(drills.DRILLS))
def test_drill_passes_and_reports_figures(name, tmp_path):
    lines: list[str] = []
    r = drills.run(name, workdir=tmp_path, progress=lines.append)
    assert r["ok"], r["line"]
    assert r["line"].startswith(f"{name}: PASS")
    if name in ("backup-down", "journal-full", "corrupt"):
        assert r["backup_equals_main"] is True
    if name == "journal-full":
        assert r["resync_seen"] and r["guard_snapshot"].startswith("consistent")
    if name == "corrupt":
        assert "checksum" in r["in_transit"] and "not applied" in r["on_disk"]
    if name == "main-crash":
        assert r["orders_lost"] >= 0 and r["orders_at_backup"] <= r["orders_at_main_after_restart"]
        assert r["verdict"].startswith("consistent")
    if name == "failover":
        assert r["rto_s"] > 0 and r["rpo_orders_lost"] >= 0
        assert r["first_order_at_backup"] > r["orders_at_backup"]


def test_drill_cli_unknown_name_is_one_error():
    p = subprocess.run([sys.executable, "-m", "dr_kit.cli", "drill", "nope"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "invalid choice" in p.stderr


@pytest.mark.slow
def test_bench_quick_json_has_the_documented_numbers(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dr_kit.cli", "bench", "--quick", "--json", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    for key in ("async_over_off_p50_max", "sync_over_off_p50_at_20ms", "lag_p99_ms_at_1000",
                "apply_over_write_rate", "snapshot_ratio_1g_over_1m", "peak_rss_mb_1g"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert r["sync_over_off_p50_at_20ms"] > r["commit"]["5ms"]["sync_over_off_p50"] > 1
