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
# # 4. Sales and stock analytics on the snapshot group
#
# The snapshot group is restored to writable PVCs at the backup site; the two databases
# open there (running their own crash recovery) and the analyses run on them, away from
# the main site. Their URLs come from the Secret `<snapshot group>-databases` that a DBA
# publishes once the restored volumes serve databases (in the lab its storage plug-in
# plays that part, with URLs that open SQLite over the backup array's data path). Every result carries its **provenance**: which snapshot, which
# consistency point, the lag at that moment, and the consistency verdict.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "shop"
snapshot_name = "analytics-1"
low_stock_threshold = 1500
top_n = 10
interactive = False
results_file = "results/04_snapshot_analytics.json"

# %%
from dr_kit import plots, ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context)
result = wt.analyse_snapshot(backup, snapshot_name, namespace, low_stock_threshold=low_stock_threshold,
                             top_n=top_n, progress=ui.progress_printer())
frames, stamp = result["frames"], result["stamp"]
print(stamp)

# %% [markdown]
# ## Revenue

# %%
ui.show(plots.revenue(frames, stamp), frames["by_category"])

# %% [markdown]
# ## Products and stock

# %%
ui.show(plots.top_products(frames["top_products"], stamp), frames["units_vs_stock"].head(top_n),
        frames["low_stock"], frames["days_of_cover"].head(top_n))

# %% [markdown]
# ## Reconciliation of sales against stock movements
# On a consistent copy every unit sold has left the stock.

# %%
ui.show(frames["reconciliation"])

# %%
prov = result["provenance"]
wt.record(results_file, {
    "snapshot": snapshot_name, "stamp": stamp, "provenance": prov.to_dict(),
    "revenue_total_cents": int(frames["by_category"]["revenue_cents"].sum()),
    "orders": int(frames["by_channel"]["orders"].sum()) if "orders" in frames["by_channel"] else None,
    "revenue_by_category": frames["by_category"].to_dict("records"),
})
result["dbs"].close()
