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
# # 4. Sales and stock analytics on the snapshot group
#
# The snapshot group is restored to writable PVCs at the backup site; the two databases
# open there (running their own crash recovery) and the analyses run on them, away from
# the main site. Their URLs come from the Secret `<snapshot group>-databases` that a DBA
# publishes once the restored volumes serve databases (in the lab its storage plug-in
# plays that part, with URLs that open SQLite over the backup array's data path). Every
# result carries its **provenance**: which snapshot, which consistency point, the lag at
# that moment, and the consistency verdict. The shop holds 180 days of history.

# %% tags=["parameters"]
lab_dir = ".dr-lab"
kubeconfig = None
main_context = "main"
backup_context = "backup"
namespace = "shop"
snapshot_name = "analytics-1"
low_stock_threshold = 1500
top_n = 10
window_days = 28
interactive = False
results_file = "results/04_snapshot_analytics.json"

# %%
from dr_kit import plots, ui
from dr_kit import walkthrough as wt
from dr_kit.lab import connect

main, backup, lab = connect(lab_dir, kubeconfig, main_context, backup_context)
result = wt.analyse_snapshot(backup, snapshot_name, namespace, low_stock_threshold=low_stock_threshold,
                             top_n=top_n, window_days=window_days, progress=ui.progress_printer())
frames, stamp = result["frames"], result["stamp"]
print(stamp)

# %% [markdown]
# ## Revenue: trend, 7-day moving average, week over week
# Whole days only: the day of the snapshot's last order is still running.

# %%
ui.show(plots.revenue_trend(frames["trend"], stamp), wt.trend_table(frames["trend"]))
print(f"today so far ({result['today']['day']}): {result['today']['orders']} orders, "
      f"revenue {result['today']['revenue']:,.2f}")

# %% [markdown]
# ## Category and channel mix over time

# %%
ui.show(plots.mix_over_time(frames["mix_category"], frames["mix_channel"], stamp))

# %% [markdown]
# ## ABC classes: which products make the revenue

# %%
ui.show(plots.abc_pareto(frames["abc"], stamp), wt.abc_table(frames["abc"]))

# %% [markdown]
# ## Days of cover and what to reorder

# %%
ui.show(plots.stock_cover(frames["cover"], stamp, window_days=window_days),
        wt.reorder_table(frames["reorder"], top_n))

# %% [markdown]
# ## Reconciliation of sales against stock movements
# On a consistent copy every unit sold has left the stock, and the stock balances.

# %%
ui.show(wt.reconciliation_table(frames["reconciliation"]))

# %% [markdown]
# ## What changed since this snapshot group
# A second snapshot group taken now, compared with the first (then deleted again).

# %%
change = wt.what_changed(main, backup, namespace, snapshot_name, result["dbs"], progress=ui.progress_printer())
cmp = change["comparison"]
ui.show(plots.what_changed(change["summary"], cmp.by_channel, cmp.by_product, change["stamp"]),
        change["table"])

# %%
prov, s = result["provenance"], change["summary"]
wt.record(results_file, {
    "snapshot": snapshot_name, "stamp": stamp, "provenance": prov.to_dict(),
    "revenue_total_cents": int(frames["by_category"]["revenue_cents"].sum()),
    "orders": int(frames["by_channel"]["orders"].sum()) if "orders" in frames["by_channel"] else None,
    "revenue_by_category": frames["by_category"].to_dict("records"),
    "trend_days": len(frames["trend"]), "abc_classes": frames["abc"].attrs["classes"],
    "reorder_products": len(frames["reorder"]),
    "reconciliation_holds": bool(wt.reconciliation_table(frames["reconciliation"])["holds"].all()),
    "diff": {k: s[k] for k in ("new_orders", "revenue_delta", "units_delta", "stock_movements")},
})
result["dbs"].close()
