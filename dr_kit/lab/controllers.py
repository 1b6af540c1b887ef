"""The lab's storage plugins: what a vendor's CSI driver and replication plug-in do.

One process per site (``python -m dr_kit.lab.controllers --dir DIR --site main|backup``).

- **Provisioner** (both sites): a PVC of class ``lab-array`` gets an array volume and a
  bound PV whose ``csi.volumeHandle`` names it; a PVC whose ``dataSource`` is a
  VolumeSnapshot gets a writable clone of that snapshot instead (a restore).  A released
  PV's volume is deleted with it.
- **Replication plug-in** (the site holding the primary copy; both sites run it, as DR
  operations swap the roles): a VolumeGroupReplication (csi-addons) — or Hitachi
  ``Replication`` objects sharing a ``consistencyGroupId`` — becomes one array consistency
  group with one asynchronous pair per selected PVC, replicating through the lab's link.
  At the backup site it creates the namespace and a PV and bound PVC per replicated
  volume.  Status carries ``state``, conditions, ``lastSyncTime`` (the consistency point:
  the main-site time of the last write applied at the backup, or the time of the
  measurement when the backup has caught up), ``lastSyncDuration`` (how
  long that write took from its acknowledgement at the main site to being applied at the
  backup), ``lastSyncBytes`` (bytes applied at the backup since
  the previous status update) and ``persistentVolumeClaimsRefList``.
- **Group snapshot controller** (the site holding the secondary copy): a VolumeGroupSnapshot becomes an array
  snapshot group at one sequence number, a VolumeGroupSnapshotContent, and one
  VolumeSnapshot + VolumeSnapshotContent per volume, ``readyToUse`` when done.  The
  consistency point is recorded in annotations (:mod:`dr_kit.published`).

**How it runs, at any size.**  A fixed set of threads, whatever the number of namespaces,
volumes or groups: one watch per kind (list + watch into a cache, the operator's
:class:`~dr_kit.operator.cache.Informer`), a fixed pool of workers taking keys from one
de-duplicating work queue (:class:`~dr_kit.operator.retry.WorkQueue`: a key is handled by
one worker at a time), and the process's main thread, which writes the health file.  A
change seen by a watch queues the keys it concerns (a pending PVC, a released PV, one
replication group, one group snapshot); handlers read the caches, never list.  The arrays
cannot be watched: one ``/v1/status`` call per array every ``poll`` seconds (a ``poll``
key) is compared with the previous one, and only the groups whose state, members or
consistency changed are queued; a group's ``lastSyncTime`` is refreshed at most every
``max(1 s, groups / 20 s)`` (so at most about 20 status writes a second however many
groups there are; a change of state is written at once).  A ``resync`` key re-queues
everything every minute (level-triggered, as a safety net).

**It heals itself.**  Any exception in a handler is logged (once per distinct message)
and its key retried with its own exponential backoff (0.25 s doubling to 10 s); a broken
watch is relisted by its informer; when an API server or array comes back, every key is
queued again.  The state of each dependency (API servers, arrays) and the recent errors
are written to ``run/<site>-controllers.health`` every second, which ``dr-kit lab
status`` shows.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from dr_kit import published
from dr_kit.errors import Conflict, DrKitError, NotFound, Unavailable
from dr_kit.fsutil import write_json
from dr_kit.kube import BUILTIN_GROUPS, RESOURCES, Kube, api_client, parse_quantity
from dr_kit.kube import rfc3339 as now_rfc3339
from dr_kit.lab.apiserver.quantity import format_bytes
from dr_kit.lab.apiserver.selectors import match_selector
from dr_kit.lab.layout import (
    ANNOTATION_PREFIX,
    ARRAY_SECRET,
    CSI_DRIVER,
    PLUGIN_NAMESPACE,
    SHOP_PVCS,
    STORAGE_CLASS,
    LabDir,
)
from dr_kit.operator.cache import Cache, Informer
from dr_kit.operator.retry import Backoff, WorkQueue
from dr_kit.storage.client import ArrayClient, new_pair_secret

log = logging.getLogger("dr_kit.lab.controllers")

GSNAP = ("groupsnapshot.storage.k8s.io", "v1beta2")  # the version this plug-in writes
SNAP = ("snapshot.storage.k8s.io", "v1")
FINALIZER = "lab.dr-kit.io/storage"
REPLICATED_LABEL = published.REPLICATED_FROM
A = ANNOTATION_PREFIX
PUBLISH_EVERY = 5.0  # seconds between checks of the published array endpoint
RESYNC_EVERY = 60.0  # seconds between full resyncs (every key queued)
HEALTH_EVERY = 1.0  # seconds between writes of the health file
STATUS_WRITES_PER_S = 20.0  # lastSyncTime refreshes, summed over all groups
STATUS_PERIOD_MIN = 1.0  # seconds: lastSyncTime has a resolution of one second anyway

# What each site's plug-ins watch (one informer each).  Both sites run every plug-in: a
# DR operation swaps which site holds the primary copy (replication) and which the
# secondary one (group snapshots, restores).  Each site also watches the other site's
# namespaces and PVCs (the primary's plug-in creates the replicated copies there).
_KINDS = ("PersistentVolumeClaim", "PersistentVolume", "VolumeGroupReplication",
          "VolumeGroupReplicationClass", "Replication", "ReplicationGroup", "VolumeGroupSnapshot",
          "VolumeGroupSnapshotClass", "VolumeSnapshot", "VolumeSnapshotContent")
WATCH = {"main": _KINDS, "backup": _KINDS}
WATCH_OTHER = ("Namespace", "PersistentVolumeClaim")
QUERY_TIMEOUT = 5.0  # seconds for a call to the other site's array (it may be down)
# status fields that move with every sync; a change of only these is not urgent
VOLATILE = frozenset({"lastSyncTime", "lastSyncBytes", "lastSyncDuration", "timeLagSeconds"})

Key = tuple[str, ...]


def _meta(o: dict[str, Any]) -> dict[str, Any]:
    return o.setdefault("metadata", {})


def _condition(ctype: str, status: bool, reason: str, message: str, gen: int | None) -> dict[str, Any]:
    return {"type": ctype, "status": "True" if status else "False", "reason": reason,
            "message": message or reason, "lastTransitionTime": now_rfc3339(),
            "observedGeneration": gen or 0}


def _steady(status: dict[str, Any] | None) -> dict[str, Any]:
    """A status without what moves with every sync (nor the conditions' transition times)."""
    out: dict[str, Any] = {}
    for k, v in (status or {}).items():
        if k in VOLATILE:
            continue
        if k == "conditions" and isinstance(v, list):
            v = [{ck: cv for ck, cv in c.items() if ck != "lastTransitionTime"}
                 for c in v if isinstance(c, dict)]
        out[k] = v
    return out


def _keep_transitions(new: dict[str, Any], old: dict[str, Any] | None) -> None:
    """A condition whose status did not change keeps its lastTransitionTime."""
    before = {c.get("type"): c for c in (old or {}).get("conditions") or [] if isinstance(c, dict)}
    for c in new.get("conditions") or []:
        prev = before.get(c["type"])
        if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]


def group_name(namespace: str, name: str) -> str:
    """The array group of a VolumeGroupReplication."""
    return f"{namespace}-{name}"[:63].rstrip("-.")


def hitachi_group_name(namespace: str, cg: str) -> str:
    """The array group of the Hitachi Replications sharing a consistency group id."""
    return f"{namespace}-cg{cg}"[:63].rstrip("-.")


def health_file(lab: LabDir, site: str) -> str:
    return str(lab.run / f"{site}-controllers.health")


class ArrayView:
    """The last ``/v1/status`` of one array, and whether it could be read."""

    def __init__(self, client: ArrayClient, label: str) -> None:
        self.client = client
        self.label = label
        self.groups: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.ok: bool | None = None  # None: not read yet
        self.error = ""
        self.since = time.time()
        self._lock = threading.Lock()
        self._put_at: dict[str, float] = {}  # group -> when put here (monotonic)

    def refresh(self) -> bool:
        """Read the array; returns True when it answered (False: unreachable or refusing).

        A group put here (just created) after this read was sent stays in the view even if
        the read does not show it yet: a status read that crossed a creation must not make
        the group look absent, or it would be created (and its pair secret given) again."""
        t0 = time.monotonic()
        try:
            st = self.client.status()
        except Exception as e:  # noqa: BLE001 - any failure: the array is not usable now
            self._set(False, _one_line(e))
            return False
        with self._lock:
            groups = {g["name"]: g for g in st.get("groups") or []}
            for name, at in list(self._put_at.items()):
                if at < t0:
                    del self._put_at[name]  # this read was sent after the put: it is the truth
                elif name not in groups and name in self.groups:
                    groups[name] = self.groups[name]
            self.groups = groups
            self.volumes = {v["name"]: v for v in st.get("volumes") or []}
        self._set(True, "")
        return True

    def _set(self, ok: bool, error: str) -> None:
        if ok != self.ok:
            if ok and self.ok is False:
                log.info("%s answers again", self.label)
            elif not ok:
                log.warning("%s is unreachable: %s", self.label, error)
            self.since = time.time()
        self.ok, self.error = ok, error

    def group(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.groups.get(name)

    def put_group(self, g: dict[str, Any]) -> None:
        with self._lock:
            self.groups[g["name"]] = g
            self._put_at[g["name"]] = time.monotonic()

    def drop_group(self, name: str) -> None:
        with self._lock:
            self.groups.pop(name, None)
            self._put_at.pop(name, None)

    def has_volume(self, name: str) -> bool:
        with self._lock:
            return name in self.volumes

    def volume(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.volumes.get(name)

    def add_volume(self, name: str, size: int) -> None:
        with self._lock:
            self.volumes.setdefault(name, {"name": name, "size": size})

    def health(self) -> dict[str, Any]:
        return {"ok": self.ok, "since": self.since, **({"error": self.error} if self.error else {})}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return (msg if isinstance(e, DrKitError) else f"{type(e).__name__}: {msg}")[:300]


class SiteController:
    """All plug-ins of one site: watches, a work queue and a fixed pool of workers."""

    def __init__(self, lab: LabDir, site: str, *, workers: int = 6, poll: float = 0.5,
                 watch_seconds: int = 30, status_period: float = STATUS_PERIOD_MIN,
                 status_writes_per_s: float = STATUS_WRITES_PER_S,
                 backoff: Backoff | None = None) -> None:
        self.lab = lab
        self.site = site
        self.workers = max(1, int(workers))
        self.poll_s = poll
        self.watch_seconds = watch_seconds
        self.status_period_min = status_period
        self.status_writes_per_s = status_writes_per_s
        self.state = lab.load()
        self.kube = self._kube(site, pool=self.workers + 2)
        self._watch_kube = self._kube(site, pool=len(WATCH[site]) + 2)
        ep = lab.array_endpoint(site, self.state)
        self.array = ArrayClient(ep["mgmt_url"], ep["data_socket"], token=lab.array_token(site),
                                 timeout=10.0)
        self.view = ArrayView(self.array, f"the {site} array")
        # the other site's API and array ("backup_*": the backup of this site's primary
        # copies; after a role swap the main site is the backup site's backup)
        other = "backup" if site == "main" else "main"
        self.other_site = other
        self.backup_kube: Kube | None = self._kube(other, pool=self.workers + 2)
        self._other_watch_kube: Kube | None = self._kube(other, pool=len(WATCH_OTHER) + 2)
        bep = lab.array_endpoint(other, self.state)
        self.backup_array: ArrayClient | None = ArrayClient(
            bep["mgmt_url"], bep["data_socket"], token=lab.array_token(other), timeout=QUERY_TIMEOUT)
        self.backup_view: ArrayView | None = ArrayView(self.backup_array, f"the {other} array")
        self.caches = {k: Cache(k) for k in WATCH[site]}
        self.other = {k: Cache(k) for k in WATCH_OTHER}
        self.stopping = threading.Event()
        self.queue = WorkQueue()
        self.backoff = backoff or Backoff(base=0.25, cap=10.0)
        self._informers: list[Informer] = []
        self._threads: list[threading.Thread] = []
        self._watch_stop: threading.Event | None = None
        self._synced_bytes: dict[Key, int] = {}
        self._status_written: dict[Key, float] = {}
        self._group_keys: dict[str, Key] = {}  # array group -> the key that handles it
        self._fingerprints: dict[str, Any] = {}
        self._pv_by_claim: dict[tuple[str, str], str] = {}
        self._rv_seen: dict[str, int] = {}  # newest resourceVersion each watch delivered
        self._first_seen: dict[Key, float] = {}
        self._pair_secrets: dict[str, str] = {}  # group -> the secret its creation gave
        self._errors: deque[dict[str, Any]] = deque(maxlen=20)
        self._said: dict[str, str] = {}
        self._lock = threading.Lock()
        self._connected: dict[str, bool] = {}
        self._kinds: tuple[float, set[str]] | None = None
        self._shop_reported: Any = None
        self.handled = 0

    def _kube(self, site: str, *, pool: int) -> Kube:
        api = api_client(self.lab.kubeconfig, site)
        api.configuration.connection_pool_maxsize = pool
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = pool
        return Kube(api, timeout=10.0, where=f"the {site} site's API server")

    # -- running ---------------------------------------------------------------------
    def start(self) -> SiteController:
        self.stopping.clear()
        self.queue.reopen()
        # the watches of this start (see stop): one still open from an earlier start ends
        # with its request, even if the plug-ins were started again meanwhile
        self._watch_stop = watch_stop = threading.Event()
        for kind, cache in self.caches.items():
            self._informers.append(Informer(
                self._watch_kube, kind, cache, self._on_change, watch_stop,
                served=functools.partial(self._served, kind), watch_seconds=self.watch_seconds,
                site=self.site))
        assert self._other_watch_kube is not None or not self.other
        for kind, cache in self.other.items():
            assert self._other_watch_kube is not None
            self._informers.append(Informer(
                self._other_watch_kube, kind, cache, self._on_other_change, watch_stop,
                served=lambda: True, watch_seconds=self.watch_seconds, site=self.other_site))
        for inf in self._informers:
            self._spawn(f"watch-{inf.site}-{inf.kind}", inf.run)
        for i in range(self.workers):
            self._spawn(f"worker-{i}", self._work_loop)
        for key in (("poll",), ("publish",), ("resync",), ("shop",), ("static",)):
            self.queue.add(key)
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def synced(self) -> bool:
        """This site's caches are synced (the other site's may not be: it may be down)."""
        return all(c.synced.is_set() for c in self.caches.values())

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced():
            if time.monotonic() > deadline or self.stopping.is_set():
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._watch_stop is not None:
            self._watch_stop.set()
        self.queue.shutdown()
        # the workers finish what they do; the watches only read and hold a request open
        # until it times out (daemon threads: they end with the process), so they are not
        # waited for (waiting took 5 s of every stop)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if not t.name.startswith("watch-"):
                t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._informers.clear()

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :attr:`stopping` is set; ``ready`` is called once the caches are synced."""
        if not self._threads:
            self.start()
        said_ready = False
        while not self.stopping.is_set():
            if not said_ready and self.synced():
                said_ready = True
                if ready is not None:
                    ready()
            self.write_health()
            self.stopping.wait(0.05 if not said_ready else HEALTH_EVERY)
        self.stop()

    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # -- the work loop -----------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self.stopping.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                self._handle(key)  # type: ignore[arg-type]
                self.backoff.forget(key)
            except Exception as e:  # noqa: BLE001 - a plug-in never dies: retry with backoff
                delay = self.backoff.next_delay(key)
                self._failed(key, e, delay)  # type: ignore[arg-type]
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)
                self.handled += 1

    def _failed(self, key: Key, e: Exception, delay: float) -> None:
        what = key[0]
        msg = _one_line(e)
        with self._lock:
            self._errors.append({"time": time.time(), "key": "/".join(key), "error": msg})
            repeat = self._said.get(what) == msg
            self._said[what] = msg
        if repeat:
            log.debug("%s: %s (retry in %.2f s)", "/".join(key), msg, delay)
        elif isinstance(e, DrKitError):
            log.warning("%s: %s (retry in %.2f s)", "/".join(key), msg, delay)
        else:  # a bug or an unexpected failure: its traceback, once
            log.warning("%s: %s (retry in %.2f s)", "/".join(key), msg, delay, exc_info=True)

    def _handle(self, key: Key) -> None:
        what = key[0]
        if what == "poll":
            try:
                self.poll()
            finally:
                self.queue.add_after(key, self.poll_s)
            return
        if what == "publish":
            try:
                self.publish_array()
            finally:
                self.queue.add_after(key, PUBLISH_EVERY)
            return
        if what == "resync":
            self.queue.add_after(key, RESYNC_EVERY)
            if self.synced():
                self.resync()
            return
        if what == "shop":
            try:
                self.shop_status()
            finally:
                self.queue.add_after(key, 1.0)
            return
        if not self.synced():
            self.queue.add_after(key, 0.2)
            return
        handlers: dict[str, Callable[..., None]] = {
            "pvc": self.provision, "pv": self.release, "vgr": self.replicate_csi_addons,
            "hitachi": self.replicate_hitachi, "vgs": self.group_snapshot,
            "databases": self.publish_databases, "static": self.bind_static_snapshots}
        handlers[what](*key[1:])

    def resync(self) -> None:
        """Queue every key (level-triggered safety net, and after a dependency came back)."""
        for key in self._all_keys():
            self.queue.add(key)

    def _all_keys(self) -> Iterable[Key]:
        for p in self.caches["PersistentVolumeClaim"].items():
            if self._pending(p):
                yield ("pvc", p["metadata"]["namespace"], p["metadata"]["name"])
        for pv in self.caches["PersistentVolume"].items():
            if self._ours(pv):
                yield ("pv", pv["metadata"]["name"])
        for v in self.caches["VolumeGroupReplication"].items():
            yield ("vgr", v["metadata"]["namespace"], v["metadata"]["name"])
        yield from {self._hitachi_key(r) for r in self.caches["Replication"].items()}
        for g in self.caches["VolumeGroupSnapshot"].items():
            yield ("vgs", g["metadata"]["namespace"], g["metadata"]["name"])
        yield ("databases",)
        yield ("static",)

    # -- what a change concerns ----------------------------------------------------------
    @staticmethod
    def _pending(p: dict[str, Any]) -> bool:
        return ((p.get("spec") or {}).get("storageClassName") == STORAGE_CLASS
                and not _meta(p).get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") != "Bound")

    @staticmethod
    def _ours(pv: dict[str, Any]) -> bool:
        return ((pv.get("spec") or {}).get("csi") or {}).get("driver") == CSI_DRIVER

    @staticmethod
    def _hitachi_key(r: dict[str, Any]) -> Key:
        cg = str((r.get("spec") or {}).get("consistencyGroupId", r["metadata"]["name"]))
        return ("hitachi", r["metadata"]["namespace"], cg)

    def _group_keys_in(self, ns: str) -> list[Key]:
        keys: list[Key] = [("vgr", ns, v["metadata"]["name"])
                           for v in self.caches["VolumeGroupReplication"].in_namespace(ns)]
        keys += sorted({self._hitachi_key(r) for r in self.caches["Replication"].in_namespace(ns)})
        return keys

    def _on_change(self, kind: str, type_: str, old: dict[str, Any] | None,
                   new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        md = obj.get("metadata") or {}
        rv = md.get("resourceVersion")
        if isinstance(rv, str) and rv.isdigit():
            self._rv_seen[kind] = max(self._rv_seen.get(kind, 0), int(rv))
        ns, name = md.get("namespace") or "", md.get("name") or ""
        add = self.queue.add
        if kind == "PersistentVolumeClaim":
            if new is not None and self._pending(new):
                add(("pvc", ns, name))
            if new is None or _meta(new).get("deletionTimestamp"):
                pv = self._pv_by_claim.get((ns, name))
                if pv:
                    add(("pv", pv))
            if self._claim_facts(old) != self._claim_facts(new):
                for key in self._group_keys_in(ns):
                    add(key)
                add(("databases",))
        elif kind == "PersistentVolume":
            ref = (obj.get("spec") or {}).get("claimRef") or {}
            claim = (ref.get("namespace") or "", ref.get("name") or "")
            if new is None:
                if self._pv_by_claim.get(claim) == name:
                    self._pv_by_claim.pop(claim, None)
            else:
                self._pv_by_claim[claim] = name
                if self._ours(new):
                    add(("pv", name))
            for key in self._group_keys_in(claim[0]):
                add(key)
            add(("databases",))
        elif kind in ("VolumeGroupReplication", "Replication"):
            if self._spec_facts(old) != self._spec_facts(new):
                add(("vgr", ns, name) if kind == "VolumeGroupReplication" else self._hitachi_key(obj))
        elif kind == "ReplicationGroup":
            for r in self.caches["Replication"].in_namespace(ns):
                if (r.get("spec") or {}).get("parentName") == name:
                    add(self._hitachi_key(r))
        elif kind == "VolumeGroupReplicationClass":
            for v in self.caches["VolumeGroupReplication"].items():
                add(("vgr", v["metadata"]["namespace"], v["metadata"]["name"]))
        elif kind == "VolumeGroupSnapshot":
            if self._spec_facts(old) != self._spec_facts(new) or new is None or \
                    not (new.get("status") or {}).get("readyToUse"):
                add(("vgs", ns, name))
        elif kind == "VolumeGroupSnapshotClass":
            for g in self.caches["VolumeGroupSnapshot"].items():
                if not (g.get("status") or {}).get("readyToUse"):
                    add(("vgs", g["metadata"]["namespace"], g["metadata"]["name"]))
        elif kind in ("VolumeSnapshot", "VolumeSnapshotContent"):
            # a restore waits for its snapshot: look at the pending PVCs that name one
            for p in self.caches["PersistentVolumeClaim"].items():
                src = (p.get("spec") or {}).get("dataSource") or {}
                if src.get("kind") == "VolumeSnapshot" and self._pending(p):
                    add(("pvc", p["metadata"]["namespace"], p["metadata"]["name"]))
            add(("databases",))
            add(("static",))

    def _on_other_change(self, kind: str, type_: str, old: dict[str, Any] | None,
                         new: dict[str, Any] | None) -> None:
        """A change at the other site that this site's replication plug-in cares about."""
        obj = new or old or {}
        md = obj.get("metadata") or {}
        ns = md.get("name") if kind == "Namespace" else md.get("namespace")
        if kind == "Namespace" and new is not None:
            return  # only a deleted namespace needs the copies made again
        if kind == "PersistentVolumeClaim" and self._claim_facts(old) == self._claim_facts(new):
            return
        for key in self._group_keys_in(ns or ""):
            self.queue.add(key)

    @staticmethod
    def _claim_facts(p: dict[str, Any] | None) -> Any:
        if p is None:
            return None
        md, spec = p.get("metadata") or {}, p.get("spec") or {}
        return (md.get("labels"), md.get("deletionTimestamp"), spec.get("volumeName"),
                (p.get("status") or {}).get("phase"))

    @staticmethod
    def _spec_facts(o: dict[str, Any] | None) -> Any:
        """What of a resource the user (or the operator) decides: not its status."""
        if o is None:
            return None
        md = o.get("metadata") or {}
        return (o.get("spec"), md.get("finalizers"), md.get("deletionTimestamp"),
                md.get("generation"), (md.get("annotations") or {}).get(published.ARRAY_GROUP))

    def _served(self, kind: str) -> bool:
        if RESOURCES[kind].group in BUILTIN_GROUPS:
            return True
        now = time.monotonic()
        if self._kinds is None or now - self._kinds[0] > 30.0:
            custom = tuple(k for k in WATCH[self.site] if RESOURCES[k].group not in BUILTIN_GROUPS)
            self._kinds = (now, self._watch_kube.served_kinds(custom))
        return kind in self._kinds[1]

    # -- the arrays, polled ----------------------------------------------------------------
    def poll(self) -> None:
        """Read the arrays; queue the groups whose state changed or whose status is due."""
        views = [self.view] + ([self.backup_view] if self.backup_view is not None else [])
        back = [v for v in views if v.ok is False]
        answered = [v.refresh() for v in views]
        informers = {f"{i.site}/{i.kind}": i.connected for i in self._informers}
        came_back = any(v.ok for v in back) or any(
            ok and self._connected.get(k) is False for k, ok in informers.items())
        self._connected = informers
        if came_back:  # an array or API server answers again: everything may need a look
            log.info("a dependency answers again: every object is looked at again")
            for key in self._all_keys():
                self.backoff.forget(key)
            self.resync()
        if not answered[0]:
            return
        now = time.monotonic()
        period = self.status_period()
        for gname, key in list(self._group_keys.items()):
            fp = self._fingerprint(gname)
            if fp != self._fingerprints.get(gname) or \
                    now - self._status_written.get(key, 0.0) >= period:
                self.queue.add(key)

    def status_period(self) -> float:
        """Seconds between two refreshes of one group's lastSyncTime (when nothing else
        changed): at least a second, and about 20 writes a second over all groups."""
        return max(self.status_period_min, len(self._group_keys) / self.status_writes_per_s)

    def _fingerprint(self, gname: str) -> Any:
        g = self.view.group(gname) or {}
        lag = g.get("lag") or {}
        assert self.backup_view is not None
        bvols = tuple(self.backup_view.has_volume(v) for v in sorted((g.get("members") or {}).values()))
        bg = self.backup_view.group(gname) or {}
        return (g.get("state"), g.get("message"), tuple(sorted(g.get("members") or {})),
                bool(lag.get("consistent")), g.get("connected"), bvols, bg.get("state"),
                g.get("side"), g.get("paired"), bool(g.get("promoted")), bool(g.get("demoted")),
                bg.get("side"), bg.get("paired"))

    # -- what the plug-in publishes (see dr_kit.published) -----------------------------
    def publish_array(self) -> None:
        """The array's management endpoint, in a Secret of the plug-in's own namespace that
        the storage class names (as a CSI driver names its credentials)."""
        values = {published.MANAGEMENT_URL_KEY: self.array.url, "array": self.site}
        token = self.lab.array_token(self.site)
        if token:  # the management API needs it (as a CSI driver's credentials Secret holds them)
            values[published.TOKEN_KEY] = token
        secret = self.kube.get("Secret", ARRAY_SECRET, PLUGIN_NAMESPACE)
        if secret is None:
            self.kube.create("Namespace", {"metadata": {"name": PLUGIN_NAMESPACE, "labels": {
                "app.kubernetes.io/part-of": "dr-kit-lab"}}}, exist_ok=True)
            self.kube.create("Secret", {
                "metadata": {"name": ARRAY_SECRET, "namespace": PLUGIN_NAMESPACE,
                             "labels": {"app.kubernetes.io/part-of": "dr-kit-lab"}},
                "type": "Opaque", "data": published.encode(values)}, exist_ok=True)
        elif any(published.secret_text(secret, k) != v for k, v in values.items()):
            self.kube.patch("Secret", ARRAY_SECRET, {"data": published.encode(values)},
                            PLUGIN_NAMESPACE)

    def _annotate_group(self, kind: str, obj: dict[str, Any], gname: str) -> dict[str, Any]:
        m = obj["metadata"]
        if (m.get("annotations") or {}).get(published.ARRAY_GROUP) != gname:
            obj = self._write(self.caches[kind], self.kube.patch(
                kind, m["name"], {"metadata": {"annotations": {published.ARRAY_GROUP: gname}}},
                m.get("namespace")))
        return obj

    def _add_finalizer(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        m = obj["metadata"]
        if FINALIZER in (m.get("finalizers") or []):
            return obj
        return self._write(self.caches[kind], self.kube.patch(
            kind, m["name"], {"metadata": {"finalizers": [*(m.get("finalizers") or []), FINALIZER]}},
            m.get("namespace")))

    def _drop_finalizer(self, kind: str, obj: dict[str, Any]) -> None:
        m = obj["metadata"]
        if FINALIZER not in (m.get("finalizers") or []):
            return
        fins = [f for f in m.get("finalizers", []) if f != FINALIZER]
        try:
            self._write(self.caches[kind], self.kube.patch(
                kind, m["name"], {"metadata": {"finalizers": fins}}, m.get("namespace")))
        except NotFound:
            pass

    @staticmethod
    def _write(cache: Cache | None, obj: dict[str, Any]) -> dict[str, Any]:
        """An object as the API answered a write: into the cache at once."""
        if cache is not None and (obj.get("metadata") or {}).get("name"):
            obj.setdefault("kind", cache.kind)
            cache.write_through(obj)
        return obj

    # -- provisioner ----------------------------------------------------------------
    def provision(self, ns: str, name: str) -> None:
        pvc = self.caches["PersistentVolumeClaim"].get(ns, name)
        if pvc is None or not self._pending(pvc):
            return
        if _meta(pvc).get("labels", {}).get(REPLICATED_LABEL):
            return  # a backup-site copy: bound by the replication plug-in
        uid = pvc["metadata"]["uid"]
        vol = f"pvc-{uid}"
        size = parse_quantity(pvc["spec"]["resources"]["requests"]["storage"])
        src = pvc["spec"].get("dataSource") or pvc["spec"].get("dataSourceRef")
        if src and src.get("kind") == "VolumeSnapshot":
            handle = self._snapshot_handle(ns, src["name"])
            if handle is None:
                return  # snapshot not ready yet: its change queues this PVC again
            snap, source_vol = handle.split("/", 1)
            try:
                info = self.array.create_clone(vol, snap, source_vol)
                size = info["size"]
            except Conflict:  # made by an earlier attempt
                size = (self.view.volume(vol) or {}).get("size") or size
        else:
            try:
                self.array.create_volume(vol, max(size, 1 << 20))
            except Conflict:
                pass  # made by an earlier attempt (same PVC uid)
        self.view.add_volume(vol, size)
        self._bind(self.kube, pvc, vol, size, pvcs=self.caches["PersistentVolumeClaim"],
                   pvs=self.caches["PersistentVolume"])
        if src and src.get("kind") == "VolumeSnapshot":
            # the writes above reach the cache at once, so their watch events change
            # nothing: the databases of a restore are looked at now
            self.queue.add(("databases",))

    def _bind(self, kube: Kube, pvc: dict[str, Any], vol: str, size: int, *,
              pvcs: Cache | None, pvs: Cache | None, pv_name: str | None = None,
              labels: dict[str, str] | None = None) -> None:
        m = pvc["metadata"]
        pv_name = pv_name or vol
        pv: dict[str, Any] = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": pv_name, "labels": labels or {},
                           "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}},
              "spec": {"capacity": {"storage": format_bytes(size)},
                       "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Delete" if not labels else "Retain",
                       "storageClassName": STORAGE_CLASS, "volumeMode": "Filesystem",
                       "csi": {"driver": CSI_DRIVER, "volumeHandle": vol},
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                    "namespace": m["namespace"], "name": m["name"], "uid": m.get("uid")}}}
        have = pvs.get(None, pv_name) if pvs is not None else None
        if have is None:
            have = self._write(pvs, kube.create("PersistentVolume", pv, exist_ok=True))
        if (have.get("status") or {}).get("phase") != "Bound":
            self._write(pvs, kube.patch("PersistentVolume", pv_name, {"status": {"phase": "Bound"}},
                                        status=True))
        if pvc["spec"].get("volumeName") != pv_name:
            pvc = self._write(pvcs, kube.patch("PersistentVolumeClaim", m["name"],
                                               {"spec": {"volumeName": pv_name}}, m["namespace"]))
        self._write(pvcs, kube.patch(
            "PersistentVolumeClaim", m["name"],
            {"status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"],
                        "capacity": {"storage": format_bytes(size)}}}, m["namespace"], status=True))

    def release(self, name: str) -> None:
        """A PV of this driver whose claim is gone: delete its volume (Delete) or mark it
        Released (Retain).  The claim's absence is confirmed with the API first: a watch
        may deliver a new PV before its PVC."""
        pv = self.caches["PersistentVolume"].get(None, name)
        if pv is None or not self._ours(pv):
            return
        spec = pv.get("spec", {})
        ref = spec.get("claimRef") or {}
        ns, claim_name = ref.get("namespace"), ref.get("name")

        def claimed(p: dict[str, Any] | None) -> bool:
            return p is not None and (not ref.get("uid") or p["metadata"].get("uid") == ref.get("uid"))

        if ns and claim_name and claimed(self.caches["PersistentVolumeClaim"].get(ns, claim_name)):
            return
        if ns and claim_name and claimed(self.kube.get("PersistentVolumeClaim", claim_name, ns)):
            return
        if spec.get("persistentVolumeReclaimPolicy") == "Delete":
            try:
                self.array.delete_volume(spec["csi"]["volumeHandle"])
            except NotFound:
                pass
            except Conflict:  # still replicated or snapshotted: try again later
                self.queue.add_after(("pv", name), 2.0)
                return
            try:
                self.kube.delete("PersistentVolume", name, missing_ok=True)
            finally:
                self.caches["PersistentVolume"].forget(None, name)
        elif pv.get("status", {}).get("phase") != "Released":
            self._write(self.caches["PersistentVolume"], self.kube.patch(
                "PersistentVolume", name, {"status": {"phase": "Released"}}, status=True))

    def _snapshot_handle(self, ns: str, name: str) -> str | None:
        vs = self.caches["VolumeSnapshot"].get(ns, name) or self.kube.get("VolumeSnapshot", name, ns)
        if not vs or not vs.get("status", {}).get("readyToUse"):
            return None
        content_name = vs["status"]["boundVolumeSnapshotContentName"]
        content = self.caches["VolumeSnapshotContent"].get(None, content_name) or \
            self.kube.get("VolumeSnapshotContent", content_name)
        return (content or {}).get("status", {}).get("snapshotHandle")

    # -- replication plug-in (main site) --------------------------------------------
    def _pv_of(self, pvc: dict[str, Any]) -> dict[str, Any] | None:
        pv = self.caches["PersistentVolume"].get(None, (pvc.get("spec") or {}).get("volumeName") or "")
        if pv is None or not self._ours(pv):
            return None
        return pv

    def _group_members(self, ns: str, selector: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """Bound PVCs of the namespace matching the selector, and their array volumes."""
        pvcs, vols = [], []
        for p in sorted(self.caches["PersistentVolumeClaim"].in_namespace(ns),
                        key=lambda p: p["metadata"]["name"]):
            if _meta(p).get("deletionTimestamp"):
                continue
            if not match_selector(selector, p["metadata"].get("labels") or {}):
                continue
            pv = self._pv_of(p)
            if pv is None:
                continue
            pvcs.append(p)
            vols.append(pv["spec"]["csi"]["volumeHandle"])
        return pvcs, vols

    def _ensure_array_group(self, gname: str, vols: list[str], params: dict[str, Any]) -> dict[str, Any]:
        """The array group with exactly ``vols`` (created or changed as needed).  Read from
        the last poll of the array (at most ``poll`` seconds old); read again only after a
        change."""
        if not self.view.ok and not self.view.refresh():
            raise Unavailable(f"the {self.site} array is unreachable: {self.view.error}")
        g = self.view.group(gname)
        if g is None or g.get("side") != "main":
            opts: dict[str, Any] = {"mode": params.get("mode", "async")}
            if "journalCapacity" in params:
                opts["journal_capacity"] = parse_quantity(params["journalCapacity"])
            if "transferIntervalMs" in params:
                opts["transfer_interval_ms"] = float(params["transferIntervalMs"])
            # a fresh secret for this pair, told to the backup array first; a retry of the
            # same creation gives the same one (a creation that went through although its
            # answer was lost must not leave the backup expecting another secret)
            assert self.backup_array is not None
            secret = self._pair_secrets.setdefault(gname, new_pair_secret())
            self.backup_array.authorize_pair(gname, secret)
            try:
                made = self.array.create_group(gname, vols, self._peer_address(),
                                               secret=secret, **opts)
            except Conflict:  # it exists after all (made since the last poll): converge
                return self._fresh_group(gname)
            g = {"name": gname, "side": "main", "state": made.get("state", "copy"),
                 "members": {v: v for v in vols}, "lag": {}, "message": ""}
            self.view.put_group(g)  # until the next poll reads it
            return g
        have = set(g["members"])
        if have == set(vols):
            return g
        for v in vols:
            if v not in have:
                self.array.add_member(gname, v)
        for v in sorted(have - set(vols)):
            self.array.remove_member(gname, v)
        return self._fresh_group(gname)

    def _fresh_group(self, gname: str) -> dict[str, Any]:
        """The group as the array says now (the whole view is read again)."""
        if not self.view.refresh():
            raise Unavailable(f"the {self.site} array is unreachable: {self.view.error}")
        g = self.view.group(gname)
        if g is None or g.get("side") != "main":
            raise NotFound(f"array group {gname} is not on the {self.site} array")
        return g

    def _ensure_backup_objects(self, ns: str, pvcs: list[dict[str, Any]], vols: list[str], gname: str,
                               state: str) -> None:
        """The namespace, PVs and bound PVCs of the replicated volumes at the backup site.

        A group in ``pair`` state has all its volumes at the backup array; when the backup
        view (polled) does not show them yet, it is read again here, so that the status
        written after this (in sync) never runs ahead of the backup site's objects."""
        assert self.backup_kube is not None and self.backup_view is not None
        bk = self.backup_kube
        bpvcs = self.other["PersistentVolumeClaim"]
        if not all(c.synced.is_set() for c in self.other.values()):
            raise Unavailable(f"the {self.other_site} site's API server is not watched yet")
        if state == "pair" and not all(self.backup_view.has_volume(v) for v in vols):
            self.backup_view.refresh()
        present = [(p, v) for p, v in zip(pvcs, vols, strict=True) if self.backup_view.has_volume(v)]
        if not present:
            return  # the backup array creates the volumes when the pair starts
        if self.other["Namespace"].get(None, ns) is None:
            self._write(self.other["Namespace"], bk.create(
                "Namespace", {"metadata": {"name": ns, "labels": {REPLICATED_LABEL: "main"}}},
                exist_ok=True))
        for pvc, vol in present:
            name = pvc["metadata"]["name"]
            bp = bpvcs.get(ns, name)
            if bp is None:
                labels = dict(pvc["metadata"].get("labels") or {})
                labels[REPLICATED_LABEL] = "main"
                body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": name, "namespace": ns, "labels": labels,
                                     "annotations": {A + "consistency-group": gname, A + "volume": vol}},
                        "spec": {"storageClassName": STORAGE_CLASS,
                                 "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                                 "resources": pvc["spec"]["resources"], "volumeName": vol}}
                bp = self._write(bpvcs, bk.create("PersistentVolumeClaim", body, exist_ok=True))
            if bp and bp.get("status", {}).get("phase") != "Bound" and \
                    not _meta(bp).get("deletionTimestamp"):
                size = (self.backup_view.volume(vol) or {}).get("size") or parse_quantity(
                    pvc["spec"]["resources"]["requests"]["storage"])
                self._bind(bk, bp, vol, int(size), pvcs=bpvcs, pvs=None, pv_name=vol,
                           labels={REPLICATED_LABEL: "main"})

    def _status_from(self, g: dict[str, Any], pvcs: list[dict[str, Any]], gen: int | None,
                     key: Key) -> tuple[dict[str, Any], int]:
        lag = g["lag"]
        state = g["state"]
        consistent = bool(lag.get("consistent"))
        applied_bytes = int(g.get("applied_bytes", 0))
        synced = max(0, applied_bytes - self._synced_bytes.get(key, applied_bytes))
        msg = g.get("message") or ("replicating" if state == "pair" else state)
        st: dict[str, Any] = {
            "state": "Primary", "message": msg, "observedGeneration": gen or 0,
            "persistentVolumeClaimsRefList": [{"name": p["metadata"]["name"]} for p in pvcs],
            "conditions": [
                _condition("Completed", state == "pair" and consistent, "Replicating" if state == "pair" else state.capitalize(), msg, gen),
                _condition("Degraded", state in ("suspended", "error"), state.capitalize() if state in ("suspended", "error") else "Healthy", msg, gen),
                _condition("Resyncing", state in ("copy", "resync"), "Copying" if state in ("copy", "resync") else "NotResyncing", msg, gen),
            ],
            "lastSyncBytes": synced,
        }
        t, at = self._applied(g["name"])
        if t and at:
            st["lastSyncDuration"] = f"{max(0.0, at - t):.3f}s"
        if state == "pair" and consistent and lag.get("sequence_lag") == 0 and \
                lag.get("time_lag_s") == 0:
            t = lag.get("measured_at") or t  # caught up: the backup equals the main as of now
        if t:
            st["lastSyncTime"] = now_rfc3339(t)
        return st, applied_bytes

    def _applied(self, gname: str) -> tuple[float | None, float | None]:
        """(main-site time of the last write applied at the backup, when it was applied)."""
        assert self.backup_view is not None
        bg = self.backup_view.group(gname) or {}
        return bg.get("applied_time"), bg.get("applied_at")

    def _write_status(self, kind: str, obj: dict[str, Any], status: dict[str, Any], key: Key,
                      applied_bytes: int | None = None) -> None:
        """Patch the status when a fact changed, or when only the sync figures moved and the
        group's refresh period has passed."""
        cur = obj.get("status") or {}
        now = time.monotonic()
        if _steady(status) == _steady(cur):
            moved = {k: status.get(k) for k in VOLATILE} != {k: cur.get(k) for k in VOLATILE}
            if not moved or now - self._status_written.get(key, 0.0) < self.status_period():
                return
        _keep_transitions(status, cur)
        m = obj["metadata"]
        self._write(self.caches[kind], self.kube.patch(kind, m["name"], {"status": status},
                                                       m.get("namespace"), status=True))
        self._status_written[key] = now
        if applied_bytes is not None:
            self._synced_bytes[key] = applied_bytes

    def replicate_csi_addons(self, ns: str, name: str) -> None:
        key: Key = ("vgr", ns, name)
        vgr = self.caches["VolumeGroupReplication"].get(ns, name)
        gname = group_name(ns, name)
        if vgr is None:
            self._forget_group(gname, key)
            return
        m = vgr["metadata"]
        cls = self.caches["VolumeGroupReplicationClass"].get(
            None, vgr["spec"].get("volumeGroupReplicationClassName", ""))
        if cls is None or cls["spec"].get("provisioner") != CSI_DRIVER:
            return  # another driver's
        if m.get("deletionTimestamp"):
            if FINALIZER in (m.get("finalizers") or []):
                self._teardown(gname)
                self._drop_finalizer("VolumeGroupReplication", vgr)
            self._forget_group(gname, key)
            return
        self._group_keys[gname] = key
        selector = vgr["spec"].get("source", {}).get("selector") or {}
        if self.view.group(gname) is None and self._pvcs_behind(key, vgr, ns, selector):
            return  # queued again in a moment
        vgr = self._add_finalizer("VolumeGroupReplication", vgr)
        vgr = self._annotate_group("VolumeGroupReplication", vgr, gname)
        pvcs, vols = self._group_members(ns, selector)
        if not vols:
            return
        want = vgr["spec"].get("replicationState") or "primary"
        if want == "primary" and self.view.group(gname) is None:
            wanted = [q for q in self._class_pvcs(ns)
                      if match_selector(selector, q["metadata"].get("labels") or {})]
            if self._members_unbound(key, len(pvcs) < len(wanted)):
                return  # queued again in a moment
        g = self._apply_role(gname, vols, want, cls["spec"].get("parameters") or {})
        if g is None:
            return
        gen = vgr["metadata"].get("generation")
        if g["side"] == "main":
            if g.get("paired", True):
                self._ensure_backup_objects(ns, pvcs, vols, gname, g["state"])
            self._fingerprints[gname] = self._fingerprint(gname)
            status, applied = self._status_from(g, pvcs, gen, key)
            self._write_status("VolumeGroupReplication", vgr, status, key, applied)
        else:
            self._fingerprints[gname] = self._fingerprint(gname)
            self._write_status("VolumeGroupReplication", vgr, self._secondary_status(g, pvcs, gen), key)

    # -- roles: which side holds the primary copy (DR operations) ----------------------
    def _peer_address(self) -> str:
        """Where this site's array reaches the other site's replication port."""
        if self.site == "main":
            return self.lab.link_address(self.state)  # through the lab's link emulator
        return str(self.state["endpoints"]["main"]["array"]["replication"])

    def _my_address(self) -> str:
        """Where the other site's array reaches this site's replication port."""
        if self.site == "main":
            return str(self.state["endpoints"]["main"]["array"]["replication"])
        return self.lab.link_address(self.state)

    def _local_group(self, gname: str) -> dict[str, Any] | None:
        try:
            g = self.array.group_status(gname)
        except NotFound:
            self.view.drop_group(gname)
            return None
        self.view.put_group(g)
        return g

    def _peer_group(self, gname: str) -> dict[str, Any] | None:
        """The other array's side of the group; None when it has none or is unreachable."""
        assert self.backup_array is not None
        try:
            return self.backup_array.group_status(gname)
        except DrKitError:
            return None

    def _apply_role(self, gname: str, vols: list[str], want: str,
                    params: dict[str, Any]) -> dict[str, Any] | None:
        """Bring this array's side of the group to the role asked: ``primary`` (create the
        pair, or promote a backup-side copy), ``secondary`` (demote: the hosts here are
        fenced) or ``resync`` (demoted, and paired with the other side's promoted copy,
        whose resync copies the regions changed on either side since the split).  The
        steady case (primary, paired) is read from the last poll; a role change reads the
        arrays themselves."""
        seen = self.view.group(gname)
        if want == "primary" and (seen is None or (seen.get("side") == "main" and seen.get("paired", True))):
            return self._ensure_array_group(gname, vols, params)
        local = self._local_group(gname)
        if want == "primary":
            if local is not None and local["side"] == "backup":
                self._promote(gname, local)
            elif local is None or local.get("paired", True):
                return self._ensure_array_group(gname, vols, params)
            return self._local_group(gname)
        if local is None:
            return None
        if local["side"] == "main":
            peer = self._peer_group(gname)
            split = (peer or {}).get("promoted") if (peer or {}).get("side") == "main" else None
            self.array.group_action(gname, "demote",
                                    **({"split": split["position"]} if split else {}))
            log.info("group %s demoted at the %s site (hosts fenced)", gname, self.site)
        if want == "resync":
            peer = self._peer_group(gname)
            if peer is not None and peer["side"] == "main" and not peer.get("paired"):
                assert self.backup_array is not None
                secret = new_pair_secret()
                self.array.authorize_pair(gname, secret)
                self.backup_array.group_action(gname, "pair", remote=self._my_address(), secret=secret)
                log.info("group %s: the %s site resyncs from the %s site", gname, self.site,
                         self.other_site)
        return self._local_group(gname)

    def _promote(self, gname: str, local: dict[str, Any]) -> None:
        """Promote this array's copy: without any copy when the other side was demoted at
        exactly the position applied here (paired at once), else tracking changes."""
        peer = self._peer_group(gname)
        applied = local.get("applied")
        clean = (peer is not None and peer["side"] == "backup"
                 and bool((peer.get("demoted") or {}).get("clean")) and peer.get("applied") == applied
                 and local.get("state") == "pair" and bool(local.get("consistent"))
                 and str(local.get("received")) == str(applied).rsplit("/", 1)[-1])
        if clean:
            assert self.backup_array is not None
            secret = new_pair_secret()
            self.backup_array.authorize_pair(gname, secret)
            info = self.array.group_action(gname, "promote", track=True, clean=True,
                                           remote=self._peer_address(), secret=secret)
        else:
            info = self.array.group_action(gname, "promote", track=True, remote=self._peer_address())
        log.info("group %s promoted at the %s site at %s (%s)", gname, self.site,
                 info.get("position"), "no copy needed" if clean else "tracking changes")

    def _secondary_status(self, g: dict[str, Any], pvcs: list[dict[str, Any]],
                          gen: int | None) -> dict[str, Any]:
        """Status of a resource whose copy here is the secondary (backup-side) one."""
        state, consistent = g["state"], bool(g.get("consistent"))
        msg = g.get("message") or ("replicated from the other site" if state == "pair" else state)
        st: dict[str, Any] = {
            "state": "Secondary", "message": msg, "observedGeneration": gen or 0,
            "persistentVolumeClaimsRefList": [{"name": p["metadata"]["name"]} for p in pvcs],
            "conditions": [
                _condition("Completed", state == "pair" and consistent,
                           "Replicating" if state == "pair" else state.capitalize(), msg, gen),
                _condition("Degraded", state in ("suspended", "error"),
                           state.capitalize() if state in ("suspended", "error") else "Healthy", msg, gen),
                _condition("Resyncing", state in ("copy", "resync"),
                           "Copying" if state in ("copy", "resync") else "NotResyncing", msg, gen)]}
        if g.get("applied_time"):
            st["lastSyncTime"] = now_rfc3339(g["applied_time"])
        return st

    def _pvcs_behind(self, key: Key, obj: dict[str, Any], ns: str, selector: dict[str, Any],
                     patience: float = 2.0) -> bool:
        """Whether the PVC watch may not have delivered the changes made before ``obj``.

        The operator labels a namespace's PVCs, then creates the group that selects them by
        that label; the two watches deliver independently.  A new group is created with
        all its members at once (a member added later is copied afterwards, see below),
        so while some PVC of the namespace does not match the selector yet and the PVC
        watch has not reached the group's resourceVersion, its creation waits (at most
        ``patience`` seconds: a selector may leave PVCs out on purpose)."""
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        pvcs = self._class_pvcs(ns)
        behind = not (all(match_selector(selector, p["metadata"].get("labels") or {}) for p in pvcs)
                      or not (isinstance(rv, str) and rv.isdigit())
                      or self._rv_seen.get("PersistentVolumeClaim", 0) >= int(rv))
        return self._hold(key, behind, patience)

    def _class_pvcs(self, ns: str) -> list[dict[str, Any]]:
        """The namespace's PVCs of this plug-in's storage class, not being deleted (cache)."""
        return [p for p in self.caches["PersistentVolumeClaim"].in_namespace(ns)
                if (p.get("spec") or {}).get("storageClassName") == STORAGE_CLASS
                and not _meta(p).get("deletionTimestamp")]

    def _members_unbound(self, key: Key, unbound: bool, patience: float = 10.0) -> bool:
        """Whether a new group waits for members whose volumes are not provisioned yet.

        A group is made with all its members at once: one that joins later is copied by a
        resync (or, during the initial copy, by a second pass), and the copy reads as
        complete and in sync in between.  So while some member's PVC is not bound, the
        group's creation waits (at most ``patience`` seconds: a PVC may never bind)."""
        return self._hold(key, unbound, patience)

    def _hold(self, key: Key, waiting: bool, patience: float) -> bool:
        """True while ``waiting`` and for at most ``patience`` seconds since it began for
        ``key``: the key is queued again in 0.1 s."""
        if not waiting:
            self._first_seen.pop(key, None)
            return False
        first = self._first_seen.setdefault(key, time.monotonic())
        if time.monotonic() - first >= patience:
            self._first_seen.pop(key, None)
            return False
        self.queue.add_after(key, 0.1)
        return True

    def _forget_group(self, gname: str, key: Key) -> None:
        if self._group_keys.get(gname) == key:
            self._group_keys.pop(gname, None)
        self._fingerprints.pop(gname, None)
        self._pair_secrets.pop(gname, None)
        self._status_written.pop(key, None)
        self._synced_bytes.pop(key, None)

    def replicate_hitachi(self, ns: str, cg: str) -> None:
        key: Key = ("hitachi", ns, cg)
        members = [r for r in self.caches["Replication"].in_namespace(ns)
                   if self._hitachi_key(r) == key]
        gname = hitachi_group_name(ns, cg)
        live = [r for r in members if not r["metadata"].get("deletionTimestamp")]
        for r in members:
            m = r["metadata"]
            if m.get("deletionTimestamp") and FINALIZER in (m.get("finalizers") or []):
                if not live:
                    self._teardown(gname)
                self._drop_finalizer("Replication", r)
        if not live:
            self._forget_group(gname, key)
            return
        self._group_keys[gname] = key
        live = [self._annotate_group("Replication", self._add_finalizer("Replication", r), gname)
                for r in live]
        pvcs, vols, reps = [], [], []
        for r in sorted(live, key=lambda r: r["spec"].get("persistentVolumeClaimName", "")):
            p = self.caches["PersistentVolumeClaim"].get(ns, r["spec"].get("persistentVolumeClaimName", ""))
            pv = self._pv_of(p) if p else None
            if p and pv:
                pvcs.append(p)
                vols.append(pv["spec"]["csi"]["volumeHandle"])
                reps.append(r)
        if not vols:
            return
        mode = "sync" if str(live[0]["spec"].get("replicationType", "UR")).upper() == "TC" else "async"
        parent = live[0]["spec"].get("parentName")
        rg = self.caches["ReplicationGroup"].get(ns, parent) if parent else None
        if parent and rg is None:
            # the members arrived before their group: its desired pair state decides this
            # copy's role (a DR move creates the members first), and its arrival queues
            # the members again
            return
        want = (rg or {}).get("spec", {}).get("desiredPairState", "pair")
        # DR roles (the lab's reading): svol = this site's copy is the secondary one
        # (demoted, fenced), resync = and resynchronised from the other site's primary
        role = {"svol": "secondary", "resync": "resync"}.get(want, "primary")
        if role == "primary" and self.view.group(gname) is None:
            # a new group is made with all its members: first their volumes (from the
            # cache), then the members themselves, read from the API server once the group
            # is about to be made (the watch of the Replications may not have delivered the
            # last ones yet: its kind is watched apart from the ReplicationGroup's); the
            # pass is made again once this site's cache holds the same
            if self._members_unbound(key, len(reps) < len(live)):
                return  # queued again in a moment
            now = {r["metadata"]["name"] for r in self.kube.items("Replication", ns)
                   if self._hitachi_key(r) == key and not r["metadata"].get("deletionTimestamp")}
            if now != {r["metadata"]["name"] for r in live}:
                self.queue.add_after(key, 0.1)
                return
        g = self._apply_role(gname, vols, role, {"mode": mode})
        if g is None:
            return
        if g["side"] == "main":
            # a split pair is suspended by request: the array holds it so, its changes
            # tracked, until a resync is asked for (pair)
            if want == "split" and (g["state"] in ("pair", "resync") or
                                    (g["state"] == "suspended" and not g.get("held"))):
                self.array.group_action(gname, "suspend")
                g = self._fresh_group(gname)
            elif want == "pair" and g["state"] == "suspended" and g.get("paired", True):
                self.array.group_action(gname, "resync")
                g = self._fresh_group(gname)
            if g.get("paired", True):
                self._ensure_backup_objects(ns, pvcs, vols, gname, g["state"])
        self._fingerprints[gname] = self._fingerprint(gname)
        pair_state = {"pair": "PAIR", "copy": "COPY", "resync": "COPY", "suspended": "PSUS",
                      "error": "PSUE"}.get(g["state"], g["state"].upper())
        if g["side"] == "backup":  # S-VOL states
            pair_state = {"pair": "PAIR", "copy": "COPY", "resync": "COPY", "suspended": "SSUS",
                          "error": "PSUE"}.get(g["state"], g["state"].upper())
        t, _ = self._applied(gname) if g["side"] == "main" else (g.get("applied_time"), None)
        for r, p in zip(reps, pvcs, strict=True):
            st = {"pairState": pair_state, "consistencyGroupId": cg, "copyGroup": gname,
                  "lastSyncTime": now_rfc3339(t) if t else None,
                  "timeLagSeconds": (g.get("lag") or {}).get("time_lag_s"),
                  "message": g.get("message", ""),
                  "persistentVolumeClaimName": p["metadata"]["name"]}
            self._write_status("Replication", r, st, ("hitachi-member", ns, r["metadata"]["name"]))
        self._status_written[key] = time.monotonic()
        if parent:
            rg = self.caches["ReplicationGroup"].get(ns, parent)
            st = {"pairState": pair_state, "copyGroup": gname,
                  "role": "Primary" if g["side"] == "main" else "Secondary",
                  "members": [p["metadata"]["name"] for p in pvcs]}
            if rg is not None and _steady(rg.get("status")) != st:
                self._write(self.caches["ReplicationGroup"], self.kube.patch(
                    "ReplicationGroup", parent, {"status": st}, ns, status=True))

    def _teardown(self, gname: str) -> None:
        """Replication removed: stop the pairs; backup volumes stay (their data is kept).
        Removing it where the copy is the secondary one leaves the other site's primary
        copy alone."""
        assert self.backup_array is not None and self.backup_view is not None
        local = self._local_group(gname)
        try:
            self.array.delete_group(gname)
        except NotFound:
            pass
        self.view.drop_group(gname)
        if local is not None and local["side"] == "backup":
            return
        try:
            self.backup_array.delete_group(gname)  # the volumes become plain volumes there
        except NotFound:
            pass
        self.backup_view.drop_group(gname)

    # -- the shop application's pod (the site where it runs) --------------------------
    def shop_status(self) -> None:
        """Report the shop process as a Pod and in its Deployment's status, as a kubelet
        would: Running while its process lives (checked by pid and start time), Failed
        when it has died, nothing when the lab never started it."""
        from dr_kit.lab import processes
        from dr_kit.lab.layout import SHOP_NAMESPACE

        record = self.lab.load().get("processes", {}).get("shop")
        if not record:
            return
        here = record.get("site", "main") == self.site  # the shop runs at the primary site
        running = here and processes.alive(record)
        key = (record.get("pid"), running)
        if key == self._shop_reported:
            return
        if not here and self.kube.get("Pod", "shop-0", SHOP_NAMESPACE) is None:
            self._shop_reported = key
            return
        started = now_rfc3339(record.get("create_time"))
        labels = {"app": "shop", "app.kubernetes.io/part-of": "dr-kit-lab"}
        pod_status = {
            "phase": "Running" if running else "Failed", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True" if running else "False",
                            "lastTransitionTime": now_rfc3339()}],
            "containerStatuses": [{
                "name": "shop", "ready": running, "restartCount": 0, "image": "dr-kit/shopapp:lab",
                "imageID": "", "started": running,
                "state": ({"running": {"startedAt": started}} if running else
                          {"terminated": {"exitCode": 137, "reason": "Error",
                                          "message": f"process {record.get('pid')} is gone",
                                          "finishedAt": now_rfc3339()}})}]}
        name = "shop-0"
        if self.kube.get("Pod", name, SHOP_NAMESPACE) is None:
            self.kube.create("Pod", {
                "metadata": {"name": name, "namespace": SHOP_NAMESPACE, "labels": labels,
                             "annotations": {A + "pid": str(record.get("pid"))}},
                "spec": {"containers": [{"name": "shop", "image": "dr-kit/shopapp:lab"}]}},
                exist_ok=True)
        self.kube.patch("Pod", name, {"metadata": {"annotations": {A + "pid": str(record.get("pid"))}}},
                        SHOP_NAMESPACE)
        self.kube.patch("Pod", name, {"status": pod_status}, SHOP_NAMESPACE, status=True)
        n = 1 if running else 0
        try:
            self.kube.patch("Deployment", "shop", {"status": {
                "replicas": 1, "updatedReplicas": 1, "readyReplicas": n, "availableReplicas": n,
                "unavailableReplicas": 1 - n}}, SHOP_NAMESPACE, status=True)
        except NotFound:
            pass
        self._shop_reported = key

    # -- group snapshots (the secondary copy's site) ----------------------------------
    def group_snapshot(self, ns: str, name: str) -> None:
        vgs = self.caches["VolumeGroupSnapshot"].get(ns, name)
        if vgs is None:
            return
        if vgs["metadata"].get("deletionTimestamp"):
            self._delete_group_snapshot(vgs)
            return
        if vgs.get("status", {}).get("readyToUse") or vgs.get("status", {}).get("error"):
            return
        classes = self.caches["VolumeGroupSnapshotClass"]
        cls = classes.get(None, vgs["spec"].get("volumeGroupSnapshotClassName") or "")
        if cls is None:
            defaults = [c for c in classes.items() if (c["metadata"].get("annotations") or {}).get(
                "groupsnapshot.storage.kubernetes.io/is-default-class") == "true"]
            cls = defaults[0] if defaults else None
        if cls is None or cls.get("driver") != CSI_DRIVER:
            return
        self._take_group_snapshot(vgs, cls)

    def _error(self, kind: str, obj: dict[str, Any], msg: str) -> None:
        m = obj["metadata"]
        self._write(self.caches.get(kind), self.kube.patch(
            kind, m["name"], {"status": {"readyToUse": False, "error": {"message": msg, "time": now_rfc3339()}}},
            m.get("namespace"), status=True))

    def _take_group_snapshot(self, vgs: dict[str, Any], cls: dict[str, Any]) -> None:
        m = vgs["metadata"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        selector = vgs["spec"].get("source", {}).get("selector")
        if not selector:
            self._error("VolumeGroupSnapshot", vgs,
                        "only spec.source.selector is supported by the lab driver")
            return
        vgs = self._add_finalizer("VolumeGroupSnapshot", vgs)
        pvcs, vols = self._group_members(ns, selector)
        if not vols:
            self._error("VolumeGroupSnapshot", vgs,
                        f"no bound PVC of the lab driver in namespace {ns} matches the selector")
            return
        status = self.array.status()
        vgroup = {v["name"]: v.get("group") for v in status["volumes"]}
        groups = {vgroup.get(v) for v in vols}
        snap = f"groupsnapshot-{uid}"
        existing = {s["name"]: s for s in status["snapshots"]}
        if snap in existing:
            info = existing[snap]
        elif len(groups) == 1 and None not in groups:
            group = groups.pop()
            lag = self._backup_lag(group)
            info = self.array.create_snapshot(snap, group=group, volumes=vols)
            info["lag_s"] = lag
        else:
            info = self.array.create_snapshot(snap, volumes=vols)  # one instant, no common sequence
            info["lag_s"] = None
        created = now_rfc3339(info.get("created"))
        content_name = f"groupsnapcontent-{uid}"
        handles = [f"{snap}/{v}" for v in vols]
        self.kube.create("VolumeGroupSnapshotContent", {
            "apiVersion": "/".join(GSNAP), "kind": "VolumeGroupSnapshotContent",
            "metadata": {"name": content_name},
            "spec": {"deletionPolicy": cls.get("deletionPolicy", "Delete"), "driver": CSI_DRIVER,
                     "volumeGroupSnapshotClassName": cls["metadata"]["name"],
                     "source": {"groupSnapshotHandles": {"volumeGroupSnapshotHandle": snap,
                                                         "volumeSnapshotHandles": handles}},
                     "volumeGroupSnapshotRef": {"kind": "VolumeGroupSnapshot", "apiVersion": "/".join(GSNAP),
                                                "name": name, "namespace": ns, "uid": uid}}},
            exist_ok=True)
        self.kube.patch("VolumeGroupSnapshotContent", content_name, {"status": {
            "readyToUse": True, "creationTime": created, "volumeGroupSnapshotHandle": snap,
            "volumeSnapshotInfoList": [{"volumeHandle": v, "snapshotHandle": h, "readyToUse": True,
                                        "creationTime": int(info["created"] * 1e9)}
                                       for v, h in zip(vols, handles, strict=True)]}}, status=True)
        for pvc, vol, handle in zip(pvcs, vols, handles, strict=True):
            pname = pvc["metadata"]["name"]
            vs_name = f"{name}-{pname}"[:253]
            vsc_name = f"snapcontent-{uid[:8]}-{vol}"[:253]
            size = parse_quantity((pvc.get("status", {}).get("capacity") or {}).get("storage")
                                  or pvc["spec"]["resources"]["requests"]["storage"])
            self.kube.create("VolumeSnapshotContent", {
                "apiVersion": "/".join(SNAP), "kind": "VolumeSnapshotContent",
                "metadata": {"name": vsc_name, "labels": {A + "group-snapshot-uid": uid}},
                "spec": {"deletionPolicy": "Delete", "driver": CSI_DRIVER,
                         "source": {"snapshotHandle": handle},
                         "volumeSnapshotRef": {"kind": "VolumeSnapshot", "apiVersion": "/".join(SNAP),
                                               "name": vs_name, "namespace": ns}}},
                exist_ok=True)
            self._write(self.caches["VolumeSnapshotContent"], self.kube.patch(
                "VolumeSnapshotContent", vsc_name, {"status": {
                    "readyToUse": True, "snapshotHandle": handle, "volumeGroupSnapshotHandle": snap,
                    "creationTime": int(info["created"] * 1e9), "restoreSize": size}}, status=True))
            self.kube.create("VolumeSnapshot", {
                "apiVersion": "/".join(SNAP), "kind": "VolumeSnapshot",
                "metadata": {"name": vs_name, "namespace": ns,
                             "labels": {A + "group-snapshot": name, A + "pvc": pname},
                             "ownerReferences": [{"apiVersion": "/".join(GSNAP), "kind": "VolumeGroupSnapshot",
                                                  "name": name, "uid": uid}]},
                "spec": {"source": {"volumeSnapshotContentName": vsc_name}}}, exist_ok=True)
            self._write(self.caches["VolumeSnapshot"], self.kube.patch("VolumeSnapshot", vs_name, {"status": {
                "readyToUse": True, "boundVolumeSnapshotContentName": vsc_name, "creationTime": created,
                "restoreSize": format_bytes(size), "volumeGroupSnapshotName": name}}, ns, status=True))
        ann = {published.SNAPSHOT_ARRAY_SNAPSHOT: snap,
               published.SNAPSHOT_CONSISTENT: json.dumps(info.get("consistent")),
               published.SNAPSHOT_VOLUMES: ",".join(p["metadata"]["name"] for p in pvcs)}
        if info.get("sequence") is not None:
            ann[published.SNAPSHOT_SEQUENCE] = str(info["sequence"])
            ann[published.SNAPSHOT_POSITION] = info.get("position", "")
        if info.get("time"):  # unix time of the last applied write
            ann[published.SNAPSHOT_TIME] = f"{info['time']:.6f}"
        if info.get("lag_s") is not None:
            ann[published.SNAPSHOT_LAG] = f"{info['lag_s']:.6f}"
        self._write(self.caches["VolumeGroupSnapshot"], self.kube.patch(
            "VolumeGroupSnapshot", name, {"metadata": {"annotations": ann}}, ns))
        self._write(self.caches["VolumeGroupSnapshot"], self.kube.patch(
            "VolumeGroupSnapshot", name, {"status": {
                "readyToUse": True, "boundVolumeGroupSnapshotContentName": content_name,
                "creationTime": created}}, ns, status=True))

    # -- pre-provisioned snapshots (the snapshot controller's part) -------------------
    def bind_static_snapshots(self) -> None:
        """A VolumeSnapshot naming a pre-provisioned VolumeSnapshotContent of this driver
        (``spec.source.snapshotHandle``, e.g. a group snapshot's member imported into
        another namespace) is bound and ready, as the snapshot controller binds them.  The
        lab's own bookkeeping labels (the group snapshot and source PVC of the handle) are
        copied, so restored databases are published as for the group's own snapshots."""
        contents = {c["metadata"]["name"]: c for c in self.caches["VolumeSnapshotContent"].items()}
        for vs in self.caches["VolumeSnapshot"].items():
            m = vs["metadata"]
            src = (vs.get("spec") or {}).get("source") or {}
            if (vs.get("status") or {}).get("readyToUse") or not src.get("volumeSnapshotContentName"):
                continue
            content = contents.get(src["volumeSnapshotContentName"])
            if content is None or (content.get("spec") or {}).get("driver") != CSI_DRIVER:
                continue
            handle = ((content.get("spec") or {}).get("source") or {}).get("snapshotHandle")
            if not handle or "/" not in handle:
                continue
            snap, vol = handle.split("/", 1)
            try:
                info = self.array.snapshot(snap)
            except NotFound:
                self._error("VolumeSnapshot", vs, f"snapshot handle {handle} does not exist on the array")
                continue
            if vol not in info.get("volumes", []):
                self._error("VolumeSnapshot", vs, f"snapshot {snap} has no volume {vol}")
                continue
            origin = next((o for o in contents.values()
                           if ((o.get("status") or {}).get("snapshotHandle") == handle)
                           and (o["metadata"].get("labels") or {}).get(A + "group-snapshot-uid")), None)
            group_name_, pvc_name = None, None
            if origin is not None:
                ref = (origin.get("spec") or {}).get("volumeSnapshotRef") or {}
                ovs = self.caches["VolumeSnapshot"].get(ref.get("namespace"), ref.get("name", ""))
                if ovs is not None:
                    group_name_ = (ovs.get("status") or {}).get("volumeGroupSnapshotName")
                    pvc_name = (ovs["metadata"].get("labels") or {}).get(A + "pvc")
            size = (self.view.volume(vol) or {}).get("size")
            created = now_rfc3339(info.get("created"))
            cname = content["metadata"]["name"]
            self._write(self.caches["VolumeSnapshotContent"], self.kube.patch(
                "VolumeSnapshotContent", cname, {"status": {
                    "readyToUse": True, "snapshotHandle": handle,
                    "creationTime": int(info["created"] * 1e9), **({"restoreSize": size} if size else {})}},
                status=True))
            if pvc_name:
                self._write(self.caches["VolumeSnapshot"], self.kube.patch(
                    "VolumeSnapshot", m["name"], {"metadata": {"labels": {A + "pvc": pvc_name}}},
                    m["namespace"]))
            self._write(self.caches["VolumeSnapshot"], self.kube.patch("VolumeSnapshot", m["name"], {"status": {
                "readyToUse": True, "boundVolumeSnapshotContentName": cname, "creationTime": created,
                **({"restoreSize": format_bytes(size)} if size else {}),
                **({"volumeGroupSnapshotName": group_name_} if group_name_ else {})}},
                m["namespace"], status=True))
            for p in self.caches["PersistentVolumeClaim"].in_namespace(m["namespace"]):
                ds = (p.get("spec") or {}).get("dataSource") or {}
                if ds.get("kind") == "VolumeSnapshot" and ds.get("name") == m["name"] and self._pending(p):
                    self.queue.add(("pvc", m["namespace"], p["metadata"]["name"]))

    # -- the DBA's part for the lab's shop (backup site) -------------------------------
    def publish_databases(self) -> None:
        """Once each shop database's PVC of a snapshot group is restored and bound, publish
        the databases' URLs in the Secret ``<group>-databases`` (``drkit+array://`` URLs
        over this array's data path), as a DBA publishes the database instances serving
        restored volumes; remove it when the restores are gone."""
        from dr_kit.sqlite.dialect import url_for

        found: dict[tuple[str, str], dict[str, str]] = {}
        claims = sorted(self.caches["PersistentVolumeClaim"].items(),
                        key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
        for pvc in claims:
            m, spec = pvc["metadata"], pvc.get("spec") or {}
            src = spec.get("dataSource") or spec.get("dataSourceRef") or {}
            if src.get("kind") != "VolumeSnapshot" or m.get("deletionTimestamp") or \
                    (pvc.get("status") or {}).get("phase") != "Bound":
                continue
            ns = m["namespace"]
            vs = self.caches["VolumeSnapshot"].get(ns, src.get("name") or "") or {}
            group = (vs.get("status") or {}).get("volumeGroupSnapshotName")
            db_file = SHOP_PVCS.get((vs.get("metadata", {}).get("labels") or {}).get(A + "pvc", ""))
            pv = self.caches["PersistentVolume"].get(None, spec.get("volumeName") or "") or {}
            volume = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle")
            if group and db_file and volume and self.array.data_socket:
                found.setdefault((ns, group), {}).setdefault(
                    db_file.split(".")[0], url_for(self.site, volume, db_file, self.array.data_socket))
        complete = {k: v for k, v in found.items() if set(v) == {"stock", "sales"}}
        have = {(s["metadata"]["namespace"], s["metadata"]["labels"][A + "databases-of"]): s
                for s in self.kube.items("Secret", label_selector=A + "databases-of")}
        for (ns, group), urls in complete.items():
            name = published.databases_secret(group)
            values = {published.STOCK_URL_KEY: urls["stock"], published.SALES_URL_KEY: urls["sales"]}
            secret = have.get((ns, group))
            if secret is None:
                self.kube.create("Secret", {
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {A + "databases-of": group,
                                            "app.kubernetes.io/part-of": "dr-kit-lab"}},
                    "type": "Opaque", "data": published.encode(values)}, exist_ok=True)
            elif any(published.secret_text(secret, k) != v for k, v in values.items()):
                self.kube.patch("Secret", name, {"data": published.encode(values)}, ns)
        for (ns, group), secret in have.items():
            if (ns, group) not in complete:
                self.kube.delete("Secret", secret["metadata"]["name"], ns, missing_ok=True)

    def _backup_lag(self, group: str | None) -> float | None:
        """Time lag of the group at this moment, read at the other (primary) site (None when
        unknown)."""
        if not group:
            return None
        try:
            other = self.other_site
            main = ArrayClient(self.lab.array_endpoint(other, self.state)["mgmt_url"], timeout=2.0,
                               token=self.lab.array_token(other))
            return main.lag(group).time_lag_s
        except DrKitError:
            return None

    def _delete_group_snapshot(self, vgs: dict[str, Any]) -> None:
        m = vgs["metadata"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        if FINALIZER not in (m.get("finalizers") or []):
            return
        for vs in self.caches["VolumeSnapshot"].in_namespace(ns):
            if (vs["metadata"].get("labels") or {}).get(A + "group-snapshot") == name:
                self.kube.delete("VolumeSnapshot", vs["metadata"]["name"], ns, missing_ok=True)
        for vsc in self.caches["VolumeSnapshotContent"].items():
            if (vsc["metadata"].get("labels") or {}).get(A + "group-snapshot-uid") == uid:
                self.kube.delete("VolumeSnapshotContent", vsc["metadata"]["name"], missing_ok=True)
        self.kube.delete("VolumeGroupSnapshotContent", f"groupsnapcontent-{uid}", missing_ok=True)
        try:
            self.array.delete_snapshot(f"groupsnapshot-{uid}")
        except NotFound:
            pass
        except Conflict as e:  # restored PVCs still use it: said in the status, tried again
            self._error("VolumeGroupSnapshot", vgs, f"cannot delete yet: {e}")
            self.queue.add_after(("vgs", ns, name), 2.0)
            return
        self._drop_finalizer("VolumeGroupSnapshot", vgs)

    # -- health ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What this process can reach, what it waits for, its recent errors."""
        apis: dict[str, dict[str, Any]] = {}
        for inf in self._informers:
            site = inf.site
            a = apis.setdefault(site, {"ok": True, "watches": 0, "broken": []})
            a["watches"] += 1
            if not inf.connected:
                a["ok"] = False
                a["broken"].append(inf.kind)
                if inf.last_error:
                    a["error"] = inf.last_error[:300]
        arrays = {self.site: self.view.health()}
        if self.backup_view is not None:
            arrays[self.other_site] = self.backup_view.health()
        with self._lock:
            errors = list(self._errors)[-5:]
        degraded = [f"the {s} API server: {a.get('error') or 'watch ' + ', '.join(a['broken'])}"
                    for s, a in apis.items() if not a["ok"]]
        degraded += [f"the {s} array: {a.get('error') or 'not read yet'}"
                     for s, a in arrays.items() if a["ok"] is False]
        return {"pid": os.getpid(), "site": self.site, "updated": time.time(),
                "synced": self.synced(), "api": apis, "arrays": arrays,
                "threads": threading.active_count(), "queue": len(self.queue),
                "delayed": self.queue.delayed, "handled": self.handled, "groups": len(self._group_keys),
                "degraded": degraded, "recent_errors": errors}

    def write_health(self) -> None:
        try:
            if self.lab.root.is_dir():
                self.lab.run.mkdir(exist_ok=True)
            write_json(health_file(self.lab, self.site), self.health())
        except OSError as e:  # the lab folder went away (a purge): nothing to report to
            log.debug("cannot write the health file: %s", e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.lab.controllers",
                                 description="Run one lab site's storage plug-ins.")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--site", choices=("main", "backup"), required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--workers", type=int, default=6, help="worker threads (default 6)")
    ap.add_argument("--poll", type=float, default=0.5,
                    help="seconds between two reads of the arrays' status (default 0.5)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # a retried request is said once by the handler that failed, not per attempt by urllib3
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        ctl = SiteController(LabDir.of(a.dir), a.site, workers=a.workers, poll=a.poll)
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: ctl.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: ctl.stopping.set())

    def ready() -> None:
        log.info("%s site plug-ins watching (%d threads)", a.site, threading.active_count())
        if a.ready_file:
            write_json(a.ready_file, {"site": a.site})

    ctl.run(ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SiteController", "ArrayView", "group_name", "hitachi_group_name", "health_file",
           "GSNAP", "SNAP", "FINALIZER"]
