"""Consistency groups: the commit path at the main site and the apply path at the backup.

A :class:`PrimaryGroup` owns one journal shared by all its member volumes: a write takes
the group's lock, gets the next sequence number, goes to the journal and then to the
volume, and is acknowledged.  Nothing on this path touches the network in asynchronous
mode; in synchronous mode the writer then waits for the backup's acknowledgement.

A :class:`SecondaryGroup` receives the same records into its own journal and applies them
strictly in sequence order; at every moment its volumes equal the main volumes after some
prefix of the acknowledged writes.

Pair states (one per group, shared by its pairs)::

    copy       initial copy running: backup not yet consistent
    pair       replicating; backup consistent at its applied position
    suspended  journal full or link timed out in sync mode: changed regions are tracked
    resync     changed regions being copied back: backup not consistent (guard snapshot kept)
    error      a corrupt or missing entry was detected and refused: resync needed

Roles swap (see :meth:`Array.demote` and :meth:`Array.promote`): a demoted main-side group
becomes a backup-side group (its hosts' writes are refused: fenced) that remembers the
regions it wrote beyond the split (*divergent* regions); a promoted backup-side group
becomes a main-side group that tracks the regions written since (or, when both sides were
identical, journals on from the same sequence).  When the new main reaches the new
backup, the divergent regions are merged into its changed regions and one resync copies
the union: nothing else.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dr_kit.errors import Conflict, JournalError, Unavailable
from dr_kit.storage import record as rec
from dr_kit.storage.blocks import CHUNK, ChunkMap, chunks_of
from dr_kit.storage.journal import Journal
from dr_kit.storage.position import JournalPosition, LagReport

if TYPE_CHECKING:
    from dr_kit.storage.array import Vol

log = logging.getLogger("dr_kit.storage.groups")
COPY, PAIR, SUSPENDED, RESYNC, ERROR = "copy", "pair", "suspended", "resync", "error"
JOURNALING = (COPY, PAIR, RESYNC)
_POS = struct.Struct("<QQd")  # sequence, generation, time
INLINE_APPLY_MAX = 1 << 20  # a received batch up to this size may be applied by its receiver


class _PosFile:
    """A tiny persistent (sequence, generation, time) triple, rewritten in place."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        raw = os.pread(self.fd, _POS.size, 0)
        self.seq, self.gen, self.time = _POS.unpack(raw) if len(raw) == _POS.size else (0, 0, 0.0)

    def store(self, seq: int, gen: int, t: float) -> None:
        self.seq, self.gen, self.time = seq, gen, t
        os.pwrite(self.fd, _POS.pack(seq, gen, t), 0)

    def close(self) -> None:
        os.close(self.fd)


class PrimaryGroup:
    """Main-site side of a consistency group (or of one independent pair)."""

    def __init__(self, name: str, folder: Path, members: dict[int, Vol], remote_names: dict[int, str],
                 conf: dict, *, journal: Journal, save: Callable[[], None]) -> None:
        self.name = name
        self.folder = folder
        self.members = members  # main volume id -> volume
        self.remote_names = remote_names  # main volume id -> backup volume name
        self.conf = conf  # persisted dict: mode, remote, state, generation, message, ...
        self.journal = journal
        self._save = save
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # new entries or acks
        self.dirty = {vid: ChunkMap(folder / f"dirty-{vid}.map", (v.size + CHUNK - 1) // CHUNK,
                                    create=not (folder / f"dirty-{vid}.map").exists())
                      for vid, v in members.items()}
        self.backup = _PosFile(folder / "backup-applied")
        self.acked_seq = self.backup.seq  # received in the backup journal
        self.applied_seq = self.backup.seq  # applied at the backup (last report)
        self.applied_time = self.backup.time  # main time of that write
        self.reported = False  # has the backup reported since this process started?
        self.applied_bytes = 0  # journal bytes applied at the backup since this process started
        self.sender_waiting = False  # set by the sender when it sleeps until the next entry
        self.wake: Callable[[], None] | None = None  # wakes the sender (set by the transport)
        self.sync_wakers: set[Callable[[], None]] = set()  # parked synchronous writers
        self.backup_state: str | None = None
        self.backup_consistent: bool | None = None
        self.copy_total = 0
        self.copy_done = 0
        self.connected = False
        self.last_error: str | None = None  # why the last replication session failed
        self.last_error_at: float | None = None
        self.faults: dict[str, int] = {}
        self.closed = False  # demoted or deleted: a writer that raced the change is refused

    # -- persisted attributes -------------------------------------------------------
    @property
    def state(self) -> str:
        return self.conf["state"]

    @property
    def mode(self) -> str:
        return self.conf.get("mode", "async")

    @property
    def generation(self) -> int:
        return self.journal.generation

    def _set_state(self, state: str, message: str = "") -> None:
        self.conf["state"] = state
        self.conf["message"] = message
        self.conf["state_since"] = time.time()
        self._save()
        self.signal()

    def signal(self) -> None:
        """Something the sender and waiting writers must look at changed (hold the lock)."""
        self.changed.notify_all()
        if self.wake is not None:
            self.wake()
        for w in list(self.sync_wakers):
            w()

    # -- the commit path ------------------------------------------------------------
    def commit(self, vol: Vol, offset: int, data: bytes) -> None:
        """Write to a member volume; returns when the write is acknowledged."""
        self.commit_many(vol, ((offset, data),))

    def commit_many(self, vol: Vol, extents: Sequence[tuple[int, bytes | memoryview]],
                    packed: bytes | memoryview | None = None, *, wait: bool = True) -> int:
        """Writes to a member volume, in order, sent together: one journal entry holds them
        all; returns when they are acknowledged (one wait in synchronous mode).  ``packed``
        is the same writes already in the record's write-vector form (as the data path
        receives them), stored as they are.

        With ``wait=False`` a synchronous pair's writer is not held here: the sequence the
        backup must acknowledge is returned (0: nothing to wait for), and the caller waits
        with :meth:`sync_done` / :meth:`sync_expired` (the data path parks the request)."""
        wait_for = 0
        with self.lock:
            if self.closed:
                raise Conflict(f"volume {vol.name!r} is no longer written through group "
                               f"{self.name!r} (demoted: it is read-only now)")
            conf = self.conf
            state = conf["state"]
            if state in JOURNALING:
                if len(extents) == 1:  # one write: the record holds it as it came
                    kind, off0, payload = rec.KIND_WRITE, extents[0][0], extents[0][1]
                elif packed is not None:
                    kind, off0, payload = rec.KIND_WRITEV, 0, packed
                else:
                    kind, off0, payload = rec.pack_extents(list(extents))
                if not isinstance(payload, bytes) and not (
                        isinstance(payload, memoryview) and isinstance(payload.obj, bytes)):
                    payload = bytes(payload)  # the journal keeps it by reference until written
                if self.journal.append_entry(kind, vol.id, off0, payload, time.time(), extents):
                    vol.write_many(extents)
                    if state == PAIR and conf.get("mode") == "sync":
                        wait_for = self.journal.next_seq - 1
                    if self.sender_waiting:  # wake the sender only when it waits for entries
                        self.sender_waiting = False
                        self.changed.notify_all()
                        if self.wake is not None:
                            self.wake()
                else:
                    self._suspend_locked("journal full: the backup cannot keep up or cannot be "
                                         "reached; changed regions are tracked, resync when the link is back")
            if self.conf["state"] not in JOURNALING:
                for offset, data in extents:
                    for c in chunks_of(offset, len(data)):
                        self.dirty[vol.id].add(c)
                if not self.conf.get("oldest_unreplicated"):
                    self.conf["oldest_unreplicated"] = time.time()
                    self._save()
                for offset, data in extents:
                    vol.write(offset, data)
            if wait_for and not wait:
                return wait_for
            if wait_for:
                deadline = time.monotonic() + self.sync_timeout
                while self.acked_seq < wait_for and self.conf["state"] == PAIR:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._sync_timed_out()
                        break
                    self.changed.wait(left)
        return 0

    @property
    def sync_timeout(self) -> float:
        return float(self.conf.get("sync_timeout_s", 5.0))

    def sync_done(self, seq: int) -> bool:
        """A synchronous write up to ``seq`` may be acknowledged to its host."""
        return self.acked_seq >= seq or self.conf["state"] != PAIR

    def sync_expired(self, seq: int) -> None:
        """The backup did not acknowledge ``seq`` in time: suspend, the host goes on."""
        with self.lock:
            if not self.sync_done(seq):
                self._sync_timed_out()

    def _sync_timed_out(self) -> None:
        self._suspend_locked("synchronous copy: the backup did not acknowledge within "
                             f"{self.conf.get('sync_timeout_s', 5.0)} s; pair suspended "
                             "so the main site keeps running")

    def _suspend_locked(self, why: str) -> None:
        if self.conf["state"] in (SUSPENDED, ERROR):
            return
        t = self.journal.time_of(self.applied_seq + 1)
        self.conf["oldest_unreplicated"] = t or time.time()
        self._set_state(SUSPENDED, why)

    def suspend(self, why: str = "suspended by request", *, hold: bool = False) -> None:
        """Suspend the pair (changes are tracked).  With ``hold`` (a request) it stays
        suspended until a resync is asked for, whatever ``auto_resync`` says."""
        with self.lock:
            if hold:
                self.conf["held"] = True  # before the state change wakes the sender
            self._suspend_locked(why)
            if hold:
                self._save()

    def fail(self, why: str) -> None:
        with self.lock:
            if self.conf["state"] != ERROR:
                if not self.conf.get("oldest_unreplicated"):
                    t = self.journal.time_of(self.applied_seq + 1)
                    self.conf["oldest_unreplicated"] = t or time.time()
                self._set_state(ERROR, why)

    # -- acknowledgements from the backup -------------------------------------------
    def on_ack(self, received: int, applied: int, applied_time: float, state: str | None,
               consistent: bool | None) -> None:
        old = None
        with self.lock:  # held briefly: the commit path takes this lock too
            self.reported = True
            self.backup_state, self.backup_consistent = state, consistent
            if received > self.acked_seq:
                self.acked_seq = received
                if self.mode == "sync":
                    self.changed.notify_all()  # release synchronous writers
                    for w in list(self.sync_wakers):
                        w()
            if applied > self.applied_seq:
                old = self.applied_seq
                self.applied_seq, self.applied_time = applied, applied_time
            elif applied == self.applied_seq:
                self.applied_time = applied_time or self.applied_time
        if old is not None:  # bookkeeping off the commit path's lock
            self.applied_bytes += self.journal.bytes_after(old) - self.journal.bytes_after(applied)
            self.backup.store(applied, self.journal.generation, applied_time)
            self.journal.free_through(applied)

    # -- resync / initial copy (called by the sender) -------------------------------
    def begin_copy(self) -> tuple[int, int, bool]:
        """Switch to copy/resync: returns (generation, first sequence, initial?)."""
        with self.lock:
            initial = self.conf["state"] == COPY
            last = self.conf.get("last_copy")
            # an initial copy begun before and not ended (its session failed) starts a new
            # generation too: the backup keeps only the frames and confirmations of the
            # copy of the current generation, so what the abandoned copy still has in
            # flight can neither count as this copy's nor overwrite its newer data
            again = initial and isinstance(last, dict) and last.get("ended") is None
            if not initial or again:
                # entries the backup has not applied are re-sent as copied regions
                for r, _ in self.journal.iter_records(max(self.applied_seq + 1, self.journal.first_seq)):
                    for off, data in r.extents():
                        for c in chunks_of(off, len(data)):
                            self.dirty[r.volume].add(c)
                self.journal.reset(self.journal.generation + 1)
            if not initial:
                self._set_state(RESYNC, "copying changed regions; the backup keeps its last "
                                "consistent image in a guard snapshot until this ends")
            self.copy_total = sum(m.count() for m in self.dirty.values())
            self.copy_done = 0
            self.conf["last_copy"] = {"initial": initial, "regions": self.copy_total,
                                      "bytes": self.copy_total * CHUNK, "started": time.time(),
                                      "ended": None, "generation": self.journal.generation}
            return self.journal.generation, self.journal.next_seq, initial

    def end_copy(self) -> int:
        """All regions copied: the backup becomes consistent once it applies through the
        returned sequence.  Unavailable, with nothing changed, when regions were marked
        meanwhile (a volume joined the group, or the other side's divergent regions were
        merged): the copy goes on with them in a new session, which announces the members;
        or when the group was suspended or failed meanwhile (the pair is not declared over
        the suspension: the group resyncs as its state says)."""
        with self.lock:
            state = self.conf["state"]
            if state not in (COPY, RESYNC):  # suspended or failed while the copy ran
                raise Unavailable(f"the group became {state} during the copy "
                                  f"({self.conf.get('message') or 'no reason given'}); "
                                  "the copy ends without the pair")
            left = sum(m.count() for m in self.dirty.values())
            if left:
                raise Unavailable(f"{left} regions were marked for copying while the copy ran "
                                  "(a volume joined the group): copying them too")
            self.conf.pop("oldest_unreplicated", None)
            if isinstance(self.conf.get("last_copy"), dict):
                self.conf["last_copy"]["ended"] = time.time()
            self._set_state(PAIR)
            return self.journal.last_seq

    def merge_divergent(self, runs: dict[str, list[list[int]]]) -> int:
        """Regions the backup side wrote itself beyond the split (a demoted old main), by
        its volume names: they join the changed regions, so the next copy overwrites them
        with this side's data.  Returns the number of regions added."""
        by_remote = {rn: vid for vid, rn in self.remote_names.items()}
        added = 0
        with self.lock:
            for name, pairs in runs.items():
                vid = by_remote.get(str(name))
                dmap = self.dirty.get(vid) if vid is not None else None
                if dmap is None:
                    continue
                chunks = [c for c0, c1 in pairs for c in range(max(0, int(c0)), min(int(c1), dmap.nchunks))]
                before = dmap.count()
                dmap.add_many(chunks)
                added += dmap.count() - before
            if added:
                if self.conf["state"] in (PAIR, COPY):
                    self._suspend_locked(f"the backup holds {added} regions it wrote itself after "
                                         "the split; they are copied from here")
                self.conf["resync_requested"] = True
                self._save()
                self.signal()
        return added

    def demote_view(self) -> dict:
        """What a demotion would find: (generation, last sequence, acknowledged applied)."""
        with self.lock:
            return {"generation": self.journal.generation, "last": self.journal.last_seq,
                    "applied": self.applied_seq, "state": self.conf["state"],
                    "dirty": sum(m.count() for m in self.dirty.values())}

    # -- lag ------------------------------------------------------------------------
    def lag(self) -> LagReport:
        with self.lock:
            now = time.time()
            state = self.conf["state"]
            head = JournalPosition(self.journal.generation, self.journal.last_seq)
            known = self.reported or self.backup.seq > 0 or self.applied_seq >= self.journal.last_seq
            applied = JournalPosition(self.backup.gen or self.journal.generation, self.applied_seq) if known else None
            consistent: bool | None = self.backup_consistent
            seq_lag = byte_lag = None
            tlag: float | None = None
            if state == PAIR and known:
                seq_lag = max(0, self.journal.last_seq - self.applied_seq)
                byte_lag = self.journal.bytes_after(self.applied_seq)
                if seq_lag == 0:
                    tlag = 0.0
                else:
                    t = self.journal.time_of(self.applied_seq + 1)
                    tlag = max(0.0, now - t) if t else None
            elif state in (SUSPENDED, ERROR, RESYNC):
                oldest = self.conf.get("oldest_unreplicated")
                tlag = max(0.0, now - oldest) if oldest else None
                byte_lag = sum(m.count() for m in self.dirty.values()) * CHUNK + \
                    self.journal.bytes_after(self.applied_seq)
                consistent = False if state == RESYNC else consistent
            msg = self.conf.get("message", "")
            if state in (COPY, RESYNC) and self.copy_total:
                msg = f"{msg} ({self.copy_done}/{self.copy_total} regions copied)".strip()
            return LagReport(group=self.name, state=state, main=head, applied=applied,
                             sequence_lag=seq_lag, byte_lag=byte_lag, time_lag_s=tlag,
                             consistent=consistent, measured_at=now, source="array", message=msg)

    def close(self) -> None:
        self.closed = True
        self.journal.close()
        for m in self.dirty.values():
            m.close()
        self.backup.close()


class SecondaryGroup:
    """Backup-site side of a consistency group: receive, store, apply in order."""

    def __init__(self, name: str, folder: Path, members: dict[int, Vol], conf: dict, *,
                 journal: Journal, save: Callable[[], None]) -> None:
        self.name = name
        self.folder = folder
        self.members = members  # main volume id -> local secondary volume
        self.conf = conf  # persisted: state, consistent, copy_end_seq, message, generation
        self.journal = journal
        self._save = save
        self.lock = threading.RLock()  # held while applying a batch and while snapshotting
        self.wakeup: Callable[[], None] | None = None  # asks the apply workers to look here
        self.applied = _PosFile(folder / "applied")
        if self.applied.seq == 0 and journal.first_seq > 1:
            self.applied.seq = journal.first_seq - 1
        self.paused = False
        self.applied_at: float | None = None  # when the last entry was applied here (this process)
        self.listeners: list[Callable[[], None]] = []
        self.main_head = (0, 0.0)  # (sequence, time) last heard from the main site
        # a demoted old main: the regions it wrote beyond the split, by its volume names
        self.divergent: dict[str, ChunkMap] = {}
        for v in members.values():
            path = folder / f"divergent-{v.name}.map"
            if conf.get("divergent") and path.exists():
                self.divergent[v.name] = ChunkMap(path, (v.size + CHUNK - 1) // CHUNK)

    def divergent_runs(self) -> dict[str, list[list[int]]]:
        """The divergent regions as ``{volume: [[first chunk, last + 1], ...]}`` ({} when none)."""
        out: dict[str, list[list[int]]] = {}
        for name, m in self.divergent.items():
            runs: list[list[int]] = []
            for c in m:
                if runs and runs[-1][1] == c:
                    runs[-1][1] = c + 1
                else:
                    runs.append([c, c + 1])
            if runs:
                out[name] = runs
        return out

    def clear_divergent(self) -> None:
        """A copy from the new main overwrote them: forget the divergent regions."""
        for m in self.divergent.values():
            m.close()
            m.path.unlink(missing_ok=True)
        self.divergent.clear()
        if self.conf.pop("divergent", None) is not None:
            self._save()

    @property
    def state(self) -> str:
        return self.conf["state"]

    @property
    def applied_seq(self) -> int:
        return self.applied.seq

    @property
    def received_seq(self) -> int:
        return self.journal.last_seq

    def set_state(self, state: str, message: str = "", consistent: bool | None = None) -> None:
        self.conf["state"] = state
        self.conf["message"] = message
        if consistent is not None:
            self.conf["consistent"] = consistent
        if state == PAIR and consistent and self.divergent:
            self.clear_divergent()  # a copy made this side equal to the new main
        self._save()

    # -- receiving ------------------------------------------------------------------
    def receive(self, batch: bytes, *, apply: bool = False) -> int:
        """Store a batch of records from the main site; refuse the whole batch if any is bad.

        Each record's checksum, sequence, generation and volume are checked in place (no
        record is copied); the batch then goes to the journal as it came, one write.  With
        ``apply``, a group whose earlier records are all applied applies these at once from
        the batch in memory (the receiving thread, no hand-off; returns how many); otherwise
        the apply workers are asked to (returns 0)."""
        if self.conf["state"] == ERROR:
            raise JournalError(self.conf.get("message") or "group is in error state")
        gen, members = self.journal.generation, self.members
        first = expect = self.journal.next_seq
        times: list[float] = []
        ends: list[int] = []
        records = []
        try:
            for kind, g, seq, t, vol, off, data, end in rec.scan(batch):
                if g != gen:
                    raise JournalError(f"entry {seq} belongs to generation {g}, expected {gen}")
                if seq != expect:
                    raise JournalError(f"entry {expect} is missing (received {seq} instead)")
                if vol not in members:
                    raise JournalError(f"entry {seq} names volume {vol}, not a member")
                times.append(t)
                ends.append(end)
                records.append((kind, seq, t, vol, off, data))
                expect += 1
        except JournalError as e:
            self.fail(f"refused a journal entry from the main site: {e}; nothing of it was applied; "
                      "resync the pair")
            raise
        if not ends:
            return 0
        if self.journal.would_overflow(len(batch)):
            raise JournalError("backup journal full")
        self.journal.append_batch(batch, times, ends)
        if apply and not self.paused and len(batch) <= INLINE_APPLY_MAX \
                and self.lock.acquire(blocking=False):
            try:
                if self.applied.seq == first - 1 and self.conf["state"] != ERROR:
                    n = self._apply(records, first)
                else:
                    n = 0
            finally:
                self.lock.release()
            if n:
                self._notify()
                return n
        self.kick()
        return 0

    def fail(self, why: str) -> None:
        self.set_state(ERROR, why)
        self._notify()

    # -- applying -------------------------------------------------------------------
    def apply_available(self, max_records: int = 4096) -> int:
        """Apply the next records in order (not during a copy); returns how many.

        Records are read from this site's journal in batches (one read each), verified
        again (what is on this disk is what is applied) and written to their volumes
        straight from the batch buffer."""
        with self.lock:
            if self.paused or self.conf["state"] == ERROR:
                return 0
            start = self.applied.seq + 1
            through = min(self.journal.last_seq, start + max_records - 1)
            if start > through:
                return 0

            def records():
                seq = start
                while seq <= through:
                    buf, count = self.journal.read_records(seq, max_bytes=4 << 20, through=through)
                    if not count:
                        return
                    for kind, _g, s, t, vol, off, data, _end in rec.scan(buf, seq):
                        yield kind, s, t, vol, off, data
                    seq += count

            n = self._apply(records(), start)
        if n:
            self._notify()
        return n

    def _apply(self, records, start: int) -> int:
        """Apply ``records`` (kind, sequence, time, volume, offset, data), the next in order
        from ``start`` (hold the lock); a bad one puts the group in error and ends it."""
        n = 0
        last_t = self.applied.time
        members = self.members
        try:
            for kind, seq, t, vol, off, data in records:
                if kind == rec.KIND_WRITE:
                    members[vol].write_many(((off, data),))
                elif kind == rec.KIND_WRITEV:
                    members[vol].write_many(rec.extent_views(data, f"journal record {seq}"))
                else:
                    raise JournalError(f"journal record {seq} has unknown kind {kind}")
                last_t = t
                n += 1
        except (JournalError, KeyError) as e:
            why = e if isinstance(e, JournalError) else f"it names volume {e}, not a member"
            self.fail(f"journal entry {start + n} at the backup is corrupt: {why}; it was not "
                      "applied; resync the pair")
        if n:
            self.applied.store(start + n - 1, self.journal.generation, last_t)
            self.applied_at = time.time()
            self.journal.free_through(self.applied.seq)
            target = self.conf.get("copy_end_seq")
            if target is not None and self.applied.seq >= target:
                self.conf["copy_end_seq"] = None
                self.set_state(PAIR, "", consistent=True)
        return n

    def _notify(self) -> None:
        for fn in list(self.listeners):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - e.g. a listener of a dead connection
                log.warning("group %s: a progress listener failed: %s: %s", self.name,
                            type(e).__name__, e)

    @property
    def pending(self) -> bool:
        """Received records wait to be applied (and applying is not paused)."""
        return not self.paused and self.conf["state"] != ERROR and self.applied.seq < self.journal.last_seq

    def kick(self) -> None:
        if self.wakeup is not None:
            self.wakeup()

    def close(self) -> None:
        self.journal.close()
        self.applied.close()
        for m in self.divergent.values():
            m.close()
