"""Watch caches: every kind the operator reads, listed once and kept current by a watch.

An :class:`Informer` (one thread per watched kind, whatever the number of namespaces)
lists its kind in all namespaces into a :class:`Cache`, then follows a watch from the
list's resourceVersion; a broken watch (expired resourceVersion, lost connection, any
exception) is logged and restarted with a relist after a backoff.  Each change is handed
to a callback, which decides which namespaces to reconcile; reconciling reads the caches
and never lists anything itself.

The operator's own writes are put into the cache as soon as the API answers them
(:meth:`Cache.write_through`), so the next reconcile does not act on what the watch has not
delivered yet.  A kind the client does not watch (StorageClass: cluster-wide, rarely
changed) is relisted at a long interval instead.  resourceVersions are compared only when both are integers (etcd revisions,
and the lab's); otherwise the watch decides.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dr_kit.errors import Conflict, DrKitError

log = logging.getLogger("dr_kit.operator")

Key = tuple[str | None, str]  # (namespace, name)
OnChange = Callable[[str, str, dict[str, Any] | None, dict[str, Any] | None], None]


def _key(obj: dict[str, Any]) -> Key:
    md = obj.get("metadata") or {}
    return (md.get("namespace") or None, md.get("name") or "")


def _rv(obj: dict[str, Any] | None) -> int | None:
    raw = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


class Cache:
    """The objects of one kind, by (namespace, name) and by namespace."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._by_ns: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.synced = threading.Event()  # listed at least once (or known to be absent)
        self.served = True

    # -- reading ---------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def in_namespace(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return list((self._by_ns.get(namespace) or {}).values())

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # -- writing ---------------------------------------------------------------------

    def _put(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        key = _key(obj)
        old = self._objects.get(key)
        self._objects[key] = obj
        self._by_ns.setdefault(key[0], {})[key[1]] = obj
        return old

    def _pop(self, key: Key) -> dict[str, Any] | None:
        old = self._objects.pop(key, None)
        if old is not None:
            bucket = self._by_ns.get(key[0]) or {}
            bucket.pop(key[1], None)
            if not bucket:
                self._by_ns.pop(key[0], None)
        return old

    def replace(self, objects: list[dict[str, Any]]
                ) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        """Take a fresh listing; returns the differences as (type, old, new)."""
        changes: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
        with self._lock:
            fresh = {_key(o): o for o in objects}
            for key in list(self._objects):
                if key not in fresh:
                    changes.append(("DELETED", self._pop(key), None))
            for obj in fresh.values():
                old = self._put(obj)
                if old is None:
                    changes.append(("ADDED", None, obj))
                elif _rv(old) != _rv(obj) or _rv(obj) is None:
                    changes.append(("MODIFIED", old, obj))
            self.synced.set()
        return changes

    def apply(self, type_: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        """A watch event; returns the previous object."""
        with self._lock:
            if type_ == "DELETED":
                return self._pop(_key(obj))
            return self._put(obj)

    def write_through(self, obj: dict[str, Any], deleted: bool = False) -> None:
        """An object as the API answered one of the operator's own writes."""
        if not (obj.get("metadata") or {}).get("name"):
            return
        with self._lock:
            key = _key(obj)
            have = self._objects.get(key)
            new, old = _rv(obj), _rv(have)
            if have is not None and (new is None or old is None or new < old):
                return  # the watch knows better
            if deleted and not (obj.get("metadata") or {}).get("deletionTimestamp"):
                self._pop(key)
            else:
                self._put(obj)

    def forget(self, namespace: str | None, name: str) -> None:
        """The object was deleted by the operator (the API answered with a Status)."""
        with self._lock:
            self._pop((namespace, name))

    def clear(self) -> list[dict[str, Any]]:
        with self._lock:
            gone = list(self._objects.values())
            self._objects.clear()
            self._by_ns.clear()
            return gone


class Informer:
    """List + watch one kind into a cache, forever, on one thread (see the module doc)."""

    def __init__(self, kube: Any, kind: str, cache: Cache, on_change: OnChange,
                 stop: threading.Event, *, served: Callable[[], bool],
                 watch_seconds: int = 30, site: str = "main", poll_seconds: float | None = None,
                 on_restart: Callable[[str, str], None] | None = None) -> None:
        self.kube = kube
        self.kind = kind
        self.cache = cache
        self.on_change = on_change
        self.stop = stop
        self.served = served
        self.watch_seconds = watch_seconds
        self.site = site
        self.on_restart = on_restart
        self.poll_seconds = poll_seconds  # relist at this interval instead of watching
        self.last_beat = time.monotonic()
        self.connected = False
        self.last_error: str | None = None

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            self.beat()
            try:
                if not self.served():
                    self._absent()
                    self.stop.wait(5.0)
                    continue
                self.cache.served = True
                rv = self._list()
                backoff = 0.5
                self._watch(rv)
            except Exception as exc:  # noqa: BLE001 - a watch never dies: relist after a pause
                self.connected = False
                if self.stop.is_set():
                    return
                msg = f"{type(exc).__name__}: {exc}"
                if msg == self.last_error or isinstance(exc, Conflict):
                    log.debug("watch of %s at the %s site restarts: %s", self.kind, self.site, msg)
                else:  # said once per distinct error; a bug gets its traceback
                    log.warning("watch of %s at the %s site restarts in %.1f s: %s", self.kind,
                                self.site, backoff, msg, exc_info=not isinstance(exc, DrKitError))
                self.last_error = msg
                if self.on_restart is not None:
                    self.on_restart(self.kind, type(exc).__name__)
                self.beat()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _absent(self) -> None:
        """The cluster does not serve this kind (its CRD is missing): an empty cache."""
        if self.cache.served or not self.cache.synced.is_set():
            self.cache.served = False
            for obj in self.cache.clear():
                self.on_change(self.kind, "DELETED", obj, None)
            self.cache.synced.set()

    def _list(self) -> str:
        listing = self.kube.list(self.kind)
        items = listing.get("items") or []
        for change in self.cache.replace(items):
            self.on_change(self.kind, *change)
        self.connected = True
        self.last_error = None
        return (listing.get("metadata") or {}).get("resourceVersion") or "0"

    def _watch(self, rv: str) -> None:
        if self.poll_seconds is not None:  # a kind the client cannot watch: relist (rare)
            while not self.stop.wait(self.poll_seconds):
                self.beat()
                self._list()
            return
        while not self.stop.is_set():
            for type_, obj in self.kube.watch(self.kind, rv, timeout_seconds=self.watch_seconds):
                self.beat()
                if self.stop.is_set():
                    return
                if type_ == "ERROR":  # e.g. 410 Gone: the resourceVersion expired; relist
                    raise Conflict(f"watch of {self.kind}: {obj.get('message') or obj}")
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if type_ == "BOOKMARK":
                    continue
                obj.setdefault("kind", self.kind)
                old = self.cache.apply(type_, obj)
                self.on_change(self.kind, type_, old, None if type_ == "DELETED" else obj)
            self.beat()


__all__ = ["Cache", "Informer"]
