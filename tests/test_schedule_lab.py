"""Scheduled snapshot groups end to end: ``dr-kit snapshot schedule shop --every 2s --keep 2``
on the session's lab, executed by the operator the lab runs at the backup site.

Rotation (names carry the time, the oldest go beyond keep), failures reported with an
Event and never counted, ``--off``, and bad values refused in one line with nothing written.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from dr_kit import cli, snapshots
from dr_kit.errors import NotFound
from dr_kit.lab import site
from dr_kit.operator import schedule as sch
from dr_kit.sites import Site

NS = "shop"
NAME = re.compile(r"^shop-\d{8}-\d{6}$")  # every 2s: the time to the second, UTC


def dr_kit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def scheduled(backup: Site) -> dict[str, dict[str, Any]]:
    objs = backup.kube.items("VolumeGroupSnapshot", NS,
                             label_selector=f"{sch.SCHEDULE_LABEL}={sch.SCHEDULE_CONFIGMAP}")
    return {o["metadata"]["name"]: o for o in objs if not o["metadata"].get("deletionTimestamp")}


def good(objs: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(n for n, o in objs.items() if (o.get("status") or {}).get("readyToUse")
                  and (o["metadata"].get("annotations") or {}).get(
                      sch.CONSISTENT_ANNOTATION) == "true")


def cleanup(backup: Site) -> None:
    had = backup.kube.delete("ConfigMap", sch.SCHEDULE_CONFIGMAP, NS, missing_ok=True)
    if not had and not scheduled(backup):
        return  # no schedule was recorded (a refused one): nothing to let go of
    time.sleep(sch.SnapshotScheduler(backup.kube).poll_seconds + 1)  # the operator lets go
    for name in scheduled(backup):
        try:
            snapshots.delete_snapshot_group(backup, name, NS)
        except NotFound:
            pass


@pytest.fixture
def backup(shop_lab: Path):
    b = site("backup", shop_lab)
    try:
        yield b
    finally:
        cleanup(b)


def test_every_2s_keep_2_rotates_the_newest_two(shop_lab, backup, capsys):
    rc, out, err = dr_kit(capsys, "snapshot", "schedule", NS, "--every", "2s", "--keep", "2",
                          "--dir", str(shop_lab))
    assert rc == 0, err
    assert "every 2s, keep 2" in out and "shop-YYYYMMDD-HHMMSS" in out
    cm = backup.kube.get("ConfigMap", sch.SCHEDULE_CONFIGMAP, NS)
    assert cm is not None and cm["data"] == {"every": "2s", "keep": "2"}
    assert cm["metadata"]["labels"][sch.SCHEDULE_LABEL] == "true"

    seen: list[str] = []
    most_good = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(seen) < 6:
        now = scheduled(backup)
        seen += [n for n in sorted(now) if n not in seen]
        most_good = max(most_good, len(good(now)))
        time.sleep(0.3)
    assert len(seen) >= 6, f"the backup site's operator took only {seen} in 40 s"
    assert all(NAME.match(n) for n in seen), seen
    assert seen == sorted(seen), "names carry the time: each newer than the last"
    # at most one over keep, for the moment between a group getting ready and the pass
    # that deletes the oldest
    assert most_good <= 3
    time.sleep(3.0)
    now = scheduled(backup)
    kept = good(now)
    assert len(kept) == 2, now.keys()
    assert seen[0] not in now and seen[1] not in now, "the oldest were deleted"
    assert all(n > max(kept) for n in set(now) - set(kept)), "only newer ones still pending"

    rc, out, _ = dr_kit(capsys, "snapshot", "list", "-n", NS, "--dir", str(shop_lab), "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    for name in kept:
        r = rows[name]
        assert r["scheduled"] and r["consistent"] is True and r["sequence"] is not None
        assert r["point_time"] is not None and r["lag_seconds"] is not None
        assert 0 <= r["age_s"] < 60
    rc, out, _ = dr_kit(capsys, "snapshot", "list", "-n", NS, "--dir", str(shop_lab))
    assert out.startswith("schedule: every 2s, keep 2")
    assert "AGE" in out and "CONSISTENCY POINT" in out and "LAG THEN" in out

    # off: the schedule goes, its groups stay, no new ones are taken
    rc, out, _ = dr_kit(capsys, "snapshot", "schedule", NS, "--off", "--dir", str(shop_lab))
    assert rc == 0 and "removed" in out
    assert backup.kube.get("ConfigMap", sch.SCHEDULE_CONFIGMAP, NS) is None
    time.sleep(sch.SnapshotScheduler(backup.kube).poll_seconds + 2)
    settled = set(scheduled(backup))
    time.sleep(4.0)
    assert set(scheduled(backup)) == settled and settled


def test_failed_groups_are_reported_and_never_count_toward_keep(shop_lab, backup, capsys):
    # two good groups first
    assert dr_kit(capsys, "snapshot", "schedule", NS, "--every", "2s", "--keep", "2",
                  "--dir", str(shop_lab))[0] == 0
    deadline = time.monotonic() + 30
    while len(good(scheduled(backup))) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    # then a class no driver serves: the groups never become ready
    backup.kube.create("VolumeGroupSnapshotClass", {
        "metadata": {"name": "test-nobody-serves"}, "driver": "example.com/no-such-driver",
        "deletionPolicy": "Delete"}, exist_ok=True)
    try:
        rc, _, err = dr_kit(capsys, "snapshot", "schedule", NS, "--every", "2s", "--keep", "2",
                            "--class", "test-nobody-serves", "--ready-within", "2s",
                            "--dir", str(shop_lab))
        assert rc == 0, err

        def new_class() -> list[str]:
            return [n for n, o in scheduled(backup).items()
                    if o["spec"].get("volumeGroupSnapshotClassName") == "test-nobody-serves"]

        deadline = time.monotonic() + 30  # the operator relists the schedules every 5 s
        while not new_class() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # a group of the earlier class still getting ready settles
        before = good(scheduled(backup))
        assert len(before) == 2

        def reports() -> list[dict[str, Any]]:
            return [e for e in backup.kube.items("Event", NS)
                    if e.get("reason") == "ScheduledSnapshotNotReady"]

        deadline = time.monotonic() + 40
        while len(reports()) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        events = reports()
        assert len(events) >= 3, "each failure is reported with an Event"
        assert len({e["involvedObject"]["name"] for e in events}) == len(events), "once each"
        assert all(e["type"] == "Warning" and e["involvedObject"]["kind"] ==
                   "VolumeGroupSnapshot" and "does not count toward keep 2" in e["message"]
                   for e in events)
        now = scheduled(backup)
        # the failures did not push the good groups out
        assert good(now) == before
        failed = [n for n, o in now.items() if n not in before]
        # the newest failure stays for inspection, plus at most one still getting ready
        assert 1 <= len(failed) <= 3, failed
        reported = [n for n in failed if (now[n]["metadata"].get("annotations") or {}).get(
            sch.REPORTED_ANNOTATION)]
        assert len(reported) <= 1
    finally:
        cleanup(backup)
        backup.kube.delete("VolumeGroupSnapshotClass", "test-nobody-serves", missing_ok=True)


@pytest.mark.parametrize(("args", "want"), [
    (["--every", "15", "--keep", "8"], "--every '15' is not a duration"),
    (["--every", "15d", "--keep", "8"], "is not a duration"),
    (["--every", "0s", "--keep", "8"], "out of range"),
    (["--every", "15m", "--keep", "0"], "--keep '0' is not valid"),
    (["--every", "15m", "--keep", "many"], "--keep 'many'"),
    (["--every", "15m"], "needs both --every"),
    (["--every", "15m", "--keep", "8", "--off"], "--off removes the schedule"),
    (["--every", "15m", "--keep", "8", "--class", "nope"], "VolumeGroupSnapshotClass 'nope'"),
])
def test_bad_values_are_one_error_line_and_nothing_is_written(shop_lab, backup, capsys, args,
                                                              want):
    rc, out, err = dr_kit(capsys, "snapshot", "schedule", NS, *args, "--dir", str(shop_lab))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and want in err, err
    assert backup.kube.get("ConfigMap", sch.SCHEDULE_CONFIGMAP, NS) is None


def test_an_unknown_namespace_is_refused(shop_lab, capsys):
    rc, _, err = dr_kit(capsys, "snapshot", "schedule", "no-such-ns", "--every", "1m",
                        "--keep", "2", "--dir", str(shop_lab))
    assert rc == 2 and err.startswith("error: ") and "no-such-ns" in err
    rc, out, _ = dr_kit(capsys, "snapshot", "schedule", NS, "--dir", str(shop_lab))
    assert rc == 0 and out.strip() == "namespace shop has no snapshot schedule"
