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
# # 1. Protect a namespace with one consistency group
#
# The shop runs in namespace `shop` at the **main site**: a transactional application and
# two databases, *sales* and *stock*, each on its own PVC. Labelling the namespace
# `ConsistentCopyToCloud` lets the namespace operator find every PVC in it and configure
# asynchronous replication with **one consistency group**; the backup site's PVs appear.
#
# By default this runs against the embedded lab (two simulated sites on this machine,
# started when needed). Set `kubeconfig` and the contexts to use real clusters.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "shop"
backend = "csi-addons"
rate = 20.0
timeout_s = 60.0
interactive = False
results_file = "results/01_protect_namespace.json"

# %%
from dr_kit import ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context, rate=rate)
print(f"main site: context {main.context or 'default'}; backup site: context {backup.context or 'default'}")

# %% [markdown]
# ## Before: the two sites side by side (PVs)

# %%
ui.show(wt.sites_table(main, backup, "pvs", namespace))

# %% [markdown]
# The shop's PVCs at the main site, and its transactions flowing:

# %%
ui.show(ui.compact(main.pvcs(namespace), "pvcs"), ui.compact(main.replication(namespace), "replication"))

# %% [markdown]
# ## Label the namespace
# The operator creates the replication resources (one VolumeGroupReplication selecting
# all of the namespace's PVCs); the storage plug-in creates the consistency group and the
# backup site's PVs.

# %%
outcome: dict = {}


def label_namespace():
    outcome.update(wt.protect_and_wait(main, backup, namespace, backend=backend, timeout=timeout_s,
                                       progress=ui.progress_printer()))
    return wt.sites_table(main, backup, "pvs", namespace)


ui.action("Label namespace ConsistentCopyToCloud", label_namespace, interactive=interactive)

# %% [markdown]
# ## After: PVs at both sites, and the replication status

# %%
ui.show(wt.sites_table(main, backup, "pvs", namespace), wt.sites_table(main, backup, "replication", namespace))

# %%
wt.record(results_file, {"protected_pvcs": outcome.get("protected_pvcs"),
                         "backup_pvcs": outcome.get("backup_pvcs"),
                         "seconds_to_protect": outcome.get("seconds_to_protect"),
                         "backend": backend, "namespace": namespace})
