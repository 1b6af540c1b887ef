"""The live DR console: the widget tree, its refresh loop and its actions.

:class:`Console` draws the paper's split screen with ipywidgets: the main site and the
backup site side by side (namespaces with their role and protection, PVCs), a Protect /
Unprotect button per namespace, the lag of every consistency group as a figure refreshed
every ``refresh_s`` seconds (its source named), a button that takes a snapshot group, the
list of snapshot groups, and the headline analytics of the newest one with its provenance
stamp.  Voilà serves it (``dr-kit console``); a notebook can display it too::

    console = Console(main, backup, refresh_s=3)
    console.start()          # the refresh loop (a daemon thread)
    console                  # displays the widget tree

The reading and the actions are injectable (``reader``, ``actions``), so tests drive the
whole tree without a cluster.  Clicks never block the kernel: each action runs on a small
worker pool and reports in the console's status lines.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from dr_kit.console import render
from dr_kit.console.figures import lag_figure, png, revenue_figure
from dr_kit.console.headline import (
    Headline,
    headline,
    headline_html,
    reorder_html,
    stamp_html,
)
from dr_kit.console.state import (
    ConsoleState,
    LagHistory,
    NamespaceRow,
    namespace_rows,
    newest_snapshot,
    protectable,
    read_state,
)
from dr_kit.errors import DrKitError, InvalidInput
from dr_kit.sites import Site

log = logging.getLogger("dr_kit.console")

ROW_COLUMNS = "minmax(120px, 1.4fr) 78px 86px 112px 84px 132px"
MIN_REFRESH_S = 0.5


class Actions(Protocol):
    """What the console's buttons do (:class:`SiteActions` on real sites)."""

    def protect(self, namespace: str) -> str: ...

    def unprotect(self, namespace: str) -> str: ...

    def snapshot(self, namespace: str) -> str: ...

    def analyse(self, namespace: str, snapshot: str) -> Headline: ...


def snapshot_name(now: datetime | None = None, prefix: str = "console") -> str:
    """A snapshot group name carrying its UTC time: ``console-20260131-091500``."""
    t = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}-{t:%Y%m%d-%H%M%S}"


class SiteActions:
    """The console's actions on two sites, through the library's public functions."""

    def __init__(self, main: Site, backup: Site, *, wait_s: float = 60.0) -> None:
        self.main, self.backup, self.wait_s = main, backup, wait_s
        self._dbs: Any = None

    def protect(self, namespace: str) -> str:
        from dr_kit.operator.cli import protect

        t0 = time.monotonic()
        st = protect(namespace, kubeconfig=self.main.kubeconfig, context=self.main.context,
                     lab_dir=None, wait=self.wait_s)
        return (f"{namespace}: {st.get('state')} after {time.monotonic() - t0:.1f} s"
                + (f" ({st['message']})" if st.get("message") else ""))

    def unprotect(self, namespace: str) -> str:
        from dr_kit.operator.cli import unprotect

        t0 = time.monotonic()
        st = unprotect(namespace, kubeconfig=self.main.kubeconfig, context=self.main.context,
                       lab_dir=None, wait=self.wait_s)
        return (f"{namespace}: {st.get('state')} after {time.monotonic() - t0:.1f} s; the "
                "backup site's data is kept")

    def snapshot(self, namespace: str) -> str:
        from dr_kit.snapshots import create_snapshot_group

        t0 = time.monotonic()
        g = create_snapshot_group(self.backup, snapshot_name(), namespace, main_site=self.main,
                                  timeout=self.wait_s)
        seq = g.sequence if g.sequence is not None else "unknown"
        lag = f"{g.lag_seconds * 1000:.1f} ms" if g.lag_seconds is not None else "unknown"
        return (f"snapshot group {g.name} ready in {time.monotonic() - t0:.1f} s: "
                f"sequence {seq}, lag at snapshot {lag}, volumes {', '.join(g.pvcs) or '-'}")

    def analyse(self, namespace: str, snapshot: str) -> Headline:
        from dr_kit.snapshots import open_snapshot_databases

        t0 = time.monotonic()
        dbs = open_snapshot_databases(self.backup, snapshot, namespace, timeout=self.wait_s)
        try:
            h = headline(dbs, snapshot, namespace)
        finally:
            dbs.close()
        return Headline(**{**h.__dict__, "seconds": time.monotonic() - t0})


def _html(value: str = "", cls: str | None = None, **layout: Any) -> Any:
    import ipywidgets as w

    x = w.HTML(value, layout=w.Layout(**layout))
    if cls:
        for c in cls.split():
            x.add_class(c)
    return x


def _layout(**kw: Any) -> Any:
    import ipywidgets as w

    return w.Layout(**kw)


def _card(children: list[Any], cls: str, **layout: Any) -> Any:
    import ipywidgets as w

    box = w.VBox(children, layout=w.Layout(**layout))
    for c in f"drk-card {cls}".split():
        box.add_class(c)
    return box


class _NamespaceRowWidgets:
    """The widgets of one namespace's row at the main site (updated in place)."""

    def __init__(self, name: str, on_click: Callable[[str], None]) -> None:
        import ipywidgets as w

        self.name = name
        self.cells = [_html() for _ in range(5)]
        self.button = w.Button(description="Protect", layout=w.Layout(width="124px"))
        self.button.add_class("drk-action")
        self.button.add_class(f"drk-action-{name}")
        self.button.on_click(lambda _b: on_click(name))
        self.box = w.GridBox([*self.cells, self.button], layout=w.Layout(
            grid_template_columns=ROW_COLUMNS, width="100%", align_items="center",
            grid_gap="0 6px"))
        self.box.add_class("drk-row")
        self.box.add_class(f"drk-ns-{name}")


class Console:
    """The live DR console of two sites (see the module's docstring)."""

    def __init__(self, main: Site | None, backup: Site | None, *, refresh_s: float = 3.0,
                 window_s: float = 300.0, reader: Callable[[], ConsoleState] | None = None,
                 actions: Actions | None = None, confirm_s: float = 6.0) -> None:
        if isinstance(refresh_s, bool) or not isinstance(refresh_s, (int, float)) or \
                not refresh_s >= MIN_REFRESH_S:
            raise InvalidInput(f"refresh_s must be a number of seconds >= {MIN_REFRESH_S}, "
                               f"not {refresh_s!r}")
        if reader is None or actions is None:
            if main is None or backup is None:
                raise InvalidInput("a console needs the main and the backup site")
        self.main, self.backup = main, backup
        self.refresh_s = float(refresh_s)
        self.window_s = float(window_s)
        self.confirm_s = confirm_s
        self.reader: Callable[[], ConsoleState] = reader or (
            lambda: read_state(main, backup))  # type: ignore[arg-type]
        self.actions: Actions = actions or SiteActions(main, backup)  # type: ignore[arg-type]
        self.history = LagHistory(window_s)
        self.state: ConsoleState | None = None
        self.rows: list[NamespaceRow] = []
        self.refreshes = 0
        self.refresh_times: deque[float] = deque(maxlen=50)
        self.headline: Headline | None = None
        self._ui = threading.RLock()
        self._pending: dict[str, str] = {}  # namespace -> what runs on it now
        self._confirm: dict[str, float] = {}  # namespace -> unprotect confirmation deadline
        self._analysed: tuple[str, str] | None = None  # (namespace, snapshot) shown or running
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="drk-console")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._row_widgets: dict[str, _NamespaceRowWidgets] = {}
        self._build()

    # -- the tree ------------------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as w

        self.style = _html(render.CSS)
        self.title = _html('<div class="drk-title">dr_kit · DR console'
                           '<small>consistent asynchronous copy to the backup site</small>'
                           '</div><div class="drk-sub">label a namespace to protect it; '
                           'the operator puts all its volumes in one consistency group</div>',
                           flex="1 1 auto")
        self.live = _html('<div class="drk-live">connecting…</div>', cls="drk-live-box")
        header = w.HBox([self.title, self.live], layout=w.Layout(align_items="center"))
        header.add_class("drk-header")
        self.banner = _html("", cls="drk-banner-box")

        # main site
        self.main_heading = _html(render.site_heading(
            "main", self.main.host if self.main else "-", self.main.context if self.main else None))
        head_cells = [_html(t) for t in ("namespace", "PVCs", "role", "protection", "lag",
                                         "action")]
        self.rows_head = w.GridBox(head_cells, layout=w.Layout(
            grid_template_columns=ROW_COLUMNS, width="100%", grid_gap="0 6px"))
        self.rows_head.add_class("drk-row")
        self.rows_head.add_class("drk-row-head")
        self.rows_box = w.VBox([], layout=w.Layout(max_height="230px", overflow="auto"))
        self.hidden_note = _html("", cls="drk-muted")
        self.main_status = _html("", cls="drk-status drk-main-status")
        self.main_pvcs = _html("")
        main_card = _card([self.main_heading, _html('<div class="drk-h3">namespaces</div>'),
                           self.rows_head, self.rows_box, self.hidden_note, self.main_status,
                           _html('<div class="drk-h3">persistent volume claims</div>'),
                           self.main_pvcs], "drk-site-main drk-main-site",
                          flex="1 1 0", min_width="0")

        # backup site
        self.backup_heading = _html(render.site_heading(
            "backup", self.backup.host if self.backup else "-",
            self.backup.context if self.backup else None))
        self.backup_ns = _html("")
        self.backup_pvcs = _html("")
        backup_card = _card([self.backup_heading, _html('<div class="drk-h3">namespaces</div>'),
                             self.backup_ns,
                             _html('<div class="drk-h3">persistent volume claims</div>'),
                             self.backup_pvcs], "drk-site-backup drk-backup-site",
                            flex="1 1 0", min_width="0")
        sites = w.HBox([main_card, backup_card], layout=w.Layout(grid_gap="14px", width="100%"))
        sites.add_class("drk-sites")

        # lag
        self.lag_image = w.Image(format="png", layout=w.Layout(width="100%", height="auto"))
        self.lag_image.add_class("drk-lag-figure")
        self.lag_table = _html("", cls="drk-lag-table")
        lag_card = _card([_html('<div class="drk-h2">replication lag</div><div class="drk-muted">'
                                'time lag of every consistency group = the data a disaster '
                                'now would lose</div>'),
                          self.lag_image, self.lag_table], "drk-lag", flex="5 1 0",
                         min_width="0")

        # snapshot groups
        self.ns_pick = w.Dropdown(options=[], description="namespace",
                                  layout=w.Layout(width="240px"))
        self.ns_pick.style.description_width = "initial"
        self.ns_pick.add_class("drk-snap-ns")
        self.ns_pick.observe(lambda _c: self._wake.set(), names="value")
        self.snap_button = w.Button(description="Take snapshot group", button_style="primary",
                                    icon="camera", layout=w.Layout(width="190px"))
        self.snap_button.add_class("drk-snapshot")
        self.snap_button.on_click(lambda _b: self._take_snapshot())
        self.snap_status = _html("", cls="drk-status drk-snap-status")
        self.snap_list = _html("", cls="drk-snap-list")
        snap_card = _card([_html('<div class="drk-h2 backup">snapshot groups</div>'
                                 '<div class="drk-muted">frozen at one consistency point at the '
                                 'backup site, while replication continues</div>'),
                           w.HBox([self.ns_pick, self.snap_button],
                                  layout=w.Layout(grid_gap="8px", align_items="center",
                                                  margin="8px 0 2px 0")),
                           self.snap_status, self.snap_list], "drk-snapshots", flex="4 1 0",
                          min_width="0")
        middle = w.HBox([lag_card, snap_card], layout=w.Layout(grid_gap="14px", width="100%"))

        # analytics
        self.analytics_title = _html('<div class="drk-h2">newest snapshot: analytics</div>')
        self.kpis = _html('<div class="drk-empty">no snapshot group yet: take one above</div>',
                          cls="drk-kpis-box")
        self.revenue_image = w.Image(format="png", layout=w.Layout(width="100%",
                                                                   height="auto"))
        self.revenue_image.add_class("drk-revenue-figure")
        self.reorder = _html("", cls="drk-reorder")
        self.revenue_box = w.HBox([], layout=w.Layout(width="100%", grid_gap="16px",
                                                       align_items="flex-start"))
        self.stamp = _html("", cls="drk-stamp-box")
        analytics_card = _card([self.analytics_title, self.kpis, self.revenue_box, self.stamp],
                               "drk-analytics")
        self.widget = w.VBox([self.style, header, self.banner, sites, middle, analytics_card],
                             layout=w.Layout(grid_gap="14px", padding="12px 10px 24px 10px"))
        self.widget.add_class("drk")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- refreshing ----------------------------------------------------------------------

    def refresh(self) -> ConsoleState | None:
        """Read both sites once and redraw.  Never raises: a failure shows in the banner."""
        try:
            state = self.reader()
        except Exception as e:  # noqa: BLE001 - the loop must survive anything
            log.exception("console refresh failed")
            with self._ui:
                self.banner.value = render.banner([f"refresh failed: {e}"])
            return None
        try:
            with self._ui:
                self._draw(state)
        except Exception as e:  # noqa: BLE001
            log.exception("console draw failed")
            with self._ui:
                self.banner.value = render.banner([f"drawing failed: {e}",
                                                   traceback.format_exc(limit=1)])
        return state

    def _draw(self, state: ConsoleState) -> None:
        self.state = state
        self.refreshes += 1
        self.refresh_times.append(state.at)
        self.history.add(state.lag, at=state.at)
        rows, hidden = namespace_rows(state)
        self.rows = rows
        self.banner.value = render.banner(state.errors)
        when = datetime.fromtimestamp(state.at, UTC).strftime("%H:%M:%S")
        stale = "stale" if state.errors else ""
        self.live.value = (f'<div class="drk-live"><span class="drk-dot {stale}"></span>'
                           f'<b>live</b> · updated <span class="drk-updated" '
                           f'data-refreshes="{self.refreshes}">{when} UTC</span><br>'
                           f'<span class="drk-sub">every {self.refresh_s:g} s · read in '
                           f'{state.read_s * 1000:.0f} ms</span></div>')
        self._draw_main(rows, hidden, state)
        shown = {r.name for r in rows}
        self.backup_ns.value = render.backup_namespace_table(
            [r for r in rows if r.at_backup or r.primary == "backup"])
        self.backup_pvcs.value = render.backup_pvc_table(state.backup.pvcs, shown)
        self.lag_image.value = png(lag_figure(self.history.frame(), window_s=self.window_s,
                                              now=state.at))
        self.lag_table.value = render.lag_table(state.lag)
        self._draw_snapshots(rows, state)

    def _draw_main(self, rows: list[NamespaceRow], hidden: list[str],
                   state: ConsoleState) -> None:
        now = time.monotonic()
        for name in [n for n, d in self._confirm.items() if d < now]:
            del self._confirm[name]
        names = [r.name for r in rows if r.at_main]
        for name in names:
            if name not in self._row_widgets:
                self._row_widgets[name] = _NamespaceRowWidgets(name, self._clicked)
        if [c for c in self.rows_box.children] != [self._row_widgets[n].box for n in names]:
            self.rows_box.children = [self._row_widgets[n].box for n in names]
        for r in rows:
            if r.name in self._row_widgets:
                self._draw_row(self._row_widgets[r.name], r)
        self.hidden_note.value = (
            f"{len(hidden)} namespaces without volumes not shown: "
            + html.escape(", ".join(hidden[:8])) + ("…" if len(hidden) > 8 else "")
            if hidden else "")
        self.main_pvcs.value = render.main_pvc_table(state.main.pvcs, {r.name for r in rows})

    def _draw_row(self, rw: _NamespaceRowWidgets, r: NamespaceRow) -> None:
        group = (f'<div class="drk-muted drk-mono">{render.esc(r.group)}</div>'
                 if r.group else "")
        values = [f"<b>{render.esc(r.name)}</b>{group}",
                  f"{r.main_bound}/{r.main_pvcs}" if r.main_pvcs else "–",
                  render.role_pill(r.main_role), render.state_pill(r),
                  f'<span class="drk-lag-{r.name}">{render.esc(r.lag_text)}</span>']
        for cell, v in zip(rw.cells, values, strict=True):
            if cell.value != v:
                cell.value = v
        pending = self._pending.get(r.name)
        b = rw.button
        if pending:
            desc, style, disabled = pending, "", True
        elif r.name in self._confirm:
            desc, style, disabled = "Confirm unprotect", "danger", False
        elif r.labelled:
            desc, style, disabled = "Unprotect", "warning", False
        else:
            desc, style, disabled = "Protect", "success", not r.can_protect
        b.description, b.button_style, b.disabled = desc, style, disabled
        b.icon = "" if pending else ("unlock" if r.labelled else "shield")
        b.tooltip = pending or r.message or ""

    def _draw_snapshots(self, rows: list[NamespaceRow], state: ConsoleState) -> None:
        options = protectable(rows)
        if list(self.ns_pick.options) != options:
            keep = self.ns_pick.value
            self.ns_pick.options = options
            if keep in options:
                self.ns_pick.value = keep
            elif options:
                self.ns_pick.value = options[0]
        ns = self.ns_pick.value
        busy = bool(ns and self._pending.get(f"snapshot:{ns}"))
        self.snap_button.disabled = not ns or busy
        self.snap_button.description = "Taking snapshot…" if busy else "Take snapshot group"
        if state.snapshots_error:
            self.snap_list.value = render.table([], [], empty=state.snapshots_error)
        else:
            self.snap_list.value = render.snapshot_table(state.snapshots, now=state.at)
        newest = newest_snapshot(state.snapshots, ns)
        if newest is not None:
            key = (str(newest["namespace"]), str(newest["name"]))
            if key != self._analysed:
                self._analysed = key
                self._analyse(*key)

    # -- actions -------------------------------------------------------------------------

    def _run(self, key: str, label: str, fn: Callable[[], Any], status: Any,
             done: Callable[[Any], str]) -> None:
        """Run ``fn`` on the worker pool; ``status`` (an HTML widget) tells how it went."""
        with self._ui:
            if key in self._pending:
                return
            self._pending[key] = label
            status.value = f"{html.escape(label)}"
            status.remove_class("bad")

        def work() -> None:
            try:
                result = fn()
                text, bad = done(result), False
            except DrKitError as e:
                text, bad = f"error: {e}", True
            except Exception as e:  # noqa: BLE001 - shown, not lost in a thread
                log.exception("console action failed")
                text, bad = f"error: {type(e).__name__}: {e}", True
            with self._ui:
                self._pending.pop(key, None)
                status.value = html.escape(text)
                (status.add_class if bad else status.remove_class)("bad")
            self._wake.set()

        self._pool.submit(work)
        self._wake.set()

    def _clicked(self, namespace: str) -> None:
        row = next((r for r in self.rows if r.name == namespace), None)
        if row is None or namespace in self._pending:
            return
        if row.labelled:
            deadline = self._confirm.get(namespace)
            if deadline is None or deadline < time.monotonic():
                with self._ui:
                    self._confirm[namespace] = time.monotonic() + self.confirm_s
                    self._draw_row(self._row_widgets[namespace], row)
                    self.main_status.value = html.escape(
                        f"click again within {self.confirm_s:g} s to unprotect {namespace} "
                        "(replication stops; the backup site keeps its data)")
                return
            self._confirm.pop(namespace, None)
            self._run(namespace, "Unprotecting…", lambda: self.actions.unprotect(namespace),
                      self.main_status, str)
        else:
            self._run(namespace, "Protecting…", lambda: self.actions.protect(namespace),
                      self.main_status, str)
        with self._ui:
            self._draw_row(self._row_widgets[namespace], row)

    def protect(self, namespace: str) -> None:
        """What a click on the namespace's Protect/Unprotect button does."""
        self._clicked(namespace)

    def _take_snapshot(self) -> None:
        ns = self.ns_pick.value
        if not ns:
            return
        self._run(f"snapshot:{ns}", f"taking a snapshot group of {ns}…",
                  lambda: self.actions.snapshot(ns), self.snap_status, str)
        with self._ui:
            self.snap_button.disabled = True
            self.snap_button.description = "Taking snapshot…"

    def _analyse(self, namespace: str, snapshot: str) -> None:
        """Open the snapshot group's databases and show their headline (in the pool)."""
        key = f"analyse:{namespace}/{snapshot}"
        with self._ui:
            self._pending[key] = "analysing"
            self.kpis.value = (f'<div class="drk-empty">opening snapshot group '
                               f'{html.escape(snapshot)} of {html.escape(namespace)} at the '
                               'backup site…</div>')

        def work() -> None:
            try:
                h = self.actions.analyse(namespace, snapshot)
            except Exception as e:  # noqa: BLE001 - shown in the panel
                if not isinstance(e, DrKitError):
                    log.exception("console analytics failed")
                with self._ui:
                    self.kpis.value = (f'<div class="drk-banner">analytics of snapshot group '
                                       f'{html.escape(snapshot)} failed: '
                                       f'{html.escape(str(e))}</div>')
            else:
                with self._ui:
                    self._show_headline(h)
            finally:
                with self._ui:
                    self._pending.pop(key, None)

        self._pool.submit(work)

    def _show_headline(self, h: Headline) -> None:
        self.headline = h
        self.analytics_title.value = (
            f'<div class="drk-h2">newest snapshot: analytics</div><div class="drk-muted">'
            f'snapshot group <b class="drk-mono">{html.escape(h.snapshot)}</b> of namespace '
            f'{html.escape(h.namespace)}, analysed in {h.seconds:.1f} s at the backup site; '
            'the main site is not touched</div>')
        self.kpis.value = headline_html(h)
        self.revenue_image.value = png(revenue_figure(h.trend), dpi=120)
        self.reorder.value = reorder_html(h)
        if not self.revenue_box.children:
            self.revenue_image.layout = _layout(flex="3 1 0", min_width="0", width="auto",
                                                height="auto")
            self.reorder.layout = _layout(flex="2 1 0", min_width="0")
            self.revenue_box.children = [self.revenue_image, self.reorder]
        self.stamp.value = stamp_html(h)

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> Console:
        """Draw once now, then refresh every ``refresh_s`` seconds in a daemon thread."""
        if self._thread is None:
            self.refresh()
            self._thread = threading.Thread(target=self._loop, name="drk-console-refresh",
                                            daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        """Refresh every ``refresh_s`` seconds from the start of the last refresh (a steady
        period whatever the reading takes), and at once after an action."""
        due = time.monotonic() + self.refresh_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            due = time.monotonic() + self.refresh_s
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no action runs (tests); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._ui:
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False




def failure(e: BaseException) -> Any:
    """What the console page shows when it cannot start: one line, no traceback."""
    import ipywidgets as w

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, DrKitError):
        log.error("console failed to start", exc_info=e)
        text = f"{type(e).__name__}: {text}"
    box = w.VBox([_html(render.CSS), _html(
        '<div class="drk-title" style="color:#0f172a">dr_kit · DR console</div>'),
        _html(f'<div class="drk-banner">error: {html.escape(text)}</div>')],
        layout=w.Layout(grid_gap="12px", padding="16px"))
    box.add_class("drk")
    box.add_class("drk-failure")
    return box


__all__ = ["Console", "SiteActions", "Actions", "snapshot_name", "failure"]
