# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Journal lag, a slower link, and the collapse experiment
#
# Asynchronous copy never waits for the backup: the price is **lag**, the writes the
# backup has not applied yet (what a disaster now would lose). We watch it under the
# running workload, slow the link down, let it recover, and then show why the
# **consistency group** matters: cut replication at random points with and without one,
# and judge the backup images.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "shop"
rate = 40.0
phase_seconds = 4.0
slow_delay_ms = 40.0
slow_rate_mbit = 2.0
busy_rate = 120.0
collapse_trials = 20
collapse_seed = 1
interactive = False
results_file = "results/02_journal_lag.json"

# %%
from dr_kit import plots, ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context, rate=rate)

# %% [markdown]
# ## Lag over time: steady, slow link, busier shop, recovered
# Every figure names its source: the array's own lag report (exact) when the storage
# driver publishes the array, otherwise the replication status's `lastSyncTime`, which
# only gives an upper bound at its one-second resolution. Slowing the link and driving
# the shop need the lab's controls; on real clusters those phases are skipped, and say so.

# %%
phases = [
    {"name": "steady", "seconds": phase_seconds},
    {"name": "slow link", "seconds": phase_seconds, "delay_ms": slow_delay_ms, "rate_mbit": slow_rate_mbit},
    {"name": "busy shop", "seconds": phase_seconds, "delay_ms": 0, "rate_mbit": 0, "tx_per_s": busy_rate},
    {"name": "recovered", "seconds": phase_seconds, "tx_per_s": rate},
]
lag = wt.lag_phases(main, namespace, phases, controls=lab)
ui.show(plots.lag_timeline(lag), wt.lag_summary(lag))

# %% [markdown]
# Try other link settings (interactive, in the lab only):

# %%
def try_link(delay_ms=slow_delay_ms, rate_mbit=slow_rate_mbit, seconds=phase_seconds):
    df = wt.lag_phases(main, namespace, [{"name": f"{delay_ms} ms / {rate_mbit} Mbit/s", "seconds": seconds,
                                          "delay_ms": delay_ms, "rate_mbit": rate_mbit}], controls=lab)
    return plots.lag_timeline(df, title="Lag with the chosen link")


if interactive and lab is not None:
    ui.controls(try_link, interactive=True, delay_ms=(slow_delay_ms, (0.0, 200.0, 5.0)),
                rate_mbit=(slow_rate_mbit, (0.0, 100.0, 1.0)), seconds=(phase_seconds, (1.0, 20.0, 1.0)))

# %% [markdown]
# ## The collapse experiment
# The same workload replicated (a) with one consistency group and (b) as two independent
# pairs whose journals are transferred on their own cycles. At random points replication
# is cut (transfer stopped, backup array killed, apply stopped, link cut) and the backup
# images are opened with SQLite and judged: an order without its stock movement is a
# **collapsed** image. The experiment runs on a pair of software arrays started on this
# machine for it, not on the sites above (in the lab and with real clusters alike).

# %%
collapse = wt.collapse_experiment(collapse_trials, collapse_seed)
ui.show(plots.collapse_chart(collapse), {k: v for k, v in collapse.items() if k != "details"})

# %%
summary = wt.lag_summary(lag)
steady = summary[summary["phase"] == "steady"].iloc[0]
wt.record(results_file, {
    "lag_p50_ms": steady["time_lag_ms_p50"], "lag_p99_ms": steady["time_lag_ms_p99"],
    "lag_source": steady["source"], "phases": summary.to_dict("records"),
    "skipped_phases": lag.attrs["skipped"], "unknown_readings": int(lag["time_lag_s"].isna().sum()),
    "collapse": {k: v for k, v in collapse.items() if k != "details"},
})
