# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. A snapshot group at the backup site
#
# A **VolumeGroupSnapshot** at the backup site freezes all replicated volumes of the
# namespace at **one consistency point** (one journal sequence number) while replication
# goes on. Snapshots are copy-on-write: taking one copies no data.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "shop"
snapshot_name = "analytics-1"
rate = 40.0
around_s = 2.0
interactive = False
results_file = "results/03_snapshot_group.json"

# %%
from dr_kit import plots, ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect
from dr_kit.snapshots import list_snapshot_groups, snapshot_group_overview

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context, rate=rate)

# %% [markdown]
# ## Take the snapshot group while the shop keeps writing

# %%
taken: dict = {}


def take(name=snapshot_name):
    taken.clear()
    taken.update(wt.snapshot_while_replicating(main, backup, namespace, name, around_s=around_s,
                                               progress=ui.progress_printer()))
    return plots.lag_timeline(taken["lag_frame"], title="Lag before and after the snapshot group")


ui.action("Take snapshot group", take, interactive=interactive)

# %% [markdown]
# ## One consistency point for all members

# %%
ui.show(snapshot_group_overview(list_snapshot_groups(backup, namespace)))
ui.show(wt.snapshot_table(taken))

# %%
wt.record(results_file, {k: taken.get(k) for k in (
    "name", "ready", "sequence", "position", "point_time", "consistent", "pvcs", "member_sequences",
    "one_sequence", "lag_seconds_at_snapshot", "lag_before", "lag_after", "seconds_to_ready")})
