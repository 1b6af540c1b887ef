"""Fault drills end to end (real array processes, SIGKILL, corruption on the wire and on disk)."""

from __future__ import annotations

import json
import math
import os
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
    # the split of async/off at its worst delay: journal only / off x async / journal only
    worst = max(r["commit"], key=lambda d: r["commit"][d]["async_over_off_p50"])
    row = r["commit"][worst]
    assert row["journal"]["n"] == row["async"]["n"] == row["off"]["n"] > 0
    assert r["journal_over_off_p50_at_worst"] == row["journal_over_off_p50"]
    assert math.isclose(r["journal_over_off_p50_at_worst"] * r["async_over_journal_p50_at_worst"],
                        r["async_over_off_p50_max"], rel_tol=1e-9)
    # each site on its own CPU by default, wherever this process may use two
    place = r["machine"]["placement"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert place["mode"] == "sites" and place["main_cpu"] != place["backup_cpu"]
    else:
        assert place == {"mode": "shared"}


def test_api_down_drill_recovers_in_place_and_loses_nothing(tmp_path):
    """kill -9 each site's API server under load: the plug-ins, the operator and the shop
    are the same processes afterwards, lab status said what was degraded, and the last
    acknowledged order is in a consistent backup image."""
    from dr_kit.cli import build_parser
    from dr_kit.lab.faults import SURVIVORS

    build_parser()  # the entry point registers the drills that need a whole lab
    assert "api-down" in drills.names()
    lines: list[str] = []
    r = drills.run("api-down", workdir=tmp_path, progress=lines.append)
    assert r["ok"], (r["line"], lines)
    assert r["line"].startswith("api-down: PASS")
    assert sorted(r["survived"]) == sorted(SURVIVORS)
    for o in r["outages"]:
        site = o["site"]
        assert o["restarted"] == [f"{site}-api"], o  # like lab up: only the dead process
        assert o["shop_committed_while_down"] > 0 and o["recovered_s"] is not None
        seen = "\n".join(o["degraded_seen"])
        assert f"the {site} API server: unreachable" in seen, seen
        assert f"{site} controllers: cannot reach the {site} API server" in seen, seen
    assert "operator: the main API server is unreachable" in "\n".join(r["outages"][0]["degraded_seen"])
    assert r["new_namespace"] == "Protected" and r["consistent"] is True
    assert r["orders_at_backup"] == r["orders_acknowledged"] > 0 and r["shop_failed"] == 0
    assert not list(tmp_path.glob("lab/*.json")), "the drill's lab is removed"
