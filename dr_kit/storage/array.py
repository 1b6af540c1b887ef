"""The array engine: volumes, consistency groups, snapshots and clones in one folder.

Folder layout::

    array.json                    the configuration (atomically rewritten on changes)
    volumes/<name>.vol            volume data (sparse files)
    groups/<name>/journal/        the group's journal segments
    groups/<name>/...             dirty maps, positions
    snapshots/<snap>/<volume>/    copy-on-write stores
    clones/<name>/                writable clones (overlay + map)

An array restarts from its folder without losing an acknowledged write: at the main site
every retained journal record of a journaling group is re-applied to its volume (redo;
idempotent in order; a suspended group's volumes hold newer direct writes and are left as
they are), at the backup the applier resumes after the last applied sequence it recorded.
Regions whose acknowledged writes were still queued for the journal when the array stopped
(its in-flight maps, see :mod:`dr_kit.storage.journal`) hold the newest data on the volume:
redo leaves them as they are, and the group copies them to the backup by a resync.  An
array opened with ``fsync`` (power-loss safety) queues nothing: each record is written and
synced before its write is acknowledged, and a journal's folder is synced when a segment is
named and its ``meta`` file when it is written, so that what was synced is found again.

Roles swap without a copy when both sides are identical (:meth:`Array.demote` of a group
whose backup applied everything, then :meth:`Array.promote` with ``clean``), and with a
copy of only the changed regions otherwise (see :mod:`dr_kit.storage.groups`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput, JournalError, NotFound
from dr_kit.fsutil import fsync_dir
from dr_kit.storage.blocks import (
    CHUNK,
    ChunkMap,
    CloneVolume,
    CowStore,
    FileVolume,
    SnapshotView,
    chunks_of,
    data_ranges,
)
from dr_kit.storage.groups import (
    COPY,
    ERROR,
    JOURNALING,
    PAIR,
    SUSPENDED,
    PrimaryGroup,
    SecondaryGroup,
    _PosFile,
)
from dr_kit.storage.journal import Journal
from dr_kit.storage.position import JournalPosition

log = logging.getLogger("dr_kit.storage.array")
GUARD_PREFIX = "resync-guard-"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{32,256}$")
DEFAULT_JOURNAL = 64 << 20
MIN_VOLUME = 1 << 20
MAX_VOLUME = 1 << 44  # 16 TiB: sparse files of any size up to this work on common file systems
MAX_JOURNAL = 1 << 40


def check_secret(secret: object) -> str:
    if not isinstance(secret, str) or not SECRET_RE.match(secret):
        raise InvalidInput("a pair secret must be 32 to 256 characters of letters, digits, '-' "
                           "and '_' (e.g. secrets.token_hex(32)); give the same one to both arrays")
    return secret


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"{kind} name {name!r} is not valid: use lower-case letters, digits, '-' "
                           "and '.', at most 63 characters, starting and ending with a letter or digit")
    return name


@dataclass
class Vol:
    """A volume known to the array, with the snapshots that must be preserved on write."""

    name: str
    id: int
    dev: Any  # FileVolume or CloneVolume
    role: str  # data | secondary | clone
    cows: list[CowStore] = field(default_factory=list)
    primary: PrimaryGroup | None = None
    secondary: SecondaryGroup | None = None
    # held while a write preserves snapshot chunks and lands, and while snapshots attach:
    # a snapshot of several volumes sees every write either wholly before it or after it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return self.dev.size

    def write(self, offset: int, data: bytes | memoryview) -> None:
        with self.lock:
            for s in self.cows:
                s.preserve(offset, len(data))
            self.dev.write(offset, data)

    def write_many(self, extents: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """Writes in order under one hold of the lock (a host request, an applied entry)."""
        with self.lock:
            cows, write = self.cows, self.dev.write
            for offset, data in extents:
                for s in cows:
                    s.preserve(offset, len(data))
                write(offset, data)

    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeros, thin: only where the volume holds data is anything
        done (snapshot chunks preserved, then the blocks freed)."""
        if not isinstance(self.dev, FileVolume):
            for pos in range(offset, offset + length, CHUNK):
                self.write(pos, bytes(min(CHUNK, offset + length - pos)))
            return
        with self.lock:
            for start, end in data_ranges(self.dev.fd, offset, offset + length):
                for s in self.cows:
                    s.preserve(start, end - start)
                self.dev.zero(start, end - start)

    def read(self, offset: int, length: int) -> bytes:
        return self.dev.read(offset, length)


class Array:
    """One storage array (a site's) living in a folder."""

    def __init__(self, root: str | Path, name: str = "array", *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.lock = threading.RLock()  # structure: volumes, groups, snapshots
        self._save_lock = threading.Lock()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # the folder holds the pairs' secrets and the volumes
        for d in ("volumes", "groups", "snapshots", "clones"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        path = self.root / "array.json"
        self.conf: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
            "name": name, "next_volume_id": 1, "volumes": {}, "primary_groups": {},
            "secondary_groups": {}, "snapshots": {}}
        self.conf.setdefault("pairs", {})  # backup side: group -> {"secret"} the main must prove
        self.name = self.conf["name"]
        self.volumes: dict[str, Vol] = {}
        self.primary: dict[str, PrimaryGroup] = {}
        self.secondary: dict[str, SecondaryGroup] = {}
        self.snapshots: dict[str, dict[str, CowStore]] = {}
        self.problems: list[str] = []
        self._load()
        self._save()

    # -- persistence ----------------------------------------------------------------
    def _save(self) -> None:
        with self._save_lock:
            tmp = self.root / "array.json.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds secrets
            with os.fdopen(fd, "w") as f:
                # no indent: Python's C encoder (several times faster) only serves compact
                # JSON, and this file is written on every change of a thousand volumes' state
                f.write(json.dumps(self.conf, sort_keys=True))
                if self.fsync:  # power-loss safety: the new file's data before its name
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.root / "array.json")
            if self.fsync:
                fsync_dir(self.root)

    def _load(self) -> None:
        vconf = self.conf["volumes"]
        for name, v in sorted(vconf.items(), key=lambda kv: kv[1]["id"]):
            if v["role"] != "clone":
                self.volumes[name] = Vol(name, v["id"], FileVolume(self.root / "volumes" / f"{name}.vol"), v["role"])
        for snap, s in self.conf["snapshots"].items():
            self.snapshots[snap] = {vn: CowStore(self.root / "snapshots" / snap / vn, self.volumes[vn].dev)
                                    for vn in s["volumes"]}
            for vn, store in self.snapshots[snap].items():
                self.volumes[vn].cows.append(store)
        for name, v in vconf.items():
            if v["role"] == "clone":
                store = self.snapshots[v["snapshot"]][v["source"]]
                dev = CloneVolume(self.root / "clones" / name, SnapshotView(store))
                self.volumes[name] = Vol(name, v["id"], dev, "clone")
        for g, c in self.conf["primary_groups"].items():
            try:
                self._open_primary(g, c)
            except JournalError as e:
                self.problems.append(f"group {g}: {e}")
                c["state"], c["message"] = ERROR, str(e)
        for g, c in self.conf["secondary_groups"].items():
            try:
                self._open_secondary(g, c)
            except JournalError as e:
                self.problems.append(f"group {g}: {e}")
                c["state"], c["message"] = ERROR, str(e)
        for kind in ("primary_groups", "secondary_groups"):
            for g, c in self.conf[kind].items():
                self._drop_stale_journals(g, c)

    def _drop_stale_journals(self, g: str, c: dict) -> None:
        """Journal folders of a role the group no longer has (a swap cut short by a kill)."""
        keep = c.get("journal_dir", "journal")
        for d in (self.root / "groups" / g).glob("journal*"):
            if d.is_dir() and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    def _open_primary(self, g: str, c: dict, create: bool = False) -> PrimaryGroup:
        folder = self.root / "groups" / g
        jdir = folder / c.get("journal_dir", "journal")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            journal = Journal.create(jdir, c["journal_capacity"], fsync=self.fsync)
        else:
            journal = Journal.open(jdir, c["journal_capacity"], fsync=self.fsync)
        members = {int(vid): self._by_id(int(vid)) for vid in c["members"]}
        # regions written and acknowledged whose entries were still queued for the journal
        lost = {} if create else journal.in_flight()
        grp = PrimaryGroup(g, folder, members, {int(k): v for k, v in c["members"].items()}, c,
                           journal=journal, save=self._save)
        # redo: every retained record reaches its volume again, in order.  Only while the
        # group journals: once it is suspended (or failed) the host writes the volumes
        # directly, and redoing older records would overwrite those acknowledged writes.
        # Every record written before the suspension had reached its volume: the state
        # changes under the group's lock, and is saved before the first direct write.
        # Nor in the regions in flight: their last acknowledged write is on the volume, and
        # its record may be missing, so every record of theirs in the journal may be older.
        if not create and c.get("state") in JOURNALING:
            for r, _ in journal.iter_records(journal.first_seq):
                target = members.get(r.volume)
                if target is None:  # a volume that has left the group since
                    try:
                        target = self._by_id(r.volume)
                    except NotFound:
                        continue
                skip = lost.get(r.volume, ())
                for off, data in r.extents():
                    for o, d in _outside(off, data, skip):
                        target.dev.write(o, d)
        if lost:
            n = 0
            for vid, chunks in lost.items():
                if vid in grp.dirty:
                    grp.dirty[vid].add_many(sorted(chunks))
                    n += len(chunks)
            log.warning("group %s: %d regions were written and acknowledged but not yet in the "
                        "journal when the array stopped; a resync copies them", g, n)
            with grp.lock:
                if c.get("state") in JOURNALING and c.get("state") != COPY:
                    grp._suspend_locked(f"the array stopped with writes to {n} regions not yet in "
                                        "the journal; a resync copies those regions (it starts "
                                        "by itself unless auto_resync is off: then resync the group)")
                self._save()
        if not self.fsync:  # an array that syncs its journal writes them before acknowledging
            journal.track({vid: (v.size + CHUNK - 1) // CHUNK for vid, v in members.items()})
        for v in members.values():
            v.primary = grp
        self.primary[g] = grp
        return grp

    def _open_secondary(self, g: str, c: dict, create: bool = False) -> SecondaryGroup:
        folder = self.root / "groups" / g
        jdir = folder / c.get("journal_dir", "journal")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            journal = Journal.create(jdir, c["journal_capacity"], generation=c.get("generation", 1),
                                     fsync=self.fsync)
        else:
            journal = Journal.open(jdir, c["journal_capacity"], fsync=self.fsync)
        members = {int(vid): self.volumes[name] for vid, name in c["members"].items()}
        grp = SecondaryGroup(g, folder, members, c, journal=journal, save=self._save)
        for v in members.values():
            v.secondary = grp
        self.secondary[g] = grp
        return grp

    def _by_id(self, vid: int) -> Vol:
        for v in self.volumes.values():
            if v.id == vid:
                return v
        raise NotFound(f"no volume with id {vid} on array {self.name}")

    # -- volumes --------------------------------------------------------------------
    def volume(self, name: str) -> Vol:
        v = self.volumes.get(name)
        if v is None:
            raise NotFound(f"volume {name!r} does not exist on array {self.name}; "
                           f"known: {', '.join(sorted(self.volumes)) or 'none'}")
        return v

    def create_volume(self, name: str, size: int, *, role: str = "data", save: bool = True) -> Vol:
        check_name("volume", name)
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_VOLUME <= size <= MAX_VOLUME:
            raise InvalidInput(f"volume size must be an integer number of bytes from {MIN_VOLUME} (1 MiB) "
                               f"to {MAX_VOLUME} (16 TiB), got {str(size)[:40]}")
        with self.lock:
            if name in self.volumes:
                raise Conflict(f"volume {name!r} already exists on array {self.name}")
            vid = self.conf["next_volume_id"]
            path = self.root / "volumes" / f"{name}.vol"
            if path.exists():
                path.unlink()
            try:
                dev = FileVolume(path, size, create=True)
            except OSError as e:  # nothing is left behind: no half-made volume file
                path.unlink(missing_ok=True)
                raise InvalidInput(f"volume {name!r} of {size} bytes cannot be created on array "
                                   f"{self.name}: {e.strerror}") from None
            self.conf["next_volume_id"] = vid + 1
            self.conf["volumes"][name] = {"id": vid, "size": size, "role": role}
            self.volumes[name] = v = Vol(name, vid, dev, role)
            if save:
                self._save()
            return v

    def delete_volume(self, name: str) -> None:
        with self.lock:
            v = self.volume(name)
            if v.primary or v.secondary:
                raise Conflict(f"volume {name!r} is in consistency group "
                               f"{(v.primary or v.secondary).name!r}; delete the group first")  # type: ignore[union-attr]
            if v.cows:
                raise Conflict(f"volume {name!r} has snapshots; delete them first")
            del self.conf["volumes"][name]
            del self.volumes[name]
            self._save()
            v.dev.close()
            if v.role == "clone":
                shutil.rmtree(self.root / "clones" / name, ignore_errors=True)
            else:
                (self.root / "volumes" / f"{name}.vol").unlink(missing_ok=True)

    def write(self, name: str, offset: int, data: bytes) -> None:
        """The data path: acknowledged when this returns."""
        v = self.volumes.get(name) or self.volume(name)
        if v.secondary is not None:
            raise Conflict(f"volume {name!r} is a secondary of group {v.secondary.name!r} and is "
                           "read-only; promote the group to write to it")
        if v.primary is not None:
            v.primary.commit(v, offset, data)
        else:
            v.write(offset, data)

    def writev(self, name: str, extents: Sequence[tuple[int, bytes | memoryview]],
               packed: bytes | memoryview | None = None, *,
               wait: bool = True) -> tuple[PrimaryGroup, int] | None:
        """Several writes in order, acknowledged together (what a host sends between two
        flushes).  In a consistency group they form one journal entry (applied whole at
        the backup); without one they are written in order, so a crash leaves a prefix.

        With ``wait=False`` a synchronous pair's write returns ``(group, sequence)`` to
        wait for instead of waiting here (see :meth:`PrimaryGroup.sync_done`)."""
        v = self.volumes.get(name) or self.volume(name)
        if v.secondary is not None:
            raise Conflict(f"volume {name!r} is a secondary of group {v.secondary.name!r} and is "
                           "read-only; promote the group to write to it")
        for off, data in extents:  # validate every range before writing any
            if off < 0 or off + len(data) > v.size:
                raise InvalidInput(f"{name}: range {off}+{len(data)} is outside the volume ({v.size} bytes)")
        if v.primary is not None:
            grp = v.primary
            seq = grp.commit_many(v, extents, packed, wait=wait)
            return (grp, seq) if seq else None
        v.write_many(extents)
        return None

    def read(self, name: str, offset: int, length: int) -> bytes:
        v = self.volumes.get(name) or self.volume(name)
        return v.read(offset, length)

    # -- consistency groups (main side) ---------------------------------------------
    def create_primary_group(self, name: str, volumes: list[str], remote: str, *, secret: str,
                             remote_names: dict[str, str] | None = None, mode: str = "async",
                             journal_capacity: int = DEFAULT_JOURNAL, transfer_interval_ms: float = 0.0,
                             sync_timeout_s: float = 5.0, auto_resync: bool = True) -> PrimaryGroup:
        """A consistency group at the main site.  ``secret`` is the pair's secret: the
        backup array must have been told the same one (:meth:`authorize_pair`), and each end
        proves it knows it before any journal data flows."""
        check_name("consistency group", name)
        check_secret(secret)
        if mode not in ("async", "sync"):
            raise InvalidInput(f"copy mode must be 'async' or 'sync', got {mode!r}")
        if not volumes:
            raise InvalidInput("a consistency group needs at least one volume")
        if not isinstance(remote, str) or ":" not in remote:
            raise InvalidInput(f"remote must be HOST:PORT of the backup array's replication port, got {remote!r}")
        if transfer_interval_ms < 0:
            raise InvalidInput("transfer_interval_ms must not be negative")
        if isinstance(journal_capacity, bool) or not isinstance(journal_capacity, int) or \
                journal_capacity > MAX_JOURNAL:
            raise InvalidInput(f"journal_capacity must be an integer number of bytes up to {MAX_JOURNAL}")
        remote_names = dict(remote_names or {})
        with self.lock:
            if name in self.primary or name in self.secondary:
                raise Conflict(f"consistency group {name!r} already exists on array {self.name}")
            vols = [self.volume(v) for v in volumes]
            for v in vols:
                grp = v.primary or v.secondary
                if grp is not None:
                    raise Conflict(f"volume {v.name!r} is already in consistency group {grp.name!r}")
                if v.role != "data":
                    raise InvalidInput(f"volume {v.name!r} is a {v.role} volume and cannot be replicated")
            Journal(self.root, journal_capacity)  # validates the capacity before anything changes
            for vname in volumes:
                check_name("backup volume", remote_names.setdefault(vname, vname))
            conf = {"members": {str(v.id): remote_names[v.name] for v in vols}, "mode": mode,
                    "remote": remote, "journal_capacity": journal_capacity,
                    "transfer_interval_ms": transfer_interval_ms, "sync_timeout_s": sync_timeout_s,
                    "state": COPY, "message": "initial copy pending", "created": time.time(),
                    "sizes": {str(v.id): v.size for v in vols}, "secret": secret,
                    "auto_resync": bool(auto_resync)}
            self.conf["primary_groups"][name] = conf
            grp = self._open_primary(name, conf, create=True)
            for m in grp.dirty.values():
                m.set_all()  # the initial copy is a copy of every region
            self._save()
            return grp

    def add_member(self, group: str, volume: str, remote_name: str | None = None) -> PrimaryGroup:
        """A volume joins a running group: it is copied by a resync of the group (the backup
        is not consistent until that ends; its last consistent image is kept meanwhile)."""
        with self.lock:
            grp = self.group(group)
            if not isinstance(grp, PrimaryGroup):
                raise InvalidInput(f"volumes join a group at the main site; {group!r} is a backup-side group here")
            v = self.volume(volume)
            if v.primary is grp:
                return grp
            other = v.primary or v.secondary
            if other is not None:
                raise Conflict(f"volume {volume!r} is already in consistency group {other.name!r}")
            if v.role != "data":
                raise InvalidInput(f"volume {volume!r} is a {v.role} volume and cannot be replicated")
            rname = check_name("backup volume", remote_name or volume)
            with grp.lock:
                grp.members[v.id] = v
                grp.remote_names[v.id] = rname
                grp.dirty[v.id] = dmap = ChunkMap(grp.folder / f"dirty-{v.id}.map",
                                                  (v.size + CHUNK - 1) // CHUNK, create=True)
                dmap.set_all()
                if not self.fsync:
                    grp.journal.track({v.id: (v.size + CHUNK - 1) // CHUNK})
                v.primary = grp
                grp.conf["members"][str(v.id)] = rname
                grp.conf.setdefault("sizes", {})[str(v.id)] = v.size
                grp.conf["reconnect"] = True  # announce the new member to the backup
                if grp.conf["state"] != COPY:
                    grp._suspend_locked(f"volume {volume} joined the group; it is copied by a resync")
                self._save()
                grp.signal()
            return grp

    def remove_member(self, group: str, volume: str) -> PrimaryGroup:
        """A volume leaves a group; its backup copy stays at the backup site as it is."""
        with self.lock:
            grp = self.group(group)
            if not isinstance(grp, PrimaryGroup):
                raise InvalidInput(f"volumes leave a group at the main site; {group!r} is a backup-side group here")
            v = self.volume(volume)
            if v.primary is not grp:
                raise InvalidInput(f"volume {volume!r} is not a member of group {group!r}")
            if len(grp.members) == 1:
                raise Conflict(f"volume {volume!r} is the last member of group {group!r}; delete the group instead")
            with grp.lock:
                del grp.members[v.id]
                del grp.remote_names[v.id]
                dmap = grp.dirty.pop(v.id)
                dmap.close()
                dmap.path.unlink(missing_ok=True)
                v.primary = None
                grp.conf["members"].pop(str(v.id), None)
                grp.conf.get("sizes", {}).pop(str(v.id), None)
                self._save()
            return grp

    def delete_primary_group(self, name: str) -> None:
        with self.lock:
            grp = self.group(name)
            if not isinstance(grp, PrimaryGroup):
                raise InvalidInput(f"group {name!r} is a backup-side group; delete it at the main site")
            for v in grp.members.values():
                v.primary = None
            grp.close()
            del self.primary[name]
            del self.conf["primary_groups"][name]
            shutil.rmtree(self.root / "groups" / name, ignore_errors=True)
            self._save()

    def group(self, name: str) -> PrimaryGroup | SecondaryGroup:
        g = self.primary.get(name) or self.secondary.get(name)
        if g is None:
            known = sorted(self.primary) + sorted(self.secondary)
            raise NotFound(f"consistency group {name!r} does not exist on array {self.name}; "
                           f"known: {', '.join(known) or 'none'}")
        return g

    # -- consistency groups (backup side) -------------------------------------------
    def authorize_pair(self, group: str, secret: str) -> None:
        """Accept group ``group`` from a main array that proves ``secret`` (replaces an
        earlier secret).  Nothing else may create a backup group or feed it entries."""
        check_name("consistency group", group)
        check_secret(secret)
        with self.lock:
            if group in self.primary:
                raise Conflict(f"group {group!r} is a main-side group on array {self.name}")
            self.conf["pairs"][group] = {"secret": secret, "since": time.time()}
            self._save()

    def forget_pair(self, group: str) -> None:
        with self.lock:
            if group not in self.conf["pairs"]:
                raise NotFound(f"array {self.name} holds no pair secret for group {group!r}")
            del self.conf["pairs"][group]
            self._save()

    def pair_secret(self, group: str) -> str | None:
        """The secret a main array must prove for ``group`` (backup side), or None."""
        p = self.conf["pairs"].get(group)
        return p["secret"] if isinstance(p, dict) else None

    def ensure_secondary_group(self, name: str, members: dict[int, tuple[str, int]],
                               journal_capacity: int, generation: int, *,
                               peer_names: dict[str, str] | None = None) -> SecondaryGroup:
        """Create (once) the backup side of a group announced by a main array.

        A group that was demoted here (or was the other way round before a swap) is keyed
        by the new main's volume ids the first time that main announces the same volumes.
        ``peer_names``: this side's volume name -> the main's own name for it."""
        with self.lock:
            grp = self.secondary.get(name)
            if grp is not None:
                by_name = {v.name: v for v in grp.members.values()}
                announced = {vname for vname, _size in members.values()}
                moved = any(vid not in grp.members or grp.members[vid].name != vname
                            for vid, (vname, _s) in members.items())
                if moved and announced == set(by_name):  # ids differ, or the same ids swapped
                    with grp.lock:  # the same volumes, reached from another main array
                        grp.members = {vid: by_name[vname] for vid, (vname, _s) in members.items()}
                        grp.conf["members"] = {str(vid): vname for vid, (vname, _s) in members.items()}
                    self._save()
                if peer_names and grp.conf.get("peer_names") != peer_names:
                    grp.conf["peer_names"] = dict(peer_names)
                    self._save()
                for vid, (vname, size) in members.items():  # members that joined since
                    if vid not in grp.members:
                        v = self.volumes.get(vname)
                        if v is None:
                            v = self.create_volume(vname, size, role="secondary", save=False)
                        elif v.primary or v.secondary or v.role != "secondary":
                            raise Conflict(f"backup volume {vname!r} already exists and is in use")
                        with grp.lock:
                            grp.members[vid] = v
                            v.secondary = grp
                            grp.conf["members"][str(vid)] = vname
                        self._save()
                return grp
            if name in self.primary:
                raise Conflict(f"group {name!r} is a main-side group on array {self.name}")
            for _vid, (vname, _size) in members.items():
                if vname in self.volumes:
                    v = self.volumes[vname]
                    if v.primary or v.secondary or v.role != "secondary":
                        raise Conflict(f"backup volume {vname!r} already exists and is in use")
            for _vid, (vname, size) in members.items():  # saved once, with the group
                if vname not in self.volumes:
                    self.create_volume(vname, size, role="secondary", save=False)
            conf = {"members": {str(vid): vname for vid, (vname, _s) in members.items()},
                    "journal_capacity": journal_capacity, "generation": generation,
                    "state": COPY, "consistent": False, "copy_end_seq": None,
                    "message": "initial copy", "created": time.time(),
                    "peer_names": dict(peer_names or {})}
            self.conf["secondary_groups"][name] = conf
            grp = self._open_secondary(name, conf, create=True)
            self._save()
            return grp

    def delete_secondary_group(self, name: str, *, delete_volumes: bool = False) -> None:
        with self.lock:
            grp = self.group(name)
            if not isinstance(grp, SecondaryGroup):
                raise InvalidInput(f"group {name!r} is a main-side group")
            for guard in {GUARD_PREFIX + name, grp.conf.get("guard") or GUARD_PREFIX + name}:
                # the group's own safety copy goes with it, unless a clone still uses it
                if guard in self.conf["snapshots"] and not any(
                        v.get("snapshot") == guard for v in self.conf["volumes"].values()):
                    self.delete_snapshot(guard)
            for v in grp.members.values():
                v.secondary = None
                self.conf["volumes"][v.name]["role"] = "data"
                v.role = "data"
            grp.close()
            del self.secondary[name]
            del self.conf["secondary_groups"][name]
            # the old main can no longer reach these volumes (a promoted or removed copy)
            self.conf["pairs"].pop(name, None)
            shutil.rmtree(self.root / "groups" / name, ignore_errors=True)
            self._save()
            if delete_volumes:
                for v in list(grp.members.values()):
                    self.delete_volume(v.name)

    def promote(self, name: str, *, track: bool = False, clean: bool = False,
                remote: str | None = None, secret: str | None = None) -> dict[str, Any]:
        """Failover: stop applying, make the backup volumes writable.

        Without ``track`` the group is dissolved (plain data volumes, the pair forgotten).
        With ``track`` it becomes a main-side group of the same name whose volumes the
        hosts write: with ``clean`` (both sides identical: the other side was demoted after
        this one applied everything, which is checked here) it journals on from the same
        sequence and replicates to ``remote`` without any copy; otherwise it tracks the
        regions written from now on, and a later resync toward the old main copies those
        and the old main's divergent regions.  Either way the old main's pair secret is
        forgotten here: it can no longer feed these volumes (fencing).  Idempotent."""
        with self.lock:
            grp = self.group(name)
            if isinstance(grp, PrimaryGroup):
                if not track:
                    raise InvalidInput(f"group {name!r} is already a main-side group")
                return dict(grp.conf.get("promoted") or {}, name=name, side="main", already=True)
            if not track:
                grp.apply_available(max_records=1 << 30)
                pos = {"sequence": grp.applied_seq, "time": grp.applied.time,
                       "consistent": bool(grp.conf.get("consistent")), "state": grp.state}
                self.delete_secondary_group(name)
                return pos
            if secret is not None:
                check_secret(secret)
            if remote is not None and (not isinstance(remote, str) or ":" not in remote):
                raise InvalidInput(f"remote must be HOST:PORT of the other array's replication port, "
                                   f"got {remote!r}")
            return self._promote_tracking(grp, clean=clean, remote=remote, secret=secret)

    def _promote_tracking(self, grp: SecondaryGroup, *, clean: bool, remote: str | None,
                          secret: str | None) -> dict[str, Any]:
        name = grp.name
        with grp.lock:
            if grp.state != ERROR:
                grp.apply_available(max_records=1 << 30)
            grp.paused = True  # the apply workers leave it alone from here on
            gen, seq, t = grp.journal.generation, grp.applied_seq, grp.applied.time
            consistent, state = bool(grp.conf.get("consistent")), grp.state
            received = grp.received_seq
            if clean and not (state == PAIR and consistent and seq == received and not grp.divergent):
                grp.paused = False
                raise Conflict(f"group {name!r} cannot be promoted without a copy: it is {state}"
                               f"{'' if consistent else ', not consistent'}, applied {seq} of "
                               f"{received} received{', holds divergent regions' if grp.divergent else ''}")
            vols = list(grp.members.values())
            peer = grp.conf.get("peer_names") or {}
            remote_names = {v.id: str(peer.get(v.name, v.name)) for v in vols}
            now = time.time()
            info = {"name": name, "side": "main", "at": now, "clean": clean,
                    "position": str(JournalPosition(gen, seq)), "sequence": seq, "generation": gen,
                    "time": t or None, "consistent": consistent, "state": state,
                    "received": received, "main_head": grp.main_head[0] or None,
                    "main_head_time": grp.main_head[1] or None}
            ndiv = sum(m.count() for m in grp.divergent.values())
            if ndiv:
                info["divergent_regions"] = ndiv
            jdir = f"journal-p{int(now * 1000)}"
            folder = grp.folder
            cap = max(int(grp.conf.get("journal_capacity", DEFAULT_JOURNAL)) // 2, DEFAULT_JOURNAL)
            pconf: dict[str, Any] = {
                "members": {str(v.id): remote_names[v.id] for v in vols}, "mode": "async",
                "remote": remote or "", "journal_capacity": cap, "transfer_interval_ms": 0.0,
                "sync_timeout_s": 5.0, "state": PAIR if clean else SUSPENDED,
                "message": ("promoted with the other side identical: replication goes on from the same "
                            "sequence" if clean else
                            f"promoted: the {ndiv} regions written here beyond the split and those "
                            "written from now on are tracked; a resync toward the other side copies them"
                            if ndiv else "promoted: the regions written from now on are "
                            "tracked; a resync toward the old main copies them"),
                "created": now, "sizes": {str(v.id): v.size for v in vols}, "secret": secret,
                "auto_resync": False, "journal_dir": jdir, "promoted": info}
            for p in folder.glob("dirty-*.map"):  # an earlier main life's maps are stale
                p.unlink()
            for v in vols:
                # a demoted old main promoted again before any resync (a planned move
                # called off): the regions it wrote beyond the split are what the other side
                # lacks, so they start as changed regions and the resync toward it copies
                # them (a backup that was never demoted has none)
                div = grp.divergent.get(v.name)
                if div is not None and div.count():
                    m = ChunkMap(folder / f"dirty-{v.id}.map", (v.size + CHUNK - 1) // CHUNK,
                                 create=True)
                    m.add_many(sorted(div))
                    m.close()
            Journal.create(folder / jdir, cap, generation=gen, next_seq=seq + 1,
                           fsync=self.fsync).close()
            pos = _PosFile(folder / "backup-applied")
            pos.store(seq if clean else 0, gen, t if clean else 0.0)
            pos.close()
            grp.close()
            for v in vols:
                v.secondary = None
                v.role = "data"
                self.conf["volumes"][v.name]["role"] = "data"
            del self.secondary[name]
            old = self.conf["secondary_groups"].pop(name)
            self.conf["pairs"].pop(name, None)  # the old main can no longer feed these volumes
            self.conf["primary_groups"][name] = pconf
            self._save()
        self._open_primary(name, pconf)
        self._drop_stale_journals(name, pconf)
        for p in list(folder.glob("divergent-*.map")) + [folder / "applied"]:
            p.unlink(missing_ok=True)
        del old
        log.info("group %s promoted at %s (%s)", name, info["position"], "clean" if clean else "tracking")
        return info

    def demote(self, name: str, *, split: str | None = None) -> dict[str, Any]:
        """Make a main-side group a backup-side group: its hosts' writes are refused from now
        on (fencing), and it waits for the other side's resync.

        ``split`` (``g<generation>/<sequence>``) is the position the other side had applied
        when it was promoted, when known; otherwise the last position this side heard the
        backup acknowledge (a superset of what differs).  The regions this side wrote
        beyond the split are kept as *divergent*: the next resync from the new main
        overwrites them, and they are reported as lost writes.  With nothing beyond the
        split (a planned move after a final sync) the demotion is clean: both sides are
        identical at one position and replication can reverse without a copy.  Idempotent."""
        with self.lock:
            grp = self.group(name)
            if isinstance(grp, SecondaryGroup):
                return dict(grp.conf.get("demoted") or {}, name=name, side="backup", already=True)
            at: JournalPosition | None = JournalPosition.parse(split) if split else None
            with grp.lock:
                gen, last, applied = grp.journal.generation, grp.journal.last_seq, grp.applied_seq
                cut = applied
                if at is not None and at.generation == gen:
                    cut = min(max(at.sequence, grp.journal.first_seq - 1, applied), last)
                div: dict[int, set[int]] = {vid: set(m) for vid, m in grp.dirty.items()}
                tracked = sum(len(c) for c in div.values())
                lost_entries, first_t, last_t = 0, None, None
                lost_bytes = grp.journal.bytes_after(cut) if cut < last else 0
                for r, _ in grp.journal.iter_records(cut + 1) if cut < last else ():
                    lost_entries += 1
                    first_t = first_t or r.time
                    last_t = r.time
                    if r.volume in div:
                        for off, data in r.extents():
                            div[r.volume].update(chunks_of(off, len(data)))
                clean = grp.state == PAIR and cut == last and not tracked
                t = grp.journal.time_of(cut) or grp.applied_time or 0.0
                now = time.time()
                nregions = sum(len(c) for c in div.values())
                info = {"name": name, "side": "backup", "at": now, "clean": clean,
                        "position": str(JournalPosition(gen, cut)), "sequence": cut,
                        "generation": gen, "head": last, "state": grp.state,
                        "lost_entries": lost_entries, "lost_bytes": lost_bytes,
                        "lost_first_time": first_t, "lost_last_time": last_t,
                        "untracked_regions": tracked, "divergent_regions": nregions,
                        "divergent_bytes": nregions * CHUNK}
                vols = list(grp.members.values())
                folder = grp.folder
                jdir = f"journal-s{int(now * 1000)}"
                sconf: dict[str, Any] = {
                    "members": {str(v.id): v.name for v in vols},
                    "journal_capacity": 2 * int(grp.conf.get("journal_capacity", DEFAULT_JOURNAL)),
                    "generation": gen, "journal_dir": jdir,
                    "state": SUSPENDED, "consistent": True, "copy_end_seq": None,
                    "message": ("demoted: identical to the other side at "
                                f"{info['position']}; replication resumes from the new main "
                                "without a copy" if clean else
                                f"demoted: {nregions} regions written here beyond {info['position']} "
                                "are overwritten by the next resync from the new main"),
                    "created": now, "demoted": info, "divergent": nregions > 0,
                    "peer_names": {v.name: grp.remote_names[v.id] for v in vols}}
                for v in vols:
                    m = ChunkMap(folder / f"divergent-{v.name}.map", (v.size + CHUNK - 1) // CHUNK,
                                 create=True)
                    m.add_many(sorted(div.get(v.id, ())))
                    m.close()
                Journal.create(folder / jdir, sconf["journal_capacity"], generation=gen,
                               next_seq=cut + 1, fsync=self.fsync).close()
                pos = _PosFile(folder / "applied")
                pos.store(cut, gen, t)
                pos.close()
                grp.close()  # a writer waiting for the group's lock is refused from here on
                for v in vols:
                    v.primary = None
                    v.role = "secondary"
                    self.conf["volumes"][v.name]["role"] = "secondary"
                del self.primary[name]
                self.conf["primary_groups"].pop(name)
                self.conf["secondary_groups"][name] = sconf
                self._save()
            self._open_secondary(name, sconf)
            self._drop_stale_journals(name, sconf)
            for p in list(folder.glob("dirty-*.map")) + [folder / "backup-applied"]:
                p.unlink(missing_ok=True)
            if nregions == 0:
                self.secondary[name].clear_divergent()
            log.info("group %s demoted at %s (%s)", name, info["position"],
                     "clean" if clean else f"{nregions} divergent regions")
            return info

    def pair_with(self, name: str, remote: str, secret: str) -> dict[str, Any]:
        """Point a promoted main-side group at the other array (which must hold ``secret``
        for it): replication starts, with a resync of the changed regions when needed."""
        check_secret(secret)
        if not isinstance(remote, str) or ":" not in remote:
            raise InvalidInput(f"remote must be HOST:PORT of the other array's replication port, got {remote!r}")
        with self.lock:
            grp = self.group(name)
            if not isinstance(grp, PrimaryGroup):
                raise InvalidInput(f"group {name!r} is a backup-side group here; pair it from its main side")
            with grp.lock:
                grp.conf["remote"], grp.conf["secret"] = remote, secret
                grp.conf["reconnect"] = True
                if grp.state in (SUSPENDED, ERROR):
                    grp.conf["resync_requested"] = True
                self._save()
                grp.signal()
            return {"name": name, "state": grp.state, "remote": remote}

    # -- snapshots and clones -------------------------------------------------------
    def take_guard(self, group: str) -> tuple[str, str]:
        """Before a resync of backup group ``group`` (consistent now): keep its image in a
        guard snapshot.  Returns the guard's name and a note for the group's message when
        an older guard could not be replaced (it is kept, and said so)."""
        with self.lock:
            g = self.secondary[group]
            base = GUARD_PREFIX + group
            notes = []
            for old in dict.fromkeys([base, g.conf.get("guard") or base]):
                if old in self.conf["snapshots"]:
                    try:
                        self.delete_snapshot(old)
                    except DrKitError as e:
                        log.warning("group %s: older guard snapshot %s kept: %s", group, old, e)
                        notes.append(f"older guard snapshot {old} kept ({e})")
            name, n = base, 1
            while name in self.conf["snapshots"]:
                n += 1
                name = f"{base}-{n}"
            self.create_snapshot(name, group=group, extra={"guard": True})  # saved with its flag
            g.conf["guard"] = name
            self._save()
            return name, "; ".join(notes)

    def create_snapshot(self, name: str, *, group: str | None = None,
                        volumes: list[str] | None = None,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Freeze volumes at one point; for a backup group, all at one sequence number."""
        check_name("snapshot", name)
        with self.lock:
            if name in self.conf["snapshots"]:
                raise Conflict(f"snapshot {name!r} already exists on array {self.name}")
            grp: SecondaryGroup | None = None
            if group is not None:
                g = self.group(group)
                if not isinstance(g, SecondaryGroup):
                    raise InvalidInput(f"snapshot groups are taken at the backup site; {group!r} is a "
                                       "main-side group here")
                grp = g
                vols = list(grp.members.values())
                if volumes:  # a subset of the group's volumes, still at one sequence
                    names = {v.name: v for v in vols}
                    missing = [n for n in volumes if n not in names]
                    if missing:
                        raise InvalidInput(f"volumes {', '.join(missing)} are not members of group {group!r}")
                    vols = [names[n] for n in volumes]
            elif volumes:
                vols = [self.volume(v) for v in volumes]
            else:
                raise InvalidInput("name a consistency group or at least one volume to snapshot")
            vols = list({v.name: v for v in vols}.values())
            for v in vols:
                if v.role == "clone":
                    raise InvalidInput(f"volume {v.name!r} is a clone; snapshots of clones are not supported")
            with contextlib.ExitStack() as held:
                if grp is not None:
                    held.enter_context(grp.lock)  # the applier is held: one sequence for all
                folder = self.root / "snapshots" / name
                folder.mkdir()
                stores = {v.name: CowStore(folder / v.name, v.dev, create=True) for v in vols}
                with contextlib.ExitStack() as writes:  # no write to any of them meanwhile
                    for v in sorted(vols, key=lambda v: v.id):
                        writes.enter_context(v.lock)
                    for v in vols:
                        v.cows.append(stores[v.name])
                info: dict[str, Any] = {"group": group, "volumes": sorted(stores), "created": time.time(),
                                        **(extra or {})}
                if grp is not None:
                    info.update(sequence=grp.applied_seq, generation=grp.journal.generation,
                                time=grp.applied.time or None, consistent=bool(grp.conf.get("consistent")),
                                state=grp.state, received=grp.received_seq,
                                main_sequence=grp.main_head[0] or None)
                self.conf["snapshots"][name] = info
                self.snapshots[name] = stores
                self._save()
            return self.snapshot_info(name)

    def snapshot_info(self, name: str) -> dict[str, Any]:
        s = self.conf["snapshots"].get(name)
        if s is None:
            raise NotFound(f"snapshot {name!r} does not exist on array {self.name}; "
                           f"known: {', '.join(sorted(self.conf['snapshots'])) or 'none'}")
        out = dict(s, name=name)
        if s.get("sequence") is not None:
            out["position"] = str(JournalPosition(s.get("generation", 1), s["sequence"]))
        return out

    def delete_snapshot(self, name: str) -> None:
        with self.lock:
            self.snapshot_info(name)
            users = [n for n, v in self.conf["volumes"].items() if v.get("snapshot") == name]
            if users:
                raise Conflict(f"snapshot {name!r} has clones ({', '.join(users)}); delete them first")
            for vn, store in self.snapshots.pop(name).items():
                self.volumes[vn].cows.remove(store)
                store.close()
            del self.conf["snapshots"][name]
            shutil.rmtree(self.root / "snapshots" / name, ignore_errors=True)
            self._save()

    def create_clone(self, name: str, snapshot: str, volume: str) -> Vol:
        """A writable volume showing ``volume`` as it was in ``snapshot``."""
        check_name("volume", name)
        with self.lock:
            self.snapshot_info(snapshot)
            stores = self.snapshots[snapshot]
            if volume not in stores:
                raise NotFound(f"snapshot {snapshot!r} has no volume {volume!r}; it has {', '.join(sorted(stores))}")
            if name in self.volumes:
                raise Conflict(f"volume {name!r} already exists on array {self.name}")
            dev = CloneVolume(self.root / "clones" / name, SnapshotView(stores[volume]), create=True)
            vid = self.conf["next_volume_id"]
            self.conf["next_volume_id"] = vid + 1
            self.conf["volumes"][name] = {"id": vid, "size": dev.size, "role": "clone",
                                          "snapshot": snapshot, "source": volume}
            self.volumes[name] = v = Vol(name, vid, dev, "clone")
            self._save()
            return v

    # -- reporting ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self.lock:
            vols = [{"name": v.name, "id": v.id, "size": v.size, "role": v.role,
                     "group": g.name if (g := v.primary or v.secondary) else None,
                     "snapshots": len(v.cows), **({"snapshot": self.conf["volumes"][v.name].get("snapshot"),
                                                    "source": self.conf["volumes"][v.name].get("source")}
                                                   if v.role == "clone" else {})}
                    for v in self.volumes.values()]
            groups = []
            for g in self.primary.values():
                lag = g.lag()
                groups.append({"name": g.name, "side": "main", "mode": g.mode, "state": g.state,
                               "message": lag.message, "remote": g.conf["remote"],
                               "connected": g.connected,
                               "last_error": g.last_error, "last_error_at": g.last_error_at,
                               "members": {g.members[vid].name: rn for vid, rn in g.remote_names.items()},
                               "journal": {"used_bytes": g.journal.used_bytes,
                                           "capacity": g.journal.capacity},
                               "copy": {"total": g.copy_total, "done": g.copy_done},
                               "applied_bytes": g.applied_bytes,
                               "paired": bool(g.conf.get("secret") and g.conf.get("remote")),
                               "auto_resync": bool(g.conf.get("auto_resync", True)),
                               "held": bool(g.conf.get("held")),
                               "promoted": g.conf.get("promoted"), "last_copy": g.conf.get("last_copy"),
                               "volume_bytes": sum(v.size for v in g.members.values()),
                               "lag": lag.to_dict()})
            for s in self.secondary.values():
                groups.append({"name": s.name, "side": "backup", "state": s.state,
                               "message": s.conf.get("message", ""), "consistent": bool(s.conf.get("consistent")),
                               "members": {str(vid): v.name for vid, v in s.members.items()},
                               "applied": str(JournalPosition(s.journal.generation, s.applied_seq)),
                               "applied_time": s.applied.time or None,
                               "applied_at": s.applied_at,
                               "received": s.received_seq, "apply_paused": s.paused,
                               "generation": s.journal.generation,
                               "main_head": {"sequence": s.main_head[0] or None,
                                             "time": s.main_head[1] or None},
                               "demoted": s.conf.get("demoted"),
                               "divergent_regions": sum(m.count() for m in s.divergent.values()),
                               "volume_bytes": sum(v.size for v in s.members.values()),
                               "journal": {"used_bytes": s.journal.used_bytes, "capacity": s.journal.capacity}})
            snaps = [self.snapshot_info(n) for n in sorted(self.conf["snapshots"])]
            return {"name": self.name, "pid": os.getpid(), "volumes": vols, "groups": groups,
                    "snapshots": snaps, "problems": list(self.problems)}

    def close(self) -> None:
        with self.lock:
            for g in self.primary.values():
                g.close()
            for s in self.secondary.values():
                s.close()
            for stores in self.snapshots.values():
                for st in stores.values():
                    st.close()
            for v in self.volumes.values():
                v.dev.close()
            self._save()


def _outside(offset: int, data: bytes | memoryview, skip: set[int] | tuple[()]) -> list[tuple[int, memoryview]]:
    """The parts of a write at ``offset`` that lie outside the chunks in ``skip``."""
    view = memoryview(data)
    if not skip:
        return [(offset, view)]
    out: list[tuple[int, memoryview]] = []
    start: int | None = None
    for c in chunks_of(offset, len(view)):
        lo = max(offset, c * CHUNK)
        if c in skip:
            if start is not None:
                out.append((start, view[start - offset:lo - offset]))
                start = None
        elif start is None:
            start = lo
    if start is not None:
        out.append((start, view[start - offset:]))
    return out
