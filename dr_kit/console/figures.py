"""The console's figures: data in, a matplotlib Figure (or PNG bytes) out; no site is read."""

from __future__ import annotations

import io
import time

import pandas as pd
from matplotlib.figure import Figure

from dr_kit.shop.schema import CURRENCY

PALETTE = ["#2563eb", "#0d9488", "#d97706", "#7c3aed", "#db2777", "#65a30d", "#0891b2",
           "#dc2626"]
MAX_LINES = 8


def png(fig: Figure, dpi: int = 130) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _style(ax) -> None:  # noqa: ANN001
    ax.set_facecolor("white")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#cbd5e1")
    ax.tick_params(colors="#475569", labelsize=8)
    ax.grid(axis="y", color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)


def lag_figure(history: pd.DataFrame, *, window_s: float, now: float | None = None,
               width_in: float = 7.4, height_in: float = 2.5) -> Figure:
    """Time lag per consistency group over the last ``window_s`` seconds (wall clock, UTC).

    ``history`` has the columns of :meth:`dr_kit.console.state.LagHistory.frame`.  The
    figure's subtitle names the source of the figures (the array's exact report, or an
    upper bound from ``lastSyncTime`` with its resolution); unknown readings are gaps,
    never zeros.  At most :data:`MAX_LINES` groups are drawn (the largest lags), the
    others are counted in the legend.
    """
    from matplotlib.dates import DateFormatter

    now = time.time() if now is None else now
    fig = Figure(figsize=(width_in, height_in))
    ax = fig.subplots()
    _style(ax)
    # the axis spans the readings there are (at least half a minute), up to the window
    first = float(history["time"].min()) if not history.empty else now
    span = min(window_s, max(30.0, now - first))
    t0 = pd.Timestamp(now - span, unit="s", tz="UTC")
    t1 = pd.Timestamp(now, unit="s", tz="UTC")
    ax.set_xlim(t0.tz_convert(None), t1.tz_convert(None))
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    if history.empty:
        ax.text(0.5, 0.5, "no consistency groups yet: protect a namespace",
                ha="center", va="center", transform=ax.transAxes, color="#64748b", fontsize=10)
        ax.set_yticks([])
        fig.tight_layout()
        return fig
    d = history.copy()
    d["when"] = pd.to_datetime(d["time"], unit="s", utc=True).dt.tz_convert(None)
    d["lag"] = d["time_lag_s"].astype("Float64").to_numpy(dtype="float64", na_value=float("nan"))
    peak = d["lag"].max()
    scale, unit = (1.0, "s") if pd.notna(peak) and peak >= 2.0 else (1000.0, "ms")
    latest = d.sort_values("time").groupby("group").tail(1).set_index("group")["lag"]
    order = latest.fillna(-1).sort_values(ascending=False).index.tolist()
    shown, rest = order[:MAX_LINES], order[MAX_LINES:]
    unknown_labelled = False
    for i, group in enumerate(sorted(shown)):
        g = d[d["group"] == group].sort_values("time")
        ns = g["namespace"].dropna().iloc[0] if g["namespace"].notna().any() else None
        label = f"{ns} ({group})" if ns and ns != group else str(group)
        ax.plot(g["when"], g["lag"] * scale, color=PALETTE[i % len(PALETTE)], linewidth=1.6,
                marker="o", markersize=2.5, label=label)
        unknown = g[g["lag"].isna()]
        if not unknown.empty:  # marked on the axis as unknown, not drawn as a lag of 0
            ax.plot(unknown["when"], [0] * len(unknown), "x", color="#94a3b8", markersize=4,
                    clip_on=False, label=None if unknown_labelled else "lag unknown")
            unknown_labelled = True
    upper = bool(d["upper_bound"].fillna(False).astype(bool).any())
    ax.set_ylabel(f"time lag ({unit})" + (", upper bound" if upper else ""), fontsize=8.5,
                  color="#334155")
    top = float(d["lag"].max()) * scale if d["lag"].notna().any() else 0.0
    top = max(top * 1.15, 5.0 if unit == "ms" else 2.5)
    ax.set_ylim(-0.03 * top, top)  # a lag of 0 drawn just above the axis, not hidden in it
    sources = "; ".join(dict.fromkeys(str(s) for s in d["source"].dropna()))
    shown_span = f"{span / 60:.0f} min" if span >= 120 else f"{span:.0f} s"
    ax.set_title(f"source: {sources or 'unknown'} · last {shown_span}, UTC",
                 loc="left", fontsize=8.5, color="#475569")
    handles, labels = ax.get_legend_handles_labels()
    if rest:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="none"))
        labels.append(f"+{len(rest)} more groups")
    ax.legend(handles, labels, loc="upper left", fontsize=7.5, frameon=True, framealpha=0.85,
              edgecolor="none", ncol=min(4, max(1, len(labels))))
    fig.tight_layout()
    return fig


def revenue_figure(trend: pd.DataFrame, *, days: int = 90, width_in: float = 7.4,
                   height_in: float = 2.5) -> Figure:
    """Daily revenue of the last ``days`` days of an image, with its 7-day moving average
    (the frame of :func:`dr_kit.analytics.revenue_trend`)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig = Figure(figsize=(width_in, height_in))
    ax = fig.subplots()
    _style(ax)
    if trend.empty:
        ax.text(0.5, 0.5, "no orders in this image", ha="center", va="center",
                transform=ax.transAxes, color="#64748b")
        fig.tight_layout()
        return fig
    d = trend.tail(days)
    day = pd.to_datetime(d["day"].astype(str))
    ax.bar(day, d["revenue"], width=0.85, color="#93c5fd", label="revenue per day")
    ax.plot(day, d["revenue_ma7"], color="#1d4ed8", linewidth=2, label="7-day average")
    locator = AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, show_offset=False))
    ax.set_ylabel(f"revenue per day ({CURRENCY})", fontsize=8.5, color="#334155")
    ax.set_title(f"revenue, last {len(d)} days of the image", loc="left", fontsize=10,
                 fontweight="bold", color="#0f172a")
    ax.legend(loc="upper left", fontsize=7.5, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


__all__ = ["lag_figure", "revenue_figure", "png", "MAX_LINES"]
