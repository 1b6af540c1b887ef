"""An SQLite VFS (through ``apsw``) whose files live on array volumes.

File names are ``<volume>/<file>``, e.g. ``sales-db/sales.db``; SQLite derives the
journal's name (``sales-db/sales.db-journal``) itself, which lands on the same volume.
Every read and write of the real SQLite engine goes through the device the VFS was given
for that volume: the array's data path for live volumes, a writable clone for snapshot
images.  Opening a clone lets SQLite find a hot journal and run its own crash recovery.

Locks are kept per process: a volume is attached to one host at a time, as a block device
with a local file system is.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import apsw

from dr_kit.errors import DrKitError, InvalidInput
from dr_kit.sqlite.volfs import VolumeFS
from dr_kit.storage.blocks import BlockDevice

NONE, SHARED, RESERVED, PENDING, EXCLUSIVE = range(5)
_IOCAP = (getattr(apsw, "SQLITE_IOCAP_SEQUENTIAL", 0x400) | getattr(apsw, "SQLITE_IOCAP_SAFE_APPEND", 0x200)
          | getattr(apsw, "SQLITE_IOCAP_POWERSAFE_OVERWRITE", 0x1000))


class _LockState:
    def __init__(self) -> None:
        self.shared = 0
        self.reserved = False
        self.pending = False
        self.exclusive = False


F = TypeVar("F", bound=Callable[..., Any])


def _io(fn: F) -> F:
    """An array error in a file method is an I/O error to SQLite (SQLITE_IOERR), which
    then rolls back or reports it; the message says what the array said."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DrKitError as e:
            raise apsw.IOError(str(e)) from None

    return wrapper  # type: ignore[return-value]


class _File:
    def __init__(self, vfs: ArrayVFS, fs: VolumeFS, slot: int, key: tuple[str, int]) -> None:
        self.vfs, self.fs, self.slot, self.key = vfs, fs, slot, key
        self.level = NONE

    @_io
    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802
        return self.fs.read(self.slot, offset, amount)

    @_io
    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        self.fs.write(self.slot, offset, bytes(data))

    @_io
    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        self.fs.truncate(self.slot, newsize)

    @_io
    def xSync(self, flags: int) -> None:  # noqa: N802
        self.fs.flush()
        sync = getattr(self.fs.dev, "sync", None)
        if sync:
            sync()

    @_io
    def xFileSize(self) -> int:  # noqa: N802
        return self.fs.size(self.slot)

    def xLock(self, level: int) -> None:  # noqa: N802
        self.vfs._lock(self, level)

    @_io
    def xUnlock(self, level: int) -> None:  # noqa: N802
        try:
            self.fs.flush()  # a finished transaction is on the array before anyone sees it
        finally:
            self.vfs._unlock(self, level)

    def xCheckReservedLock(self) -> bool:  # noqa: N802
        st = self.vfs._locks.get(self.key)
        return bool(st and (st.reserved or st.pending or st.exclusive))

    def xFileControl(self, op: int, ptr: int) -> bool:  # noqa: N802
        return False

    def xSectorSize(self) -> int:  # noqa: N802
        return 4096

    def xDeviceCharacteristics(self) -> int:  # noqa: N802
        return _IOCAP

    @_io
    def xClose(self) -> None:  # noqa: N802
        try:
            self.fs.flush()
        finally:
            self.vfs._unlock(self, NONE)  # the lock goes with the file, also when the flush failed


class ArrayVFS(apsw.VFS):
    """Registers an SQLite VFS named ``name`` whose volumes come from ``open_device``."""

    def __init__(self, name: str, open_device: Callable[[str], BlockDevice]) -> None:
        self.vfs_name = name
        self._open_device = open_device
        self._fs: dict[str, VolumeFS] = {}
        self._locks: dict[tuple[str, int], _LockState] = {}
        self._mutex = threading.Lock()
        super().__init__(name, "")

    # -- names ----------------------------------------------------------------------
    @staticmethod
    def _split(name: str) -> tuple[str, str]:
        vol, sep, fname = name.partition("/")
        if not sep or not vol or not fname or "/" in fname:
            raise InvalidInput(f"database name {name!r} must be <volume>/<file>, e.g. sales-db/sales.db")
        return vol, fname

    def fs(self, volume: str) -> VolumeFS:
        with self._mutex:
            fs = self._fs.get(volume)
            if fs is None:
                fs = self._fs[volume] = VolumeFS(self._open_device(volume), volume)
            return fs

    def forget(self, volume: str) -> None:
        """Drop the cached file table (and device) of a volume, e.g. before re-opening it."""
        with self._mutex:
            fs = self._fs.pop(volume, None)
        close = getattr(fs.dev, "close", None) if fs else None
        if close:
            close()

    # -- VFS methods ----------------------------------------------------------------
    def xOpen(self, name: Any, flags: list[int]) -> Any:  # noqa: N802 - a _File
        if name is None:
            raise apsw.CantOpenError("temporary files are not supported on array volumes; "
                                     "use PRAGMA temp_store=MEMORY")
        fname = name.filename() if isinstance(name, apsw.URIFilename) else name
        try:
            vol, file = self._split(fname)
            fs = self.fs(vol)
            create = bool(flags[0] & apsw.SQLITE_OPEN_CREATE)
            slot = fs.slot(file, create=create)
            if not fs.exists(slot):
                if not create:
                    raise apsw.CantOpenError(f"{fname} does not exist")
                fs.create(slot)
        except DrKitError as e:
            raise apsw.CantOpenError(str(e)) from None
        flags[1] = flags[0]
        return _File(self, fs, slot, (vol, slot))

    def xAccess(self, pathname: str, flags: int) -> bool:  # noqa: N802
        try:
            vol, file = self._split(pathname)
            fs = self.fs(vol)
            if not fs.formatted:
                return False
            slot = fs.slot(file)
        except DrKitError:
            return False
        return fs.exists(slot)

    @_io
    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802
        vol, file = self._split(filename)
        fs = self.fs(vol)
        fs.delete(fs.slot(file))  # flushes gathered writes first

    def xFullPathname(self, name: str) -> str:  # noqa: N802
        return name

    # -- process-local locks --------------------------------------------------------
    def _lock(self, f: _File, level: int) -> None:
        with self._mutex:
            st = self._locks.setdefault(f.key, _LockState())
            if level <= f.level:
                return
            if level == SHARED:
                if st.pending or st.exclusive:
                    raise apsw.BusyError("database is locked")
                st.shared += 1
            elif level == RESERVED:
                if st.reserved or st.pending or st.exclusive:
                    raise apsw.BusyError("database is locked")
                st.reserved = True
            elif level in (PENDING, EXCLUSIVE):
                if st.exclusive or (st.reserved and f.level < RESERVED) or (st.pending and f.level < PENDING):
                    raise apsw.BusyError("database is locked")
                st.pending = True
                if level == EXCLUSIVE:
                    if st.shared > 1:
                        raise apsw.BusyError("database is locked")
                    st.exclusive = True
            f.level = level

    def _unlock(self, f: _File, level: int) -> None:
        with self._mutex:
            st = self._locks.setdefault(f.key, _LockState())
            if f.level >= RESERVED and level < RESERVED:
                st.reserved = False
            if f.level >= PENDING and level < PENDING:
                st.pending = False
                st.exclusive = False
            if f.level >= SHARED and level < SHARED:
                st.shared = max(0, st.shared - 1)
            f.level = min(f.level, level)


_REGISTRY: dict[str, ArrayVFS] = {}


def register(name: str, open_device: Callable[[str], BlockDevice]) -> ArrayVFS:
    """Register (once per name) a VFS over the given device opener."""
    vfs = _REGISTRY.get(name)
    if vfs is None:
        vfs = _REGISTRY[name] = ArrayVFS(name, open_device)
    else:
        vfs._open_device = open_device
    return vfs


def connect(vfs: ArrayVFS, volume: str, file: str, *, readonly: bool = False,
            create: bool = True) -> apsw.Connection:
    """Open (or create) the database ``file`` on ``volume`` through ``vfs``."""
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    if create and not readonly:
        flags |= apsw.SQLITE_OPEN_CREATE
    try:
        con = apsw.Connection(f"{volume}/{file}", flags=flags, vfs=vfs.vfs_name)
        con.setbusytimeout(5000)
        con.execute("PRAGMA temp_store=MEMORY")
        if not readonly:
            con.execute("PRAGMA journal_mode=PERSIST")
    except apsw.Error as e:
        raise InvalidInput(f"cannot open database {volume}/{file}: {e}") from None
    return con
