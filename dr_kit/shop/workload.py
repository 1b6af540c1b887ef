"""The shop's transactional application: orders that move stock, then record the sale.

A business transaction commits the stock movement first (stock DB), then the sale (sales
DB).  Both databases are SQLite databases on array volumes, reached through the array VFS,
so every page write goes through the array's data path and journal.

The shop owns its databases and runs them in WAL mode (exclusive locking, see
:mod:`dr_kit.sqlite.vfs`): a commit is one request of WAL frames to the array instead of
the rollback journal's several (journal, database pages, journal header), so a business
transaction is two journal entries.  Images of them (snapshots, a promoted backup) open
with SQLite's WAL recovery.

The workload runs at a target rate (transactions per second, 0 = paused), records the
commit latency of each transaction, and can run in a thread or in its own process.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import apsw

from dr_kit.errors import InvalidInput, Unavailable
from dr_kit.shop.consistency import Verdict, judge
from dr_kit.shop.schema import CHANNELS, SALES_DDL, STOCK_DDL, Product, load_catalog
from dr_kit.sqlite.vfs import ArrayVFS, connect, set_journal_mode

STOCK_DB = "stock.db"
SALES_DB = "sales.db"
CUSTOMERS = 500


def error_line(e: BaseException) -> str:
    """A failed transaction's error as one line naming its cause: after a failed commit
    SQLite rolls back by itself, so the rollback that follows fails too ("no transaction is
    active") and hides the error underneath, kept as its context."""
    while isinstance(e, apsw.Error) and isinstance(e.__context__, apsw.Error):
        e = e.__context__
    return f"{type(e).__name__}: {e}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seed(stock: apsw.Connection, sales: apsw.Connection, catalog: list[Product] | None = None,
         *, history_days: int = 0, history_orders: int = 100_000, history_seed: int = 1,
         now: datetime | float | None = None) -> int:
    """Create the schema and load the catalog and initial stock (once); returns #products.

    With ``history_days`` > 0, a shop that has no orders yet also gets that many days of
    history before ``now`` (:func:`dr_kit.shop.history.seed_history`, ``history_orders``
    orders, seeded by ``history_seed``); a shop that already has orders is left as it is,
    and a history load a crash cut between its two commits is completed.
    """
    catalog = catalog or load_catalog()
    with stock:
        for ddl in STOCK_DDL:
            stock.execute(ddl)
        if not next(stock.execute("SELECT COUNT(*) FROM products"))[0]:
            stock.executemany("INSERT INTO products VALUES (?,?,?,?)",
                              [(p.product_id, p.name, p.category, p.unit_price_cents) for p in catalog])
            stock.executemany("INSERT INTO stock_levels VALUES (?,?,?)",
                              [(p.product_id, p.initial_units, p.initial_units) for p in catalog])
    with sales:
        for ddl in SALES_DDL:
            sales.execute(ddl)
        if not next(sales.execute("SELECT COUNT(*) FROM products"))[0]:
            sales.executemany("INSERT INTO products VALUES (?,?,?,?)",
                              [(p.product_id, p.name, p.category, p.unit_price_cents) for p in catalog])
    if history_days:
        from dr_kit.shop.history import pending_history, seed_history

        new = (not next(sales.execute("SELECT COUNT(*) FROM orders"))[0]
               and not next(stock.execute("SELECT COUNT(*) FROM stock_movements"))[0])
        if new or pending_history(stock, sales) is not None:  # a load a crash cut short: finish it
            # one bulk transaction per database: with a rollback journal it needs room for
            # the few pages it changes, in WAL mode for every page it writes
            modes = [_journal_mode(c) for c in (stock, sales)]
            for c, m in zip((stock, sales), modes, strict=True):
                if m == "wal":
                    set_journal_mode(c, "persist")
            try:
                seed_history(stock, sales, history_days, seed=history_seed, now=now,
                             orders=history_orders)
            finally:
                for c, m in zip((stock, sales), modes, strict=True):
                    if m == "wal":
                        set_journal_mode(c, "wal")
    return len(catalog)


def _journal_mode(con: apsw.Connection) -> str:
    return str(next(con.execute("PRAGMA journal_mode"))[0]).lower()


def open_shop(vfs: ArrayVFS, *, stock_volume: str = "stock-db", sales_volume: str = "sales-db",
              readonly: bool = False) -> tuple[apsw.Connection, apsw.Connection]:
    """The shop's two connections; writers own their databases in WAL mode."""
    return (connect(vfs, stock_volume, STOCK_DB, readonly=readonly, wal=not readonly),
            connect(vfs, sales_volume, SALES_DB, readonly=readonly, wal=not readonly))


def judge_images(stock: apsw.Connection, sales: apsw.Connection) -> Verdict:
    """The consistency verdict on two open SQLite images (with ``integrity_check``)."""
    try:
        integrity = {"stock": next(stock.execute("PRAGMA integrity_check"))[0],
                     "sales": next(sales.execute("PRAGMA integrity_check"))[0]}
        return judge(lambda q: stock.execute(q), lambda q: sales.execute(q), integrity=integrity)
    except apsw.Error as e:
        return Verdict(error=f"{type(e).__name__}: {e}")


@dataclass
class ShopStats:
    committed: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    last_error: str = ""


class Shop:
    """Runs business transactions against the two databases."""

    # a run of ``count`` transactions gives up when every transaction has failed for this
    # long (the array down for good); runs by rate or duration ride out outages
    GIVE_UP_S = 10.0

    def __init__(self, stock: apsw.Connection, sales: apsw.Connection, *, seed_value: int | None = None,
                 keep_latencies: int = 100_000) -> None:
        self.stock, self.sales = stock, sales
        self.rng = random.Random(seed_value)
        self.products = [r[0] for r in stock.execute("SELECT product_id FROM products ORDER BY product_id")]
        if not self.products:
            raise InvalidInput("the stock database has no products; seed it first")
        self.prices = dict(stock.execute("SELECT product_id, unit_price_cents FROM products"))
        last_sale = next(sales.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders"))[0]
        last_move = next(stock.execute("SELECT COALESCE(MAX(order_id), 0) FROM stock_movements"))[0]
        self.next_order = max(last_sale, last_move) + 1
        self.stats = ShopStats()
        self.keep_latencies = keep_latencies
        self.rate = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def transact(self) -> int:
        """One business transaction; returns its order id."""
        order = self.next_order
        self.next_order += 1
        now = time.time()
        lines = [(self.rng.choice(self.products), self.rng.randint(1, 4))
                 for _ in range(self.rng.randint(1, 3))]
        with self.stock:  # 1. the stock movement
            for pid, qty in lines:
                on_hand = next(self.stock.execute("SELECT on_hand FROM stock_levels WHERE product_id=?", (pid,)))[0]
                if on_hand < qty:  # restock: an inbound movement keeps the balance rule
                    self.stock.execute("INSERT INTO stock_movements(order_id, product_id, quantity, moved_at) "
                                       "VALUES (NULL, ?, ?, ?)", (pid, -500, _iso(now)))
                    self.stock.execute("UPDATE stock_levels SET on_hand = on_hand + 500 WHERE product_id=?", (pid,))
                self.stock.execute("INSERT INTO stock_movements(order_id, product_id, quantity, moved_at) "
                                   "VALUES (?, ?, ?, ?)", (order, pid, qty, _iso(now)))
                self.stock.execute("UPDATE stock_levels SET on_hand = on_hand - ? WHERE product_id=?", (qty, pid))
        with self.sales:  # 2. the sale
            self.sales.execute("INSERT INTO orders VALUES (?,?,?,?)",
                               (order, _iso(now), f"C{self.rng.randint(1, CUSTOMERS):05d}",
                                self.rng.choice(CHANNELS)))
            self.sales.executemany("INSERT INTO order_lines VALUES (?,?,?,?,?)",
                                   [(order, i + 1, pid, qty, self.prices[pid]) for i, (pid, qty) in enumerate(lines)])
        return order

    def run(self, rate: float, *, duration: float | None = None, count: int | None = None,
            on_commit: Callable[[int, float], None] | None = None) -> ShopStats:
        """Run at ``rate`` transactions/s (0 = as fast as possible) until stopped, for
        ``duration`` seconds or until ``count`` transactions committed.  A failed
        transaction is counted and retried after 50 ms; a ``count`` run raises
        :class:`~dr_kit.errors.Unavailable` once every transaction has failed for
        :attr:`GIVE_UP_S` seconds."""
        if rate < 0:
            raise InvalidInput(f"transaction rate must be >= 0, got {rate}")
        self.rate = rate
        start = time.monotonic()
        n = 0
        failing_since: float | None = None
        while not self._stop.is_set():
            if duration is not None and time.monotonic() - start >= duration:
                break
            if count is not None and n >= count:
                break
            if self.rate == 0 and duration is None and count is None:
                self._stop.wait(0.05)
                continue
            t0 = time.perf_counter()
            try:
                order = self.transact()
            except apsw.Error as e:
                self.stats.failed += 1
                self.stats.last_error = error_line(e)
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if count is not None and now - failing_since >= self.GIVE_UP_S:
                    raise Unavailable(f"the shop gave up after {n} of {count} transactions: every one "
                                      f"failed for {now - failing_since:.0f} s, the last with "
                                      f"{self.stats.last_error}") from None
                self._stop.wait(0.05)
                continue
            failing_since = None
            dt = (time.perf_counter() - t0) * 1000
            self.stats.committed += 1
            if len(self.stats.latencies_ms) < self.keep_latencies:
                self.stats.latencies_ms.append(dt)
            if on_commit:
                on_commit(order, dt)
            n += 1
            if self.rate > 0:
                target = start + n / self.rate
                delay = target - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        return self.stats

    def start(self, rate: float, **kw: Any) -> Shop:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(rate,), kwargs=kw, daemon=True,
                                        name="shop-workload")
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the current transaction (signal-handler safe)."""
        self._stop.set()

    def stop(self) -> ShopStats:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        return self.stats
