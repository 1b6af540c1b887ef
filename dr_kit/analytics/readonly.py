"""Read-only access: engines that cannot write and ad hoc queries the database keeps read-only."""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from typing import Any

import pandas as pd
from sqlalchemy import (
    Engine,
    event,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

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

