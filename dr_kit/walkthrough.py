"""What the walkthrough notebooks do, as functions a test can call.

Each notebook keeps a parameters cell and short cells; the steps live here.  A notebook
first gets its two sites (``dr_kit.lab.connect``: the embedded lab, started when needed,
or real clusters through a kubeconfig) and, in the lab, its controls
(:class:`~dr_kit.controls.LabControls`); the functions here are the notebooks' steps and
work on any cluster.  Steps that need the lab's controls (a slower link, a busier shop)
are skipped with a note when there are none.  ``record`` writes a notebook's headline results to a JSON file that tests
and ``dr-kit notebooks run`` read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from dr_kit.controls import LabControls, needs
from dr_kit.errors import DrKitError, InvalidInput, Unavailable
from dr_kit.sites import Progress, Site, What, wait_until

Note = Callable[[str], None]


def real_sites(kubeconfig: str | os.PathLike[str] | None, main_context: str = "main",
               backup_context: str = "backup") -> tuple[Site, Site]:
    """The main and backup sites of a kubeconfig (one context each)."""
    return (Site.from_kubeconfig(kubeconfig, main_context, name="main"),
            Site.from_kubeconfig(kubeconfig, backup_context, name="backup"))


def record(results_file: str | os.PathLike[str] | None, data: dict[str, Any]) -> None:
    """Write a notebook's headline results (JSON) quietly: a notebook's last cell shows
    nothing (what a person sees is above it; ``dr-kit notebooks run`` reads the file)."""
    if results_file:
        p = Path(results_file)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2, default=str))


# -- 01 protect a namespace -----------------------------------------------------------

def protect_and_wait(main: Site, backup: Site, namespace: str, *, backend: str = "csi-addons",
                     timeout: float = 60.0, progress: Progress | None = None) -> dict[str, Any]:
    """Label the namespace; wait until the backup site has a bound PVC for each protected
    PVC and the group replicates.  Returns what happened and how long it took."""
    from dr_kit.operator.cli import protect

    main_pvcs = main.pvcs(namespace)
    if main_pvcs.empty:
        raise InvalidInput(f"namespace {namespace!r} has no PVCs at the main site; nothing to protect")
    t0 = time.monotonic()
    status = protect(namespace, kubeconfig=main.kubeconfig, context=main.context, lab_dir=None,
                     backend=backend, wait=timeout)
    if status.get("state") in ("Refused",):
        raise DrKitError(f"the operator refused to protect {namespace}: {status.get('message')}")
    wanted = set(main_pvcs["name"])

    def check() -> tuple[bool, str]:
        b = backup.pvcs(namespace)
        bound = set(b[b["phase"] == "Bound"]["name"]) if not b.empty else set()
        rep = main.replication(namespace)
        replicating = (not rep.empty) and bool(rep["completed"].fillna(False).astype(bool).any()
                                               or rep["state"].isin(["PAIR"]).any())
        missing = sorted(wanted - bound)
        return (not missing and replicating,
                f"backup PVCs bound: {len(wanted & bound)}/{len(wanted)}" + ("" if replicating else ", group not replicating yet"))

    wait_until(check, task=f"protecting {namespace}", timeout=timeout, progress=progress)
    seconds = time.monotonic() - t0
    rep = main.replication(namespace)
    return {"namespace": namespace, "backend": backend, "protected_pvcs": sorted(wanted),
            "backup_pvcs": sorted(set(backup.pvcs(namespace)["name"]) & wanted),
            "seconds_to_protect": round(seconds, 3), "replication": rep.to_dict("records")}


# -- 02 journal lag --------------------------------------------------------------------

def lag_phases(main: Site, namespace: str, phases: list[dict[str, Any]], *,
               controls: LabControls | None = None, interval_s: float = 0.1,
               note: Note | None = print) -> pd.DataFrame:
    """Sample the lag through phases.  Each phase dict has ``name`` and ``seconds``, and
    optionally ``delay_ms``/``rate_mbit`` (the link) and ``tx_per_s`` (the shop's rate),
    which need the lab's ``controls``: without them such a phase is skipped, with a note,
    and listed in ``df.attrs["skipped"]`` — it is never sampled under its name."""
    from dr_kit.lag import sample_lag

    frames, skipped = [], []
    try:
        for ph in phases:
            link = {k: ph[k] for k in ("delay_ms", "rate_mbit") if k in ph}
            why = None
            if link:
                why = needs(f"phase {ph['name']!r}", controls, "link control")
            if why is None and "tx_per_s" in ph:
                why = needs(f"phase {ph['name']!r}", controls, "workload control")
            if why is not None:
                skipped.append({"phase": ph["name"], "why": why})
                if note:
                    note(why)
                continue
            if controls is not None and link:
                controls.set_link(**link)
            if controls is not None and "tx_per_s" in ph:
                controls.set_workload(ph["tx_per_s"])
            df = sample_lag(main, float(ph["seconds"]), interval_s, namespace)
            frames.append(df.assign(phase=ph["name"]))
    finally:
        if controls is not None:
            controls.set_link(delay_ms=0, rate_mbit=0)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs["skipped"] = skipped
    return out


def lag_summary(df: pd.DataFrame) -> pd.DataFrame:
    """p50/p99/max of time lag (ms, to 0.01 ms) and sequence lag per phase, unknown readings
    counted, and the figures' source (e.g. an upper bound from lastSyncTime, 1 s resolution)."""
    from dr_kit.lag import frame_source

    rows = []
    for phase, g in (df.groupby("phase", sort=False) if not df.empty else []):
        t = g["time_lag_s"].dropna() * 1000
        rows.append({"phase": phase, "samples": len(g), "unknown": int(g["time_lag_s"].isna().sum()),
                     "time_lag_ms_p50": round(float(t.quantile(0.5)), 2) if len(t) else None,
                     "time_lag_ms_p99": round(float(t.quantile(0.99)), 2) if len(t) else None,
                     "time_lag_ms_max": round(float(t.max()), 2) if len(t) else None,
                     "entries_max": g["sequence_lag"].max(), "source": frame_source(g)})
    return pd.DataFrame(rows, columns=["phase", "samples", "unknown", "time_lag_ms_p50",
                                       "time_lag_ms_p99", "time_lag_ms_max", "entries_max",
                                       "source"])


def collapse_experiment(trials: int, seed: int = 1, rate: float = 150.0) -> dict[str, Any]:
    from dr_kit import crashtest

    r = crashtest.run(trials, seed, rate=rate)
    return {k: v for k, v in r.items() if k != "details"} | {"details": r["details"]}


# -- 03 snapshot group -------------------------------------------------------------------

def snapshot_while_replicating(main: Site, backup: Site, namespace: str, name: str, *,
                               around_s: float = 2.0, progress: Progress | None = None) -> dict[str, Any]:
    """Take a snapshot group at the backup while the shop writes; lag sampled before and
    after to show replication was not disturbed.  A group of the same name from an earlier
    run is deleted first (with the PVCs restored from it), so the demo can be re-run."""
    from dr_kit.errors import NotFound
    from dr_kit.lag import sample_lag
    from dr_kit.snapshots import create_snapshot_group, delete_snapshot_group, get_snapshot_group

    try:
        get_snapshot_group(backup, name, namespace)
        delete_snapshot_group(backup, name, namespace, progress=progress)
    except NotFound:
        pass

    before = sample_lag(main, around_s, 0.1, namespace)
    t0 = time.monotonic()
    grp = create_snapshot_group(backup, name, namespace, progress=progress, main_site=main)
    seconds = time.monotonic() - t0
    after = sample_lag(main, around_s, 0.1, namespace)
    grp = get_snapshot_group(backup, name, namespace)
    members = _member_sequences(backup, grp.array_snapshot) if backup.has_array else {}
    return {"name": name, "ready": grp.ready, "sequence": grp.sequence, "position": grp.position,
            "point_time": grp.point_time, "lag_seconds_at_snapshot": grp.lag_seconds,
            "consistent": grp.consistent, "pvcs": list(grp.pvcs), "seconds_to_ready": round(seconds, 3),
            "member_sequences": members,
            "one_sequence": len(set(members.values())) == 1 if members else None,
            "lag_before": _frame_stats(before), "lag_after": _frame_stats(after),
            "lag_frame": pd.concat([before.assign(phase="before snapshot"), after.assign(phase="after snapshot")],
                                   ignore_index=True)}


def _member_sequences(backup: Site, array_snapshot: str | None) -> dict[str, int]:
    """Sequence number per member volume of the array snapshot group (all must be equal)."""
    if not array_snapshot:
        return {}
    info = backup.array.snapshot(array_snapshot)
    return {v: info.get("sequence") for v in info.get("volumes", [])}


def _frame_stats(df: pd.DataFrame) -> dict[str, Any]:
    from dr_kit.lag import frame_source

    t = df["time_lag_s"].dropna() * 1000
    return {"samples": len(df), "time_lag_ms_p50": float(t.quantile(0.5)) if len(t) else None,
            "time_lag_ms_p99": float(t.quantile(0.99)) if len(t) else None,
            "source": frame_source(df)}


# -- 04 snapshot analytics -------------------------------------------------------------

def analyse_snapshot(backup: Site, name: str, namespace: str, *, low_stock_threshold: int = 1500,
                     top_n: int = 10, window_days: int = 28, progress: Progress | None = None
                     ) -> dict[str, Any]:
    """Open the snapshot group's databases and run the analyses; every frame is stamped.

    The revenue trend and the mix cover whole days: the day of the snapshot's last order
    is still running (and, in the lab, carries the live workload), so it is left out of
    them and counted in ``today``."""
    from dr_kit import analytics
    from dr_kit.snapshots import open_snapshot_databases

    dbs = open_snapshot_databases(backup, name, namespace, progress=progress)
    cover = analytics.stock_cover(dbs, window_days)
    last = cover.attrs.get("window_end")
    today = str(last)[:10] if last else None
    trend_all = analytics.revenue_trend(dbs)
    frames = {
        "by_day": analytics.revenue_by_day(dbs),
        "by_category": analytics.revenue_by_category(dbs),
        "by_channel": analytics.revenue_by_channel(dbs),
        "top_products": analytics.top_products(dbs, n=top_n),
        "units_vs_stock": analytics.units_vs_stock(dbs),
        "low_stock": analytics.low_stock(dbs, threshold=low_stock_threshold),
        "days_of_cover": analytics.days_of_cover(dbs),
        "reconciliation": analytics.reconciliation(dbs),
        "trend": analytics.revenue_trend(dbs, until=today) if today else trend_all,
        "mix_category": analytics.mix_over_time(dbs, "category", "week", until=today),
        "mix_channel": analytics.mix_over_time(dbs, "channel", "week", until=today),
        "abc": analytics.abc_classes(dbs),
        "cover": cover,
        "reorder": analytics.reorder_list(dbs, window_days),
    }
    t = trend_all[trend_all["day"] == today] if today else trend_all.iloc[0:0]
    prov = dbs.provenance
    return {"dbs": dbs, "frames": frames, "provenance": prov, "stamp": prov.stamp(),
            "window_days": window_days,
            "today": {"day": today, "orders": int(t["orders"].sum()),
                      "revenue": float(t["revenue"].sum())}}


def trend_table(trend: pd.DataFrame, days: int = 7) -> pd.DataFrame:
    """The last ``days`` whole days of the revenue trend, rounded, by day."""
    t = trend.tail(days)
    return pd.DataFrame({"orders": t["orders"].to_numpy(),
                         "revenue": t["revenue"].round(0).astype("int64").to_numpy(),
                         "7-day avg": t["revenue_ma7"].round(0).astype("Int64").to_numpy(),
                         "WoW %": t["wow_pct"].round(1).to_numpy()},
                        index=pd.Index(t["day"], name="day"))


def abc_table(abc: pd.DataFrame, examples: int = 2) -> pd.DataFrame:
    """One row per ABC class: products, share of revenue, its best sellers."""
    rows = {}
    for c in "ABC":
        part = abc[abc["abc"] == c]
        rows[c] = {"products": len(part), "revenue %": round(float(part["share_pct"].sum()), 1),
                   "best sellers": ", ".join(part["name"].head(examples).astype(str))}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")


def reorder_table(reorder: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The most urgent reorders, by product, with short headings."""
    r = reorder.head(n)
    return pd.DataFrame({"category": r["category"].to_numpy(), "on hand": r["on_hand"].to_numpy(),
                         "sold/day": r["units_per_day"].round(1).to_numpy(),
                         "cover days": r["cover_days"].round(1).to_numpy(),
                         "order units": r["order_units"].to_numpy()},
                        index=pd.Index(r["name"], name="product"))


def reconciliation_table(rec: pd.DataFrame) -> pd.DataFrame:
    """The two rules of a consistent image, checked over every product, with their figures."""
    bad_sales = rec[rec["difference"] > 0]
    bad_balance = rec[rec["balance_diff"] != 0]
    rows = {
        "every unit sold left the stock": {
            "figures": f"{int(rec['units_sold'].sum()):,} units sold, "
                       f"{int(rec['units_moved'].sum()):,} moved out",
            "products breaking it": len(bad_sales), "holds": bad_sales.empty},
        "on hand + moved out - restocked = initial": {
            "figures": f"{len(rec) - len(bad_balance)} of {len(rec)} products balance",
            "products breaking it": len(bad_balance), "holds": bad_balance.empty},
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("rule")


def what_changed(main: Site, backup: Site, namespace: str, since: str, before: Any, *,
                 progress: Progress | None = None) -> dict[str, Any]:
    """What changed since the snapshot group ``since`` (opened as ``before``): a snapshot
    group taken now (``<since>-now``), compared, then deleted again (it only served the
    comparison)."""
    from dr_kit import analytics
    from dr_kit.errors import NotFound
    from dr_kit.snapshots import (
        create_snapshot_group,
        delete_snapshot_group,
        get_snapshot_group,
        opened_snapshot,
    )

    later = f"{since}-now"[:63]
    try:
        get_snapshot_group(backup, later, namespace)
        delete_snapshot_group(backup, later, namespace, progress=progress)
    except NotFound:
        pass
    create_snapshot_group(backup, later, namespace, main_site=main, progress=progress)
    try:
        with opened_snapshot(backup, later, namespace, progress=progress) as after:
            comp = analytics.compare_snapshots(before, after)
    finally:
        delete_snapshot_group(backup, later, namespace, progress=progress)
    s = comp.summary
    sm = s["stock_movements"]
    table = pd.DataFrame({"change": {
        "new orders": f"{s['new_orders']:,}",
        "revenue": f"{s['revenue_delta']:+,.2f}",
        "units sold": f"{s['units_delta']:+,}",
        "stock movements": f"{sm['new']:,} new ({sm['units_out']:,} units out, "
                           f"{sm['units_in']:,} in)",
        "units on hand": f"{s['on_hand_delta']:+,}",
        "both images consistent": "yes" if s["consistent"] else "NO"}}).rename_axis("what")
    return {"later": later, "comparison": comp, "summary": s, "table": table,
            "stamp": comp.by_channel.attrs.get("stamp", "")}


def wait_for_orders(controls: LabControls | None, minimum: int, timeout: float = 60.0,
                    note: Note | None = print) -> int | None:
    """Wait until the lab's shop has committed at least ``minimum`` orders; returns the
    last order id (None, with a note, without the lab's controls)."""
    why = needs("waiting for the shop's orders", controls, "shop status")
    if why is not None or controls is None:
        if note and why:
            note(why)
        return None
    lab = controls

    def check() -> tuple[bool, str]:
        n = lab.committed_orders()
        if n is None:
            return False, "shop not reporting yet"
        return n >= minimum, f"{n} orders"

    try:
        wait_until(check, task="orders in the shop", timeout=timeout)
    except DrKitError as e:
        raise Unavailable(f"the shop did not reach {minimum} orders: {e}") from None
    return lab.committed_orders()


# -- 06 many applications ----------------------------------------------------------------

MAX_APPLICATIONS = 1000
MAX_PVCS_PER_APPLICATION = 100  # a VolumeGroupReplication holds at most 100 PVCs


def application_names(prefix: str, namespaces: int) -> list[str]:
    """``prefix-000``, ``prefix-001``, ...: the namespaces of :func:`create_applications`."""
    return [f"{prefix}-{i:03d}" for i in range(namespaces)]


def _count(value: Any, what: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise InvalidInput(f"{what} must be a whole number from 1 to {hi}, not {value!r}")
    return value


def create_applications(main: Site, prefix: str, namespaces: int, pvcs_per_namespace: int, *,
                        size: str = "16Mi", storage_class: str | None = None,
                        timeout: float = 120.0, progress: Progress | None = None) -> pd.DataFrame:
    """``namespaces`` namespaces (``prefix-NNN``) of ``pvcs_per_namespace`` PVCs each
    (``data-N``), created through the main site's API as an application's manifests would
    be; returns their PVCs once all are bound (existing ones are kept: re-runnable)."""
    from dr_kit.errors import Conflict
    from dr_kit.kube import parse_quantity

    _count(namespaces, "namespaces", MAX_APPLICATIONS)
    _count(pvcs_per_namespace, "pvcs_per_namespace", MAX_PVCS_PER_APPLICATION)
    parse_quantity(size)  # one clear error before anything is created
    names = application_names(prefix, namespaces)
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    for ns in names:
        for kind, body in [("Namespace", {"metadata": {"name": ns, "labels": {
                               "app.kubernetes.io/part-of": prefix}}})] + [
                ("PersistentVolumeClaim", {"metadata": {"name": f"data-{j}", "namespace": ns},
                                           "spec": spec}) for j in range(pvcs_per_namespace)]:
            try:
                main.kube.create(kind, body)
            except Conflict:
                pass
    wanted = set(names)
    total = namespaces * pvcs_per_namespace

    def check() -> tuple[bool, str]:
        df = main.pvcs()
        n = int(((df["namespace"].isin(wanted)) & (df["phase"] == "Bound")).sum()) if not df.empty else 0
        return n >= total, f"{n}/{total} PVCs bound"

    wait_until(check, task=f"creating {namespaces} applications", timeout=timeout, progress=progress)
    df = main.pvcs()
    return df[df["namespace"].isin(wanted)].reset_index(drop=True)


def protect_applications(main: Site, backup: Site, names: list[str], *, timeout: float = 120.0,
                         interval_s: float = 0.5, progress: Progress | None = None,
                         note: Note | None = print) -> pd.DataFrame:
    """Label every namespace at once, then follow each one: when the operator says it is
    Protected, when all its backup PVCs are bound.  One row per namespace (seconds since
    the first label; None when it did not happen within ``timeout``); ``df.attrs`` holds
    ``labelled_in_s`` (writing the labels) and ``seconds`` (labels -> all done)."""
    from dr_kit.operator.cli import protect, protection_table

    if not names:
        raise InvalidInput("no namespaces to protect")
    kw: dict[str, Any] = {"kubeconfig": main.kubeconfig, "context": main.context, "lab_dir": None}
    pvcs = main.pvcs()
    wanted = {ns: set(pvcs[pvcs["namespace"] == ns]["name"]) for ns in names}
    t0 = time.monotonic()
    for ns in names:
        protect(ns, **kw)
    labelled = time.monotonic() - t0
    protected: dict[str, float] = {}
    bound: dict[str, float] = {}
    state: dict[str, str] = {}

    def check() -> tuple[bool, str]:
        now = time.monotonic() - t0
        for row in protection_table(**kw):
            if row["namespace"] in wanted:
                state[row["namespace"]] = row["state"]
                if row["state"] == "Protected":
                    protected.setdefault(row["namespace"], now)
        b = backup.pvcs()
        for ns, want in wanted.items():
            have = set(b[(b["namespace"] == ns) & (b["phase"] == "Bound")]["name"]) if not b.empty else set()
            if want <= have:
                bound.setdefault(ns, now)
        done = len(protected) == len(names) and len(bound) == len(names)
        return done, f"{len(protected)}/{len(names)} protected, {len(bound)}/{len(names)} with their backup PVCs bound"

    try:
        wait_until(check, task=f"protecting {len(names)} namespaces", timeout=timeout,
                   interval=interval_s, progress=progress)
    except Unavailable as e:  # the rows say which ones did not make it
        if note:
            note(f"not all protected in time: {e}")
    protected = {ns: round(s, 3) for ns, s in protected.items()}  # seconds, to the millisecond
    bound = {ns: round(s, 3) for ns, s in bound.items()}
    rows = [{"namespace": ns, "pvcs": len(wanted[ns]), "state": state.get(ns, "unknown"),
             "protected_s": protected.get(ns), "backup_bound_s": bound.get(ns)} for ns in names]
    df = pd.DataFrame(rows, columns=["namespace", "pvcs", "state", "protected_s", "backup_bound_s"])
    done = [*protected.values(), *bound.values()]
    df.attrs["labelled_in_s"] = round(labelled, 3)
    df.attrs["seconds"] = round(max(done), 3) if len(protected) == len(bound) == len(names) else None
    return df


def applications_table(apps: pd.DataFrame) -> pd.DataFrame:
    """Per namespace of :func:`create_applications`: its PVCs and how many are bound."""
    if apps.empty:
        return pd.DataFrame(columns=["pvcs", "bound"])
    return apps.assign(bound=apps["phase"] == "Bound").groupby("namespace").agg(
        pvcs=("name", "count"), bound=("bound", "sum"))


def many_applications_summary(names: list[str], pvcs_per_namespace: int,
                              timeline: pd.DataFrame | None, samples: pd.DataFrame,
                              ranking: pd.DataFrame, *, cleaned_up: bool) -> dict[str, Any]:
    """What notebook 06 records: how many were protected and bound, in how long, the
    worst-lagging group and the lag's source."""
    df = timeline
    return {
        "namespaces": len(names), "pvcs_per_namespace": pvcs_per_namespace,
        "protected": int(df["protected_s"].notna().sum()) if df is not None else 0,
        "backup_bound": int(df["backup_bound_s"].notna().sum()) if df is not None else 0,
        "seconds_to_protect_all": df.attrs.get("seconds") if df is not None else None,
        "labelled_in_s": df.attrs.get("labelled_in_s") if df is not None else None,
        "groups_ranked": len(ranking),
        "ranked_namespaces": sorted(set(ranking["namespace"].dropna()) & set(names)),
        "worst": ({k: (None if pd.isna(v) else v) for k, v in
                   ranking.iloc[0][["group", "namespace", "p99_ms"]].to_dict().items()}
                  if len(ranking) else None),
        "lag_source": sorted(set(samples["source"])) if not samples.empty else [],
        "cleaned_up": bool(cleaned_up)}


def many_applications_line(summary: dict[str, Any]) -> str:
    """One line of :func:`many_applications_summary`."""
    w = summary.get("worst")
    if w:
        p99 = w.get("p99_ms")
        worst = f"{w.get('group')} (namespace {w.get('namespace')}), p99 " + \
            ("unknown" if p99 is None else f"{p99:g} ms")
    else:
        worst = "none measured"
    took = summary.get("seconds_to_protect_all")
    return (f"many applications: {summary.get('protected')}/{summary.get('namespaces')} namespaces "
            f"of {summary.get('pvcs_per_namespace')} PVCs protected at once "
            f"{'in ' + format(took, 'g') + ' s' if took is not None else '(not all in time)'}; "
            f"worst lag: {worst}")


def lag_ranking(samples: pd.DataFrame) -> pd.DataFrame:
    """Per consistency group: lag percentiles of the samples, worst first (unknown-only
    groups first: nothing says their backup is current; then by p99, then max)."""
    from dr_kit.lag import lag_percentiles

    if samples.empty:
        return pd.DataFrame(columns=["rank", "group", "namespace", "samples", "unknown", "p50",
                                     "p99", "max", "source"])
    p = lag_percentiles(samples, q=(50, 99))
    p["_unknown_only"] = p["p99"].isna()
    p = p.sort_values(["_unknown_only", "p99", "max"], ascending=[False, False, False],
                      na_position="first").drop(columns="_unknown_only").reset_index(drop=True)
    for c in ("p50", "p99", "max"):
        p[c] = (p[c] * 1000).round(2)  # ms
    p.insert(0, "rank", range(1, len(p) + 1))
    return p.rename(columns={"p50": "p50_ms", "p99": "p99_ms", "max": "max_ms"})


def remove_applications(main: Site, backup: Site, names: list[str], *, timeout: float = 120.0,
                        progress: Progress | None = None) -> None:
    """Unprotect the namespaces and delete them at both sites (the demo's clean-up: the
    backup copies go too; their PVs are retained by the storage class's policy)."""
    from dr_kit.errors import NotFound
    from dr_kit.operator.cli import unprotect

    kw: dict[str, Any] = {"kubeconfig": main.kubeconfig, "context": main.context, "lab_dir": None}
    for ns in names:
        try:
            unprotect(ns, **kw)
        except NotFound:
            pass

    def unprotected() -> tuple[bool, str]:
        rep = main.replication()
        left = sorted(set(rep["namespace"]) & set(names)) if not rep.empty else []
        return not left, f"{len(left)} replication resources left"

    wait_until(unprotected, task="removing the replication", timeout=timeout, progress=progress)
    for site in (main, backup):
        for ns in names:
            site.kube.delete("Namespace", ns, missing_ok=True)

    def gone() -> tuple[bool, str]:
        left = [ns for site in (main, backup) for ns in names if site.namespace(ns) is not None]
        return not left, f"{len(left)} namespaces still terminating"

    wait_until(gone, task="deleting the namespaces", timeout=timeout, progress=progress)


# -- 05 DR operations ------------------------------------------------------------------------

class DrCycle:
    """One DR cycle of a namespace for the walkthrough: a DR test, relocate and back, a
    failover and a failback, each through :class:`dr_kit.dr.ops.DR`, with a timeline of
    which site is primary and when the application was down.

    The steps that need a lab (the disaster itself, and the lab's application processes
    for moves of production) are skipped without the lab's controls, with a note; the DR
    test then runs without starting the application copy."""

    def __init__(self, main: Site, backup: Site, namespace: str, *,
                 controls: LabControls | None = None, note: Note | None = print,
                 progress: Note | None = print) -> None:
        from dr_kit.dr.ops import DR

        self.dr = DR(main, backup, namespace, controls=controls, progress=progress)
        self.controls = controls
        self.note = note
        self.t0 = time.time()
        self.results: dict[str, Any] = {}
        self.skipped: list[dict[str, str]] = []
        self.timeline: list[dict[str, Any]] = []  # one row per operation (and the outage)
        self.primary_at_start = self.dr.state().primary

    def _skip(self, what: str, why: str | None) -> bool:
        if why is None:
            return False
        self.skipped.append({"step": what, "why": why})
        if self.note:
            self.note(why)
        return True

    def _op(self, name: str, fn: Callable[[], dict[str, Any]], **extra: Any) -> dict[str, Any]:
        before = self.dr.state().primary
        t = time.time() - self.t0
        out = fn()
        end = time.time() - self.t0
        self.timeline.append({"op": name, "start_s": round(t, 3), "end_s": round(end, 3),
                              "from": before, "primary": out.get("primary", before),
                              "rto_s": out.get("rto_s") or out.get("test_rto_s"), **extra})
        self.results[name] = out
        return out

    def _lab_only(self, what: str, cli: str) -> str | None:
        if self.controls is not None:
            return None
        return (f"skipped: {what} runs only on the lab in this walkthrough (it needs the lab's "
                f"controls); on real clusters: dr-kit dr {cli} {self.dr.namespace} --kubeconfig K "
                "--main-context M --backup-context B")

    def test(self, seconds: float = 3.0) -> dict[str, Any] | None:
        """The DR test (with the lag sampled throughout); without the lab's application
        control the clones are made and verified but no application copy is started."""
        run_app = self.controls is not None
        if not run_app and self.note:
            self.note("note: the test application is not started on this path (the lab's shop runs "
                      "only under the lab's controls); on real clusters `dr-kit dr test` starts a copy "
                      f"of the namespace's Deployments in {self.dr.namespace}-drtest")
        return self._op("test", lambda: self.dr.test(seconds=seconds, run_application=run_app))

    def relocate(self, name: str = "relocate") -> dict[str, Any] | None:
        if self._skip(name, self._lab_only(f"moving production ({name})", "relocate")):
            return None
        return self._op(name, self.dr.relocate)

    def failover(self, outage_s: float = 1.5) -> dict[str, Any] | None:
        """The disaster (the lab's main site killed after ``outage_s`` of writes the backup
        never got: the link is cut first), the failover, and the old main's return."""
        if self._skip("failover", self._lab_only("the failover (a site disaster)", "failover")):
            return None
        assert self.controls is not None
        primary = self.dr.state().primary
        self.controls.set_link(cut=True)
        time.sleep(outage_s)
        crash = self.controls.crash_site(primary)
        self.controls.set_link(cut=False)
        self.timeline.append({"op": "disaster", "start_s": round(crash["at"] - self.t0 - outage_s, 3),
                              "end_s": round(crash["at"] - self.t0, 3), "from": primary,
                              "primary": primary, "rto_s": None, "note": "link cut, then site killed"})
        out = self._op("failover", self.dr.failover, disaster_at_s=round(crash["at"] - self.t0, 3))
        serving = self.timeline[-1]["end_s"]
        out["rto_from_disaster_s"] = round(serving - (crash["at"] - self.t0), 3)
        self.controls.restart_site(primary)
        self.timeline.append({"op": "site down", "site": primary, "start_s": round(crash["at"] - self.t0, 3),
                              "end_s": round(time.time() - self.t0, 3), "from": primary,
                              "primary": out.get("primary"), "rto_s": None,
                              "note": "killed, then brought back (fenced)"})
        return out

    def failback(self) -> dict[str, Any] | None:
        if self._skip("failback", self._lab_only("the failback", "failback")):
            return None
        out = self._op("failback", self.dr.failback)
        fo = self.results.get("failover")
        if fo and out.get("rpo_orders") is not None and not out.get("rpo_estimated"):
            fo["rpo_orders_counted"] = out["rpo_orders"]  # the old main's image, read once it returned
        return out

    def status_text(self) -> str:
        from dr_kit.dr.ops import status_text

        st = self.dr.status()
        st["history"] = []
        return status_text(st)

    def summary(self) -> dict[str, Any]:
        """Headline figures for the record: every operation's result and checks."""
        r = self.results
        checks: dict[str, bool] = {}
        t = r.get("test")
        if t:
            checks["test consistent, replication undisturbed"] = bool(
                t.get("consistent") is not False and not t.get("replication_suspended")
                and not t.get("resync_after"))
        for k in ("relocate", "relocate back"):
            if r.get(k):
                checks[f"{k}: RPO 0, no copy"] = r[k].get("rpo_orders") == 0 and r[k].get("resync_bytes") == 0
        if r.get("failover"):
            checks["failover serving"] = bool(r["failover"].get("rto_s"))
        if r.get("failback"):
            fb = r["failback"]
            checks["failback resync <= 10% of volumes"] = bool(
                fb.get("resync_bytes") is not None and fb.get("volume_bytes")
                and fb["resync_bytes"] <= 0.10 * fb["volume_bytes"])
            checks["failback consistent"] = fb.get("consistent") is True
        trimmed = {k: {kk: vv for kk, vv in v.items() if kk != "lag_series"} for k, v in r.items() if v}
        return {"ok": all(checks.values()) and bool(checks), "checks": checks, **trimmed,
                "rto_s": (r.get("failover") or {}).get("rto_s"),
                "rpo_orders_lost": (r.get("failback") or {}).get("rpo_orders"),
                "timeline": self.timeline, "skipped": self.skipped,
                "primary_at_start": self.primary_at_start, "primary_at_end": self.dr.state().primary}

    def table(self) -> pd.DataFrame:
        """One row per operation: primary after it, RPO, RTO, bytes resynchronised."""
        rows = []
        for name, out in self.results.items():
            if not out:
                continue
            row = next((r for r in self.timeline if r["op"] == name), {})
            rows.append({"operation": name, "primary": out.get("primary", row.get("primary")),
                         "rpo_orders": out.get("rpo_orders_counted", out.get("rpo_orders")),
                         "rpo_estimated": out.get("rpo_estimated"),
                         "rto_s": out.get("rto_s", out.get("test_rto_s")),
                         "resync_bytes": out.get("resync_bytes"), "volume_bytes": out.get("volume_bytes"),
                         "consistent": out.get("consistent")})
        return pd.DataFrame(rows, columns=["operation", "primary", "rpo_orders", "rpo_estimated",
                                           "rto_s", "resync_bytes", "volume_bytes", "consistent"])

    def figures(self, name: str) -> pd.DataFrame:
        """One operation's figures (the keys ``dr-kit dr ... --json`` documents) as a table of
        figure, value and unit; empty when the operation did not run on this path."""
        out = self.results.get(name) or {}
        rows = [{"figure": k, "value": _cell(out.get(k)), "unit": unit}
                for k, unit in DR_FIGURES.get(name.replace(" back", ""), ()) if k in out]
        return pd.DataFrame(rows, columns=["figure", "value", "unit"])


DR_FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "test": (("consistent", ""), ("test_rto_s", "s"), ("test_transactions", "transactions"),
             ("replication_suspended", ""), ("resync_after", ""), ("lag_p99_ms_before_test", "ms"),
             ("lag_p99_ms_during_test", "ms"), ("sequence_continued", "")),
    "relocate": (("primary", "site"), ("rpo_orders", "orders"), ("rto_s", "s"), ("final_sync_s", "s"),
                 ("resync_bytes", "bytes"), ("position_demoted", "journal position"),
                 ("position_promoted", "journal position")),
    "failover": (("primary", "site"), ("rpo_orders", "orders"), ("rpo_orders_max", "orders"),
                 ("rpo_estimated", ""), ("rto_s", "s"), ("rto_from_disaster_s", "s"),
                 ("consistent", ""), ("fenced", "")),
    "failback": (("primary", "site"), ("resync_bytes", "bytes"), ("volume_bytes", "bytes"),
                 ("rpo_orders", "orders"), ("lost_writes", "writes"), ("rto_s", "s"),
                 ("consistent", "")),
}


SNAPSHOT_FIGURES = (("name", ""), ("sequence", "journal sequence"), ("position", "journal position"),
                    ("point_time", "main-site time"), ("one_sequence", "all members"),
                    ("lag_seconds_at_snapshot", "s"), ("lag_before", "ms, p50 / p99"),
                    ("lag_after", "ms, p50 / p99"))


def sites_table(main: Site, backup: Site, what: What = "pvs", namespace: str | None = None) -> Any:
    """Both sites' view of ``what`` (``pvs``, ``pvcs``, ``replication``) next to each
    other, each as a table that fits half a page (:func:`dr_kit.ui.compact`)."""
    from dr_kit import ui
    from dr_kit.sites import side_by_side

    a, b = side_by_side(main, backup, what, namespace=namespace)
    return ui.side_by_side(ui.compact(a, what), ui.compact(b, what))


def snapshot_table(taken: dict[str, Any]) -> pd.DataFrame:
    """A snapshot group's consistency point and the lag around it, as figure, value, unit."""
    def value(v: Any) -> str:
        if isinstance(v, dict):  # the lag sampled around it (_frame_stats)
            return f"{_cell(v.get('time_lag_ms_p50'))} / {_cell(v.get('time_lag_ms_p99'))}"
        return _cell(v)

    rows = [{"figure": k, "value": value(taken.get(k)), "unit": unit}
            for k, unit in SNAPSHOT_FIGURES if k in taken]
    return pd.DataFrame(rows, columns=["figure", "value", "unit"])


def _cell(v: Any) -> str:
    """A figure as text for a table column of mixed values (no float noise)."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if v is None:
        return "unknown"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, pd.Timestamp):
        from dr_kit.snapshots import utc_text

        return f"{utc_text(v)} UTC"
    return str(v)
