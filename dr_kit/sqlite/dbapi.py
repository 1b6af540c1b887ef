"""A DBAPI-2 (PEP 249) face for an ``apsw.Connection``, so SQLAlchemy and pandas can use it.

The lab opens its SQLite databases with ``apsw`` because only apsw lets SQLite's page I/O
go through the array's VFS; apsw is not a DBAPI module, so SQLAlchemy cannot drive it.
This module is the thin adapter between the two::

    engine = engine_for_apsw(lambda: apsw.Connection(path, vfs=name, flags=ro_flags))
    pandas.read_sql(select(...), engine)

It follows the ``sqlite3`` module closely (qmark parameters, ``isolation_level`` with an
implicit BEGIN before the first statement that writes, one statement per ``execute``),
so SQLAlchemy's ``sqlite+pysqlite`` dialect runs on it unchanged.

Read-only connections (``read_only=True``, the default of :func:`engine_for_apsw`) refuse
writes *before* anything runs: an SQLite authorizer denies every action that changes a
database (insert, update, delete, DDL, ATTACH, setting pragmas) and ``PRAGMA query_only``
is switched on as a second guard.  The refusal is a :class:`WriteRefused`, which is both
the DBAPI's :class:`OperationalError` and dr_kit's :class:`~dr_kit.errors.InvalidInput`;
an engine from :func:`engine_for_apsw` raises it as a plain ``InvalidInput``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apsw

from dr_kit.errors import InvalidInput

apilevel = "2.0"
threadsafety = 1  # connections may not be shared between threads without care
paramstyle = "qmark"

sqlite_version = apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(p) for p in sqlite_version.split(".")[:3])
version = apsw.apsw_version()


# --- PEP 249 exceptions --------------------------------------------------------------


class Warning(Exception):  # noqa: A001 - the name PEP 249 prescribes
    pass


class Error(Exception):
    pass


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


_DBAPIError = Error  # the module's Error, where a class attribute of that name hides it


class WriteRefused(OperationalError, InvalidInput):
    """A statement would change a database opened read-only; nothing was executed."""


# apsw exception class name -> DBAPI class (first match along the MRO wins).
_ERROR_MAP: dict[str, type[Error]] = {
    "ConstraintError": IntegrityError,
    "MismatchError": IntegrityError,
    "TooBigError": DataError,
    "RangeError": ProgrammingError,
    "BindingsError": ProgrammingError,
    "ExecutionCompleteError": ProgrammingError,
    "IncompleteExecutionError": ProgrammingError,
    "ConnectionClosedError": ProgrammingError,
    "CursorClosedError": ProgrammingError,
    "MisuseError": ProgrammingError,
    "ThreadingViolationError": ProgrammingError,
    "InternalError": InternalError,
    "NoMemError": OperationalError,
    "NotFoundError": InternalError,
    "CantOpenError": OperationalError,
    "BusyError": OperationalError,
    "LockedError": OperationalError,
    "IOError": OperationalError,
    "FullError": OperationalError,
    "ProtocolError": OperationalError,
    "PermissionsError": OperationalError,
    "AbortError": OperationalError,
    "InterruptError": OperationalError,
    "SchemaChangeError": OperationalError,
    "NoLFSError": OperationalError,
    "CorruptError": DatabaseError,
    "NotADBError": DatabaseError,
    "FormatError": DatabaseError,
    "EmptyError": DatabaseError,
    "SQLError": OperationalError,
    "ReadOnlyError": OperationalError,
    "AuthError": OperationalError,
    "Error": DatabaseError,
}


def _translate(e: Exception) -> Error:
    """The DBAPI exception for an apsw (or binding) error, with the same message."""
    if isinstance(e, Error):
        return e
    if isinstance(e, apsw.Error):
        for klass in type(e).__mro__:
            target = _ERROR_MAP.get(klass.__name__)
            if target is not None:
                msg = str(e)
                if isinstance(e, (apsw.ConnectionClosedError, apsw.CursorClosedError)):
                    # the text SQLAlchemy's pysqlite dialect recognises as a disconnect
                    msg = f"Cannot operate on a closed database. ({e})"
                return target(msg)
    if isinstance(e, (TypeError, ValueError, OverflowError)):
        return InterfaceError(f"error binding parameter: {e}")
    return DatabaseError(str(e))


# --- PEP 249 type objects and constructors ------------------------------------------

Binary = bytes
Date = _dt.date
Time = _dt.time
Timestamp = _dt.datetime


def DateFromTicks(ticks: float) -> _dt.date:  # noqa: N802 - PEP 249 name
    return _dt.date.fromtimestamp(ticks)


def TimeFromTicks(ticks: float) -> _dt.time:  # noqa: N802 - PEP 249 name
    return _dt.datetime.fromtimestamp(ticks).time()


def TimestampFromTicks(ticks: float) -> _dt.datetime:  # noqa: N802 - PEP 249 name
    return _dt.datetime.fromtimestamp(ticks)


STRING = str
BINARY = bytes
NUMBER = float
DATETIME = _dt.datetime
ROWID = int


# --- statement checks ----------------------------------------------------------------


def _skip_space_and_comments(sql: str, i: int) -> int:
    n = len(sql)
    while i < n:
        if sql[i].isspace() or sql[i] == ";":
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return i


def count_statements(sql: str) -> int:
    """How many SQL statements ``sql`` holds (0, 1 or 2 meaning "more than one").

    Statement ends are found with SQLite's own tokenizer (``apsw.complete``), so semicolons
    inside strings, quoted names, comments and trigger bodies do not count.
    """
    start = _skip_space_and_comments(sql, 0)
    if start >= len(sql):
        return 0
    pos = start
    while True:
        semi = sql.find(";", pos)
        if semi < 0:
            return 1
        if apsw.complete(sql[start : semi + 1]):
            rest = _skip_space_and_comments(sql, semi + 1)
            return 1 if rest >= len(sql) else 2
        pos = semi + 1


# Pragmas that only read, or change nothing stored; allowed with an argument when read-only.
_READING_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "database_list", "collation_list",
    "function_list", "module_list", "pragma_list", "integrity_check", "quick_check",
    "read_uncommitted", "busy_timeout", "cache_size", "temp_store", "case_sensitive_like",
})
_ON = {"1", "on", "true", "yes"}

_ACTION_NAMES = {
    code: name.removeprefix("SQLITE_").replace("_", " ")
    for name, code in vars(apsw).items()
    if name.startswith("SQLITE_") and isinstance(code, int)
    and name.removeprefix("SQLITE_").split("_")[0]
    in {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH",
        "REINDEX", "ANALYZE", "PRAGMA"}
}
_ALLOWED_ACTIONS = frozenset({
    apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE,
    apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT,
})


def write_action(action: int, p1: str | None, p2: str | None) -> str | None:
    """For an SQLite authorizer: None when ``action`` only reads, else what it would change.

    Reading is SELECT, reading columns, calling functions, recursive CTEs, transactions
    and savepoints (harmless under ``query_only``), and pragmas that read or change no
    stored state; everything else (insert, update, delete, DDL, temporary objects,
    ATTACH/DETACH, ANALYZE, REINDEX, setting a pragma, switching ``query_only`` off) is a
    write.  The action codes are SQLite's, so the same function serves apsw's
    ``Connection.authorizer`` and the ``sqlite3`` module's ``set_authorizer``.
    """
    if action in _ALLOWED_ACTIONS:
        return None
    if action == apsw.SQLITE_PRAGMA:
        name = (p1 or "").lower()
        if p2 is None or name in _READING_PRAGMAS:
            return None
        if name == "query_only" and str(p2).strip("'\"").lower() in _ON:
            return None
        return f"PRAGMA {name} = {p2}"
    what = _ACTION_NAMES.get(action, f"action {action}")
    return f"{what} on {p1}" if p1 else what


# --- connection and cursor ----------------------------------------------------------


class Cursor:
    """PEP 249 cursor over one apsw cursor."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._cur = connection._apsw.cursor()
        self._cur.exec_trace = self._on_statement
        self._rows: Iterator[Any] | None = None
        self._description: tuple[tuple[Any, ...], ...] | None = None
        self._writes = False
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._closed = False

    # apsw calls this after preparing each statement and before running it
    def _on_statement(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        desc = cursor.description
        self._description = tuple(
            (d[0], None, None, None, None, None, None) for d in desc
        ) or None
        self._writes = not cursor.is_readonly
        if self._writes and self.connection.read_only:
            return False  # abort before it runs (apsw raises ExecTraceAbort)
        if self._writes:
            self.connection._begin_if_needed(sql)
        return True

    @property
    def description(self) -> tuple[tuple[Any, ...], ...] | None:
        return self._description

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()

    def _run(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> None:
        db = self.connection._apsw
        self.connection._refused = None
        try:
            rows = self._cur.execute(sql, params if params is not None else None)
        except Exception as e:  # not BaseException: Ctrl-C stays a KeyboardInterrupt
            raise self.connection._error(e, sql) from e
        self._rows = iter(rows)
        if self._description is None and self._writes:
            self.rowcount = db.changes()
            self.lastrowid = db.last_insert_rowid()
        else:
            self.rowcount = -1

    def execute(self, operation: str,
                parameters: Sequence[Any] | Mapping[str, Any] | None = None) -> Cursor:
        self._check_open()
        n = count_statements(operation)
        if n > 1:
            raise ProgrammingError("You can only execute one statement at a time.")
        self._description = None
        self._writes = False
        self._rows = None
        if n == 0:
            self.rowcount = -1
            return self
        self._run(operation, parameters)
        return self

    def executemany(self, operation: str,
                    seq_of_parameters: Iterable[Sequence[Any] | Mapping[str, Any]]) -> Cursor:
        self._check_open()
        if count_statements(operation) > 1:
            raise ProgrammingError("You can only execute one statement at a time.")
        total = 0
        for params in seq_of_parameters:
            self._description = None
            self._run(operation, params)
            if self._description is not None:
                raise ProgrammingError("executemany() can only execute statements that "
                                       "return no rows")
            total += max(self.rowcount, 0)
        self.rowcount = total
        self._rows = None
        return self

    def _next(self) -> Any:
        if self._rows is None:
            return None
        try:
            return next(self._rows, None)
        except Exception as e:
            self._rows = None
            raise self.connection._error(e) from e

    def fetchone(self) -> tuple[Any, ...] | None:
        self._check_open()
        return self._next()

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check_open()
        out = []
        for _ in range(self.arraysize if size is None else size):
            row = self._next()
            if row is None:
                break
            out.append(row)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._check_open()
        out = []
        while (row := self._next()) is not None:
            out.append(row)
        return out

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._rows = None
            with contextlib.suppress(apsw.Error):
                self._cur.close(True)

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Connection:
    """PEP 249 connection over one ``apsw.Connection`` (which it closes on :meth:`close`).

    ``isolation_level`` works as in ``sqlite3``: ``None`` is autocommit; any string makes
    the first statement that writes start a transaction (``BEGIN <level>``), ended by
    :meth:`commit` or :meth:`rollback`.
    """

    # PEP 249 optional extension: exceptions reachable from the connection
    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, connection: apsw.Connection, *, read_only: bool = False,
                 isolation_level: str | None = "") -> None:
        if not isinstance(connection, apsw.Connection):
            raise InterfaceError(f"expected an apsw.Connection, got {type(connection).__name__}")
        self._apsw = connection
        self.read_only = read_only
        self.isolation_level = isolation_level
        self._refused: str | None = None
        self._closed = False
        if read_only:
            connection.authorizer = self._authorize
            try:
                connection.execute("PRAGMA query_only = 1")
            except apsw.Error as e:
                raise _translate(e) from e

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.read_only else "read-write")
        return f"<dr_kit.sqlite.dbapi.Connection {self.filename!r} {state}>"

    @property
    def filename(self) -> str:
        try:
            return self._apsw.filename
        except apsw.Error:
            return "?"

    @property
    def apsw_connection(self) -> apsw.Connection:
        """The ``apsw.Connection`` underneath (for what DBAPI has no word for: the backup API)."""
        self._check_open()
        return self._apsw

    @property
    def in_transaction(self) -> bool:
        return not self._closed and not self._apsw.get_autocommit()

    # SQLite authorizer: runs while a statement is prepared, before anything executes
    def _authorize(self, action: int, p1: str | None, p2: str | None,
                   dbname: str | None, trigger: str | None) -> int:
        refused = write_action(action, p1, p2)
        if refused is None:
            return apsw.SQLITE_OK
        self._refused = refused
        return apsw.SQLITE_DENY

    @contextlib.contextmanager
    def read_only_scope(self) -> Iterator[Connection]:
        """Make this connection read-only for the ``with`` block (authorizer + ``query_only``).

        For a connection opened read-write: what runs inside the block cannot change
        anything, whatever its text; afterwards the connection is as it was.
        """
        self._check_open()
        if self.read_only:
            yield self
            return
        was = next(self._apsw.execute("PRAGMA query_only"))[0]
        self.read_only = True
        self._apsw.authorizer = self._authorize
        try:
            self._apsw.execute("PRAGMA query_only = 1")
            yield self
        finally:
            self._apsw.authorizer = None
            self.read_only = False
            if not was and not self._closed:
                self._apsw.execute("PRAGMA query_only = 0")

    def _error(self, e: Exception, sql: str = "") -> _DBAPIError:
        if self.read_only and (
            isinstance(e, (apsw.ReadOnlyError, apsw.ExecTraceAbort))
            or (isinstance(e, apsw.AuthError) and self._refused)
        ):
            words = sql.split(None, 1)
            verb = words[0].upper() if words else "a write"
            what = self._refused or verb
            self._refused = None
            return WriteRefused(
                f"database {self.filename} is open read-only: {what} refused, "
                "nothing was changed")
        return _translate(e)

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed database.")

    def _begin_if_needed(self, sql: str) -> None:
        if self.isolation_level is None or not self._apsw.get_autocommit():
            return
        if sql.lstrip().split(None, 1)[0].upper() == "VACUUM":
            return
        self._apsw.execute(f"BEGIN {self.isolation_level}".rstrip())

    def cursor(self) -> Cursor:
        self._check_open()
        return Cursor(self)

    def execute(self, operation: str,
                parameters: Sequence[Any] | Mapping[str, Any] | None = None) -> Cursor:
        """Shortcut as in ``sqlite3``: a new cursor, executed."""
        return self.cursor().execute(operation, parameters)

    def commit(self) -> None:
        self._check_open()
        if not self._apsw.get_autocommit():
            try:
                self._apsw.execute("COMMIT")
            except Exception as e:
                raise self._error(e) from e

    def rollback(self) -> None:
        self._check_open()
        if not self._apsw.get_autocommit():
            try:
                self._apsw.execute("ROLLBACK")
            except Exception as e:
                raise self._error(e) from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._apsw.close(True)
        except apsw.Error as e:
            raise _translate(e) from e

    def create_function(self, name: str, narg: int, func: Callable[..., Any], *,
                        deterministic: bool = False) -> None:
        """``sqlite3.Connection.create_function`` (SQLAlchemy registers ``regexp``, ``floor``)."""
        self._check_open()
        self._apsw.create_scalar_function(name, func, narg, deterministic=deterministic)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # as sqlite3: commit on success, roll back on error; the connection stays open
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def connect(connection: apsw.Connection | str, *, read_only: bool = False,
            isolation_level: str | None = "", vfs: str | None = None) -> Connection:
    """A DBAPI connection over an ``apsw.Connection`` (or a file name apsw opens).

    With a file name, ``read_only`` also opens the file with ``SQLITE_OPEN_READONLY``.
    """
    if isinstance(connection, str):
        flags = (apsw.SQLITE_OPEN_READONLY if read_only
                 else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        flags |= apsw.SQLITE_OPEN_URI
        try:
            connection = apsw.Connection(connection, flags=flags, vfs=vfs)
        except apsw.Error as e:
            raise _translate(e) from e
    return Connection(connection, read_only=read_only, isolation_level=isolation_level)


def engine_for_apsw(connection_factory: Callable[[], apsw.Connection], read_only: bool = True,
                    *, poolclass: Any = None, echo: bool = False) -> Any:
    """A SQLAlchemy ``Engine`` (sqlite dialect) whose connections come from ``connection_factory``.

    ``connection_factory`` returns a new ``apsw.Connection`` each call (for example one
    opened through the array VFS).  Connections are not pooled by default (``NullPool``):
    each checkout opens the database and each return closes it, so no file stays open
    once a query is done.  With ``read_only`` (the default) a statement that would write
    raises :class:`~dr_kit.errors.InvalidInput` and changes nothing.
    """
    import sys

    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    def creator() -> Connection:
        try:
            conn = connection_factory()
        except apsw.Error as e:
            raise _translate(e) from e
        return Connection(conn, read_only=read_only)

    engine = create_engine("sqlite://", creator=creator, module=sys.modules[__name__],
                           poolclass=poolclass or NullPool, echo=echo)

    @event.listens_for(engine, "handle_error")
    def _refusal_as_invalid_input(ctx: Any) -> None:
        if isinstance(ctx.original_exception, WriteRefused):
            raise InvalidInput(str(ctx.original_exception)) from None

    return engine


__all__ = [
    "apilevel", "threadsafety", "paramstyle", "sqlite_version", "sqlite_version_info",
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "WriteRefused", "Binary", "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks",
    "TimestampFromTicks", "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID",
    "Connection", "Cursor", "connect", "count_statements", "engine_for_apsw",
    "write_action",
]
