"""The shop's load generator when its array goes away: bounded runs give up, timed runs ride it out."""

from __future__ import annotations

import time
from pathlib import Path

import apsw
import pytest

from dr_kit.errors import Unavailable
from dr_kit.shop.workload import Shop, error_line, seed


def _shop(tmp_path: Path) -> Shop:
    stock, sales = apsw.Connection(str(tmp_path / "stock.db")), apsw.Connection(str(tmp_path / "sales.db"))
    seed(stock, sales)
    return Shop(stock, sales, seed_value=3)


def _failing(shop: Shop, times: int | None):
    real, calls = shop.transact, {"n": 0}

    def transact() -> int:
        calls["n"] += 1
        if times is None or calls["n"] <= times:
            try:  # as SQLite does it: the commit's I/O error, then the rollback's own
                raise apsw.IOError("array data path failed for volume stock-db: connection refused")
            except apsw.IOError:
                raise apsw.SQLError("cannot rollback - no transaction is active")  # noqa: B904
        return real()
    return transact


def test_a_counted_run_gives_up_in_one_line_when_every_transaction_fails(tmp_path, monkeypatch):
    shop = _shop(tmp_path)
    shop.run(0, count=2)
    monkeypatch.setattr(shop, "GIVE_UP_S", 0.3)
    monkeypatch.setattr(shop, "transact", _failing(shop, None))
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        shop.run(0, count=5)
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and "gave up after 0 of 5 transactions" in msg and "connection refused" in msg
    assert shop.stats.committed == 2 and shop.stats.failed >= 5


def test_failures_that_end_do_not_stop_a_counted_run(tmp_path, monkeypatch):
    shop = _shop(tmp_path)
    monkeypatch.setattr(shop, "GIVE_UP_S", 0.3)
    monkeypatch.setattr(shop, "transact", _failing(shop, 4))  # 0.2 s of failures, then it works
    shop.run(0, count=5)
    assert shop.stats.committed == 5 and shop.stats.failed == 4


def test_a_timed_run_rides_out_an_outage_to_its_end(tmp_path, monkeypatch):
    shop = _shop(tmp_path)
    monkeypatch.setattr(shop, "GIVE_UP_S", 0.1)
    monkeypatch.setattr(shop, "transact", _failing(shop, None))
    stats = shop.run(0, duration=0.5)
    assert stats.committed == 0 and stats.failed >= 5 and "connection refused" in stats.last_error


def test_an_error_line_names_the_cause_under_sqlites_failed_rollback():
    """The lab's shop application and the load generator record the same line."""
    try:
        try:
            raise apsw.IOError("array data path failed for volume stock-db: broken pipe")
        except apsw.IOError:
            raise apsw.SQLError("cannot rollback - no transaction is active")  # noqa: B904
    except apsw.Error as e:
        assert error_line(e) == "IOError: array data path failed for volume stock-db: broken pipe"
    try:  # an error of its own is named as it is, whatever it happened during
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except OSError:
            raise apsw.IOError("array data path failed for volume sales-db")  # noqa: B904
    except apsw.Error as e:
        assert error_line(e) == "IOError: array data path failed for volume sales-db"
