"""The measurement scripts the README quotes run and report what they say they do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.slow
def test_commit_breakdown_splits_each_mode_into_round_trips_and_the_shops_own_time() -> None:
    out = subprocess.run([sys.executable, str(SCRIPTS / "commit_breakdown.py"), "--rounds", "1", "--json"],
                         capture_output=True, text=True, timeout=240, check=True).stdout
    rows = json.loads(out)
    assert list(rows) == ["off", "journal", "async"]
    for mode, r in rows.items():
        assert 0 < r["own_p50_us"] < r["tx_p50_us"], mode
        # each transaction commits both databases: one write of WAL frames and one sync each
        assert r["write_per_tx"] >= 1.9 and r["sync_per_tx"] >= 1.9, (mode, r)
        assert 0 < r["write_p50_us"] < r["tx_p50_us"] and 0 < r["sync_p50_us"] < r["tx_p50_us"], (mode, r)


def test_commit_breakdown_refuses_no_rounds_in_one_line() -> None:
    p = subprocess.run([sys.executable, str(SCRIPTS / "commit_breakdown.py"), "--rounds", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].endswith("--rounds must be at least 1")
    assert "Traceback" not in p.stderr
