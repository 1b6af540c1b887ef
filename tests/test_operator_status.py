"""Truthful health on plain dicts: every condition and pair state counts, unknown is never
good news, and the lag names its source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dr_kit.operator.status import (
    DEGRADED,
    PROTECTED,
    PROTECTING,
    csi_addons_health,
    hitachi_health,
    lag_of,
)

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
MEMBERS = ["sales-db", "stock-db"]


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2030-01-01T00:00:00Z"}


HEALTHY = [cond("Completed", "True", "Promoted"), cond("Degraded", "False", "Healthy"),
           cond("Resyncing", "False", "NotResyncing")]


def vgr(conditions=HEALTHY, state="Primary", members=MEMBERS, **status) -> dict:
    return {"kind": "VolumeGroupReplication",
            "metadata": {"name": "dr-kit-shop", "namespace": "shop", "generation": 1},
            "status": {"state": state, "observedGeneration": 1, "conditions": conditions,
                       "persistentVolumeClaimsRefList": [{"name": n} for n in members],
                       **status}}


def replace(conditions: list[dict], *new: dict) -> list[dict]:
    types = {c["type"] for c in new}
    return [c for c in conditions if c["type"] not in types] + list(new)


def test_replicating_group_is_protected():
    h = csi_addons_health(vgr(), MEMBERS)
    assert (h.state, h.reason, h.message) == (PROTECTED, "Replicating", "replicating")
    assert h.summary["conditions"] == {"Completed": "True/Promoted", "Degraded": "False/Healthy",
                                       "Resyncing": "False/NotResyncing"}


@pytest.mark.parametrize(("conditions", "state", "words"), [
    # promoted behind the kit's back: the old main resyncs, nothing replicates
    (replace(HEALTHY, cond("Completed", "False", "Resyncing"),
             cond("Resyncing", "True", "ResyncTriggered", "not connected")),
     PROTECTING, ["resyncing (ResyncTriggered); the backup is not a consistent copy"]),
    (replace(HEALTHY, cond("Degraded", "True", "VolumeDegraded", "journal full")),
     DEGRADED, ["degraded (VolumeDegraded): journal full"]),
    (HEALTHY + [cond("Validated", "False", "PrerequisiteNotMet", "no peer")],
     DEGRADED, ["prerequisites not met (PrerequisiteNotMet): no peer"]),
    (replace(HEALTHY, cond("Completed", "False", "FailedToPromote", "busy")),
     DEGRADED, ["the plugin failed (FailedToPromote): busy"]),
    (replace(HEALTHY, cond("Completed", "False", "Promoting")),
     PROTECTING, ["waiting for the plugin to complete (Promoting)"]),
    ([], PROTECTING, ["no Completed condition", "unknown"]),
    ([cond("Completed", "True", "Promoted")], PROTECTING, ["does not state Degraded or "
                                                          "Resyncing", "unknown"]),
    (replace(HEALTHY, cond("Degraded", "Unknown")), PROTECTING, ["does not state Degraded"]),
])
def test_a_group_that_is_not_replicating_is_never_protected(conditions, state, words):
    h = csi_addons_health(vgr(conditions), MEMBERS)
    assert h.state == state
    for w in words:
        assert w in h.message, h.message


def test_state_members_and_generation_count_too():
    assert csi_addons_health(vgr(state="Secondary"), MEMBERS).state == DEGRADED
    assert csi_addons_health(vgr(state=""), MEMBERS).state == PROTECTING
    h = csi_addons_health(vgr(members=["sales-db"]), MEMBERS)
    assert h.state == PROTECTING and "not yet in the group: stock-db" in h.message
    stale = vgr()
    stale["metadata"]["generation"] = 2
    h = csi_addons_health(stale, MEMBERS)
    assert h.state == PROTECTING and "generation 1 of 2" in h.message
    assert csi_addons_health(None, MEMBERS).state == PROTECTING
    assert csi_addons_health({"metadata": {"name": "x"}}, MEMBERS).reason == "WaitingForPlugin"


def rep(pair: str | None, lag: float | None = None, sync: str | None = None) -> dict:
    status = {} if pair is None else {"pairState": pair}
    if lag is not None:
        status["timeLagSeconds"] = lag
    if sync is not None:
        status["lastSyncTime"] = sync
    return {"kind": "Replication", "metadata": {"name": "x"}, "status": status}


def test_hitachi_pair_states():
    assert hitachi_health({"a": rep("PAIR"), "b": rep("pair")}).state == PROTECTED
    h = hitachi_health({"a": rep("PAIR"), "b": rep("COPY")})
    assert h.state == PROTECTING and "copy in progress: b COPY" in h.message
    assert h.summary == {"pairStates": {"COPY": 1, "PAIR": 1}}
    h = hitachi_health({"a": rep("PSUE"), "b": rep("PAIR")})
    assert h.state == DEGRADED and "pairs in error: a PSUE" in h.message
    h = hitachi_health({"a": rep("PSUS")}, {"spec": {"desiredPairState": "split"}})
    assert h.state == DEGRADED and "asks for split" in h.message
    assert hitachi_health({"a": rep("PFUL")}).state == DEGRADED  # journal full
    assert hitachi_health({"a": rep("SMPL")}).state == DEGRADED  # not paired at all
    assert hitachi_health({"a": rep(None)}).state == PROTECTING
    assert hitachi_health({"a": None}).state == PROTECTING
    h = hitachi_health({"a": rep("WEIRD")})
    assert h.state == PROTECTING and "a WEIRD" in h.message


def test_lag_names_its_source_and_unknown_is_none_never_zero():
    # the plug-in states the lag: an idle caught-up group is 0, known
    lag = lag_of("Replication", [rep("PAIR", 0), rep("PAIR", 0.0)], NOW)
    assert (lag.seconds, lag.bound, lag.source) == (0.0, "exact",
                                                     "Replication status.timeLagSeconds")
    assert lag.describe() == "0.000 s"
    assert lag_of("Replication", [rep("PAIR", 0.25), rep("PAIR", 1.5)], NOW).seconds == 1.5
    # a consistency point: an upper bound at one-second resolution
    sync = (NOW - timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lag = lag_of("VolumeGroupReplication", [vgr(lastSyncTime=sync)], NOW)
    assert (lag.seconds, lag.bound, lag.resolution_s) == (3.0, "upper", 1.0)
    assert lag.describe() == "<= 3.0 s"
    # a Replication without timeLagSeconds falls back to the oldest consistency point
    lag = lag_of("Replication", [rep("PAIR", 0, sync=sync), rep("PAIR", sync=sync)], NOW)
    assert lag.bound == "upper"
    # nothing stated: unknown, not 0
    for objs in ([vgr()], [rep("PAIR"), rep("PAIR", 0)], []):
        lag = lag_of("VolumeGroupReplication" if objs and objs[0]["kind"] ==
                     "VolumeGroupReplication" else "Replication", objs, NOW)
        assert lag.seconds is None and lag.describe().startswith("unknown")
    assert lag_of("Replication", [rep("PAIR", -1)], NOW).bound != "exact"  # nonsense ignored
    future = (NOW + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert lag_of("VolumeGroupReplication", [vgr(lastSyncTime=future)], NOW).seconds == 0.0


def test_status_table_rows_from_namespaces_and_their_groups():
    import json

    from dr_kit.operator.cli import status_rows
    from dr_kit.operator.policy import Policy

    def ns(name: str, labelled: bool, status: dict | None) -> dict:
        md: dict = {"name": name, "labels": {}, "annotations": {}}
        if labelled:
            md["labels"]["dr-kit.io/backup"] = "ConsistentCopyToCloud"
        if status is not None:
            md["annotations"]["dr-kit.io/protection-status"] = json.dumps(status)
        return {"metadata": md}

    sync = (NOW - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    namespaces = [
        ns("b-shop", True, {"state": "Protected", "backend": "csi-addons", "pvcCount": 2,
                            "pvcs": MEMBERS}),
        ns("a-erp", True, {"state": "Protected", "backend": "hitachi", "pvcCount": 1}),
        ns("c-new", True, None),
        ns("d-gone", False, {"state": "Unprotected"}),
        ns("e-plain", False, None),
    ]
    objects = {"b-shop": [vgr(lastSyncTime=sync)],
               "a-erp": [rep("PAIR", 0.0, sync=sync)]}
    rows = status_rows(namespaces, objects, Policy(), NOW)
    assert [r["namespace"] for r in rows] == ["a-erp", "b-shop", "c-new"]
    erp, shop, new = rows
    assert erp["lag"]["seconds"] == 0.0 and erp["lag"]["bound"] == "exact"
    assert shop["lag"]["seconds"] == 2.0 and shop["lagText"] == "<= 2.0 s"
    assert shop["lastSync"] == sync and shop["sinceLastSyncSeconds"] == 2.0
    assert new["state"] == "Requested" and new["lag"]["seconds"] is None
    every = status_rows(namespaces, objects, Policy(), NOW, include_unprotected=True)
    assert [r["namespace"] for r in every] == ["a-erp", "b-shop", "c-new", "d-gone"]
