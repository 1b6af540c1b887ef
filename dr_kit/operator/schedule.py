"""Scheduled snapshot groups, taken and rotated by the operator running at the backup site.

**Where the schedule lives.**  A ConfigMap in the protected namespace *at the backup site*,
where the snapshots are taken::

    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: dr-kit-snapshot-schedule          # one schedule per namespace
      namespace: shop
      labels: {dr-kit.io/snapshot-schedule: "true"}
    data: {every: 15m, keep: "8"}             # optional: class, ready-within

A namespaced object, so whoever may edit ConfigMaps in the namespace (``dr-kit snapshot
schedule``, ``kubectl apply``, GitOps) can set it, without rights on the cluster-scoped
Namespace object; the operator only reads ConfigMaps by this label.

**What the operator does with it** (:func:`plan` decides, on plain dicts; the
:class:`SnapshotScheduler` applies):

- time is cut into slots of ``every`` seconds aligned on the UTC epoch (15m: :00, :15,
  :30, :45); once per slot it creates a VolumeGroupSnapshot named after the slot, in UTC,
  ``<namespace>-YYYYMMDD-HHMM`` (``-HHMMSS`` when ``every`` is not whole minutes),
  labelled ``dr-kit.io/snapshot-schedule=dr-kit-snapshot-schedule``.  A slot missed while
  the operator was down is not made up; the current one is taken when it comes back;
- a snapshot group counts toward ``keep`` once it is ready and its driver does not say it
  is inconsistent (``storage.dr-kit.io/consistent: "false"``); the newest ``keep`` such
  groups stay, older ones are deleted, except those restored PVCs still use (they stay
  until their restores are deleted, and do not count);
- a group that failed (``status.error``), that the driver reports as not consistent, or
  that is not ready ``ready-within`` (default 5m) after its creation is reported once
  with a Warning Event on it (reasons ``ScheduledSnapshotFailed``,
  ``ScheduledSnapshotInconsistent``, ``ScheduledSnapshotNotReady``) and never counts;
  the newest failure stays for inspection (it also marks its slot as tried), older ones
  are deleted.  Problems with the schedule itself (a bad value, a namespace with no
  replicated PVC, no snapshot class) are Warning Events on the ConfigMap.

Threads and calls: one thread for every schedule; a listing of the schedules every
``poll_seconds`` and, per namespace, a pass (three lists) only when its next slot is due
or one of its groups is still getting ready.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput
from dr_kit.kube import GSNAP_GROUP, Kube, parse_time
from dr_kit.operator.policy import RESTORED_FROM, Policy

log = logging.getLogger("dr_kit.operator")

SCHEDULE_CONFIGMAP = "dr-kit-snapshot-schedule"
SCHEDULE_LABEL = "dr-kit.io/snapshot-schedule"  # "true" on the ConfigMap; its name on a group
SLOT_ANNOTATION = "dr-kit.io/schedule-slot"  # on a scheduled group: its slot (RFC 3339, UTC)
REPORTED_ANNOTATION = "dr-kit.io/schedule-reported"  # on a failed group: the Event's reason
SNAPSHOT_OF = "dr-kit.io/snapshot-of"  # on a group: the consistency group it freezes
CONSISTENT_ANNOTATION = "storage.dr-kit.io/consistent"  # what a driver publishes (published.py)
DEFAULT_CLASS_ANNOTATION = "groupsnapshot.storage.kubernetes.io/is-default-class"
MANAGED_BY = {"app.kubernetes.io/managed-by": "dr-kit"}
GROUP_LABEL = Policy().group_label_key
COMPONENT = "dr-kit-snapshot-schedule"

MIN_EVERY_S = 1
MAX_EVERY_S = 7 * 24 * 3600
MAX_KEEP = 1000
DEFAULT_READY_WITHIN_S = 300
PENDING_RECHECK_S = 1.0  # a group getting ready is looked at again this soon

_DURATION = re.compile(r"^\s*(\d{1,7})\s*([smh])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


# -- values -----------------------------------------------------------------------------------


def parse_duration(text: Any, what: str = "--every") -> int:
    """Whole seconds of ``"15m"``, ``"2s"``, ``"1h"`` (units s, m, h)."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidInput(f"{what} {text!r} is not a duration: a whole number and a unit s, m "
                           "or h, like 30s, 15m or 6h")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise InvalidInput(f"{what} {text.strip()} is out of range: from 1s to 168h")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, n in (("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def parse_keep(value: Any) -> int:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) \
        else ""
    if not text.isdigit() or not 1 <= int(text) <= MAX_KEEP:
        raise InvalidInput(f"--keep {value!r} is not valid: a whole number of snapshot groups "
                           f"from 1 to {MAX_KEEP}")
    return int(text)


@dataclass(frozen=True)
class Schedule:
    """One namespace's schedule: a group every ``every_s`` seconds, the newest ``keep`` kept."""

    every_s: int
    keep: int
    snapshot_class: str | None = None
    ready_within_s: int = DEFAULT_READY_WITHIN_S

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> Schedule:
        """From a ConfigMap's ``data`` (InvalidInput naming the bad value)."""
        data = data or {}
        if "every" not in data or "keep" not in data:
            raise InvalidInput("the schedule needs both 'every' (like 15m) and 'keep' (like 8)")
        unknown = sorted(set(data) - {"every", "keep", "class", "ready-within"})
        if unknown:
            raise InvalidInput(f"unknown schedule key(s) {', '.join(unknown)}: known are every, "
                               "keep, class, ready-within")
        within = data.get("ready-within")
        return cls(parse_duration(data["every"]), parse_keep(data["keep"]),
                   str(data["class"]) if data.get("class") else None,
                   parse_duration(within, "--ready-within") if within else
                   DEFAULT_READY_WITHIN_S)

    def to_data(self) -> dict[str, str]:
        out = {"every": format_duration(self.every_s), "keep": str(self.keep)}
        if self.snapshot_class:
            out["class"] = self.snapshot_class
        if self.ready_within_s != DEFAULT_READY_WITHIN_S:
            out["ready-within"] = format_duration(self.ready_within_s)
        return out

    def describe(self) -> str:
        extra = f", class {self.snapshot_class}" if self.snapshot_class else ""
        return f"every {format_duration(self.every_s)}, keep {self.keep}{extra}"


def configmap(namespace: str, schedule: Schedule) -> dict[str, Any]:
    """The ConfigMap that records ``schedule`` for ``namespace`` (at the backup site)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": SCHEDULE_CONFIGMAP, "namespace": namespace,
                         "labels": {SCHEDULE_LABEL: "true", **MANAGED_BY}},
            "data": schedule.to_data()}


def slot_of(now: datetime, every_s: int) -> datetime:
    """The start of the slot ``now`` is in (slots aligned on the UTC epoch)."""
    t = math.floor(now.timestamp() / every_s) * every_s
    return datetime.fromtimestamp(t, UTC)


def snapshot_name(namespace: str, slot: datetime, every_s: int) -> str:
    """``NS-YYYYMMDD-HHMM`` (``-HHMMSS`` when the schedule is not in whole minutes)."""
    fmt = "%Y%m%d-%H%M" if every_s % 60 == 0 else "%Y%m%d-%H%M%S"
    return f"{namespace}-{slot.astimezone(UTC).strftime(fmt)}"


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """A failed scheduled group to report with a Warning Event (once)."""

    name: str
    reason: str
    message: str


@dataclass
class SchedulePlan:
    """What to do now for one namespace's schedule."""

    create: str | None = None  # the group to take now
    slot: datetime | None = None  # its slot
    delete: list[str] = field(default_factory=list)
    report: list[Report] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the groups counting toward keep, newest first
    pinned: list[str] = field(default_factory=list)  # beyond keep but restored: kept for now
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    next_check: datetime | None = None


def verdict(vgs: Mapping[str, Any], now: datetime, ready_within_s: float
            ) -> tuple[str, str | None, str | None]:
    """``(state, reason, message)`` of a scheduled group: state ``good``, ``pending``,
    ``failed`` or ``deleting``; reason and message only for ``failed``."""
    md = vgs.get("metadata") or {}
    st = vgs.get("status") or {}
    if md.get("deletionTimestamp"):
        return "deleting", None, None
    err = st.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        return "failed", "ScheduledSnapshotFailed", f"the storage plug-in failed it: {msg}"
    consistent = (md.get("annotations") or {}).get(CONSISTENT_ANNOTATION)
    if st.get("readyToUse"):
        if consistent == "false":
            return ("failed", "ScheduledSnapshotInconsistent",
                    "the storage says this image is not consistent (taken during an initial "
                    "copy or a resync)")
        return "good", None, None
    born = parse_time(md.get("creationTimestamp")) or parse_time(
        (md.get("annotations") or {}).get(SLOT_ANNOTATION))
    if born is not None and (now - born).total_seconds() > ready_within_s:
        return ("failed", "ScheduledSnapshotNotReady",
                f"not ready {format_duration(int(ready_within_s))} after it was requested")
    return "pending", None, None


def plan(now: datetime, schedule: Schedule, namespace: str,
         snapshots: Iterable[Mapping[str, Any]], *, in_use: Iterable[str] = (),
         last_attempt: datetime | None = None) -> SchedulePlan:
    """Which group to take, which to delete and which failures to report, at ``now``.

    ``snapshots``: the namespace's VolumeGroupSnapshots (those the schedule did not take
    are ignored); ``in_use``: names of groups that restored PVCs use; ``last_attempt``:
    the slot of the last creation tried (a creation the API refused leaves no object).
    """
    p = SchedulePlan()
    use = set(in_use)
    rows = []
    for s in snapshots:
        md = s.get("metadata") or {}
        if (md.get("labels") or {}).get(SCHEDULE_LABEL) != SCHEDULE_CONFIGMAP:
            continue
        slot = parse_time((md.get("annotations") or {}).get(SLOT_ANNOTATION)) or parse_time(
            md.get("creationTimestamp")) or now
        state, reason, message = verdict(s, now, schedule.ready_within_s)
        rows.append((slot, md.get("name", ""), state, reason, message,
                     (md.get("annotations") or {}).get(REPORTED_ANNOTATION)))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)  # newest first

    good = [r for r in rows if r[2] == "good"]
    failed = [r for r in rows if r[2] == "failed"]
    p.pending = [r[1] for r in rows if r[2] == "pending"]
    p.failed = [r[1] for r in failed]
    p.kept = [r[1] for r in good[:schedule.keep]]
    for r in good[schedule.keep:]:
        (p.pinned if r[1] in use else p.delete).append(r[1])
    for i, (_slot, name, _st, reason, message, reported) in enumerate(failed):
        if not reported:
            p.report.append(Report(name, str(reason), f"scheduled snapshot group {name} of "
                                   f"{namespace}: {message}; it does not count toward keep "
                                   f"{schedule.keep}"))
        if i > 0 and name not in use:  # the newest failure stays for inspection
            p.delete.append(name)

    current = slot_of(now, schedule.every_s)
    tried = [r[0] for r in rows] + ([last_attempt] if last_attempt is not None else [])
    if not tried or max(tried) < current:
        p.create = snapshot_name(namespace, current, schedule.every_s)
        p.slot = current
    following = current + timedelta(seconds=schedule.every_s)
    soon = now + timedelta(seconds=PENDING_RECHECK_S)
    p.next_check = soon if (p.create or p.pending) else following
    return p


# -- the operator's glue ------------------------------------------------------------------------

PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    ("", "configmaps"): frozenset({"list"}),
    ("", "events"): frozenset({"create"}),
    ("", "persistentvolumeclaims"): frozenset({"list"}),
    (GSNAP_GROUP, "volumegroupsnapshots"): frozenset({"list", "create", "patch", "delete"}),
    (GSNAP_GROUP, "volumegroupsnapshotclasses"): frozenset({"list"}),
}


def with_permissions(perms: Mapping[tuple[str, str], frozenset[str]]
                     ) -> dict[tuple[str, str], frozenset[str]]:
    """``perms`` plus what the scheduler uses (the backup-site operator's table)."""
    out = dict(perms)
    for key, verbs in PERMISSIONS.items():
        out[key] = out.get(key, frozenset()) | verbs
    return out


class SnapshotScheduler:
    """Executes every namespace's schedule at one site (the backup site), on one thread."""

    def __init__(self, kube: Kube, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 poll_seconds: float = 5.0) -> None:
        self.kube = kube
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.instance = socket.gethostname()
        self._schedules: dict[str, dict[str, Any]] = {}
        self._next_list = 0.0
        self._due: dict[str, datetime] = {}
        self._versions: dict[str, str | None] = {}
        self._attempted: dict[str, datetime] = {}
        self._said: dict[str, str] = {}
        self.passes = 0

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; an error is logged and the loop goes on."""
        while not stop.is_set():
            try:
                wait = self.run_once()
            except Exception as exc:  # noqa: BLE001 - the scheduler never dies
                log.warning("snapshot schedules: %s: %s", type(exc).__name__, exc,
                            exc_info=not isinstance(exc, DrKitError))
                wait = self.poll_seconds
            stop.wait(wait)

    def run_once(self) -> float:
        """One round: the due namespaces' passes.  Returns the seconds until the next round."""
        if time.monotonic() >= self._next_list:
            found = self.kube.items("ConfigMap", label_selector=f"{SCHEDULE_LABEL}=true")
            self._schedules = {c["metadata"]["namespace"]: c for c in found
                               if c["metadata"].get("name") == SCHEDULE_CONFIGMAP}
            self._next_list = time.monotonic() + self.poll_seconds
            for ns in set(self._due) - set(self._schedules):
                self._forget(ns)
        now = self.clock()
        for ns, cm in sorted(self._schedules.items()):
            version = cm["metadata"].get("resourceVersion")
            if self._versions.get(ns) != version:  # new or changed: look now
                self._versions[ns] = version
                self._due[ns] = now
            if self._due.get(ns, now) <= now:
                try:
                    self._due[ns] = self.pass_namespace(ns, cm, now)
                except DrKitError as exc:  # the API said no or is away: try again later
                    log.warning("%s: snapshot schedule: %s", ns, exc)
                    self._due[ns] = now + timedelta(seconds=self.poll_seconds)
        later = min(self._due.values(), default=None)
        until = (later - self.clock()).total_seconds() if later is not None else self.poll_seconds
        return max(0.2, min(self.poll_seconds, until))

    def pass_namespace(self, namespace: str, cm: dict[str, Any], now: datetime) -> datetime:
        """Decide and apply for one namespace; returns when to look at it again."""
        self.passes += 1
        try:
            schedule = Schedule.parse(cm.get("data"))
        except InvalidInput as exc:
            self._warn_schedule(cm, "ScheduleInvalid", f"snapshot schedule ignored: {exc}")
            return now + timedelta(seconds=self.poll_seconds)
        snaps = self.kube.items("VolumeGroupSnapshot", namespace,
                                label_selector=f"{SCHEDULE_LABEL}={SCHEDULE_CONFIGMAP}")
        restored = self.kube.items("PersistentVolumeClaim", namespace,
                                   label_selector=RESTORED_FROM)
        in_use = {(p["metadata"].get("labels") or {}).get(RESTORED_FROM, "") for p in restored}
        p = plan(now, schedule, namespace, snaps, in_use=in_use,
                 last_attempt=self._attempted.get(namespace))
        for r in p.report:
            self._report(namespace, r)
        for name in p.delete:
            self.kube.delete("VolumeGroupSnapshot", name, namespace, missing_ok=True)
            log.info("%s: deleted snapshot group %s (schedule: %s)", namespace, name,
                     schedule.describe())
        if p.create and p.slot is not None:
            self._attempted[namespace] = p.slot
            try:
                self._create(namespace, p.create, p.slot, schedule, cm)
            except DrKitError as exc:
                self._warn_schedule(cm, "ScheduledSnapshotFailed",
                                    f"scheduled snapshot group {p.create} not taken: {exc}")
            else:
                self._said.pop(namespace, None)
        return p.next_check or now + timedelta(seconds=self.poll_seconds)

    # -- writes ------------------------------------------------------------------------------

    def _create(self, namespace: str, name: str, slot: datetime, schedule: Schedule,
                cm: dict[str, Any]) -> None:
        pvcs = [p for p in self.kube.items("PersistentVolumeClaim", namespace,
                                           label_selector=GROUP_LABEL)
                if not (p["metadata"].get("labels") or {}).get(RESTORED_FROM)]
        groups = sorted({p["metadata"]["labels"][GROUP_LABEL] for p in pvcs})
        if len(groups) != 1:
            raise Conflict(f"namespace {namespace} has no replicated PVCs at this site (no PVC "
                           f"labelled {GROUP_LABEL}): is it protected?" if not groups else
                           f"namespace {namespace} has PVCs of several consistency groups "
                           f"({', '.join(groups)})")
        cls = schedule.snapshot_class or self._default_class()
        body = {"metadata": {"name": name, "namespace": namespace,
                             "labels": {**MANAGED_BY, SCHEDULE_LABEL: SCHEDULE_CONFIGMAP,
                                        SNAPSHOT_OF: groups[0]},
                             "annotations": {SLOT_ANNOTATION: _rfc3339(slot)}},
                "spec": {"volumeGroupSnapshotClassName": cls,
                         "source": {"selector": {"matchLabels": {GROUP_LABEL: groups[0]}}}}}
        self.kube.create("VolumeGroupSnapshot", body)
        log.info("%s: took snapshot group %s (schedule: %s)", namespace, name,
                 schedule.describe())

    def _default_class(self) -> str:
        classes = self.kube.items("VolumeGroupSnapshotClass")
        default = [c["metadata"]["name"] for c in classes
                   if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION)
                   == "true"]
        names = sorted(c["metadata"]["name"] for c in classes)
        if len(default) == 1:
            return default[0]
        if len(names) == 1:
            return names[0]
        raise InvalidInput(f"no default VolumeGroupSnapshotClass at this site (classes: "
                           f"{', '.join(names) or 'none'}); name one in the schedule (class)")

    def _report(self, namespace: str, r: Report) -> None:
        log.warning("%s: %s", namespace, r.message)
        self._event(namespace, {"apiVersion": self.kube.resource("VolumeGroupSnapshot").api_version,
                                "kind": "VolumeGroupSnapshot", "name": r.name,
                                "namespace": namespace}, r.reason, r.message)
        self.kube.patch("VolumeGroupSnapshot", r.name,
                        {"metadata": {"annotations": {REPORTED_ANNOTATION: r.reason}}},
                        namespace)

    def _warn_schedule(self, cm: dict[str, Any], reason: str, message: str) -> None:
        ns = cm["metadata"]["namespace"]
        if self._said.get(ns) == message:
            return
        self._said[ns] = message
        log.warning("%s: %s", ns, message)
        self._event(ns, {"apiVersion": "v1", "kind": "ConfigMap", "name": SCHEDULE_CONFIGMAP,
                         "namespace": ns, "uid": cm["metadata"].get("uid")}, reason, message)

    def _event(self, namespace: str, involved: dict[str, Any], reason: str,
               message: str) -> None:
        now = _rfc3339(self.clock())
        body = {"metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
                "involvedObject": involved, "type": "Warning", "reason": reason,
                "message": message[:1024], "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT, "reportingInstance": self.instance,
                "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            self.kube.create("Event", body)
        except DrKitError as exc:  # events are best effort
            log.warning("%s: event not recorded: %s", namespace, exc)

    def _forget(self, namespace: str) -> None:
        for d in (self._due, self._versions, self._attempted, self._said):
            d.pop(namespace, None)


__all__ = ["PERMISSIONS", "Report", "SCHEDULE_CONFIGMAP", "SCHEDULE_LABEL", "Schedule",
           "SchedulePlan", "SnapshotScheduler", "configmap", "format_duration",
           "parse_duration", "parse_keep", "plan", "slot_of", "snapshot_name", "verdict",
           "with_permissions"]
