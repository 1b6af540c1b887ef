"""The operator's machinery on its own: work queue, backoff, watch cache, change filter."""

from __future__ import annotations

import threading
import time

import pytest

from dr_kit.operator.cache import Cache
from dr_kit.operator.retry import Backoff, WorkQueue
from dr_kit.operator.runner import relevant


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_queue_deduplicates_and_keeps_order():
    q = WorkQueue()
    for k in ("a", "b", "a", "c", "b"):
        q.add(k)
    assert len(q) == 3
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", "c"]
    assert q.get(0) is None


def test_key_added_while_processing_is_handed_out_again_after_done_not_before():
    q = WorkQueue()
    q.add("shop")
    assert q.get(0) == "shop"
    q.add("shop")  # a change arrived while a worker handles shop
    q.add("shop")
    assert q.get(0) is None  # never two workers on one namespace
    q.done("shop")
    assert q.get(0) == "shop"
    q.done("shop")
    assert q.get(0) is None


def test_delayed_add_waits_and_the_earliest_request_wins():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 2)  # earlier: wins
    q.add_after("a", 5)  # later than pending: ignored
    assert q.delayed == 1 and q.get(0) is None
    clock.t += 1.9
    assert q.get(0) is None
    clock.t += 0.2
    assert q.get(0) == "a" and q.delayed == 0
    q.done("a")
    clock.t += 20  # the stale heap entries (10 s, 5 s) add nothing more
    assert q.get(0) is None


def test_get_blocks_until_an_add_or_a_delayed_key_is_due():
    q = WorkQueue()
    got: list = []
    t = threading.Thread(target=lambda: got.append(q.get(5.0)))
    t.start()
    q.add_after("late", 0.2)
    t.join(5.0)
    assert got == ["late"]
    q.shutdown()
    assert q.get(1.0) is None  # a shut down queue hands nothing out


def test_backoff_doubles_per_key_up_to_the_cap_and_forgets_on_success():
    b = Backoff(base=0.5, cap=4.0)
    assert [b.next_delay("a") for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.next_delay("b") == 0.5  # one failing namespace never slows another down
    b.forget("a")
    assert b.next_delay("a") == 0.5 and b.failures("a") == 1


def obj(name: str, rv: str, ns: str | None = "shop", **extra) -> dict:
    return {"kind": "X", "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            **extra}


def test_cache_indexes_by_namespace_and_reports_listing_differences():
    c = Cache("X")
    assert c.replace([obj("a", "1"), obj("b", "2"), obj("z", "3", ns="other")]) == [
        ("ADDED", None, obj("a", "1")), ("ADDED", None, obj("b", "2")),
        ("ADDED", None, obj("z", "3", ns="other"))]
    assert c.synced.is_set()
    assert sorted(o["metadata"]["name"] for o in c.in_namespace("shop")) == ["a", "b"]
    changes = c.replace([obj("a", "1"), obj("b", "5")])
    assert [(t, (n or o)["metadata"]["name"]) for t, o, n in changes] == [
        ("DELETED", "z"), ("MODIFIED", "b")]
    assert c.in_namespace("other") == [] and len(c) == 2


def test_write_through_never_goes_back_in_time():
    c = Cache("X")
    c.apply("ADDED", obj("a", "10"))
    c.write_through(obj("a", "9", spec={"old": True}))  # an answer older than the watch
    assert c.get("shop", "a")["metadata"]["resourceVersion"] == "10"
    c.write_through(obj("a", "12", spec={"new": True}))  # our write, before its watch event
    assert c.get("shop", "a")["spec"] == {"new": True}
    c.write_through(obj("a", "13"), deleted=True)
    assert c.get("shop", "a") is None
    c.write_through(obj("b", "14"))  # not cached yet: taken
    assert c.get("shop", "b") is not None


def vgr(sync: str, completed: str = "True", bytes_: int = 0) -> dict:
    return {"metadata": {"name": "g", "labels": {"a": "b"}, "generation": 1},
            "spec": {"replicationState": "primary"},
            "status": {"state": "Primary", "lastSyncTime": sync, "lastSyncBytes": bytes_,
                       "conditions": [{"type": "Completed", "status": completed,
                                       "lastTransitionTime": sync}]}}


def test_a_plugin_refreshing_its_sync_time_is_not_a_change_worth_a_reconcile():
    assert relevant(vgr("2030-01-01T00:00:00Z", bytes_=1)) == \
        relevant(vgr("2030-01-01T00:00:09Z", bytes_=99))
    assert relevant(vgr("2030-01-01T00:00:00Z")) != \
        relevant(vgr("2030-01-01T00:00:00Z", completed="False"))
    assert relevant(None) != relevant(vgr("x"))


@pytest.mark.parametrize("n", [1, 50])
def test_queue_hands_each_key_to_one_worker_at_a_time_under_concurrency(n):
    q = WorkQueue()
    active: set = set()
    overlaps: list = []
    handled: list = []
    lock = threading.Lock()

    def worker():
        while True:
            k = q.get(0.3)
            if k is None:
                return
            with lock:
                if k in active:
                    overlaps.append(k)
                active.add(k)
            time.sleep(0.001)
            with lock:
                active.discard(k)
                handled.append(k)
            q.done(k)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        for i in range(n):
            q.add(f"ns{i}")
        time.sleep(0.002)
    for t in threads:
        t.join(10)
    assert overlaps == []
    assert {f"ns{i}" for i in range(n)} <= set(handled)


def test_health_address_is_loopback_unless_in_a_cluster():
    from dr_kit.errors import InvalidInput
    from dr_kit.operator.health import parse_address
    assert parse_address("127.0.0.1:9471") == ("127.0.0.1", 9471)
    assert parse_address("localhost:0") == ("localhost", 0)
    assert parse_address("off") is None
    assert parse_address(":8080", allow_remote=True) == ("0.0.0.0", 8080)
    for bad, needle in (("0.0.0.0:8080", "loopback address only"), ("10.0.0.1:1", "loopback"),
                        ("9471", "HOST:PORT"), ("127.0.0.1:x", "must be a number"),
                        ("127.0.0.1:70000", "0..65535")):
        with pytest.raises(InvalidInput, match=needle):
            parse_address(bad)


def test_a_taken_port_is_one_clear_error():
    import socket

    from dr_kit.errors import InvalidInput
    from dr_kit.operator.health import HealthServer, Metrics
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"cannot serve health and metrics on "
                                               f"127.0.0.1:{port}"):
            HealthServer(("127.0.0.1", port), live=lambda: (True, ""),
                         ready=lambda: (True, ""), metrics=Metrics())
