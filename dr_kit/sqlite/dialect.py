"""SQLAlchemy URLs for SQLite databases on array volumes, opened over the array's data path.

    drkit+array://ARRAY/VOLUME/FILE?socket=/path/to/the/array/data.sock

``ARRAY`` names the array (it only shows in messages), ``VOLUME`` the array volume (a
PV's volume handle), ``FILE`` the database file on it (see :mod:`dr_kit.sqlite.volfs`),
``socket`` the array's data path on this host.  ``sqlalchemy.create_engine(url)`` — and
so :func:`dr_kit.analytics.open_databases` — opens such a URL like any other database
URL: every page SQLite reads goes through the array's data path
(:mod:`dr_kit.sqlite.vfs`).  This is how the lab publishes a restored snapshot group's
databases (a Secret with ``stock-url``/``sales-url``), as a DBA publishes the URLs of the
database instances serving restored volumes on a real cluster.

Connections only read: statements that would write are refused
(:mod:`dr_kit.sqlite.dbapi`), while the file is opened read-write so that SQLite can roll
back the transaction a snapshot caught in flight (a hot journal on a writable clone).
Connections are not pooled, and a volume's data path connection is closed with the last
connection using it, so nothing stays attached to a clone that is about to be deleted.

The scheme is registered with SQLAlchemy by the package's ``sqlalchemy.dialects`` entry
point and, for a source checkout, when this module is imported (:func:`register`).
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import apsw
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from dr_kit.errors import InvalidInput
from dr_kit.sqlite import dbapi

SCHEME = "drkit+array"

_LOCK = threading.Lock()
_USERS: dict[tuple[str, str], int] = {}  # (vfs name, volume) -> open connections


def url_for(array: str, volume: str, file: str, socket: str) -> str:
    """The URL of database ``file`` on ``volume`` of the array whose data path is ``socket``."""
    return URL.create(SCHEME, host=array, database=f"{volume}/{file}",
                      query={"socket": socket}).render_as_string(hide_password=False)


def _vfs(socket: str) -> Any:
    from dr_kit.sqlite import vfs as sqlite_vfs
    from dr_kit.storage.client import RemoteVolume

    name = f"dr-kit-array-{zlib.crc32(socket.encode()):08x}"
    return sqlite_vfs.register(name, lambda volume: RemoteVolume(socket, volume))


def _release(vfs: Any, volume: str) -> None:
    key = (vfs.vfs_name, volume)
    with _LOCK:
        n = _USERS.get(key, 0) - 1
        if n > 0:
            _USERS[key] = n
            return
        _USERS.pop(key, None)
    vfs.forget(volume)


def connect(socket: str, volume: str, file: str) -> Any:
    """A read-only DBAPI connection (:mod:`dr_kit.sqlite.dbapi`) to ``volume/file``."""
    vfs = _vfs(socket)
    key = (vfs.vfs_name, volume)
    with _LOCK:
        _USERS[key] = _USERS.get(key, 0) + 1
    try:
        con = apsw.Connection(f"{volume}/{file}", flags=apsw.SQLITE_OPEN_READWRITE,
                              vfs=vfs.vfs_name)
        con.setbusytimeout(5000)
        con.execute("PRAGMA temp_store=MEMORY")
        return _Connection(con, vfs, volume)
    except apsw.Error as e:
        _release(vfs, volume)
        raise dbapi._translate(e) from e
    except BaseException:
        _release(vfs, volume)
        raise


class _Connection(dbapi.Connection):
    """A read-only connection that lets go of the volume's data path when closed."""

    def __init__(self, con: apsw.Connection, vfs: Any, volume: str) -> None:
        self._release_args: tuple[Any, str] | None = (vfs, volume)
        super().__init__(con, read_only=True)

    def close(self) -> None:
        try:
            super().close()
        finally:
            args, self._release_args = self._release_args, None
            if args is not None:
                _release(*args)


def parse(url: URL) -> tuple[str, str, str]:
    """(socket, volume, file) of a ``drkit+array`` URL; ArgumentError when it is not one."""
    socket = url.query.get("socket")
    if isinstance(socket, tuple):
        socket = socket[-1]
    path = url.database or ""
    volume, sep, file = path.partition("/")
    if not socket or not str(socket).startswith("/"):
        raise ArgumentError(f"{SCHEME} URL needs ?socket=/absolute/path/of/the/array/data/path")
    if not sep or not volume or not file or "/" in file:
        raise ArgumentError(f"{SCHEME} URL path must be /VOLUME/FILE, not /{path}")
    return str(socket), volume, file


class ArrayVolumeDialect(SQLiteDialect_pysqlite):
    """SQLite (the pysqlite dialect's SQL) over :mod:`dr_kit.sqlite.dbapi` and the array VFS."""

    driver = "array"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return dbapi

    @classmethod
    def get_pool_class(cls, url: URL) -> type:
        return NullPool

    def create_connect_args(self, url: URL) -> Any:
        socket, volume, file = parse(url)
        return [], {"socket": socket, "volume": volume, "file": file}

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        return connect(cparams["socket"], cparams["volume"], cparams["file"])

    @classmethod
    def engine_created(cls, engine: Any) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "handle_error")
        def _refusal_as_invalid_input(ctx: Any) -> None:
            if isinstance(ctx.original_exception, dbapi.WriteRefused):
                raise InvalidInput(str(ctx.original_exception)) from None


def engine(url: str | URL) -> Any:
    """A read-only SQLAlchemy engine on a ``drkit+array://`` URL (:class:`InvalidInput` when
    the URL is not a complete one)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    register()
    try:
        u = make_url(url) if isinstance(url, str) else url
        if u.drivername != SCHEME:
            raise ArgumentError(f"not a {SCHEME} URL: {u.drivername}://...")
        parse(u)
    except ArgumentError as e:
        raise InvalidInput(f"bad database URL: {e}") from None
    return create_engine(u.set(password=None))


def register() -> None:
    """Make ``drkit+array://`` known to SQLAlchemy in this process (idempotent)."""
    from sqlalchemy.dialects import registry

    registry.register("drkit.array", "dr_kit.sqlite.dialect", "ArrayVolumeDialect")


register()

__all__ = ["ArrayVolumeDialect", "SCHEME", "connect", "engine", "parse", "register", "url_for"]
