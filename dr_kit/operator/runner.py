"""The operator's glue: watch namespaces, PVCs and owned objects; reconcile; apply the plan.

A plain watch loop on the official ``kubernetes`` client, no framework: watches only
*trigger* work (they enqueue a namespace name); every reconcile reads the namespace's
current objects fresh from the API, calls the pure :func:`~dr_kit.operator.reconcile.reconcile`
and applies its plan by name (create, or merge-patch when it already exists), so a
restarted or duplicated pass converges without duplicates.

Every API call goes through :class:`Kube`, which refuses calls not declared in
:func:`permissions`; the RBAC that ``dr-kit operator manifests`` renders is that table,
so the rules are exactly what the runner uses.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.kube import Kube
from dr_kit.operator.backends import (
    MANAGED_BY_LABEL,
    REQUIRED_KINDS,
    RESOURCES,
)
from dr_kit.operator.policy import MANAGED_BY, Policy
from dr_kit.operator.reconcile import PROTECTING, REFUSED, Action, Plan, reconcile

log = logging.getLogger("dr_kit.operator")

COMPONENT = "dr-kit-operator"
MERGE_PATCH = "application/merge-patch+json"
OWNED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

# Kinds read to spot PVCs already replicated by someone else (when the cluster serves them).
CONFLICT_KINDS = ("VolumeGroupReplication", "VolumeReplication", "Replication")
GROUP_KINDS = {"csi-addons": ("VolumeGroupReplication",),
               "hitachi": ("Replication", "ReplicationGroup")}
CLASS_KINDS = ("VolumeGroupReplicationClass", "VolumeReplicationClass")

_W = frozenset({"list", "watch", "create", "patch", "delete"})


def permissions(policy: Policy, *, site: str = "main") -> dict[tuple[str, str], frozenset[str]]:
    """(api group, resource) -> verbs the runner uses, for the policy's backends.

    ``site="backup"``: what it needs at the backup site (observe the replicated PVCs;
    delete them only when the policy deletes backup data on unprotect).
    """
    def key(kind: str) -> tuple[str, str]:
        r = RESOURCES[kind]
        return (r.group, r.plural)

    if site == "backup":
        verbs = {"list"} | ({"delete"} if policy.delete_backup_on_unprotect else set())
        return {key("PersistentVolumeClaim"): frozenset(verbs)}
    perms: dict[tuple[str, str], set[str]] = {
        key("Namespace"): {"list", "watch", "patch"},
        key("PersistentVolumeClaim"): {"list", "watch", "patch"},
        key("Event"): {"create"},
        key("StorageClass"): {"list"},
    }
    for kind in CONFLICT_KINDS:
        perms.setdefault(key(kind), set()).add("list")
    for backend in policy.backends:
        for kind in GROUP_KINDS[backend]:
            perms.setdefault(key(kind), set()).update(_W)
        if backend == "csi-addons":
            for kind in CLASS_KINDS:
                perms.setdefault(key(kind), set()).update({"list", "create"})
    return {k: frozenset(v) for k, v in perms.items()}


# -- the loop ------------------------------------------------------------------------------


class Runner:
    """Watches one site and keeps every labelled namespace's consistency group in shape."""

    def __init__(self, kube: Kube, policy: Policy, *, backup: Kube | None = None,
                 resync_seconds: float = 30.0, requeue_seconds: float = 1.0,
                 watch_seconds: int = 30,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.kube = kube
        self.policy = policy
        self.backup = backup
        self.resync_seconds = resync_seconds
        self.requeue_seconds = requeue_seconds
        self.watch_seconds = watch_seconds  # server-side watch timeout; bounds stop() too
        self.clock = clock
        self.stop_event = threading.Event()
        self._queue: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()
        self._qlock = threading.Lock()
        self._interesting: set[str] = set()  # labelled or annotated namespaces
        self._kinds: tuple[float, set[str]] | None = None
        self._threads: list[threading.Thread] = []
        self.reconciles = 0
        self.errors: list[str] = []
        self.instance = socket.gethostname()

    # -- public ---------------------------------------------------------------------------

    def start(self) -> Runner:
        self.stop_event.clear()
        missing = self.missing_crds()
        if missing:
            log.warning("missing CRDs on the cluster: %s (namespaces needing them are "
                        "refused until they are installed)", ", ".join(missing))
        watched = ["Namespace", "PersistentVolumeClaim"]
        kinds = self.served_kinds()
        for backend in self.policy.backends:
            watched += [k for k in GROUP_KINDS[backend] if k in kinds]
        for ns in self.kube.items("Namespace"):  # know the interesting ones before PVC events
            if self._note_namespace(ns):
                self.enqueue(ns["metadata"]["name"])
        for kind in watched:
            self._spawn(f"watch-{kind}", self._watch_loop, kind)
        self._spawn("reconcile", self._work_loop)
        self._spawn("resync", self._resync_loop)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._queue.put("")  # wake the worker
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

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
        now = time.monotonic()
        if refresh or self._kinds is None or now - self._kinds[0] > 10:
            custom = tuple(k for k, r in RESOURCES.items() if r.crd_name)
            self._kinds = (now, self.kube.served_kinds(custom))
        return self._kinds[1]

    def enqueue(self, namespace: str) -> None:
        with self._qlock:
            if namespace in self._queued:
                return
            self._queued.add(namespace)
        self._queue.put(namespace)

    def reconcile_namespace(self, name: str) -> Plan | None:
        """Read, decide, apply for one namespace.  None when the namespace is gone."""
        kube = self.kube
        found = kube.items("Namespace", field_selector=f"metadata.name={name}")
        if not found:
            return None
        ns = found[0]
        kinds = self.served_kinds()
        pvcs = kube.items("PersistentVolumeClaim", name)
        existing: list[dict] = []
        for kind in dict.fromkeys((*CONFLICT_KINDS,
                                   *(k for b in self.policy.backends for k in GROUP_KINDS[b]))):
            if kind in kinds:
                existing += kube.items(kind, name)
        if "csi-addons" in self.policy.backends:
            for kind in CLASS_KINDS:
                if kind in kinds:
                    existing += kube.items(kind)
        taken: dict[int, str] = {}
        if "hitachi" in self.policy.backends and "Replication" in kinds:
            for rep in kube.items("Replication"):
                gid = (rep.get("spec") or {}).get("consistencyGroupId")
                if isinstance(gid, int):
                    taken.setdefault(gid, rep["metadata"].get("namespace", ""))
        storage_classes = kube.items("StorageClass")
        backup_pvcs = None
        if self.backup is not None:
            try:
                backup_pvcs = self.backup.items("PersistentVolumeClaim", name)
            except NotFound:
                backup_pvcs = []
            except Unavailable as exc:
                log.warning("backup site not reachable: %s", exc)
        plan = reconcile(ns, pvcs, existing, storage_classes, self.policy, now=self.clock(),
                         available_kinds=kinds, taken_group_ids=taken,
                         backup_pvcs=backup_pvcs, backup_site=self.backup is not None)
        self.apply(plan, ns)
        self.reconciles += 1
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
            self._refused_by_api(plan, namespace, f"the API refused to {action}: {exc}")
            raise
        for action in plan.backup_actions:
            if self.backup is not None:
                self._apply_one(self.backup, action)
        if plan.status_changed and plan.status is not None:
            self.kube.patch("Namespace", plan.namespace, {"metadata": {"annotations": {
                self.policy.status_annotation: plan.status_json()}}})
        for ev in plan.events:
            self._event(namespace, ev.type, ev.reason, ev.message)
        for action in plan.actions:
            log.info("%s: %s", plan.namespace, action)
        if plan.status_changed and plan.status:
            log.info("%s: %s: %s", plan.namespace, plan.status["state"], plan.status["message"])

    # -- internals ----------------------------------------------------------------------

    def _apply_one(self, kube: Kube, a: Action) -> None:
        ns = a.ref.namespace
        body = a.body or {}
        if a.op == "create":
            try:
                kube.create(a.ref.kind, body)
            except Conflict:
                # Already there (a previous pass, a restart, a stale read): converge by name.
                if not a.ref.kind.endswith("Class"):
                    patch = {"metadata": {"labels": body["metadata"].get("labels") or {}}}
                    if "spec" in body and a.ref.kind != "VolumeGroupReplication":
                        patch["spec"] = body["spec"]
                    kube.patch(a.ref.kind, a.ref.name, patch, ns)
        elif a.op == "patch":
            try:
                kube.patch(a.ref.kind, a.ref.name, body, ns)
            except NotFound:
                if a.ref.kind != "PersistentVolumeClaim":  # a PVC may go meanwhile
                    raise
        else:
            try:
                kube.delete(a.ref.kind, a.ref.name, ns)
            except NotFound:
                pass

    def _refused_by_api(self, plan: Plan, namespace: dict, message: str) -> None:
        key = self.policy.status_annotation
        raw = (namespace["metadata"].get("annotations") or {}).get(key)
        try:
            prev = json.loads(raw) if raw else {}
        except ValueError:
            prev = {}
        if prev.get("state") == REFUSED and prev.get("message") == message:
            return
        status = dict(plan.status or {}, state=REFUSED, message=message,
                      since=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        try:
            self.kube.patch("Namespace", plan.namespace, {"metadata": {"annotations": {
                key: json.dumps(status, sort_keys=True)}}})
        except DrKitError as exc:
            log.warning("status not recorded: %s", exc)
        self._event(namespace, "Warning", "ProtectionRefused", message)

    def _rollback(self, done: list[Action]) -> None:
        for a in reversed(done):
            try:
                if a.op == "create" and not a.ref.kind.endswith("Class"):
                    self.kube.delete(a.ref.kind, a.ref.name, a.ref.namespace)
                elif a.op == "patch" and a.ref.kind == "PersistentVolumeClaim":
                    labels = {k: None for k in ((a.body or {})["metadata"].get("labels") or {})}
                    self.kube.patch(a.ref.kind, a.ref.name, {"metadata": {"labels": labels}},
                                    a.ref.namespace)
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
            self.kube.create("Event", body)
        except DrKitError as exc:  # events are best effort
            log.warning("event not recorded: %s", exc)

    def _spawn(self, name: str, target: Callable, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=f"dr-kit-operator-{name}",
                             daemon=True)
        t.start()
        self._threads.append(t)

    def _note_namespace(self, ns: dict, deleted: bool = False) -> bool:
        md = ns.get("metadata") or {}
        name = str(md.get("name") or "")
        interesting = not deleted and (
            self.policy.label_key in (md.get("labels") or {})
            or self.policy.status_annotation in (md.get("annotations") or {}))
        if interesting:
            self._interesting.add(name)
        else:
            self._interesting.discard(name)
        return interesting

    def _watch_loop(self, kind: str) -> None:
        selector = OWNED_SELECTOR if RESOURCES[kind].group else None
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                listing = self.kube.list(kind, label_selector=selector)
                for obj in listing.get("items") or []:
                    self._trigger(kind, "ADDED", obj)
                rv = (listing.get("metadata") or {}).get("resourceVersion") or "0"
                while not self.stop_event.is_set():
                    for type_, obj in self.kube.watch(kind, rv, label_selector=selector,
                                                      timeout_seconds=self.watch_seconds):
                        if self.stop_event.is_set():
                            return
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if type_ == "ERROR":
                            raise Conflict(f"watch {kind}: {obj.get('message')}")
                        if type_ != "BOOKMARK":
                            self._trigger(kind, type_, obj)
                backoff = 0.5
            except DrKitError as exc:  # expired resourceVersion, lost connection: relist
                if self.stop_event.is_set():
                    return
                log.debug("watch %s restarts: %s", kind, exc)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _trigger(self, kind: str, type_: str, obj: dict) -> None:
        md = obj.get("metadata") or {}
        if kind == "Namespace":
            was = md.get("name") in self._interesting
            if self._note_namespace(obj, deleted=type_ == "DELETED") or was:
                self.enqueue(md["name"])
        elif md.get("namespace") in self._interesting:
            self.enqueue(md["namespace"])

    def _resync_loop(self) -> None:
        while not self.stop_event.wait(self.resync_seconds):
            for name in sorted(self._interesting):
                self.enqueue(name)

    def _work_loop(self) -> None:
        while not self.stop_event.is_set():
            name = self._queue.get()
            if not name:
                continue
            with self._qlock:
                self._queued.discard(name)
            try:
                plan = self.reconcile_namespace(name)
            except InvalidInput as exc:  # permanent: retried at the next resync only
                self.errors.append(f"{name}: {exc}")
                log.warning("%s: %s", name, exc)
                continue
            except DrKitError as exc:
                self.errors.append(f"{name}: {exc}")
                log.warning("%s: %s (retrying)", name, exc)
                self._later(name, 2.0)
                continue
            if plan is not None and plan.status and plan.status.get("state") == PROTECTING:
                self._later(name, self.requeue_seconds)  # follow the plugin's progress

    def _later(self, name: str, delay: float) -> None:
        timer = threading.Timer(delay, lambda: None if self.stop_event.is_set()
                                else self.enqueue(name))
        timer.daemon = True
        timer.start()


__all__ = ["Kube", "Runner", "permissions"]
