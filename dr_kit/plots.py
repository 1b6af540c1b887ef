"""Figures of the walkthrough.  Every function takes data (DataFrames, result dicts) and
returns a matplotlib Figure; nothing here reads a site or the storage.

Figures are made without pyplot, so a notebook shows each exactly once (when displayed)
and none piles up in a long-running kernel."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure


def lag_timeline(df: pd.DataFrame, *, title: str = "Journal lag under the running workload") -> Figure:
    """Time lag (ms) over time per consistency group; phases (a ``phase`` column) shaded.

    Each line is labelled with its source (:func:`dr_kit.lag.frame_source`): the array's
    exact figure, or an upper bound read from ``lastSyncTime`` with its resolution."""
    from dr_kit.lag import frame_source

    fig = Figure(figsize=(10, 3.8))
    ax = fig.subplots()
    if df.empty:
        ax.text(0.5, 0.5, "no lag samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return fig
    d = df.copy()
    d["t"] = (pd.to_datetime(d["time"]) - pd.to_datetime(d["time"]).min()).dt.total_seconds()
    for group, g in d.groupby("group"):
        src = frame_source(g) if "source" in g else "source unknown"
        ax.plot(g["t"], g["time_lag_s"] * 1000, marker=".", linewidth=1,
                label=f"time lag, {group} ({src})")
    if "phase" in d:
        colors = ["#eef5ff", "#fff1e6", "#eefbee", "#f7eefc"]
        for i, (phase, g) in enumerate(d.groupby("phase", sort=False)):
            ax.axvspan(g["t"].min(), g["t"].max(), color=colors[i % len(colors)], zorder=0)
            ax.text(g["t"].min(), 1.0, f" {phase}", transform=ax.get_xaxis_transform(), va="top", fontsize=9)
    unknown = d[d["time_lag_s"].isna()]
    if not unknown.empty:
        ax.plot(unknown["t"], [0] * len(unknown), "x", color="grey", label="lag unknown")
    upper = "upper_bound" in d and bool(d["upper_bound"].fillna(False).astype(bool).any())
    ax.set_xlabel("seconds")
    ax.set_ylabel("time lag (ms), upper bound" if upper else
                  "time lag (ms) = data a disaster would lose")
    ax.set_title(f"{title}\nsource: {frame_source(d)}" if "source" in d else title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def collapse_chart(result: dict[str, Any]) -> Figure:
    """Crash test outcome: consistent / collapsed / corrupt images per configuration."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    labels = {"consistency_group": "one consistency group", "independent": "independent pairs"}
    configs = [c for c in ("consistency_group", "independent") if c in result]
    ok = [result[c]["trials"] - result[c]["collapsed"] - result[c]["corrupt"] for c in configs]
    col = [result[c]["collapsed"] for c in configs]
    bad = [result[c]["corrupt"] for c in configs]
    x = range(len(configs))
    ax.bar(x, ok, color="#3b8c3b", label="consistent")
    ax.bar(x, col, bottom=ok, color="#d9534f", label="collapsed")
    ax.bar(x, bad, bottom=[a + b for a, b in zip(ok, col, strict=True)], color="#555555", label="corrupt")
    ax.set_xticks(list(x), [labels[c] for c in configs])
    ax.set_ylabel("backup images (random cut points)")
    ax.set_title("Collapse experiment: the backup after a cut")
    ax.legend()
    fig.tight_layout()
    return fig


def revenue(frames: dict[str, pd.DataFrame], stamp: str = "") -> Figure:
    """Revenue by day, category and channel, with the provenance stamp as caption."""
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    day, cat, ch = frames["by_day"], frames["by_category"], frames["by_channel"]
    days = pd.to_datetime(day.iloc[:, 0].astype(str), errors="coerce")
    if len(day) and days.notna().all():  # a date axis: readable for a week or half a year
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        axes[0].bar(days, day["revenue"], width=0.8, color="#4a7ab7")
        locator = AutoDateLocator(maxticks=8)
        axes[0].xaxis.set_major_locator(locator)
        axes[0].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    else:
        axes[0].bar(day.iloc[:, 0].astype(str), day["revenue"], color="#4a7ab7")
        axes[0].tick_params(axis="x", rotation=45)
    axes[0].set_title("revenue by day")
    axes[0].set_ylabel("revenue")
    axes[1].barh(cat.iloc[:, 0].astype(str), cat["revenue"], color="#6aa56a")
    axes[1].set_title("revenue by category")
    axes[2].pie(ch["revenue"], labels=ch.iloc[:, 0].astype(str), autopct="%1.0f%%")
    axes[2].set_title("revenue by channel")
    if stamp:
        fig.text(0.01, 0.01, stamp, fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def top_products(df: pd.DataFrame, stamp: str = "") -> Figure:
    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    label = "name" if "name" in df else df.columns[0]
    value = "revenue" if "revenue" in df else df.columns[-1]
    ax.barh(df[label].astype(str)[::-1], df[value][::-1], color="#b7794a")
    ax.set_title(f"top products by {value}")
    if stamp:
        fig.text(0.01, 0.01, stamp, fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def failover_timeline(result: dict[str, Any]) -> Figure:
    """RPO and RTO of a failover drill as a simple timeline."""
    fig = Figure(figsize=(8, 2.2))
    ax = fig.subplots()
    rpo = result.get("rpo_window_s") or 0.0
    rto = result.get("rto_s") or 0.0
    ax.barh([0], [rpo], left=[-rpo], color="#d9534f", label=f"data lost (RPO) {rpo * 1000:.0f} ms")
    ax.barh([0], [rto], left=[0], color="#4a7ab7", label=f"time to serve again (RTO) {rto:.2f} s")
    ax.axvline(0, color="black")
    ax.text(0, 0.45, " disaster", fontsize=9)
    ax.set_yticks([])
    ax.set_xlabel("seconds relative to the disaster")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
