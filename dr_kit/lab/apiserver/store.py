"""Object storage: one copy per object, a global resourceVersion, a log on disk, watches.

Every write gets the next resourceVersion (a global counter, like etcd's revision) and is
appended as one JSON line to ``objects.log`` in the state directory, in a single
``write`` call, before it becomes visible. On start the log is replayed; a torn last line
(crash in the middle of a write) is dropped and the file healed. When the log has grown
well past the live data it is compacted: a snapshot of all live objects is written to a
temporary file, synced and renamed over the log, so a crash leaves either the old or the
new log, never a mix.

In memory, objects are indexed by kind, namespace and name, and by ``uid`` and owner
``uid`` (``metadata.ownerReferences``), so listing a namespace, finding an object by uid
and finding an owner's dependents cost what they return, not the size of the store.

Watches: each committed change is kept in a bounded in-memory history and pushed to every
subscribed :class:`Watcher`. A watch may start from any resourceVersion still covered by
the history; an older one is *expired* (the server answers 410 Gone, as the real API does).
The store is used from a single event loop thread and takes no locks.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_kit.fsutil import fsync_dir

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (group, plural)
ObjKey = tuple[str, str]  # (namespace or "", name)
Obj = dict[str, Any]

LOG_NAME = "objects.log"
LOCK_NAME = "lock"
HISTORY = 10_000
_COMPACT_MIN = 2_000


@dataclass(frozen=True)
class Change:
    """One committed change: ADDED, MODIFIED or DELETED, with the object before it."""

    rv: int
    type: str
    key: Key
    obj: Obj
    old: Obj | None


class Expired(Exception):
    """The requested resourceVersion is older than the watch history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class StateDirBusy(RuntimeError):
    """Another server process holds the state directory."""


class StateCorrupt(RuntimeError):
    """The object log is damaged somewhere other than a torn last record."""


class Watcher:
    """A subscription: an unbounded queue of :class:`Change` (``None`` = server stopping)."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue()


def _name_key(obj: Obj) -> ObjKey:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Store:
    def __init__(self, state_dir: str | os.PathLike[str], fsync: bool = False) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LOG_NAME
        self.fsync = fsync
        self.rv = 0
        # kind -> namespace ("" for cluster-scoped) -> name -> object
        self._objects: dict[Key, dict[str, dict[str, Obj]]] = collections.defaultdict(dict)
        self._count = 0
        self._by_uid: dict[str, tuple[Key, str, str]] = {}
        self._dependents: dict[str, set[tuple[Key, str, str]]] = collections.defaultdict(set)
        self._history: collections.deque[Change] = collections.deque(maxlen=HISTORY)
        self._floor = 0  # changes with rv <= floor are no longer in the history
        self._watchers: set[Watcher] = set()
        self._log_records = 0
        self._fd: int | None = None
        self._lock_fd: int | None = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StateDirBusy(f"{self.dir} is in use by another API server process") from None
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise
        self._floor = self.rv
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    # -- persistence ---------------------------------------------------------------------

    def _load(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        if tmp.exists():
            tmp.unlink()  # an interrupted compaction; the old log is intact
        if not self.path.exists():
            return
        good = 0
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("unterminated record")
                    self._replay(json.loads(raw))
                except (ValueError, KeyError, TypeError) as e:
                    if good + len(raw) < size:  # not the tail: refuse to guess
                        raise StateCorrupt(
                            f"{self.path}: bad record at byte {good} ({e}); the log is damaged "
                            "before its end, so it is not repaired automatically"
                        ) from None
                    break
                good += len(raw)
                self._log_records += 1
        if good != size:
            log.warning("%s: dropping %d bytes of a torn last record", self.path, size - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())

    def _replay(self, rec: dict[str, Any]) -> None:
        op = rec["op"]
        self.rv = max(self.rv, int(rec["rv"]))
        if op == "put":
            key = (rec["k"][0], rec["k"][1])
            self._set(key, _name_key(rec["obj"]), rec["obj"])
        elif op == "del":
            key = (rec["k"][0], rec["k"][1])
            self._unset(key, (rec["ns"], rec["name"]))

    # -- the in-memory indexes ------------------------------------------------------------

    def _set(self, key: Key, nk: ObjKey, obj: Obj) -> Obj | None:
        names = self._objects[key].setdefault(nk[0], {})
        old = names.get(nk[1])
        if old is not None:
            self._unindex(key, nk, old)
        else:
            self._count += 1
        names[nk[1]] = obj
        self._index(key, nk, obj)
        return old

    def _unset(self, key: Key, nk: ObjKey) -> Obj | None:
        names = self._objects[key].get(nk[0])
        old = names.pop(nk[1], None) if names is not None else None
        if old is None:
            return None
        if not names:
            del self._objects[key][nk[0]]
        self._count -= 1
        self._unindex(key, nk, old)
        return old

    def _index(self, key: Key, nk: ObjKey, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        ref = (key, nk[0], nk[1])
        if isinstance(meta.get("uid"), str):
            self._by_uid[meta["uid"]] = ref
        for owner in _owner_uids(meta):
            self._dependents[owner].add(ref)

    def _unindex(self, key: Key, nk: ObjKey, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        ref = (key, nk[0], nk[1])
        if self._by_uid.get(meta.get("uid")) == ref:  # type: ignore[arg-type]
            del self._by_uid[meta["uid"]]
        for owner in _owner_uids(meta):
            deps = self._dependents.get(owner)
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self._dependents[owner]

    def _append(self, rec: dict[str, Any]) -> None:
        assert self._fd is not None, "store is closed"
        data = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):  # pragma: no cover - disk full or similar
            raise OSError(f"short write to {self.path}")
        if self.fsync:
            os.fsync(self._fd)
        self._log_records += 1

    def _maybe_compact(self) -> None:
        if self._log_records > max(_COMPACT_MIN, 4 * self.count()):
            self.compact()

    def compact(self) -> None:
        """Rewrite the log as a snapshot of the live objects (atomic rename)."""
        tmp = self.path.with_suffix(".tmp")
        records = 1
        with open(tmp, "wb") as f:
            f.write(json.dumps({"op": "rv", "rv": self.rv}).encode() + b"\n")
            for key, namespaces in self._objects.items():
                for obj in (o for names in namespaces.values() for o in names.values()):
                    rec = {"op": "put", "rv": int(obj["metadata"]["resourceVersion"]),
                           "k": list(key), "obj": obj}
                    f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
                    records += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.dir)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        self._log_records = records

    def stop_watches(self) -> None:
        """End every watch (each gets ``None``); used when the server shuts down."""
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        self._watchers.clear()

    def close(self) -> None:
        self.stop_watches()
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: Key, namespace: str | None, name: str) -> Obj | None:
        names = self._objects[key].get(namespace or "")
        return names.get(name) if names is not None else None

    def list(self, key: Key, namespace: str | None = None) -> builtins.list[Obj]:
        """Objects of a kind, of one namespace (if given), in no particular order."""
        namespaces = self._objects[key]
        if namespace:
            return list(namespaces.get(namespace, {}).values())
        return [o for names in namespaces.values() for o in names.values()]

    def has_any(self, key: Key, namespace: str) -> bool:
        return bool(self._objects[key].get(namespace))

    def by_uid(self, uid: str) -> Obj | None:
        ref = self._by_uid.get(uid)
        return self.get(ref[0], ref[1], ref[2]) if ref else None

    def dependents(self, uid: str) -> builtins.list[tuple[Key, Obj]]:
        """Objects whose ``ownerReferences`` name ``uid``, with their kind."""
        out = []
        for key, ns, name in sorted(self._dependents.get(uid, ())):
            obj = self.get(key, ns, name)
            if obj is not None:
                out.append((key, obj))
        return out

    def count(self) -> int:
        return self._count

    def keys(self) -> Iterator[Key]:
        return iter(list(self._objects))

    # -- writes --------------------------------------------------------------------------

    def next_rv(self) -> int:
        return self.rv + 1

    def put(self, key: Key, obj: Obj) -> Obj:
        """Create or replace ``obj``; it gets the next resourceVersion. Returns it."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        nk = _name_key(obj)
        self._append({"op": "put", "rv": self.rv, "k": list(key), "obj": obj})
        old = self._set(key, nk, obj)
        self._publish(Change(self.rv, "MODIFIED" if old else "ADDED", key, obj, old))
        self._maybe_compact()
        return obj

    def delete(self, key: Key, obj: Obj) -> Obj:
        """Remove the object named like ``obj``.

        ``obj`` is its final state (the stored one, or an update that removed the last
        finalizer); it is returned with the deletion's resourceVersion.
        """
        nk = _name_key(obj)
        old = self.get(key, nk[0], nk[1])
        if old is None:
            raise KeyError(nk)
        self.rv += 1
        final = dict(obj)
        final["metadata"] = dict(obj["metadata"], resourceVersion=str(self.rv))
        self._append({"op": "del", "rv": self.rv, "k": list(key), "ns": nk[0], "name": nk[1]})
        self._unset(key, nk)
        self._publish(Change(self.rv, "DELETED", key, final, old))
        self._maybe_compact()
        return final

    # -- watches -------------------------------------------------------------------------

    def _publish(self, change: Change) -> None:
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].rv
        self._history.append(change)
        for w in self._watchers:
            if w.key == change.key:
                w.queue.put_nowait(change)

    def subscribe(self, key: Key, since: int | None) -> tuple[Watcher, builtins.list[Change]]:
        """Subscribe to changes of ``key``; with ``since``, also return the missed ones.

        Raises :class:`Expired` when changes after ``since`` are no longer all known.
        """
        backlog: builtins.list[Change] = []
        if since is not None:
            if since < self._floor:
                raise Expired(since, self._floor)
            backlog = [c for c in self._history if c.rv > since and c.key == key]
        w = Watcher(key)
        self._watchers.add(w)
        return w, backlog

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)


def _owner_uids(meta: dict[str, Any]) -> set[str]:
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return set()
    return {r["uid"] for r in refs if isinstance(r, dict) and isinstance(r.get("uid"), str)}
