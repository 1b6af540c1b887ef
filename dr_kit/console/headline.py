"""The headline analytics of one snapshot group: a few figures an operator reads at a glance.

:func:`headline` runs the analyses of :mod:`dr_kit.analytics` on an opened image
(:func:`dr_kit.snapshots.open_snapshot_databases`) and keeps their provenance stamp;
:func:`headline_html` draws it.  The figures are the image's, never the live shop's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dr_kit.console.render import esc, kpi, money


@dataclass(frozen=True)
class Headline:
    """What the console shows of one snapshot group's databases."""

    snapshot: str
    namespace: str
    stamp: str
    consistent: bool
    verdict: str
    orders: int
    revenue: float
    last_day: str | None
    revenue_7d: float | None
    wow_pct: float | None
    orders_7d: int | None
    abc: dict[str, int]
    reorder: list[str]
    reorder_count: int
    trend: pd.DataFrame = field(repr=False)
    channels: pd.DataFrame = field(repr=False)
    reorder_frame: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    seconds: float = 0.0


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def headline(dbs: Any, snapshot: str, namespace: str) -> Headline:
    """Run the headline analyses on ``dbs`` (an :class:`analytics.ShopDatabases`)."""
    import time
    import warnings

    from dr_kit import analytics

    t0 = time.monotonic()
    with warnings.catch_warnings():  # an inconsistent image is said in the stamp, in red
        warnings.simplefilter("ignore", analytics.InconsistentCopyWarning)
        trend = analytics.revenue_trend(dbs)
        abc = analytics.abc_classes(dbs)
        reorder = analytics.reorder_list(dbs)
        channels = analytics.revenue_by_channel(dbs)
    prov = dbs.provenance
    last = trend.iloc[-1] if len(trend) else None
    ma7 = _num(last["revenue_ma7"]) if last is not None else None
    orders_7d = int(trend.tail(7)["orders"].sum()) if len(trend) else None
    name_col = "name" if "name" in reorder else reorder.columns[0]
    return Headline(
        snapshot=snapshot, namespace=namespace, stamp=prov.stamp(),
        consistent=prov.consistent, verdict=prov.verdict.summary(),
        orders=int(trend["orders"].sum()) if len(trend) else 0,
        revenue=float(trend["revenue"].sum()) if len(trend) else 0.0,
        last_day=str(last["day"]) if last is not None else None,
        revenue_7d=ma7 * 7 if ma7 is not None else None,
        wow_pct=_num(last["wow_pct"]) if last is not None else None,
        orders_7d=orders_7d, abc=dict(abc.attrs.get("classes") or {}),
        reorder=[str(x) for x in reorder[name_col].head(3)] if len(reorder) else [],
        reorder_count=len(reorder), trend=trend, channels=channels, reorder_frame=reorder,
        seconds=time.monotonic() - t0)


def headline_html(h: Headline) -> str:
    """The KPI cards of a headline (the stamp and the figure are drawn beside them)."""
    if h.wow_pct is None:
        wow, trend = "week over week: not enough history", ""
    else:
        arrow = "▲" if h.wow_pct >= 0 else "▼"
        wow = f"{arrow} {h.wow_pct:+.1f}% week over week"
        trend = "up" if h.wow_pct >= 0 else "down"
    abc = " · ".join(f"{k} {h.abc.get(k, 0)}" for k in "ABC")
    top = ", ".join(esc(x) for x in h.reorder)
    reorder_detail = (f"most urgent: {top}" if h.reorder else "stock covers the lead time")
    mix = ""
    if len(h.channels):
        total = float(h.channels["revenue"].sum()) or 1.0
        lead = h.channels.sort_values("revenue", ascending=False).iloc[0]
        mix = f"{esc(lead.iloc[0])} {100 * float(lead['revenue']) / total:.0f}% of revenue"
    cards = [
        kpi("revenue, 7 days to " + (h.last_day or "–"), money(h.revenue_7d), wow, trend),
        kpi("orders, 7 days", f"{h.orders_7d:,}" if h.orders_7d is not None else "–",
            f"{h.orders:,} orders in the image"),
        kpi("revenue in the image", money(h.revenue), f"top channel: {mix}" if mix else ""),
        kpi("ABC classes (products)", esc(abc), "A: the products making 80% of revenue"),
        kpi("to reorder now", f"{h.reorder_count}", reorder_detail,
            "down" if h.reorder_count else ""),
    ]
    return f'<div class="drk-kpis">{"".join(cards)}</div>'


def reorder_html(h: Headline, limit: int = 7) -> str:
    """The products to reorder now, the most urgent first (from the image)."""
    from dr_kit.console.render import table

    df = h.reorder_frame
    rows = []
    for _, r in df.head(limit).iterrows():
        cover = _num(r.get("cover_days"))
        rows.append((esc(r.get("name")), esc(r.get("category")), f"{int(r['on_hand']):,}",
                     "–" if cover is None else f"{cover:.1f} d",
                     f"{int(r['order_units']):,}"))
    more = (f'<div class="drk-muted">and {len(df) - limit} more</div>' if len(df) > limit
            else "")
    return ('<div class="drk-h3" style="margin-top:4px">to reorder now</div>'
            + table(["product", "category", "on hand", "cover", "order"], rows, num=(2, 3, 4),
                    empty="nothing to reorder: stock covers the lead time") + more)


def stamp_html(h: Headline) -> str:
    cls = "drk-stamp" if h.consistent else "drk-stamp bad"
    return f'<div class="{cls}"><b>provenance</b> · {esc(h.stamp)}</div>'


__all__ = ["Headline", "headline", "headline_html", "reorder_html", "stamp_html"]
