"""Journal lag (RPO) per consistency group: read once, sample over time, export to Prometheus.

Two sources, and every figure says which one it came from (``source``, and the label of
:attr:`GroupLag.source_label` shown in every table, figure and metric):

- ``"array"``: the array's own lag report for the group's consistency group, when the
  storage driver publishes the array's management endpoint and the group's name on the
  array (:mod:`dr_kit.published`; the lab's plug-in does): sequence lag (journal
  entries), byte lag and time lag (age of the oldest write not yet applied at the backup;
  0 only when caught up).  Exact.
- ``"k8s-status"``: the replication resource's ``lastSyncTime``, the consistency point the
  backup has reached.  ``now - lastSyncTime`` is reported as the time lag, and it is only
  an **upper bound**: the field has the resolution of a Kubernetes time (1 s), and it
  keeps growing on an idle application whose true lag is 0.  Sequence and byte lag cannot
  be known from the status and are ``None``.

``source="auto"`` uses the array for every group whose array the driver publishes and the
status for the others.  Unknown is ``None``, never 0: before the array has a group for a
replication resource, when a status has no ``lastSyncTime``, when the array cannot be
reached.

    reports = read_lag(main)                                # list[GroupLag]
    df = sample_lag(main, duration_s=10, interval_s=0.5)
    lag_percentiles(df)                                     # p50/p90/p99/max per group
    serve_metrics(main, "127.0.0.1:9469")                   # dr-kit lag --serve
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from dr_kit import published
from dr_kit.errors import DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.sites import Site, _ts, parse_duration
from dr_kit.storage.position import LagReport

Source = Literal["auto", "array", "k8s-status"]

SAMPLE_COLUMNS = ["time", "group", "namespace", "state", "sequence_lag", "byte_lag",
                  "time_lag_s", "source", "upper_bound", "resolution_s"]


@dataclass(frozen=True)
class GroupLag(LagReport):
    """A :class:`LagReport` of one consistency group, with the namespace it protects.

    ``main`` is None when the main position is unknown (a status source, or no group on
    the array yet); ``resource`` names the Kubernetes object the group belongs to.
    ``upper_bound`` is set when ``time_lag_s`` is only an upper bound of the true lag
    (read from ``lastSyncTime``), ``resolution_s`` is the resolution of the field it was
    read from (None for the array's exact figures).
    """

    namespace: str | None = None
    resource: str | None = None
    upper_bound: bool = False
    resolution_s: float | None = None

    @property
    def position_known(self) -> bool:
        return self.main is not None

    @property
    def source_label(self) -> str:
        """What the figure is, in words: ``array (exact)`` or ``≤, from lastSyncTime (1 s
        resolution)``."""
        return source_label(self.source, self.upper_bound, self.resolution_s)


def source_label(source: str, upper_bound: bool = False, resolution_s: float | None = None) -> str:
    """The label every table, figure and metric shows for a lag figure's source."""
    if source == "array":
        return "array (exact)"
    if source == "k8s-status":
        res = f"{resolution_s:g} s" if resolution_s is not None else "unknown"
        return f"≤, from lastSyncTime ({res} resolution)" if upper_bound else \
            f"from lastSyncTime ({res} resolution)"
    return source


# -- reading ---------------------------------------------------------------------------------


def _resources(site: Site, namespace: str | None) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(namespace, kind, name, object) of the groups' replication resources; Hitachi
    Replications are folded into one entry per consistency group id."""
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
    for kind, obj in site.replication_objects(namespace):
        if kind == "VolumeReplication":
            continue  # single-volume, no consistency group
        if (obj.get("spec") or {}).get("replicationState") in ("secondary", "resync"):
            continue  # the secondary copy after a DR role swap: its lag is read at the primary
        ns = obj["metadata"].get("namespace") or ""
        if kind == "Replication":
            cg = str((obj.get("spec") or {}).get("consistencyGroupId", obj["metadata"]["name"]))
            if (ns, cg) in seen:
                continue
            seen.add((ns, cg))
        out.append((ns, kind, obj["metadata"]["name"], obj))
    return out


def _unknown(group: str, namespace: str | None, resource: str | None, state: str,
             source: str, message: str, now: float) -> GroupLag:
    return GroupLag(group=group, state=state, main=None, applied=None,
                    sequence_lag=None, byte_lag=None, time_lag_s=None, consistent=None,
                    measured_at=now, source=source, message=message, namespace=namespace,
                    resource=resource)


def _claim_classes(site: Site, namespace: str | None) -> dict[tuple[str, str], str | None]:
    """(namespace, PVC) -> storage class, from one list of the PVCs (of ``namespace``, or of
    every namespace)."""
    return {(p["metadata"].get("namespace") or "", p["metadata"]["name"]):
            (p.get("spec") or {}).get("storageClassName")
            for p in site.kube.items("PersistentVolumeClaim", namespace)}


def _storage_class(namespace: str, kind: str, obj: dict[str, Any],
                   classes: dict[tuple[str, str], str | None]) -> str | None:
    """The storage class of the resource's PVCs (None when unknown or mixed)."""
    st, spec = obj.get("status") or {}, obj.get("spec") or {}
    names = ([spec.get("persistentVolumeClaimName")] if kind == "Replication"
             else [r.get("name") for r in st.get("persistentVolumeClaimsRefList") or []])
    found = {classes.get((namespace, n)) for n in names if n}
    return found.pop() if len(found) == 1 else None


class _ArrayReader:
    """The arrays' lag reports for one read: each array is asked once for every group's
    report (its status) when several groups are read, or per group when only a few are."""

    BULK_FROM = 3  # groups on one read from which one status call beats one call per group

    def __init__(self, site: Site, groups: int) -> None:
        self.site = site
        self.bulk = groups >= self.BULK_FROM
        self._status: dict[str, dict[str, dict[str, Any]]] = {}

    def report(self, access: Any, group: str) -> LagReport | str:
        """The group's report, or why there is none (a message)."""
        if not self.bulk:
            try:
                return access.client(self.site.timeout).lag(group)
            except NotFound:
                return f"no consistency group {group} on the {access} yet"
        groups = self._status.get(access.management_url)
        if groups is None:
            st = access.client(self.site.timeout).status()
            groups = self._status[access.management_url] = {
                g["name"]: g for g in st.get("groups") or [] if g.get("side") == "main"}
        g = groups.get(group)
        if g is None or not g.get("lag"):
            return f"no consistency group {group} on the {access} yet"
        return LagReport.from_dict(g["lag"])


def _array_report(site: Site, ns: str, kind: str, name: str, obj: dict[str, Any],
                  classes: dict[tuple[str, str], str | None] | None, reader: _ArrayReader,
                  now: float) -> GroupLag | None:
    """The array's report for the resource's group; None when the driver publishes no
    array group or array endpoint for it."""
    group = ((obj.get("metadata") or {}).get("annotations") or {}).get(published.ARRAY_GROUP)
    if not group:
        return None
    sc = _storage_class(ns, kind, obj, classes) if classes is not None else None
    access = site.array_for(sc)
    if access is None:
        return None
    resource = f"{kind} {ns}/{name}"
    rep = reader.report(access, group)
    if isinstance(rep, str):
        return _unknown(group, ns, resource, "pending", "array", rep, now)
    return GroupLag(**{**rep.__dict__, "namespace": ns, "resource": resource})


def _status_report(ns: str, kind: str, name: str, obj: dict[str, Any]) -> GroupLag:
    now = time.time()
    st = obj.get("status") or {}
    resource = f"{kind} {ns}/{name}"
    group = name if kind != "Replication" else str(
        (obj.get("spec") or {}).get("copyGroupName") or name)
    state = _state_from_conditions(kind, obj)
    raw = st.get("lastSyncTime")
    last = _ts(raw)
    if last is None:
        return _unknown(group, ns, resource, state, "k8s-status",
                        "no lastSyncTime in the status yet", now)
    resolution = time_resolution(str(raw))
    age = max(0.0, now - last.timestamp())
    duration = parse_duration(st.get("lastSyncDuration"))
    extra = [f"upper bound: now - lastSyncTime ({raw}, {resolution:g} s resolution)"]
    if duration is not None:
        extra.append(f"lastSyncDuration {duration:g} s")
    if st.get("lastSyncBytes") is not None:
        extra.append(f"lastSyncBytes {st.get('lastSyncBytes')}")
    return GroupLag(
        group=group, state=state, main=None, applied=None, sequence_lag=None,
        byte_lag=None, time_lag_s=round(age, 3), consistent=None, measured_at=now,
        source="k8s-status", message="; ".join(extra), namespace=ns, resource=resource,
        upper_bound=True, resolution_s=resolution)


def time_resolution(rfc3339: str) -> float:
    """The resolution of an RFC 3339 time: 1 s for ``...:05Z``, 1 ms for ``...:05.123Z``."""
    import re

    m = re.search(r"[T ]\d{2}:\d{2}:\d{2}\.(\d+)", rfc3339)
    return 10.0 ** -len(m.group(1)) if m else 1.0


def _state_from_conditions(kind: str, obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    if kind == "Replication":
        return str(st.get("pairState") or "unknown")
    cond = {c.get("type"): c.get("status") == "True" for c in st.get("conditions") or []}
    if cond.get("Degraded"):
        return "degraded"
    if cond.get("Resyncing"):
        return "resyncing"
    if cond.get("Completed"):
        return "replicating"
    return "unknown"


def read_lag(main_site: Site, namespace: str | None = None, *, source: Source = "auto"
             ) -> list[GroupLag]:
    """One lag report per consistency group of the main site (in ``namespace`` if given).

    ``source="auto"`` reads the array for every group whose array and array group the
    storage driver publishes, and the replication status for the others; ``"array"``
    refuses groups without a published array; ``"k8s-status"`` reads only the status.
    """
    if source not in ("auto", "array", "k8s-status"):
        raise InvalidInput(f"source must be 'auto', 'array' or 'k8s-status', not {source!r}")
    if namespace:
        main_site.require_namespace(namespace)
    resources = _resources(main_site, namespace)
    if source == "array" and not main_site.has_array:
        raise InvalidInput(f"the {main_site.name} site publishes no array management endpoint "
                           "(see dr_kit.published); use source='k8s-status'")
    reports: list[GroupLag] = []
    classes: dict[tuple[str, str], str | None] | None = None
    with_group = [r for r in resources
                  if ((r[3].get("metadata") or {}).get("annotations") or {}).get(published.ARRAY_GROUP)]
    if source != "k8s-status" and with_group and not main_site.array_url and \
            len({a.management_url for a in main_site.arrays().values()}) > 1:
        classes = _claim_classes(main_site, namespace)  # several arrays: which one is whose
    reader = _ArrayReader(main_site, len(with_group))
    for ns, kind, name, obj in resources:
        now = time.time()
        rep = None if source == "k8s-status" else _array_report(main_site, ns, kind, name,
                                                                  obj, classes, reader, now)
        if rep is None and source == "array":
            rep = _unknown(name, ns, f"{kind} {ns}/{name}", "pending", "array",
                           "no consistency group on the array yet (the storage driver "
                           f"publishes no {published.ARRAY_GROUP} for it)", now)
        reports.append(rep if rep is not None else _status_report(ns, kind, name, obj))
    return reports


def worst_first(reports: Iterable[GroupLag]) -> list[GroupLag]:
    """Reports ranked for attention: unknown time lags first (nothing says the backup is
    current), then the largest time lag, then the largest byte and sequence lag."""
    def key(r: GroupLag) -> tuple[bool, float, int, int, str, str]:
        return (r.time_lag_s is not None, -(r.time_lag_s or 0.0), -(r.byte_lag or 0),
                -(r.sequence_lag or 0), r.namespace or "", r.group)

    return sorted(reports, key=key)


# -- sampling --------------------------------------------------------------------------------


def _row(r: GroupLag) -> dict[str, Any]:
    return {"time": pd.Timestamp(r.measured_at, unit="s", tz="UTC"), "group": r.group,
            "namespace": r.namespace, "state": r.state, "sequence_lag": r.sequence_lag,
            "byte_lag": r.byte_lag, "time_lag_s": r.time_lag_s, "source": r.source,
            "upper_bound": r.upper_bound, "resolution_s": r.resolution_s}


def lag_frame(reports: Iterable[LagReport]) -> pd.DataFrame:
    """Reports as rows of :data:`SAMPLE_COLUMNS`; unknown figures are ``<NA>``, never 0."""
    rows = [_row(r if isinstance(r, GroupLag) else GroupLag(**r.__dict__)) for r in reports]
    df = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["sequence_lag"] = df["sequence_lag"].astype("Int64")
    df["byte_lag"] = df["byte_lag"].astype("Int64")
    df["time_lag_s"] = df["time_lag_s"].astype("Float64")
    df["upper_bound"] = df["upper_bound"].astype("boolean")
    df["resolution_s"] = df["resolution_s"].astype("Float64")
    return df


def frame_source(df: pd.DataFrame) -> str:
    """The source label(s) of a sample frame's figures, for a table or a figure title."""
    if df.empty or "source" not in df:
        return "no samples"
    labels = []
    for _, r in df.drop_duplicates(["source", "upper_bound", "resolution_s"]).iterrows():
        res = r.get("resolution_s")
        labels.append(source_label(str(r["source"]), bool(r.get("upper_bound") is True),
                                   None if pd.isna(res) else float(res)))
    return "; ".join(dict.fromkeys(labels))


def sample_lag(site: Site, duration_s: float, interval_s: float, namespace: str | None = None,
               progress: Callable[[int, int, list[GroupLag]], None] | None = None, *,
               source: Source = "auto") -> pd.DataFrame:
    """Read the lag every ``interval_s`` for ``duration_s`` seconds; one row per group and read.

    ``progress(i, n, reports)`` is called after each read (a notebook can plot live).  A
    read that fails because the site or array is unreachable for a moment is recorded as
    unknown (``state="unreachable"``) rather than ending the sampling.
    """
    for name, v in (("duration_s", duration_s), ("interval_s", interval_s)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InvalidInput(f"{name} must be a number of seconds >= 0, not {v!r}")
    if interval_s <= 0:
        raise InvalidInput("interval_s must be > 0 seconds")
    n = max(1, int(duration_s / interval_s) + 1)
    rows: list[GroupLag] = []
    known: dict[str, GroupLag] = {}
    t0 = time.monotonic()
    for i in range(n):
        try:
            reports = read_lag(site, namespace, source=source)
        except Unavailable as e:
            now = time.time()
            reports = [_unknown(g.group, g.namespace, g.resource, "unreachable", g.source,
                                str(e), now) for g in known.values()]
        for r in reports:
            known[r.group] = r
        rows.extend(reports)
        if progress:
            progress(i + 1, n, reports)
        if i + 1 < n:
            time.sleep(max(0.0, t0 + (i + 1) * interval_s - time.monotonic()))
    return lag_frame(rows)


def lag_percentiles(df: pd.DataFrame, column: str = "time_lag_s",
                    q: Iterable[float] = (50, 90, 99)) -> pd.DataFrame:
    """Per group and namespace: samples, unknown (count of NA), the percentiles and max,
    and ``source`` (what the figures are, e.g. an upper bound from lastSyncTime).

    Unknown samples are left out of the percentiles and counted in ``unknown``; a group
    with no known sample has NA percentiles.
    """
    qs = list(q)
    for v in qs:
        if not 0 <= float(v) <= 100:
            raise InvalidInput(f"percentiles are between 0 and 100, not {v!r}")
    if column not in df:
        raise InvalidInput(f"no column {column!r}; sample columns: {', '.join(df.columns)}")
    out = []
    for (group, ns), part in df.groupby(["group", "namespace"], dropna=False, sort=True):
        values = pd.to_numeric(part[column], errors="coerce").astype("float64").dropna()
        row: dict[str, Any] = {"group": group, "namespace": ns, "samples": len(part),
                               "unknown": int(len(part) - len(values))}
        for v in qs:
            row[f"p{v:g}"] = float(values.quantile(float(v) / 100)) if len(values) else None
        row["max"] = float(values.max()) if len(values) else None
        row["source"] = frame_source(part)
        out.append(row)
    cols = ["group", "namespace", "samples", "unknown", *(f"p{v:g}" for v in qs), "max",
            "source"]
    res = pd.DataFrame(out, columns=cols)
    for c in cols[4:-1]:
        res[c] = res[c].astype("Float64")
    return res


# -- Prometheus exporter ---------------------------------------------------------------------


def parse_listen(addr: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``:PORT`` = 127.0.0.1) -> (host, port); loopback only
    unless ``allow_remote``."""
    text = str(addr).strip()
    host, sep, port_s = text.rpartition(":")
    if not sep:
        raise InvalidInput(f"listen address {addr!r} must be HOST:PORT, e.g. 127.0.0.1:9469")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise InvalidInput(f"listen address {addr!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"listen address {addr!r}: port must be 0..65535")
    if not allow_remote and not _is_loopback(host):
        raise InvalidInput(f"refusing to serve lag metrics on non-loopback address {host}; "
                           "use 127.0.0.1 or pass --allow-remote")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class LagCollector:
    """A prometheus_client collector reading the lag on every scrape (at most every
    ``min_interval_s``, so concurrent scrapes share one read)."""

    def __init__(self, site: Site, namespace: str | None = None, *, source: Source = "auto",
                 min_interval_s: float = 0.5) -> None:
        self.site = site
        self.namespace = namespace
        self.source = source
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GroupLag] | None, str] = (0.0, None, "")

    def _read(self) -> tuple[list[GroupLag] | None, str]:
        with self._lock:
            t, reports, err = self._cached
            if time.monotonic() - t < self.min_interval_s and (reports is not None or err):
                return reports, err
            try:
                reports, err = read_lag(self.site, self.namespace, source=self.source), ""
            except DrKitError as e:
                reports, err = None, str(e)
            self._cached = (time.monotonic(), reports, err)
            return reports, err

    def describe(self) -> list[Any]:
        return []  # collected on scrape; nothing fixed to describe

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        t0 = time.monotonic()
        reports, _err = self._read()
        up = GaugeMetricFamily("dr_kit_lag_up", "1 when the last lag read succeeded, 0 when "
                               "the site or array could not be read")
        up.add_metric([], 1.0 if reports is not None else 0.0)
        yield up
        dur = GaugeMetricFamily("dr_kit_lag_read_seconds", "Time the lag read took")
        dur.add_metric([], time.monotonic() - t0)
        yield dur
        if reports is None:
            return
        labels = ["group", "namespace", "source", "bound"]
        fams = {
            "seq": GaugeMetricFamily("dr_kit_lag_sequence_entries", "Journal entries written at "
                                     "the main site and not yet applied at the backup "
                                     "(NaN: unknown)", labels=labels),
            "bytes": GaugeMetricFamily("dr_kit_lag_bytes", "Journal bytes not yet applied at "
                                       "the backup (NaN: unknown)", labels=labels),
            "time": GaugeMetricFamily("dr_kit_lag_time_seconds", "Age of the oldest write not "
                                      "yet applied at the backup: data a disaster now would "
                                      "lose (NaN: unknown; 0 only when caught up; "
                                      "bound=upper: an upper bound, from lastSyncTime)",
                                      labels=labels),
            "resolution": GaugeMetricFamily("dr_kit_lag_time_resolution_seconds",
                                            "Resolution of the field the time lag was read "
                                            "from (NaN: exact, from the array)",
                                            labels=labels),
            "known": GaugeMetricFamily("dr_kit_lag_time_known", "1 when the time lag is known, "
                                       "0 when it is not", labels=labels),
            "consistent": GaugeMetricFamily("dr_kit_backup_consistent", "1 when the backup "
                                            "image is consistent, 0 when not, NaN when unknown",
                                            labels=labels),
            "state": GaugeMetricFamily("dr_kit_replication_state", "1 for the group's current "
                                       "state", labels=[*labels, "state"]),
        }

        def val(v: float | int | None) -> float:
            return math.nan if v is None else float(v)

        for r in reports:
            lv = [r.group, r.namespace or "", r.source, "upper" if r.upper_bound else "exact"]
            fams["seq"].add_metric(lv, val(r.sequence_lag))
            fams["resolution"].add_metric(lv, val(r.resolution_s))
            fams["bytes"].add_metric(lv, val(r.byte_lag))
            fams["time"].add_metric(lv, val(r.time_lag_s))
            fams["known"].add_metric(lv, 0.0 if r.time_lag_s is None else 1.0)
            fams["consistent"].add_metric(lv, val(None if r.consistent is None
                                                   else float(r.consistent)))
            fams["state"].add_metric([*lv, r.state], 1.0)
        yield from fams.values()


class MetricsServer:
    """A running exporter (``.url``, ``.stop()``)."""

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(site: Site, addr: str = "127.0.0.1:9469", *, namespace: str | None = None,
                  allow_remote: bool = False, source: Source = "auto") -> MetricsServer:
    """Serve the lag gauges at ``http://ADDR/metrics`` in a background thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_listen(addr, allow_remote=allow_remote)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LagCollector(site, namespace, source=source))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise Unavailable(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return MetricsServer(server, thread, host)


__all__ = ["GroupLag", "read_lag", "worst_first", "sample_lag", "lag_frame",
           "lag_percentiles", "LagCollector",
           "MetricsServer", "serve_metrics", "parse_listen", "SAMPLE_COLUMNS", "source_label",
           "frame_source", "time_resolution"]
