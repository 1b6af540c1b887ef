"""The console's HTML pieces: pure functions from rows and frames to escaped HTML.

Every value is escaped; nothing here reads a site.  The look (:data:`CSS`) is one style
sheet scoped to the console's root class ``drk``.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from dr_kit.console.state import NamespaceRow
from dr_kit.shop.schema import CURRENCY

MAIN_COLOR = "#2563eb"
BACKUP_COLOR = "#0d9488"

CSS = """
<style>
body, .jp-Notebook, .jp-LabShell, #rendered_cells { background: #eef1f5 !important; }
.jp-Cell, .jp-OutputArea-output { padding: 0 !important; }
.drk { font-family: "Inter", system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
       Arial, sans-serif; color: #1f2937; font-size: 13px; max-width: 1560px;
       margin: 0 auto; }
.drk .widget-html-content { line-height: 1.35; font-size: 13px; }
.drk-header { background: linear-gradient(90deg, #0f172a, #1e293b 60%, #134e4a);
       color: #f8fafc; padding: 14px 20px; border-radius: 12px; }
.drk-header .widget-html-content { color: #f8fafc; }
.drk-title { font-size: 21px; font-weight: 650; letter-spacing: .01em; }
.drk-title small { font-size: 13px; font-weight: 400; color: #94a3b8; margin-left: 10px; }
.drk-sub { font-size: 12px; color: #cbd5e1; margin-top: 3px; }
.drk-live { font-size: 12px; color: #e2e8f0; text-align: right; }
.drk-dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
       background: #22c55e; margin-right: 6px; box-shadow: 0 0 0 3px rgba(34,197,94,.25); }
.drk-dot.stale { background: #f59e0b; box-shadow: 0 0 0 3px rgba(245,158,11,.25); }
.drk-card { background: #ffffff; border: 1px solid #e2e8f0; border-radius: 12px;
       padding: 12px 16px 14px 16px; box-shadow: 0 1px 3px rgba(15,23,42,.06); }
.drk-site-main { border-top: 5px solid #2563eb; }
.drk-site-backup { border-top: 5px solid #0d9488; }
.drk-h2 { font-size: 17px; font-weight: 650; margin: 0 0 2px 0; }
.drk-h2.main { color: #1d4ed8; } .drk-h2.backup { color: #0f766e; }
.drk-h3 { font-size: 12px; font-weight: 650; color: #64748b; text-transform: uppercase;
       letter-spacing: .06em; margin: 12px 0 4px 0; }
.drk-muted { color: #64748b; font-size: 12px; }
.drk-mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
       font-size: 12px; }
.drk-table { border-collapse: collapse; width: 100%; font-size: 13px; }
.drk-table th { text-align: left; color: #64748b; font-weight: 600; font-size: 11px;
       text-transform: uppercase; letter-spacing: .04em; border-bottom: 1px solid #e2e8f0;
       padding: 5px 8px; white-space: nowrap; }
.drk-table td { padding: 5px 8px; border-bottom: 1px solid #f1f5f9; vertical-align: middle; }
.drk-table td.num, .drk-table th.num { text-align: right; font-variant-numeric: tabular-nums;
       white-space: nowrap; }
.drk-scroll { max-height: 260px; overflow: auto; }
.drk-pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px;
       font-weight: 600; white-space: nowrap; }
.drk-pill.ok { background: #dcfce7; color: #166534; }
.drk-pill.warn { background: #fef3c7; color: #92400e; }
.drk-pill.bad { background: #fee2e2; color: #991b1b; }
.drk-pill.idle { background: #f1f5f9; color: #475569; }
.drk-pill.info { background: #dbeafe; color: #1e40af; }
.drk-pill.teal { background: #ccfbf1; color: #115e59; }
.drk-row { border-bottom: 1px solid #f1f5f9; padding: 3px 0; align-items: center; }
.drk-row .widget-html { margin: 0; }
.drk-row-head .widget-html-content { color: #64748b; font-weight: 600; font-size: 11px;
       text-transform: uppercase; letter-spacing: .04em; }
.drk-row-head { border-bottom: 1px solid #e2e8f0; }
.drk button.jupyter-button { border-radius: 7px; font-weight: 600; font-size: 12px; }
.drk-banner { background: #fef2f2; border: 1px solid #fecaca; color: #991b1b;
       border-radius: 10px; padding: 8px 14px; }
.drk-status { font-size: 12px; color: #334155; min-height: 18px; }
.drk-status.bad { color: #b91c1c; }
.drk-kpis { display: flex; gap: 12px; flex-wrap: wrap; margin: 4px 0 8px 0; }
.drk-kpi { flex: 1 1 150px; background: #f8fafc; border: 1px solid #e2e8f0;
       border-radius: 10px; padding: 9px 12px; }
.drk-kpi .v { font-size: 22px; font-weight: 650; color: #0f172a;
       font-variant-numeric: tabular-nums; }
.drk-kpi .l { font-size: 11px; color: #64748b; text-transform: uppercase;
       letter-spacing: .05em; }
.drk-kpi .d { font-size: 12px; color: #475569; margin-top: 2px; }
.drk-kpi .d.up { color: #15803d; } .drk-kpi .d.down { color: #b91c1c; }
.drk-stamp { font-size: 11.5px; color: #475569; background: #f8fafc;
       border-left: 3px solid #0d9488; padding: 6px 10px; border-radius: 4px;
       word-break: break-word; }
.drk-stamp.bad { border-left-color: #dc2626; background: #fef2f2; color: #991b1b; }
.drk-empty { color: #94a3b8; font-style: italic; padding: 8px 0; }
</style>
"""


def esc(v: Any) -> str:
    """``v`` as escaped text; unknown values (None, NaN, NA) as an en dash."""
    if v is None or v is pd.NA or v is pd.NaT:
        return "–"
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return html.escape(str(v))


def pill(text: str, kind: str = "idle", title: str | None = None) -> str:
    t = f' title="{html.escape(title, quote=True)}"' if title else ""
    return f'<span class="drk-pill {kind}"{t}>{html.escape(text)}</span>'


STATE_KIND = {"Protected": "ok", "Protecting": "warn", "Requested": "warn", "Waiting": "warn",
              "Degraded": "bad", "Refused": "bad", "Standby": "info",
              "Unprotected": "idle"}
ROLE_KIND = {"primary": "info", "standby": "idle", "copy": "teal", "no copy": "idle",
             "absent": "idle", "unknown": "bad"}


def state_pill(row: NamespaceRow) -> str:
    return pill(row.state, STATE_KIND.get(row.state, "warn"), row.message)


def role_pill(role: str) -> str:
    return pill(role, ROLE_KIND.get(role, "idle"))


def size(n: Any) -> str:
    """Bytes as ``64 MiB``; unknown as an en dash."""
    if n is None or n is pd.NA or (isinstance(n, float) and math.isnan(n)):
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


def age(t: Any, now: float | None = None) -> str:
    """How long ago a timestamp was: ``12 s``, ``4 min``, ``3 h``, ``2 d``."""
    if t is None or t is pd.NaT or t is pd.NA:
        return "–"
    secs = (now if now is not None else time.time()) - pd.Timestamp(t).timestamp()
    secs = max(0.0, secs)
    if secs < 90:
        return f"{secs:.0f} s"
    if secs < 90 * 60:
        return f"{secs / 60:.0f} min"
    if secs < 36 * 3600:
        return f"{secs / 3600:.0f} h"
    return f"{secs / 86400:.0f} d"


def clock(t: Any) -> str:
    """A timestamp as UTC ``HH:MM:SS`` (the date too when not today)."""
    if t is None or t is pd.NaT or t is pd.NA:
        return "–"
    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    today = pd.Timestamp.now(tz="UTC").normalize()
    return ts.strftime("%H:%M:%S" if ts.normalize() == today else "%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, num: Sequence[int] = (),
          empty: str = "nothing here", cls: str = "", limit: int = 200) -> str:
    """An HTML table from already-escaped cells (``num``: right-aligned column indexes);
    past ``limit`` rows, a line says how many more there are."""
    body: list[str] = []
    more = 0
    for r in rows:
        if len(body) >= limit:
            more += 1
            continue
        cells = "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                        for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return f'<div class="drk-empty">{html.escape(empty)}</div>'
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if i in num else
                   f"<th>{html.escape(h)}</th>" for i, h in enumerate(headers))
    tail = f'<div class="drk-muted">and {more:,} more</div>' if more else ""
    return (f'<div class="drk-scroll {cls}"><table class="drk-table"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>{tail}')


def site_heading(site: str, host: str, context: str | None) -> str:
    cls = "main" if site == "main" else "backup"
    ctx = f"context <b>{esc(context)}</b> · " if context else ""
    return (f'<div class="drk-h2 {cls}">{esc(site)} site</div>'
            f'<div class="drk-muted">{ctx}API <span class="drk-mono">{esc(host)}</span></div>')


def main_pvc_table(pvcs: pd.DataFrame, namespaces: set[str]) -> str:
    df = pvcs[pvcs["namespace"].isin(namespaces)] if not pvcs.empty else pvcs
    rows = [(f'{esc(r["namespace"])}/<b>{esc(r["name"])}</b>', phase_pill(r["phase"]),
             size(r["capacity"]), esc(r["storage_class"]),
             esc(r["consistency_group"]) if pd.notna(r["consistency_group"]) else
             '<span class="drk-muted">not replicated</span>')
            for _, r in df.iterrows()]
    return table(["PVC", "phase", "size", "class", "consistency group"], rows, num=(2,),
                 empty="no PVCs")


def backup_pvc_table(pvcs: pd.DataFrame, namespaces: set[str]) -> str:
    df = pvcs[pvcs["namespace"].isin(namespaces)] if not pvcs.empty else pvcs
    rows = []
    for _, r in df.iterrows():
        if pd.notna(r["data_source"]):
            origin = f'restored clone of <span class="drk-mono">{esc(r["data_source"])}</span>'
        elif pd.notna(r["replicated_from"]):
            origin = f'copy of <span class="drk-mono">{esc(r["replicated_from"])}</span>'
        elif pd.notna(r["consistency_group"]):
            origin = f"copy in group {esc(r['consistency_group'])}"
        else:
            origin = '<span class="drk-muted">local</span>'
        rows.append((f'{esc(r["namespace"])}/<b>{esc(r["name"])}</b>', phase_pill(r["phase"]),
                     size(r["capacity"]), origin))
    return table(["PVC", "phase", "size", "origin"], rows, num=(2,),
                 empty="no PVCs at the backup site yet")


def phase_pill(phase: Any) -> str:
    if phase is None or phase is pd.NA or (isinstance(phase, float) and math.isnan(phase)):
        return pill("unknown", "warn")
    return pill(str(phase), "ok" if phase == "Bound" else "warn")


def backup_namespace_table(rows: Sequence[NamespaceRow]) -> str:
    out = []
    for r in rows:
        copies = f"{r.backup_bound}/{r.backup_pvcs} bound" if r.backup_pvcs else "–"
        snaps = (f"{r.ready_snapshots} ready" + (f" of {r.snapshots}" if r.snapshots !=
                                                 r.ready_snapshots else "")
                 if r.snapshots else "–")
        out.append((f"<b>{esc(r.name)}</b>", role_pill(r.backup_role), copies, snaps,
                    str(r.restored_pvcs) if r.restored_pvcs else "–"))
    return table(["namespace", "role", "replicated PVCs", "snapshot groups", "restored PVCs"],
                 out, num=(4,), empty="no namespaces with volumes")


def lag_table(reports: Sequence[Any]) -> str:
    from dr_kit.console.state import lag_text

    rows = []
    for r in sorted(reports, key=lambda r: (r.namespace or "", r.group)):
        seq = "–" if r.sequence_lag is None else f"{r.sequence_lag:,}"
        byt = "–" if r.byte_lag is None else size(r.byte_lag)
        kind = "ok" if r.state in ("pair", "replicating", "PAIR") else (
            "bad" if r.state in ("error", "degraded", "suspended", "unreachable") else "warn")
        rows.append((esc(r.namespace), f'<span class="drk-mono">{esc(r.group)}</span>',
                     pill(str(r.state), kind, r.message or None), f"<b>{esc(lag_text(r))}</b>",
                     seq, byt, f'<span class="drk-muted">{esc(r.source_label)}</span>'))
    return table(["namespace", "consistency group", "state", "time lag", "entries", "bytes",
                  "source"], rows, num=(3, 4, 5),
                 empty="no consistency groups yet: protect a namespace")


def snapshot_table(df: pd.DataFrame, *, now: float | None = None, limit: int = 12) -> str:
    """Snapshot groups, newest first: state, consistency point, lag then, image, age."""
    if df.empty:
        return table([], [], empty="no snapshot groups yet")
    d = df.sort_values(["created", "name"], ascending=False, na_position="last", kind="stable")
    rows = []
    for _, r in d.head(limit).iterrows():
        if r["error"] is not None and pd.notna(r["error"]):
            ready = pill("failed", "bad", str(r["error"]))
        else:
            ready = pill("ready", "ok") if r["ready"] else pill("pending", "warn")
        cons = r["consistent"]
        consistent = (pill("consistent", "ok") if pd.notna(cons) and bool(cons)
                      else pill("collapsed", "bad") if pd.notna(cons)
                      else pill("unknown", "idle"))
        seq = "seq ?" if pd.isna(r["sequence"]) else f"seq {int(r['sequence']):,}"
        point = f'{seq}<div class="drk-muted">{clock(r["point_time"])} UTC</div>'
        lag = "–" if pd.isna(r["lag_seconds"]) else f"{float(r['lag_seconds']) * 1000:.1f} ms"
        rows.append((f'<span class="drk-mono"><b>{esc(r["name"])}</b></span>'
                     f'<div class="drk-muted">{esc(r["namespace"])}</div>',
                     ready, point, lag, consistent, age(r["created"], now)))
    more = (f'<div class="drk-muted">and {len(d) - limit} older</div>' if len(d) > limit
            else "")
    return table(["snapshot group", "state", "consistency point", "lag", "image", "age"],
                 rows, num=(3, 5)) + more


def kpi(label: str, value: str, detail: str = "", trend: str = "") -> str:
    d = f'<div class="d {trend}">{detail}</div>' if detail else ""
    return (f'<div class="drk-kpi"><div class="l">{html.escape(label)}</div>'
            f'<div class="v">{value}</div>{d}</div>')


def money(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.2f} M {CURRENCY}"
    if abs(v) >= 1e4:
        return f"{v / 1e3:,.1f} k {CURRENCY}"
    return f"{v:,.0f} {CURRENCY}"


def banner(errors: Sequence[str]) -> str:
    if not errors:
        return ""
    items = "".join(f"<div>⚠ {esc(e)}</div>" for e in errors)
    return f'<div class="drk-banner">{items}</div>'


__all__ = ["CSS", "esc", "pill", "state_pill", "role_pill", "size", "age", "clock", "table",
           "site_heading", "main_pvc_table", "backup_pvc_table", "backup_namespace_table",
           "lag_table", "snapshot_table", "kpi", "money", "banner", "MAIN_COLOR",
           "BACKUP_COLOR"]
