"""A site: one Kubernetes cluster reached through a kubeconfig context (or in-cluster).

The notebooks show the main and the backup site side by side; analysts and the CLI reach
both through :class:`Site` objects::

    main = Site.from_kubeconfig("~/.kube/config", "prod-east", name="main")
    backup = Site.from_kubeconfig("~/.kube/config", "dr-west", name="backup")
    side_by_side(main, backup, "pvcs", namespace="shop")

Every read returns a tidy pandas DataFrame (one row per object, fixed columns, times as
UTC timestamps, ``None``/``NaN`` where a value is unknown).  A site knows its storage
array's management endpoint only when the storage driver publishes one
(:mod:`dr_kit.published`: a Secret named by the StorageClass); otherwise
:attr:`Site.array` says so instead of guessing one.  The lab is reached exactly like
this, through its kubeconfig (``dr_kit.lab.site("main")`` is a shorthand).

Every failure (a bad kubeconfig or context, an unreachable API server, refused
credentials) is one :class:`~dr_kit.errors.DrKitError` line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from dr_kit import published
from dr_kit.errors import DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.kube import GSNAP_GROUP, GSNAP_VERSIONS, HSPC_GROUP, REPL_GROUP, SNAP_GROUP, Kube
from dr_kit.kube import api_client as _api_client
from dr_kit.operator.policy import DEFAULT_LABEL_KEY, DEFAULT_LABEL_VALUE, Policy

# API groups the helpers read (one place: dr_kit.kube.RESOURCES)
REPL = (REPL_GROUP, "v1alpha1")
HSPC = (HSPC_GROUP, "v1")
SNAP = (SNAP_GROUP, "v1")

GROUP_LABEL = Policy().group_label_key  # the operator's label on every protected PVC
STATUS_ANNOTATION = Policy().status_annotation  # the operator's status on the namespace
REPLICATED_LABEL = published.REPLICATED_FROM  # a backup-site copy (when the driver says so)


# -- progress ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a wait, for a progress display (CLI dots, a notebook widget, a log).

    ``task`` names what is being waited for (``"snapshot group snap1 ready"``), ``message``
    the current state; ``done`` is set on the last event of a task.
    """

    task: str
    message: str
    elapsed_s: float
    done: bool = False
    fraction: float | None = None

    def __str__(self) -> str:
        tail = f" ({self.elapsed_s:.1f} s)"
        return f"{self.task}: {self.message}{tail}"


Progress = Callable[[ProgressEvent], None]


def wait_until(check: Callable[[], tuple[bool, str]], *, task: str, timeout: float,
               progress: Progress | None = None, interval: float = 0.1,
               on_timeout: Callable[[str], DrKitError] | None = None) -> str:
    """Poll ``check() -> (done, message)`` until done; report each poll to ``progress``.

    Raises ``on_timeout(last message)`` (default :class:`Unavailable`) after ``timeout`` s.
    """
    t0 = time.monotonic()
    last_report = -1.0
    while True:
        done, message = check()
        elapsed = time.monotonic() - t0
        if done:
            if progress:
                progress(ProgressEvent(task, message, elapsed, done=True))
            return message
        if elapsed > timeout:
            if on_timeout:
                raise on_timeout(message)
            raise Unavailable(f"{task}: not done after {timeout:g} s (last: {message})")
        if progress and elapsed - last_report >= 0.5:
            progress(ProgressEvent(task, message, elapsed))
            last_report = elapsed
        time.sleep(interval)


# -- array access (what the storage driver publishes) -----------------------------------


@dataclass(frozen=True)
class ArrayAccess:
    """A storage array's management endpoint as its driver publishes it (see
    :mod:`dr_kit.published`): the Secret named by a StorageClass."""

    storage_class: str
    management_url: str
    secret: str  # namespace/name
    token: str | None = field(default=None, repr=False)

    def client(self, timeout: float = 10.0) -> Any:
        from dr_kit.storage.client import ArrayClient

        extra: dict[str, Any] = {"token": self.token} if self.token else {}
        return ArrayClient(self.management_url, timeout=timeout, **extra)

    def __str__(self) -> str:
        return (f"array {self.management_url} (Secret {self.secret} of StorageClass "
                f"{self.storage_class})")


# -- sites ---------------------------------------------------------------------------------


class Site:
    """One site: a kubeconfig context (or the pod's service account) and what it serves.

    The API client is made at construction, so a bad kubeconfig or context fails here; an
    unreachable API server fails on the first call.  ``array_url`` names an array
    management endpoint explicitly (when the driver publishes none, or to override it).
    """

    def __init__(self, name: str, *, kubeconfig: str | os.PathLike[str] | None = None,
                 context: str | None = None, in_cluster: bool = False,
                 array_url: str | None = None, timeout: float = 10.0) -> None:
        self.name = name
        self.context = context
        self.kubeconfig = str(Path(kubeconfig).expanduser()) if kubeconfig else None
        self.array_url = array_url
        self.timeout = timeout
        api = _api_client(self.kubeconfig, context, in_cluster=in_cluster)
        self.host = api.configuration.host
        self.kube = Kube(api, timeout=timeout, where=f"the {name} site's API server at {self.host}")
        self._arrays: tuple[float, dict[str, ArrayAccess]] | None = None

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | os.PathLike[str] | None = None,
                        context: str | None = None, *, name: str | None = None,
                        array_url: str | None = None, timeout: float = 10.0) -> Site:
        """A cluster through a kubeconfig context (default kubeconfig: ``$KUBECONFIG`` or
        ``~/.kube/config``)."""
        return cls(name or context or "default", kubeconfig=kubeconfig, context=context,
                   array_url=array_url, timeout=timeout)

    @classmethod
    def in_cluster(cls, name: str = "local", *, timeout: float = 10.0) -> Site:
        """The cluster this process runs in (its service account)."""
        return cls(name, in_cluster=True, timeout=timeout)

    # -- identity ----------------------------------------------------------------------
    def __repr__(self) -> str:
        where = f"context {self.context!r}" if self.context else "default context"
        return f"Site({self.name!r}, {where}, api {self.host})"

    def ping(self) -> dict[str, Any]:
        """The API server's version (raises when unreachable)."""
        return self.kube.version()

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.kube.get("Namespace", name)

    def require_namespace(self, name: str) -> dict[str, Any]:
        ns = self.namespace(name)
        if ns is None:
            raise NotFound(f"namespace {name!r} does not exist at the {self.name} site")
        return ns

    # -- the storage array, as published ------------------------------------------------
    def arrays(self, *, refresh: bool = False) -> dict[str, ArrayAccess]:
        """Storage class -> the array endpoint its driver publishes (see
        :mod:`dr_kit.published`); {} when none does or the Secrets may not be read."""
        now = time.monotonic()
        if not refresh and self._arrays is not None and (self._arrays[1] or
                                                         now - self._arrays[0] < 10.0):
            return self._arrays[1]
        found: dict[str, ArrayAccess] = {}
        for sc in self.kube.items("StorageClass"):
            params = sc.get("parameters") or {}
            name, ns = (params.get(published.SECRET_NAME_PARAM),
                        params.get(published.SECRET_NAMESPACE_PARAM))
            if not name or not ns:
                continue
            try:
                secret = self.kube.get("Secret", name, ns)
            except InvalidInput:  # forbidden: this user may not read the driver's Secret
                continue
            url = published.secret_text(secret or {}, published.MANAGEMENT_URL_KEY)
            if url:
                found[sc["metadata"]["name"]] = ArrayAccess(
                    sc["metadata"]["name"], url, f"{ns}/{name}",
                    published.secret_text(secret or {}, published.TOKEN_KEY))
        self._arrays = (now, found)
        return found

    def array_for(self, storage_class: str | None = None) -> ArrayAccess | None:
        """The published array of ``storage_class`` (or the only one the site publishes)."""
        if self.array_url:
            return ArrayAccess(storage_class or "-", self.array_url, "(given)")
        arrays = self.arrays()
        if storage_class is not None and storage_class in arrays:
            return arrays[storage_class]
        distinct = {a.management_url: a for a in arrays.values()}
        return next(iter(distinct.values())) if len(distinct) == 1 else None

    @property
    def has_array(self) -> bool:
        return self.array_for() is not None

    @property
    def array(self) -> Any:
        """The array's management API (:class:`~dr_kit.storage.client.ArrayClient`)."""
        access = self.array_for()
        if access is None:
            raise InvalidInput(f"the {self.name} site publishes no array management endpoint "
                               "(no StorageClass names a Secret with key "
                               f"{published.MANAGEMENT_URL_KEY}); dr_kit reads the replication "
                               "resources' status instead")
        return access.client(self.timeout)

    # -- frames ------------------------------------------------------------------------
    def namespaces(self) -> pd.DataFrame:
        """name, phase, protected (labelled for protection), protection state, created."""
        rows = []
        for ns in self.kube.items("Namespace"):
            m = ns["metadata"]
            status = _json_annotation(m, STATUS_ANNOTATION)
            rows.append({
                "name": m["name"], "phase": (ns.get("status") or {}).get("phase"),
                "protected": (m.get("labels") or {}).get(DEFAULT_LABEL_KEY) == DEFAULT_LABEL_VALUE,
                "protection_state": status.get("state"), "protection_message": status.get("message"),
                "created": _ts(m.get("creationTimestamp")),
            })
        return _frame(rows, NAMESPACE_COLUMNS, sort=["name"])

    def pvcs(self, namespace: str | None = None) -> pd.DataFrame:
        """One row per PVC: phase, volume, class, capacity, consistency group, data source."""
        if namespace:
            self.require_namespace(namespace)
        rows = []
        for p in self.kube.items("PersistentVolumeClaim", namespace):
            m, spec, st = p["metadata"], p.get("spec") or {}, p.get("status") or {}
            src = spec.get("dataSource") or spec.get("dataSourceRef") or {}
            labels = m.get("labels") or {}
            rows.append({
                "namespace": m["namespace"], "name": m["name"], "phase": st.get("phase"),
                "volume": spec.get("volumeName"), "storage_class": spec.get("storageClassName"),
                "capacity": _quantity((st.get("capacity") or {}).get("storage")
                                      or ((spec.get("resources") or {}).get("requests") or {})
                                      .get("storage")),
                "consistency_group": labels.get(GROUP_LABEL),
                "replicated_from": labels.get(REPLICATED_LABEL),
                "data_source": f"{src.get('kind')}/{src.get('name')}" if src else None,
                "created": _ts(m.get("creationTimestamp")),
            })
        return _frame(rows, PVC_COLUMNS, sort=["namespace", "name"])

    def pvs(self) -> pd.DataFrame:
        """One row per PV: claim, phase, capacity, class, reclaim policy, driver, volume handle."""
        rows = []
        for pv in self.kube.items("PersistentVolume"):
            m, spec, st = pv["metadata"], pv.get("spec") or {}, pv.get("status") or {}
            ref = spec.get("claimRef") or {}
            csi = spec.get("csi") or {}
            rows.append({
                "name": m["name"],
                "claim": f"{ref['namespace']}/{ref['name']}" if ref.get("name") else None,
                "phase": st.get("phase"),
                "capacity": _quantity((spec.get("capacity") or {}).get("storage")),
                "storage_class": spec.get("storageClassName"),
                "reclaim_policy": spec.get("persistentVolumeReclaimPolicy"),
                "driver": csi.get("driver"), "volume_handle": csi.get("volumeHandle"),
                "replicated_from": (m.get("labels") or {}).get(REPLICATED_LABEL),
                "created": _ts(m.get("creationTimestamp")),
            })
        return _frame(rows, PV_COLUMNS, sort=["claim", "name"])

    def replication(self, namespace: str | None = None) -> pd.DataFrame:
        """Replication resources: VolumeGroupReplications, VolumeReplications, Hitachi Replications.

        ``state`` is the resource's own state (Primary, PAIR, ...); ``completed``/``degraded``
        /``resyncing`` come from the conditions (None when the resource has none);
        ``last_sync_time`` is the consistency point the backup has reached,
        ``last_sync_duration_s`` and ``last_sync_bytes`` as the resource reports them.
        """
        if namespace:
            self.require_namespace(namespace)
        rows = [replication_row(kind, obj) for kind, obj in self.replication_objects(namespace)]
        return _frame(rows, REPLICATION_COLUMNS, sort=["namespace", "kind", "name"])

    def replication_objects(self, namespace: str | None = None
                            ) -> list[tuple[str, dict[str, Any]]]:
        """(kind, object) of every replication resource the cluster serves, in ``namespace``."""
        out: list[tuple[str, dict[str, Any]]] = []
        kinds = ("VolumeGroupReplication", "VolumeReplication", "Replication")
        served = self.kube.served_kinds(kinds)
        for kind in kinds:
            if kind in served:
                out += [(kind, obj) for obj in self.kube.items(kind, namespace)]
        return out

    def group_snapshot_version(self) -> str:
        """The VolumeGroupSnapshot API version to use (the cluster must serve one)."""
        served = self.kube.served_versions(GSNAP_GROUP)
        for v in GSNAP_VERSIONS:
            if v in served:
                return v
        raise NotFound(f"the {self.name} site does not serve {GSNAP_GROUP} (VolumeGroupSnapshot);"
                       " install the external-snapshotter group snapshot CRDs")

    def serves_group_snapshots(self) -> bool:
        return any(v in self.kube.served_versions(GSNAP_GROUP) for v in GSNAP_VERSIONS)

    def snapshots(self, namespace: str | None = None) -> pd.DataFrame:
        """VolumeGroupSnapshots: readiness, consistency point (sequence, time), lag at that moment.

        The consistency point and lag are what the storage driver publishes
        (:mod:`dr_kit.published`; the lab's plug-in does); a driver that publishes none leaves
        them None (``created`` is the snapshot's creation time).
        """
        if namespace:
            self.require_namespace(namespace)
        if not self.serves_group_snapshots():
            return _frame([], SNAPSHOT_COLUMNS)
        rows = [snapshot_row(o) for o in self.kube.items("VolumeGroupSnapshot", namespace)]
        return _frame(rows, SNAPSHOT_COLUMNS, sort=["namespace", "created", "name"])


# -- rows ----------------------------------------------------------------------------------

NAMESPACE_COLUMNS = ["name", "phase", "protected", "protection_state", "protection_message",
                     "created"]
PVC_COLUMNS = ["namespace", "name", "phase", "volume", "storage_class", "capacity",
               "consistency_group", "replicated_from", "data_source", "created"]
PV_COLUMNS = ["name", "claim", "phase", "capacity", "storage_class", "reclaim_policy", "driver",
              "volume_handle", "replicated_from", "created"]
REPLICATION_COLUMNS = ["namespace", "kind", "name", "state", "completed", "degraded", "resyncing",
                       "message", "last_sync_time", "last_sync_duration_s", "last_sync_bytes",
                       "pvcs"]
SNAPSHOT_COLUMNS = ["namespace", "name", "ready", "created", "sequence", "position", "point_time",
                    "lag_seconds", "consistent", "volumes", "array_snapshot", "error"]
KEYS = {"namespaces": ["name"], "pvcs": ["namespace", "name"], "pvs": ["claim", "name"],
        "replication": ["namespace", "kind", "name"], "snapshots": ["namespace", "name"]}


def _json_annotation(meta: dict[str, Any], key: str) -> dict[str, Any]:
    raw = (meta.get("annotations") or {}).get(key)
    try:
        v = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _ts(value: Any) -> pd.Timestamp | None:
    """An RFC 3339 time (or unix seconds) as a UTC timestamp; None when absent or unreadable."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)):
            return pd.Timestamp(float(value), unit="s", tz="UTC")
        t = pd.Timestamp(str(value))
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except (ValueError, TypeError):
        return None


def _quantity(q: Any) -> int | None:
    from dr_kit.kube import parse_quantity

    if q is None:
        return None
    try:
        return parse_quantity(q)
    except InvalidInput:
        return None


def parse_duration(value: Any) -> float | None:
    """Seconds in a Kubernetes/Go duration (``"1.5s"``, ``"2m3s"``, ``"150ms"``); None if not one."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    import re

    text = str(value).strip()
    parts = re.findall(r"([0-9]*\.?[0-9]+)(h|ms|us|µs|ns|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    mult = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * mult[u] for n, u in parts)


def _conditions(obj: dict[str, Any]) -> dict[str, bool]:
    return {c.get("type"): c.get("status") == "True"
            for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type")}


def replication_row(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    m, st, spec = obj["metadata"], obj.get("status") or {}, obj.get("spec") or {}
    cond = _conditions(obj)
    if kind == "Replication":  # Hitachi: one per PVC
        pvcs = spec.get("persistentVolumeClaimName")
        state = st.get("pairState")
    else:
        refs = st.get("persistentVolumeClaimsRefList") or []
        pvcs = ",".join(r.get("name", "") for r in refs) if refs else (
            (spec.get("dataSource") or {}).get("name"))
        state = st.get("state")
    return {
        "namespace": m.get("namespace"), "kind": kind, "name": m["name"], "state": state,
        "completed": cond.get("Completed"), "degraded": cond.get("Degraded"),
        "resyncing": cond.get("Resyncing"), "message": st.get("message"),
        "last_sync_time": _ts(st.get("lastSyncTime")),
        "last_sync_duration_s": parse_duration(st.get("lastSyncDuration")),
        "last_sync_bytes": st.get("lastSyncBytes"), "pvcs": pvcs or None,
    }


def snapshot_row(vgs: dict[str, Any]) -> dict[str, Any]:
    m, st = vgs["metadata"], vgs.get("status") or {}
    ann = m.get("annotations") or {}

    def num(key: str, cast: Callable[[str], Any]) -> Any:
        try:
            return cast(ann[key]) if ann.get(key) not in (None, "") else None
        except ValueError:
            return None

    consistent = ann.get(published.SNAPSHOT_CONSISTENT)
    err = st.get("error") or {}
    return {
        "namespace": m.get("namespace"), "name": m["name"], "ready": bool(st.get("readyToUse")),
        "created": _ts(st.get("creationTime") or m.get("creationTimestamp")),
        "sequence": num(published.SNAPSHOT_SEQUENCE, int),
        "position": ann.get(published.SNAPSHOT_POSITION) or None,
        "point_time": _ts(num(published.SNAPSHOT_TIME, float)),
        "lag_seconds": num(published.SNAPSHOT_LAG, float),
        "consistent": None if consistent in (None, "", "null") else consistent == "true",
        "volumes": ann.get(published.SNAPSHOT_VOLUMES) or None,
        "array_snapshot": ann.get(published.SNAPSHOT_ARRAY_SNAPSHOT) or None,
        "error": err.get("message") if isinstance(err, dict) else (str(err) if err else None),
    }


def _frame(rows: Iterable[dict[str, Any]], columns: list[str],
           sort: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=columns)
    for c in ("sequence", "last_sync_bytes", "capacity"):
        if c in df:
            df[c] = df[c].astype("Int64")
    for c in ("lag_seconds", "last_sync_duration_s"):
        if c in df:
            df[c] = df[c].astype("Float64")
    for c in ("completed", "degraded", "resyncing", "consistent"):
        if c in df:
            df[c] = df[c].astype("boolean")  # True / False / <NA> (unknown)
    for c in ("created", "point_time", "last_sync_time"):
        if c in df:
            df[c] = pd.to_datetime(df[c], utc=True)
    if sort and len(df):
        df = df.sort_values(sort, na_position="last", kind="stable").reset_index(drop=True)
    return df


# -- side by side ----------------------------------------------------------------------------

What = Literal["namespaces", "pvcs", "pvs", "replication", "snapshots"]


def frame(site: Site, what: What, namespace: str | None = None) -> pd.DataFrame:
    """``site.<what>(namespace)`` by name (``namespaces`` takes no namespace; ``pvs`` keeps
    the PVs claimed from ``namespace``, when given)."""
    if what not in KEYS:
        raise InvalidInput(f"what must be one of {', '.join(KEYS)}, not {what!r}")
    if what == "namespaces":
        return site.namespaces()
    if what == "pvs":
        df = site.pvs()
        if namespace:
            df = df[df["claim"].str.startswith(f"{namespace}/", na=False)].reset_index(drop=True)
        return df
    return getattr(site, what)(namespace)


def side_by_side(main: Site, backup: Site, what: What = "pvs", *, namespace: str | None = None,
                 how: Literal["pair", "frame"] = "pair"
                 ) -> tuple[pd.DataFrame, pd.DataFrame] | pd.DataFrame:
    """The same view of both sites, for display next to each other.

    ``how="pair"`` returns ``(main_frame, backup_frame)``; ``how="frame"`` one frame whose
    columns are ``(site, column)`` and whose rows are aligned on the objects' identity
    (namespace/name; the claim for PVs), so the backup copy of a PVC sits on the main
    PVC's row and a missing copy shows as an empty half.
    """
    if how not in ("pair", "frame"):
        raise InvalidInput(f"how must be 'pair' or 'frame', not {how!r}")
    a, b = frame(main, what, namespace), frame(backup, what, namespace)
    if how == "pair":
        return a, b
    key = KEYS[what][:1] if what == "pvs" else KEYS[what]

    def keyed(df: pd.DataFrame) -> pd.DataFrame:
        if what == "pvs":
            # a claim's row is its bound PV; a PV it let go of (Released: the claim was
            # deleted and made again, as restores are) keeps a row of its own
            claim = df["claim"].where(df["claim"].notna(), "(unclaimed) " + df["name"])
            bound = df["phase"].eq("Bound") | ~claim.duplicated(keep=False)
            df = df.assign(claim=claim.where(bound, claim + " (" + df["name"] + ")"))
        return df.set_index(key)

    names = (main.name, backup.name) if main.name != backup.name else ("left", "right")
    out = pd.concat({names[0]: keyed(a), names[1]: keyed(b)}, axis=1, join="outer")
    return out.sort_index()


__all__ = ["Site", "ArrayAccess", "ProgressEvent", "Progress", "side_by_side", "frame",
           "wait_until", "parse_duration", "GROUP_LABEL", "STATUS_ANNOTATION"]
