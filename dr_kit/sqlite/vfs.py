"""An SQLite VFS (through ``apsw``) whose files live on array volumes.

File names are ``<volume>/<file>``, e.g. ``sales-db/sales.db``; SQLite derives the
journal's name (``sales-db/sales.db-journal``) itself, which lands on the same volume.
Every read and write of the real SQLite engine goes through the device the VFS was given
for that volume: the array's data path for live volumes, a writable clone for snapshot
images.  Opening a clone lets SQLite find a hot journal and run its own crash recovery.

Locks are kept per process: a volume is attached to one host at a time, as a block device
with a local file system is.

WAL mode: apsw's VFS layer has no shared-memory methods, so SQLite runs a database in WAL
mode only in exclusive locking mode, with the WAL index in the connection's memory
(rebuilt from the ``-wal`` file when the database is opened: WAL recovery).  The owner of
a live database (:func:`connect` with ``wal=True``, the shop) works that way.  Any other
connection that opens an image of a WAL database (a snapshot's writable clone, which may
hold frames not yet checkpointed) gets it recovered first: the VFS opens it once with an
exclusive connection of its own, which runs SQLite's WAL recovery, checkpoints every
committed frame into the database and switches it back to a rollback journal; then any
number of connections (e.g. a reader pool) read it as before.
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
        self._recovering = threading.RLock()  # one WAL image recovery at a time
        self._owned: set[str] = set()  # database names being opened by their owner (connect)
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
        if flags[0] & apsw.SQLITE_OPEN_MAIN_DB and fname not in self._owned:
            self._recover_wal_image(fname)
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

    def _recover_wal_image(self, fname: str) -> None:
        """A WAL database opened by a connection that is not its owner: recover it into a
        rollback-journal database once (see the module's doc), so that this connection and
        any others can read it without a shared WAL index."""
        try:
            vol, file = self._split(fname)
            fs = self.fs(vol)
            if not fs.formatted or not is_wal(fs, fs.slot(file)):
                return
        except DrKitError:
            return  # the open itself says what is wrong
        with self._recovering:
            if not is_wal(fs, fs.slot(file)):
                return  # another connection recovered it meanwhile
            self._owned.add(fname)
            try:
                con = apsw.Connection(fname, flags=apsw.SQLITE_OPEN_READWRITE, vfs=self.vfs_name)
                try:
                    con.execute("PRAGMA locking_mode=EXCLUSIVE")
                    con.execute("PRAGMA journal_mode=PERSIST")  # recovery, checkpoint, switch
                finally:
                    con.close()
            except apsw.Error as e:
                raise apsw.CantOpenError(
                    f"{fname} is a database in WAL mode whose log could not be recovered here "
                    f"({e}); open a writable clone of the volume (a restored snapshot)") from None
            finally:
                self._owned.discard(fname)

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


def is_wal(fs: VolumeFS, slot: int) -> bool:
    """Is the database file in ``slot`` in WAL mode (its header's read/write versions 2)?"""
    if fs.size(slot) < 100:
        return False
    head = fs.read(slot, 0, 20)
    return len(head) == 20 and (head[18] == 2 or head[19] == 2)


WAL_FRAME_OVERHEAD = 24  # bytes of a WAL frame's header


def connect(vfs: ArrayVFS, volume: str, file: str, *, readonly: bool = False,
            create: bool = True, wal: bool = False) -> apsw.Connection:
    """Open (or create) the database ``file`` on ``volume`` through ``vfs``.

    A writer (not ``readonly``) owns the database.  With ``wal`` it runs in WAL mode in
    exclusive locking mode: a commit is one request of WAL frames, no other connection in
    this process can open the database meanwhile, and the WAL is checkpointed before it
    outgrows its region on the volume.  Without ``wal`` it uses a persistent rollback
    journal, as readers of its images do (a WAL image is recovered into that form first).
    """
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    if create and not readonly:
        flags |= apsw.SQLITE_OPEN_CREATE
    name = f"{volume}/{file}"
    owner = not readonly
    if owner:
        vfs._owned.add(name)  # SQLite recovers a WAL it finds itself, in this connection
    try:
        con = apsw.Connection(name, flags=flags, vfs=vfs.vfs_name)
        con.setbusytimeout(5000)
        con.execute("PRAGMA temp_store=MEMORY")
        if owner:
            con.execute("PRAGMA locking_mode=EXCLUSIVE")  # a WAL without shared memory needs it
            if wal:
                set_journal_mode(con, "wal")
            else:
                con.execute("PRAGMA journal_mode=PERSIST")
                con.execute("PRAGMA locking_mode=NORMAL")
    except apsw.Error as e:
        raise InvalidInput(f"cannot open database {volume}/{file}: {e}") from None
    finally:
        if owner:
            vfs._owned.discard(name)
    return con


def set_journal_mode(con: apsw.Connection, mode: str) -> str:
    """Switch an owner's connection (exclusive locking mode) between ``wal`` and
    ``persist``; returns the mode it had.  In WAL mode every commit syncs the WAL (the
    commit is on the array when it returns) and checkpoints keep the WAL within half of its
    region on the volume."""
    before = str(next(con.execute("PRAGMA journal_mode"))[0]).lower()
    got = str(next(con.execute(f"PRAGMA journal_mode={mode}"))[0]).lower()
    if got != mode.lower():
        raise InvalidInput(f"the database could not switch to journal mode {mode} (it is in {got})")
    if got == "wal":
        con.execute("PRAGMA synchronous=FULL")
        page = int(next(con.execute("PRAGMA page_size"))[0])
        region = _wal_region(con)
        pages = max(16, min(1000, region // (page + WAL_FRAME_OVERHEAD) // 2)) if region else 1000
        con.execute(f"PRAGMA wal_autocheckpoint={pages}")
    return before


def _wal_region(con: apsw.Connection) -> int:
    """Bytes the ``-wal`` file of ``con``'s main database may use on its volume (0: unknown)."""
    name = con.db_filename("main")
    vfs = _REGISTRY.get(con.vfsname("main") or "")
    if vfs is None or not name:
        return 0
    try:
        vol, file = vfs._split(name)
        fs = vfs.fs(vol)
        return fs.capacity(fs.slot(file + "-wal")) if fs.formatted else 0
    except DrKitError:
        return 0
