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
# # 5. Disaster-recovery drill: fail over to the backup site
#
# The shop runs against the main array; then the main array and the application are
# killed together (SIGKILL, mid-transaction). The backup is promoted, the shop's databases
# open there and run their crash recovery, the business invariants are checked, and the
# shop serves again. The drill reports the data lost (**RPO**) and the time to serve
# again (**RTO**). It runs on its own pair of arrays, not on the lab.

# %% tags=["parameters"]
drill = "failover"
interactive = False
results_file = "results/05_dr_drill.json"

# %%
from dr_kit import drills, plots, ui
from dr_kit import walkthrough as wt

outcome: dict = {}


def run_drill(name=drill):
    outcome.clear()
    outcome.update(drills.run(name, progress=print))
    print(outcome["line"])
    return plots.failover_timeline(outcome) if name == "failover" else None


ui.action("Run the failover drill", run_drill, interactive=interactive)

# %%
wt.record(results_file, {k: v for k, v in outcome.items() if k != "line"})
