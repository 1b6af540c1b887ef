"""The stock and sales databases of one image, with where they came from (:class:`Provenance`)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    Engine,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql import Select

from dr_kit.analytics.readonly import (
    _is_connect_error,
    _sqlite_engine,
    mask_url,
    read_only_engine,
    run_query,
)
from dr_kit.analytics.tables import Db
from dr_kit.errors import Conflict, DrKitError, InvalidInput, Unavailable
from dr_kit.shop.consistency import Verdict, judge

PASSWORD_ENV = "DR_KIT_DB_PASSWORD"

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
        self._point: dict[str, Any] = dict(
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



# --- opening ----------------------------------------------------------------------------------


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
    the read-only apsw adapter, and so is a ``drkit+array://`` URL (SQLite on an array
    volume over its data path, :mod:`dr_kit.sqlite.dialect`).  Malformed URL -> :class:`InvalidInput`; unreachable
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
        if url.drivername == "drkit+array":  # SQLite on an array volume, read-only adapter
            from dr_kit.sqlite.dialect import engine as array_volume_engine

            engines.append(array_volume_engine(url))
            continue
        if url.drivername.split("+")[0] == "sqlite":
            if not url.database or url.database == ":memory:":
                raise InvalidInput(f"{label} sqlite URL needs a file path: "
                                   f"sqlite:///path/to/{label}.db")
            engines.append(_sqlite_engine(label, url.database, None, True))
            continue
        engine = read_only_engine(url, label)
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

