"""The DR console without a browser: its rows, HTML, figures, widget tree, actions, launcher
and command line, on plain frames, fakes and temp folders.

The browser tests (tests/test_browser.py) click the same console served by Voilà.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import pandas as pd
import pytest

from dr_kit.console import render
from dr_kit.console.dashboard import Console, failure, snapshot_name
from dr_kit.console.figures import MAX_LINES, lag_figure, revenue_figure
from dr_kit.console.headline import Headline, headline, headline_html, stamp_html
from dr_kit.console.server import (
    PARAMETERS,
    ConsoleServer,
    check_port,
    notebook_path,
    parameterized,
)
from dr_kit.console.state import (
    ConsoleState,
    LagHistory,
    SiteView,
    lag_text,
    namespace_rows,
    newest_snapshot,
    protectable,
)
from dr_kit.errors import Conflict, InvalidInput, Unavailable
from dr_kit.lag import GroupLag
from dr_kit.operator.policy import DEFAULT_LABEL_KEY, DEFAULT_LABEL_VALUE
from dr_kit.operator.reconcile import DR_STATE_ANNOTATION
from dr_kit.shop.schema import CURRENCY
from dr_kit.sites import PVC_COLUMNS, SNAPSHOT_COLUMNS, STATUS_ANNOTATION

NOW = 1_800_000_000.0

# -- building blocks ---------------------------------------------------------------------------


def ns(name: str, *, labelled: bool = False, status: dict | None = None,
       dr: Any = None) -> dict[str, Any]:
    ann: dict[str, str] = {}
    if status is not None:
        ann[STATUS_ANNOTATION] = json.dumps(status)
    if dr is not None:
        ann[DR_STATE_ANNOTATION] = dr if isinstance(dr, str) else json.dumps(dr)
    labels = {DEFAULT_LABEL_KEY: DEFAULT_LABEL_VALUE} if labelled else {}
    return {"metadata": {"name": name, "labels": labels, "annotations": ann},
            "status": {"phase": "Active"}}


def pvcs(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {c: None for c in PVC_COLUMNS}
    return pd.DataFrame([{**base, "phase": "Bound", "capacity": 64 << 20, **r} for r in rows],
                        columns=PVC_COLUMNS)


def snaps(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {c: None for c in SNAPSHOT_COLUMNS}
    df = pd.DataFrame([{**base, **r} for r in rows], columns=SNAPSHOT_COLUMNS)
    for c in ("created", "point_time"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df


def lag(ns_: str, seconds: float | None, *, source: str = "array", upper: bool = False,
        at: float = NOW, group: str | None = None) -> GroupLag:
    return GroupLag(group=group or f"{ns_}-group", state="pair", main=None, applied=None,
                    sequence_lag=None if seconds is None else 3, byte_lag=None,
                    time_lag_s=seconds, consistent=None, measured_at=at, source=source,
                    namespace=ns_, resource=f"VolumeGroupReplication {ns_}/x",
                    upper_bound=upper, resolution_s=1.0 if upper else None)


def state(*, main_ns=(), backup_ns=(), main_pvcs=None, backup_pvcs=None, lags=(),
          snapshots=None, at: float = NOW, **kw: Any) -> ConsoleState:
    return ConsoleState(
        at=at,
        main=SiteView("main", "https://127.0.0.1:1", "main", list(main_ns),
                      main_pvcs if main_pvcs is not None else pvcs()),
        backup=SiteView("backup", "https://127.0.0.1:2", "backup", list(backup_ns),
                        backup_pvcs if backup_pvcs is not None else pvcs()),
        lag=list(lags), snapshots=snapshots if snapshots is not None else snaps(), **kw)


def protected_shop(**kw: Any) -> ConsoleState:
    return state(
        main_ns=[ns("default"), ns("shop", labelled=True,
                                   status={"state": "Protected", "message": "replicating"})],
        backup_ns=[ns("default"), ns("shop")],
        main_pvcs=pvcs({"namespace": "shop", "name": "sales-db", "consistency_group": "g"},
                       {"namespace": "shop", "name": "stock-db", "consistency_group": "g"}),
        backup_pvcs=pvcs(
            {"namespace": "shop", "name": "sales-db", "consistency_group": "g",
             "replicated_from": "main"},
            {"namespace": "shop", "name": "stock-db", "consistency_group": "g",
             "replicated_from": "main", "phase": "Pending"},
            {"namespace": "shop", "name": "s1-sales-db", "consistency_group": "g",
             "data_source": "VolumeSnapshot/s1-sales-db"}),
        lags=[lag("shop", 0.0042)],
        snapshots=snaps({"namespace": "shop", "name": "s1", "ready": True, "sequence": 10,
                         "created": "2027-01-15T08:00:00Z", "consistent": True},
                        {"namespace": "shop", "name": "s2", "ready": False,
                         "created": "2027-01-15T08:05:00Z"}), **kw)


# -- rows ----------------------------------------------------------------------------------------


def test_rows_join_both_sites_and_hide_namespaces_without_volumes() -> None:
    rows, hidden = namespace_rows(protected_shop())
    assert [r.name for r in rows] == ["shop"] and hidden == ["default"]
    (r,) = rows
    assert (r.main_pvcs, r.main_bound, r.backup_pvcs, r.backup_bound, r.restored_pvcs) == \
        (2, 2, 2, 1, 1)
    assert r.labelled and r.state == "Protected" and r.message == "replicating"
    assert (r.main_role, r.backup_role) == ("primary", "copy")
    assert r.group == "g" and r.lag is not None and r.lag_text == "4.2 ms"
    assert (r.snapshots, r.ready_snapshots) == (2, 1)
    assert protectable(rows) == ["shop"]


def test_an_unprotected_namespace_can_be_protected_and_has_no_copy() -> None:
    s = state(main_ns=[ns("web")], backup_ns=[],
              main_pvcs=pvcs({"namespace": "web", "name": "data"}))
    (r,), hidden = namespace_rows(s)
    assert hidden == []
    assert r.state == "Unprotected" and not r.labelled and r.can_protect
    assert (r.main_role, r.backup_role) == ("primary", "absent")
    assert r.lag_text == "-" and protectable([r]) == []


def test_labelled_without_an_answer_is_requested() -> None:
    s = state(main_ns=[ns("web", labelled=True)], main_pvcs=pvcs({"namespace": "web",
                                                                   "name": "d"}))
    (r,), _ = namespace_rows(s)
    assert r.state == "Requested" and "no answer" in (r.message or "")


def test_roles_follow_the_dr_state() -> None:
    s = state(main_ns=[ns("shop", labelled=True, dr={"primary": "backup"})],
              backup_ns=[ns("shop", dr={"primary": "backup"})],
              main_pvcs=pvcs({"namespace": "shop", "name": "d"}))
    (r,), _ = namespace_rows(s)
    assert (r.main_role, r.backup_role) == ("standby", "primary")
    s = state(main_ns=[ns("shop", dr="not json")], main_pvcs=pvcs({"namespace": "shop",
                                                                   "name": "d"}))
    (r,), _ = namespace_rows(s)
    assert r.main_role == "unknown"  # never guessed


def test_lag_text_never_shows_unknown_as_zero() -> None:
    assert lag_text(None) == "-"
    assert lag_text(lag("a", None)) == "unknown"
    assert lag_text(lag("a", 0.0)) == "0.0 ms"
    assert lag_text(lag("a", 2.5)) == "2.5 s"
    assert lag_text(lag("a", 1.0, source="k8s-status", upper=True)) == "≤ 1.0 s"


def test_newest_snapshot_is_the_newest_ready_one() -> None:
    df = protected_shop().snapshots
    assert newest_snapshot(df)["name"] == "s1"  # s2 is newer but not ready
    assert newest_snapshot(df, "other") is None
    assert newest_snapshot(snaps()) is None


def test_lag_history_keeps_its_window() -> None:
    h = LagHistory(window_s=10)
    for i in range(30):
        h.add([lag("a", 0.001 * i)], at=NOW + i)
    df = h.frame()
    assert df["time"].min() == NOW + 19 and df["time"].max() == NOW + 29 and len(h) == 11


def test_errors_of_a_site_are_said() -> None:
    s = protected_shop()
    s.backup.error = "the backup site's API server at x is unreachable"
    s.lag_error = "array unreachable"
    assert s.errors == ["backup site: the backup site's API server at x is unreachable",
                        "lag: array unreachable"]


# -- html and figures ----------------------------------------------------------------------------


def test_html_escapes_every_value() -> None:
    df = pvcs({"namespace": "shop", "name": "<img src=x onerror=alert(1)>",
               "data_source": "VolumeSnapshot/<b>x</b>"})
    out = render.backup_pvc_table(df, {"shop"})
    assert "<img" not in out and "&lt;img" in out and "<b>x</b>" not in out
    assert 'title="&lt;script&gt;"' in render.pill("x", "ok", "<script>")
    assert render.esc(None) == render.esc(float("nan")) == render.esc(pd.NA) == "–"


def test_sizes_and_ages() -> None:
    assert render.size(64 << 20) == "64 MiB" and render.size(1536) == "1.5 KiB"
    assert render.size(None) == "–"
    assert render.age(pd.Timestamp(NOW - 30, unit="s", tz="UTC"), NOW) == "30 s"
    assert render.age(pd.Timestamp(NOW - 2700, unit="s", tz="UTC"), NOW) == "45 min"
    assert render.age(pd.Timestamp(NOW - 7200, unit="s", tz="UTC"), NOW) == "2 h"
    assert render.age(None, NOW) == "–"


def test_snapshot_table_newest_first_with_state_and_image() -> None:
    out = render.snapshot_table(protected_shop().snapshots, now=NOW)
    assert out.index("s2") < out.index("s1")
    assert "pending" in out and "ready" in out and "consistent" in out and "seq 10" in out
    assert "no snapshot groups yet" in render.snapshot_table(snaps())


def test_lag_table_names_the_source() -> None:
    out = render.lag_table([lag("shop", 0.0042), lag("web", 1.0, source="k8s-status",
                                                       upper=True)])
    assert "array (exact)" in out and "≤, from lastSyncTime (1 s resolution)" in out
    assert "4.2 ms" in out and "≤ 1.0 s" in out


def _title(fig: Any) -> str:
    return fig.axes[0].get_title(loc="left")


def test_lag_figure_names_its_source_and_draws_unknown_as_unknown() -> None:
    h = LagHistory()
    h.add([lag("shop", None)], at=NOW - 2)
    h.add([lag("shop", 0.004)], at=NOW - 1)
    fig = lag_figure(h.frame(), window_s=300, now=NOW)
    assert "source: array (exact)" in _title(fig) and "last 30 s" in _title(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "lag unknown" in labels and "shop (shop-group)" in labels
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "shop (shop-group)")
    ys = list(line.get_ydata())
    assert pd.isna(ys[0]) and ys[1] == pytest.approx(4.0)  # ms; unknown is a gap, not 0


def test_lag_figure_with_many_groups_draws_the_largest_and_counts_the_rest() -> None:
    h = LagHistory()
    h.add([lag(f"ns{i:02d}", 0.001 * i) for i in range(MAX_LINES + 4)], at=NOW)
    fig = lag_figure(h.frame(), window_s=300, now=NOW)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "+4 more groups" in fig.axes[0].get_legend().get_texts()[-1].get_text()
    assert "ns00 (ns00-group)" not in labels and "ns11 (ns11-group)" in labels


def test_lag_figure_upper_bound_and_empty() -> None:
    h = LagHistory()
    h.add([lag("shop", 3.0, source="k8s-status", upper=True)], at=NOW)
    fig = lag_figure(h.frame(), window_s=300, now=NOW)
    assert "upper bound" in fig.axes[0].get_ylabel() and "(s)" in fig.axes[0].get_ylabel()
    assert "lastSyncTime" in _title(fig)
    empty = lag_figure(LagHistory().frame(), window_s=300, now=NOW)
    assert any("protect a namespace" in t.get_text() for t in empty.axes[0].texts)


# -- headline analytics on a real image ------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dr_kit.shop.workload import seed

    d = tmp_path_factory.mktemp("image")
    stock, sales = apsw.Connection(str(d / "stock.db")), apsw.Connection(str(d / "sales.db"))
    seed(stock, sales, history_days=30, history_orders=3000, history_seed=5,
         now=datetime(2027, 1, 15, 12, 0, tzinfo=UTC))
    stock.close()
    sales.close()
    return d


def test_headline_figures_match_the_databases(image: Path) -> None:
    from dr_kit import analytics

    dbs = analytics.open_sqlite(image / "stock.db", image / "sales.db", snapshot="snap-9",
                                sequence=4711, lag_seconds=0.25)
    try:
        h = headline(dbs, "snap-9", "shop")
        reorder = analytics.reorder_list(dbs)
    finally:
        dbs.close()
    con = sqlite3.connect(image / "sales.db")
    orders, = con.execute("SELECT count(*) FROM orders").fetchone()
    cents, = con.execute("SELECT sum(quantity * unit_price_cents) FROM order_lines"
                         ).fetchone()
    products, = sqlite3.connect(image / "stock.db").execute(
        "SELECT count(*) FROM products").fetchone()
    assert h.orders == orders and h.revenue == pytest.approx(cents / 100)
    assert sum(h.abc.values()) == products and h.abc["A"] >= 1
    assert h.reorder_count == len(reorder) and h.reorder == list(reorder["name"].head(3))
    assert h.consistent and "snap-9" in h.stamp and "seq 4711" in h.stamp
    assert "0.250 s" in h.stamp
    cards = headline_html(h)
    assert "week over week" in cards and f"{orders:,} orders in the image" in cards
    assert "provenance" in stamp_html(h) and "drk-stamp bad" not in stamp_html(h)
    assert revenue_figure(h.trend).axes[0].get_title(loc="left").startswith("revenue")
    assert revenue_figure(h.trend).axes[0].get_ylabel() == f"revenue per day ({CURRENCY})"


# -- the widget tree, with a fake reader and fake actions ----------------------------------------


class FakeActions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail: Exception | None = None

    def _do(self, *call: str) -> str:
        self.calls.append(call)
        if self.fail:
            raise self.fail
        return f"{call[0]} {call[1]} done"

    def protect(self, namespace: str) -> str:
        return self._do("protect", namespace)

    def unprotect(self, namespace: str) -> str:
        return self._do("unprotect", namespace)

    def snapshot(self, namespace: str) -> str:
        return self._do("snapshot", namespace)

    def analyse(self, namespace: str, snapshot: str) -> Headline:
        self.calls.append(("analyse", namespace, snapshot))
        if self.fail:
            raise self.fail
        trend = pd.DataFrame({"day": ["2027-01-14", "2027-01-15"], "orders": [3, 4],
                              "units": [5, 6], "revenue_cents": [100, 200],
                              "revenue": [1.0, 2.0], "revenue_ma7": [float("nan"), 1.5],
                              "wow_pct": [float("nan"), 12.5]})
        return Headline(snapshot=snapshot, namespace=namespace, stamp=f"snapshot {snapshot} | ok",
                        consistent=True, verdict="consistent", orders=7, revenue=3.0,
                        last_day="2027-01-15", revenue_7d=10.5, wow_pct=12.5, orders_7d=7,
                        abc={"A": 1, "B": 2, "C": 3}, reorder=["tea"], reorder_count=1,
                        trend=trend, channels=pd.DataFrame({"channel": ["web"],
                                                            "revenue": [3.0]}),
                        reorder_frame=pd.DataFrame({"name": ["tea"], "category": ["drinks"],
                                                    "on_hand": [2], "cover_days": [0.5],
                                                    "order_units": [40]}))


class Reader:
    def __init__(self, s: ConsoleState) -> None:
        self.state = s

    def __call__(self) -> ConsoleState:
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def console(s: ConsoleState, actions: FakeActions | None = None) -> tuple[Console, Reader,
                                                                           FakeActions]:
    reader, acts = Reader(s), actions or FakeActions()
    c = Console(None, None, reader=reader, actions=acts, refresh_s=60, confirm_s=5)
    return c, reader, acts


def button(c: Console, name: str) -> Any:
    return c._row_widgets[name].button


def test_tree_shows_both_sites_and_a_protect_button() -> None:
    s = state(main_ns=[ns("default"), ns("shop")], backup_ns=[ns("default")],
              main_pvcs=pvcs({"namespace": "shop", "name": "sales-db"}))
    c, _, acts = console(s)
    c.refresh()
    assert "main site" in c.main_heading.value and "backup site" in c.backup_heading.value
    assert [w for w in c.rows_box.children] == [c._row_widgets["shop"].box]
    assert "drk-ns-shop" in c._row_widgets["shop"].box._dom_classes
    b = button(c, "shop")
    assert b.description == "Protect" and not b.disabled
    assert "Unprotected" in c._row_widgets["shop"].cells[3].value
    assert "1 namespaces without volumes not shown: default" in c.hidden_note.value
    assert "shop/<b>sales-db</b>" in c.main_pvcs.value
    assert "no PVCs at the backup site yet" in c.backup_pvcs.value
    assert bytes(c.lag_image.value[:4]) == b"\x89PNG"
    assert 'data-refreshes="1"' in c.live.value
    b.click()
    assert c.wait_idle(10)
    assert acts.calls == [("protect", "shop")]
    assert c.main_status.value == "protect shop done"


def test_unprotect_asks_for_a_second_click() -> None:
    c, _, acts = console(protected_shop())
    c.refresh()
    b = button(c, "shop")
    assert b.description == "Unprotect"
    b.click()
    assert b.description == "Confirm unprotect"
    assert [x for x in acts.calls if x[0] == "unprotect"] == []
    assert "click again" in c.main_status.value
    b.click()
    assert c.wait_idle(10)
    assert ("unprotect", "shop") in acts.calls


def test_unprotect_confirmation_expires() -> None:
    c, _, acts = console(protected_shop())
    c.confirm_s = 0.05
    c.refresh()
    button(c, "shop").click()
    time.sleep(0.1)
    c.refresh()
    assert button(c, "shop").description == "Unprotect"
    button(c, "shop").click()  # asks again
    assert [x for x in acts.calls if x[0] == "unprotect"] == []


def test_snapshot_button_and_analytics_of_the_newest() -> None:
    c, _, acts = console(protected_shop())
    c.refresh()
    assert list(c.ns_pick.options) == ["shop"] and c.ns_pick.value == "shop"
    assert c.wait_idle(10)
    assert ("analyse", "shop", "s1") in acts.calls  # the newest ready snapshot group
    assert "A 1 · B 2 · C 3" in c.kpis.value and "snapshot s1" in c.stamp.value
    assert bytes(c.revenue_image.value[:4]) == b"\x89PNG" and "tea" in c.reorder.value
    c.snap_button.click()
    assert c.wait_idle(10)
    assert ("snapshot", "shop") in acts.calls and c.snap_status.value == "snapshot shop done"
    c.refresh()
    assert [x for x in acts.calls if x[0] == "analyse"] == [("analyse", "shop", "s1")]


def test_a_failed_action_is_one_line_in_its_status() -> None:
    acts = FakeActions()
    acts.fail = Conflict("namespace shop is not protected (state Protecting)")
    c, _, _ = console(protected_shop(), acts)
    c.refresh()
    assert c.wait_idle(10)
    assert "analytics of snapshot group s1 failed" in c.kpis.value
    c.snap_button.click()
    assert c.wait_idle(10)
    assert c.snap_status.value == "error: namespace shop is not protected (state Protecting)"
    assert "bad" in c.snap_status._dom_classes


def test_refresh_failures_and_site_errors_show_in_the_banner() -> None:
    s = protected_shop()
    s.backup.error = "unreachable"
    c, reader, _ = console(s)
    c.refresh()
    assert "backup site: unreachable" in c.banner.value and "stale" in c.live.value
    reader.state = Unavailable("main API down")  # type: ignore[assignment]
    assert c.refresh() is None
    assert "refresh failed: main API down" in c.banner.value


def test_the_refresh_loop_runs_and_stops() -> None:
    c, _, _ = console(protected_shop())
    c.refresh_s = 0.05
    c.start()
    deadline = time.monotonic() + 10
    while c.refreshes < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    c.stop()
    assert c.refreshes >= 4 and c._thread is not None and not c._thread.is_alive()


def test_bad_console_arguments() -> None:
    with pytest.raises(InvalidInput, match="refresh_s"):
        Console(None, None, reader=Reader(protected_shop()), actions=FakeActions(),
                refresh_s=0)
    with pytest.raises(InvalidInput, match="main and the backup site"):
        Console(None, None)


def test_failure_page_is_one_line() -> None:
    box = failure(Unavailable("the main site's API server is unreachable\ndetails"))
    text = box.children[-1].value
    assert "error: the main site&#x27;s API server is unreachable" in text
    assert "details" not in text


def test_snapshot_names_carry_their_time() -> None:
    assert snapshot_name(datetime(2027, 1, 31, 9, 15, tzinfo=UTC)) == "console-20270131-091500"


# -- the launcher -------------------------------------------------------------------------------


def test_the_notebook_is_in_the_package_with_the_launcher_parameters() -> None:
    nb = json.loads(notebook_path().read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    names = [ln.split("=")[0].strip() for ln in "".join(cell["source"]).splitlines() if ln]
    assert tuple(names) == PARAMETERS
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    code = "".join("".join(c["source"]) for c in nb["cells"])
    assert len(code.splitlines()) <= 20, "the console's logic belongs in dr_kit.console"


def test_parameters_are_injected_after_the_parameters_cell() -> None:
    nb = parameterized(notebook_path(), {"lab_dir": "/tmp/x", "refresh_s": 2.0})
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    at = tags.index(["parameters"])
    assert tags[at + 1] == ["injected-parameters"]
    assert "".join(nb["cells"][at + 1]["source"]) == \
        "# Parameters\nlab_dir = '/tmp/x'\nrefresh_s = 2.0"
    with pytest.raises(InvalidInput, match="unknown console parameters: colour"):
        parameterized(notebook_path(), {"colour": "red"})


def test_check_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"port {port} on 127.0.0.1 is in use"):
            check_port(port)
    assert check_port(0) > 0
    for bad in (-1, 70000, True):
        with pytest.raises(InvalidInput, match="0..65535"):
            check_port(bad)


def test_the_access_token_goes_to_a_private_file_never_to_the_url() -> None:
    server = ConsoleServer({}, port=0, token="s3cret-token")
    assert "s3cret" not in server.url and server.url_with_token().endswith("?token=s3cret-token")
    assert ConsoleServer({}, use_token=False).url_with_token() == "http://127.0.0.1:8866/"


@pytest.mark.slow
def test_a_server_that_cannot_start_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    server = ConsoleServer({"lab_dir": str(tmp_path)}, port=0, python="/bin/false")
    with pytest.raises(Unavailable, match="Voilà stopped while starting"):
        server.start(timeout=20)
    assert server.run_dir is not None and not server.run_dir.exists()


# -- the command line: bad input is one line, exit 2, nothing started ------------------------------


def kubeconfig(tmp_path: Path) -> Path:
    p = tmp_path / "kubeconfig"
    p.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "east",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t0ken-never-shown"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}}
                     for n in ("east", "west")]}))
    return p


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from dr_kit.cli import main

    code = main(["console", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["--main-context", "nope", "--backup-context", "west"],
     "error: context 'nope' is not in kubeconfig"),
    (["--main-context", "east", "--backup-context", "east"],
     "error: the main and backup sites are the same context 'east'"),
    (["--main-context", "east", "--backup-context", "west", "--refresh", "0"],
     "error: --refresh 0: choose 0.5 to 3600 seconds"),
    (["--main-context", "east", "--backup-context", "west", "--dir", "x"],
     "error: use either --dir (the lab) or --kubeconfig"),
    (["--main-context", "east", "--backup-context", "west", "--port", "99999"],
     "error: --port 99999: a TCP port is 0..65535"),
    (["--main-context", "east", "--backup-context", "west"],
     "error: the main site's API server at https://127.0.0.1:9"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], message: str) -> None:
    code, out, err = run_cli(capsys, "--kubeconfig", str(kubeconfig(tmp_path)), "--port", "0",
                             *argv)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "t0ken-never-shown" not in err and "Traceback" not in err


def test_a_port_in_use_is_one_error_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out, err = run_cli(capsys, "--dir", str(tmp_path), "--port", str(port))
    assert code == 2 and out == ""
    assert err == f"error: port {port} on 127.0.0.1 is in use; choose another with --port P " \
        "(--port 0 picks a free one)\n"


@pytest.mark.slow
def test_the_wheel_carries_the_console_notebook(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    (whl,) = tmp_path.glob("dr_kit-*.whl")
    with zipfile.ZipFile(whl) as z:
        assert z.read("dr_kit/console/console.ipynb") == notebook_path().read_bytes()


def test_long_tables_say_how_many_rows_are_not_shown() -> None:
    out = render.table(["a"], [("x",)] * 250)
    assert out.count("<tr>") == 201 and "and 50 more" in out
