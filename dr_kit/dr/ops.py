"""The DR operations of a protected namespace, reaching both sites through their kubeconfig
contexts (the lab is reached the same way; what only a lab can do goes through
:class:`~dr_kit.controls.LabControls`).

    dr = DR(main, backup, "shop", controls=lab)        # controls=None on real clusters
    dr.test()        # snapshot group -> clones in shop-drtest -> application there, verified
    dr.relocate()    # planned: quiesce, final sync, demote, promote, no copy, start
    dr.failover()    # unplanned: promote the backup, start there; the old main is fenced
    dr.failback()    # resync only the changed regions, then relocate home
    dr.status()

Every operation is a list of idempotent steps.  The namespace's DR state (annotation
``dr-kit.io/dr-state`` at both sites, :mod:`dr_kit.dr.state`) records the operation and the
steps done, and every step is an Event on the namespace.  Killed at any step (SIGKILL
included), the same call again resumes at the step it was in.  Test hook:
``DR_KIT_DR_KILL_AFTER_STEP=N`` (or a step name) makes the process kill itself with SIGKILL
right after step N of the operation is recorded done.

Operations that make no sense are refused in one line before anything changes: relocate
while a DR test runs, failover to a backup that is not consistent (unless ``force``, which
first says what will be lost), failback with no failover behind it, another operation
while one runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dr_kit.controls import LabControls
from dr_kit.dr import manifests
from dr_kit.dr import state as drs
from dr_kit.dr.apps import Apps, apps_for
from dr_kit.dr.state import DrState, Operation
from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable
from dr_kit.operator.policy import Policy
from dr_kit.operator.reconcile import BACKEND_ANNOTATION
from dr_kit.sites import Site, wait_until

Note = Callable[[str], None]
KILL_ENV = "DR_KIT_DR_KILL_AFTER_STEP"
COMPONENT = "dr-kit-dr"
TEST_SUFFIX = "-drtest"


class Refused(Conflict):
    """A DR operation that makes no sense now; nothing was changed."""


@dataclass
class Step:
    name: str
    run: Callable[[DrState], dict[str, Any] | None]
    what: str = ""


@dataclass
class DR:
    """DR operations on ``namespace``, protected from ``main`` to ``backup`` (either may be
    primary now: the DR state says which)."""

    main: Site
    backup: Site
    namespace: str
    controls: LabControls | None = None
    policy: Policy = field(default_factory=Policy)
    progress: Note | None = print
    timeout: float = 120.0
    warn: Note | None = None  # what a forced failover loses (default: progress)

    def __post_init__(self) -> None:
        self.apps: Apps = apps_for(self.controls)
        self._reach: dict[str, tuple[float, bool]] = {}

    # -- sites ---------------------------------------------------------------------------
    def site(self, name: str) -> Site:
        if name not in drs.SITES:
            raise InvalidInput(f"a site is 'main' or 'backup', not {name!r}")
        return self.main if name == "main" else self.backup

    def say(self, text: str) -> None:
        if self.progress:
            self.progress(text)

    def reachable(self, name: str, *, fresh: bool = False) -> bool:
        now = time.monotonic()
        got = self._reach.get(name)
        if got and not fresh and now - got[0] < 2.0:
            return got[1]
        try:
            self.site(name).kube.version()
            ok = True
        except DrKitError:
            ok = False
        self._reach[name] = (now, ok)
        return ok

    def _namespace(self, name: str) -> dict[str, Any] | None:
        if not self.reachable(name):
            return None
        try:
            return self.site(name).namespace(self.namespace)
        except Unavailable:
            self._reach[name] = (time.monotonic(), False)
            return None

    # -- state -----------------------------------------------------------------------------
    def state(self) -> DrState:
        """The namespace's DR state, as the reachable sites record it."""
        found = [drs.of_namespace(self._namespace(s)) for s in drs.SITES]
        if self._namespace("main") is None and self._namespace("backup") is None:
            if not (self.reachable("main") or self.reachable("backup")):
                raise Unavailable("neither site's API server can be reached")
            raise NotFound(f"namespace {self.namespace!r} exists at neither site")
        return drs.merge(found)

    def _write(self, st: DrState) -> None:
        raw = st.to_json()
        written = []
        for s in drs.SITES:
            if self._namespace(s) is None:
                continue
            try:
                self.site(s).kube.patch("Namespace", self.namespace,
                                        {"metadata": {"annotations": {drs.ANNOTATION: raw}}})
                written.append(s)
            except Unavailable:
                self._reach[s] = (time.monotonic(), False)
        if not written:
            raise Unavailable(f"the DR state of {self.namespace} could not be recorded at either site")

    def _event(self, reason: str, message: str, type_: str = "Normal") -> None:
        for s in drs.SITES:
            ns = self._namespace(s)
            if ns is None:
                continue
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            body = {"apiVersion": "v1", "kind": "Event",
                    "metadata": {"generateName": f"{self.namespace}.dr.", "namespace": self.namespace},
                    "involvedObject": {"apiVersion": "v1", "kind": "Namespace", "name": self.namespace,
                                       "uid": ns["metadata"].get("uid")},
                    "type": type_, "reason": reason, "message": message[:1024],
                    "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
                    "reportingInstance": COMPONENT, "firstTimestamp": now, "lastTimestamp": now,
                    "count": 1}
            with contextlib.suppress(DrKitError):  # events are best effort
                self.site(s).kube.create("Event", body)

    # -- the step runner ---------------------------------------------------------------------
    def _run(self, op: str, target: str, steps: list[Step], check: Callable[[DrState], None],
             result: Callable[[DrState], dict[str, Any]],
             finish: Callable[[DrState], DrState] | None = None) -> dict[str, Any]:
        st = self.state()
        if st.operation is not None and st.operation.name != op:
            raise Refused(f"{op} refused: DR operation {st.operation.name} of {self.namespace} is "
                          f"running (step {st.operation.step}); run `dr-kit dr {st.operation.name} "
                          f"{self.namespace}` again to finish it first")
        if st.operation is None:
            check(st)
            st = st.bump(operation=Operation(name=op, id=uuid.uuid4().hex[:8], started=time.time(),
                                             target=target))
            self._write(st)
            self._event(f"DR{op.capitalize()}", f"{op} started (target: the {target} site)")
            self.say(f"{op} of {self.namespace}: started")
        else:
            assert st.operation is not None
            self.say(f"{op} of {self.namespace}: resuming at step {st.operation.step} "
                     f"({len(st.operation.done)} of {len(steps)} steps done)")
        for i, step in enumerate(steps, 1):
            assert st.operation is not None
            if step.name in st.operation.done:
                continue
            st = st.with_step(step.name)
            self._write(st)
            self._event(f"DR{op.capitalize()}Step", f"{op} step {i}/{len(steps)} {step.name}: "
                        f"{step.what or 'started'}")
            t0 = time.monotonic()
            data = step.run(st) or {}
            st = self.state()  # a step may have recorded something itself
            if st.operation is None or st.operation.name != op:
                raise Unavailable(f"the DR state of {self.namespace} changed under {op}")
            st = st.with_step(step.name, done=step.name, **data)
            self._write(st)
            self.say(f"  {i}/{len(steps)} {step.name} done ({time.monotonic() - t0:.1f} s)")
            _kill_hook(op, i, step.name)
        out = result(st)
        if finish is not None:
            st = finish(st)
        st = st.finished(time.time(), **{k: v for k, v in out.items() if isinstance(v, (int, float, str, bool))
                                         or v is None})
        self._write(st)
        self._event(f"DR{op.capitalize()}", f"{op} finished: the {st.primary} site is primary")
        self.say(f"{op} of {self.namespace}: done")
        return out

    # -- role objects ---------------------------------------------------------------------
    @property
    def group(self) -> str:
        return self.policy.group_name(self.namespace)

    def backend(self) -> str:
        for s in drs.SITES:
            ns = self._namespace(s)
            b = ((ns or {}).get("metadata", {}).get("annotations") or {}).get(BACKEND_ANNOTATION)
            if b:
                return str(b)
        return self.policy.backend

    def role_object(self, site: str) -> dict[str, Any] | None:
        kind = manifests.ROLE_KIND[self.backend()]
        try:
            return self.site(site).kube.get(kind, self.group, self.namespace)
        except NotFound:
            return None

    def ensure_role_object(self, site: str, role: str) -> None:
        """This site has the namespace's role object asking for ``role`` (created as a copy
        of the other site's, with its class, when missing)."""
        backend = self.backend()
        kind, patch = manifests.role_patch(backend, role)
        s = self.site(site)
        have = self.role_object(site)
        if have is not None:
            if manifests.role_of(backend, have) != role:
                s.kube.patch(kind, self.group, patch, self.namespace)
            return
        other = drs.other(site)
        src = self.role_object(other) if self._namespace(other) is not None else None
        if src is None:
            if backend != "csi-addons":
                raise Conflict(f"the {site} site has no {kind} of {self.namespace} and the {other} "
                               f"site cannot give its own to copy; create it there first")
            src = self._role_from_policy(site, role)
        else:
            self._ensure_namespace_copy(site)
        if backend == "csi-addons":
            cls_name = (src.get("spec") or {}).get("volumeGroupReplicationClassName")
            if cls_name and s.kube.get("VolumeGroupReplicationClass", cls_name) is None:
                cls = self.site(other).kube.get("VolumeGroupReplicationClass", cls_name)
                if cls is not None:
                    s.kube.create("VolumeGroupReplicationClass", manifests.class_copy(cls), exist_ok=True)
        else:
            other_kube = self.site(other).kube
            for rep in other_kube.items("Replication", self.namespace):
                if (rep["metadata"].get("labels") or {}).get(self.policy.group_label_key) == self.group:
                    s.kube.create("Replication", manifests.role_copy(rep, role, backend), exist_ok=True)
        s.kube.create(kind, manifests.role_copy(src, role, backend), exist_ok=True)

    def _role_from_policy(self, site: str, role: str) -> dict[str, Any]:
        """The VolumeGroupReplication (and its class) for ``site`` from the operator's policy,
        when the other site cannot be read (a failover with the main site down)."""
        from dr_kit.operator.backends import csi_addons

        s = self.site(site)
        scs = {(p.get("spec") or {}).get("storageClassName")
               for p in s.kube.items("PersistentVolumeClaim", self.namespace)
               if (p["metadata"].get("labels") or {}).get(self.policy.group_label_key) == self.group}
        scs.discard(None)
        if len(scs) != 1:
            raise Conflict(f"the {site} site holds no replicated PVCs of {self.namespace} with one "
                           "storage class; it cannot take the primary role")
        sc_name = str(scs.pop())
        rc = self.policy.storage_classes.get(sc_name)
        sc = s.kube.get("StorageClass", sc_name) or {}
        if rc is None:
            raise Conflict(f"storage class {sc_name} has no replication class in the operator policy")
        if s.kube.get("VolumeGroupReplicationClass", rc.name) is None:
            s.kube.create("VolumeGroupReplicationClass", csi_addons.volume_group_replication_class(
                rc.name, rc.provisioner or sc.get("provisioner", ""), rc.parameters, self.namespace),
                exist_ok=True)
        return manifests.role_object("csi-addons", self.policy, self.namespace, role, class_name=rc.name)

    def _ensure_namespace_copy(self, site: str) -> None:
        """The protection label and backend of the namespace at ``site`` too, so that the
        operator there protects it once that site is primary."""
        src = self._namespace(drs.other(site)) or {}
        labels = {k: v for k, v in (src.get("metadata", {}).get("labels") or {}).items()
                  if k == self.policy.label_key}
        if not src:  # the other site is down: the namespace was protected, or it has no copy here
            labels = {self.policy.label_key: self.policy.label_value}
        ann = {k: v for k, v in (src.get("metadata", {}).get("annotations") or {}).items()
               if k == BACKEND_ANNOTATION}
        here = self._namespace(site)
        if here is None:
            raise Conflict(f"namespace {self.namespace} does not exist at the {site} site")
        have_l = here["metadata"].get("labels") or {}
        have_a = here["metadata"].get("annotations") or {}
        patch: dict[str, Any] = {}
        if any(have_l.get(k) != v for k, v in labels.items()):
            patch.setdefault("metadata", {})["labels"] = labels
        if any(have_a.get(k) != v for k, v in ann.items()):
            patch.setdefault("metadata", {})["annotations"] = ann
        if patch:
            self.site(site).kube.patch("Namespace", self.namespace, patch)

    def wait_role(self, site: str, role: str, *, in_sync: bool = False,
                  timeout: float | None = None) -> dict[str, Any]:
        """Until the storage plug-in reports ``role`` for the site's copy (and, with
        ``in_sync``, replicating and consistent)."""
        backend = self.backend()
        got: list[dict[str, Any]] = []

        def check() -> tuple[bool, str]:
            obj = self.role_object(site)
            seen, done = manifests.observed_role(backend, obj)
            msg = manifests.status_note(obj)
            if seen == role and (done or not in_sync):
                got.append(obj or {})
                return True, f"{role}: {msg}"
            return False, f"{seen or 'unknown'}: {msg}"

        wait_until(check, task=f"the {site} site's copy {role}{', in sync' if in_sync else ''}",
                   timeout=timeout or self.timeout, interval=0.2)
        return got[-1]

    # -- arrays (what the driver publishes; None on clusters that publish none) ------------
    def array_group(self, site: str) -> dict[str, Any] | None:
        """The array's report of this site's copy of the group (None when unknown)."""
        from dr_kit import published

        s = self.site(site)
        if not self.reachable(site):
            return None
        name = None
        for where in (site, drs.other(site)):  # a copy without a resource of its own yet
            obj = self.role_object(where) if self.reachable(where) else None
            name = ((obj or {}).get("metadata", {}).get("annotations") or {}).get(published.ARRAY_GROUP)
            if name:
                break
        try:
            if not s.has_array:
                return None
            if not name:
                name = self._group_of_volumes(site)
            return s.array.group_status(name) if name else None
        except DrKitError:
            return None

    def _group_of_volumes(self, site: str) -> str | None:
        """The array group holding the namespace's protected volumes at ``site`` (from its
        PVCs' volume handles and the array's report), when no resource names it."""
        s = self.site(site)
        handles = set()
        for pvc in s.kube.items("PersistentVolumeClaim", self.namespace):
            if (pvc["metadata"].get("labels") or {}).get(self.policy.group_label_key) != self.group:
                continue
            pv = s.kube.get("PersistentVolume", (pvc.get("spec") or {}).get("volumeName") or "")
            handle = (((pv or {}).get("spec") or {}).get("csi") or {}).get("volumeHandle")
            if handle:
                handles.add(handle)
        groups = {v.get("group") for v in s.array.status()["volumes"] if v["name"] in handles}
        groups.discard(None)
        return next(iter(groups)) if len(groups) == 1 else None

    def wait_caught_up(self, site: str, since: float, timeout: float | None = None) -> float:
        """Until the copy at the other site holds every write of ``site`` (the primary):
        sequence lag 0 at the array, else ``lastSyncTime`` at or after ``since``."""
        t0 = time.monotonic()

        def check() -> tuple[bool, str]:
            g = self.array_group(site)
            if g is not None:
                lag = g.get("lag") or {}
                ok = g.get("state") == "pair" and lag.get("sequence_lag") == 0 and lag.get("consistent")
                return bool(ok), f"{g.get('state')}, {lag.get('sequence_lag')} entries behind"
            obj = self.role_object(site) or {}
            last = (obj.get("status") or {}).get("lastSyncTime")
            from dr_kit.sites import _ts

            ts = _ts(last)
            ok = ts is not None and ts.timestamp() >= since
            return ok, f"lastSyncTime {last}"

        wait_until(check, task=f"final sync from the {site} site", timeout=timeout or self.timeout,
                   interval=0.05)
        return time.monotonic() - t0

    def wait_serving(self, site: str, namespace: str | None = None,
                     timeout: float | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        got: list[dict[str, Any]] = []

        def check() -> tuple[bool, str]:
            ok, msg, st = self.apps.serving(self.site(site), ns)
            if ok:
                got.append(st)
            return ok, msg

        wait_until(check, task=f"the application of {ns} serving at the {site} site",
                   timeout=timeout or self.timeout, interval=0.05)
        return got[-1]

    # -- checks (refusals) ---------------------------------------------------------------
    def _refuse_during_test(self, st: DrState, op: str) -> None:
        """No operation while a DR test environment of the namespace runs (its clones and
        test namespace would outlive the roles they were made from)."""
        if st.test_running:
            raise Refused(f"{op} refused: a DR test of {self.namespace} is running"
                          f"{' already' if op == 'test' else ''} (namespace "
                          f"{(st.test or {}).get('namespace')}); nothing was changed; clean it up "
                          f"first: dr-kit dr test {self.namespace} --cleanup")

    def _require_reachable(self, site: str, op: str) -> None:
        if not self.reachable(site, fresh=True) or self._namespace(site) is None:
            raise Refused(f"{op} refused: the {site} site cannot be reached (or has no namespace "
                          f"{self.namespace}); nothing was changed")

    def _require_replicating(self, st: DrState, op: str) -> None:
        obj = self.role_object(st.primary)
        seen, done = manifests.observed_role(self.backend(), obj)
        if seen != "primary" or not done:
            msg = manifests.status_note(obj)
            raise Refused(f"{op} refused: {self.namespace} does not replicate from the {st.primary} "
                          f"site now ({msg}); nothing was changed")

    # ======================================================================================
    # relocate (planned)
    # ======================================================================================
    def relocate(self) -> dict[str, Any]:
        """Planned move of the application to the other site: quiesce, final sync (lag 0),
        demote, promote the other side, reverse replication without any copy, start there.
        Keys: ``rpo_orders`` (0), ``rto_s``, ``final_sync_s``, ``resync_bytes``, ``primary``."""
        st0 = self.state()
        src = st0.operation.data.get("source", st0.primary) if st0.operation and \
            st0.operation.name == "relocate" else st0.primary
        dst = drs.other(src)

        def check(st: DrState) -> None:
            self._refuse_during_test(st, "relocate")
            for s in drs.SITES:
                self._require_reachable(s, "relocate")
            self._require_replicating(st, "relocate")

        def prepare(st: DrState) -> dict[str, Any]:
            self.ensure_role_object(dst, "secondary")
            return {"source": src}

        steps = [Step("prepare", prepare, f"the {dst} site's copy described as secondary"),
                 *self._move_steps(src, dst)]
        return self._run("relocate", dst, steps, check, lambda st: self._move_result(st, src, dst))

    def _promote_step(self, dst: str) -> Callable[[DrState], dict[str, Any]]:
        """The step that makes ``dst``'s copy primary (relocate and failover alike)."""

        def promote(st: DrState) -> dict[str, Any]:
            self.ensure_role_object(dst, "primary")
            self.wait_role(dst, "primary")
            g = self.array_group(dst) or {}
            return {"promoted": g.get("promoted")}

        return promote

    def _move_steps(self, src: str, dst: str) -> list[Step]:
        """Quiesce at ``src``, final sync, demote, promote ``dst``, swap, start, verify.  The
        application starts at once (the image is the one it stopped on, proven by the
        journal positions); it is not judged on the way (that is the failover's part)."""

        def quiesce(st: DrState) -> dict[str, Any]:
            t = time.time()
            report = self.apps.stop(self.site(src), self.namespace)
            return {"t_quiesce": t, "orders_at_source": report.get("last_order")}

        def final_sync(st: DrState) -> dict[str, Any]:
            since = float(st.operation.data.get("t_quiesce") or time.time())  # type: ignore[union-attr]
            return {"final_sync_s": round(self.wait_caught_up(src, since), 3)}

        def demote(st: DrState) -> dict[str, Any]:
            pending = st.operation.data.get("calling_off")  # type: ignore[union-attr]
            if isinstance(pending, dict):  # resumed while the move was being called off
                self._call_off_move(src, dst, pending)
            # once more right before the demotion: a volume that joined the group since the
            # final sync suspends the pair until its copy is over, and is copied first
            # (not when resumed after the demotion was asked: a demoted copy is never in pair)
            if manifests.role_of(self.backend(), self.role_object(src)) != "secondary":
                since = float(st.operation.data.get("t_quiesce") or time.time())  # type: ignore[union-attr]
                self.wait_caught_up(src, since)
            self.ensure_role_object(src, "secondary")
            self.wait_role(src, "secondary")
            g = self.array_group(src) or {}
            demoted = g.get("demoted")
            if isinstance(demoted, dict) and demoted.get("clean") is False:
                self._call_off_move(src, dst, demoted)
            return {"demoted": demoted}

        def swap(st: DrState) -> dict[str, Any]:
            cur = self.state()
            if cur.primary != dst:
                self._write(cur.swapped(dst).bump())
            self._ensure_namespace_copy(dst)
            return {}

        def start(st: DrState) -> dict[str, Any]:
            self.apps.start(self.site(dst), self.namespace)
            report = self.wait_serving(dst)
            t0 = float(st.operation.data.get("t_quiesce") or time.time())  # type: ignore[union-attr]
            return {"t_serving": time.time(), "rto_s": round(time.time() - t0, 3),
                    "orders_at_target": report.get("started_after_order"),
                    "verdict": report.get("verdict")}

        def verify(st: DrState) -> dict[str, Any]:
            self.wait_role(dst, "primary", in_sync=True)
            g = self.array_group(dst) or {}
            copy = g.get("last_copy") or None
            promoted_at = ((g.get("promoted") or {}).get("at")) or 0
            resync = int(copy["bytes"]) if copy and (copy.get("started") or 0) >= promoted_at else 0
            return {"resync_bytes": resync if g else None, "volume_bytes": g.get("volume_bytes")}

        return [Step("quiesce", quiesce, f"application stopped at the {src} site"),
                Step("final-sync", final_sync, f"the {dst} site applies every write"),
                Step("demote", demote, f"the {src} site's copy secondary: its volumes refuse writes"),
                Step("promote", self._promote_step(dst), f"the {dst} site's copy primary, replicating back"),
                Step("swap", swap, f"DR state: the {dst} site is primary"),
                Step("start", start, f"application started at the {dst} site"),
                Step("verify", verify, "replication in sync in the new direction")]

    def _call_off_move(self, src: str, dst: str, demoted: dict[str, Any]) -> None:
        """A planned move whose demotion was not clean: ``src``'s copy holds writes that
        ``dst``'s lacks (written after the last check of the final sync), so promoting
        ``dst`` would lose them.  The move is called off (:meth:`_back_to_source`) and
        Conflict raised.  Also what a move resumed during a call-off or an abort does."""
        st = self.state()
        op = st.operation.name if st.operation else "relocate"
        why = demoted.get("why")
        if not why:
            writes = int(demoted.get("lost_entries") or 0)
            regions = int(demoted.get("divergent_regions") or 0)
            why = (f"the {src} site's copy was demoted holding {regions} region{'s' * (regions != 1)} "
                   f"of 64 KiB ({writes} write{'s' * (writes != 1)} in its journal) that the {dst} "
                   "site's copy does not have")
        self._back_to_source(src, dst, why)
        raise Conflict(f"{op} of {self.namespace} called off: {why}. The {src} site is primary "
                       f"again, its copy in sync with the {dst} site, and the application runs "
                       f"there; run `dr-kit dr {op} {self.namespace}` again to move it")

    def _back_to_source(self, src: str, dst: str, why: str) -> None:
        """Undo a planned move that has not promoted ``dst``: ``src``'s copy primary again
        (after a demotion: promoted, and the regions it wrote beyond the split copied to
        ``dst`` by a resync), ``dst``'s secondary, the application running at ``src``, the
        operation ended with ``called_off`` in its history entry.  Recorded first, so the
        same command resumed after a kill goes on with it."""
        st = self.state()
        op = st.operation.name if st.operation else "relocate"
        pending = st.operation.data.get("calling_off") if st.operation else None
        if isinstance(pending, dict) and "demoted" in pending:
            demoted = bool(pending["demoted"])  # resumed: as decided when it began
        else:
            demoted = manifests.role_of(self.backend(), self.role_object(src)) == "secondary"
            if st.operation is not None:  # resumable
                self._write(st.with_step(st.operation.step, calling_off={"why": why, "demoted": demoted}))
        self.say(f"  {why}: the move is called off, the {src} site's copy stays or becomes "
                 "primary again")
        self._event("DRCalledOff", f"{op} called off: {why}", "Warning")
        if demoted:
            # promoted again, then the other copy resynchronised from it
            self.ensure_role_object(src, "primary")
            self.wait_role(src, "primary")
            _kill_hook(op, 0, "calling-off")
            self.ensure_role_object(dst, "resync")
            self.wait_role(src, "primary", in_sync=True, timeout=max(self.timeout, 300))
        self.ensure_role_object(dst, "secondary")
        try:
            self.apps.start(self.site(src), self.namespace)
            self.wait_serving(src)
        except DrKitError as e:  # the roles are back; say so, and how to finish
            where = "primary again" if demoted else "still primary"
            raise type(e)(f"{op} of {self.namespace} is being called off ({why}): the {src} site's "
                          f"copy is {where}, but the application did not start there: {e}; "
                          f"fix that and run `dr-kit dr {op} {self.namespace}` again to finish "
                          "calling it off") from None
        st = self.state()
        if st.operation is not None:
            self._write(st.finished(time.time(), called_off=why))

    def abort(self) -> dict[str, Any]:
        """Call off a running relocate that has not promoted its target yet (a final sync
        that cannot finish, a change of plan): the source stays or becomes primary again,
        the application runs there, nothing is lost.  Keys: ``aborted``, ``primary``,
        ``at_step``."""
        st = self.state()
        op = st.operation
        ns = self.namespace
        if op is None:
            raise Refused(f"abort refused: no DR operation of {ns} is running; nothing was changed")
        if op.name != "relocate":
            raise Refused(f"abort refused: only a relocate can be called off, and {op.name} of {ns} "
                          f"is running (step {op.step}); run `dr-kit dr {op.name} {ns}` again to "
                          "finish it; nothing was changed")
        src = str(op.data.get("source") or st.primary)
        dst = drs.other(src)
        for s in drs.SITES:
            self._require_reachable(s, "abort")
        if "promote" in op.done or st.primary != src or \
                manifests.role_of(self.backend(), self.role_object(dst)) == "primary":
            raise Refused(f"abort refused: the {dst} site's copy is primary already (or asked to "
                          f"be); run `dr-kit dr relocate {ns}` again to finish the move; nothing "
                          "was changed")
        pending = op.data.get("calling_off")
        why = str(pending.get("why")) if isinstance(pending, dict) and pending.get("why") else \
            f"aborted by request at step {op.step}"
        self._back_to_source(src, dst, why)
        return {"aborted": True, "primary": src, "at_step": op.step, "why": why}

    def _move_result(self, st: DrState, src: str, dst: str) -> dict[str, Any]:
        d = st.operation.data if st.operation else {}
        a, b = d.get("orders_at_source"), d.get("orders_at_target")
        demoted, promoted = d.get("demoted") or {}, d.get("promoted") or {}
        verdict: dict[str, Any] = d["verdict"] if isinstance(d.get("verdict"), dict) else {}
        return {"rpo_orders": (int(a) - int(b)) if a is not None and b is not None else None,
                "rto_s": d.get("rto_s"), "final_sync_s": d.get("final_sync_s"),
                "resync_bytes": d.get("resync_bytes"), "primary": dst, "from": src,
                "volume_bytes": d.get("volume_bytes"),
                "position_demoted": demoted.get("position"), "position_promoted": promoted.get("position"),
                "without_copy": bool(demoted.get("clean") and promoted.get("clean")
                                     and demoted.get("position") == promoted.get("position")),
                "orders": b, "consistent": verdict.get("consistent")}

    # ======================================================================================
    # failover (unplanned)
    # ======================================================================================
    def failover(self, *, force: bool = False) -> dict[str, Any]:
        """The primary site is lost: promote the other site's copy and start the
        application there.  The old primary is fenced (now if it answers, else when it
        returns: its copy is demoted and its application not restarted).  Keys:
        ``rpo_orders`` (+ ``rpo_estimated``), ``rto_s``, ``primary``, ``consistent``."""
        st0 = self.state()
        resuming = st0.operation is not None and st0.operation.name == "failover"
        src = st0.operation.data.get("source", st0.primary) if resuming and st0.operation else st0.primary
        dst = drs.other(src)

        def check(st: DrState) -> None:
            self._require_reachable(dst, "failover")
            copy = self.array_group(dst)
            if copy is not None and copy.get("side") == "main":
                raise Refused(f"failover refused: the {dst} site's copy is primary already")
            self._refuse_during_test(st, "failover")
            est = self._loss_estimate(dst)
            consistent = None if copy is None else bool(copy.get("consistent")) and \
                copy.get("state") in ("pair", "suspended")
            if consistent is not True:
                why = ("its consistency cannot be verified (the storage publishes no array report)"
                       if copy is None else f"it is {copy.get('state')}: "
                       f"{copy.get('message') or 'not consistent'}")
                if not force:
                    raise Refused(f"failover refused: the {dst} site's copy of {self.namespace} is not "
                                  f"known consistent ({why}); nothing was changed; --force fails over "
                                  f"anyway ({_loss_line(est)})")
                (self.warn or self.say)(f"failover forced onto a copy that is not known consistent "
                                        f"({why}); {_loss_line(est)}")
            else:
                self.say(f"failover to the {dst} site: {_loss_line(est)}")

        def fence(st: DrState) -> dict[str, Any]:
            if not self.reachable(src, fresh=True) or self._namespace(src) is None:
                return {"fence_pending": True, "source": src}
            report = self.apps.stop(self.site(src), self.namespace)
            with contextlib.suppress(DrKitError):
                self.ensure_role_object(src, "secondary")
                self.wait_role(src, "secondary", timeout=30)
            return {"fence_pending": False, "source": src, "orders_at_source": report.get("last_order")}

        def assess(st: DrState) -> dict[str, Any]:
            copy = self.array_group(dst) or {}
            return {"estimate": self._loss_estimate(dst),
                    "applied": copy.get("applied"), "consistent_before": copy.get("consistent")}

        def swap(st: DrState) -> dict[str, Any]:
            cur = self.state()
            if cur.primary != dst:
                d = cur.operation.data if cur.operation else {}
                marker = {"from": src, "to": dst, "at": time.time(),
                          "position": (d.get("promoted") or {}).get("position"),
                          "fence_pending": bool(d.get("fence_pending")), "estimate": d.get("estimate")}
                self._write(cur.swapped(dst).bump(failover=marker))
            self._ensure_namespace_copy(dst)
            return {}

        def start(st: DrState) -> dict[str, Any]:
            self.apps.start(self.site(dst), self.namespace, verify=True)
            report = self.wait_serving(dst)
            t0 = st.operation.started if st.operation else time.time()
            cur = self.state()
            if cur.failover is not None and report.get("started_after_order") is not None:
                self._write(cur.bump(failover={**cur.failover,
                                                "orders_at_promotion": report.get("started_after_order")}))
            return {"rto_s": round(time.time() - t0, 3), "orders_at_target": report.get("started_after_order"),
                    "verdict": report.get("verdict")}

        def result(st: DrState) -> dict[str, Any]:
            d = st.operation.data if st.operation else {}
            a, b = d.get("orders_at_source"), d.get("orders_at_target")
            est = d.get("estimate") or {}
            exact = a is not None and b is not None
            return {"rpo_orders": (int(a) - int(b)) if a is not None and b is not None else est.get("orders"),
                    "rpo_estimated": not exact, "rpo_window_s": est.get("window_s"),
                    "rpo_orders_max": None if exact else est.get("orders_max"),
                    "rto_s": d.get("rto_s"), "primary": dst, "from": src,
                    "fenced": not d.get("fence_pending"), "orders": b,
                    "consistent": (d.get("verdict") or {}).get("consistent"),
                    "position": (d.get("promoted") or {}).get("position")}

        steps = [Step("fence", fence, f"the {src} site's application stopped, its copy demoted (if it answers)"),
                 Step("assess", assess, f"what the {dst} site's copy holds"),
                 Step("promote", self._promote_step(dst), f"the {dst} site's copy primary"),
                 Step("swap", swap, f"DR state: the {dst} site is primary; the {src} site fenced"),
                 Step("start", start, f"application started at the {dst} site")]
        return self._run("failover", dst, steps, check, result)

    def _loss_estimate(self, dst: str) -> dict[str, Any]:
        """What a failover to ``dst`` now loses: the writes its copy has not applied, from
        the last head position the old primary announced, as entries and seconds; orders
        estimated from the application's last reported rate (lab)."""
        copy = self.array_group(dst)
        if copy is None or copy.get("side") != "backup":
            return {"entries": None, "window_s": None, "orders": None, "source": "unknown"}
        head = (copy.get("main_head") or {})
        applied_seq = int(str(copy.get("applied") or "g0/0").rsplit("/", 1)[-1])
        entries = max(0, int(head.get("sequence") or applied_seq) - applied_seq)
        window = None
        if head.get("time") and copy.get("applied_time"):
            window = max(0.0, float(head["time"]) - float(copy["applied_time"]))
        elif entries == 0:
            window = 0.0
        upto = None
        if copy.get("applied_time"):  # the old primary may have written until it was lost
            upto = max(0.0, time.time() - float(copy["applied_time"]))
        orders = orders_max = None
        if self.controls is not None:
            app = self.controls.application_status(self.namespace) or {}
            rate = app.get("rate")
            if isinstance(rate, (int, float)):
                orders = int(round(float(rate) * window)) if window is not None else None
                orders_max = int(round(float(rate) * upto)) if upto is not None else None
        return {"entries": entries, "window_s": None if window is None else round(window, 3),
                "orders": orders, "orders_max": orders_max,
                "window_max_s": None if upto is None else round(upto, 3),
                "source": "array: the old primary's last announced head (at least this much); "
                          "at most everything since the last applied write"}

    # ======================================================================================
    # failback
    # ======================================================================================
    def failback(self) -> dict[str, Any]:
        """After a failover, with the old primary back: fence it, count what it wrote that
        was lost, resynchronise it from the new primary by the regions changed on either
        side since the split, then relocate the application home.  Keys: ``resync_bytes``,
        ``volume_bytes``, ``rpo_orders``, ``rto_s``, ``consistent``."""
        st0 = self.state()
        marker = st0.failover or (st0.operation.data.get("failover") if st0.operation else None) or {}
        home = marker.get("from") or drs.other(st0.primary)
        away = drs.other(home)

        def check(st: DrState) -> None:
            if not st.failover:
                since = next((h.get("op") for h in reversed(st.history) if h.get("op") != "test"),
                             "protection")  # a DR test moves nothing
                raise Refused(f"failback refused: no failover of {self.namespace} is behind it (the "
                              f"{st.primary} site has been primary since the {since}); "
                              "nothing was changed")
            self._refuse_during_test(st, "failback")
            for s in drs.SITES:
                self._require_reachable(s, "failback")

        def fence(st: DrState) -> dict[str, Any]:
            if self.apps.running_at(self.namespace) == home:
                self.apps.stop(self.site(home), self.namespace)
            if manifests.role_of(self.backend(), self.role_object(home)) != "resync":
                self.ensure_role_object(home, "secondary")
            self.wait_role(home, "secondary")
            g = self.array_group(home) or {}
            return {"failover": dict(marker), "fenced_copy": g.get("demoted")}

        def lost(st: DrState) -> dict[str, Any]:
            verdict = self._image_verdict(home)
            return {"orders_at_old_primary": None if verdict is None else verdict["orders"]}

        def resync(st: DrState) -> dict[str, Any]:
            t0 = time.monotonic()
            self.ensure_role_object(home, "resync")
            self.wait_role(away, "primary", in_sync=True, timeout=max(self.timeout, 300))
            self.wait_role(home, "secondary", in_sync=True)
            g = self.array_group(away) or {}
            copy = g.get("last_copy") or {}
            return {"resync_s": round(time.monotonic() - t0, 3),
                    "reverse_resync_bytes": copy.get("bytes"), "volume_bytes": g.get("volume_bytes"),
                    "resync_regions": copy.get("regions")}

        def steady(st: DrState) -> dict[str, Any]:
            self.ensure_role_object(home, "secondary")
            return {}

        def judge(st: DrState) -> dict[str, Any]:
            verdict = self._image_verdict(away)  # the copy of what now runs at home
            return {"verdict_after": verdict}

        def clear(st: DrState) -> dict[str, Any]:
            cur = self.state()
            if cur.failover is not None:
                self._write(cur.bump(failover=None))
            return {}

        move = self._move_steps(away, home)
        steps = [Step("fence", fence, f"the {home} site's copy secondary, its application stopped"),
                 Step("count-lost", lost, f"orders in the {home} site's image after the split"),
                 Step("resync", resync, f"regions changed on either side copied from the {away} site"),
                 Step("steady", steady, "the resync is over"),
                 *[Step(f"home-{s.name}", s.run, s.what) for s in move],
                 Step("check", judge, f"a snapshot group of the {away} site's copy judged"),
                 Step("clear", clear, "the failover is behind us")]

        def result(st: DrState) -> dict[str, Any]:
            d = st.operation.data if st.operation else {}
            fo = d.get("failover") or {}
            promo = fo.get("orders_at_promotion")
            old = d.get("orders_at_old_primary")
            exact = promo is not None and old is not None
            est = (fo.get("estimate") or {}).get("orders")
            dem = d.get("fenced_copy") or {}
            moved = self._move_result(st, away, home)
            after = d.get("verdict_after") or {}
            return {"resync_bytes": d.get("reverse_resync_bytes"), "volume_bytes": d.get("volume_bytes"),
                    "rpo_orders": max(0, int(old) - int(promo)) if old is not None and promo is not None else est,
                    "rpo_estimated": not exact, "rto_s": moved["rto_s"],
                    "consistent": after.get("consistent"),
                    "primary": home, "resync_s": d.get("resync_s"), "resync_regions": d.get("resync_regions"),
                    "lost_writes": dem.get("lost_entries"), "lost_write_bytes": dem.get("lost_bytes"),
                    "divergent_bytes": dem.get("divergent_bytes"), "final_sync_s": moved["final_sync_s"],
                    "relocate_resync_bytes": moved["resync_bytes"], "orders": moved["orders"]}

        return self._run("failback", home, steps, check, result)

    def _image_verdict(self, site: str) -> dict[str, Any] | None:
        """The consistency verdict (with its order count) of the image the site's copy
        holds: a snapshot group of it, restored, its databases opened as an analyst does;
        None when the site cannot tell (no group snapshots, no published databases)."""
        from dr_kit.snapshots import (
            create_snapshot_group,
            delete_snapshot_group,
            open_snapshot_databases,
        )

        s = self.site(site)
        if not s.serves_group_snapshots():
            return None
        name = f"dr-count-{uuid.uuid4().hex[:6]}"
        try:
            create_snapshot_group(s, name, self.namespace, allow_inconsistent=True)
            dbs = open_snapshot_databases(s, name, self.namespace, timeout=60)
            try:
                return dbs.provenance.verdict.to_dict()
            finally:
                dbs.close()
        except DrKitError as e:
            self.say(f"  the {site} site's image cannot be judged: {e}")
            return None
        finally:
            with contextlib.suppress(DrKitError):
                delete_snapshot_group(s, name, self.namespace, timeout=60)

    # ======================================================================================
    # DR test
    # ======================================================================================
    def test(self, *, keep: bool = False, seconds: float = 3.0, rate: float | None = 20.0,
             run_application: bool = True, lag_interval_s: float = 0.1,
             baseline_s: float = 2.0) -> dict[str, Any]:
        """Rehearse a failover without touching production: a snapshot group at the
        secondary site, restored to clones in ``<namespace>-drtest``, the application
        started there on them and verified; production replication goes on meanwhile
        (sampled throughout, and ``baseline_s`` before it: its steady band).  ``keep``
        leaves the test environment running
        (:meth:`test_cleanup` removes it).  Keys: ``consistent``, ``test_rto_s``,
        ``test_transactions``, ``replication_suspended``, ``resync_after``,
        ``lag_p99_ms_during_test``."""
        st0 = self.state()
        src = st0.primary
        dst = st0.secondary
        test_ns = f"{self.namespace}{TEST_SUFFIX}"[:63]
        resuming = st0.operation is not None and st0.operation.name == "test"
        snap = (st0.operation.data.get("snapshot") if resuming and st0.operation else None) \
            or f"drtest-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        sampler = _LagSampler(self.site(src), self.namespace, lag_interval_s)

        def check(st: DrState) -> None:
            self._refuse_during_test(st, "test")
            for s in drs.SITES:
                self._require_reachable(s, "test")
            self._require_replicating(st, "test")

        def baseline(st: DrState) -> dict[str, Any]:
            time.sleep(baseline_s)  # the lag's steady band, sampled before anything is done
            g = self.array_group(src) or {}
            lag = g.get("lag") or {}
            return {"snapshot": snap, "test_namespace": test_ns, "generation_before": _gen(lag.get("main")),
                    "sequence_before": _seq(lag.get("main"))}

        def snapshot(st: DrState) -> dict[str, Any]:
            from dr_kit.snapshots import create_snapshot_group, get_snapshot_group

            t = time.time()
            try:
                grp = get_snapshot_group(self.site(dst), snap, self.namespace)
            except NotFound:
                grp = create_snapshot_group(self.site(dst), snap, self.namespace,
                                            main_site=self.site(src))
            cur = self.state()
            self._write(cur.bump(test={"namespace": test_ns, "snapshot": snap, "site": dst,
                                       "state": "creating", "started": t}))
            return {"t_requested": t, "snapshot_sequence": grp.sequence, "snapshot_position": grp.position}

        def restore(st: DrState) -> dict[str, Any]:
            self._restore_test(dst, snap, test_ns)
            return {}

        def start(st: DrState) -> dict[str, Any]:
            if not run_application:
                self.say("  skipped: the application copy is not started on this path")
                return {"serving": None}
            s = self.site(dst)
            if self.controls is None:
                from dr_kit.dr.apps import ClusterApps

                apps = ClusterApps()._apps(self.site(src), self.namespace)
                for body in manifests.application_copy(apps, test_ns, self.namespace):
                    s.kube.create(body["kind"], body, exist_ok=True)
            report = self.apps.start(s, test_ns, rate=rate, verify=True)
            if report.get("note"):
                self.say(f"  {report['note']}")
            served = self.wait_serving(dst, test_ns)
            t0 = float(st.operation.data.get("t_requested") or time.time())  # type: ignore[union-attr]
            return {"test_rto_s": round(time.time() - t0, 3), "app_verdict": served.get("verdict"),
                    "t_serving": time.time()}

        def run(st: DrState) -> dict[str, Any]:
            if not run_application:
                return {"test_transactions": None}
            time.sleep(seconds)
            ok, _msg, report = self.apps.serving(self.site(dst), test_ns)
            return {"test_transactions": report.get("committed") if report else None}

        def verify(st: DrState) -> dict[str, Any]:
            if run_application and self.controls is not None:
                self.apps.stop(self.site(dst), test_ns)  # the databases are read quiet
            t_stopped = time.time()
            out = {**self._verify_test(dst, snap, test_ns), "t_stopped": t_stopped}
            if keep and run_application and self.controls is not None:
                self.apps.start(self.site(dst), test_ns, rate=rate)
            return out

        def replication(st: DrState) -> dict[str, Any]:
            g = self.array_group(src) or {}
            lag = g.get("lag") or {}
            samples = sampler.stop()
            d = st.operation.data if st.operation else {}
            gens = {s["generation"] for s in samples if s["generation"] is not None}
            states = {s["state"] for s in samples}
            gen_after = _gen(lag.get("main"))
            t_req = float(d.get("t_requested") or 0.0) - sampler.t0
            ms = sorted(s["lag_ms"] for s in samples if s["lag_ms"] is not None and s["t"] >= t_req)
            before = sorted(s["lag_ms"] for s in samples if s["lag_ms"] is not None and s["t"] < t_req)
            return {"replication_suspended": bool(states & {"suspended", "error"}),
                    "resync_after": bool(states & {"resync", "copy"}) or len(gens) > 1 or (
                        gen_after is not None and d.get("generation_before") is not None
                        and gen_after != d.get("generation_before")),
                    "sequence_after": _seq(lag.get("main")),
                    "lag_p99_ms_during_test": _p99(ms), "lag_p50_ms_during_test": _p50(ms),
                    "lag_p99_ms_before_test": _p99(before),
                    "lag_samples": len(samples), "lag_source": sampler.source,
                    "lag_series": [[round(s["t"], 3), s["lag_ms"]] for s in samples]}

        def cleanup(st: DrState) -> dict[str, Any]:
            if keep:
                cur = self.state()
                self._write(cur.bump(test={**(cur.test or {}), "state": "running"}))
                return {}
            self._cleanup_test(dst, snap, test_ns)
            cur = self.state()
            self._write(cur.bump(test={**(cur.test or {}), "state": "cleaned", "cleaned": time.time()}))
            return {}

        def result(st: DrState) -> dict[str, Any]:
            d = st.operation.data if st.operation else {}
            seq0, seq1 = d.get("sequence_before"), d.get("sequence_after")
            marks = {label: round(float(d[key]) - sampler.t0, 3) for key, label in (
                ("t_requested", "snapshot requested"), ("t_serving", "test application serving"),
                ("t_stopped", "test application stopped")) if d.get(key)}
            return {"consistent": d.get("consistent"), "test_rto_s": d.get("test_rto_s"), "marks": marks,
                    "test_transactions": d.get("test_transactions"),
                    "replication_suspended": d.get("replication_suspended"),
                    "resync_after": d.get("resync_after"),
                    "lag_p99_ms_during_test": d.get("lag_p99_ms_during_test"),
                    "lag_p50_ms_during_test": d.get("lag_p50_ms_during_test"),
                    "lag_p99_ms_before_test": d.get("lag_p99_ms_before_test"),
                    "lag_source": d.get("lag_source"), "lag_series": d.get("lag_series"),
                    "sequence_continued": (seq1 > seq0) if seq0 is not None and seq1 is not None else None,
                    "snapshot": snap, "snapshot_position": d.get("snapshot_position"),
                    "namespace": test_ns, "site": dst, "kept": keep,
                    "orders": d.get("orders"), "revenue_days": d.get("revenue_days"),
                    "verdict": d.get("verdict")}

        steps = [Step("baseline", baseline, "replication before the test"),
                 Step("snapshot", snapshot, f"snapshot group {snap} at the {dst} site"),
                 Step("restore", restore, f"clones in namespace {test_ns}"),
                 Step("start", start, f"the application started in {test_ns}"),
                 Step("run", run, "transactions committed on the clones"),
                 Step("verify", verify, "consistency verdict and analytics on the clones"),
                 Step("replication", replication, "production replication checked undisturbed"),
                 Step("cleanup", cleanup, "kept" if keep else f"namespace {test_ns} removed")]
        sampler.start()
        try:
            return self._run("test", dst, steps, check, result)
        finally:
            sampler.stop()

    def test_cleanup(self) -> dict[str, Any]:
        """Remove a kept DR test environment (idempotent)."""
        st0 = self.state()
        t = st0.test or (st0.operation.data if st0.operation and st0.operation.name == "test" else None)

        def check(st: DrState) -> None:
            if not st.test_running:
                raise Refused(f"test cleanup refused: no DR test environment of {self.namespace} is "
                              "running; nothing was changed")

        def cleanup(st: DrState) -> dict[str, Any]:
            tt = t or {}
            self._cleanup_test(tt.get("site") or st.secondary, tt.get("snapshot"),
                               tt.get("namespace") or f"{self.namespace}{TEST_SUFFIX}")
            cur = self.state()
            self._write(cur.bump(test={**(cur.test or {}), "state": "cleaned", "cleaned": time.time()}))
            return {}

        return self._run("test", st0.secondary, [Step("cleanup", cleanup, "test environment removed")],
                         check, lambda st: {"cleaned": True, "namespace": (t or {}).get("namespace")})

    def _restore_test(self, site: str, snap: str, test_ns: str) -> None:
        from dr_kit.snapshots import _require_vgs, _volume_snapshots

        s = self.site(site)
        kube = s.kube
        kube.create("Namespace", manifests.test_namespace(self.namespace, test_ns), exist_ok=True)
        vgs = _require_vgs(s, snap, self.namespace)
        vss = _volume_snapshots(s, vgs)
        contents = {pvc: kube.get("VolumeSnapshotContent",
                                  (vs.get("status") or {}).get("boundVolumeSnapshotContentName") or "") or {}
                    for pvc, vs in vss.items()}
        imports = manifests.snapshot_imports(self.namespace, test_ns, vss, contents, prefix=snap)
        for body in imports:
            kube.create(body["kind"], body, exist_ok=True)
        sources = {p: kube.get("PersistentVolumeClaim", p, self.namespace) or {} for p in vss}
        snapshot_of = {b["metadata"]["labels"]["dr-kit.io/pvc"]: b["metadata"]["name"]
                       for b in imports if b["kind"] == "VolumeSnapshot"}
        for body in manifests.restored_pvcs(test_ns, sources, snapshot_of, self.namespace):
            kube.create("PersistentVolumeClaim", body, exist_ok=True)

        def bound() -> tuple[bool, str]:
            phases = {p: ((kube.get("PersistentVolumeClaim", p, test_ns) or {}).get("status") or {}).get("phase")
                      for p in vss}
            left = sorted(p for p, ph in phases.items() if ph != "Bound")
            return not left, "all Bound" if not left else f"waiting for {', '.join(left)}"

        wait_until(bound, task=f"clones in {test_ns}", timeout=self.timeout, interval=0.1)

    def _verify_test(self, site: str, snap: str, test_ns: str) -> dict[str, Any]:
        """The test clones' verdict and an analysis on them, through the databases a DBA
        publishes for them (Secret ``<snapshot>-databases`` in the test namespace)."""
        from dr_kit import analytics, published
        from dr_kit.sqlite import dialect

        s = self.site(site)
        secret_name = published.databases_secret(snap)
        got: list[dict[str, Any]] = []

        def published_urls() -> tuple[bool, str]:
            sec = s.kube.get("Secret", secret_name, test_ns)
            if sec and published.secret_text(sec, published.STOCK_URL_KEY) and \
                    published.secret_text(sec, published.SALES_URL_KEY):
                got.append(sec)
                return True, "published"
            return False, f"waiting for Secret {test_ns}/{secret_name}"

        try:
            wait_until(published_urls, task="the test databases' URLs", timeout=30, interval=0.2)
        except Unavailable:
            self.say(f"  no database URLs published for the test clones (Secret {test_ns}/{secret_name}); "
                     "the verdict and analytics are not run")
            return {"consistent": None, "verdict": None}
        dialect.register()
        sec = got[-1]
        dbs = analytics.open_databases(published.secret_text(sec, published.STOCK_URL_KEY) or "",
                                       published.secret_text(sec, published.SALES_URL_KEY) or "",
                                       password=published.secret_text(sec, published.PASSWORD_KEY),
                                       snapshot=snap, source=f"DR test clones in {test_ns}")
        try:
            verdict = dbs.provenance.verdict
            days = analytics.revenue_by_day(dbs)
            return {"consistent": bool(verdict.consistent), "verdict": verdict.to_dict(),
                    "orders": verdict.orders, "revenue_days": int(len(days))}
        finally:
            dbs.close()

    def _cleanup_test(self, site: str, snap: str | None, test_ns: str) -> None:
        from dr_kit.snapshots import delete_snapshot_group

        s = self.site(site)
        kube = s.kube
        if self.controls is not None:
            with contextlib.suppress(DrKitError):
                self.apps.stop(s, test_ns)
        label = f"{manifests.DRTEST_LABEL}={self.namespace}"
        for kind in ("Deployment", "PersistentVolumeClaim", "VolumeSnapshot"):
            with contextlib.suppress(NotFound):
                for o in kube.items(kind, test_ns, label_selector=label):
                    kube.delete(kind, o["metadata"]["name"], test_ns, missing_ok=True)

        def gone() -> tuple[bool, str]:
            left = kube.items("PersistentVolumeClaim", test_ns, label_selector=label)
            return not left, f"{len(left)} clones left"

        if kube.get("Namespace", test_ns) is not None:
            wait_until(gone, task=f"clones of {test_ns} deleted", timeout=self.timeout, interval=0.1)
        for o in kube.items("VolumeSnapshotContent", label_selector=label):
            if o["metadata"]["name"].startswith(f"{test_ns}-"):
                kube.delete("VolumeSnapshotContent", o["metadata"]["name"], missing_ok=True)
        kube.delete("Namespace", test_ns, missing_ok=True)
        if snap:
            with contextlib.suppress(NotFound):
                delete_snapshot_group(s, snap, self.namespace, timeout=self.timeout)

    # ======================================================================================
    # status
    # ======================================================================================
    def status(self) -> dict[str, Any]:
        """The DR state and what each site reports: role asked, role observed, in sync,
        the application, the array's view of the copy (when published)."""
        st = self.state()
        backend = self.backend()
        sites: dict[str, Any] = {}
        for s in drs.SITES:
            up = self.reachable(s, fresh=True)
            obj = self.role_object(s) if up else None
            seen, in_sync = manifests.observed_role(backend, obj)
            g = self.array_group(s) if up else None
            sites[s] = {"reachable": up, "role_asked": manifests.role_of(backend, obj),
                        "role": seen, "in_sync": in_sync,
                        "message": ((obj or {}).get("status") or {}).get("message"),
                        "array": None if g is None else {
                            k: g.get(k) for k in ("side", "state", "consistent", "applied", "message",
                                                  "paired", "divergent_regions", "promoted", "demoted",
                                                  "last_copy")}}
        app = self.controls.application_status(self.namespace) if self.controls else None
        return {"namespace": self.namespace, "primary": st.primary, "epoch": st.epoch, "rev": st.rev,
                "operation": st.operation.to_dict() if st.operation else None,
                "test": st.test, "failover": st.failover, "history": list(st.history)[-10:],
                "backend": backend, "sites": sites,
                "application": None if app is None else {k: app.get(k) for k in (
                    "running", "site", "committed", "last_order", "rate")}}


# -- helpers -------------------------------------------------------------------------------


def _kill_hook(op: str, index: int, step: str) -> None:
    """Test hook: ``DR_KIT_DR_KILL_AFTER_STEP=N`` (or ``=name``, or ``=op:N``) kills this
    process with SIGKILL right after that step is recorded done."""
    want = os.environ.get(KILL_ENV, "").strip()
    if not want:
        return
    if ":" in want:
        wop, want = want.split(":", 1)
        if wop != op:
            return
    if want in (str(index), step):
        os.kill(os.getpid(), signal.SIGKILL)


def _loss_line(est: dict[str, Any]) -> str:
    if est.get("entries") is None:
        return "what would be lost is unknown (no array report)"
    orders, most = est.get("orders"), est.get("orders_max")
    window, upto = est.get("window_s"), est.get("window_max_s")
    return (f"at least {est['entries']} writes the copy never received"
            + (f" ({window:.3f} s of transactions)" if window is not None else "")
            + (f", up to {upto:.1f} s of transactions if the old primary wrote until it was lost"
               if upto is not None else "")
            + (f"; estimated {orders} to {most} orders" if orders is not None and most is not None else "")
            + " would be lost")


def status_text(st: dict[str, Any]) -> str:
    """:meth:`DR.status` as a headline and a table with one row per site."""
    op = st.get("operation")
    lines = [f"namespace {st['namespace']}: primary {st['primary']} (epoch {st['epoch']}, "
             f"backend {st.get('backend') or '-'}), "
             + (f"{op['name']} running at step {op['step']}" if op else "no operation running")]
    test = st.get("test") or {}
    if test.get("state") == "cleaned":
        lines.append(f"last DR test: its environment {test.get('namespace')} removed")
    elif test:
        lines.append(f"DR test: {test.get('state')} in namespace {test.get('namespace')}")
    if st.get("failover"):
        lines.append(f"failed over from the {st['failover'].get('from')} site: failback pending")
    app = st.get("application") or {}
    header = ["SITE", "REACHABLE", "ROLE ASKED", "ROLE", "IN SYNC", "ARRAY COPY", "APPLICATION"]
    rows = []
    for name, s in st["sites"].items():
        arr = s.get("array") or {}
        copy = "-"
        if arr:
            copy = f"{arr.get('side')}, {arr.get('state')}"
            if arr.get("consistent") is False:
                copy += ", not consistent"
        here = app.get("site") == name
        running = ("running" if app.get("running") else "stopped") if here else "-"
        if here and app.get("committed") is not None:
            running += f" ({app['committed']} committed)"
        rows.append([name, "yes" if s["reachable"] else "no", s.get("role_asked") or "-",
                     s.get("role") or "-", "yes" if s.get("in_sync") else "no", copy, running])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in [header, *rows]]
    history = st.get("history") or []
    if history:
        lines.append("history: " + ", ".join(
            f"{h.get('op')}{' (called off)' if h.get('called_off') else ''} -> {h.get('primary')}"
            for h in history))
    return "\n".join(lines)


def _seq(pos: Any) -> int | None:
    try:
        return int(str(pos).rsplit("/", 1)[-1]) if pos else None
    except ValueError:
        return None


def _gen(pos: Any) -> int | None:
    try:
        return int(str(pos).split("/", 1)[0].lstrip("g")) if pos else None
    except ValueError:
        return None


def _p99(v: list[float]) -> float | None:
    return round(v[min(len(v) - 1, int(len(v) * 0.99))], 3) if v else None


def _p50(v: list[float]) -> float | None:
    return round(v[len(v) // 2], 3) if v else None


class _LagSampler:
    """Samples the primary's lag in a thread for the length of a DR test."""

    def __init__(self, site: Site, namespace: str, interval: float) -> None:
        self.site, self.namespace, self.interval = site, namespace, interval
        self.samples: list[dict[str, Any]] = []
        self.source = "no samples"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = time.time()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dr-lag")
        self._thread.start()

    def _loop(self) -> None:
        from dr_kit.lag import read_lag

        while not self._stop.is_set():
            with contextlib.suppress(DrKitError):
                for r in read_lag(self.site, self.namespace):
                    self.source = r.source_label
                    self.samples.append({"t": r.measured_at - self.t0, "state": r.state,
                                         "generation": r.main.generation if r.main else None,
                                         "lag_ms": None if r.time_lag_s is None else r.time_lag_s * 1000})
            self._stop.wait(self.interval)

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return list(self.samples)


__all__ = ["DR", "Refused", "KILL_ENV", "status_text"]
