"""Notebook controls: widgets when interactive, the same function once with defaults when not."""

from __future__ import annotations

import subprocess
import sys

import ipywidgets as w
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dr_kit import plots, ui


def _buttons(captured: list) -> list[w.Button]:
    out = []
    for box in captured:
        for child in getattr(box, "children", ()):
            if isinstance(child, w.Button):
                out.append(child)
    return out


def test_action_runs_once_unattended_and_waits_for_a_click_when_interactive(monkeypatch):
    shown: list = []
    monkeypatch.setattr(ui, "show", lambda *objs: shown.extend(objs))
    calls: list[int] = []
    assert ui.action("go", lambda n: calls.append(n) or "done", interactive=False, n=1) is None
    assert calls == [1] and shown == ["done"]

    shown.clear()
    ui.action("go", lambda n: calls.append(n), interactive=True, n=2)
    assert calls == [1], "an interactive action must wait for its button"
    (button,) = _buttons(shown)
    button.click()
    assert calls == [1, 2]


def test_controls_use_defaults_unattended_and_widget_values_when_interactive(monkeypatch):
    shown: list = []
    monkeypatch.setattr(ui, "show", lambda *objs: shown.extend(objs))
    seen: list[dict] = []

    def fn(delay_ms, mode):
        seen.append({"delay_ms": delay_ms, "mode": mode})

    ui.controls(fn, interactive=False, delay_ms=(5.0, (0.0, 100.0, 5.0)), mode=("async", ["async", "sync"]))
    assert seen == [{"delay_ms": 5.0, "mode": "async"}]
    ui.controls(fn, interactive=True, delay_ms=(5.0, (0.0, 100.0, 5.0)), mode=("async", ["async", "sync"]))
    assert len(seen) == 1
    box = shown[-1]
    slider = next(c for c in box.children if isinstance(c, w.FloatSlider))
    dropdown = next(c for c in box.children if isinstance(c, w.Dropdown))
    slider.value, dropdown.value = 40.0, "sync"
    _buttons([box])[0].click()
    assert seen[-1] == {"delay_ms": 40.0, "mode": "sync"}


def test_plots_return_figures_for_empty_and_real_data():
    empty = pd.DataFrame(columns=["time", "group", "time_lag_s"])
    assert isinstance(plots.lag_timeline(empty), Figure)
    df = pd.DataFrame({"time": pd.to_datetime([1, 2, 3], unit="s", utc=True), "group": "g",
                       "time_lag_s": [0.0, 0.01, None], "phase": ["a", "a", "b"]})
    fig = plots.lag_timeline(df)
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel().startswith("time lag")
    chart = plots.collapse_chart({"consistency_group": {"trials": 5, "collapsed": 0, "corrupt": 0},
                                  "independent": {"trials": 5, "collapsed": 3, "corrupt": 0}})
    assert [t.get_text() for t in chart.axes[0].get_xticklabels()] == ["one consistency group", "independent pairs"]


def test_revenue_figures_say_their_currency():
    from dr_kit.shop.schema import CURRENCY

    trend = pd.DataFrame({"day": ["2026-11-01", "2026-11-02"], "revenue": [10.0, 12.0],
                          "revenue_ma7": [10.0, 11.0], "wow_pct": [None, 5.0]})
    assert plots.revenue_trend(trend).axes[0].get_ylabel() == f"revenue per day ({CURRENCY})"
    ch = pd.DataFrame({"channel": ["web", "store"], "revenue_delta": [5.0, 2.0],
                       "orders_delta": [1, 1]})
    prod = pd.DataFrame({"name": ["tea"], "units_delta": [3]})
    summary = {"before": {"snapshot": "a"}, "after": {"snapshot": "b"}, "new_orders": 2,
               "revenue_delta": 7.0, "units_delta": 3}
    fig = plots.what_changed(summary, ch, prod)
    assert fig.axes[0].get_ylabel() == f"revenue gained ({CURRENCY})"
    assert f"revenue +7.00 {CURRENCY}" in fig.texts[0].get_text()


@pytest.mark.slow
def test_notebooks_run_refuses_an_unknown_notebook_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dr_kit.cli", "notebooks", "run", "--out", str(tmp_path),
                        "--only", "99"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error:") and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


def test_a_relative_lab_folder_is_the_callers_not_the_output_folders(tmp_path, monkeypatch):
    from dr_kit import notebooks

    monkeypatch.chdir(tmp_path)
    assert notebooks.prepare_parameters({"lab_dir": ".dr-lab"})["lab_dir"] == str(tmp_path / ".dr-lab")
    assert notebooks.prepare_parameters(None)["lab_dir"] == str(tmp_path / ".dr-lab")
    assert notebooks.prepare_parameters({"lab_dir": "/srv/lab", "rate": 3})["rate"] == 3


def test_compact_keeps_the_story_columns_with_units_and_no_raw_missing_values():
    from dr_kit.errors import InvalidInput

    pvs = pd.DataFrame([
        {"name": "pvc-1f0c" * 5, "claim": "shop/sales-db", "phase": "Bound", "capacity": 64 << 20,
         "storage_class": "lab-array", "reclaim_policy": "Delete", "driver": "d",
         "volume_handle": "h", "replicated_from": None, "created": pd.Timestamp("2026-11-29", tz="UTC")},
        {"name": "pvc-2", "claim": None, "phase": "Released", "capacity": None,
         "storage_class": "lab-array", "reclaim_policy": "Retain", "driver": "d",
         "volume_handle": "h2", "replicated_from": "main", "created": None},
    ])
    out = ui.compact(pvs, "pvs")
    assert list(out.columns) == ["claim", "phase", "capacity (MiB)", "class", "copy of"]
    assert out.to_dict("records") == [
        {"claim": "shop/sales-db", "phase": "Bound", "capacity (MiB)": "64", "class": "lab-array",
         "copy of": "-"},
        {"claim": "-", "phase": "Released", "capacity (MiB)": "-", "class": "lab-array",
         "copy of": "main"},
    ]
    rep = pd.DataFrame([{"namespace": "shop", "kind": "VolumeGroupReplication", "name": "dr-kit-shop",
                         "state": "Primary", "completed": True, "degraded": False, "resyncing": None,
                         "message": "a long message " * 10,
                         "last_sync_time": pd.Timestamp("2026-11-29 18:35:05.123", tz="UTC"),
                         "last_sync_duration_s": 0.1, "last_sync_bytes": 1, "pvcs": "a,b"}])
    row = ui.compact(rep, "replication").to_dict("records")[0]
    assert row == {"kind": "VolumeGroupReplication", "name": "dr-kit-shop", "state": "Primary",
                   "completed": True, "degraded": False, "resyncing": "-", "last sync (UTC)": "18:35:05"}
    assert ui.compact(pvs.iloc[0:0], "pvs").empty
    with pytest.raises(InvalidInput, match="compact views are pvs, pvcs, replication"):
        ui.compact(pvs, "pods")


def test_lag_heatmap_scale_starts_at_zero_and_unknown_stays_grey():
    """Groups always caught up read as 0 on a 0..1 ms scale (not the middle of -0.1..0.1);
    an unknown reading is masked (grey), not drawn as 0."""
    import numpy as np

    t0 = pd.Timestamp("2026-11-29 19:00:00", tz="UTC")
    rows = [{"time": t0 + pd.Timedelta(seconds=0.25 * i), "group": g, "namespace": g,
             "time_lag_s": (None if (g == "b" and i == 2) else 0.0), "source": "array",
             "upper_bound": False, "resolution_s": None}
            for i in range(4) for g in ("a", "b")]
    fig = plots.lag_heatmap(pd.DataFrame(rows))
    heat, bars = fig.axes[0], fig.axes[1]
    img = heat.images[0]
    assert img.get_clim() == (0.0, 1.0)
    data = img.get_array()
    assert isinstance(data, np.ma.MaskedArray) and int(data.mask.sum()) == 1
    assert bars.get_xlim()[0] == 0.0
    busy = [{**r, "time_lag_s": 0.004} if r["group"] == "a" else r for r in rows]
    assert plots.lag_heatmap(pd.DataFrame(busy)).axes[0].images[0].get_clim() == (0.0, 4.0)


def test_lag_summary_rounds_to_the_hundredth_of_a_ms_and_keeps_unknown_apart():
    from dr_kit import walkthrough as wt

    rows = [{"phase": "steady", "time_lag_s": v, "sequence_lag": 1, "source": "array",
             "upper_bound": False, "resolution_s": None} for v in (0.0, 0.0007283691, None)]
    rows += [{"phase": "slow link", "time_lag_s": None, "sequence_lag": None, "source": "array",
              "upper_bound": False, "resolution_s": None}]
    out = wt.lag_summary(pd.DataFrame(rows)).set_index("phase")
    assert out.loc["steady", "time_lag_ms_max"] == 0.73
    assert out.loc["steady", "unknown"] == 1 and out.loc["steady", "samples"] == 3
    assert pd.isna(out.loc["slow link", "time_lag_ms_p50"]) and out.loc["slow link", "unknown"] == 1
