"""Figures of the walkthrough.  Every function takes data (DataFrames, result dicts) and
returns a matplotlib Figure; nothing here reads a site or the storage.

Figures are made without pyplot, so a notebook shows each exactly once (when displayed)
and none piles up in a long-running kernel."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from dr_kit.shop.schema import CURRENCY


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
    axes[0].set_ylabel(f"revenue ({CURRENCY})")
    axes[1].barh(cat.iloc[:, 0].astype(str), cat["revenue"], color="#6aa56a")
    axes[1].set_title("revenue by category")
    axes[1].set_xlabel(f"revenue ({CURRENCY})")
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


# -- snapshot analytics (notebook 04) ------------------------------------------------------

BLUE, LIGHT_BLUE, GREEN, AMBER, RED, GREY = ("#1f4e8c", "#c9d7ea", "#3b8c3b", "#e0a030",
                                             "#c0392b", "#9a9a9a")


def _stamp(fig: Figure, stamp: str, width: int = 160) -> float:
    """The provenance stamp under the figure (wrapped); returns the height it takes, as a
    fraction of the figure, for ``tight_layout(rect=...)``."""
    if not stamp:
        return 0.0
    import textwrap

    lines = textwrap.wrap(stamp, width=int(width * fig.get_figwidth() / 11))
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7.5, color="#555555", va="bottom")
    return min(0.2, (0.16 * len(lines) + 0.1) / fig.get_figheight())


def _date_axis(ax: Any, maxticks: int = 8) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(maxticks=maxticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _thousands(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _p: f"{v / 1000:,.0f}k" if abs(v) >= 1000 else f"{v:,.0f}"))


def revenue_trend(df: pd.DataFrame, stamp: str = "") -> Figure:
    """Revenue per day (bars) with its 7-day moving average (line), and the week-over-week
    change of the 7-day revenue below, on a date axis (``analytics.revenue_trend``)."""
    fig = Figure(figsize=(11, 5.4))
    ax, wow = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    if df.empty:
        ax.text(0.5, 0.5, "no orders", ha="center", va="center", transform=ax.transAxes)
        return fig
    days = pd.to_datetime(df["day"])
    ax.fill_between(days, df["revenue"], step="mid", color=LIGHT_BLUE, linewidth=0,
                    label="revenue per day")
    ax.plot(days, df["revenue_ma7"], color=BLUE, linewidth=2.2, label="7-day moving average")
    ax.set_ylabel(f"revenue per day ({CURRENCY})")
    _thousands(ax)
    ax.set_title(f"Revenue per day and its 7-day moving average, {days.min():%d %b} to "
                 f"{days.max():%d %b %Y} ({len(df)} days)")
    ax.legend(loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    w = df["wow_pct"].astype(float)
    wow.fill_between(days, w, 0, where=w >= 0, color=GREEN, alpha=0.55, interpolate=True)
    wow.fill_between(days, w, 0, where=w < 0, color=RED, alpha=0.55, interpolate=True)
    wow.axhline(0, color="black", linewidth=0.8)
    wow.set_ylabel("week over\nweek (%)")
    wow.grid(axis="y", alpha=0.3)
    _date_axis(wow)
    fig.tight_layout(rect=(0, _stamp(fig, stamp), 1, 1))
    return fig


def mix_over_time(category: pd.DataFrame, channel: pd.DataFrame, stamp: str = "") -> Figure:
    """Share of revenue per category and per channel, by week, as stacked areas that add
    up to 100 % (``analytics.mix_over_time(period="week")``)."""
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, df, by in ((axes[0], category, "category"), (axes[1], channel, "channel")):
        period = df.columns[0]
        wide = df.pivot(index=period, columns=by, values="share_pct").fillna(0.0)
        wide = wide[wide.sum().sort_values(ascending=False).index]  # biggest at the bottom
        x = pd.to_datetime(pd.Series(wide.index))
        colors = [f"C{i}" for i in range(len(wide.columns))]
        ax.stackplot(x, *(wide[c] for c in wide.columns), labels=list(wide.columns),
                     colors=colors, alpha=0.85)
        ax.set_ylim(0, 100)
        ax.set_xlim(x.min(), x.max())
        ax.set_title(f"{by.capitalize()} mix by {period} (% of revenue)")
        _date_axis(ax, 6)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8.5,
                  frameon=False)
    axes[0].set_ylabel("share of the week's revenue (%)")
    fig.tight_layout(rect=(0, _stamp(fig, stamp), 1, 1))
    return fig


def abc_pareto(df: pd.DataFrame, stamp: str = "") -> Figure:
    """Products ranked by revenue: each one's share (bars coloured by ABC class) and the
    running share (line), with the 80 % and 95 % lines (``analytics.abc_classes``; the
    names are in :func:`dr_kit.walkthrough.abc_table`)."""
    fig = Figure(figsize=(11, 4.6))
    ax = fig.subplots()
    colors = {"A": GREEN, "B": AMBER, "C": GREY}
    counts = {c: int((df["abc"] == c).sum()) for c in "ABC"}
    for c in "ABC":
        part = df[df["abc"] == c]
        ax.bar(part["rank"], part["share_pct"], color=colors[c], width=0.85,
               label=f"class {c}: {counts[c]} products, "
                     f"{part['share_pct'].sum():.0f}% of revenue")
    ax.set_xlabel("products ranked by revenue")
    ax.set_ylabel("share of revenue (%)")
    ax.set_ylim(0, max(float(df["share_pct"].max()), 1.0) * 1.1)
    ax.set_xlim(0.3, max(len(df), 1) + 0.7)
    cum = ax.twinx()
    cum.plot(df["rank"], df["cum_pct"], color="black", linewidth=1.5, marker=".",
             label="running share")
    for line in (80, 95):
        cum.axhline(line, color="black", linestyle=":", linewidth=0.8)
        cum.text(len(df) + 0.6, line - 1, f"{line} %", va="top", ha="right", fontsize=8)
    cum.set_ylim(0, 102)
    cum.set_ylabel("running share of revenue (%)")
    ax.set_title(f"ABC classes: {len(df)} products ranked by revenue (A: the first 80 %, "
                 "B: up to 95 %, C: the rest)")
    ax.legend(loc="center right", frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, _stamp(fig, stamp), 1, 1))
    return fig


def stock_cover(df: pd.DataFrame, stamp: str = "", *, n: int = 15, window_days: int = 28,
                lead_days: float = 7.0, safety_days: float = 3.0, cap_days: float = 60.0
                ) -> Figure:
    """Days of cover of the ``n`` products with the least, red where on hand is at or
    below the reorder point (``analytics.stock_cover``)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    d = df.head(n).iloc[::-1]
    fig = Figure(figsize=(10, 0.32 * len(d) + 1.9))
    ax = fig.subplots()
    point = lead_days + safety_days
    finite = d["cover_days"].astype(float).replace(float("inf"), float("nan"))
    cap = min(cap_days, max(point * 2.0, float(finite.max() if finite.notna().any() else 0) * 1.2))
    cover = d["cover_days"].astype(float).clip(upper=cap)
    ax.barh(d["name"].astype(str), cover, color=[RED if r else BLUE for r in d["reorder"]])
    for y, (v, raw) in enumerate(zip(cover, d["cover_days"], strict=True)):
        ax.text(v + cap * 0.01, y, "no sales" if raw == float("inf") else f"{raw:.1f}",
                va="center", fontsize=8)
    ax.axvline(point, color="black", linestyle="--", linewidth=1)
    ax.legend(handles=[
        Patch(color=RED, label="reorder now: on hand at or below the reorder point"),
        Patch(color=BLUE, label="enough on hand"),
        Line2D([], [], color="black", linestyle="--",
               label=f"reorder point: {point:g} days of demand ({lead_days:g} lead + "
                     f"{safety_days:g} safety)")], loc="upper right", fontsize=8, frameon=True)
    capped = " (longer ones cut)" if (d["cover_days"] > cap).any() else ""
    ax.set_xlabel(f"days of cover = on hand / units sold per day over the last {window_days} "
                  f"days{capped}")
    reorder = int(df["reorder"].sum())
    ax.set_title(f"Days of cover: the {len(d)} lowest of {len(df)} products "
                 f"({reorder} to reorder)")
    ax.set_xlim(0, cap * 1.1)
    fig.tight_layout(rect=(0, _stamp(fig, stamp), 1, 1))
    return fig


def what_changed(summary: dict[str, Any], by_channel: pd.DataFrame, by_product: pd.DataFrame,
                 stamp: str = "", *, n: int = 10) -> Figure:
    """Between two snapshot groups: revenue gained per channel and the products whose
    units sold grew most (``analytics.compare_snapshots``)."""
    fig = Figure(figsize=(12, 4.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    ch = by_channel.sort_values("revenue_delta", ascending=False)
    left.bar(ch["channel"].astype(str), ch["revenue_delta"], color=BLUE)
    for x, (v, o) in enumerate(zip(ch["revenue_delta"], ch["orders_delta"], strict=True)):
        left.text(x, v, f"{v:,.0f}\n{o} orders", ha="center", va="bottom", fontsize=8)
    left.set_ylabel(f"revenue gained ({CURRENCY})")
    left.set_title("revenue gained per channel")
    left.margins(y=0.25)
    top = by_product.sort_values("units_delta", ascending=False).head(n).iloc[::-1]
    right.barh(top["name"].astype(str), top["units_delta"], color=GREEN)
    right.set_xlabel("units sold in between")
    right.set_title(f"the {len(top)} products that sold most in between")
    b, a = summary["before"], summary["after"]

    def when(p: dict[str, Any]) -> str:
        t = pd.to_datetime(p.get("point_time"), utc=True, errors="coerce")
        return "?" if pd.isna(t) else f"{t:%H:%M:%S} UTC"

    fig.suptitle(f"What changed from {b['snapshot']} ({when(b)}) to {a['snapshot']} "
                 f"({when(a)}): {summary['new_orders']:,} new orders, revenue "
                 f"{summary['revenue_delta']:+,.2f} {CURRENCY}, units {summary['units_delta']:+,}",
                 fontsize=11)
    fig.tight_layout(rect=(0, _stamp(fig, stamp), 1, 1))
    return fig


# -- 06 many applications -------------------------------------------------------------------


def protection_timeline(df: pd.DataFrame, *, title: str = "") -> Figure:
    """How many namespaces were protected (the operator's status) and had all their backup
    PVCs bound, over the seconds since the labels (``walkthrough.protect_applications``)."""
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    n = len(df)
    title = title or (f"{n} namespaces labelled at once ({int(df['pvcs'].sum()) if n else 0} PVCs): "
                      "namespaces protected over seconds since the labels")
    for col, label, style in (("protected_s", "Protected (operator status)", "-"),
                              ("backup_bound_s", "backup PVCs all bound", "--")):
        t = sorted(float(v) for v in df[col].dropna()) if n else []
        if t:
            ax.step([0.0, *t], [0, *range(1, len(t) + 1)], where="post", linestyle=style,
                    linewidth=2, label=f"{label}: {len(t)}/{n}, last at {t[-1]:.1f} s")
    ax.axhline(n, color="grey", linewidth=0.8, linestyle=":")
    labelled = df.attrs.get("labelled_in_s")
    if labelled is not None:
        ax.axvspan(0, float(labelled), color="#eef5ff", zorder=0, label=f"labels written ({labelled:.2f} s)")
    ax.set_xlabel("seconds since the first label")
    ax.set_ylabel("namespaces")
    ax.set_ylim(0, max(1, n) * 1.35)  # room for the legend above the steps
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def lag_heatmap(samples: pd.DataFrame, ranking: pd.DataFrame | None = None, *, top: int = 40,
                title: str = "Time lag (ms) per consistency group over seconds, worst first") -> Figure:
    """Time lag (ms) of every group over time as a heat map, groups ranked worst first
    (``walkthrough.lag_ranking``; at most ``top`` rows), beside each group's p99.  Unknown
    readings are grey, never drawn as 0."""
    import numpy as np
    from matplotlib import colormaps

    from dr_kit.lag import frame_source

    fig = Figure(figsize=(11, 1.6 + 0.22 * max(3, min(top, samples["group"].nunique()
                                                        if not samples.empty else 3))))
    if samples.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no lag samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return fig
    d = samples.copy()
    t = pd.to_datetime(d["time"])
    d["t"] = (t - t.min()).dt.total_seconds()
    d["read"] = d.groupby("group").cumcount()
    order = list(ranking["group"]) if ranking is not None and not ranking.empty else \
        sorted(d["group"].unique())
    order = order[:top]
    grid = d.pivot_table(index="group", columns="read", values="time_lag_s", aggfunc="max")
    grid = grid.reindex(order) * 1000.0
    when = d.groupby("read")["t"].min()
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    cmap = colormaps["viridis"].with_extremes(bad="#d0d0d0")
    extent = (float(when.min()), float(when.max()) if len(when) > 1 else 1.0, len(order) - 0.5, -0.5)
    # lag is never negative: the scale starts at 0 and spans at least 1 ms, so a group that
    # is always caught up reads as 0 on a real scale, not as the middle of a made-up one
    top_ms = float(values.max()) if values.count() else 0.0
    img = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest", extent=extent,
                    vmin=0.0, vmax=max(1.0, top_ms))
    fig.colorbar(img, ax=bx, label="time lag (ms)", fraction=0.5, pad=0.02)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order, fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_title(f"{title}\nsource: {frame_source(d)}; grey = unknown", fontsize=10)
    p99 = ranking.set_index("group").reindex(order)["p99_ms"] if ranking is not None and \
        not ranking.empty else grid.quantile(0.99, axis=1)
    bx.barh(range(len(order)), p99.astype(float).fillna(0.0), color="#4c72b0")
    for i, v in enumerate(p99):
        if pd.isna(v):
            bx.text(0, i, " unknown", va="center", fontsize=7, color="grey")
    bx.set_xlim(0.0, max(1.0, float(p99.astype(float).max(skipna=True) or 0.0)) * 1.1)
    bx.set_xlabel("p99 (ms)")
    shown = "" if len(order) == d["group"].nunique() else f" ({len(order)} of {d['group'].nunique()})"
    bx.set_title(f"ranking{shown}", fontsize=10)
    fig.tight_layout()
    return fig


# -- DR operations (notebook 05) ----------------------------------------------------------

SITE_COLORS = {"main": "#4a7ab7", "backup": "#d98c3f"}


def _ms(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.1f} ms"


def dr_test_lag(result: dict[str, Any]) -> Figure:
    """The primary's time lag sampled through a DR test, with the test's moments marked:
    production replication is undisturbed while the test application runs on clones."""
    fig = Figure(figsize=(10, 3.4))
    ax = fig.subplots()
    series = [(t, ms) for t, ms in result.get("lag_series") or [] if ms is not None]
    unknown = [t for t, ms in result.get("lag_series") or [] if ms is None]
    if series:
        ts, ms = zip(*series, strict=True)
        ax.plot(ts, ms, ".-", linewidth=1, markersize=3, color="#4a7ab7",
                label=f"time lag ({result.get('lag_source') or 'source unknown'})")
    if unknown:
        ax.plot(unknown, [0] * len(unknown), "x", color="grey", label="lag unknown")
    marks = result.get("marks") or {}
    if "snapshot requested" in marks:
        ax.axvspan(0, marks["snapshot requested"], color="#eef5ff", zorder=0,
                   label="before the test: the steady band")
    if "test application serving" in marks and "test application stopped" in marks:
        ax.axvspan(marks["test application serving"], marks["test application stopped"],
                   color="#eefbee", zorder=0, label="test application committing on the clones")
    for label, t in marks.items():
        ax.axvline(t, color="#888888", linestyle=":", linewidth=1)
        ax.text(t, 1.0, f" {label}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, rotation=0)
    p99, b99 = result.get("lag_p99_ms_during_test"), result.get("lag_p99_ms_before_test")
    ax.set_title("Production replication through the DR test: lag p99 "
                 f"{_ms(b99)} before, {_ms(p99)} during; suspended: {result.get('replication_suspended')}, "
                 f"resync after: {result.get('resync_after')}", fontsize=10)
    ax.set_xlabel("time since the test started (s)")
    ax.set_ylabel("time lag (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def dr_outcomes(summary: dict[str, Any]) -> Figure:
    """RPO (orders lost), RTO (seconds) per operation, and the failback's resync against
    the volumes' size."""
    ops = [k for k in ("test", "relocate", "relocate back", "failover", "failback") if summary.get(k)]
    fig = Figure(figsize=(12, 3.4))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    rto = [summary[k].get("rto_from_disaster_s") or summary[k].get("rto_s", summary[k].get("test_rto_s"))
           for k in ops]
    ax1.bar(ops, [v or 0 for v in rto], color="#4a7ab7")
    for i, v in enumerate(rto):
        extra = "\nfrom the disaster" if summary[ops[i]].get("rto_from_disaster_s") else ""
        ax1.text(i, v or 0, "not measured" if v is None else f"{v:.2f}{extra}", ha="center",
                 va="bottom", fontsize=8)
    ax1.set_ylim(0, max([v or 0 for v in rto] + [1]) * 1.3)
    ax1.set_title("RTO: application down (s)", fontsize=10)
    ax1.set_ylabel("s")
    moves = [k for k in ops if k != "test"]
    rpo = [summary[k].get("rpo_orders_counted", summary[k].get("rpo_orders")) for k in moves]
    ax2.bar(moves, [v or 0 for v in rpo], color="#d9534f")
    for i, k in enumerate(moves):
        v, r = rpo[i], summary[k]
        if v is None:
            tag = "n/a"
        elif "rpo_orders_counted" in r:
            tag = f"{v} counted\n(est. {r.get('rpo_orders')}..{r.get('rpo_orders_max')})"
        else:
            tag = f"{v}{' (est.)' if r.get('rpo_estimated') else ''}"
        ax2.text(i, v or 0, tag, ha="center", va="bottom", fontsize=8)
    ax2.set_ylim(0, max([v or 0 for v in rpo] + [1]) * 1.35)
    ax2.set_title("RPO: orders lost (orders)", fontsize=10)
    if not moves:
        ax2.text(0.5, 0.5, "no relocate or failover on this path", ha="center", va="center",
                 transform=ax2.transAxes)
        ax2.set_xticks([])
    ax2.set_ylabel("orders")
    fb = summary.get("failback") or {}
    vol = fb.get("volume_bytes")
    if vol:
        mib = 1 << 20
        rows = [("volumes", vol), ("failback resync", fb.get("resync_bytes") or 0),
                ("relocate (no copy)", (summary.get("relocate") or {}).get("resync_bytes") or 0)]
        ax3.barh([r[0] for r in rows][::-1], [r[1] / mib for r in rows][::-1],
                 color=["#bbbbbb", "#6aa56a", "#b7794a"][::-1])
        for i, (_, v) in enumerate(rows[::-1]):
            ax3.text(v / mib, i, f" {v / mib:.1f} MiB ({100 * v / vol:.1f}%)", va="center", fontsize=8)
        ax3.set_xlim(0, vol / mib * 1.35)
        ax3.set_xlabel("MiB")
    else:
        ax3.text(0.5, 0.5, "no failback on this path", ha="center", va="center", transform=ax3.transAxes)
        ax3.set_xticks([])
        ax3.set_yticks([])
    ax3.set_title("Bytes copied to reverse replication (MiB)", fontsize=10)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.tight_layout()
    return fig


def dr_timeline(summary: dict[str, Any]) -> Figure:
    """Which site holds the primary copy over the cycle: one lane per site, the
    operations and the outage marked, the application's downtime (RTO) in red."""
    rows = summary.get("timeline") or []
    fig = Figure(figsize=(12, 2.9))
    ax = fig.subplots()
    lanes = {"main": 1, "backup": 0}
    if not rows:
        ax.text(0.5, 0.5, "no operation ran", ha="center", va="center", transform=ax.transAxes)
        return fig
    end = max(r["end_s"] for r in rows) + 1.0
    ops = [r for r in rows if r["op"] not in ("disaster", "site down")]
    primary, t = summary.get("primary_at_start") or rows[0]["from"], 0.0
    for r in sorted(ops, key=lambda r: r["start_s"]):
        if r["primary"] != primary:
            ax.broken_barh([(t, r["end_s"] - t)], (lanes[primary] - 0.3, 0.6),
                           color=SITE_COLORS[primary], alpha=0.85)
            primary, t = r["primary"], r["end_s"]
    ax.broken_barh([(t, end - t)], (lanes[primary] - 0.3, 0.6), color=SITE_COLORS[primary], alpha=0.85)
    labels = 0
    for r in rows:
        if r["op"] == "site down":  # the lost site, until it is back (and fenced)
            ax.broken_barh([(r["start_s"], r["end_s"] - r["start_s"])], (lanes[r["site"]] - 0.3, 0.6),
                           facecolor="white", edgecolor="#555555", hatch="///", zorder=3)
            ax.text((r["start_s"] + r["end_s"]) / 2, lanes[r["site"]], f"{r['site']} site down",
                    ha="center", va="center", fontsize=8, zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
            continue
        color = "#d9534f" if r["op"] == "disaster" else "#555555"
        ax.axvspan(r["start_s"], r["end_s"], color=color, alpha=0.12, zorder=0)
        # staggered: short operations close together would print over each other
        ax.text((r["start_s"] + r["end_s"]) / 2, 1.45 + 0.25 * (labels % 3), r["op"], ha="center",
                fontsize=8, color=color)
        labels += 1
        down = r.get("rto_s")
        if r["op"] == "failover" and r.get("disaster_at_s") is not None:
            down = r["end_s"] - r["disaster_at_s"]  # the shop stopped with its site
        if down and r["op"] != "test":
            ax.plot([r["end_s"] - down, r["end_s"]], [0.5, 0.5], color="#d9534f", linewidth=4,
                    solid_capstyle="butt")
    ax.plot([], [], color="#d9534f", linewidth=4, label="application down (RTO)")
    ax.broken_barh([(0, 0)], (0, 0), facecolor="white", edgecolor="#555555", hatch="///",
                   label="site down")
    for site, c in SITE_COLORS.items():
        ax.plot([], [], color=c, linewidth=8, label=f"{site} site primary")
    ax.set_yticks([0, 1], ["backup", "main"])
    ax.set_ylim(-0.6, 2.1)
    ax.set_xlim(0, end)
    ax.set_xlabel("time since the cycle started (s)")
    ax.set_title("Which site is primary through the DR cycle", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
