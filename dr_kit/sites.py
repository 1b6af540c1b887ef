"""A site: one Kubernetes cluster reached through a kubeconfig context, plus its storage array.

The notebooks show the main and the backup site side by side; analysts and the CLI reach
both through :class:`Site` objects::

    main, backup = Site.lab("main"), Site.lab("backup")          # the lab in .dr-lab
    prod = Site.from_kubeconfig("~/.kube/config", context="prod")  # a real cluster
    side_by_side(main, backup, "pvcs", namespace="shop")

Every read returns a tidy pandas DataFrame (one row per object, fixed columns, times as
UTC timestamps, ``None``/``NaN`` where a value is unknown).  In the lab a site also knows
its array's management endpoint (from ``lab.json``); on a real cluster it does not, and
says so (:attr:`Site.array` raises) instead of guessing one.

Every failure (a bad kubeconfig or context, an unreachable API server, refused
credentials) is one :class:`~dr_kit.errors.DrKitError` line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.lab.layout import ANNOTATION_PREFIX, DEFAULT_DIR, SITES, LabDir
from dr_kit.operator.policy import DEFAULT_LABEL_KEY, DEFAULT_LABEL_VALUE, Policy

# API groups the helpers read (one place)
REPL = ("replication.storage.openshift.io", "v1alpha1")
HSPC = ("hspc.hitachi.com", "v1")
SNAP = ("snapshot.storage.k8s.io", "v1")
GSNAP_GROUP = "groupsnapshot.storage.k8s.io"
GSNAP_VERSIONS = ("v1beta2", "v1", "v1beta1")  # the lab's plug-in watches v1beta2

GROUP_LABEL = Policy().group_label_key  # the operator's label on every protected PVC
STATUS_ANNOTATION = Policy().status_annotation  # the operator's status on the namespace
REPLICATED_LABEL = ANNOTATION_PREFIX + "replicated-from"  # lab: a backup-site copy


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


# -- Kubernetes access ---------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _api_message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message", ""))
    except (ValueError, TypeError, AttributeError):
        return _first_line(getattr(e, "reason", "") or "")


class KubeApi:
    """Thin access to one cluster: raw JSON dicts, a timeout on every call, one-line errors."""

    def __init__(self, api_client: Any, where: str, timeout: float = 10.0) -> None:
        from kubernetes import client as k8s

        self.api = api_client
        self.where = where
        self.timeout = timeout
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.apis = k8s.ApisApi(api_client)
        self._versions: dict[str, list[str]] | None = None

    def call(self, fn: Callable[..., Any], *args: Any, what: str = "", **kw: Any) -> Any:
        """Call a client method; the response body as a dict; 404 -> None."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kw)
            data = resp.data
            return json.loads(data) if data else {}
        except ApiException as e:
            if e.status == 404:
                return None
            msg = _api_message(e)
            doing = f" ({what})" if what else ""
            if e.status == 401:
                raise InvalidInput(f"{self.where} refused the kubeconfig credentials (HTTP 401)"
                                   f"{doing}; check the context's user/token") from None
            if e.status == 403:
                raise InvalidInput(f"{self.where}: forbidden{doing}: {msg}") from None
            if e.status == 409:
                raise Conflict(f"{self.where}: {msg or 'conflict'}{doing}") from None
            if e.status in (400, 422):
                raise InvalidInput(f"{self.where} rejected the request{doing}: {msg}") from None
            if e.status == 0 or e.status >= 500:
                raise Unavailable(f"{self.where} answered HTTP {e.status}{doing}: {msg}") from None
            raise DrKitError(f"{self.where}: HTTP {e.status} {e.reason}{doing}: {msg}") from None
        except (Urllib3Error, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise Unavailable(f"{self.where} is unreachable ({_first_line(str(reason))[:160]})"
                              ) from None

    # -- reads ---------------------------------------------------------------------------
    def items(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> list[dict[str, Any]]:
        r = self.call(fn, *args, **kw)
        return [] if r is None else list(r.get("items") or [])

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.call(self.core.read_namespace, name)

    def require_namespace(self, name: str, site: str) -> dict[str, Any]:
        ns = self.namespace(name)
        if ns is None:
            raise NotFound(f"namespace {name!r} does not exist at the {site} site")
        return ns

    def pvcs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            return self.items(self.core.list_namespaced_persistent_volume_claim, namespace)
        return self.items(self.core.list_persistent_volume_claim_for_all_namespaces)

    def pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.call(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def pvs(self) -> list[dict[str, Any]]:
        return self.items(self.core.list_persistent_volume)

    def served_versions(self, group: str) -> list[str]:
        """Versions the cluster serves for an API group ([] when it does not serve it)."""
        if self._versions is None:
            data = self.call(self.apis.get_api_versions) or {}
            self._versions = {g["name"]: [v["version"] for v in g.get("versions") or []]
                              for g in data.get("groups") or []}
        return self._versions.get(group, [])

    def custom_list(self, group: str, version: str, plural: str,
                    namespace: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        if namespace:
            return self.items(self.custom.list_namespaced_custom_object, group, version,
                              namespace, plural, **kw)
        return self.items(self.custom.list_cluster_custom_object, group, version, plural, **kw)

    def custom_get(self, group: str, version: str, plural: str, name: str,
                   namespace: str | None = None) -> dict[str, Any] | None:
        if namespace:
            return self.call(self.custom.get_namespaced_custom_object, group, version,
                             namespace, plural, name)
        return self.call(self.custom.get_cluster_custom_object, group, version, plural, name)


# -- sites ---------------------------------------------------------------------------------


def _contexts(kubeconfig: str | None) -> list[str]:
    from kubernetes import config as k8s_config

    try:
        contexts, _ = k8s_config.list_kube_config_contexts(kubeconfig)
        return [c["name"] for c in contexts]
    except Exception:  # noqa: BLE001 - only for the hint in an error message
        return []


class Site:
    """One site: a kubeconfig context (the Kubernetes API) and, in the lab, its array.

    Build with :meth:`lab` (the lab's ``main`` or ``backup``) or :meth:`from_kubeconfig`
    (a real cluster).  The API client is made at construction, so a bad kubeconfig or
    context fails here; an unreachable API server fails on the first call.
    """

    def __init__(self, name: str, *, kubeconfig: str | os.PathLike[str] | None = None,
                 context: str | None = None, array_url: str | None = None,
                 data_socket: str | None = None, lab_dir: str | os.PathLike[str] | None = None,
                 timeout: float = 10.0) -> None:
        from kubernetes import config as k8s_config

        self.name = name
        self.context = context
        self.kubeconfig = str(Path(kubeconfig).expanduser()) if kubeconfig else None
        self.array_url = array_url
        self.data_socket = data_socket
        self.lab_dir = LabDir.of(lab_dir) if lab_dir is not None else None
        self.timeout = timeout
        where_cfg = f"kubeconfig {self.kubeconfig}" if self.kubeconfig else "the default kubeconfig"
        if self.kubeconfig and not Path(self.kubeconfig).is_file():
            raise NotFound(f"{where_cfg} does not exist")
        if context:
            known = _contexts(self.kubeconfig)
            if known and context not in known:
                raise InvalidInput(f"context {context!r} is not in {where_cfg} "
                                   f"(contexts: {', '.join(known)})")
        try:
            api = k8s_config.new_client_from_config(config_file=self.kubeconfig, context=context)
        except k8s_config.ConfigException as e:
            known = _contexts(self.kubeconfig)
            hint = f" (contexts: {', '.join(known)})" if known else ""
            raise InvalidInput(f"{where_cfg}: {_first_line(str(e))}{hint}") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
            raise InvalidInput(f"{where_cfg} is not usable: {_first_line(str(e))}") from None
        api.configuration.retries = 1
        self.host = api.configuration.host
        self.kube = KubeApi(api, f"the {name} site's API server at {self.host}", timeout)

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def lab(cls, name: str = "main", dir: str | os.PathLike[str] | None = DEFAULT_DIR,  # noqa: A002
            *, timeout: float = 10.0) -> Site:
        """The lab's ``main`` or ``backup`` site (its kubeconfig context and its array)."""
        if name not in SITES:
            raise InvalidInput(f"a lab site is 'main' or 'backup', not {name!r}")
        lab = LabDir.of(dir)
        state = lab.load()  # NotFound with the `dr-kit lab up` hint
        ep = lab.array_endpoint(name, state)
        return cls(name, kubeconfig=lab.kubeconfig, context=name, array_url=ep.get("mgmt_url"),
                   data_socket=ep.get("data_socket"), lab_dir=lab.root, timeout=timeout)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | os.PathLike[str] | None = None,
                        context: str | None = None, *, name: str | None = None,
                        timeout: float = 10.0) -> Site:
        """A real cluster: no array endpoint is known (lag comes from resource status)."""
        return cls(name or context or "default", kubeconfig=kubeconfig, context=context,
                   timeout=timeout)

    # -- identity ----------------------------------------------------------------------
    @property
    def mode(self) -> Literal["lab", "real"]:
        return "lab" if self.lab_dir is not None else "real"

    @property
    def has_array(self) -> bool:
        return bool(self.array_url)

    @property
    def array(self) -> Any:
        """The array's management API (:class:`~dr_kit.storage.client.ArrayClient`)."""
        from dr_kit.storage.client import ArrayClient

        if not self.array_url:
            raise InvalidInput(f"the {self.name} site has no known array management endpoint "
                               "(real clusters: dr_kit reads the replication resources' status "
                               "instead)")
        return ArrayClient(self.array_url, self.data_socket, timeout=self.timeout)

    def peer(self) -> Site:
        """The other site of the same lab (main <-> backup)."""
        if self.lab_dir is None or self.name not in SITES:
            raise InvalidInput(f"site {self.name} is not a lab site; pass the other site "
                               "explicitly")
        other = "backup" if self.name == "main" else "main"
        return Site.lab(other, self.lab_dir.root, timeout=self.timeout)

    def __repr__(self) -> str:
        where = f"lab {self.lab_dir.root}" if self.lab_dir else f"context {self.context!r}"
        array = f", array {self.array_url}" if self.array_url else ", array unknown"
        return f"Site({self.name!r}, {where}, api {self.host}{array})"

    def ping(self) -> dict[str, Any]:
        """The API server's version (raises when unreachable)."""
        from kubernetes import client as k8s

        return self.kube.call(k8s.VersionApi(self.kube.api).get_code) or {}

    # -- frames ------------------------------------------------------------------------
    def namespaces(self) -> pd.DataFrame:
        """name, phase, protected (labelled for protection), protection state, created."""
        rows = []
        for ns in self.kube.items(self.kube.core.list_namespace):
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
            self.kube.require_namespace(namespace, self.name)
        rows = []
        for p in self.kube.pvcs(namespace):
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
        for pv in self.kube.pvs():
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
            self.kube.require_namespace(namespace, self.name)
        rows = [replication_row(kind, obj) for kind, obj in self.replication_objects(namespace)]
        return _frame(rows, REPLICATION_COLUMNS, sort=["namespace", "kind", "name"])

    def replication_objects(self, namespace: str | None = None
                            ) -> list[tuple[str, dict[str, Any]]]:
        """(kind, object) of every replication resource the cluster serves, in ``namespace``."""
        out: list[tuple[str, dict[str, Any]]] = []
        for kind, plural, (group, version) in (
                ("VolumeGroupReplication", "volumegroupreplications", REPL),
                ("VolumeReplication", "volumereplications", REPL),
                ("Replication", "replications", HSPC)):
            if version not in self.kube.served_versions(group):
                continue
            for obj in self.kube.custom_list(group, version, plural, namespace):
                out.append((kind, obj))
        return out

    def group_snapshot_version(self) -> str:
        """The VolumeGroupSnapshot API version to use (the cluster must serve one)."""
        served = self.kube.served_versions(GSNAP_GROUP)
        for v in GSNAP_VERSIONS:
            if v in served:
                return v
        raise NotFound(f"the {self.name} site does not serve {GSNAP_GROUP} (VolumeGroupSnapshot);"
                       " install the external-snapshotter group snapshot CRDs")

    def snapshots(self, namespace: str | None = None) -> pd.DataFrame:
        """VolumeGroupSnapshots: readiness, consistency point (sequence, time), lag at that moment.

        The consistency point and lag come from the lab's storage plug-in annotations; a
        real driver does not publish them, so they are None there (``created`` is the
        snapshot's creation time).
        """
        if namespace:
            self.kube.require_namespace(namespace, self.name)
        served = self.kube.served_versions(GSNAP_GROUP)
        if not any(v in served for v in GSNAP_VERSIONS):
            return _frame([], SNAPSHOT_COLUMNS)
        version = self.group_snapshot_version()
        rows = [snapshot_row(o) for o in self.kube.custom_list(
            GSNAP_GROUP, version, "volumegroupsnapshots", namespace)]
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
    a = ANNOTATION_PREFIX

    def num(key: str, cast: Callable[[str], Any]) -> Any:
        try:
            return cast(ann[a + key]) if ann.get(a + key) not in (None, "") else None
        except ValueError:
            return None

    consistent = ann.get(a + "consistent")
    err = st.get("error") or {}
    return {
        "namespace": m.get("namespace"), "name": m["name"], "ready": bool(st.get("readyToUse")),
        "created": _ts(st.get("creationTime") or m.get("creationTimestamp")),
        "sequence": num("sequence", int), "position": ann.get(a + "position") or None,
        "point_time": _ts(num("consistency-time", float)),
        "lag_seconds": num("lag-seconds", float),
        "consistent": None if consistent in (None, "", "null") else consistent == "true",
        "volumes": ann.get(a + "volumes") or None,
        "array_snapshot": ann.get(a + "array-snapshot") or None,
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
    """``site.<what>(namespace)`` by name (``namespaces`` and ``pvs`` take no namespace)."""
    if what not in KEYS:
        raise InvalidInput(f"what must be one of {', '.join(KEYS)}, not {what!r}")
    if what in ("namespaces", "pvs"):
        return getattr(site, what)()
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
            df = df.assign(claim=df["claim"].where(df["claim"].notna(), "(unclaimed) " + df["name"]))
        return df.set_index(key)

    names = (main.name, backup.name) if main.name != backup.name else ("left", "right")
    out = pd.concat({names[0]: keyed(a), names[1]: keyed(b)}, axis=1, join="outer")
    return out.sort_index()


__all__ = ["Site", "KubeApi", "ProgressEvent", "Progress", "side_by_side", "frame",
           "wait_until", "parse_duration", "GROUP_LABEL", "STATUS_ANNOTATION"]
