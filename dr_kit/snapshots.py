"""Snapshot groups at the backup site: freeze a protected namespace at one consistency point.

A snapshot group is a VolumeGroupSnapshot selecting the namespace's replicated PVCs (the
operator's consistency-group label, which the backup copies carry too).  The storage
plug-in freezes all of them at one journal sequence number while replication continues;
a driver that publishes it (:mod:`dr_kit.published`; the lab's plug-in does) records that
consistency point (sequence, main-site time of the last applied write) and the time lag
at that moment on the object.

    snap = create_snapshot_group(backup, "snap-1", "shop")       # waits until ready
    list_snapshot_groups(backup, "shop")                          # DataFrame
    restore_snapshot_group(backup, "snap-1", "shop")              # {pvc: restored pvc}
    dbs = open_snapshot_databases(backup, "snap-1", "shop")       # analytics.ShopDatabases
    delete_snapshot_group(backup, "snap-1", "shop")               # restores, then the group

Restored PVCs are writable clones (``dataSource: VolumeSnapshot``), named
``<group>-<pvc>`` and labelled ``dr-kit.io/restored-from=<group>``, so that deleting the
group deletes them first (the array keeps a snapshot while a clone of it exists).  The
databases on them are reached the way an analyst reaches them on any cluster: through
the URLs a DBA publishes (:mod:`dr_kit.published`; in the lab its storage plug-in plays
that part).

Bad input ends in one :class:`~dr_kit.errors.DrKitError` line and changes nothing: an
unknown namespace or snapshot group, a namespace that is not protected, a group that is
not ready, a name that is already taken.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from dr_kit import published
from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.kube import SNAP_GROUP
from dr_kit.operator import schedule
from dr_kit.sites import (
    GROUP_LABEL,
    STATUS_ANNOTATION,
    Progress,
    Site,
    _json_annotation,
    snapshot_row,
    wait_until,
)

RESTORED_FROM = schedule.RESTORED_FROM  # on a restored PVC: its snapshot group
RESTORED_PVC = "dr-kit.io/restored-pvc"  # on a restored PVC: the PVC it is a copy of
SNAPSHOT_OF = schedule.SNAPSHOT_OF  # on a VolumeGroupSnapshot: the consistency group
MANAGED_BY = schedule.MANAGED_BY
DEFAULT_CLASS_ANNOTATION = schedule.DEFAULT_CLASS_ANNOTATION

STOCK_URL_ENV = "DR_KIT_STOCK_URL"
SALES_URL_ENV = "DR_KIT_SALES_URL"
DB_SECRET_ENV = "DR_KIT_DB_SECRET"
SECRET_GONE_S = 5.0  # opened_snapshot: how long to wait for its restores' Secret to go

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class SnapshotGroup:
    """One VolumeGroupSnapshot as dr_kit sees it (a row of :func:`list_snapshot_groups`)."""

    name: str
    namespace: str
    ready: bool
    created: pd.Timestamp | None
    sequence: int | None
    position: str | None
    point_time: pd.Timestamp | None
    lag_seconds: float | None
    consistent: bool | None
    array_snapshot: str | None = None
    error: str | None = None
    pvcs: tuple[str, ...] = ()
    restored: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def t(v: pd.Timestamp | None) -> str | None:
            return None if v is None else v.isoformat()

        return {"name": self.name, "namespace": self.namespace, "ready": self.ready,
                "created": t(self.created), "sequence": self.sequence, "position": self.position,
                "point_time": t(self.point_time), "lag_seconds": self.lag_seconds,
                "consistent": self.consistent, "array_snapshot": self.array_snapshot,
                "error": self.error, "pvcs": list(self.pvcs), "restored": dict(self.restored)}


def _group_from(vgs: dict[str, Any], restored: dict[str, str]) -> SnapshotGroup:
    r = snapshot_row(vgs)
    vols = tuple(v for v in (r["volumes"] or "").split(",") if v)
    return SnapshotGroup(
        name=r["name"], namespace=r["namespace"], ready=r["ready"], created=r["created"],
        sequence=r["sequence"], position=r["position"], point_time=r["point_time"],
        lag_seconds=r["lag_seconds"], consistent=r["consistent"],
        array_snapshot=r["array_snapshot"], error=r["error"], pvcs=vols, restored=restored)


# -- checks ------------------------------------------------------------------------------------


def _check_name(name: Any, what: str = "snapshot group name") -> str:
    if not isinstance(name, str) or not name or len(name) > 200 or not _NAME.match(name):
        raise InvalidInput(f"{what} {name!r} is not valid: lowercase letters, digits, '-' and "
                           "'.', starting and ending with a letter or digit, at most 200")
    return name


def _get_vgs(site: Site, name: str, namespace: str) -> dict[str, Any] | None:
    return site.kube.get("VolumeGroupSnapshot", name, namespace)


def _require_vgs(site: Site, name: str, namespace: str) -> dict[str, Any]:
    _check_name(name)
    site.require_namespace(namespace)
    vgs = _get_vgs(site, name, namespace)
    if vgs is None:
        raise NotFound(f"snapshot group {name!r} does not exist in namespace {namespace} at the "
                       f"{site.name} site (dr-kit snapshot list --namespace {namespace})")
    return vgs


def _require_ready(vgs: dict[str, Any]) -> None:
    st = vgs.get("status") or {}
    m = vgs["metadata"]
    if m.get("deletionTimestamp"):
        raise Conflict(f"snapshot group {m['name']!r} is being deleted")
    err = st.get("error") or {}
    if err:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise Conflict(f"snapshot group {m['name']!r} failed: {msg}")
    if not st.get("readyToUse"):
        raise Conflict(f"snapshot group {m['name']!r} is not ready yet; wait for it "
                       "(dr-kit snapshot list shows READY)")


def protected_pvcs(backup: Site, namespace: str, main_site: Site | None = None
                   ) -> tuple[str, list[dict[str, Any]]]:
    """The consistency group name and the replicated PVCs of ``namespace`` at the backup.

    Raises NotFound for an unknown namespace and Conflict for one that is not protected
    (checked at the main site too when it is given: ``main_site``).
    """
    main = main_site
    if main is not None:
        ns = main.require_namespace(namespace)
        status = _json_annotation(ns["metadata"], STATUS_ANNOTATION)
        state = status.get("state")
        if state not in ("Protected", "Degraded"):
            why = f"state {state}" if state else "the operator has not protected it"
            raise Conflict(f"namespace {namespace} is not protected ({why}); protect it first: "
                           f"dr-kit protect {namespace}")
    if backup.namespace(namespace) is None:
        if main is None:
            raise NotFound(f"namespace {namespace!r} does not exist at the {backup.name} site")
        raise Conflict(f"namespace {namespace} has no copy at the {backup.name} site yet; wait "
                       "for the operator to finish protecting it")
    pvcs = [p for p in backup.kube.items("PersistentVolumeClaim", namespace)
            if (p["metadata"].get("labels") or {}).get(GROUP_LABEL)
            and not (p["metadata"].get("labels") or {}).get(RESTORED_FROM)]
    if not pvcs:
        raise Conflict(f"namespace {namespace} has no replicated PVCs at the {backup.name} site "
                       f"(no PVC labelled {GROUP_LABEL}): it is not protected")
    groups = sorted({p["metadata"]["labels"][GROUP_LABEL] for p in pvcs})
    if len(groups) > 1:
        raise Conflict(f"namespace {namespace} has PVCs of several consistency groups at the "
                       f"{backup.name} site ({', '.join(groups)})")
    unbound = sorted(p["metadata"]["name"] for p in pvcs
                     if (p.get("status") or {}).get("phase") != "Bound")
    if unbound:
        raise Conflict(f"replicated PVCs {', '.join(unbound)} of namespace {namespace} are not "
                       f"bound at the {backup.name} site yet")
    return groups[0], sorted(pvcs, key=lambda p: p["metadata"]["name"])


def _snapshot_class(site: Site, wanted: str | None) -> str:
    classes = site.kube.items("VolumeGroupSnapshotClass")
    names = sorted(c["metadata"]["name"] for c in classes)
    if wanted:
        if wanted not in names:
            raise NotFound(f"VolumeGroupSnapshotClass {wanted!r} does not exist at the "
                           f"{site.name} site (classes: {', '.join(names) or 'none'})")
        return wanted
    default = [c["metadata"]["name"] for c in classes
               if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"]
    if len(default) == 1:
        return default[0]
    if len(names) == 1:
        return names[0]
    raise InvalidInput(f"no default VolumeGroupSnapshotClass at the {site.name} site "
                       f"(classes: {', '.join(names) or 'none'}); name one with snapshot_class=")


# -- create / list -------------------------------------------------------------------------------


def create_snapshot_group(backup_site: Site, name: str, namespace: str, *, wait: bool = True,
                          timeout: float = 60.0, progress: Progress | None = None,
                          snapshot_class: str | None = None, main_site: Site | None = None,
                          allow_inconsistent: bool = False) -> SnapshotGroup:
    """Freeze ``namespace``'s replicated PVCs at the backup site as one snapshot group.

    With ``wait``, returns once the group is ready (consistency point known); a group the
    storage plug-in refuses is removed again and reported as an error.  A group the
    storage reports as *not* consistent (taken during an initial copy or a resync) is
    removed too, unless ``allow_inconsistent`` (then it is kept and listed as such).
    """
    _check_name(name)
    group, pvcs = protected_pvcs(backup_site, namespace, main_site)
    if _get_vgs(backup_site, name, namespace) is not None:
        raise Conflict(f"snapshot group {name!r} already exists in namespace {namespace}")
    cls = _snapshot_class(backup_site, snapshot_class)
    body = {"metadata": {"name": name, "namespace": namespace,
                         "labels": {**MANAGED_BY, SNAPSHOT_OF: group}},
            "spec": {"volumeGroupSnapshotClassName": cls,
                     "source": {"selector": {"matchLabels": {GROUP_LABEL: group}}}}}
    created = backup_site.kube.create("VolumeGroupSnapshot", body)
    if not wait:
        return _group_from(_get_vgs(backup_site, name, namespace) or created, {})
    failure: list[str] = []

    def check() -> tuple[bool, str]:
        vgs = _get_vgs(backup_site, name, namespace)
        if vgs is None:
            failure.append("it disappeared")
            return True, "gone"
        st = vgs.get("status") or {}
        err = st.get("error")
        if err:
            failure.append(str(err.get("message")) if isinstance(err, dict) else str(err))
            return True, "failed"
        if st.get("readyToUse"):
            return True, f"ready ({len(pvcs)} volumes)"
        return False, "waiting for the storage plug-in"

    wait_until(check, task=f"snapshot group {name}", timeout=timeout, progress=progress,
               on_timeout=lambda m: Unavailable(
                   f"snapshot group {name} is not ready after {timeout:g} s ({m}); it stays "
                   f"requested: dr-kit snapshot list --namespace {namespace}"))
    if failure:
        _delete_vgs(backup_site, name, namespace)
        raise Conflict(f"snapshot group {name} failed and was removed: {failure[0]}")
    group_ = _group_from(_get_vgs(backup_site, name, namespace) or created, {})
    if group_.consistent is False and not allow_inconsistent:
        delete_snapshot_group(backup_site, name, namespace, timeout=timeout)
        raise Conflict(f"the backup of namespace {namespace} was not consistent when snapshot "
                       f"group {name} was taken (initial copy or resync running), so it was "
                       "removed; try again when `dr-kit lag` shows the group in state pair")
    return group_


def _restored_pvcs(site: Site, namespace: str, name: str | None = None
                   ) -> list[dict[str, Any]]:
    sel = f"{RESTORED_FROM}={name}" if name else RESTORED_FROM
    return site.kube.items("PersistentVolumeClaim", namespace, label_selector=sel)


def get_snapshot_group(site: Site, name: str, namespace: str) -> SnapshotGroup:
    """One snapshot group (NotFound when it does not exist)."""
    vgs = _require_vgs(site, name, namespace)
    restored = {p["metadata"]["labels"].get(RESTORED_PVC, ""): p["metadata"]["name"]
                for p in _restored_pvcs(site, namespace, name)}
    return _group_from(vgs, restored)


def list_snapshot_groups(site: Site, namespace: str, *, now: pd.Timestamp | None = None
                         ) -> pd.DataFrame:
    """Snapshot groups of ``namespace``: readiness, age, consistency point, lag then, restores.

    Columns: those of :meth:`Site.snapshots` plus ``age_s`` (seconds since the group was
    created, at ``now``), ``scheduled`` (taken by the namespace's snapshot schedule) and
    ``restored`` (the restored PVCs).
    """
    df = site.snapshots(namespace)
    restored: dict[str, list[str]] = {}
    for p in _restored_pvcs(site, namespace):
        restored.setdefault(p["metadata"]["labels"][RESTORED_FROM], []).append(
            p["metadata"]["name"])
    scheduled = {o["metadata"]["name"] for o in site.kube.items(
        "VolumeGroupSnapshot", namespace,
        label_selector=f"{schedule.SCHEDULE_LABEL}={schedule.SCHEDULE_CONFIGMAP}")} \
        if len(df) else set()
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    df["age_s"] = pd.array([(now - c).total_seconds() if pd.notna(c) else None
                            for c in df["created"]], dtype="Float64")
    df["scheduled"] = [n in scheduled for n in df["name"]]
    df["restored"] = [",".join(sorted(restored.get(n, []))) or None for n in df["name"]]
    return df


def age_text(seconds: float | None) -> str:
    """``42s``, ``7m``, ``3h``, ``2d`` (as kubectl shows ages); ``-`` when unknown."""
    if seconds is None or pd.isna(seconds):
        return "-"
    s = max(0, int(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def utc_text(t: Any) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS.mmm`` in UTC (to the millisecond)."""
    ts = pd.Timestamp(t)
    ts = ts.tz_convert("UTC") if ts.tzinfo is not None else ts
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:23]


OVERVIEW_COLUMNS = ["name", "ready", "consistent", "age", "sequence", "point (UTC)", "lag then (s)",
                    "restored"]


def snapshot_group_overview(groups: pd.DataFrame) -> pd.DataFrame:
    """:func:`list_snapshot_groups`' frame as a table that fits a page (what ``dr-kit
    snapshot list`` prints): one row per group, text cells, units in the headers."""
    rows = []
    for r in groups.to_dict("records"):
        def known(k: str, r: dict[str, Any] = r) -> Any:
            v = r.get(k)
            return None if v is None or v is pd.NA or (not isinstance(v, str) and pd.isna(v)) else v

        point = known("point_time")
        lag = known("lag_seconds")
        rows.append({
            "name": r["name"],
            "ready": "yes" if known("ready") else ("error" if known("error") else "no"),
            "consistent": {True: "yes", False: "NO"}.get(known("consistent"), "unknown"),
            "age": age_text(known("age_s")),
            "sequence": str(int(known("sequence"))) if known("sequence") is not None else "-",
            "point (UTC)": utc_text(point) if point is not None else "unknown",
            "lag then (s)": f"{float(lag):.3f}" if lag is not None else "unknown",
            "restored": known("restored") or "-",
        })
    return pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)


# -- schedules ---------------------------------------------------------------------------------


def get_snapshot_schedule(site: Site, namespace: str) -> schedule.Schedule | None:
    """The namespace's snapshot schedule at ``site`` (None when there is none).

    A schedule whose ConfigMap holds a bad value raises InvalidInput naming it."""
    site.require_namespace(namespace)
    cm = site.kube.get("ConfigMap", schedule.SCHEDULE_CONFIGMAP, namespace)
    if cm is None:
        return None
    try:
        return schedule.Schedule.parse(cm.get("data"))
    except InvalidInput as e:
        raise InvalidInput(f"the snapshot schedule of {namespace} (ConfigMap "
                           f"{schedule.SCHEDULE_CONFIGMAP}) is not valid: {e}") from None


def set_snapshot_schedule(backup_site: Site, namespace: str, every: str, keep: str | int, *,
                          snapshot_class: str | None = None, ready_within: str | None = None,
                          main_site: Site | None = None) -> schedule.Schedule:
    """Record a schedule for ``namespace`` at the backup site: a snapshot group every
    ``every`` (``"15m"``; units s, m, h), the newest ``keep`` kept.

    The backup site's operator takes them (:mod:`dr_kit.operator.schedule`).  Everything
    is checked before anything is written: the values, that the namespace is protected,
    the snapshot class.  Setting it again replaces it.
    """
    sched = schedule.Schedule(
        schedule.parse_duration(every), schedule.parse_keep(keep),
        snapshot_class or None,
        schedule.parse_duration(ready_within, "--ready-within") if ready_within
        else schedule.DEFAULT_READY_WITHIN_S)
    protected_pvcs(backup_site, namespace, main_site)
    _snapshot_class(backup_site, snapshot_class)
    body = schedule.configmap(namespace, sched)
    kube = backup_site.kube
    if kube.get("ConfigMap", schedule.SCHEDULE_CONFIGMAP, namespace) is None:
        kube.create("ConfigMap", body)
    else:  # replace: keys the new schedule does not set are removed
        data: dict[str, str | None] = dict.fromkeys(("class", "ready-within"))
        data.update(body["data"])
        kube.patch("ConfigMap", schedule.SCHEDULE_CONFIGMAP,
                   {"metadata": {"labels": body["metadata"]["labels"]}, "data": data},
                   namespace)
    return sched


def remove_snapshot_schedule(site: Site, namespace: str) -> bool:
    """Remove the namespace's schedule (its snapshot groups stay); False when there was none."""
    site.require_namespace(namespace)
    return bool(site.kube.delete("ConfigMap", schedule.SCHEDULE_CONFIGMAP, namespace,
                                 missing_ok=True))


# -- restore -----------------------------------------------------------------------------------


def _volume_snapshots(site: Site, vgs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Source PVC -> VolumeSnapshot of a ready group, from the standard objects only.

    The members are the VolumeSnapshots whose ``status.volumeGroupSnapshotName`` is the
    group; each one's content has a snapshot handle, the group's content pairs snapshot
    handles with volume handles, and a volume handle is a PV bound to the source PVC.
    """
    m = vgs["metadata"]
    name, ns = m["name"], m["namespace"]
    kube = site.kube
    mine = [s for s in kube.items("VolumeSnapshot", ns)
            if (s.get("status") or {}).get("volumeGroupSnapshotName") == name]
    group_content = kube.get("VolumeGroupSnapshotContent", (vgs.get("status") or {}).get(
        "boundVolumeGroupSnapshotContentName") or "") if mine else None
    gst = (group_content or {}).get("status") or {}
    volume_of = {p.get("snapshotHandle"): p.get("volumeHandle")
                 for p in (gst.get("volumeSnapshotInfoList")  # v1beta2
                           or gst.get("volumeSnapshotHandlePairList") or [])}  # v1beta1
    claims = {((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle"):
              ((pv.get("spec") or {}).get("claimRef") or {})
              for pv in kube.items("PersistentVolume")} if mine else {}
    out: dict[str, dict[str, Any]] = {}
    for s in mine:
        content = kube.get("VolumeSnapshotContent", (s.get("status") or {}).get(
            "boundVolumeSnapshotContentName") or "") or {}
        src = (content.get("spec") or {}).get("source") or {}
        handle = src.get("volumeHandle") or volume_of.get(
            (content.get("status") or {}).get("snapshotHandle") or src.get("snapshotHandle"))
        ref = claims.get(handle) or {}
        if ref.get("name") and ref.get("namespace") == ns:
            out[ref["name"]] = s
    return out


def restored_name(group: str, pvc: str) -> str:
    return f"{group}-{pvc}"[:253].rstrip("-.")


def restore_snapshot_group(site: Site, name: str, namespace: str, *, wait: bool = True,
                           timeout: float = 60.0, progress: Progress | None = None
                           ) -> dict[str, str]:
    """Writable PVCs from the group's snapshots; returns ``{source pvc: restored pvc}``.

    Idempotent: PVCs already restored from this group are kept.  With ``wait``, returns
    when every restored PVC is Bound.
    """
    vgs = _require_vgs(site, name, namespace)
    _require_ready(vgs)
    snaps = _volume_snapshots(site, vgs)
    if not snaps:
        raise Conflict(f"snapshot group {name!r} has no volume snapshots to restore")
    kube = site.kube
    out: dict[str, str] = {}
    created: list[str] = []
    try:
        for pvc_name, vs in sorted(snaps.items()):
            target = restored_name(name, pvc_name)
            existing = kube.get("PersistentVolumeClaim", target, namespace)
            if existing is not None:
                if (existing["metadata"].get("labels") or {}).get(RESTORED_FROM) != name:
                    raise Conflict(f"PVC {target} already exists in namespace {namespace} and is "
                                   f"not a restore of snapshot group {name}")
                out[pvc_name] = target
                continue
            source = kube.get("PersistentVolumeClaim", pvc_name, namespace) or {}
            sspec = source.get("spec") or {}
            size = (vs.get("status") or {}).get("restoreSize") or (
                (sspec.get("resources") or {}).get("requests") or {}).get("storage")
            body: dict[str, Any] = {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": target, "namespace": namespace,
                             "labels": {**MANAGED_BY, RESTORED_FROM: name,
                                        RESTORED_PVC: pvc_name}},
                "spec": {"accessModes": sspec.get("accessModes") or ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": str(size)}},
                         "dataSource": {"apiGroup": SNAP_GROUP, "kind": "VolumeSnapshot",
                                        "name": vs["metadata"]["name"]}}}
            if sspec.get("storageClassName"):
                body["spec"]["storageClassName"] = sspec["storageClassName"]
            kube.create("PersistentVolumeClaim", body)
            created.append(target)
            out[pvc_name] = target
    except DrKitError:
        for target in created:  # all or nothing
            kube.delete("PersistentVolumeClaim", target, namespace, missing_ok=True)
        raise
    if wait:
        def check() -> tuple[bool, str]:
            phases = {t: ((kube.get("PersistentVolumeClaim", t, namespace) or {}).get("status")
                          or {}).get("phase")
                      for t in out.values()}
            pending = sorted(t for t, ph in phases.items() if ph != "Bound")
            return (not pending, "all Bound" if not pending else f"waiting for {', '.join(pending)}")

        wait_until(check, task=f"restore {name}", timeout=timeout, progress=progress)
    return out


# -- delete ------------------------------------------------------------------------------------


def _delete_vgs(site: Site, name: str, namespace: str) -> None:
    site.kube.delete("VolumeGroupSnapshot", name, namespace, missing_ok=True)


def delete_snapshot_group(site: Site, name: str, namespace: str, *, wait: bool = True,
                          timeout: float = 60.0, progress: Progress | None = None
                          ) -> dict[str, Any]:
    """Delete the restored PVCs made from the group, then the group itself.

    With ``wait``, returns when the group is gone (its array snapshot deleted).
    """
    _require_vgs(site, name, namespace)
    kube = site.kube
    restored = _restored_pvcs(site, namespace, name)
    for p in restored:
        kube.delete("PersistentVolumeClaim", p["metadata"]["name"], namespace, missing_ok=True)
    _delete_vgs(site, name, namespace)
    if wait:
        def check() -> tuple[bool, str]:
            left = [p["metadata"]["name"] for p in _restored_pvcs(site, namespace, name)]
            vgs = _get_vgs(site, name, namespace)
            if vgs is None and not left:
                return True, "deleted"
            err = ((vgs or {}).get("status") or {}).get("error") or {}
            msg = err.get("message") if isinstance(err, dict) else None
            return False, msg or ("waiting for " + ", ".join(left) if left else
                                  "waiting for the storage plug-in")

        wait_until(check, task=f"delete {name}", timeout=timeout, progress=progress)
    return {"deleted": name, "namespace": namespace,
            "restored_pvcs_deleted": sorted(p["metadata"]["name"] for p in restored)}


# -- databases ---------------------------------------------------------------------------------


def _secret_urls(site: Site, namespace: str, secret: str
                 ) -> tuple[str | None, str | None, str | None] | None:
    """(stock url, sales url, password) from a Secret; None when it does not exist."""
    obj = site.kube.get("Secret", secret, namespace)
    if obj is None:
        return None

    def value(key: str) -> str | None:
        if not ((obj.get("data") or {}).get(key) or (obj.get("stringData") or {}).get(key)):
            return None
        text = published.secret_text(obj, key)
        if text is None:
            raise InvalidInput(f"Secret {secret}: key {key} is not valid base64 text")
        return text

    return (value(published.STOCK_URL_KEY), value(published.SALES_URL_KEY),
            value(published.PASSWORD_KEY))


def _wait_for_database_secret(site: Site, namespace: str, name: str, timeout: float,
                              progress: Progress | None
                              ) -> tuple[str | None, str | None, str | None] | None:
    secret = published.databases_secret(name)
    got: list[tuple[str | None, str | None, str | None]] = []

    def check() -> tuple[bool, str]:
        urls = _secret_urls(site, namespace, secret)
        if urls is not None and urls[0] and urls[1]:
            got.append(urls)
            return True, f"Secret {secret} published"
        return False, f"waiting for Secret {secret} (its databases' URLs)"

    class _NotPublished(Unavailable):
        pass

    try:
        wait_until(check, task=f"databases of snapshot group {name}", timeout=timeout,
                   progress=progress, interval=0.2, on_timeout=_NotPublished)
    except _NotPublished:
        return None
    return got[0]


def _urls(site: Site, namespace: str, name: str, stock_url: str | None, sales_url: str | None,
          secret: str | None, *, restore: bool, timeout: float, progress: Progress | None
          ) -> tuple[str, str, str | None, str]:
    """(stock url, sales url, password, where they came from)."""
    password = None
    stock_url = stock_url or os.environ.get(STOCK_URL_ENV) or None
    sales_url = sales_url or os.environ.get(SALES_URL_ENV) or None
    secret = secret or os.environ.get(DB_SECRET_ENV) or None
    origin = "given URLs"
    if (not stock_url or not sales_url) and secret:
        got = _secret_urls(site, namespace, secret)
        if got is None:
            raise NotFound(f"Secret {secret!r} does not exist in namespace {namespace} at the "
                           f"{site.name} site")
        stock_url, sales_url = stock_url or got[0], sales_url or got[1]
        password, origin = got[2], f"Secret {namespace}/{secret}"
    if not stock_url or not sales_url:
        # what the DBA (in the lab: the storage plug-in) publishes for a restored group
        conventional = published.databases_secret(name)
        got = _secret_urls(site, namespace, conventional)
        if got is None or not (got[0] and got[1]):
            restored = _restored_pvcs(site, namespace, name)
            if not restored and not restore:
                raise Conflict(f"snapshot group {name} is not restored; restore it first: "
                               f"dr-kit snapshot restore {name} --namespace {namespace}")
            if not restored:
                restore_snapshot_group(site, name, namespace, timeout=timeout, progress=progress)
            got = _wait_for_database_secret(site, namespace, name, timeout, progress)
        if got is not None:
            stock_url, sales_url = stock_url or got[0], sales_url or got[1]
            password, origin = got[2], f"Secret {namespace}/{conventional}"
    if not stock_url or not sales_url:
        raise InvalidInput(f"no database URLs for snapshot group {name}: no Secret "
                           f"{published.databases_secret(name)} in namespace {namespace} at "
                           f"the {site.name} site after {timeout:g} s (a DBA publishes it once "
                           f"the restored volumes serve databases); pass stock_url and "
                           f"sales_url, set {STOCK_URL_ENV} and {SALES_URL_ENV}, or name a "
                           "Secret with keys stock-url and sales-url (secret=)")

    def fill(u: str) -> str:
        return u.replace("{snapshot}", name).replace("{namespace}", namespace)

    return fill(stock_url), fill(sales_url), password, origin


def open_snapshot_databases(site: Site, name: str, namespace: str, *, restore: bool = True,
                            stock_url: str | None = None, sales_url: str | None = None,
                            secret: str | None = None,
                            on_inconsistent: Literal["warn", "raise"] = "warn",
                            timeout: float = 60.0, progress: Progress | None = None) -> Any:
    """The snapshot group's stock and sales databases as :class:`analytics.ShopDatabases`.

    The databases' SQLAlchemy URLs come from ``stock_url``/``sales_url``, else
    ``$DR_KIT_STOCK_URL``/``$DR_KIT_SALES_URL``, else the Secret ``secret``
    (``$DR_KIT_DB_SECRET``), else the Secret ``<group>-databases`` that a DBA publishes in
    the namespace once the restored volumes serve databases (:mod:`dr_kit.published`; in
    the lab the storage plug-in does, with ``drkit+array://`` URLs that open SQLite over
    the backup array's data path).  When that Secret is missing the group is restored
    first (``restore=False`` refuses instead) and the Secret awaited.  Keys ``stock-url``,
    ``sales-url``, optional ``password``; ``{snapshot}`` and ``{namespace}`` in a URL are
    filled in.  Passwords are never printed.  Every result carries the snapshot's
    consistency point and the lag at snapshot time.
    """
    from dr_kit import analytics
    from dr_kit.sqlite import dialect

    dialect.register()  # drkit+array:// URLs (also an entry point of the installed package)
    if on_inconsistent not in ("warn", "raise"):
        raise InvalidInput(f"on_inconsistent must be 'warn' or 'raise', not {on_inconsistent!r}")
    vgs = _require_vgs(site, name, namespace)
    _require_ready(vgs)
    row = snapshot_row(vgs)
    s_url, l_url, password, origin = _urls(site, namespace, name, stock_url, sales_url, secret,
                                           restore=restore, timeout=timeout, progress=progress)
    if origin == "given URLs":
        where = f"stock={analytics.mask_url(s_url)} sales={analytics.mask_url(l_url)}"
    else:
        schemes = sorted({u.split("://", 1)[0] for u in (s_url, l_url)})
        where = f"databases from {origin} ({', '.join(schemes)})"
    source = f"{site.name} site, snapshot group {namespace}/{name}, {where}"
    return analytics.open_databases(
        s_url, l_url, password=password, snapshot=name, sequence=row["sequence"],
        point_time=(row["point_time"].to_pydatetime(warn=False)
                    if row["point_time"] is not None else None),
        lag_seconds=row["lag_seconds"], on_inconsistent=on_inconsistent, source=source)


@contextlib.contextmanager
def opened_snapshot(site: Site, name: str, namespace: str, *, progress: Progress | None = None,
                    timeout: float = 60.0) -> Iterator[Any]:
    """:func:`open_snapshot_databases` for the time of a ``with`` block: the databases are
    closed at the end, and the restored PVCs this call made (if it had to restore the
    group) are deleted again, so a scheduled group is not kept beyond its rotation.  Their
    databases' Secret, published for those restores, is awaited gone (a few seconds at
    most), so the next open does not find URLs of volumes that no longer exist."""
    secret = published.databases_secret(name)
    before = {p["metadata"]["name"] for p in _restored_pvcs(site, namespace, name)}
    had_secret = site.kube.get("Secret", secret, namespace) is not None
    dbs = None
    try:
        dbs = open_snapshot_databases(site, name, namespace, progress=progress, timeout=timeout)
        yield dbs
    finally:
        if dbs is not None:
            dbs.close()
        mine = [p["metadata"]["name"] for p in _restored_pvcs(site, namespace, name)
                if p["metadata"]["name"] not in before]
        for pvc in mine:
            site.kube.delete("PersistentVolumeClaim", pvc, namespace, missing_ok=True)
        if mine and not had_secret:
            deadline = time.monotonic() + SECRET_GONE_S
            while site.kube.get("Secret", secret, namespace) is not None and \
                    time.monotonic() < deadline:
                time.sleep(0.1)


__all__ = ["SnapshotGroup", "create_snapshot_group", "list_snapshot_groups", "snapshot_group_overview",
           "get_snapshot_group", "restore_snapshot_group", "delete_snapshot_group",
           "open_snapshot_databases", "opened_snapshot", "protected_pvcs", "restored_name",
           "get_snapshot_schedule", "set_snapshot_schedule", "remove_snapshot_schedule",
           "RESTORED_FROM", "RESTORED_PVC"]
