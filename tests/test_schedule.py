"""The snapshot schedule's decision on plain dicts: which group to take, which to delete,
which failures to report, given the time, the schedule and the existing groups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dr_kit.errors import InvalidInput
from dr_kit.operator import schedule as sch
from dr_kit.operator.schedule import Schedule, plan

NOW = datetime(2026, 11, 29, 9, 17, 30, tzinfo=UTC)
EVERY = Schedule(every_s=900, keep=2)  # 15m


def vgs(name: str, slot: datetime, *, ready: bool = True, consistent: str | None = "true",
        error: str | None = None, created: datetime | None = None, scheduled: bool = True,
        reported: str | None = None, deleting: bool = False) -> dict[str, Any]:
    ann = {sch.SLOT_ANNOTATION: slot.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if consistent is not None:
        ann[sch.CONSISTENT_ANNOTATION] = consistent
    if reported:
        ann[sch.REPORTED_ANNOTATION] = reported
    md: dict[str, Any] = {
        "name": name, "namespace": "shop", "annotations": ann,
        "labels": {sch.SCHEDULE_LABEL: sch.SCHEDULE_CONFIGMAP} if scheduled else {},
        "creationTimestamp": (created or slot).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if deleting:
        md["deletionTimestamp"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    st: dict[str, Any] = {"readyToUse": ready}
    if error:
        st = {"readyToUse": False, "error": {"message": error}}
    return {"metadata": md, "status": st}


def slot(minutes_ago: int) -> datetime:
    """A 15-minute slot start, ``minutes_ago`` before the current slot (09:15)."""
    return datetime(2026, 11, 29, 9, 15, tzinfo=UTC) - timedelta(minutes=minutes_ago)


# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("2s", 2), ("15m", 900), ("1h", 3600),
                                               (" 90s ", 90), ("168h", 604800)])
def test_durations_in_seconds_minutes_hours(text, seconds):
    assert sch.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "15", "15x", "1.5m", "-1m", "0s", "169h", "m", "1d", 15,
                                 None, "1m30s"])
def test_bad_durations_are_one_line_errors(bad):
    with pytest.raises(InvalidInput, match="--every") as e:
        sch.parse_duration(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["0", "-1", "1001", "two", "", "1.5", True, None])
def test_bad_keep_values_are_refused(bad):
    with pytest.raises(InvalidInput, match="--keep"):
        sch.parse_keep(bad)


def test_schedule_round_trips_through_configmap_data():
    s = Schedule(every_s=90, keep=8, snapshot_class="fast", ready_within_s=120)
    cm = sch.configmap("shop", s)
    assert cm["metadata"]["labels"][sch.SCHEDULE_LABEL] == "true"
    assert cm["data"] == {"every": "90s", "keep": "8", "class": "fast", "ready-within": "2m"}
    assert Schedule.parse(cm["data"]) == s
    assert Schedule.parse({"every": "15m", "keep": "8"}).describe() == "every 15m, keep 8"
    with pytest.raises(InvalidInput, match="unknown schedule key"):
        Schedule.parse({"every": "15m", "keep": "8", "evry": "1m"})
    with pytest.raises(InvalidInput, match="needs both"):
        Schedule.parse({"every": "15m"})


def test_slots_align_on_the_epoch_and_names_carry_the_time():
    assert sch.slot_of(NOW, 900) == datetime(2026, 11, 29, 9, 15, tzinfo=UTC)
    assert sch.snapshot_name("shop", sch.slot_of(NOW, 900), 900) == "shop-20261129-0915"
    assert sch.slot_of(NOW, 2) == datetime(2026, 11, 29, 9, 17, 30, tzinfo=UTC)
    assert sch.snapshot_name("shop", datetime(2026, 11, 29, 9, 17, 2, tzinfo=UTC), 2) == \
        "shop-20261129-091702"


# -- the plan ---------------------------------------------------------------------------------


def test_first_pass_takes_the_current_slot_and_looks_again_soon():
    p = plan(NOW, EVERY, "shop", [])
    assert p.create == "shop-20261129-0915" and p.slot == slot(0)
    assert p.delete == [] and p.report == []
    assert p.next_check == NOW + timedelta(seconds=sch.PENDING_RECHECK_S)


def test_slot_taken_and_ready_waits_for_the_next_slot():
    p = plan(NOW, EVERY, "shop", [vgs("shop-20261129-0915", slot(0))])
    assert p.create is None and p.kept == ["shop-20261129-0915"]
    assert p.next_check == datetime(2026, 11, 29, 9, 30, tzinfo=UTC)


def test_beyond_keep_the_oldest_good_groups_are_deleted():
    snaps = [vgs(f"s{i}", slot(15 * i)) for i in range(1, 5)]  # s1 newest .. s4 oldest
    p = plan(NOW, EVERY, "shop", snaps)
    assert p.create == "shop-20261129-0915"  # the current slot is not taken yet
    assert p.kept == ["s1", "s2"] and sorted(p.delete) == ["s3", "s4"]


def test_a_pending_group_neither_counts_nor_is_deleted():
    snaps = [vgs("new", slot(0), ready=False, created=NOW - timedelta(seconds=3)),
             vgs("a", slot(15)), vgs("b", slot(30)), vgs("c", slot(45))]
    p = plan(NOW, EVERY, "shop", snaps)
    assert p.pending == ["new"] and p.create is None
    assert p.kept == ["a", "b"] and p.delete == ["c"]
    assert p.next_check == NOW + timedelta(seconds=sch.PENDING_RECHECK_S)


def test_failed_and_inconsistent_groups_are_reported_once_and_never_count():
    snaps = [vgs("broken", slot(0), error="no bound PVC matches the selector"),
             vgs("torn", slot(15), consistent="false"),
             vgs("a", slot(30)), vgs("b", slot(45)), vgs("c", slot(60))]
    p = plan(NOW, EVERY, "shop", snaps)
    assert p.kept == ["a", "b"] and "c" in p.delete  # keep 2 counts good groups only
    reasons = {r.name: r.reason for r in p.report}
    assert reasons == {"broken": "ScheduledSnapshotFailed",
                       "torn": "ScheduledSnapshotInconsistent"}
    assert all("does not count toward keep 2" in r.message for r in p.report)
    assert "no bound PVC" in next(r.message for r in p.report if r.name == "broken")
    # the newest failure stays for inspection (and marks its slot as tried); older go
    assert "broken" not in p.delete and "torn" in p.delete
    assert p.create is None
    again = [vgs("broken", slot(0), error="x", reported="ScheduledSnapshotFailed")]
    assert plan(NOW, EVERY, "shop", again).report == []


def test_a_group_never_ready_fails_after_ready_within():
    late = vgs("slow", slot(0), ready=False, created=NOW - timedelta(seconds=301))
    p = plan(NOW, EVERY, "shop", [late])
    assert [r.reason for r in p.report] == ["ScheduledSnapshotNotReady"]
    assert p.pending == [] and p.failed == ["slow"]
    quick = Schedule(every_s=2, keep=2, ready_within_s=10)
    p = plan(NOW, quick, "shop", [vgs("x", NOW - timedelta(seconds=8), ready=False)])
    assert p.pending == ["x"] and p.report == []


def test_unknown_consistency_counts_as_good():
    # a driver that publishes nothing: a group snapshot of one consistency group is
    # consistent by construction, and nothing says otherwise
    p = plan(NOW, EVERY, "shop", [vgs("a", slot(0), consistent=None)])
    assert p.kept == ["a"] and p.report == []


def test_restored_groups_beyond_keep_are_pinned_not_deleted():
    snaps = [vgs("a", slot(0)), vgs("b", slot(15)), vgs("c", slot(30)), vgs("d", slot(45))]
    p = plan(NOW, EVERY, "shop", snaps, in_use={"c"})
    assert p.kept == ["a", "b"] and p.pinned == ["c"] and p.delete == ["d"]


def test_groups_the_schedule_did_not_take_are_left_alone():
    snaps = [vgs("manual", slot(90), scheduled=False), vgs("a", slot(0))]
    p = plan(NOW, Schedule(every_s=900, keep=1), "shop", snaps)
    assert p.kept == ["a"] and p.delete == [] and p.create is None


def test_a_refused_creation_is_not_retried_in_the_same_slot():
    p = plan(NOW, EVERY, "shop", [], last_attempt=slot(0))
    assert p.create is None
    assert p.next_check == datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
    assert plan(NOW, EVERY, "shop", [], last_attempt=slot(15)).create == "shop-20261129-0915"


def test_a_group_being_deleted_holds_its_slot_and_does_not_count():
    snaps = [vgs("shop-20261129-0915", slot(0), deleting=True), vgs("a", slot(15))]
    p = plan(NOW, EVERY, "shop", snaps)
    assert p.create is None and p.kept == ["a"] and p.delete == []


def test_rotation_over_a_day_keeps_exactly_keep_groups():
    """Simulate the operator's passes for 3 hours of a 15m schedule, keep 4."""
    s = Schedule(every_s=900, keep=4)
    existing: dict[str, dict[str, Any]] = {}
    t = datetime(2026, 11, 29, 0, 0, 5, tzinfo=UTC)
    taken = []
    while t < datetime(2026, 11, 29, 3, 0, tzinfo=UTC):
        p = plan(t, s, "shop", existing.values())
        for name in p.delete:
            del existing[name]
        if p.create:
            assert p.slot is not None
            existing[p.create] = vgs(p.create, p.slot, created=t)
            taken.append(p.create)
        t += timedelta(minutes=5)
    assert len(taken) == 12 and len(set(taken)) == 12  # one per slot, never twice
    assert sorted(existing) == taken[-4:]


# -- the glue, on a cluster of dicts ---------------------------------------------------------


class FakeKube:
    """Just the calls the scheduler makes, on dicts (label selectors: ``key`` or ``key=v``)."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects
        self.events: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.refuse_create: str | None = None

    @staticmethod
    def _match(o: dict[str, Any], sel: str | None) -> bool:
        if not sel:
            return True
        key, _, value = sel.partition("=")
        labels = o["metadata"].get("labels") or {}
        return key in labels and (not value or labels[key] == value)

    def items(self, kind, namespace=None, label_selector=None):
        return [o for o in self.objects if o["kind"] == kind
                and namespace in (None, o["metadata"].get("namespace"))
                and self._match(o, label_selector)]

    def create(self, kind, body):
        if kind == "Event":
            self.events.append(body)
            return body
        if self.refuse_create:
            from dr_kit.errors import Conflict

            raise Conflict(self.refuse_create)
        obj = {"kind": kind, **body}
        obj["metadata"]["creationTimestamp"] = "2026-11-29T09:17:30Z"
        self.objects.append(obj)
        return obj

    def patch(self, kind, name, body, namespace=None):
        o = next(o for o in self.items(kind, namespace) if o["metadata"]["name"] == name)
        o["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return o

    def delete(self, kind, name, namespace=None, missing_ok=False):
        self.objects = [o for o in self.objects if not (o["kind"] == kind and
                                                        o["metadata"]["name"] == name)]
        self.deleted.append(name)
        return {}

    def resource(self, kind):
        from dr_kit.kube import RESOURCES

        return RESOURCES[kind]


def cluster(*snaps: dict[str, Any]) -> FakeKube:
    cm = sch.configmap("shop", Schedule(every_s=900, keep=1))
    cm["metadata"].update(resourceVersion="1", uid="u1")
    pvcs = [{"kind": "PersistentVolumeClaim",
             "metadata": {"name": n, "namespace": "shop", "labels": {sch.GROUP_LABEL: "g1"}}}
            for n in ("sales-db", "stock-db")]
    cls = {"kind": "VolumeGroupSnapshotClass", "metadata": {"name": "lab", "annotations": {
        sch.DEFAULT_CLASS_ANNOTATION: "true"}}}
    return FakeKube([cm, *pvcs, cls, *({"kind": "VolumeGroupSnapshot", **s} for s in snaps)])


def test_the_scheduler_takes_reports_and_rotates_through_the_api():
    kube = cluster(vgs("old", slot(15)), vgs("older", slot(30)),
                   vgs("torn", slot(45), consistent="false"))
    s = sch.SnapshotScheduler(kube, clock=lambda: NOW)  # type: ignore[arg-type]
    wait = s.run_once()
    assert 0.2 <= wait <= s.poll_seconds
    made = [o for o in kube.items("VolumeGroupSnapshot") if o["metadata"]["name"] ==
            "shop-20261129-0915"]
    assert len(made) == 1
    body = made[0]
    assert body["spec"]["source"]["selector"]["matchLabels"] == {sch.GROUP_LABEL: "g1"}
    assert body["spec"]["volumeGroupSnapshotClassName"] == "lab"
    assert body["metadata"]["labels"][sch.SCHEDULE_LABEL] == sch.SCHEDULE_CONFIGMAP
    assert body["metadata"]["annotations"][sch.SLOT_ANNOTATION] == "2026-11-29T09:15:00Z"
    assert kube.deleted == ["older"]  # keep 1: "old" stays, the failure too (newest one)
    assert [(e["reason"], e["involvedObject"]["name"]) for e in kube.events] == \
        [("ScheduledSnapshotInconsistent", "torn")]
    torn = next(o for o in kube.objects if o["metadata"]["name"] == "torn")
    assert torn["metadata"]["annotations"][sch.REPORTED_ANNOTATION] == \
        "ScheduledSnapshotInconsistent"
    s.run_once()  # reported once only, nothing taken twice
    assert len(kube.events) == 1
    assert len([o for o in kube.items("VolumeGroupSnapshot")
                if o["metadata"]["name"] == "shop-20261129-0915"]) == 1


def test_a_refused_creation_is_one_warning_on_the_configmap_and_not_retried_in_its_slot():
    kube = cluster()
    kube.refuse_create = "the API said no"
    s = sch.SnapshotScheduler(kube, clock=lambda: NOW)  # type: ignore[arg-type]
    s.run_once()
    s._due["shop"] = NOW  # look again at once
    s.run_once()
    assert [(e["reason"], e["involvedObject"]["kind"]) for e in kube.events] == \
        [("ScheduledSnapshotFailed", "ConfigMap")]
    assert "the API said no" in kube.events[0]["message"]
    assert s._due["shop"] == datetime(2026, 11, 29, 9, 30, tzinfo=UTC)  # the next slot


def test_a_bad_schedule_is_a_warning_and_nothing_is_taken():
    kube = cluster()
    kube.objects[0]["data"] = {"every": "soon", "keep": "8"}
    s = sch.SnapshotScheduler(kube, clock=lambda: NOW)  # type: ignore[arg-type]
    s.run_once()
    assert [e["reason"] for e in kube.events] == ["ScheduleInvalid"]
    assert "--every 'soon'" in kube.events[0]["message"]
    assert kube.items("VolumeGroupSnapshot") == []


def test_snapshot_group_overview_fits_a_page_and_says_unknown_for_what_is_not_known():
    """What ``dr-kit snapshot list`` and notebook 03 show: text cells, units in the headers,
    never a raw NaN or None."""
    import pandas as pd

    from dr_kit.snapshots import OVERVIEW_COLUMNS, age_text, snapshot_group_overview

    groups = pd.DataFrame([
        {"name": "snap-1", "ready": True, "consistent": True, "age_s": 75.0, "sequence": 42,
         "point_time": pd.Timestamp("2026-11-29 18:00:01.123456", tz="UTC"), "lag_seconds": 0.01234,
         "restored": "snap-1-stock", "error": None},
        {"name": "snap-2", "ready": False, "consistent": None, "age_s": float("nan"),
         "sequence": pd.NA, "point_time": pd.NaT, "lag_seconds": None, "restored": None,
         "error": "the array refused it"},
        {"name": "snap-3", "ready": False, "consistent": False, "age_s": 7200.0, "sequence": None,
         "point_time": None, "lag_seconds": float("nan"), "restored": None, "error": None},
    ])
    view = snapshot_group_overview(groups)
    assert list(view.columns) == OVERVIEW_COLUMNS
    assert view.to_dict("records") == [
        {"name": "snap-1", "ready": "yes", "consistent": "yes", "age": "1m", "sequence": "42",
         "point (UTC)": "2026-11-29 18:00:01.123", "lag then (s)": "0.012", "restored": "snap-1-stock"},
        {"name": "snap-2", "ready": "error", "consistent": "unknown", "age": "-", "sequence": "-",
         "point (UTC)": "unknown", "lag then (s)": "unknown", "restored": "-"},
        {"name": "snap-3", "ready": "no", "consistent": "NO", "age": "2h", "sequence": "-",
         "point (UTC)": "unknown", "lag then (s)": "unknown", "restored": "-"},
    ]
    assert snapshot_group_overview(groups.iloc[0:0]).empty
    assert [age_text(s) for s in (None, 5, 59.9, 3600, 86400 * 3)] == ["-", "5s", "59s", "1h", "3d"]
