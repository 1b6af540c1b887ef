"""The walkthrough notebooks, executed unattended with papermill on a fresh lab."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from dr_kit import notebooks
from dr_kit.lab import manager

NB = notebooks.notebook_dir()
COMMON = {"lab_dir", "kubeconfig", "main_context", "backup_context", "namespace", "interactive", "results_file"}


@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_one_parameters_cell_of_literals_and_documented_parameters(name):
    nb = nbformat.read(str(NB / f"{name}.ipynb"), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged parameters"
    for line in tagged[0].source.splitlines():  # literals only: name = literal
        if line.strip() and not line.startswith("#"):
            _, value = line.split("=", 1)
            compile(value.strip(), name, "eval")
            assert not any(tok in value for tok in ("(", "+", "*", "[")), f"derived value in parameters: {line}"
    declared = set(pm.inspect_notebook(str(NB / f"{name}.ipynb")))
    assert {"interactive", "results_file"} <= declared
    if name != "05_dr_drill":
        assert declared >= COMMON
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored without outputs"


@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_percent_twin_matches_the_notebook(name):
    import jupytext

    twin = jupytext.read(str(NB / f"{name}.py"))
    nb = nbformat.read(str(NB / f"{name}.ipynb"), as_version=4)
    assert [c.source for c in twin.cells] == [c.source for c in nb.cells]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("walkthrough")
    lab_dir = root / "lab"
    params = {"lab_dir": str(lab_dir), "phase_seconds": 1.5, "collapse_trials": 3, "around_s": 1.0,
              "rate": 30.0, "busy_rate": 80.0}
    try:
        results = notebooks.run_all(root / "out", params, html=True)
        yield root / "out", results, lab_dir
    finally:
        manager.down(lab_dir, purge=True)


def test_walkthrough_records_what_the_demo_claims(ran):
    out, results, lab_dir = ran
    for name in notebooks.NOTEBOOKS:
        assert (out / f"{name}.ipynb").is_file() and (out / f"{name}.html").stat().st_size > 10_000
    r1 = results["01_protect_namespace"]
    assert r1["protected_pvcs"] == ["sales-db", "stock-db"]
    assert r1["backup_pvcs"] == r1["protected_pvcs"]
    r2 = results["02_journal_lag"]
    assert r2["collapse"]["consistency_group"]["collapsed"] == 0
    assert r2["collapse"]["consistency_group"]["corrupt"] == 0
    assert r2["lag_p99_ms"] is None or r2["lag_p99_ms"] >= 0
    r3 = results["03_snapshot_group"]
    assert r3["ready"] and r3["consistent"] and r3["one_sequence"] is True
    assert len(set(r3["member_sequences"].values())) == 1 and r3["sequence"] in r3["member_sequences"].values()
    r4 = results["04_snapshot_analytics"]
    assert r4["provenance"]["verdict"]["consistent"] is True
    assert r4["provenance"]["sequence"] == r3["sequence"]
    assert r4["revenue_total_cents"] > 0
    r5 = results["05_dr_drill"]
    assert r5["ok"] and r5["rto_s"] > 0


def test_notebook_outputs_never_show_the_token(ran):
    out, _, lab_dir = ran
    import yaml

    cfg = yaml.safe_load((Path(lab_dir) / "kubeconfig").read_text()) if (Path(lab_dir) / "kubeconfig").exists() else None
    tokens = [u["user"]["token"] for u in cfg["users"]] if cfg else []
    for p in out.glob("*.ipynb"):
        text = p.read_text()
        for t in tokens:
            assert t not in text
    assert json.loads((out / "summary.json").read_text())
