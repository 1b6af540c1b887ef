"""Truthful health of a consistency group, from everything its replication resources say.

Pure functions on plain dicts (the resources as the API returns them):

- :func:`csi_addons_health` reads a VolumeGroupReplication: its ``state``, *every*
  condition csi-addons defines (``Completed``, ``Degraded``, ``Resyncing``, ``Validated``)
  and the PVCs it reports.  A group is Protected only when the plug-in says the primary
  state completed, the group is neither degraded nor resyncing, and every PVC is in it.
  A missing condition is not taken as good news: health that is not stated is unknown.
- :func:`hitachi_health` reads the pair state of every ``Replication`` (``PAIR`` is the
  only replicating state; ``COPY`` is a copy in progress; ``PSUS``/``PSUE``/``PFUL``...
  are suspended pairs).
- :func:`lag_of` says how far behind the backup is and *where that figure comes from*:
  the plug-in's own time lag when it publishes one (Hitachi ``timeLagSeconds``), else an
  upper bound from ``lastSyncTime`` (a Kubernetes time: one-second resolution).  Unknown
  is None, never 0.

The operator writes the derived state into the namespace's status annotation; the lag is
computed when it is read (it moves every second; the annotation only changes with the
state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dr_kit.kube import parse_time

# Namespace protection states, as written in the status annotation.
UNPROTECTED = "Unprotected"
WAITING = "WaitingForPVCs"
REFUSED = "Refused"
PROTECTING = "Protecting"
PROTECTED = "Protected"
DEGRADED = "Degraded"
STANDBY = "Standby"  # this site is not the namespace's primary: nothing is protected from here

# csi-addons condition types (kubernetes-csi-addons, replication controller)
COMPLETED, DEGRADED_COND, RESYNCING, VALIDATED = "Completed", "Degraded", "Resyncing", "Validated"
CSI_CONDITIONS = (COMPLETED, DEGRADED_COND, RESYNCING, VALIDATED)

# Hitachi pair states (Universal Replicator): PAIR replicates; COPY copies; the rest do not.
PAIR_REPLICATING = frozenset({"PAIR"})
PAIR_COPYING = frozenset({"COPY", "INIT"})
PAIR_SUSPENDED = frozenset({"PSUS", "SSUS", "SSWS", "PFUS", "PFUL", "PDUB", "SMPL"})
PAIR_ERROR = frozenset({"PSUE", "ERROR"})

MESSAGE_MAX = 300
WAITING_FOR_PLUGIN = "replication resources created; waiting for the storage plugin"


@dataclass(frozen=True)
class GroupHealth:
    """What the replication resources say about one namespace's consistency group."""

    state: str  # PROTECTED, PROTECTING or DEGRADED
    reason: str  # CamelCase, for Events and tables
    message: str
    summary: dict[str, Any] = field(default_factory=dict)  # stable facts for the annotation


@dataclass(frozen=True)
class Lag:
    """How far behind the backup is, and where the figure comes from.

    ``seconds`` None = unknown.  ``bound`` is ``"exact"`` when the plug-in states the lag,
    ``"upper"`` when it is derived from a consistency point (``now - lastSyncTime``).
    """

    seconds: float | None
    source: str
    bound: str | None = None
    resolution_s: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.seconds is None:
            return "unknown" + (f" ({self.note})" if self.note else "")
        if self.bound == "upper":
            return f"<= {self.seconds:.1f} s"
        return f"{self.seconds:.3f} s"

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "source": self.source, "bound": self.bound,
                "resolutionSeconds": self.resolution_s, "note": self.note or None}


def conditions(obj: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """type -> {"status", "reason", "message"} of an object's status conditions."""
    out: dict[str, dict[str, str]] = {}
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type"):
            out[str(c["type"])] = {"status": str(c.get("status") or "Unknown"),
                                   "reason": str(c.get("reason") or ""),
                                   "message": _short(c.get("message"))}
    return out


def _short(text: Any) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= MESSAGE_MAX else s[: MESSAGE_MAX - 3] + "..."


def _said(cond: Mapping[str, str] | None) -> str:
    if not cond:
        return ""
    reason = f" ({cond['reason']})" if cond.get("reason") else ""
    message = f": {cond['message']}" if cond.get("message") else ""
    return f"{reason}{message}"


def csi_addons_health(vgr: Mapping[str, Any] | None, members: Iterable[str]) -> GroupHealth:
    """Health of a VolumeGroupReplication meant to hold exactly ``members``."""
    names = sorted(members)
    if vgr is None:
        return GroupHealth(PROTECTING, "WaitingForPlugin", WAITING_FOR_PLUGIN)
    st = vgr.get("status") or {}
    conds = conditions(vgr)
    summary: dict[str, Any] = {
        "state": st.get("state"),
        "conditions": {t: f"{c['status']}" + (f"/{c['reason']}" if c["reason"] else "")
                       for t, c in sorted(conds.items())},
    }
    if not st:
        return GroupHealth(PROTECTING, "WaitingForPlugin", WAITING_FOR_PLUGIN)
    gen = (vgr.get("metadata") or {}).get("generation")
    seen = st.get("observedGeneration")
    if isinstance(gen, int) and isinstance(seen, int) and 0 < seen < gen:
        return GroupHealth(PROTECTING, "WaitingForPlugin",
                           f"the storage plugin has not observed the latest change yet "
                           f"(generation {seen} of {gen})", summary)

    def status(t: str) -> str | None:
        c = conds.get(t)
        return None if c is None else c["status"]

    if status(DEGRADED_COND) == "True":
        return GroupHealth(DEGRADED, "Degraded",
                           f"degraded{_said(conds[DEGRADED_COND])}", summary)
    if status(VALIDATED) == "False":
        return GroupHealth(DEGRADED, "NotValidated",
                           f"prerequisites not met{_said(conds[VALIDATED])}", summary)
    completed = conds.get(COMPLETED)
    if completed and completed["status"] == "False" and \
            completed["reason"].startswith(("FailedTo", "Error")):
        return GroupHealth(DEGRADED, completed["reason"],
                           f"the plugin failed{_said(completed)}", summary)
    state = str(st.get("state") or "")
    if state.lower() == "secondary":
        return GroupHealth(DEGRADED, "Secondary",
                           "the group is Secondary at this site: nothing replicates from "
                           "here (promoted elsewhere?)", summary)
    if status(RESYNCING) == "True":  # (its message is left out: copy progress moves)
        reason = conds[RESYNCING]["reason"]
        return GroupHealth(PROTECTING, "Resyncing",
                           f"resyncing{f' ({reason})' if reason else ''}; the backup is not "
                           f"a consistent copy until it completes", summary)
    refs = {r.get("name") for r in st.get("persistentVolumeClaimsRefList") or []
            if isinstance(r, Mapping)}
    missing = [n for n in names if n not in refs]
    if state.lower() != "primary":
        return GroupHealth(PROTECTING, "WaitingForPlugin",
                           f"replication state {state or 'unknown'}; waiting for Primary",
                           summary)
    if missing:
        return GroupHealth(PROTECTING, "WaitingForMembers",
                           f"not yet in the group: {', '.join(missing[:10])}"
                           + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
                           summary)
    if status(COMPLETED) != "True":
        said = _said(completed) if completed else ""
        return GroupHealth(PROTECTING, "WaitingForPlugin",
                           f"waiting for the plugin to complete{said}" if completed else
                           "the plugin reports no Completed condition; health unknown",
                           summary)
    unstated = [t for t in (DEGRADED_COND, RESYNCING) if status(t) not in ("True", "False")]
    if unstated:
        return GroupHealth(PROTECTING, "HealthUnknown",
                           f"the plugin does not state {' or '.join(unstated)}; "
                           f"health unknown", summary)
    return GroupHealth(PROTECTED, "Replicating", "replicating", summary)


def pair_state(rep: Mapping[str, Any] | None) -> str | None:
    st = (rep or {}).get("status") or {}
    for key in ("pairState", "currentPairState", "state"):
        if st.get(key):
            return str(st[key]).upper()
    return None


def hitachi_health(replications: Mapping[str, Mapping[str, Any] | None],
                   group: Mapping[str, Any] | None = None) -> GroupHealth:
    """Health of a namespace's Hitachi pairs: PVC name -> its Replication (None if absent)."""
    states = {n: pair_state(r) for n, r in sorted(replications.items())}
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s or "unknown"] = counts.get(s or "unknown", 0) + 1
    summary: dict[str, Any] = {"pairStates": dict(sorted(counts.items()))}

    def which(pred) -> list[str]:
        return [n for n, s in states.items() if pred(s)]

    def listing(names: list[str]) -> str:
        shown = ", ".join(f"{n} {states[n] or '?'}" for n in names[:10])
        return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    if any(r is None or not r.get("status") for r in replications.values()):
        return GroupHealth(PROTECTING, "WaitingForPlugin", WAITING_FOR_PLUGIN, summary)
    bad = which(lambda s: s in PAIR_ERROR)
    if bad:
        return GroupHealth(DEGRADED, "PairError", f"pairs in error: {listing(bad)}", summary)
    suspended = which(lambda s: s in PAIR_SUSPENDED)
    if suspended:
        desired = ((group or {}).get("spec") or {}).get("desiredPairState")
        why = " (the ReplicationGroup asks for split)" if desired == "split" else ""
        return GroupHealth(DEGRADED, "PairSuspended",
                           f"pairs not replicating{why}: {listing(suspended)}", summary)
    copying = which(lambda s: s in PAIR_COPYING)
    if copying:
        return GroupHealth(PROTECTING, "Copying",
                           f"copy in progress: {listing(copying)}; the backup is not a "
                           f"consistent copy until it completes", summary)
    unknown = which(lambda s: s not in PAIR_REPLICATING)
    if unknown:
        return GroupHealth(PROTECTING, "WaitingForPlugin",
                           f"pair state not replicating yet: {listing(unknown)}", summary)
    return GroupHealth(PROTECTED, "Replicating", "replicating", summary)


def lag_of(kind: str, objects: Iterable[Mapping[str, Any]], now: datetime) -> Lag:
    """The group's lag from its replication resources (one VolumeGroupReplication, or the
    Hitachi Replications of one consistency group)."""
    objs = list(objects)
    if not objs:
        return Lag(None, f"{kind} status", note="no replication resource")
    if kind == "Replication":
        lags = [(o.get("status") or {}).get("timeLagSeconds") for o in objs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
               for v in lags):
            return Lag(round(max(float(v) for v in lags), 3),  # type: ignore[arg-type]
                       "Replication status.timeLagSeconds", "exact")
    times = [parse_time((o.get("status") or {}).get("lastSyncTime")) for o in objs]
    if any(t is None for t in times):
        return Lag(None, f"{kind} status.lastSyncTime", note="no lastSyncTime yet")
    oldest = min(t for t in times if t is not None)
    age = max(0.0, (now - oldest).total_seconds())
    return Lag(round(age, 3), f"{kind} status.lastSyncTime", "upper", 1.0)


__all__ = ["DEGRADED", "PROTECTED", "PROTECTING", "REFUSED", "STANDBY", "UNPROTECTED",
           "WAITING", "GroupHealth", "Lag", "conditions", "csi_addons_health",
           "hitachi_health", "lag_of", "pair_state"]
