"""Read-only access: engines that cannot write and ad hoc queries the database keeps read-only."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from sqlalchemy import (
    Engine,
    event,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url

from dr_kit.errors import DrKitError, InvalidInput, Unavailable


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



def _is_connect_error(e: Exception) -> bool:
    text_ = str(getattr(e, "orig", e)).lower()
    return any(w in text_ for w in (
        "connection refused", "could not connect", "connection to server", "timeout",
        "timed out", "unable to open database", "name or service not known",
        "could not translate host", "no route to host", "dpy-6005", "dpy-6000",
        "ora-12541", "ora-12514", "ora-12170", "tns:", "closed database", "server closed",
    ))


_READ_ONLY: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines whose transactions only read

# what each server needs from its driver: one statement per execution, refused otherwise
_DRIVERS = {"postgresql": ("psycopg",), "oracle": ("oracledb", "cx_oracle")}
_SUPPORTED = ("SQLite files, PostgreSQL (postgresql+psycopg://...) or Oracle "
              "(oracle+oracledb://...)")


def read_only_engine(url: URL, label: str = "the") -> Engine:
    """An engine on a PostgreSQL or Oracle URL on which every transaction only reads.

    PostgreSQL (driver psycopg; a bare ``postgresql://`` gets it): the session starts with
    ``default_transaction_read_only=on`` (added to the URL's ``options``), every
    statement is sent as a prepared statement (``prepare_threshold=0``), which the server
    refuses when it holds more than one command, and every transaction begins with ``SET
    TRANSACTION READ ONLY``.  So a single statement cannot end the read-only transaction
    and write after it, whatever its text.  Oracle: every transaction begins with ``SET
    TRANSACTION READ ONLY`` and the driver runs one statement per call; connect as a role
    that holds only ``CREATE SESSION`` and ``READ`` on the shop's tables (README).
    Other databases: :class:`InvalidInput`.
    """
    from sqlalchemy import create_engine

    backend, _, driver = url.drivername.partition("+")
    if backend not in _DRIVERS:
        raise InvalidInput(f"unsupported {label} database URL {mask_url(url)!r}: analytics "
                           f"read {_SUPPORTED}")
    if driver and driver not in _DRIVERS[backend]:
        raise InvalidInput(f"{label} database URL {mask_url(url)!r}: use the "
                           f"{_DRIVERS[backend][0]} driver ({backend}+{_DRIVERS[backend][0]}://"
                           f"...), which runs exactly one statement per query; not {driver}")
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        given = url.query.get("options") or ""
        options = " ".join(given) if isinstance(given, tuple) else given
        url = url.set(drivername="postgresql+psycopg").update_query_dict(
            {"options": f"{options} -c default_transaction_read_only=on".strip()})
        connect_args["prepare_threshold"] = 0
    try:
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True,
                               connect_args=connect_args)
    except (sa_exc.NoSuchModuleError, sa_exc.ArgumentError, ImportError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if url.password:
            why = why.replace(str(url.password), "***")
        raise InvalidInput(f"unsupported {label} database URL {mask_url(url)!r}: {why}") from None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")

    _READ_ONLY.add(engine)
    return engine


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
        conn = apsw.Connection(p, flags=flags, vfs=vfs)
        # sorts and DISTINCT over a large image would spill to temporary files, which an
        # array volume (and a read-only analyst) has no place for: keep them in memory
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    return engine_for_apsw(factory, read_only=True)


# --- ad hoc queries -------------------------------------------------------------------------

# words that make a statement write or lock, wherever they appear outside strings/comments
# (a WITH can wrap a DELETE; SELECT ... INTO creates a table); the read-only transaction
# the query runs in is the second guard
_WRITE_WORDS = frozenset({
    "insert", "update", "delete", "merge", "upsert", "create", "drop", "alter", "truncate",
    "grant", "revoke", "into", "attach", "detach", "pragma", "vacuum", "reindex", "lock",
})
_TOKEN = re.compile(
    r"""\s+|--[^\n]*|/\*.*?\*/|[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|"(?:[^"]|"")*\""""
    r"""|`[^`]*`|\[[^\]]*\]|(?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z_0-9$#]*)|(?P<semi>;)|.""",
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


@contextlib.contextmanager
def _read_only_connection(conn: Connection, engine: Engine) -> Iterator[None]:
    """Make what runs on ``conn`` inside the block unable to write, enforced by the database."""
    raw: Any = conn.connection.dbapi_connection
    name = conn.dialect.name
    if name == "sqlite":
        from dr_kit.sqlite import dbapi

        if isinstance(raw, dbapi.Connection):
            with raw.read_only_scope():
                yield
            return
        if isinstance(raw, sqlite3.Connection):
            with _sqlite3_read_only(raw):
                yield
            return
        raise InvalidInput("ad hoc queries on SQLite run through dr_kit's apsw adapter or the "
                           f"sqlite3 module, not {type(raw).__module__}")
    elif name == "postgresql":
        if not hasattr(raw, "prepare_threshold"):
            raise InvalidInput(f"ad hoc queries on PostgreSQL need the psycopg driver "
                               f"(postgresql+psycopg://...), not {conn.dialect.driver}")
        threshold = raw.prepare_threshold
        raw.prepare_threshold = 0  # one prepared statement: a second command is refused
        try:
            if engine not in _READ_ONLY:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield
        finally:
            raw.prepare_threshold = threshold
        return
    elif name == "oracle":
        if engine not in _READ_ONLY:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        yield
        return
    raise InvalidInput(f"ad hoc queries run on {_SUPPORTED}, not {name}")


@contextlib.contextmanager
def _sqlite3_read_only(raw: sqlite3.Connection) -> Iterator[None]:
    """The ``sqlite3`` module's connection, read-only for the block (authorizer + query_only)."""
    from dr_kit.sqlite.dbapi import write_action

    refused: list[str] = []

    def authorize(action: int, p1: str | None, p2: str | None, *_: Any) -> int:
        what = write_action(action, p1, p2)
        if what is None:
            return sqlite3.SQLITE_OK
        refused.append(what)
        return sqlite3.SQLITE_DENY

    was = raw.execute("PRAGMA query_only").fetchone()[0]
    raw.set_authorizer(authorize)
    try:
        raw.execute("PRAGMA query_only = 1")
        try:
            yield
        except sa_exc.DatabaseError as e:
            if refused:
                raise InvalidInput(f"database is open read-only: {refused[0]} refused, "
                                   "nothing was changed") from e
            raise
    finally:
        raw.set_authorizer(None)
        if not was:
            raw.execute("PRAGMA query_only = 0")


def run_query(engine: Engine, sql: str, params: Mapping[str, Any] | None = None, *,
              limit: int | None = None) -> pd.DataFrame:
    """Run one read-only SELECT (or WITH ... SELECT) on ``engine``; the rows as a DataFrame.

    Parameters are bound, never interpolated: write ``:name`` in the SQL and pass
    ``{"name": value}``.  ``limit`` caps the rows fetched.

    Read-only is enforced by the database, whatever the text: on PostgreSQL the statement
    is sent as one prepared statement (a second command is refused by the server) inside
    a read-only transaction; on Oracle inside ``SET TRANSACTION READ ONLY``; on SQLite
    under an authorizer that denies every write, ATTACH and pragma change, with ``PRAGMA
    query_only`` on.  The transaction is rolled back afterwards, so even a setting the
    statement changed does not outlive it.  Before any of that, :func:`check_select`
    refuses what is plainly not one SELECT, with a friendlier message.
    """
    check_select(sql)
    if params is not None and not isinstance(params, Mapping):
        raise InvalidInput("query parameters must be a mapping of name -> value (use :name in SQL)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"limit must be a non-negative integer, not {limit!r}")
    stmt = text(sql)
    missing = sorted(set(stmt.compile().params) - set(params or {}))
    if missing:
        raise InvalidInput(f"query parameter(s) not given: {', '.join(missing)}")
    try:
        with engine.connect() as conn:
            try:
                with _read_only_connection(conn, engine):
                    result = conn.execute(stmt, dict(params or {}))
                    if not result.returns_rows:
                        raise InvalidInput("the statement returned no rows; give a SELECT")
                    cols = list(result.keys())
                    rows = result.fetchmany(limit) if limit is not None else result.all()
            finally:
                conn.rollback()
    except sa_exc.SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        if isinstance(orig, DrKitError):
            raise type(orig)(str(orig)) from None
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        if getattr(e, "connection_invalidated", False) or _is_connect_error(e):
            raise Unavailable(f"database {mask_url(engine.url)} unreachable: {first}") from None
        if "multiple commands" in first:
            raise InvalidInput("only one statement per query (refused by the server)") from None
        raise InvalidInput(f"query failed: {first}") from None
    return pd.DataFrame([tuple(r) for r in rows], columns=cols)
