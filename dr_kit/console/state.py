"""What the console shows, read from both sites in one pass, and the rows derived from it.

:func:`read_state` does the reading (a handful of API calls per site, the array's lag
report per group); everything else here is pure: :func:`namespace_rows` joins the two
sites' namespaces, PVCs, the lag reports and the snapshot groups into one row per
namespace, which the dashboard draws as the paper's split screen.  A site that cannot be
read is an error message in the state, never an exception: the console keeps refreshing
and says what it cannot see.

Nothing read here is a Secret: namespaces, PVCs, replication resources (through
:func:`dr_kit.lag.read_lag`) and VolumeGroupSnapshots only.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dr_kit.errors import DrKitError
from dr_kit.lag import GroupLag, read_lag
from dr_kit.operator.policy import DEFAULT_LABEL_KEY, DEFAULT_LABEL_VALUE
from dr_kit.operator.reconcile import DR_STATE_ANNOTATION
from dr_kit.sites import PVC_COLUMNS, SNAPSHOT_COLUMNS, STATUS_ANNOTATION, Site

UNPROTECTED_STATE = "Unprotected"


@dataclass
class SiteView:
    """One site as read for one refresh: its namespaces (raw objects) and PVCs."""

    name: str
    host: str
    context: str | None
    namespaces: list[dict[str, Any]] = field(default_factory=list)
    pvcs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PVC_COLUMNS))
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ConsoleState:
    """Both sites, the lag of every consistency group and the snapshot groups, at ``at``."""

    at: float
    main: SiteView
    backup: SiteView
    lag: list[GroupLag] = field(default_factory=list)
    lag_error: str | None = None
    snapshots: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=SNAPSHOT_COLUMNS))
    snapshots_error: str | None = None
    read_s: float = 0.0

    @property
    def errors(self) -> list[str]:
        out = [f"{v.name} site: {v.error}" for v in (self.main, self.backup) if v.error]
        if self.lag_error:
            out.append(f"lag: {self.lag_error}")
        if self.snapshots_error:
            out.append(f"snapshot groups: {self.snapshots_error}")
        return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_site(site: Site) -> SiteView:
    view = SiteView(site.name, site.host, site.context)
    try:
        view.namespaces = site.kube.items("Namespace")
        view.pvcs = site.pvcs()
    except DrKitError as e:
        view.error = _first_line(e)
    return view


def read_state(main: Site, backup: Site, *, clock: Callable[[], float] = time.time
               ) -> ConsoleState:
    """Read both sites once.  Errors become messages in the state, never exceptions."""
    t0 = time.monotonic()
    state = ConsoleState(at=clock(), main=_read_site(main), backup=_read_site(backup))
    if state.main.ok:
        try:
            state.lag = read_lag(main)
        except DrKitError as e:
            state.lag_error = _first_line(e)
    if state.backup.ok:
        try:
            state.snapshots = backup.snapshots()
        except DrKitError as e:
            state.snapshots_error = _first_line(e)
    state.read_s = time.monotonic() - t0
    return state


# -- rows ------------------------------------------------------------------------------------


def _annotation_json(ns: dict[str, Any], key: str) -> dict[str, Any]:
    raw = ((ns.get("metadata") or {}).get("annotations") or {}).get(key)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class NamespaceRow:
    """One namespace as the split screen shows it, at both sites."""

    name: str
    at_main: bool
    at_backup: bool
    main_pvcs: int
    main_bound: int
    backup_pvcs: int  # replicated copies at the backup site (restored clones excluded)
    backup_bound: int
    restored_pvcs: int
    labelled: bool
    state: str
    message: str | None
    primary: str | None  # the DR state's primary site; None when it cannot be read
    operation: str | None
    group: str | None
    lag: GroupLag | None
    snapshots: int
    ready_snapshots: int

    @property
    def main_role(self) -> str:
        if not self.at_main:
            return "absent"
        if self.primary is None:
            return "unknown"
        return "primary" if self.primary == "main" else "standby"

    @property
    def backup_role(self) -> str:
        if self.primary == "backup":
            return "primary"
        if self.backup_pvcs:
            return "copy"
        return "absent" if not self.at_backup else "no copy"

    @property
    def can_protect(self) -> bool:
        """Protecting makes sense: the namespace exists at the main site and has PVCs."""
        return self.at_main and self.main_pvcs > 0

    @property
    def lag_text(self) -> str:
        return lag_text(self.lag)


def lag_text(r: GroupLag | None) -> str:
    """A lag figure in words: ``12.3 ms``, ``≤ 1.0 s`` (upper bound), ``unknown``, or ``-``."""
    if r is None:
        return "-"
    if r.time_lag_s is None:
        return "unknown"
    s = r.time_lag_s
    text = f"{s * 1000:.1f} ms" if s < 1 else f"{s:.1f} s"
    return f"≤ {text}" if r.upper_bound else text


def _is_replica(df: pd.DataFrame) -> pd.Series:
    """Rows of a backup PVC frame that are replicated copies (not restored clones)."""
    if df.empty:
        return pd.Series([], dtype=bool)
    return df["data_source"].isna() & (df["consistency_group"].notna()
                                       | df["replicated_from"].notna())


def _split(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A frame's rows per namespace (one pass, whatever the number of namespaces)."""
    if df.empty:
        return {}
    return {str(k): g for k, g in df.groupby("namespace", sort=False, dropna=True)}


def namespace_rows(state: ConsoleState) -> tuple[list[NamespaceRow], list[str]]:
    """One row per namespace worth showing, and the names of those not shown.

    Shown: every namespace with PVCs at either site, labelled for protection, with a
    protection status or a DR state, or with a consistency group.  The others
    (``default``, system namespaces, ...) are listed by name only.
    """
    main_ns = {n["metadata"]["name"]: n for n in state.main.namespaces}
    backup_ns = {n["metadata"]["name"]: n for n in state.backup.namespaces}
    by_ns = {key: _split(df) for key, df in (("main", state.main.pvcs),
                                              ("backup", state.backup.pvcs),
                                              ("snaps", state.snapshots))}
    empty = {"main": state.main.pvcs.iloc[0:0], "backup": state.backup.pvcs.iloc[0:0],
             "snaps": state.snapshots.iloc[0:0]}
    lags = {r.namespace: r for r in state.lag if r.namespace}
    rows: list[NamespaceRow] = []
    hidden: list[str] = []
    for name in sorted(set(main_ns) | set(backup_ns)):
        ns = main_ns.get(name) or backup_ns[name]
        meta = ns.get("metadata") or {}
        labelled = name in main_ns and ((main_ns[name]["metadata"].get("labels") or {})
                                        .get(DEFAULT_LABEL_KEY) == DEFAULT_LABEL_VALUE)
        status = _annotation_json(main_ns[name], STATUS_ANNOTATION) if name in main_ns else {}
        dr = _annotation_json(ns, DR_STATE_ANNOTATION)
        raw_dr = (meta.get("annotations") or {}).get(DR_STATE_ANNOTATION)
        primary: str | None = "main"
        if raw_dr is not None:
            primary = dr.get("primary") if dr.get("primary") in ("main", "backup") else None
        m = by_ns["main"].get(name, empty["main"])
        b = by_ns["backup"].get(name, empty["backup"])
        replicas = b[_is_replica(b)] if not b.empty else b
        restored = len(b) - len(replicas)
        groups = sorted({g for g in m["consistency_group"].dropna()}) if not m.empty else []
        s = by_ns["snaps"].get(name, empty["snaps"])
        row = NamespaceRow(
            name=name, at_main=name in main_ns, at_backup=name in backup_ns,
            main_pvcs=len(m), main_bound=int((m["phase"] == "Bound").sum()) if len(m) else 0,
            backup_pvcs=len(replicas),
            backup_bound=int((replicas["phase"] == "Bound").sum()) if len(replicas) else 0,
            restored_pvcs=restored, labelled=labelled,
            state=str(status.get("state") or ("Requested" if labelled else UNPROTECTED_STATE)),
            message=status.get("message") or (
                "labelled; no answer from the operator yet" if labelled and not status
                else None),
            primary=primary, operation=dr.get("operation") or None,
            group=groups[0] if len(groups) == 1 else (", ".join(groups) or None),
            lag=lags.get(name), snapshots=len(s),
            ready_snapshots=int(s["ready"].sum()) if len(s) else 0)
        worth = (row.main_pvcs or row.backup_pvcs or row.restored_pvcs or labelled or status
                 or raw_dr is not None or row.group or row.lag is not None)
        (rows.append(row) if worth else hidden.append(name))
    return rows, hidden


def protectable(rows: Iterable[NamespaceRow]) -> list[str]:
    """Namespaces a snapshot group can be taken of: protected, with copies at the backup."""
    return [r.name for r in rows if r.labelled and r.backup_pvcs > 0]


def newest_snapshot(snapshots: pd.DataFrame, namespace: str | None = None
                    ) -> dict[str, Any] | None:
    """The newest ready snapshot group (of ``namespace``), as a row dict; None if none."""
    if snapshots.empty:
        return None
    df = snapshots[snapshots["ready"].astype(bool)]
    if namespace is not None:
        df = df[df["namespace"] == namespace]
    if df.empty:
        return None
    df = df.sort_values(["created", "name"], na_position="first", kind="stable")
    return dict(df.iloc[-1].to_dict())


# -- lag history -------------------------------------------------------------------------------


class LagHistory:
    """The lag readings of the last ``window_s`` seconds, per consistency group."""

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s
        self._rows: deque[dict[str, Any]] = deque()

    def add(self, reports: Iterable[GroupLag], at: float | None = None) -> None:
        for r in reports:
            self._rows.append({
                "time": r.measured_at if at is None else at, "group": r.group,
                "namespace": r.namespace, "time_lag_s": r.time_lag_s,
                "sequence_lag": r.sequence_lag, "source": r.source_label,
                "upper_bound": r.upper_bound})
        newest = max((row["time"] for row in self._rows), default=0.0)
        while self._rows and self._rows[0]["time"] < newest - self.window_s:
            self._rows.popleft()

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(list(self._rows), columns=["time", "group", "namespace", "time_lag_s",
                                                     "sequence_lag", "source", "upper_bound"])
        df["time_lag_s"] = df["time_lag_s"].astype("Float64")
        return df

    def __len__(self) -> int:
        return len(self._rows)


__all__ = ["ConsoleState", "SiteView", "NamespaceRow", "LagHistory", "read_state",
           "namespace_rows", "protectable", "newest_snapshot", "lag_text"]
