"""Sales and stock analytics on the shop's two databases, stamped with where the data came from.

An analyst opens the pair once and calls analyses that return pandas DataFrames::

    dbs = open_sqlite(stock_path, sales_path, snapshot="snap-1", sequence=4711, ...)
    dbs = open_databases("oracle+oracledb://shop@db/stock", "oracle+oracledb://shop@db/sales")
    revenue_by_day(dbs)            # one row per day: orders, units, revenue_cents, revenue
    dbs.close()

Every result carries ``df.attrs["provenance"]`` (a :class:`Provenance`: snapshot name,
consistency point, lag at snapshot time, source and the consistency :class:`Verdict`
from :mod:`dr_kit.shop.consistency`) and ``df.attrs["stamp"]``, its one-line form.  When
the verdict says *collapsed* or *corrupt*, every result also raises an
:class:`InconsistentCopyWarning` and sets ``df.attrs["consistent"] = False``; with
``on_inconsistent="raise"`` the analyses refuse to run instead.

Aggregation happens in SQL (SQLAlchemy Core ``select()``), so big databases stay fast; the
statements are portable and run unchanged on SQLite, PostgreSQL and Oracle (the tests
compile all of them for Oracle, see :func:`statements`).  The stock and sales databases
are separate, so a figure that needs both (units sold vs on hand, days of cover, the
reconciliation) is one aggregate query per database, joined per product in pandas.

All connections only read: SQLite through the read-only apsw adapter
(:mod:`dr_kit.sqlite.dbapi`), PostgreSQL and Oracle inside ``SET TRANSACTION READ ONLY``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    Engine,
    Integer,
    String,
    column,
    create_engine,
    distinct,
    event,
    func,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql import Select

from dr_kit.errors import Conflict, DrKitError, InvalidInput, Unavailable
from dr_kit.shop.consistency import Verdict, judge

PASSWORD_ENV = "DR_KIT_DB_PASSWORD"

# --- the shop's tables, as SQLAlchemy sees them (DDL lives in dr_kit.shop.schema) ---------

products = table(
    "products",
    column("product_id", Integer), column("name", String), column("category", String),
    column("unit_price_cents", Integer),
)
stock_levels = table(
    "stock_levels",
    column("product_id", Integer), column("on_hand", Integer), column("initial_units", Integer),
)
stock_movements = table(
    "stock_movements",
    column("movement_id", Integer), column("order_id", Integer), column("product_id", Integer),
    column("quantity", Integer), column("moved_at", String),
)
orders = table(
    "orders",
    column("order_id", Integer), column("ordered_at", String), column("customer", String),
    column("channel", String),
)
order_lines = table(
    "order_lines",
    column("order_id", Integer), column("line_no", Integer), column("product_id", Integer),
    column("quantity", Integer), column("unit_price_cents", Integer),
)

Db = Literal["stock", "sales"]


# --- provenance -------------------------------------------------------------------------


class InconsistentCopyWarning(UserWarning):
    """The databases analysed are a collapsed or corrupt copy; the figures are not trustworthy."""


def _as_time(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"point_time {value!r} is not an ISO-8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Provenance:
    """Where a result's data came from and whether that data is a consistent image.

    ``sequence``/``point_time`` are the consistency point the snapshot froze; ``lag_*``
    the replication lag at snapshot time (``None`` = unknown, never 0 for unknown);
    ``source`` says which databases (URLs with passwords masked, or the lab volumes).
    """

    snapshot: str | None
    sequence: int | None
    point_time: datetime | None
    lag_entries: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    source: str
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def consistent(self) -> bool:
        return self.verdict.consistent

    def stamp(self) -> str:
        """One line for a notebook, a report footer or a log."""
        parts = [f"snapshot {self.snapshot}" if self.snapshot else "live databases (no snapshot)"]
        if self.sequence is not None or self.point_time is not None:
            seq = f"seq {self.sequence}" if self.sequence is not None else "seq ?"
            at = f" at {_fmt_time(self.point_time)}" if self.point_time else ""
            parts.append(f"consistency point {seq}{at}")
        lag = []
        if self.lag_entries is not None:
            lag.append(f"{self.lag_entries} entries")
        if self.lag_bytes is not None:
            lag.append(f"{self.lag_bytes} bytes")
        if self.lag_seconds is not None:
            lag.append(f"{self.lag_seconds:.3f} s")
        elif lag:
            lag.append("time lag unknown")
        if lag:
            parts.append("lag at snapshot " + ", ".join(lag))
        elif self.snapshot:
            parts.append("lag at snapshot unknown")
        parts.append(f"source {self.source}")
        head = " | ".join(parts)
        if self.consistent:
            return f"{head} | {self.verdict.summary()}"
        return (f"!! NOT A CONSISTENT COPY: {self.verdict.summary()} - figures below are "
                f"not trustworthy !! | {head}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot, "sequence": self.sequence,
            "point_time": _fmt_time(self.point_time) if self.point_time else None,
            "lag_entries": self.lag_entries, "lag_bytes": self.lag_bytes,
            "lag_seconds": self.lag_seconds, "source": self.source,
            "verdict": self.verdict.to_dict(), "stamp": self.stamp(),
        }

    def __str__(self) -> str:
        return self.stamp()


# --- the pair of databases ------------------------------------------------------------------


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***`` (also for unparsable text)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - whatever it is, never echo a password
        return _mask_unparsed(str(url))


def _mask_unparsed(s: str) -> str:
    """Hide whatever sits between ``user:`` and the last ``@`` of text that is not a URL."""
    at = s.rfind("@")
    if at < 0:
        return s
    head = s[:at]
    start = head.find("//") + 2 if "//" in head else 0
    colon = head.find(":", start)
    return s if colon < 0 else s[: colon + 1] + "***" + s[at:]


def _engine_source(engine: Engine) -> str:
    return mask_url(engine.url)


class ShopDatabases:
    """The stock and sales databases of one image (a snapshot, a restore, or the main site).

    Holds one SQLAlchemy engine per database and the image's provenance.  The consistency
    verdict is computed once, on first use, through the engines (:meth:`recheck` computes
    it again).  ``on_inconsistent`` is ``"warn"`` (default: results are flagged and an
    :class:`InconsistentCopyWarning` is raised) or ``"raise"`` (analyses refuse with
    :class:`~dr_kit.errors.Conflict`).
    """

    def __init__(self, stock: Engine, sales: Engine, *, snapshot: str | None = None,
                 sequence: int | None = None, point_time: datetime | str | None = None,
                 lag_entries: int | None = None, lag_bytes: int | None = None,
                 lag_seconds: float | None = None, source: str | None = None,
                 on_inconsistent: Literal["warn", "raise"] = "warn",
                 integrity_check: bool = True,
                 _secrets: tuple[str, ...] = ()) -> None:
        if on_inconsistent not in ("warn", "raise"):
            raise InvalidInput(f"on_inconsistent must be 'warn' or 'raise', not {on_inconsistent!r}")
        for name, v in (("sequence", sequence), ("lag_entries", lag_entries),
                        ("lag_bytes", lag_bytes)):
            if v is not None and (not isinstance(v, int) or v < 0):
                raise InvalidInput(f"{name} must be a non-negative integer or None, not {v!r}")
        if lag_seconds is not None and (not isinstance(lag_seconds, (int, float))
                                        or lag_seconds < 0 or math.isnan(lag_seconds)):
            raise InvalidInput(f"lag_seconds must be >= 0 or None (unknown), not {lag_seconds!r}")
        self.engines: dict[str, Engine] = {"stock": stock, "sales": sales}
        self.on_inconsistent = on_inconsistent
        self.integrity_check = integrity_check
        self._secrets = tuple(s for s in _secrets if s)
        self._point = dict(
            snapshot=snapshot, sequence=sequence, point_time=_as_time(point_time),
            lag_entries=lag_entries, lag_bytes=lag_bytes,
            lag_seconds=float(lag_seconds) if lag_seconds is not None else None,
            source=source or f"stock={_engine_source(stock)} sales={_engine_source(sales)}",
        )
        self._provenance: Provenance | None = None

    @property
    def stock(self) -> Engine:
        return self.engines["stock"]

    @property
    def sales(self) -> Engine:
        return self.engines["sales"]

    def __repr__(self) -> str:
        return (f"ShopDatabases(snapshot={self._point['snapshot']!r}, "
                f"source={self._scrub(self._point['source'])!r})")

    def __enter__(self) -> ShopDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every pooled connection of both engines."""
        for engine in self.engines.values():
            engine.dispose()

    # -- provenance -----------------------------------------------------------------------

    @property
    def provenance(self) -> Provenance:
        if self._provenance is None:
            self._provenance = Provenance(**self._point, verdict=self._judge())
        return self._provenance

    def recheck(self) -> Provenance:
        """Judge the image again (for databases that may have changed since)."""
        self._provenance = None
        return self.provenance

    def _query_fn(self, db: Db) -> Callable[[str], list[Any]]:
        def run(sql: str) -> list[Any]:
            with self.engines[db].connect() as conn:
                return list(conn.execute(text(sql)).all())
        return run

    def _integrity(self) -> dict[str, str] | None:
        if not self.integrity_check:
            return None
        out = {}
        for db, engine in self.engines.items():
            if engine.dialect.name != "sqlite":
                continue
            with engine.connect() as conn:
                rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
            out[db] = "ok" if rows == ["ok"] else "; ".join(rows[:3])
        return out or None

    def _judge(self) -> Verdict:
        try:
            return judge(self._query_fn("stock"), self._query_fn("sales"),
                         integrity=self._integrity())
        except sa_exc.SQLAlchemyError as e:
            err = self._db_error(e, "judging the image")
            if isinstance(err, Unavailable):
                raise err from None
            return Verdict(error=str(err))

    # -- running statements ---------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        for s in self._secrets:
            message = message.replace(s, "***")
        return message

    def _db_error(self, e: sa_exc.SQLAlchemyError, doing: str, db: str | None = None
                  ) -> DrKitError:
        where = f" on the {db} database" if db else ""
        orig = getattr(e, "orig", None) or e
        first = self._scrub(str(orig).strip().splitlines()[0] if str(orig).strip() else
                            type(orig).__name__)
        if isinstance(orig, DrKitError):
            return type(orig)(self._scrub(str(orig)))
        if getattr(e, "connection_invalidated", False) or (
                isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError))
                and _is_connect_error(e)):
            return Unavailable(f"database unreachable while {doing}{where}: {first}")
        return InvalidInput(f"query failed while {doing}{where}: {first}")

    def fetch(self, db: Db, stmt: Select | Any, params: Mapping[str, Any] | None = None
              ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one statement on ``db`` ("stock" or "sales"); column names and rows."""
        if db not in self.engines:
            raise InvalidInput(f"database must be 'stock' or 'sales', not {db!r}")
        try:
            with self.engines[db].connect() as conn:
                result = conn.execute(stmt, dict(params or {}))
                return list(result.keys()), [tuple(r) for r in result.all()]
        except sa_exc.SQLAlchemyError as e:
            raise self._db_error(e, "running an analysis", db) from None

    def result(self, df: pd.DataFrame, analysis: str, **params: Any) -> pd.DataFrame:
        """Stamp ``df`` with this image's provenance (and warn when it is not consistent)."""
        prov = self.provenance
        df.attrs["provenance"] = prov
        df.attrs["stamp"] = prov.stamp()
        df.attrs["consistent"] = prov.consistent
        df.attrs["analysis"] = analysis
        df.attrs["params"] = dict(params)
        if not prov.consistent:
            df.attrs["warning"] = prov.stamp()
            warnings.warn(f"{analysis}: {prov.stamp()}", InconsistentCopyWarning, stacklevel=3)
        return df

    def _guard(self, analysis: str) -> None:
        if self.on_inconsistent == "raise" and not self.provenance.consistent:
            raise Conflict(f"{analysis} refused: the databases are not a consistent copy "
                           f"({self.provenance.verdict.summary()})")

    def query(self, sql: str, params: Mapping[str, Any] | None = None, *, db: Db = "sales",
              limit: int | None = None) -> pd.DataFrame:
        """An ad hoc read-only query on one database, as :func:`run_query`, with provenance."""
        if db not in self.engines:
            raise InvalidInput(f"database must be 'stock' or 'sales', not {db!r}")
        self._guard("query")
        df = run_query(self.engines[db], sql, params, limit=limit)
        return self.result(df, "query", db=db, sql=sql)


def _is_connect_error(e: Exception) -> bool:
    text_ = str(getattr(e, "orig", e)).lower()
    return any(w in text_ for w in (
        "connection refused", "could not connect", "connection to server", "timeout",
        "timed out", "unable to open database", "name or service not known",
        "could not translate host", "no route to host", "dpy-6005", "dpy-6000",
        "ora-12541", "ora-12514", "ora-12170", "tns:", "closed database", "server closed",
    ))


# --- opening ----------------------------------------------------------------------------------


_READ_ONLY: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines whose transactions only read


def _read_only_transactions(engine: Engine) -> None:
    """Make every transaction on a server engine read-only (first statement of each)."""
    if engine.dialect.name not in ("postgresql", "oracle"):
        return

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")

    _READ_ONLY.add(engine)


def _sqlite_engine(label: str, path: str | os.PathLike[str], vfs: str | None,
                   recover: bool) -> Engine:
    """A read-only engine on one SQLite file, opened with apsw (through ``vfs`` if given)."""
    import apsw

    from dr_kit.sqlite.dbapi import engine_for_apsw

    p = os.fspath(path)
    if vfs is None and not os.path.isfile(p):
        raise InvalidInput(f"{label} database file {p} not found")
    flags = apsw.SQLITE_OPEN_READWRITE if recover else apsw.SQLITE_OPEN_READONLY

    def factory() -> apsw.Connection:
        return apsw.Connection(p, flags=flags, vfs=vfs)

    return engine_for_apsw(factory, read_only=True)


def open_sqlite(stock_path: str | os.PathLike[str], sales_path: str | os.PathLike[str], *,
                vfs: str | None = None, recover: bool = True, **provenance: Any
                ) -> ShopDatabases:
    """The pair as SQLite files opened with apsw (through ``vfs``, e.g. the array's), read-only.

    With ``recover`` (default) the files are opened read-write at the file level so that
    SQLite can roll back a hot journal left by the crash the image froze (a snapshot's
    writable clone); statements still cannot write.  Without it, they are opened
    ``SQLITE_OPEN_READONLY``.  Remaining keywords are the provenance (see
    :class:`ShopDatabases`).
    """
    stock = _sqlite_engine("stock", stock_path, vfs, recover)
    sales = _sqlite_engine("sales", sales_path, vfs, recover)
    provenance.setdefault("source", f"sqlite stock={os.fspath(stock_path)} "
                                    f"sales={os.fspath(sales_path)}"
                                    + (f" (vfs {vfs})" if vfs else ""))
    dbs = ShopDatabases(stock, sales, **provenance)
    _probe(dbs)
    return dbs


def _prepare_url(raw: str | URL, label: str, password: str | None, password_env: str
                 ) -> tuple[URL, str | None]:
    try:
        url = raw if isinstance(raw, URL) else make_url(str(raw).strip())
    except (sa_exc.ArgumentError, ValueError, TypeError):
        raise InvalidInput(f"malformed {label} database URL {mask_url(str(raw))!r}; expected "
                           "dialect+driver://user@host[:port]/database, e.g. "
                           "oracle+oracledb://shop@db.example:1521/?service_name=STOCK") from None
    if not url.drivername or (url.drivername.split("+")[0] != "sqlite" and not url.host):
        raise InvalidInput(f"malformed {label} database URL {mask_url(url)!r}: no host")
    secret = password if password is not None else url.password
    if secret is None and url.drivername.split("+")[0] != "sqlite":
        secret = os.environ.get(password_env) or None
    if secret is not None and url.drivername.split("+")[0] != "sqlite":
        url = url.set(password=secret)
    return url, (str(secret) if secret is not None else None)


def open_databases(stock_url: str | URL, sales_url: str | URL, *, password: str | None = None,
                   password_env: str = PASSWORD_ENV, **provenance: Any) -> ShopDatabases:
    """The pair from two SQLAlchemy URLs (real mode), read-only, reachable or an error.

    The password comes from ``password``, else from the URL, else from the environment
    variable ``password_env`` (``$DR_KIT_DB_PASSWORD``); it is never printed: URLs in
    ``repr``, provenance and errors are masked.  A ``sqlite:///path`` URL is opened through
    the read-only apsw adapter.  Malformed URL -> :class:`InvalidInput`; unreachable
    database -> :class:`Unavailable`.  Remaining keywords are the provenance
    (``snapshot=``, ``sequence=``, ``point_time=``, ``lag_*=``, ``source=``).
    """
    (surl, s_secret), (lurl, l_secret) = (
        _prepare_url(stock_url, "stock", password, password_env),
        _prepare_url(sales_url, "sales", password, password_env),
    )
    secrets = tuple(s for s in (s_secret, l_secret) if s)
    engines = []
    for label, url in (("stock", surl), ("sales", lurl)):
        if url.drivername.split("+")[0] == "sqlite":
            if not url.database or url.database == ":memory:":
                raise InvalidInput(f"{label} sqlite URL needs a file path: "
                                   f"sqlite:///path/to/{label}.db")
            engines.append(_sqlite_engine(label, url.database, None, True))
            continue
        try:
            engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
        except (sa_exc.NoSuchModuleError, ImportError) as e:
            raise InvalidInput(f"unsupported {label} database URL {mask_url(url)!r}: "
                               f"{_scrub(str(e), secrets)}") from None
        except sa_exc.ArgumentError as e:
            raise InvalidInput(f"bad {label} database URL {mask_url(url)!r}: "
                               f"{_scrub(str(e), secrets)}") from None
        _read_only_transactions(engine)
        engines.append(engine)
    provenance.setdefault("source", f"stock={mask_url(surl)} sales={mask_url(lurl)}")
    dbs = ShopDatabases(engines[0], engines[1], _secrets=secrets, **provenance)
    _probe(dbs)
    return dbs


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        message = message.replace(s, "***")
    return message.strip().splitlines()[0] if message.strip() else message


def _probe(dbs: ShopDatabases) -> None:
    """Connect to both databases once, so an unreachable one fails now, in one line."""
    for db, engine in dbs.engines.items():
        try:
            with engine.connect():
                pass
        except sa_exc.SQLAlchemyError as e:
            orig = getattr(e, "orig", None) or e
            dbs.close()
            raise Unavailable(f"cannot reach the {db} database {mask_url(engine.url)}: "
                              f"{_scrub(str(orig), dbs._secrets)}") from None
        except DrKitError:
            dbs.close()
            raise


# --- ad hoc queries -------------------------------------------------------------------------

# words that make a statement write or lock, wherever they appear outside strings/comments
# (a WITH can wrap a DELETE; SELECT ... INTO creates a table); the read-only transaction
# the query runs in is the second guard
_WRITE_WORDS = frozenset({
    "insert", "update", "delete", "merge", "upsert", "create", "drop", "alter", "truncate",
    "grant", "revoke", "into", "attach", "detach", "pragma", "vacuum", "reindex", "lock",
})
_TOKEN = re.compile(
    r"""\s+|--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]"""
    r"""|(?P<dollar>\$(?P<tag>[A-Za-z_]*)\$)|(?P<word>[A-Za-z_][A-Za-z_0-9$#]*)|(?P<semi>;)|.""",
    re.DOTALL,
)


def check_select(sql: str) -> None:
    """Refuse anything but one SELECT (or WITH ... SELECT) statement, before it reaches a server."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput("empty query; give one SELECT statement")
    words: list[str] = []
    statements, ended = 0, False
    pos, n = 0, len(sql)
    while pos < n:
        m = _TOKEN.match(sql, pos)
        assert m is not None  # the last alternative matches any character
        if m.group("dollar") is not None:  # PostgreSQL $tag$ ... $tag$ string
            close = sql.find(m.group("dollar"), m.end())
            if close < 0:
                raise InvalidInput("unterminated $-quoted string in query")
            pos = close + len(m.group("dollar"))
            continue
        tok = m.group(0)
        if tok[:1] in ("'", '"') and (len(tok) < 2 or tok[-1] != tok[0]):
            raise InvalidInput("unterminated quoted string in query")
        if tok.startswith("/*") and not tok.endswith("*/"):
            raise InvalidInput("unterminated comment in query")
        if m.group("semi"):
            ended = True
        elif tok.strip() and not tok.startswith(("--", "/*")):
            if ended or statements == 0:
                statements += 1
                ended = False
            if m.group("word"):
                words.append(tok.lower())
        pos = m.end()
    if statements == 0:
        raise InvalidInput("empty query; give one SELECT statement")
    if statements > 1:
        raise InvalidInput("only one statement per query; remove the ';' and what follows it")
    if not words or words[0] not in ("select", "with"):
        first = words[0].upper() if words else sql.strip().split()[0]
        raise InvalidInput(f"only SELECT queries are allowed (read-only), not {first}")
    bad = sorted({w for w in words if w in _WRITE_WORDS})
    # FOR UPDATE / FOR SHARE take row locks on a server: refused as well
    if "for" in words:
        i = words.index("for")
        if i + 1 < len(words) and words[i + 1] in ("update", "share", "no"):
            bad = sorted(set(bad) | {"for update"})
    if bad:
        raise InvalidInput(f"only read-only SELECT queries are allowed; found {', '.join(bad).upper()}")


def run_query(engine: Engine, sql: str, params: Mapping[str, Any] | None = None, *,
              limit: int | None = None) -> pd.DataFrame:
    """Run one read-only SELECT (or WITH ... SELECT) on ``engine``; the rows as a DataFrame.

    Parameters are bound, never interpolated: write ``:name`` in the SQL and pass
    ``{"name": value}``.  Anything else than a single SELECT is refused with
    :class:`InvalidInput` before it is sent; the statement also runs in a read-only
    transaction (``SET TRANSACTION READ ONLY`` on PostgreSQL and Oracle, ``PRAGMA
    query_only`` on SQLite) that is rolled back afterwards.  ``limit`` caps the rows fetched.
    """
    check_select(sql)
    if params is not None and not isinstance(params, Mapping):
        raise InvalidInput("query parameters must be a mapping of name -> value (use :name in SQL)")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"limit must be a non-negative integer, not {limit!r}")
    stmt = text(sql)
    missing = sorted(set(stmt.compile().params) - set(params or {}))
    if missing:
        raise InvalidInput(f"query parameter(s) not given: {', '.join(missing)}")
    try:
        with engine.connect() as conn:
            restore_query_only = False
            if conn.dialect.name == "sqlite":
                was = conn.exec_driver_sql("PRAGMA query_only").scalar()
                if not was:
                    conn.exec_driver_sql("PRAGMA query_only = 1")
                    restore_query_only = True
            elif conn.dialect.name in ("postgresql", "oracle") and engine not in _READ_ONLY:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                result = conn.execute(stmt, dict(params or {}))
                if not result.returns_rows:
                    raise InvalidInput("the query returned no rows description; give a SELECT")
                cols = list(result.keys())
                rows = result.fetchmany(limit) if limit is not None else result.all()
            finally:
                conn.rollback()
                if restore_query_only:
                    conn.exec_driver_sql("PRAGMA query_only = 0")
    except sa_exc.SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        if isinstance(orig, DrKitError):
            raise type(orig)(str(orig)) from None
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        if getattr(e, "connection_invalidated", False) or _is_connect_error(e):
            raise Unavailable(f"database {mask_url(engine.url)} unreachable: {first}") from None
        raise InvalidInput(f"query failed: {first}") from None
    return pd.DataFrame([tuple(r) for r in rows], columns=cols)


# --- parameters -----------------------------------------------------------------------------


def _bound(value: date | datetime | str | None, name: str) -> str | None:
    """A time bound as ISO text comparable with the stored ISO-8601 UTC strings."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{name} {value!r} is not an ISO-8601 date or time") from None
        return value
    raise InvalidInput(f"{name} must be a date, datetime or ISO string, not {type(value).__name__}")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"{name} must be a positive integer, not {value!r}")
    return value


# --- statements -----------------------------------------------------------------------------

_DAY = func.substr(orders.c.ordered_at, literal_column("1"), literal_column("10"))
_LINE_REVENUE = order_lines.c.quantity * order_lines.c.unit_price_cents


def _window(stmt: Select, since: str | None, until: str | None) -> Select:
    if since is not None:
        stmt = stmt.where(orders.c.ordered_at >= since)
    if until is not None:
        stmt = stmt.where(orders.c.ordered_at < until)
    return stmt


def q_revenue(by: Literal["day", "category", "channel"], since: str | None = None,
              until: str | None = None) -> Select:
    """Sales DB: orders, units and revenue (cents) per day, product category or channel."""
    key = {"day": _DAY, "category": products.c.category, "channel": orders.c.channel}[by]
    src = orders.join(order_lines, order_lines.c.order_id == orders.c.order_id)
    if by == "category":
        src = src.join(products, products.c.product_id == order_lines.c.product_id)
    stmt = (select(key.label(by),
                   func.count(distinct(orders.c.order_id)).label("orders"),
                   func.sum(order_lines.c.quantity).label("units"),
                   func.sum(_LINE_REVENUE).label("revenue_cents"))
            .select_from(src).group_by(key).order_by(key))
    return _window(stmt, since, until)


def q_top_products(n: int, by: Literal["revenue", "units"], since: str | None = None,
                   until: str | None = None) -> Select:
    """Sales DB: the ``n`` best products by revenue or units (ties by product id)."""
    units = func.sum(order_lines.c.quantity)
    revenue = func.sum(_LINE_REVENUE)
    metric = revenue if by == "revenue" else units
    stmt = (select(products.c.product_id, products.c.name, products.c.category,
                   units.label("units"), revenue.label("revenue_cents"))
            .select_from(order_lines.join(orders, orders.c.order_id == order_lines.c.order_id)
                         .join(products, products.c.product_id == order_lines.c.product_id))
            .group_by(products.c.product_id, products.c.name, products.c.category)
            .order_by(metric.desc(), products.c.product_id)
            .limit(n))
    return _window(stmt, since, until)


def q_units_sold(since: str | None = None, until: str | None = None) -> Select:
    """Sales DB: units sold, order lines and revenue per product."""
    stmt = (select(order_lines.c.product_id,
                   func.sum(order_lines.c.quantity).label("units_sold"),
                   func.count(distinct(order_lines.c.order_id)).label("orders"),
                   func.sum(_LINE_REVENUE).label("revenue_cents"))
            .select_from(order_lines.join(orders, orders.c.order_id == order_lines.c.order_id))
            .group_by(order_lines.c.product_id)
            .order_by(order_lines.c.product_id))
    return _window(stmt, since, until)


def q_stock(threshold: int | None = None) -> Select:
    """Stock DB: products with on hand and initial units (at or below ``threshold`` if given)."""
    stmt = (select(products.c.product_id, products.c.name, products.c.category,
                   stock_levels.c.on_hand, stock_levels.c.initial_units)
            .select_from(products.join(stock_levels,
                                       stock_levels.c.product_id == products.c.product_id)))
    if threshold is not None:
        stmt = stmt.where(stock_levels.c.on_hand <= threshold).order_by(
            stock_levels.c.on_hand, products.c.product_id)
    else:
        stmt = stmt.order_by(products.c.product_id)
    return stmt


def q_units_moved() -> Select:
    """Stock DB: units moved out for orders, and the orders moved, per product."""
    return (select(stock_movements.c.product_id,
                   func.sum(stock_movements.c.quantity).label("units_moved"),
                   func.count(distinct(stock_movements.c.order_id)).label("orders_moved"))
            .where(stock_movements.c.order_id.is_not(None))
            .group_by(stock_movements.c.product_id)
            .order_by(stock_movements.c.product_id))


def q_last_order_time() -> Select:
    """Sales DB: the time of the newest order (the image's "now")."""
    return select(func.max(orders.c.ordered_at).label("last_order_at"))


def statements() -> dict[str, tuple[Db, Select]]:
    """Every statement the analyses run, with the database it runs on (for review/compiling)."""
    return {
        "revenue_by_day": ("sales", q_revenue("day", "2024-01-01", "2024-02-01")),
        "revenue_by_category": ("sales", q_revenue("category")),
        "revenue_by_channel": ("sales", q_revenue("channel")),
        "top_products_revenue": ("sales", q_top_products(10, "revenue")),
        "top_products_units": ("sales", q_top_products(5, "units", "2024-01-01")),
        "units_sold": ("sales", q_units_sold()),
        "units_sold_window": ("sales", q_units_sold("2024-01-01T00:00:00", "2024-01-08")),
        "last_order_time": ("sales", q_last_order_time()),
        "stock": ("stock", q_stock()),
        "low_stock": ("stock", q_stock(20)),
        "units_moved": ("stock", q_units_moved()),
    }


# --- frames -----------------------------------------------------------------------------------


def _frame(columns: list[str], rows: list[tuple[Any, ...]], ints: tuple[str, ...] = (),
           strs: tuple[str, ...] = ()) -> pd.DataFrame:
    """A DataFrame with fixed dtypes, so SQLite, PostgreSQL and Oracle give equal frames."""
    df = pd.DataFrame(rows, columns=columns)
    for c in ints:
        df[c] = df[c].fillna(0).astype("int64")
    for c in strs:
        df[c] = df[c].astype(object)
    return df


def _rows(dbs: ShopDatabases, db: Db, stmt: Select) -> list[tuple[Any, ...]]:
    return dbs.fetch(db, stmt)[1]


# --- analyses ---------------------------------------------------------------------------------


def _revenue(dbs: ShopDatabases, by: Literal["day", "category", "channel"],
             since: Any, until: Any) -> pd.DataFrame:
    name = f"revenue_by_{by}"
    dbs._guard(name)
    s, u = _bound(since, "since"), _bound(until, "until")
    cols = [by, "orders", "units", "revenue_cents"]
    df = _frame(cols, _rows(dbs, "sales", q_revenue(by, s, u)),
                ints=("orders", "units", "revenue_cents"), strs=(by,))
    df["revenue"] = df["revenue_cents"] / 100.0
    return dbs.result(df, name, since=s, until=u)


def revenue_by_day(dbs: ShopDatabases, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Per UTC day (``YYYY-MM-DD``): orders, units, revenue_cents, revenue; ``[since, until)``."""
    return _revenue(dbs, "day", since, until)


def revenue_by_category(dbs: ShopDatabases, since: Any = None, until: Any = None
                        ) -> pd.DataFrame:
    """Per product category: orders, units, revenue_cents, revenue."""
    return _revenue(dbs, "category", since, until)


def revenue_by_channel(dbs: ShopDatabases, since: Any = None, until: Any = None
                       ) -> pd.DataFrame:
    """Per sales channel (web, mobile, store, marketplace): orders, units, revenue."""
    return _revenue(dbs, "channel", since, until)


def top_products(dbs: ShopDatabases, n: int = 10, by: Literal["revenue", "units"] = "revenue",
                 since: Any = None, until: Any = None) -> pd.DataFrame:
    """The ``n`` best-selling products by revenue or units: id, name, category, units, revenue."""
    _positive_int(n, "n")
    if by not in ("revenue", "units"):
        raise InvalidInput(f"by must be 'revenue' or 'units', not {by!r}")
    dbs._guard("top_products")
    s, u = _bound(since, "since"), _bound(until, "until")
    cols = ["product_id", "name", "category", "units", "revenue_cents"]
    df = _frame(cols, _rows(dbs, "sales", q_top_products(n, by, s, u)),
                ints=("product_id", "units", "revenue_cents"), strs=("name", "category"))
    df["revenue"] = df["revenue_cents"] / 100.0
    return dbs.result(df, "top_products", n=n, by=by, since=s, until=u)


def _stock_frame(dbs: ShopDatabases, threshold: int | None = None) -> pd.DataFrame:
    cols = ["product_id", "name", "category", "on_hand", "initial_units"]
    return _frame(cols, _rows(dbs, "stock", q_stock(threshold)),
                  ints=("product_id", "on_hand", "initial_units"), strs=("name", "category"))


def _sold_frame(dbs: ShopDatabases, since: str | None = None, until: str | None = None
                ) -> pd.DataFrame:
    cols = ["product_id", "units_sold", "orders", "revenue_cents"]
    return _frame(cols, _rows(dbs, "sales", q_units_sold(since, until)),
                  ints=tuple(cols))


def _merge_products(stock: pd.DataFrame, other: pd.DataFrame, ints: tuple[str, ...]
                    ) -> pd.DataFrame:
    """Per product of the stock DB, with ``other``'s columns (0 where it has no row).

    Products that appear only in ``other`` (sold but unknown to stock) are kept too.
    """
    df = stock.merge(other, on="product_id", how="outer", sort=True)
    for c in ints:
        df[c] = df[c].fillna(0).astype("int64")
    for c in ("name", "category"):
        if c in df:
            df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df.reset_index(drop=True)


def units_vs_stock(dbs: ShopDatabases) -> pd.DataFrame:
    """Per product: units_sold (sales DB) next to on_hand and initial_units (stock DB).

    ``sell_through`` is units sold / initial units.
    """
    dbs._guard("units_vs_stock")
    sold = _sold_frame(dbs)[["product_id", "units_sold", "revenue_cents"]]
    df = _merge_products(_stock_frame(dbs), sold,
                         ints=("on_hand", "initial_units", "units_sold", "revenue_cents"))
    df["sell_through"] = [u / i if i else math.nan
                          for u, i in zip(df["units_sold"], df["initial_units"], strict=True)]
    return dbs.result(df, "units_vs_stock")


def low_stock(dbs: ShopDatabases, threshold: int = 20) -> pd.DataFrame:
    """Products with ``on_hand <= threshold`` units, lowest first; ``fraction_left`` of initial."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise InvalidInput(f"threshold must be a non-negative integer (units), not {threshold!r}")
    dbs._guard("low_stock")
    df = _stock_frame(dbs, threshold)
    df["fraction_left"] = [o / i if i else math.nan
                           for o, i in zip(df["on_hand"], df["initial_units"], strict=True)]
    return dbs.result(df, "low_stock", threshold=threshold)


def _minus_days(as_of: str, days: int) -> str:
    """``as_of`` moved back by ``days``, written in the same ISO style as ``as_of``."""
    try:
        t = datetime.fromisoformat(as_of)
    except ValueError:
        raise InvalidInput(f"as_of {as_of!r} is not an ISO-8601 time") from None
    start = t - timedelta(days=days)
    if len(as_of) >= 19:  # keep separator, fraction and offset exactly as stored
        return start.strftime("%Y-%m-%d") + as_of[10] + start.strftime("%H:%M:%S") + as_of[19:]
    return start.date().isoformat()


def days_of_cover(dbs: ShopDatabases, window_days: int = 7, as_of: Any = None) -> pd.DataFrame:
    """Per product: on hand / average daily units sold over the ``window_days`` before ``as_of``.

    ``as_of`` defaults to the newest order in the image (a snapshot is frozen, so "now"
    is its last order, not the wall clock).  The window is ``(as_of - window_days, as_of]``.
    ``days_of_cover`` is ``inf`` for a product that sold nothing in the window.
    """
    _positive_int(window_days, "window_days")
    dbs._guard("days_of_cover")
    if as_of is None:
        _, rows = dbs.fetch("sales", q_last_order_time())
        end = rows[0][0] if rows and rows[0][0] is not None else None
    else:
        end = _bound(as_of, "as_of")
    stock = _stock_frame(dbs)
    if end is None:  # no orders at all
        start = None
        sold = _frame(["product_id", "units_sold"], [], ints=("product_id", "units_sold"))
    else:
        start = _minus_days(str(end), window_days)
        cols = ["product_id", "units_sold", "orders", "revenue_cents"]
        stmt = (q_units_sold().where(orders.c.ordered_at > start)
                .where(orders.c.ordered_at <= str(end)))
        sold = _frame(cols, _rows(dbs, "sales", stmt), ints=tuple(cols))
        sold = sold[["product_id", "units_sold"]]
    df = _merge_products(stock[["product_id", "name", "category", "on_hand"]], sold,
                         ints=("on_hand", "units_sold"))
    df["avg_daily_units"] = df["units_sold"] / float(window_days)
    df["days_of_cover"] = [o / a if a > 0 else math.inf
                           for o, a in zip(df["on_hand"], df["avg_daily_units"], strict=True)]
    out = dbs.result(df, "days_of_cover", window_days=window_days, as_of=end)
    out.attrs["window_start"] = start
    out.attrs["window_end"] = end
    return out


def reconciliation(dbs: ShopDatabases) -> pd.DataFrame:
    """Per product: units sold (sales DB) vs units moved out for orders (stock DB).

    ``difference = units_sold - units_moved``; ``status`` is ``ok`` (0), ``sold without
    stock movement`` (> 0: the collapsed case) or ``moved, sale not recorded`` (< 0:
    orders in flight, which a consistent image may contain).
    """
    dbs._guard("reconciliation")
    sold = _sold_frame(dbs)[["product_id", "units_sold", "orders"]]
    cols = ["product_id", "units_moved", "orders_moved"]
    moved = _frame(cols, _rows(dbs, "stock", q_units_moved()), ints=tuple(cols))
    df = _merge_products(_stock_frame(dbs)[["product_id", "name", "category"]],
                         sold.merge(moved, on="product_id", how="outer"),
                         ints=("units_sold", "orders", "units_moved", "orders_moved"))
    df = df.rename(columns={"orders": "orders_sold"})
    df["difference"] = df["units_sold"] - df["units_moved"]
    df["status"] = ["ok" if d == 0 else
                    "sold without stock movement" if d > 0 else "moved, sale not recorded"
                    for d in df["difference"]]
    out = dbs.result(df, "reconciliation")
    out.attrs["units_sold"] = int(df["units_sold"].sum())
    out.attrs["units_moved"] = int(df["units_moved"].sum())
    return out


__all__ = [
    "InconsistentCopyWarning", "Provenance", "ShopDatabases", "PASSWORD_ENV",
    "open_sqlite", "open_databases", "mask_url", "run_query", "statements",
    "revenue_by_day", "revenue_by_category", "revenue_by_channel", "top_products",
    "units_vs_stock", "low_stock", "days_of_cover", "reconciliation",
    "q_revenue", "q_top_products", "q_units_sold", "q_stock", "q_units_moved",
    "q_last_order_time",
]
