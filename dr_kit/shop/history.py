"""Months of realistic shop history before "now", generated deterministically and bulk-loaded.

A new shop holds only its catalog, so trends, ABC classes, days of cover and reorder lists
would mean nothing.  :func:`seed_history` fills both databases with ``days`` of orders
before ``now`` (about 100,000 by default), the way a shop lives:

- **demand**: weekday/weekend pattern (Friday to Sunday busiest), yearly seasonality
  (a winter peak), a gentle growth trend, day-to-day noise and an intraday profile
  (lunch and evening peaks);
- **one promotion week**: two categories at 20 % off, with demand for them surging;
- **channel drift**: web and store give way to mobile and marketplace over the period
  (stores busier at weekends);
- **products**: a long-tailed popularity (so ABC classes are meaningful) and per-category
  seasons (drinks in summer, electronics in winter);
- **restocks**: when a product's stock falls to its reorder point, a delivery is ordered
  and arrives a few days later; meanwhile a product can run out (a line is sold short or
  dropped; an order with nothing left is lost).

Restocks are stock movements too: a *negative* quantity with no order id (units coming in),
so the balance rule ``on_hand + SUM(quantity) = initial_units`` holds on every image, and
every order in sales has its stock movements (brief section 4; see
:mod:`dr_kit.shop.consistency`).  The stock database is loaded first and committed before
the sales database, as the business transaction does, so even a crash between the two
leaves a consistent (stock-ahead) image.

The rows depend only on ``(seed, days, orders, now)`` and the catalog: the same arguments
give the same history.  The workload continues from there: order ids after the last one,
timestamps after ``now``, stock levels as the history left them.

Load time (both databases on array volumes, through the VFS)::

    python -m dr_kit.shop.history_bench [--orders 100000] [--days 180]

This module generates and loads rows into open connections; it knows nothing of the
workload, the arrays or the VFS (:mod:`dr_kit.shop.workload` calls it at seeding).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import apsw

from dr_kit.errors import InvalidInput
from dr_kit.shop.schema import CHANNELS, Product

DEFAULT_DAYS = 180
DEFAULT_ORDERS = 100_000
DEFAULT_SEED = 1
HISTORY_CUSTOMERS = 5000

WEEKDAY = (0.90, 0.93, 0.96, 1.00, 1.14, 1.36, 1.24)  # Monday .. Sunday
HOURLY = (0.15, 0.08, 0.05, 0.04, 0.05, 0.12, 0.35, 0.70, 1.00, 1.10, 1.20, 1.40,
          1.65, 1.50, 1.20, 1.10, 1.15, 1.35, 1.65, 1.85, 1.75, 1.35, 0.85, 0.40)
CHANNEL_START = {"web": 0.52, "mobile": 0.18, "store": 0.24, "marketplace": 0.06}
CHANNEL_END = {"web": 0.36, "mobile": 0.40, "store": 0.14, "marketplace": 0.10}
WEEKEND_STORE = 1.6
LINES = ((1, 0.46), (2, 0.30), (3, 0.15), (4, 0.09))
QUANTITY = ((1, 0.56), (2, 0.24), (3, 0.12), (4, 0.08))
# category -> (amplitude, day of year of the peak) of its yearly season
SEASONS = {"beverages": (0.30, 200), "electronics": (0.45, 350), "household": (0.10, 80),
           "dairy": (0.05, 20), "bakery": (0.08, 340), "pantry": (0.12, 330),
           "personal care": (0.06, 150)}
SHOP_SEASON = (0.18, 350)  # the whole shop: a winter peak
GROWTH = 0.15  # demand grows by this fraction over the period
PROMO_DISCOUNT = 0.20
PROMO_DEMAND = 2.4  # promoted categories sell this much more during the week
PROMO_TRAFFIC = 1.25  # and the shop as a whole gets busier
LEAD_DAYS = (2.0, 4.0)  # a delivery arrives this many days after it is ordered
COVER_DAYS = 21  # a delivery brings stock up to this many days of expected demand
SAFETY_DAYS = 3.0  # reorder point: demand over the lead time plus this


@dataclass(frozen=True)
class HistorySummary:
    """What :func:`seed_history` loaded, and how long it took."""

    days: int
    seed: int
    start: str  # first day of the history (UTC midnight)
    end: str  # "now": every order is before it
    orders: int
    order_lines: int
    units_sold: int
    revenue_cents: int
    sale_movements: int
    restocks: int
    units_restocked: int
    lost_orders: int  # orders with nothing left in stock, not recorded
    short_lines: int  # lines sold short or dropped for lack of stock
    promotion: tuple[str, str]  # first and last day of the promotion week
    promoted_categories: tuple[str, ...]
    last_order_id: int
    generate_seconds: float = 0.0
    load_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """The generated rows, in the column order of the shop's tables."""

    orders: list[tuple[int, str, str, str]] = field(default_factory=list)
    lines: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    movements: list[tuple[int, int | None, int, int, str]] = field(default_factory=list)
    on_hand: dict[int, int] = field(default_factory=dict)
    summary: HistorySummary | None = None


def _iso(t: datetime) -> str:
    """The shop's time format (as the workload writes it)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _pick(rng: random.Random, cum: list[float]) -> int:
    return bisect.bisect_right(cum, rng.random() * cum[-1])


def _season(amp_peak: tuple[float, int], day: date) -> float:
    amp, peak = amp_peak
    return 1.0 + amp * math.cos(2 * math.pi * (day.timetuple().tm_yday - peak) / 365.25)


def _check(days: Any, orders: Any, seed: Any) -> None:
    for name, v, low in (("days", days, 1), ("orders", orders, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InvalidInput(f"history {name} must be an integer >= {low}, not {v!r}")
    if days > 3660:
        raise InvalidInput(f"history days must be at most 3660 (ten years), not {days}")
    if orders > 5_000_000:
        raise InvalidInput(f"history orders must be at most 5,000,000, not {orders}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"history seed must be an integer, not {seed!r}")


def _as_now(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        return datetime.fromtimestamp(float(now), UTC)
    if isinstance(now, datetime):
        return now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    raise InvalidInput(f"now must be a datetime or a Unix time, not {type(now).__name__}")


def generate_history(catalog: Sequence[Product], *, days: int = DEFAULT_DAYS,
                     orders: int = DEFAULT_ORDERS, seed: int = DEFAULT_SEED,
                     now: datetime | float | None = None, first_order_id: int = 1,
                     first_movement_id: int = 1) -> History:
    """The history's rows for ``catalog`` (pure: no database), deterministic in its arguments.

    ``orders`` is the number of orders the shop *tried* to take; a few are lost when
    every product in them is out of stock (``summary.lost_orders``).
    """
    _check(days, orders, seed)
    if not catalog:
        raise InvalidInput("the catalog has no products")
    t_start = time.perf_counter()
    end = _as_now(now)
    rng = random.Random(seed)
    first_day = end.date() - timedelta(days=days)
    n_days = days + 1  # the last one is today, up to now
    day_list = [first_day + timedelta(days=i) for i in range(n_days)]
    midnight = [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in day_list]

    products = sorted(catalog, key=lambda p: p.product_id)
    pids = [p.product_id for p in products]
    categories = sorted({p.category for p in products})
    # popularity: a long tail over a seeded order of the products
    ranks = list(range(1, len(products) + 1))
    rng.shuffle(ranks)
    popularity = [1.0 / r ** 0.9 for r in ranks]

    # the promotion week: a Monday about 60 % into the period, two categories
    promo_start = first_day + timedelta(days=int(days * 0.6))
    promo_start -= timedelta(days=promo_start.weekday())
    promo_days = {promo_start + timedelta(days=i) for i in range(7)}
    promoted = tuple(sorted(rng.sample(categories, min(2, len(categories)))))

    # per-day demand: weekday x season x growth x promotion x noise
    hourly_cum = _cumulative(HOURLY)
    now_sec = (end - midnight[-1]).total_seconds()
    today_share = _share_of_day_before(now_sec)
    weights = []
    for i, d in enumerate(day_list):
        w = WEEKDAY[d.weekday()] * _season(SHOP_SEASON, d) * (1 + GROWTH * i / max(1, days))
        w *= PROMO_TRAFFIC if d in promo_days else 1.0
        w *= math.exp(rng.gauss(0.0, 0.08))
        weights.append(w)
    weights[-1] *= today_share
    counts = _apportion(orders, weights)

    # per-day product and channel choice tables
    def product_cum(d: date) -> list[float]:
        out = []
        for p, pop in zip(products, popularity, strict=True):
            w = pop * _season(SEASONS.get(p.category, (0.0, 0)), d)
            if d in promo_days and p.category in promoted:
                w *= PROMO_DEMAND
            out.append(w)
        return _cumulative(out)

    def channel_cum(i: int, d: date) -> list[float]:
        f = i / max(1, days)
        w = [CHANNEL_START[c] + (CHANNEL_END[c] - CHANNEL_START[c]) * f for c in CHANNELS]
        if d.weekday() >= 5:
            w[CHANNELS.index("store")] *= WEEKEND_STORE
        return _cumulative(w)

    price = {p.product_id: p.unit_price_cents for p in products}
    promo_price = {p.product_id: int(round(p.unit_price_cents * (1 - PROMO_DISCOUNT)))
                   for p in products}
    promo_pids = {p.product_id for p in products if p.category in promoted}
    lines_cum = _cumulative([w for _, w in LINES])
    qty_cum = _cumulative([w for _, w in QUANTITY])
    mean_lines = sum(n * w for n, w in LINES) / lines_cum[-1]
    mean_qty = sum(n * w for n, w in QUANTITY) / qty_cum[-1]

    # restocking policy from the expected demand of each product
    share = [p / sum(popularity) for p in popularity]
    daily_units = orders / max(1.0, days + today_share) * mean_lines * mean_qty
    expected = {pid: max(0.5, daily_units * s) for pid, s in zip(pids, share, strict=True)}
    initial = {p.product_id: p.initial_units for p in products}
    reorder_point = {pid: math.ceil(expected[pid] * (LEAD_DAYS[1] + SAFETY_DAYS)) for pid in pids}
    order_up_to = {pid: max(initial[pid], math.ceil(expected[pid] * COVER_DAYS),
                            reorder_point[pid] * 2) for pid in pids}

    h = History(on_hand=dict(initial))
    on_hand = h.on_hand
    pending: set[int] = set()
    arrivals: list[tuple[float, int, int]] = []  # (epoch seconds, product, units)
    oid, mid = first_order_id, first_movement_id
    lost = short = restocks = units_in = units_sold = revenue = 0
    end_ts = end.timestamp()

    def receive_until(t: float) -> None:
        nonlocal mid, restocks, units_in
        while arrivals and arrivals[0][0] <= t:
            at, pid, units = heapq.heappop(arrivals)
            on_hand[pid] += units
            pending.discard(pid)
            h.movements.append((mid, None, pid, -units,
                                _iso(datetime.fromtimestamp(at, UTC))))
            mid += 1
            restocks += 1
            units_in += units

    for i, (d, n) in enumerate(zip(day_list, counts, strict=True)):
        if not n:
            continue
        p_cum = product_cum(d)
        c_cum = channel_cum(i, d)
        limit = now_sec if i == n_days - 1 else 86400.0
        seconds = sorted(_time_of_day(rng, hourly_cum, limit) for _ in range(n))
        base = midnight[i].timestamp()
        prefix = d.isoformat() + "T"
        in_promo = d in promo_days
        for sec in seconds:
            t = base + sec
            receive_until(t)
            us = int(round(sec * 1_000_000))
            s_int, frac = divmod(us, 1_000_000)
            hh, rem = divmod(s_int, 3600)
            mm, ss = divmod(rem, 60)
            at = f"{prefix}{hh:02d}:{mm:02d}:{ss:02d}.{frac:06d}Z"
            wanted: list[tuple[int, int]] = []
            seen: set[int] = set()
            for _ in range(LINES[_pick(rng, lines_cum)][0]):
                pid = pids[_pick(rng, p_cum)]
                if pid in seen:
                    continue
                seen.add(pid)
                wanted.append((pid, QUANTITY[_pick(rng, qty_cum)][0]))
            customer = f"C{int(HISTORY_CUSTOMERS * rng.random() ** 2) + 1:05d}"
            channel = CHANNELS[_pick(rng, c_cum)]
            sold: list[tuple[int, int]] = []
            for pid, q in wanted:
                take = min(q, on_hand[pid])
                if take < q:
                    short += 1
                if take:
                    on_hand[pid] -= take
                    sold.append((pid, take))
                if on_hand[pid] <= reorder_point[pid] and pid not in pending:
                    lead = rng.uniform(*LEAD_DAYS) * 86400.0
                    units = order_up_to[pid] - on_hand[pid]
                    heapq.heappush(arrivals, (t + lead, pid, units))
                    pending.add(pid)
            if not sold:
                lost += 1
                continue
            h.orders.append((oid, at, customer, channel))
            for line_no, (pid, q) in enumerate(sold, start=1):
                unit = promo_price[pid] if in_promo and pid in promo_pids else price[pid]
                h.lines.append((oid, line_no, pid, q, unit))
                h.movements.append((mid, oid, pid, q, at))
                mid += 1
                units_sold += q
                revenue += q * unit
            oid += 1
    receive_until(end_ts - 1e-6)  # deliveries due before now have arrived

    promo_end = promo_start + timedelta(days=6)
    h.summary = HistorySummary(
        days=days, seed=seed, start=_iso(midnight[0]), end=_iso(end),
        orders=len(h.orders), order_lines=len(h.lines), units_sold=units_sold,
        revenue_cents=revenue, sale_movements=len(h.lines), restocks=restocks,
        units_restocked=units_in, lost_orders=lost, short_lines=short,
        promotion=(promo_start.isoformat(), promo_end.isoformat()),
        promoted_categories=promoted, last_order_id=oid - 1,
        generate_seconds=time.perf_counter() - t_start)
    return h


def _share_of_day_before(sec: float) -> float:
    """The fraction of a day's orders (by the intraday profile) placed before ``sec``."""
    hour, frac = divmod(max(0.0, min(86400.0, sec)) / 3600.0, 1.0)
    full = sum(HOURLY[: int(hour)])
    part = HOURLY[int(hour)] * frac if hour < 24 else 0.0
    return (full + part) / sum(HOURLY)


def _time_of_day(rng: random.Random, hourly_cum: list[float], limit: float) -> float:
    """Seconds after midnight, following the intraday profile, below ``limit`` (inverse CDF)."""
    if limit >= 86400.0:
        top = hourly_cum[-1]
    else:
        hour, frac = divmod(max(0.0, limit) / 3600.0, 1.0)
        h = int(hour)
        top = (hourly_cum[h - 1] if h else 0.0) + HOURLY[h] * frac
    x = rng.random() * top
    h = min(bisect.bisect_right(hourly_cum, x), len(HOURLY) - 1)
    low = hourly_cum[h - 1] if h else 0.0
    return min((h + (x - low) / HOURLY[h]) * 3600.0, max(0.0, limit - 1e-6))


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders; sums exactly)."""
    w = sum(weights)
    if total == 0 or w <= 0:
        return [0] * len(weights)
    exact = [total * x / w for x in weights]
    counts = [int(x) for x in exact]
    rest = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[:rest]:
        counts[i] += 1
    return counts


HISTORY_ENV = "DR_KIT_SHOP_HISTORY"


def history_options(value: str | None = None) -> dict[str, int]:
    """The history a new lab shop gets: :func:`dr_kit.shop.workload.seed` keywords.

    180 days, 100,000 orders, seed 1 by default; ``$DR_KIT_SHOP_HISTORY`` (or ``value``)
    changes it: ``off`` (or ``0``) for none, else ``days=30,orders=5000,seed=2`` (any of
    the three).
    """
    raw = (os.environ.get(HISTORY_ENV, "") if value is None else value).strip()
    opts = {"history_days": DEFAULT_DAYS, "history_orders": DEFAULT_ORDERS,
            "history_seed": DEFAULT_SEED}
    if not raw:
        return opts
    if raw.lower() in ("off", "0", "no", "none"):
        return {**opts, "history_days": 0}
    keys = {"days": "history_days", "orders": "history_orders", "seed": "history_seed"}
    for item in raw.split(","):
        k, sep, v = item.partition("=")
        k = k.strip().lower()
        if not sep or k not in keys:
            raise InvalidInput(f"{HISTORY_ENV}={raw!r}: expected 'off' or "
                               "days=N,orders=N,seed=N")
        try:
            opts[keys[k]] = int(v.strip())
        except ValueError:
            raise InvalidInput(f"{HISTORY_ENV}: {k} must be an integer, not {v.strip()!r}"
                               ) from None
    _check(max(1, opts["history_days"]), opts["history_orders"], opts["history_seed"])
    if opts["history_days"] < 0:
        raise InvalidInput(f"{HISTORY_ENV}: days must be >= 0")
    return opts


# --- loading ------------------------------------------------------------------------------------


def _catalog_from(stock: apsw.Connection) -> list[Product]:
    rows = list(stock.execute(
        "SELECT p.product_id, p.name, p.category, p.unit_price_cents, l.initial_units "
        "FROM products p JOIN stock_levels l ON l.product_id = p.product_id "
        "ORDER BY p.product_id"))
    return [Product(*r) for r in rows]


def seed_history(stock: apsw.Connection, sales: apsw.Connection, days: int = DEFAULT_DAYS, *,
                 seed: int = DEFAULT_SEED, now: datetime | float | None = None,
                 orders: int = DEFAULT_ORDERS) -> HistorySummary:
    """Generate ``days`` of history before ``now`` and bulk-load it into a new shop.

    ``stock`` and ``sales`` are the shop's two connections (apsw, e.g. through the array
    VFS: :func:`dr_kit.shop.workload.open_shop`), already seeded with the catalog
    (:func:`dr_kit.shop.workload.seed`) and holding no orders yet; anything else is
    refused with :class:`InvalidInput` and nothing is written.  ``now`` defaults to the
    current time.  Each database is loaded in one transaction of prepared
    ``executemany`` inserts, stock first (as the business transaction commits).
    """
    _check(days, orders, seed)
    catalog = _catalog_from(stock)
    if not catalog:
        raise InvalidInput("the stock database has no products; seed the catalog first")
    cut = pending_history(stock, sales)
    if cut is not None:
        return _finish_history(stock, sales, catalog, cut)
    sold = next(sales.execute("SELECT COUNT(*) FROM orders"))[0]
    moved = next(stock.execute("SELECT COUNT(*) FROM stock_movements"))[0]
    changed = next(stock.execute("SELECT COUNT(*) FROM stock_levels "
                                 "WHERE on_hand <> initial_units"))[0]
    if sold or moved or changed:
        raise InvalidInput(f"history goes into a new shop, but this one already has {sold} "
                           f"orders and {moved} stock movements")
    end = _as_now(now)
    h = generate_history(catalog, days=days, orders=orders, seed=seed, now=end)
    assert h.summary is not None
    t0 = time.perf_counter()
    # the stock part first, as the business transaction commits; with it, in the same
    # transaction, what it was generated from: a crash before the sales part commits
    # leaves a load the next seed_history completes (pending_history)
    _bulk(stock, [
        (HISTORY_LOAD_DDL, [()]),
        ("INSERT INTO history_load (days, orders, seed, now) VALUES (?, ?, ?, ?)",
         [(days, orders, seed, end.isoformat())]),
        ("INSERT INTO stock_movements (movement_id, order_id, product_id, quantity, moved_at) "
         "VALUES (?, ?, ?, ?, ?)", h.movements),
        ("UPDATE stock_levels SET on_hand = ? WHERE product_id = ?",
         [(units, pid) for pid, units in sorted(h.on_hand.items())]),
    ])
    _load_sales(sales, h, stock)
    return _replace(h.summary, load_seconds=time.perf_counter() - t0)


# what a history load was generated from, kept in the stock database from the stock part's
# commit until the sales part's (then dropped: a whole shop carries no trace of its load)
HISTORY_LOAD_DDL = ("CREATE TABLE IF NOT EXISTS history_load (days INTEGER NOT NULL, "
                    "orders INTEGER NOT NULL, seed INTEGER NOT NULL, now TEXT NOT NULL)")


def _load_sales(sales: apsw.Connection, h: History, stock: apsw.Connection) -> None:
    """The sales part of a load whose stock part is committed; then the stock database
    forgets the load (a crash before that leaves the table behind, with orders in sales:
    nothing pending)."""
    _bulk(sales, [
        ("INSERT INTO orders (order_id, ordered_at, customer, channel) VALUES (?, ?, ?, ?)",
         h.orders),
        ("INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents) "
         "VALUES (?, ?, ?, ?, ?)", h.lines),
    ])
    with stock:
        stock.execute("DROP TABLE IF EXISTS history_load")


def pending_history(stock: apsw.Connection, sales: apsw.Connection) -> dict[str, Any] | None:
    """A history load cut between its two commits (a crash after the stock database's,
    before the sales database's): what it was generated from, or None when there is none.

    Its stock movements are in the stock database and no order is in the sales database;
    :func:`seed_history` completes it from these arguments (the history is deterministic
    in them)."""
    if not next(stock.execute("SELECT COUNT(*) FROM sqlite_master "
                              "WHERE type = 'table' AND name = 'history_load'"))[0]:
        return None
    row = next(stock.execute("SELECT days, orders, seed, now FROM history_load "
                             "ORDER BY rowid DESC LIMIT 1"), None)
    if row is None or next(sales.execute("SELECT COUNT(*) FROM orders"))[0]:
        return None
    days, orders, seed, now = row
    return {"days": int(days), "orders": int(orders), "seed": int(seed), "now": str(now)}


def _finish_history(stock: apsw.Connection, sales: apsw.Connection, catalog: list[Product],
                    cut: dict[str, Any]) -> HistorySummary:
    """Load the sales part of a history whose stock part was committed (pending_history)."""
    h = generate_history(catalog, days=cut["days"], orders=cut["orders"], seed=cut["seed"],
                         now=datetime.fromisoformat(cut["now"]))
    assert h.summary is not None
    n, last = next(stock.execute("SELECT COUNT(*), MAX(movement_id) FROM stock_movements"))
    want = (len(h.movements), h.movements[-1][0] if h.movements else None)
    if (n, last) != want:
        raise InvalidInput(
            f"the stock database holds a history load cut short ({cut['days']} days, seed "
            f"{cut['seed']}), but {n} stock movements where that history has {want[0]}: it "
            "cannot be completed; start from a new shop")
    t0 = time.perf_counter()
    _load_sales(sales, h, stock)
    return _replace(h.summary, load_seconds=time.perf_counter() - t0)


def _replace(s: HistorySummary, **kw: Any) -> HistorySummary:
    return HistorySummary(**{**asdict(s), **kw})


def _bulk(conn: apsw.Connection, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
    """One transaction; a page cache big enough that nothing spills before the commit."""
    cache = next(conn.execute("PRAGMA cache_size"))[0]
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB, for the load only
    try:
        with conn:
            for sql, rows in statements:
                conn.executemany(sql, rows)
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")
