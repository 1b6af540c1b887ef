"""The operator's glue: watch caches, a work queue, a fixed pool of workers, the plan applied.

Informer-style, on the official ``kubernetes`` client, no framework:

- one :class:`~dr_kit.operator.cache.Informer` thread per kind lists it in all namespaces
  into a cache and follows a watch; a change *triggers* work (it queues a namespace name)
  when something the decision depends on changed (a plug-in refreshing ``lastSyncTime``
  does not);
- a fixed number of worker threads take names from a de-duplicating
  :class:`~dr_kit.operator.retry.WorkQueue` (one namespace is handled by one worker at a
  time); each reconcile reads the caches, calls the pure
  :func:`~dr_kit.operator.reconcile.reconcile` and applies its plan by name (create, or
  merge-patch when it already exists), so a restarted or duplicated pass converges
  without duplicates;
- a failure is retried per namespace: any exception with an exponential backoff, a
  :class:`~dr_kit.operator.retry.TemporaryError` after the delay it asks for, a
  :class:`~dr_kit.operator.retry.PermanentError` (or an object the API refuses) once the
  namespace changes; the list of recent errors is bounded;
- a full resync re-queues every handled namespace at a long interval.

So the threads are a fixed set (watches + workers + resync + health), whatever the number
of namespaces, and the API sees writes only when something changes.

Every API call goes through :class:`~dr_kit.kube.Kube`, which refuses calls not declared in
:func:`permissions`; the RBAC that ``dr-kit operator manifests`` renders is that table,
so the rules are exactly what the runner uses.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.kube import Kube
from dr_kit.operator.backends import (
    REQUIRED_KINDS,
    RESOURCES,
    is_owned,
)
from dr_kit.operator.cache import Cache, Informer
from dr_kit.operator.health import HealthServer, Metrics
from dr_kit.operator.policy import Policy
from dr_kit.operator.reconcile import (
    DR_STATE_ANNOTATION,
    REFUSED,
    Action,
    Plan,
    read_status,
    reconcile,
)
from dr_kit.operator.retry import Backoff, PermanentError, TemporaryError, WorkQueue

log = logging.getLogger("dr_kit.operator")

COMPONENT = "dr-kit-operator"

# Kinds read to spot PVCs already replicated by someone else (when the cluster serves them).
CONFLICT_KINDS = ("VolumeGroupReplication", "VolumeReplication", "Replication")
GROUP_KINDS = {"csi-addons": ("VolumeGroupReplication",),
               "hitachi": ("Replication", "ReplicationGroup")}
CLASS_KINDS = ("VolumeGroupReplicationClass", "VolumeReplicationClass")
BUILTIN_KINDS = ("Namespace", "PersistentVolumeClaim", "StorageClass")
POLLED_KINDS = {"StorageClass": 30.0}  # relisted, not watched (cluster-wide, rarely changed)

_W = frozenset({"list", "watch", "create", "patch", "delete"})


def permissions(policy: Policy, *, site: str = "main") -> dict[tuple[str, str], frozenset[str]]:
    """(api group, resource) -> verbs the runner uses, for the policy's backends.

    ``site="backup"``: what it needs at the other site (watch the replicated PVCs and the
    namespaces' DR state; delete PVCs only when the policy deletes backup data on unprotect).
    """
    def key(kind: str) -> tuple[str, str]:
        r = RESOURCES[kind]
        return (r.group, r.plural)

    if site == "backup":
        verbs = {"list", "watch"} | ({"delete"} if policy.delete_backup_on_unprotect else set())
        return {key("PersistentVolumeClaim"): frozenset(verbs),
                key("Namespace"): frozenset({"list", "watch"})}
    perms: dict[tuple[str, str], set[str]] = {
        key("Namespace"): {"list", "watch", "patch"},
        key("PersistentVolumeClaim"): {"list", "watch", "patch"},
        key("Event"): {"create"},
        key("StorageClass"): {"list"},
    }
    for kind in CONFLICT_KINDS:
        perms.setdefault(key(kind), set()).update({"list", "watch"})
    for backend in policy.backends:
        for kind in GROUP_KINDS[backend]:
            perms.setdefault(key(kind), set()).update(_W)
        if backend == "csi-addons":
            for kind in CLASS_KINDS:
                perms.setdefault(key(kind), set()).update({"list", "watch", "create"})
    return {k: frozenset(v) for k, v in perms.items()}


# -- what a change must touch to matter ----------------------------------------------------

# Status fields a plug-in refreshes on every sync; they never change a decision (the lag is
# read from them when the status is read, not written into the namespace).
VOLATILE_STATUS = frozenset({"lastSyncTime", "lastSyncBytes", "lastSyncDuration",
                             "lastStartTime", "lastCompletionTime", "timeLagSeconds"})


def _steady(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items()
                if k not in VOLATILE_STATUS and k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def relevant(obj: dict[str, Any] | None) -> Any:
    """What of an object a decision can depend on (equal = a change not worth a reconcile)."""
    if obj is None:
        return None
    md = obj.get("metadata") or {}
    return (md.get("labels"), md.get("annotations"), md.get("deletionTimestamp"),
            md.get("generation"), obj.get("spec"), obj.get("provisioner"),
            _steady(obj.get("status")))


# -- the runner ------------------------------------------------------------------------------


class Runner:
    """Watches one site and keeps every labelled namespace's consistency group in shape.

    ``backup``: the other site's API (its PVCs gate "Protected" and may be deleted on
    unprotect).  ``site``: which site this operator runs at (``main`` or ``backup``); a
    namespace whose DR state names the other site as primary is left alone here.
    ``serve``: (host, port) for ``/healthz``, ``/readyz`` and ``/metrics``; None for none.
    """

    def __init__(self, kube: Kube, policy: Policy, *, backup: Kube | None = None,
                 site: str = "main", workers: int = 4, resync_seconds: float = 300.0,
                 watch_seconds: int = 30, serve: tuple[str, int] | None = None,
                 backoff: Backoff | None = None, stuck_seconds: float = 300.0,
                 kinds_refresh_seconds: float = 30.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        if workers < 1:
            raise InvalidInput("the operator needs at least one worker")
        self.kube = kube
        self.policy = policy
        self.backup = backup
        self.site = site
        self.workers = workers
        self.resync_seconds = resync_seconds
        self.watch_seconds = watch_seconds  # server-side watch timeout; bounds stop() too
        self.stall_seconds = 3 * watch_seconds + 60.0
        self.stuck_seconds = stuck_seconds
        self.kinds_refresh_seconds = kinds_refresh_seconds
        self.serve = serve
        self.clock = clock
        self.stop_event = threading.Event()
        self.queue = WorkQueue()
        self.backoff = backoff or Backoff()
        self.metrics = Metrics()
        self.caches = {k: Cache(k) for k in self.watched_kinds()}
        self.backup_cache = Cache("PersistentVolumeClaim") if backup is not None else None
        # the other site's namespaces: their DR state (a newer revision there wins)
        self.peer_ns_cache = Cache("Namespace") if backup is not None else None
        self.health: HealthServer | None = None
        self.instance = socket.gethostname()
        self.reconciles = 0
        self._errors: deque[str] = deque(maxlen=100)
        self._last_error: dict[str, str] = {}
        self._states: dict[str, str] = {}
        self._state_lock = threading.Lock()
        self._permanent: dict[str, Any] = {}
        self._reserved: dict[str, int] = {}  # Hitachi group ids decided, not yet in a cache
        self._decide = threading.Lock()
        self._busy: dict[str, tuple[str, float]] = {}
        self._informers: list[Informer] = []
        self._threads: list[threading.Thread] = []
        self._readers: set[threading.Thread] = set()  # the watches: not waited for on stop
        self._watch_stop = threading.Event()
        self._kinds: tuple[float, set[str]] | None = None
        self._kinds_lock = threading.Lock()
        self._started = False

    # -- public ---------------------------------------------------------------------------

    @property
    def errors(self) -> list[str]:
        """The most recent errors (at most 100), oldest first."""
        return list(self._errors)

    def watched_kinds(self) -> list[str]:
        kinds = [*BUILTIN_KINDS, *CONFLICT_KINDS]
        for backend in self.policy.backends:
            kinds += GROUP_KINDS[backend]
            if backend == "csi-addons":
                kinds += CLASS_KINDS
        return list(dict.fromkeys(kinds))

    def start(self) -> Runner:
        self.stop_event.clear()
        self.queue.reopen()
        try:
            missing = self.missing_crds()
        except Unavailable as exc:  # not up yet: the watches retry until it answers
            log.warning("%s; the operator retries until it answers", exc)
            missing = []
        if missing:
            log.warning("missing CRDs on the cluster: %s (namespaces needing them are "
                        "refused until they are installed)", ", ".join(missing))
        if self.serve is not None and self.health is None:
            self.health = HealthServer(self.serve, live=self.liveness, ready=self.readiness,
                                       metrics=self.metrics).start()
        self.metrics.ready.set_function(lambda: 1.0 if self.synced() else 0.0)
        self._informers = []
        # the watches of this start: a watch still open from an earlier start ends when
        # its request does, even if the runner was started again meanwhile
        self._watch_stop = watch_stop = threading.Event()
        for kind, cache in self.caches.items():
            self._informers.append(Informer(
                self.kube, kind, cache, self._on_change, watch_stop,
                served=functools.partial(self._served, kind), watch_seconds=self.watch_seconds,
                poll_seconds=POLLED_KINDS.get(kind), on_restart=self._on_restart))
        if self.backup is not None and self.backup_cache is not None:
            self._informers.append(Informer(
                self.backup, "PersistentVolumeClaim", self.backup_cache, self._on_backup_change,
                watch_stop, served=lambda: True, watch_seconds=self.watch_seconds,
                site="other", on_restart=self._on_restart))
        if self.backup is not None and self.peer_ns_cache is not None:
            self._informers.append(Informer(
                self.backup, "Namespace", self.peer_ns_cache, self._on_peer_namespace,
                watch_stop, served=lambda: True, watch_seconds=self.watch_seconds,
                site="other", on_restart=self._on_restart))
        for inf in self._informers:
            self._readers.add(self._spawn(f"watch-{inf.site}-{inf.kind}", inf.run))
        for i in range(self.workers):
            self._spawn(f"worker-{i}", self._work_loop)
        self._spawn("resync", self._resync_loop)
        if self.site == "backup":  # the backup site's operator takes the scheduled snapshots
            from dr_kit.operator.schedule import SnapshotScheduler

            self._spawn("snapshot-schedules", SnapshotScheduler(self.kube, clock=self.clock).run,
                        self.stop_event)
        self._started = True
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._watch_stop.set()
        self.queue.shutdown()
        if self.health is not None:
            self.health.stop()
            self.health = None
        # the threads that write finish what they do; the watches only read and hold a
        # request open until it times out (daemon threads: they end with the process)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t not in self._readers:
                t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._readers.clear()
        self._started = False

    def run(self) -> None:
        """Run until :meth:`stop` (or KeyboardInterrupt)."""
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def missing_crds(self) -> list[str]:
        kinds = self.served_kinds(refresh=True)
        needed = [k for b in self.policy.backends for k in REQUIRED_KINDS[b]]
        return [RESOURCES[k].crd_name or k for k in dict.fromkeys(needed) if k not in kinds]

    def served_kinds(self, refresh: bool = False) -> set[str]:
        with self._kinds_lock:
            now = time.monotonic()
            if refresh or self._kinds is None or \
                    now - self._kinds[0] > self.kinds_refresh_seconds:
                custom = tuple(k for k in self.watched_kinds() if RESOURCES[k].crd_name)
                try:
                    self._kinds = (now, self.kube.served_kinds(custom) | set(BUILTIN_KINDS))
                except DrKitError:
                    if self._kinds is None:
                        raise
                    self._kinds = (now, self._kinds[1])  # keep the last answer meanwhile
            return self._kinds[1]

    def _served(self, kind: str) -> bool:
        return kind in BUILTIN_KINDS or kind in self.served_kinds()

    def synced(self) -> bool:
        caches = [*self.caches.values()]
        return all(c.synced.is_set() for c in caches)

    def enqueue(self, namespace: str) -> None:
        self._trigger(namespace)

    def liveness(self) -> tuple[bool, str]:
        """Alive unless a thread ended, a watch hangs, or one reconcile runs for minutes."""
        if not self._started:
            return False, "not started"
        problems = [f"thread {t.name} ended" for t in self._threads if not t.is_alive()]
        now = time.monotonic()
        for inf in self._informers:
            silent = now - inf.last_beat
            if silent > self.stall_seconds:
                problems.append(f"watch of {inf.kind} ({inf.site}) silent for {silent:.0f} s")
        for worker, (name, since) in list(self._busy.items()):
            if now - since > self.stuck_seconds:
                problems.append(f"{worker} on {name} for {now - since:.0f} s")
        return (not problems, "; ".join(problems) or "ok")

    def readiness(self) -> tuple[bool, str]:
        live, why = self.liveness()
        if not live:
            return False, why
        waiting = [k for k, c in self.caches.items() if not c.synced.is_set()]
        if waiting:
            return False, f"watch caches not synced yet: {', '.join(waiting)}"
        return True, "ok"

    def reconcile_namespace(self, name: str) -> Plan | None:
        """Read the caches, decide, apply for one namespace.  None when the namespace is gone."""
        if not self.synced():
            raise TemporaryError("the watch caches are not synced yet", delay=0.5)
        ns = self.caches["Namespace"].get(None, name)
        if ns is None:
            self._forget(name)
            return None
        kinds = self.served_kinds()
        pvcs = self.caches["PersistentVolumeClaim"].in_namespace(name)
        existing: list[dict] = []
        for kind in dict.fromkeys((*CONFLICT_KINDS,
                                   *(k for b in self.policy.backends for k in GROUP_KINDS[b]))):
            if kind in kinds:
                existing += self.caches[kind].in_namespace(name)
        for kind in CLASS_KINDS:
            if kind in self.caches and kind in kinds:
                existing += self.caches[kind].items()
        storage_classes = self.caches["StorageClass"].items()
        backup_pvcs = None
        if self.backup_cache is not None and self.backup_cache.synced.is_set():
            backup_pvcs = self.backup_cache.in_namespace(name)
        peer_annotations = None
        if self.peer_ns_cache is not None and self.peer_ns_cache.synced.is_set():
            peer = self.peer_ns_cache.get(None, name)
            peer_annotations = (peer["metadata"].get("annotations") or {}) if peer else None
        with self._decide:  # Hitachi group ids: two namespaces never pick the same one
            plan = reconcile(ns, pvcs, existing, storage_classes, self.policy,
                             now=self.clock(), available_kinds=kinds,
                             taken_group_ids=self._taken_group_ids(),
                             backup_pvcs=backup_pvcs, backup_site=self.backup is not None,
                             site=self.site, peer_annotations=peer_annotations)
            self._reserve(name, plan)
        self.apply(plan, ns)
        status = plan.status or read_status(ns["metadata"].get("annotations") or {},
                                            self.policy)
        self._set_state(name, (status or {}).get("state"))
        return plan

    def apply(self, plan: Plan, namespace: dict) -> None:
        done: list[Action] = []
        action = None
        try:
            for action in plan.actions:
                self._apply_one(self.kube, action)
                done.append(action)
        except InvalidInput as exc:
            # The API refused an object outright: retrying the same write is useless.  Undo
            # this pass's creates and label changes so nothing stays half-created, and say
            # why (once: the status annotation remembers it was said).
            self._rollback(done)
            message = f"the API refused to {action}: {exc}"
            self._refused_by_api(plan, namespace, message)
            raise PermanentError(message) from None
        for a in done:
            log.info("%s: %s", plan.namespace, a)
        for action in plan.backup_actions:
            if self.backup is not None:
                self._apply_one(self.backup, action, self.backup_cache)
                log.info("%s: %s at the other site", plan.namespace, action)
        if plan.status_changed and plan.status is not None:
            self._patch_status(plan.namespace, plan.status_json())
            prev = read_status(namespace["metadata"].get("annotations") or {}, self.policy)
            st = plan.status
            changed = prev is None or (prev.get("state"), prev.get("message")) != \
                (st["state"], st["message"])
            (log.info if changed else log.debug)("%s: %s: %s", plan.namespace, st["state"],
                                                 st["message"])
        for ev in plan.events:
            self._event(namespace, ev.type, ev.reason, ev.message)

    # -- writes ---------------------------------------------------------------------------

    def _cache_for(self, kind: str, kube: Kube) -> Cache | None:
        if kube is self.backup:
            return self.backup_cache if kind == "PersistentVolumeClaim" else None
        return self.caches.get(kind)

    def _write(self, kube: Kube, verb: str, kind: str, *args: Any) -> dict:
        self.metrics.writes.labels(verb=verb, kind=kind).inc()
        return getattr(kube, verb)(kind, *args)

    def _apply_one(self, kube: Kube, a: Action, cache: Cache | None = None) -> None:
        ns = a.ref.namespace
        cache = cache if cache is not None else self._cache_for(a.ref.kind, kube)
        got: dict | None = None
        if a.op == "create":
            try:
                got = self._write(kube, "create", a.ref.kind, a.body)
            except Conflict:
                # Already there (a previous pass, a restart, a stale read): converge by name.
                if not a.ref.kind.endswith("Class"):
                    assert a.body is not None
                    patch = {"metadata": {"labels": a.body["metadata"].get("labels") or {}}}
                    if "spec" in a.body and a.ref.kind != "VolumeGroupReplication":
                        patch["spec"] = a.body["spec"]
                    got = self._write(kube, "patch", a.ref.kind, a.ref.name, patch, ns)
        elif a.op == "patch":
            try:
                got = self._write(kube, "patch", a.ref.kind, a.ref.name, a.body, ns)
            except NotFound:
                if a.ref.kind != "PersistentVolumeClaim":  # a PVC may go meanwhile
                    raise
        else:
            try:
                got = self._write(kube, "delete", a.ref.kind, a.ref.name, ns)
            except NotFound:
                got = {}
            if cache is not None:
                if (got or {}).get("metadata", {}).get("name") == a.ref.name:
                    cache.write_through(got or {}, deleted=True)
                else:  # a Status: gone already
                    cache.forget(ns if RESOURCES[a.ref.kind].namespaced else None, a.ref.name)
            return
        if cache is not None and got:
            got.setdefault("kind", a.ref.kind)
            cache.write_through(got)

    def _patch_status(self, namespace: str, raw: str | None) -> None:
        got = self._write(self.kube, "patch", "Namespace", namespace, {"metadata": {
            "annotations": {self.policy.status_annotation: raw}}})
        if got:
            got.setdefault("kind", "Namespace")
            self.caches["Namespace"].write_through(got)

    def _refused_by_api(self, plan: Plan, namespace: dict, message: str) -> None:
        prev = read_status(namespace["metadata"].get("annotations") or {}, self.policy) or {}
        if prev.get("state") == REFUSED and prev.get("message") == message:
            return
        status = dict(plan.status or {}, state=REFUSED, reason="RefusedByAPI", message=message,
                      since=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        try:
            self._patch_status(plan.namespace, json.dumps(status, sort_keys=True))
        except DrKitError as exc:
            log.warning("%s: status not recorded: %s", plan.namespace, exc)
        self._event(namespace, "Warning", "ProtectionRefused", message)

    def _rollback(self, done: list[Action]) -> None:
        for a in reversed(done):
            try:
                if a.op == "create" and not a.ref.kind.endswith("Class"):
                    self._apply_one(self.kube, Action("delete", a.ref))
                elif a.op == "patch" and a.ref.kind == "PersistentVolumeClaim":
                    assert a.body is not None
                    labels = {k: None for k in (a.body["metadata"].get("labels") or {})}
                    self._apply_one(self.kube, Action("patch", a.ref,
                                                      {"metadata": {"labels": labels}}))
            except DrKitError as exc:
                log.warning("rollback of %s failed: %s", a, exc)

    def _event(self, namespace: dict, type_: str, reason: str, message: str) -> None:
        md = namespace["metadata"]
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{md['name']}.", "namespace": md["name"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Namespace", "name": md["name"],
                               "uid": md.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._write(self.kube, "create", "Event", body)
        except DrKitError as exc:  # events are best effort
            log.warning("%s: event not recorded: %s", md["name"], exc)

    # -- triggers -------------------------------------------------------------------------

    def _interesting(self, ns: dict | None) -> bool:
        if ns is None or (ns.get("metadata") or {}).get("deletionTimestamp"):
            return ns is not None and self._has_status(ns)
        return self.policy.label_key in (ns["metadata"].get("labels") or {}) \
            or self._has_status(ns)

    def _has_status(self, ns: dict) -> bool:
        return self.policy.status_annotation in (ns["metadata"].get("annotations") or {})

    def _handled(self, name: str) -> bool:
        return self._interesting(self.caches["Namespace"].get(None, name))

    def _on_change(self, kind: str, type_: str, old: dict | None, new: dict | None) -> None:
        if type_ == "MODIFIED" and relevant(old) == relevant(new):
            return
        obj = new if new is not None else old
        if obj is None:
            return
        md = obj.get("metadata") or {}
        if kind == "Namespace":
            if self._interesting(new) or self._interesting(old):
                self._trigger(md.get("name", ""))
            elif type_ == "DELETED":
                self._forget(md.get("name", ""))
        elif not RESOURCES[kind].namespaced:  # a class: may settle any namespace's refusal
            for ns in self.caches["Namespace"].items():
                if self._interesting(ns):
                    self._trigger(ns["metadata"]["name"])
        elif md.get("namespace") and self._handled(md["namespace"]):
            self._trigger(md["namespace"])

    def _on_backup_change(self, kind: str, type_: str, old: dict | None,
                          new: dict | None) -> None:
        def phase(o: dict | None) -> Any:
            return None if o is None else ((o.get("status") or {}).get("phase"),
                                           (o.get("metadata") or {}).get("deletionTimestamp"))
        if type_ == "MODIFIED" and phase(old) == phase(new):
            return
        obj = new if new is not None else old
        ns = ((obj or {}).get("metadata") or {}).get("namespace")
        if ns and self._handled(ns):
            self._trigger(ns)

    def _on_peer_namespace(self, kind: str, type_: str, old: dict | None,
                           new: dict | None) -> None:
        def dr(o: dict | None) -> Any:
            return ((o or {}).get("metadata") or {}).get("annotations", {}).get(DR_STATE_ANNOTATION)
        if dr(old) == dr(new):
            return
        name = ((new or old or {}).get("metadata") or {}).get("name")
        if name and self._handled(name):
            self._trigger(name)

    def _on_restart(self, kind: str, cause: str) -> None:
        self.metrics.watch_restarts.labels(kind=kind, cause=cause).inc()

    def _trigger(self, name: str) -> None:
        if not name or self.stop_event.is_set():
            return
        if name in self._permanent and self._fingerprint(name) == self._permanent[name]:
            return  # a permanent error waits for a change of the namespace
        self.queue.add(name)
        self.metrics.queue.set(len(self.queue))

    def _fingerprint(self, name: str) -> Any:
        """What the user controls about a namespace: a permanent error is retried when it
        changes (the operator's own writes — group labels, owned objects, its status — are
        left out, so undoing a refused pass does not trigger the next one)."""
        ns = self.caches["Namespace"].get(None, name)
        if ns is None:
            return None
        md = ns["metadata"]
        group = self.policy.group_name(name)
        key = self.policy.group_label_key
        ann = {k: v for k, v in (md.get("annotations") or {}).items()
               if k != self.policy.status_annotation}
        pvcs = []
        for p in self.caches["PersistentVolumeClaim"].in_namespace(name):
            labels = {k: v for k, v in (p["metadata"].get("labels") or {}).items()
                      if not (k == key and v == group)}
            pvcs.append((p["metadata"]["name"], (p.get("spec") or {}).get("storageClassName"),
                         sorted(labels.items()), p["metadata"].get("deletionTimestamp")))
        foreign = []
        for kind in (*CONFLICT_KINDS, *GROUP_KINDS.get("hitachi", ())):
            if kind in self.caches:
                foreign += [(kind, o["metadata"]["name"], o["metadata"].get("resourceVersion"))
                            for o in self.caches[kind].in_namespace(name) if not is_owned(o)]
        cluster = []
        for kind in ("StorageClass", *CLASS_KINDS):
            if kind in self.caches:
                cluster += [(kind, o["metadata"]["name"], o["metadata"].get("resourceVersion"))
                            for o in self.caches[kind].items() if not is_owned(o)]
        return (sorted((md.get("labels") or {}).items()), sorted(ann.items()), sorted(pvcs),
                sorted(foreign, key=str), sorted(cluster, key=str))

    # -- the loops ----------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"dr-kit-operator-{name}",
                             daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _resync_loop(self) -> None:
        last = time.monotonic()
        kinds = self.served_kinds()
        step = min(self.resync_seconds, self.kinds_refresh_seconds)
        while not self.stop_event.wait(step):
            try:
                now_kinds = self.served_kinds()
                full = time.monotonic() - last >= self.resync_seconds
                if full or now_kinds != kinds:  # a CRD came or went: refusals may settle
                    last = time.monotonic()
                    kinds = now_kinds
                    for ns in self.caches["Namespace"].items():
                        name = ns["metadata"]["name"]
                        # a namespace in backoff keeps its own schedule
                        if self._interesting(ns) and not self.backoff.failures(name):
                            self._trigger(name)
            except Exception as exc:  # noqa: BLE001 - the resync never dies
                log.warning("resync: %s: %s", type(exc).__name__, exc,
                            exc_info=not isinstance(exc, DrKitError))

    def _work_loop(self) -> None:
        me = threading.current_thread().name
        while not self.synced():  # the first listing of every kind, before any decision
            if self.stop_event.wait(0.05):
                return
        while not self.stop_event.is_set():
            name = self.queue.get(timeout=1.0)
            if name is None:
                continue
            self._busy[me] = (str(name), time.monotonic())
            try:
                self._handle(str(name))
            except BaseException as exc:  # noqa: BLE001 - a worker never dies
                log.error("%s: %s: %s", name, type(exc).__name__, exc, exc_info=True)
            finally:
                self._busy.pop(me, None)
                self.queue.done(name)
                self.metrics.queue.set(len(self.queue))

    def _handle(self, name: str) -> None:
        if name in self._permanent:
            if self._fingerprint(name) == self._permanent[name]:
                return
            del self._permanent[name]
        t0 = time.monotonic()
        try:
            self.reconcile_namespace(name)
        except TemporaryError as exc:
            self._failed(name, "temporary", exc)
            self.queue.add_after(name, exc.delay)
        except (PermanentError, InvalidInput) as exc:
            self._failed(name, "permanent", exc)
            self._permanent[name] = self._fingerprint(name)
        except DrKitError as exc:  # unreachable, conflict, gone meanwhile: retry with backoff
            delay = self.backoff.next_delay(name)
            self._failed(name, "temporary", exc, delay)
            self.queue.add_after(name, delay)
        except Exception as exc:  # noqa: BLE001 - a bug or a surprise: logged, retried
            delay = self.backoff.next_delay(name)
            self._failed(name, "unexpected", exc, delay)
            self.queue.add_after(name, delay)
        else:
            self.backoff.forget(name)
            if self._last_error.pop(name, None) is not None:
                log.info("%s: reconciled again after errors", name)
        finally:
            self.reconciles += 1
            self.metrics.reconciles.inc()
            self.metrics.duration.observe(time.monotonic() - t0)

    def _failed(self, name: str, kind: str, exc: BaseException,
                delay: float | None = None) -> None:
        msg = f"{type(exc).__name__}: {exc}" if kind == "unexpected" else str(exc)
        self._errors.append(f"{datetime.now(UTC).strftime('%H:%M:%S')} {name}: {msg}")
        self.metrics.errors.labels(kind=kind).inc()
        then = {"temporary": f"retrying in {delay if delay is not None else '?'} s",
                "permanent": "not retried until the namespace changes",
                "unexpected": f"retrying in {delay} s"}[kind]
        if kind == "temporary" and isinstance(exc, TemporaryError):
            then = f"retrying in {exc.delay:g} s"
        if self._last_error.get(name) == msg:
            log.debug("%s: %s (%s)", name, msg, then)
            return
        self._last_error[name] = msg
        if kind == "unexpected":
            log.error("%s: %s (%s)", name, msg, then, exc_info=exc)
        else:
            log.warning("%s: %s (%s)", name, msg, then)

    # -- bookkeeping ----------------------------------------------------------------------

    def _taken_group_ids(self) -> dict[int, str]:
        taken: dict[int, str] = {}
        if "Replication" in self.caches:
            for rep in self.caches["Replication"].items():
                gid = (rep.get("spec") or {}).get("consistencyGroupId")
                if isinstance(gid, int):
                    taken.setdefault(gid, rep["metadata"].get("namespace", ""))
        for ns, gid in list(self._reserved.items()):
            taken.setdefault(gid, ns)
        return taken

    def _reserve(self, name: str, plan: Plan) -> None:
        st = plan.status
        if st is None:
            return
        gid = (st.get("group") or {}).get("id") if st.get("backend") == "hitachi" else None
        if isinstance(gid, int):
            self._reserved[name] = gid
        elif st.get("state") != REFUSED:
            self._reserved.pop(name, None)

    def _set_state(self, name: str, state: str | None) -> None:
        with self._state_lock:
            if state is None:
                self._states.pop(name, None)
            else:
                self._states[name] = state
            counts: dict[str, int] = {}
            for s in self._states.values():
                counts[s] = counts.get(s, 0) + 1
            self.metrics.set_states(counts)

    def states(self) -> dict[str, str]:
        """Namespace -> protection state, as last reconciled."""
        with self._state_lock:
            return dict(self._states)

    def _forget(self, name: str) -> None:
        self._set_state(name, None)
        self._reserved.pop(name, None)
        self._permanent.pop(name, None)
        self._last_error.pop(name, None)
        self.backoff.forget(name)


__all__ = ["Kube", "Runner", "permissions", "relevant"]
