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
# # 5. DR operations: test, relocate, failover, failback
#
# The paper's second promise is no downtime: the backup site can take over. Four
# operations, each recorded on both clusters (annotation `dr-kit.io/dr-state`, an Event per
# step) and resumable after a kill at any step:
#
# - a **DR test** rehearses on a snapshot group's clones in `shop-drtest` while production
#   replication goes on;
# - a **relocate** moves the shop to the other site and back with zero orders lost and no copy;
# - a **failover** takes over after the main site is killed; the returning old main is fenced;
# - a **failback** resynchronises only the regions changed on either side, then moves home.
#
# The same calls are `dr-kit dr test|relocate|failover|failback|status shop`.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "shop"
rate = 20.0
test_seconds = 3.0
outage_s = 1.5
interactive = False
results_file = "results/05_dr_drill.json"

# %%
from dr_kit import plots, ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context, rate=rate)
cycle = wt.DrCycle(main, backup, namespace, controls=lab)
print(cycle.status_text())

# %% [markdown]
# ## 1. A DR test that never pauses replication
#
# A snapshot group at the secondary site, its volume snapshots imported into `shop-drtest`,
# the shop started there on the clones and verified; the primary's lag is sampled throughout.

# %%
def dr_test():
    result = cycle.test(seconds=test_seconds)
    ui.show(plots.dr_test_lag(result), cycle.figures("test"))


ui.action("Run a DR test", dr_test, interactive=interactive)

# %% [markdown]
# ## 2. Relocate and back: RPO 0, no copy
#
# Quiesce, final sync (lag 0), demote, promote the other side at the very same journal
# position, start there. Both sides are identical at the swap, so the direction reverses
# without copying anything.

# %%
def relocate_and_back():
    cycle.relocate()
    cycle.relocate("relocate back")
    ui.show(cycle.figures("relocate"), cycle.figures("relocate back"))


ui.action("Relocate and back", relocate_and_back, interactive=interactive)

# %% [markdown]
# ## 3. Failover and failback
#
# The link is cut, the main site keeps writing for a moment, then every process of it is
# killed. The backup is promoted and the shop serves there. When the main site returns its
# copy is demoted (fenced) and its shop is not restarted; the failback copies back only the
# regions written on either side since the split, counts the orders the old main had that
# were lost, and moves the shop home. At the failover the loss is only estimated (what
# the backup last heard of the main, and the time since its last applied write); the
# failback counts it in the old main's own image.

# %%
def failover_and_failback():
    cycle.failover(outage_s=outage_s)
    ui.show(cycle.figures("failover"))
    cycle.failback()
    ui.show(cycle.figures("failback"))


ui.action("Fail over, then fail back", failover_and_failback, interactive=interactive)

# %% [markdown]
# ## 4. RPO, RTO, bytes copied, and which site was primary when

# %%
summary = cycle.summary()
ui.show(plots.dr_outcomes(summary), plots.dr_timeline(summary), cycle.table())
print(cycle.status_text())

# %%
wt.record(results_file, summary)
