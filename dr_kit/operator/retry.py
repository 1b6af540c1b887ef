"""The operator's retry policy: a de-duplicating work queue, per-key backoff, two errors.

kopf's model, without kopf:

- any exception while handling a namespace is logged and the namespace is retried with an
  exponential backoff of its own (one failing namespace never slows the others down);
- :class:`TemporaryError` asks for a specific delay before the next attempt;
- :class:`PermanentError` stops retrying until the namespace (or one of its objects) changes.

:class:`WorkQueue` is client-go's work queue: a key is queued at most once, is handed to
one worker at a time, and a key added while it is being handled is handed out again when
the worker is done.  Delayed adds wait in a heap inside the queue, so no timer thread is
started per retry.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from dr_kit.errors import DrKitError


class TemporaryError(DrKitError):
    """Retry this namespace after ``delay`` seconds (instead of the backoff)."""

    def __init__(self, message: str, delay: float = 1.0):
        super().__init__(message)
        self.delay = float(delay)


class PermanentError(DrKitError):
    """Retrying is useless until the namespace or one of its objects changes."""


class Backoff:
    """Per-key exponential backoff: ``base * 2**(failures-1)``, capped at ``cap`` seconds."""

    def __init__(self, base: float = 0.5, cap: float = 60.0):
        self.base = base
        self.cap = cap
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def next_delay(self, key: Hashable) -> float:
        """Count one more failure of ``key`` and return how long to wait before retrying."""
        with self._lock:
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
        return min(self.cap, self.base * 2 ** min(n - 1, 30))

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        """``key`` succeeded: its next failure starts from ``base`` again."""
        with self._lock:
            self._failures.pop(key, None)


class WorkQueue:
    """Keys to handle, each at most once in the queue and by one worker at a time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()  # queued or to be re-queued when done
        self._processing: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []  # (due, seq, key)
        self._due: dict[Hashable, float] = {}  # earliest pending delayed add per key
        self._seq = 0
        self._closed = False

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if self._closed or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Add ``key`` once ``delay`` seconds have passed (the earliest request wins)."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._closed:
                return
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._delayed, (due, self._seq, key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to handle (the caller must call :meth:`done`), or None on timeout
        or when the queue is shut down."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._promote_due()
                if self._closed:
                    return None
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                now = self._clock()
                wait = None if deadline is None else deadline - now
                if self._delayed:
                    until_due = self._delayed[0][0] - now
                    wait = until_due if wait is None else min(wait, until_due)
                if wait is not None and wait <= 0:
                    if deadline is not None and deadline - now <= 0:
                        return None
                    continue
                self._cond.wait(wait)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self._add(key)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._ready.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    def __len__(self) -> int:
        """Keys ready to be handed out (delayed ones not counted)."""
        with self._cond:
            return len(self._ready)

    @property
    def delayed(self) -> int:
        with self._cond:
            return len(self._due)


__all__ = ["Backoff", "PermanentError", "TemporaryError", "WorkQueue"]
