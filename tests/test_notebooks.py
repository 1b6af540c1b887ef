"""The walkthrough notebooks, executed unattended with papermill on the session's lab: in lab
mode and through its kubeconfig alone (the real-cluster path)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from dr_kit import notebooks
from dr_kit.errors import InvalidInput, NotFound

# the walkthrough runs every notebook twice (lab and real-cluster paths) on the shared lab,
# the DR cycle of notebook 05 included, in its first test's setup: the suite's 300 s per
# test would cut it mid-way on a loaded machine and leave the shared lab's roles swapped
pytestmark = pytest.mark.timeout(1500)

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
    assert declared >= COMMON
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored without outputs"


@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_percent_twin_matches_the_notebook(name):
    import jupytext

    twin = jupytext.read(str(NB / f"{name}.py"))
    nb = nbformat.read(str(NB / f"{name}.ipynb"), as_version=4)
    assert [c.source for c in twin.cells] == [c.source for c in nb.cells]


def test_a_parameter_no_notebook_declares_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="unknown notebook parameter lab_dri") as e:
        notebooks.run_all(out, {"lab_dri": "/x"})
    assert "\n" not in str(e.value) and "lab_dir" in str(e.value)  # says what is known
    assert not out.exists(), "nothing may start for a refused parameter"
    with pytest.raises(InvalidInput, match="phase_seconds"):  # only 02 declares it
        notebooks.run_all(out, {"phase_seconds": 1}, only=["03"])
    assert not out.exists()


# A lab run and a real-cluster run of the whole walkthrough, both on the session's lab: the
# second reaches it through its kubeconfig alone, as a user with a real cluster would.
SMALL = {"phase_seconds": 1.5, "collapse_trials": 3, "around_s": 1.0, "busy_rate": 80.0}


@pytest.fixture(scope="module")
def ran(shop_lab, tmp_path_factory):
    from conftest import SHARED_RATE

    from dr_kit import snapshots
    from dr_kit.lab import site

    root = tmp_path_factory.mktemp("walkthrough")
    try:
        lab_run = notebooks.run_all(root / "lab", {"lab_dir": str(shop_lab), "rate": SHARED_RATE,
                                                   **SMALL}, html=True, progress=print)
        # the collapse experiment and the drill run on arrays of their own, the same in both
        # runs: one trial is enough here
        real_run = notebooks.run_all(root / "real", {"kubeconfig": str(shop_lab / "kubeconfig"),
                                                     "snapshot_name": "analytics-real",
                                                     **SMALL, "collapse_trials": 1},
                                     html=True, progress=print)
        yield root, lab_run, real_run, shop_lab
    finally:
        backup = site("backup", shop_lab)
        for name in ("analytics-1", "analytics-real"):
            try:
                snapshots.delete_snapshot_group(backup, name, "shop")
            except NotFound:
                pass


@pytest.mark.slow
def test_walkthrough_records_what_the_demo_claims(ran):
    root, results, _, _ = ran
    out = root / "lab"
    for name in notebooks.NOTEBOOKS:
        assert (out / f"{name}.ipynb").is_file() and (out / f"{name}.html").stat().st_size > 10_000
    r1 = results["01_protect_namespace"]
    assert r1["protected_pvcs"] == ["sales-db", "stock-db"]
    assert r1["backup_pvcs"] == r1["protected_pvcs"]
    r2 = results["02_journal_lag"]
    assert r2["collapse"]["consistency_group"]["collapsed"] == 0
    assert r2["collapse"]["consistency_group"]["corrupt"] == 0
    assert r2["lag_source"] == "array (exact)" and r2["skipped_phases"] == []
    assert [p["phase"] for p in r2["phases"]] == ["steady", "slow link", "busy shop", "recovered"]
    assert r2["lag_p99_ms"] is not None and r2["lag_p99_ms"] < 2000, r2  # unthrottled link
    phases = {p["phase"]: p for p in r2["phases"]}
    assert phases["slow link"]["time_lag_ms_max"] > phases["steady"]["time_lag_ms_p50"]
    r3 = results["03_snapshot_group"]
    assert r3["ready"] and r3["consistent"] and r3["one_sequence"] is True
    assert len(set(r3["member_sequences"].values())) == 1 and r3["sequence"] in r3["member_sequences"].values()
    assert r3["lag_before"]["source"] == "array (exact)"
    r4 = results["04_snapshot_analytics"]
    assert r4["provenance"]["verdict"]["consistent"] is True
    assert r4["provenance"]["sequence"] == r3["sequence"]
    assert r4["revenue_total_cents"] > 0
    assert "analytics-1-databases" in r4["provenance"]["source"]
    r5 = results["05_dr_drill"]
    assert r5["ok"] and r5["rto_s"] > 0 and r5["skipped"] == []
    assert r5["test"]["consistent"] is True and r5["test"]["replication_suspended"] is False
    assert r5["test"]["resync_after"] is False and r5["test"]["test_transactions"] > 0
    assert r5["relocate"]["rpo_orders"] == 0 == r5["relocate back"]["rpo_orders"]
    assert r5["relocate"]["resync_bytes"] == 0 and r5["relocate"]["primary"] == "backup"
    assert r5["failback"]["resync_bytes"] <= 0.10 * r5["failback"]["volume_bytes"]
    assert r5["failback"]["consistent"] is True and r5["primary_at_end"] == "main"
    assert [r["op"] for r in r5["timeline"] if r["op"] not in ("disaster", "site down")] == [
        "test", "relocate", "relocate back", "failover", "failback"]
    r6 = results["06_many_applications"]  # its small defaults: 4 namespaces x 3 PVCs
    assert r6["namespaces"] == r6["protected"] == r6["backup_bound"] == 4, r6
    assert r6["ranked_namespaces"] == [f"apps-00{i}" for i in range(4)]
    assert r6["lag_source"] == ["array"] and r6["cleaned_up"] is True


@pytest.mark.slow
def test_the_real_cluster_path_runs_every_notebook_and_skips_only_the_lab_controls(ran):
    root, _, results, lab = ran
    assert set(results) == set(notebooks.NOTEBOOKS)
    r1 = results["01_protect_namespace"]
    assert r1["backup_pvcs"] == r1["protected_pvcs"] == ["sales-db", "stock-db"]
    r2 = results["02_journal_lag"]
    # the phases that need the lab's link and workload controls are skipped and say so ...
    assert [p["phase"] for p in r2["skipped_phases"]] == ["slow link", "busy shop", "recovered"]
    assert all("needs the lab's" in p["why"] for p in r2["skipped_phases"])
    # ... and never sampled under their names
    assert [p["phase"] for p in r2["phases"]] == ["steady"]
    html = (root / "real" / "02_journal_lag.html").read_text()
    assert "skipped: phase &#x27;slow link&#x27; needs the lab&#x27;s link control" in html \
        or "skipped: phase 'slow link' needs the lab's link control" in html
    # the better source the lab's plug-in publishes (its arrays) is used, and named
    assert r2["lag_source"] == "array (exact)"
    r3 = results["03_snapshot_group"]
    assert r3["ready"] and r3["consistent"] and r3["one_sequence"] is True
    r4 = results["04_snapshot_analytics"]
    assert r4["snapshot"] == "analytics-real" and r4["revenue_total_cents"] > 0
    assert r4["provenance"]["verdict"]["consistent"] is True
    assert r4["provenance"]["sequence"] == r3["sequence"]
    assert "Secret shop/analytics-real-databases" in r4["provenance"]["source"]
    r5 = results["05_dr_drill"]
    assert r5["ok"] and r5["test"]["consistent"] is True and r5["test"]["test_transactions"] is None
    assert [s["step"] for s in r5["skipped"]] == ["relocate", "relocate back", "failover", "failback"]
    assert all("runs only on the lab" in s["why"] for s in r5["skipped"])
    assert r5["primary_at_end"] == "main"


@pytest.mark.slow
def test_notebook_outputs_never_show_the_token(ran):
    root, _, _, lab_dir = ran
    import yaml

    cfg = yaml.safe_load((Path(lab_dir) / "kubeconfig").read_text())
    tokens = [u["user"]["token"] for u in cfg["users"]]
    assert tokens
    for p in [*root.glob("*/*.ipynb"), *root.glob("*/*.html")]:
        text = p.read_text()
        for t in tokens:
            assert t not in text, p
    assert json.loads((root / "lab" / "summary.json").read_text())


def test_no_cell_shows_a_raw_dict_or_list(ran):
    """Results are recorded quietly: what a person sees is tables, figures and sentences,
    never a dict's or list's repr as a cell's value."""
    root = ran[0]
    raw = []
    for p in sorted(root.glob("*/*.ipynb")):
        for cell in nbformat.read(p, as_version=4).cells:
            for out in cell.get("outputs", []):
                text = "".join((out.get("data") or {}).get("text/plain", ""))
                first = text.lstrip()[:1]
                if out.get("output_type") == "execute_result" and first and first in "{[(":
                    raw.append(f"{p.parent.name}/{p.name}: {text[:60]!r}")
    assert not raw, raw


def test_snapshot_table_shows_values_not_reprs():
    import pandas as pd

    from dr_kit import walkthrough as wt

    t = wt.snapshot_table({"name": "s1", "sequence": 3546, "one_sequence": True,
                           "point_time": pd.Timestamp("2026-11-29 18:35:43.832412004+00:00"),
                           "lag_before": {"samples": 21, "time_lag_ms_p50": 0.0,
                                          "time_lag_ms_p99": 1.25, "source": "array (exact)"}})
    assert t["figure"].tolist() == ["name", "sequence", "point_time", "one_sequence", "lag_before"]
    assert t["value"].tolist() == ["s1", "3,546", "2026-11-29 18:35:43.832 UTC", "True", "0 / 1.25"]
    assert not t["value"].str.contains("{").any()
