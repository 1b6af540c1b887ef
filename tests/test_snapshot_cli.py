"""``dr-kit snapshot diff`` and ``dr-kit snapshot export`` on the session's lab.

Two snapshot groups taken a few seconds apart while the shop writes: the diff shows the
orders committed in between; each export format is read back (pyarrow, csv, the stock
``sqlite3`` tool with ``PRAGMA integrity_check``) and agrees with the others.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dr_kit import cli, snapshots
from dr_kit.errors import NotFound
from dr_kit.lab import site
from dr_kit.sites import Site

NS = "shop"
SQLITE3 = shutil.which("sqlite3")


def dr_kit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def restored(backup: Site, name: str) -> list[str]:
    return [p["metadata"]["name"] for p in backup.kube.items(
        "PersistentVolumeClaim", NS, label_selector=f"{snapshots.RESTORED_FROM}={name}")]


@pytest.fixture(scope="module")
def two_groups(shop_lab: Path):
    main, backup = site("main", shop_lab), site("backup", shop_lab)
    names = ("cli-diff-a", "cli-diff-b")
    try:
        a = snapshots.create_snapshot_group(backup, names[0], NS, main_site=main)
        time.sleep(3.0)  # the shop commits about 25 orders a second
        b = snapshots.create_snapshot_group(backup, names[1], NS, main_site=main)
        yield shop_lab, backup, a, b
    finally:
        for n in names:
            try:
                snapshots.delete_snapshot_group(backup, n, NS)
            except NotFound:
                pass


def test_diff_of_two_groups_taken_seconds_apart_shows_the_new_orders(two_groups, capsys):
    lab, backup, a, b = two_groups
    rc, out, err = dr_kit(capsys, "snapshot", "diff", a.name, b.name, "-n", NS,
                          "--dir", str(lab), "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert {"new_orders", "revenue_delta", "units_delta", "stock_movements"} <= set(d)
    assert d["before"]["snapshot"] == a.name and d["after"]["snapshot"] == b.name
    assert d["before"]["sequence"] == a.sequence and d["after"]["sequence"] == b.sequence
    # orders only grow: every order of B above A's last is new, none is lost
    assert d["new_orders"] > 0 and d["lost_orders"] == 0
    assert d["new_orders"] == d["after"]["last_order"] - d["before"]["last_order"]
    assert d["new_orders"] == d["after"]["orders"] - d["before"]["orders"]
    assert d["revenue_delta"] > 0 and d["units_delta"] >= d["new_orders"]
    # each order line leaves the stock as one movement, committed before the sale; an order
    # in flight in A (its movements already in A, its sale only in B) is the one way B's new
    # sales can hold more units than B's new movements: at most 3 lines of 4 units each
    # (dr_kit.shop.workload), one movement per line
    in_flight_a = int(re.search(r"(\d+) in flight", d["before"]["verdict"]).group(1))
    sm = d["stock_movements"]
    assert sm["units_out"] >= d["units_delta"] - in_flight_a * 3 * 4
    assert sm["new"] >= d["new_orders"] - in_flight_a * 3
    assert d["consistent"] is True
    # the restores the command made are gone again (a scheduled group is not pinned)
    assert restored(backup, a.name) == [] and restored(backup, b.name) == []

    rc, out, err = dr_kit(capsys, "snapshot", "diff", a.name, b.name, "-n", NS, "--dir", str(lab))
    assert rc == 0, err
    assert f"new orders {d['new_orders']}" in out
    assert re.search(r"revenue \+[\d,]+\.\d\d, units \+[\d,]+", out), out


@pytest.mark.parametrize("fmt", ["parquet", "csv", "sqlite"])
def test_export_in_each_format_with_provenance(two_groups, fmt, tmp_path, capsys):
    lab, backup, _, b = two_groups
    out = tmp_path / fmt
    rc, text, err = dr_kit(capsys, "snapshot", "export", b.name, "-n", NS, "--dir", str(lab),
                           "--format", fmt, "--out", str(out))
    assert rc == 0, err
    assert text.startswith(f"exported {b.name} (seq {b.sequence}") and f"as {fmt}" in text
    assert f"exporting {b.name} as {fmt}" in err  # progress for the long step
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["snapshot"] == b.name and prov["sequence"] == b.sequence
    assert prov["consistent"] is True and prov["format"] == fmt
    assert restored(backup, b.name) == []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        orders = pq.read_table(out / "sales" / "orders.parquet").num_rows
        lines = pq.read_table(out / "sales" / "order_lines.parquet").num_rows
    elif fmt == "csv":
        with (out / "sales" / "orders.csv").open() as f:
            orders = sum(1 for _ in csv.reader(f)) - 1
        with (out / "sales" / "order_lines.csv").open() as f:
            lines = sum(1 for _ in csv.reader(f)) - 1
    else:
        assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "sales.db",
                                                         "stock.db"]
        if not SQLITE3:
            pytest.skip("the sqlite3 command line tool is not installed (apt-get install "
                        "sqlite3)")
        for db in ("stock.db", "sales.db"):
            run = subprocess.run([SQLITE3, "-readonly", str(out / db), "PRAGMA integrity_check;"],
                                 capture_output=True, text=True, timeout=60, check=True)
            assert run.stdout.strip() == "ok", run
        run = subprocess.run([SQLITE3, "-readonly", str(out / "sales.db"),
                              "SELECT COUNT(*) FROM orders; SELECT COUNT(*) FROM order_lines;"],
                             capture_output=True, text=True, timeout=60, check=True)
        orders, lines = (int(x) for x in run.stdout.split())
    files = prov["files"]
    key = {"parquet": "sales/orders.parquet", "csv": "sales/orders.csv"}.get(fmt)
    if key:
        assert files[key]["rows"] == orders
    else:
        assert files["sales.db"]["tables"]["orders"] == orders
        assert files["sales.db"]["tables"]["order_lines"] == lines
    # exactly the snapshot's orders: nothing after its consistency point
    assert orders == b_orders(backup, b.name)


_ORDERS: dict[str, int] = {}


def b_orders(backup: Site, name: str) -> int:
    """The group's order count, through the library (once per group)."""
    if name not in _ORDERS:
        from dr_kit.export import diff_snapshots

        with snapshots.opened_snapshot(backup, name, NS) as dbs:
            _ORDERS[name] = diff_snapshots(dbs, dbs, products=False)["after"]["orders"]
    return _ORDERS[name]


def test_bad_input_is_one_line_and_leaves_nothing(two_groups, tmp_path, capsys):
    lab, backup, a, _ = two_groups
    cases = [
        (["export", a.name, "--format", "xml", "--out", str(tmp_path / "x")], "--format 'xml'"),
        (["export", "no-such-group", "--format", "csv", "--out", str(tmp_path / "y")],
         "does not exist"),
        (["diff", a.name, "no-such-group"], "does not exist"),
    ]
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases.append((["export", a.name, "--format", "csv", "--out", str(full)], "not empty"))
    for argv, want in cases:
        rc, out, err = dr_kit(capsys, "snapshot", *argv, "-n", NS, "--dir", str(lab))
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and want in lines[0], (argv, err)
        assert "Traceback" not in err and out == ""
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert restored(backup, a.name) == []
