"""The crash-consistency demonstration on a small number of trials, and its command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dr_kit import crashtest
from dr_kit.errors import InvalidInput

SEEDS = (11, 12)
_results: dict[int, dict] = {}


def _run(seed: int, tmp_path: Path) -> dict:
    if seed not in _results:
        _results[seed] = crashtest.run(trials=6, seed_value=seed, workdir=tmp_path / f"seed-{seed}")
    return _results[seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_consistency_group_never_collapses(seed, tmp_path):
    r = _run(seed, tmp_path)
    cg, ind = r["consistency_group"], r["independent"]
    assert cg["trials"] == 6 and ind["trials"] == 6
    assert cg["collapsed"] == 0, f"seed {seed}: {r}"
    assert cg["corrupt"] == 0, f"seed {seed}: {r}"
    assert ind["corrupt"] == 0, f"seed {seed}: {r}"
    details = r["details"]
    assert details["consistency_group"]["committed_orders"] > 0
    assert details["independent"]["committed_orders"] > 0
    assert details["consistency_group"]["max_collapsed_orders"] == 0
    assert len(details["consistency_group"]["cuts"]) == 6
    assert set(details["consistency_group"]["cuts"]) <= set(crashtest.CUTS)


def test_independent_pairs_show_collapse(tmp_path):
    """Over both seeds the independent pairs must actually drift: the paper's argument."""
    for seed in SEEDS:
        _run(seed, tmp_path)
    collapsed = sum(_results[s]["independent"]["collapsed"] for s in SEEDS)
    observed = {s: _results[s]["independent"] for s in SEEDS}
    assert collapsed > 0, f"no collapsed image in {2 * 6} independent trials: {observed}"


def test_run_refuses_bad_parameters():
    with pytest.raises(InvalidInput, match="--trials"):
        crashtest.run(trials=0)
    with pytest.raises(InvalidInput, match="--rate"):
        crashtest.run(trials=1, rate=0)
    with pytest.raises(InvalidInput, match="unknown configuration"):
        crashtest.run(trials=1, configs=("nope",))


def test_cli_trials_zero_is_one_error_line():
    exe = Path(sys.executable).parent / "dr-kit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dr_kit.cli"]
    p = subprocess.run([*cmd, "crashtest", "--trials", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "--trials" in lines[0]
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert p.stdout == ""
