"""Notebook presentation: the same render functions with or without widgets.

With ``interactive=True`` (a person in JupyterLab) controls are ipywidgets whose callbacks
call the same functions; with ``interactive=False`` (papermill, CI) each control's action
runs once with its default, so an unattended run never waits for a click.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from dr_kit.errors import InvalidInput
from dr_kit.sites import ProgressEvent


def show(*objs: Any) -> None:
    """Display objects (DataFrames, Figures, text) in a notebook, or print them.

    Figures are rendered to PNG here, so they show without any pyplot backend setup."""
    try:
        from IPython.display import Image, display
    except ImportError:  # plain Python
        for o in objs:
            print(o)
        return
    from matplotlib.figure import Figure

    for o in objs:
        if isinstance(o, Figure):
            buf = io.BytesIO()
            o.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            display(Image(data=buf.getvalue(), format="png"))
        else:
            display(o)


def side_by_side(left: Any, right: Any, titles: tuple[str, str] = ("main site", "backup site")) -> Any:
    """Two frames next to each other (the paper's split screen), as HTML."""
    from IPython.display import HTML

    def cell(title: str, obj: Any) -> str:
        body = obj.to_html(index=False) if hasattr(obj, "to_html") else f"<pre>{obj}</pre>"
        return f"<div style='flex:1;min-width:0;overflow:auto'><h4>{title}</h4>{body}</div>"

    return HTML("<div style='display:flex;gap:2em'>" + cell(titles[0], left) + cell(titles[1], right) + "</div>")


# the columns that tell a view's story, for a table that fits half a page
COMPACT = {
    "pvs": ["claim", "phase", "capacity", "storage_class", "replicated_from"],
    "pvcs": ["name", "phase", "capacity", "consistency_group", "replicated_from"],
    "replication": ["kind", "name", "state", "completed", "degraded", "resyncing", "last_sync_time"],
}

SHORT = {"storage_class": "class", "replicated_from": "copy of", "consistency_group": "group"}


def compact(df: Any, what: str) -> Any:
    """A site view (:mod:`dr_kit.sites`: ``pvs``, ``pvcs``, ``replication``) with only the
    columns that tell its story, under short names, sizes in MiB and times to the second
    (UTC); unknown cells read ``-``."""
    import pandas as pd

    if what not in COMPACT:
        raise InvalidInput(f"compact views are {', '.join(COMPACT)}, not {what!r}")
    out = df[[c for c in COMPACT[what] if c in df.columns]].copy()
    if "capacity" in out:
        mib = pd.to_numeric(out["capacity"], errors="coerce") / 2**20
        out["capacity"] = [f"{v:,.0f}" if pd.notna(v) else None for v in mib]
        out = out.rename(columns={"capacity": "capacity (MiB)"})
    if "last_sync_time" in out:
        times = pd.to_datetime(out["last_sync_time"], utc=True, errors="coerce")
        out["last_sync_time"] = [t.strftime("%H:%M:%S") if pd.notna(t) else None for t in times]
        out = out.rename(columns={"last_sync_time": "last sync (UTC)"})
    out = out.rename(columns={k: v for k, v in SHORT.items() if k in out})
    return out.astype(object).where(out.notna(), "-")


def progress_printer(prefix: str = "") -> Callable[[ProgressEvent], None]:
    """A progress callback printing one line per change of message (and the last one)."""
    last: dict[str, str | None] = {"msg": None}

    def cb(ev: ProgressEvent) -> None:
        if ev.message != last["msg"] or ev.done:
            print(f"{prefix}{ev}", flush=True)
            last["msg"] = ev.message

    return cb


def action(label: str, fn: Callable[..., Any], *, interactive: bool, **kwargs: Any) -> Any:
    """A button running ``fn(**kwargs)`` when interactive; otherwise run it now, once,
    and show what it returns."""
    if not interactive:
        result = fn(**kwargs)
        if result is not None:
            show(result)
        return None
    import ipywidgets as w

    out = w.Output()
    button = w.Button(description=label, button_style="primary", layout=w.Layout(width="auto"))

    def clicked(_b: Any) -> None:
        with out:
            out.clear_output()
            result = fn(**kwargs)
            if result is not None:
                show(result)

    button.on_click(clicked)
    show(w.VBox([button, out]))
    return None


def controls(fn: Callable[..., Any], *, interactive: bool, **specs: tuple[Any, Any]) -> Any:
    """Sliders/dropdowns for ``fn``'s parameters when interactive, else ``fn(**defaults)``.

    ``specs`` maps a parameter to ``(default, choices)`` where choices is a list (dropdown)
    or a ``(min, max, step)`` tuple (slider).
    """
    defaults = {k: v[0] for k, v in specs.items()}
    if not interactive:
        result = fn(**defaults)
        if result is not None:
            show(result)
        return None
    import ipywidgets as w

    ws: dict[str, Any] = {}
    for k, (default, choices) in specs.items():
        if isinstance(choices, list):
            ws[k] = w.Dropdown(options=choices, value=default, description=k)
        else:
            lo, hi, step = choices
            cls = w.IntSlider if all(isinstance(x, int) for x in (lo, hi, step, default)) else w.FloatSlider
            ws[k] = cls(value=default, min=lo, max=hi, step=step, description=k, continuous_update=False)
    run = w.Button(description="Run", button_style="primary")
    out = w.Output()

    def clicked(_b: Any) -> None:
        with out:
            out.clear_output()
            result = fn(**{k: x.value for k, x in ws.items()})
            if result is not None:
                show(result)

    run.on_click(clicked)
    show(w.VBox([*ws.values(), run, out]))
    return None
