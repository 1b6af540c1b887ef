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
# # 6. Many applications, protected at once
#
# "Storage systems can include hundreds of volumes, which can be used in hundreds of
# applications." Nobody should need to know which volume belongs to which application:
# each application's namespace is labelled, and the operator gives every one of them its
# own consistency group. Here we create several applications (namespaces with a few PVCs
# each, through the API, as their manifests would), label them **all at once**, follow
# each one until it is protected, and rank the groups by their lag.
#
# The parameters are small so the notebook runs in a minute; `dr-kit bench --scale 100x10`
# measures the same at a hundred namespaces of ten PVCs.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "apps"
namespaces = 4
pvcs_per_namespace = 3
pvc_size = "16Mi"
storage_class = "lab-array"
timeout_s = 120.0
lag_seconds = 5.0
cleanup = True
interactive = False
results_file = "results/06_many_applications.json"

# %%
from dr_kit import plots, ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect
from dr_kit.lag import sample_lag

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context)
names = wt.application_names(namespace, namespaces)
print(f"{len(names)} applications: {names[0]} ... {names[-1]}, {pvcs_per_namespace} PVCs each")

# %% [markdown]
# ## The applications
# Each namespace gets `pvcs_per_namespace` PVCs; the storage driver binds them at the main
# site. Nothing is replicated yet.

# %%
apps = wt.create_applications(main, namespace, namespaces, pvcs_per_namespace, size=pvc_size,
                              storage_class=storage_class, timeout=timeout_s,
                              progress=ui.progress_printer())
ui.show(wt.applications_table(apps))

# %% [markdown]
# ## Label them all at once
# One label per namespace; the operator works from its watch caches with a fixed pool of
# workers, the storage plug-ins create one consistency group per namespace and the backup
# site's PVCs. The timeline shows when each namespace became `Protected` and when all its
# backup PVCs were bound.

# %%
timeline: dict = {}


def label_all():
    timeline["df"] = wt.protect_applications(main, backup, names, timeout=timeout_s,
                                             progress=ui.progress_printer())
    return plots.protection_timeline(timeline["df"])


ui.action(f"Label {len(names)} namespaces ConsistentCopyToCloud", label_all, interactive=interactive)

# %%
if "df" in timeline:
    ui.show(timeline["df"])

# %% [markdown]
# ## Which groups lag most?
# The lag of every consistency group, read from the array where its driver publishes it
# (exact), sampled for a few seconds: a heat map over time, ranked worst first, and the
# table `dr-kit lag --top N` would print. Unknown readings stay unknown (grey), never 0.

# %%
samples = sample_lag(main, lag_seconds, 0.25)
ranking = wt.lag_ranking(samples)
ui.show(plots.lag_heatmap(samples, ranking), ranking.head(10))

# %% [markdown]
# ## Clean up
# With `cleanup = True` the applications are unprotected and deleted at both sites.

# %%
if cleanup:
    wt.remove_applications(main, backup, names, timeout=timeout_s, progress=ui.progress_printer())

# %%
summary = wt.many_applications_summary(names, pvcs_per_namespace, timeline.get("df"), samples,
                                       ranking, cleaned_up=cleanup)
wt.record(results_file, summary)
print(wt.many_applications_line(summary))
