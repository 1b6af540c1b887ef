"""The replication link between two arrays: transfer, receive, apply, initial copy, resync.

Resources are bounded whatever the number of consistency groups and volumes:

- one asyncio event loop thread per array process runs every group's sender (main side)
  and every group's receiver (backup side);
- a main array keeps two TCP connections ("lanes", see :mod:`wire`) to each backup array:
  the *priority* lane for control, journal entries and acknowledgements, the *bulk* lane
  for initial-copy and resync data.  Every group is a channel on them, authenticated with
  its pair secret;
- a fixed pool of :data:`APPLY_WORKERS` threads applies the backup groups' journals (each
  group strictly in sequence order, groups taking turns);
- one helper thread does the slow disk work of copies and group set-up, in order: on the
  main side a copy's reads, zero scans, extent maps and the copy's start; on the
  backup side the creation of a group's backup side (volumes, journal, array.json), the
  start and end of a copy and the storing of copied regions.  The loop itself only moves
  frames, stores entries in journals and applies them when caught up, so the running
  groups' entries never wait behind a copy's disk work.

Main side: a group's sender announces the group, then either copies changed regions
(initial copy or resync) or streams journal records in order.  The commit path never
waits for it and wakes it only on the idle-to-busy edge: one eventfd write when the
sender sleeps for lack of entries.  An asynchronous sender sends what the journal holds,
then lets the next writes gather for a window that grows with the write rate
(:data:`GATHER_MIN_S` up to :data:`GATHER_RATE` records/s, proportionally longer above,
at most :data:`GATHER_MAX_S`) and looks again: while the group is busy its writers never
have to wake it, and the transfers' fixed costs stay bounded per second.

Copies stream: regions go out without a round trip each, up to :data:`COPY_WINDOW_BYTES`
in flight, acknowledged by the backup once per batch of frames it has stored.  Holes and
zero regions are sent as one small "zeros" frame per run: the backup keeps them (or makes
them) holes, so thin volumes stay thin.  At most :data:`COPY_SLOTS` groups copy at a time
per array and each copy yields after every frame; with the helper thread doing the copies'
disk work, groups that already replicate keep their lag while other groups copy.

Backup side: each channel verifies the records it receives (checksum, sequence,
generation), stores them in the group's journal (one write per batch) and acknowledges
the applied position as soon as an apply pass ends (a fixed-size binary frame while the
pair replicates); receipts alone are acknowledged at most every :data:`ACK_INTERVAL_S`
in asynchronous mode, at once in synchronous mode.  Every refusal (bad checksum, gap,
wrong generation) puts the group in the error state with the reason, and nothing of the
bad batch is applied.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import queue
import random
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from dr_kit.errors import DrKitError, JournalError, Unavailable
from dr_kit.storage import wire
from dr_kit.storage.blocks import CHUNK, data_ranges, is_zero
from dr_kit.storage.groups import COPY, ERROR, PAIR, RESYNC, SUSPENDED, PrimaryGroup, SecondaryGroup

if TYPE_CHECKING:
    from dr_kit.storage.array import Array

log = logging.getLogger("dr_kit.replication")
COPY_WINDOW_BYTES = 16 << 20  # copy data in flight before waiting for the backup
COPY_FRAME_CHUNKS = 16  # a copy frame carries up to this many chunks of data (1 MiB)
COPY_SLOTS = 2  # groups copying at once per array
# asynchronous pairs: after a transfer the next writes gather for a window that grows with
# the write rate, from GATHER_MIN_S at GATHER_RATE records/s or less to GATHER_MAX_S, so the
# cost of a transfer (three processes, system calls, wake-ups) stays bounded per second
GATHER_MIN_S = 0.001
GATHER_MAX_S = 0.01
GATHER_RATE = 1000.0
ACK_INTERVAL_S = 0.02  # asynchronous pairs: receipts are acknowledged at most this often
APPLY_WORKERS = 2
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_WAIT_S = 2.0  # an idle sender looks again at least this often
PREAUTH_MAX = 64 << 10  # bytes a connection may send before any channel is authenticated
_FATAL = "fatal"


def gather_window(records: int, seconds: float) -> float:
    """How long an asynchronous sender lets writes gather after a transfer of ``records``
    written over ``seconds``: GATHER_MIN_S up to GATHER_RATE records/s, proportionally
    longer above, at most GATHER_MAX_S."""
    rate = records / max(seconds, GATHER_MIN_S)
    return min(GATHER_MAX_S, max(GATHER_MIN_S, GATHER_MIN_S * rate / GATHER_RATE))


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"cannot reach the backup array: {e.strerror}"
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "the backup array did not answer in time"
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


# -- lanes and channels (both sides) ---------------------------------------------------------


class _Lane(asyncio.Protocol):
    """One TCP connection carrying the frames of many channels."""

    def __init__(self, service: ReplicationService, kind: str = "") -> None:
        self.service = service
        self.kind = kind
        self.reader = wire.FrameReader()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._paused = False
        self._drained: list[asyncio.Future] = []
        self.peer_name = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer_name = str(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except Unavailable as e:
            log.warning("replication: dropped the connection from %s: %s", self.peer_name, e)
            self.abort(str(e))
            return
        for ftype, channel, payload in frames:
            if self.closed:
                return
            try:
                self.on_frame(channel, ftype, payload)
            except Exception as e:  # noqa: BLE001 - one bad frame ends this connection, not the loop
                log.warning("replication lane %s: %s: %s", self.peer_name, type(e).__name__, e)
                self.abort(str(e))
                return
        self.after_frames()

    def on_frame(self, channel: int, ftype: int, payload: bytes) -> None:
        raise NotImplementedError

    def after_frames(self) -> None:
        pass

    def send(self, channel: int, ftype: int, payload: bytes | memoryview = b"") -> None:
        if self.transport is not None and not self.closed:  # one write: one system call
            self.transport.write(wire.FRAME.pack(len(payload), ftype, channel) + payload)

    def send_parts(self, channel: int, ftype: int, *parts: bytes | memoryview) -> None:
        """One frame whose payload is ``parts`` joined (one copy, one write)."""
        if self.transport is not None and not self.closed:
            n = sum(len(p) for p in parts)
            self.transport.write(b"".join((wire.FRAME.pack(n, ftype, channel), *parts)))

    def send_json(self, channel: int, ftype: int, obj: dict[str, Any]) -> None:
        self.send(channel, ftype, json.dumps(obj).encode())

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for f in self._drained:
            if not f.done():
                f.set_result(None)
        self._drained.clear()

    async def drain(self) -> None:
        if self._paused and not self.closed:
            f = asyncio.get_running_loop().create_future()
            self._drained.append(f)
            await f
        if self.closed:
            raise Unavailable("the replication connection was closed")

    def abort(self, why: str = "") -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for f in self._drained:
            if not f.done():
                f.set_result(None)
        self._drained.clear()


class _Channel:
    """Main side: one group's session on one lane."""

    def __init__(self, lane: _MainLane, cid: int) -> None:
        self.lane, self.cid = lane, cid
        self.frames: collections.deque[tuple[int, bytes]] = collections.deque()
        self.arrived = asyncio.Event()
        self.handler: Any = None  # after the handshake: frames go to this callable
        self.lost: str | None = None
        self.on_lost: Any = None

    def deliver(self, ftype: int, payload: bytes) -> None:
        if self.handler is not None:
            self.handler(ftype, payload)
        else:
            self.frames.append((ftype, payload))
            self.arrived.set()

    def close(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self.arrived.set()
            if self.on_lost is not None:
                self.on_lost(why)

    async def next(self, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self.lost is not None:
                raise Unavailable(self.lost)
            self.arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable("the backup array did not answer the handshake in time")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return self.frames.popleft()

    def send(self, ftype: int, payload: bytes | memoryview = b"") -> None:
        if self.lost is not None:
            raise Unavailable(self.lost)
        self.lane.send(self.cid, ftype, payload)

    def send_json(self, ftype: int, obj: dict[str, Any]) -> None:
        self.send(ftype, json.dumps(obj).encode())

    def bye(self) -> None:
        if self.lost is None and not self.lane.closed:
            self.lane.send(self.cid, wire.BYE)
        self.lane.channels.pop(self.cid, None)
        self.lost = self.lost or "closed"


class _MainLane(_Lane):
    def __init__(self, service: ReplicationService, peer: _Peer, kind: str) -> None:
        super().__init__(service, kind)
        self.peer = peer
        self.channels: dict[int, _Channel] = {}
        self._next = 1

    def open_channel(self) -> _Channel:
        cid = self._next
        self._next += 1
        ch = _Channel(self, cid)
        if self.closed:
            # the connection ended before this channel was opened: groups waiting for the
            # same connection get it after the link (or the backup) dropped it at once.  A
            # channel opened on it now would wait for an answer that cannot come (the
            # handshake's 10 s): it fails at once instead and its sender tries again
            ch.close(f"replication connection to {self.peer.remote} lost")
        else:
            self.channels[cid] = ch
        return ch

    def on_frame(self, channel: int, ftype: int, payload: bytes) -> None:
        ch = self.channels.get(channel)
        if ch is not None:
            ch.deliver(ftype, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        why = f"replication connection to {self.peer.remote} lost" + (f": {exc}" if exc else "")
        for ch in list(self.channels.values()):
            ch.close(why)
        self.channels.clear()
        if self.peer.lanes.get(self.kind) is self:
            self.peer.lanes[self.kind] = None


class _Peer:
    """The two lanes from this (main) array to one backup array, shared by its groups."""

    def __init__(self, service: ReplicationService, remote: str) -> None:
        self.service, self.remote = service, remote
        self.lanes: dict[str, _MainLane | None] = {wire.PRIO: None, wire.BULK: None}
        self._connecting: dict[str, asyncio.Future] = {}
        self._retry_at = 0.0
        self._backoff = 0.05
        self._error = ""

    async def lane(self, kind: str) -> _MainLane:
        lane = self.lanes.get(kind)
        if lane is not None and not lane.closed:
            return lane
        pending = self._connecting.get(kind)
        if pending is not None:
            return await asyncio.shield(pending)
        if time.monotonic() < self._retry_at:  # one attempt per back-off for all its groups
            raise Unavailable(self._error)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._connecting[kind] = fut
        try:
            host, _, port = self.remote.rpartition(":")
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _MainLane(self.service, self, kind), host, int(port)),
                2.0)
            lane = proto
            self.lanes[kind] = lane
            self._backoff = 0.05
            fut.set_result(lane)
            return lane
        except (TimeoutError, OSError, ValueError) as e:
            self._error = _one_line(e)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(1.0, self._backoff * 2)
            err = Unavailable(self._error)
            fut.set_exception(err)
            raise err from None
        finally:
            self._connecting.pop(kind, None)

    def close(self) -> None:
        for lane in self.lanes.values():
            if lane is not None:
                lane.abort()


# -- main side: one sender per group (a coroutine, not a thread) --------------------------------


class Sender:
    """Ships one primary group's journal to the backup array (runs on the service's loop)."""

    def __init__(self, service: ReplicationService, grp: PrimaryGroup) -> None:
        self.service, self.grp = service, grp
        self.loop = service.loop
        self.ev = asyncio.Event()
        self.stopping = False
        self.last_error = ""
        self.rng = random.Random()
        self.prio: _Channel | None = None
        self.bulk: _Channel | None = None
        self.lost: str | None = None
        self.copied = 0  # copy bytes the backup confirmed (current copy)
        self.copy_gen = 0
        self.reply: asyncio.Future | None = None
        grp.wake = self._wake_threadsafe
        self.task = self.loop.create_task(self.run(), name=f"sender-{grp.name}")

    def _wake_threadsafe(self) -> None:
        if threading.get_ident() == self.service.loop_thread_id:
            self.ev.set()
        else:
            waker = self.service.waker
            if waker is not None:
                waker.wake(self.ev)

    def stop(self) -> None:
        self.stopping = True
        if self.grp.wake == self._wake_threadsafe:
            self.grp.wake = None
        self.task.cancel()

    async def _wait(self, timeout: float) -> None:
        """Until woken (new entries, a state change, an acknowledgement) or ``timeout``."""
        if self.ev.is_set() or self.lost is not None:
            return
        h = self.loop.call_later(timeout, self.ev.set)
        try:
            await self.ev.wait()
        finally:
            h.cancel()

    async def run(self) -> None:
        backoff = 0.05
        g = self.grp
        while not self.stopping:
            if not (g.conf.get("secret") and g.conf.get("remote")):
                # a promoted group not paired with the other side yet: nothing to reach
                self.ev.clear()
                await self._wait(IDLE_WAIT_S)
                continue
            try:
                await self._session()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, DrKitError, ValueError, KeyError, TypeError) as e:
                msg = _one_line(e)
                if msg != self.last_error:  # a new kind of failure: say it once, not per retry
                    log.warning("group %s: replication session failed: %s", g.name, msg)
                self.last_error = msg
                g.last_error, g.last_error_at = msg, time.time()
            except Exception as e:  # noqa: BLE001 - a bug must not end replication for good
                log.exception("group %s: replication session crashed", g.name)
                g.last_error, g.last_error_at = _one_line(e), time.time()
            finally:
                g.connected = False
                for ch in (self.prio, self.bulk):
                    if ch is not None:
                        ch.bye()
                self.prio = self.bulk = None
            try:
                g.journal.drain()  # no session reads the journal: its queue is written here
            except OSError as e:  # kept queued (and marked in flight); the next read retries
                g.last_error, g.last_error_at = f"journal write failed: {_one_line(e)}", time.time()
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    def _lost(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        self.ev.set()
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(Unavailable(why))

    def _check(self) -> None:
        if self.lost is not None:
            raise Unavailable(self.lost)
        if self.stopping:
            raise asyncio.CancelledError()

    # -- handshake --------------------------------------------------------------------------
    async def _open(self, kind: str) -> tuple[_Channel, dict[str, Any]]:
        g = self.grp
        peer = self.service.peer(g.conf["remote"])
        lane = await peer.lane(kind)
        ch = lane.open_channel()
        try:
            secret = g.conf.get("secret") or ""
            nm = wire.nonce()
            ch.send_json(wire.HELLO, {"group": g.name, "nonce": nm, "lane": kind})
            ftype, payload = await ch.next(HANDSHAKE_TIMEOUT_S)
            if ftype == wire.ERROR:
                raise Unavailable(f"the backup refused group {g.name}: {json.loads(payload)['message']}")
            chal = json.loads(payload) if ftype == wire.CHALLENGE else {}
            nb = chal.get("nonce") if isinstance(chal, dict) else None
            if not isinstance(nb, str) or not wire.proof_ok(secret, "backup", g.name, nm, nb,
                                                            chal.get("proof")):
                raise Unavailable(f"the replication peer at {g.conf['remote']} did not prove the pair "
                                  f"secret of group {g.name}; nothing was sent to it")
            members = {str(vid): [g.remote_names[vid], v.size, v.name] for vid, v in g.members.items()}
            ch.send_json(wire.AUTH, {"proof": wire.proof(secret, "main", g.name, nm, nb),
                                     "generation": g.generation, "members": members, "mode": g.mode,
                                     "journal_capacity": g.journal.capacity})
            ftype, payload = await ch.next(HANDSHAKE_TIMEOUT_S)
            if ftype == wire.ERROR:
                raise Unavailable(f"the backup refused group {g.name}: {json.loads(payload)['message']}")
            st = json.loads(payload)
        except BaseException:
            ch.bye()
            raise
        ch.on_lost = self._lost
        return ch, st

    # -- one session --------------------------------------------------------------------------
    async def _session(self) -> None:
        g = self.grp
        self.lost = None
        g.conf.pop("reconnect", None)
        self.prio, st = await self._open(wire.PRIO)
        self.prio.handler = self._on_prio
        self._on_state(st)
        g.connected = True
        g.last_error = g.last_error_at = None
        self.last_error = ""
        if st.get("state") == ERROR and g.state != ERROR:
            g.fail(f"the backup reports: {st.get('message')}")
        next_seq = int(st["received"]) + 1
        if isinstance(st.get("divergent"), dict) and st["divergent"]:
            added = g.merge_divergent(st["divergent"])  # the old main's own writes: copied over
            log.info("group %s: the backup holds regions written after the split; %d join the "
                     "changed regions", g.name, added)
        if st.get("generation") == g.generation and g.state == PAIR and \
                int(st["received"]) > g.journal.last_seq:
            # the backup holds entries this side never wrote: nothing tells which regions
            # differ, so every region is copied
            for m in g.dirty.values():
                m.set_all()
            g.suspend(f"the backup holds entries up to {st['received']}, beyond this side's "
                      f"{g.journal.last_seq}; a full resync follows")
            with g.lock:
                g.conf["resync_requested"] = True
        if st.get("generation") != g.generation and g.state == PAIR:
            g.suspend("the backup is at another generation; resync needed")
        last_beat, beat_head = 0.0, -1
        last_sent = 0.0
        journal = g.journal
        while True:
            self._check()
            self.ev.clear()
            if g.conf.pop("reconnect", False):
                raise Unavailable("group membership changed; announcing it again")
            state = g.state
            if state == COPY or (state in (SUSPENDED, RESYNC) and g.conf.get("auto_resync", True)
                                 and not g.conf.get("held")) \
                    or (state in (ERROR, SUSPENDED) and g.conf.pop("resync_requested", False)):
                next_seq = await self._copy()
                continue
            if state != PAIR or g.conf.get("transfer_paused"):
                journal.drain()  # nothing reads the journal meanwhile: its queue is written here
                await self._wait(IDLE_WAIT_S)
                continue
            if next_seq < journal.first_seq and journal.last_seq >= journal.first_seq:
                g.suspend(f"journal records from {next_seq} are no longer held at the main site; resync")
                continue
            head = journal.next_seq - 1
            now = time.monotonic()
            if (head != beat_head and now - last_beat > 0.25) or now - last_beat > 5.0:
                self.prio.send_json(wire.STATE, {"head": head, "head_time": journal.time_of(head)})
                last_beat, beat_head = now, head
            if head < next_seq:  # nothing new: sleep until the commit path wakes us
                idle = False
                with g.lock:
                    if journal.next_seq <= next_seq and g.state == PAIR:
                        g.sender_waiting = idle = True
                if idle:
                    await self._wait(IDLE_WAIT_S)
                    g.sender_waiting = False
                continue
            interval = float(g.conf.get("transfer_interval_ms", 0)) / 1000.0
            if interval:
                # an independent transfer cycle: this journal is read on its own schedule
                await asyncio.sleep(interval * self.rng.uniform(0.5, 1.5))
                self._check()
                if g.state != PAIR:
                    continue
                head = journal.next_seq - 1
            first = next_seq
            while next_seq <= head:  # everything the journal holds now, in frames of <= 1 MiB
                batch, count = journal.read_records(next_seq, max_bytes=1 << 20, through=head)
                if not count:
                    break
                if g.faults.get("corrupt_next", 0) > 0:
                    g.faults["corrupt_next"] -= 1
                    b = bytearray(batch)
                    b[-1] ^= 0xFF  # a bit flip on the wire, after the checksum was computed
                    batch = bytes(b)
                self.prio.send(wire.ENTRIES, batch)
                next_seq += count
            now = time.monotonic()
            # the window follows the rate of the writes just sent
            window = gather_window(next_seq - first, now - last_sent) if last_sent else GATHER_MIN_S
            last_sent = now
            await self.prio.lane.drain()
            if g.mode == "async" and not interval:
                # the next writes gather for the window (a timer on this loop: while the
                # group is busy the commit path never has to wake the sender)
                await asyncio.sleep(window)

    def _on_prio(self, ftype: int, payload: bytes) -> None:
        if ftype == wire.ACKB and len(payload) == wire.ACK_BIN.size:
            received, applied, applied_time, _gen, flags = wire.ACK_BIN.unpack(payload)
            self.grp.on_ack(received, applied, applied_time, PAIR, bool(flags & 1))
            return
        try:
            msg = json.loads(payload)
        except ValueError:
            self._lost("the backup sent a garbled frame")
            return
        if ftype == wire.ERROR:
            if msg.get(_FATAL):
                self._lost(f"the backup ended the session: {msg.get('message')}")
            else:
                self.grp.fail(f"the backup refused data: {msg.get('message')}")
            return
        if msg.get("reply") and self.reply is not None and not self.reply.done():
            self.reply.set_result(msg)
        self._on_state(msg)

    def _on_bulk(self, ftype: int, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            self._lost("the backup sent a garbled frame")
            return
        if ftype == wire.ERROR:
            self._lost(f"the backup refused copied data: {msg.get('message')}")
        elif msg.get("gen") == self.copy_gen:
            self.copied = max(self.copied, int(msg.get("copied", 0)))
            self.ev.set()

    def _on_state(self, st: dict[str, Any]) -> None:
        self.grp.on_ack(int(st.get("received", 0)), int(st.get("applied", 0)),
                        float(st.get("applied_time") or 0.0), st.get("state"), st.get("consistent"))
        if st.get("state") == ERROR and self.grp.state not in (ERROR, COPY, RESYNC):
            self.grp.fail(f"the backup reports: {st.get('message') or 'error'}")

    # -- initial copy and resync -------------------------------------------------------------
    async def _copy(self) -> int:
        """Initial copy or resync; returns the next sequence to stream."""
        g = self.grp
        assert self.prio is not None and self.service.copy_slots is not None
        async with self.service.copy_slots:  # a few copies at a time; the others wait their turn
            self._check()
            gen, first_seq, initial = await self.loop.run_in_executor(self.service.executor, g.begin_copy)
            self.reply = self.loop.create_future()
            self.prio.send_json(wire.RESYNC_START, {"generation": gen, "next_seq": first_seq,
                                                    "initial": initial})
            try:
                await asyncio.wait_for(asyncio.shield(self.reply), 60.0)
            except TimeoutError:
                raise Unavailable("the backup did not confirm the start of the copy") from None
            finally:
                self.reply = None
            if self.bulk is None or self.bulk.lost is not None:
                self.bulk, _ = await self._open(wire.BULK)
                self.bulk.handler = self._on_bulk
            self.copy_gen, self.copied = gen, 0
            await self._copy_regions(gen)
            end_seq = g.end_copy()  # here, not in the helper thread: no cancellation between
            # the end of the copy and its announcement
            self.prio.send_json(wire.COPY_DONE, {"end_seq": end_seq})
            return first_seq

    async def _copy_regions(self, gen: int) -> None:
        """Send every dirty region: data where the main holds non-zero data, "zeros" frames
        for the rest (block-exact, so the backup allocates what the main allocated)."""
        g = self.grp
        sent = 0
        inflight: collections.deque[tuple[int, int, range]] = collections.deque()  # (end, vid, chunks)
        # the disk work (extent maps, reads, zero scans, the bitmap) is done in the helper
        # thread: a read held up by a busy disk must not hold this loop and other groups' entries
        run = functools.partial(self.loop.run_in_executor, self.service.executor)
        try:
            for vid, dmap in list(g.dirty.items()):
                vol = g.members.get(vid)
                if vol is None:
                    continue
                # where the volume holds data at all
                ranges = await run(data_ranges, vol.dev.fd, 0, vol.size)
                for c0, c1 in _runs(list(dmap)):
                    start, end = c0 * CHUNK, min(c1 * CHUNK, vol.size)
                    pieces = _pieces(vol.dev, ranges, start, end)
                    while (piece := await run(next, pieces, None)) is not None:
                        off, length, data = piece
                        sent = await self._send_piece(gen, vid, off, length, data, sent, inflight)
                    await run(dmap.discard_many, list(range(c0, c1)))
                    g.copy_done += c1 - c0
            while self.copied < sent:  # the last regions are stored at the backup
                await self._wait_copied(sent, "the last copied regions")
        except BaseException:
            for end, vid, chunks in inflight:  # not confirmed: copy them again next time
                if end > self.copied and vid in g.dirty:
                    g.dirty[vid].add_many(list(chunks))
            raise

    async def _wait_copied(self, target: int, what: str) -> None:
        """Until the backup confirmed more copy bytes (60 s without progress: give up).  A
        wake-up for anything else (the group signalled: a member joined, a state changed)
        goes on waiting; it used to end the copy as if the 60 s had passed."""
        self._check()
        before = self.copied
        deadline = time.monotonic() + 60.0
        while self.copied == before and self.copied < target and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"the backup did not confirm {what} for 60 s")
            self.ev.clear()
            await self._wait(left)
            self._check()

    async def _send_piece(self, gen: int, vid: int, off: int, length: int, data: bytes | None,
                          sent: int, inflight: collections.deque) -> int:
        assert self.bulk is not None
        self._check()
        head = wire.COPY.pack(gen, vid, off, length, wire.COPY_ZERO if data is None else 0)
        self.bulk.lane.send_parts(self.bulk.cid, wire.COPYDATA, head, data or b"")
        sent += len(head) + (len(data) if data else 0)
        inflight.append((sent, vid, range(off // CHUNK, (off + length - 1) // CHUNK + 1)))
        while inflight and inflight[0][0] <= self.copied:
            inflight.popleft()
        while sent - self.copied > COPY_WINDOW_BYTES:  # the window is full: wait for the backup
            await self._wait_copied(sent - COPY_WINDOW_BYTES, "copied regions")
        await self.bulk.lane.drain()
        await asyncio.sleep(0)  # the other groups' senders go first: copies yield after each frame
        return sent


def _runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Sorted chunk numbers as ``[first, last + 1)`` runs of consecutive chunks."""
    out: list[tuple[int, int]] = []
    for c in chunks:
        if out and out[-1][1] == c:
            out[-1] = (out[-1][0], c + 1)
        else:
            out.append((c, c + 1))
    return out


def _pieces(dev: Any, ranges: list[tuple[int, int]], start: int, end: int):
    """``(offset, length, data or None)`` covering ``start .. end`` in order: data pieces of
    at most COPY_FRAME_CHUNKS chunks, and None for runs of holes or zeros.  Data comes only
    from the volume's data extents (exact to the file system's blocks); within them, whole
    zero chunks are left out too."""
    limit = COPY_FRAME_CHUNKS * CHUNK
    zero_from = start  # where the current run of zeros began
    for r0, r1 in ranges:
        d0, d1 = max(r0, start), min(r1, end)
        while d0 < d1:
            n = min(limit - d0 % CHUNK, d1 - d0)  # frames end on chunk boundaries
            buf = dev.read(d0, n)
            b = 0
            while b < n:  # split at zero chunks (a bytes comparison is a memcmp)
                step = min(CHUNK - (d0 + b) % CHUNK, n - b)
                if is_zero(buf[b:b + step]) if step < n else is_zero(buf):
                    b += step
                    continue
                e = b + step
                while e < n:
                    s2 = min(CHUNK, n - e)
                    if is_zero(buf[e:e + s2]):
                        break
                    e += s2
                if zero_from < d0 + b:
                    yield zero_from, d0 + b - zero_from, None
                yield d0 + b, e - b, buf if (b, e) == (0, n) else buf[b:e]
                zero_from = d0 + e
                b = e
            d0 += n
    if zero_from < end:
        yield zero_from, end - zero_from, None


# -- backup side -------------------------------------------------------------------------------


class _Session:
    """Backup side: one group's session with its main array (channels on one or two lanes)."""

    def __init__(self, service: ReplicationService, grp: SecondaryGroup, mode: str) -> None:
        self.service, self.grp, self.mode = service, grp, mode
        self.prio: tuple[_BackupLane, int] | None = None
        self.bulk: tuple[_BackupLane, int] | None = None
        self.copy_gen = 0
        self.copied = 0
        self.copy_acked = 0
        self._last_ack = 0.0
        self._ack_scheduled = False
        self._applied_pending = False

    def state(self, **extra: Any) -> dict[str, Any]:
        g = self.grp
        return {"received": g.received_seq, "applied": g.applied_seq, "applied_time": g.applied.time,
                "generation": g.journal.generation, "state": g.state,
                "consistent": bool(g.conf.get("consistent")), "message": g.conf.get("message", ""),
                **extra}

    def send_prio(self, ftype: int, obj: dict[str, Any]) -> None:
        if self.prio is not None:
            lane, cid = self.prio
            lane.send_json(cid, ftype, obj)

    def ack(self) -> None:
        """Send the received and applied positions now: a fixed-size binary frame while the
        pair replicates (the common case), JSON with the state's message otherwise."""
        self._ack_scheduled = False
        self._last_ack = time.monotonic()
        g = self.grp
        if self.prio is None:
            return
        if g.conf["state"] == PAIR:
            lane, cid = self.prio
            lane.send(cid, wire.ACKB, wire.ACK_BIN.pack(
                g.journal.next_seq - 1, g.applied.seq, g.applied.time, g.journal.generation,
                1 if g.conf.get("consistent") else 0))
        else:
            self.send_prio(wire.ACK, self.state())

    def ack_soon(self) -> None:
        """Entries were received: synchronous pairs acknowledge them at once (a writer
        waits); asynchronous ones at most once per ACK_INTERVAL_S (their applied position,
        acknowledged at the end of each apply pass, is what the lag is made of)."""
        if self.mode == "sync":
            self.ack()
            return
        if self._ack_scheduled:
            return
        wait = self._last_ack + ACK_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self.ack()
        else:
            self._ack_scheduled = True
            self.service.loop.call_later(wait, self.ack)

    def ack_soon_threadsafe(self) -> None:
        """An apply pass ended: acknowledge at once (from an apply thread: one frame however
        many passes end before the loop gets to it)."""
        if threading.get_ident() == self.service.loop_thread_id:
            self._ack_applied()
            return
        if self._applied_pending:
            return
        self._applied_pending = True
        self.service.loop.call_soon_threadsafe(self._ack_applied)

    def _ack_applied(self) -> None:
        self._applied_pending = False
        self.ack()

    def flush_copy_ack(self) -> None:
        if self.copied != self.copy_acked and self.bulk is not None:
            lane, cid = self.bulk
            lane.send_json(cid, wire.ACK, {"gen": self.copy_gen, "copied": self.copied})
            self.copy_acked = self.copied

    def end(self, why: str) -> None:
        """The group is gone here (promoted, deleted): the main's session ends."""
        for b in (self.prio, self.bulk):
            if b is not None:
                lane, cid = b
                lane.send_json(cid, wire.ERROR, {"message": why, _FATAL: True})
                lane.channels.pop(cid, None)
        if self.ack_soon_threadsafe in self.grp.listeners:
            self.grp.listeners.remove(self.ack_soon_threadsafe)
        self.prio = self.bulk = None


class _BackupLane(_Lane):
    """A connection from a main array: channels authenticate, then carry one group each."""

    def __init__(self, service: ReplicationService) -> None:
        super().__init__(service)
        # channel -> ("hello", group, nonce_main, nonce_backup, secret, lane kind),
        # ("creating", group) while its backup side is created, or ("ok", session, lane kind)
        self.channels: dict[int, tuple] = {}
        self.authenticated = False
        self.copy_sessions: set[_Session] = set()

    def data_received(self, data: bytes) -> None:
        if not self.authenticated and len(self.reader.buf) + len(data) > PREAUTH_MAX:
            log.warning("replication: dropped a connection from %s that sent %d bytes before "
                        "authenticating", self.peer_name, len(self.reader.buf) + len(data))
            self.abort()
            return
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.service.lanes.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.service.lanes.discard(self)
        for entry in self.channels.values():
            if entry[0] == "ok":
                s: _Session = entry[1]
                if s.prio is not None and s.prio[0] is self:
                    s.prio = None
                if s.bulk is not None and s.bulk[0] is self:
                    s.bulk = None
        self.channels.clear()

    def refuse(self, cid: int, message: str, *, log_it: str) -> None:
        log.warning("replication: %s (from %s)", log_it, self.peer_name)
        self.send_json(cid, wire.ERROR, {"message": message})
        self.channels.pop(cid, None)

    def on_frame(self, cid: int, ftype: int, payload: bytes) -> None:
        entry = self.channels.get(cid)
        if entry is None:
            if ftype != wire.HELLO:
                log.warning("replication: refused a connection from %s that did not start with a "
                            "pair handshake", self.peer_name)
                self.abort()
                return
            self._hello(cid, payload)
        elif entry[0] == "creating":  # the main sends nothing before the answer but a BYE
            if ftype == wire.BYE:
                self.channels.pop(cid, None)
        elif entry[0] == "hello":
            if ftype != wire.AUTH:
                self.refuse(cid, "the pair handshake expects AUTH", log_it="handshake out of order")
                return
            self._auth(cid, entry, payload)
        else:
            s: _Session = entry[1]
            if s.grp is not self.service.array.secondary.get(s.grp.name):
                return  # the group is gone; its end was announced
            self._data(s, entry[2], cid, ftype, payload)

    def _hello(self, cid: int, payload: bytes) -> None:
        hello = json.loads(payload)
        if not isinstance(hello, dict) or not isinstance(hello.get("group"), str) \
                or not isinstance(hello.get("nonce"), str):
            log.warning("replication: refused a connection from %s that did not start with a "
                        "pair handshake", self.peer_name)
            self.abort()
            return
        if len(self.channels) > 4096:
            self.abort()
            return
        group, nm = hello["group"][:64], hello["nonce"][:64]
        secret = self.service.array.pair_secret(group)
        if secret is None:
            self.refuse(cid, f"array {self.service.array.name} holds no pair secret for group "
                        f"{group!r}; register it there first (POST /v1/pairs)",
                        log_it=f"refused group {group!r}: no pair secret is registered for it here")
            return
        nb = wire.nonce()
        kind = wire.BULK if hello.get("lane") == wire.BULK else wire.PRIO
        self.channels[cid] = ("hello", group, nm, nb, secret, kind)
        self.send_json(cid, wire.CHALLENGE, {"nonce": nb, "proof": wire.proof(secret, "backup", group, nm, nb)})

    def _auth(self, cid: int, entry: tuple, payload: bytes) -> None:
        _, group, nm, nb, secret, kind = entry
        auth = json.loads(payload)
        if not isinstance(auth, dict) or not wire.proof_ok(secret, "main", group, nm, nb, auth.get("proof")):
            self.refuse(cid, f"authentication of group {group!r} failed",
                        log_it=f"refused group {group!r}: the peer did not prove the pair secret")
            return
        self.authenticated = True
        svc = self.service
        if kind == wire.PRIO:
            members = {int(k): (str(v[0]), int(v[1])) for k, v in auth["members"].items()}
            peer_names = {str(v[0]): str(v[2]) for v in auth["members"].values()
                          if isinstance(v, list) and len(v) > 2}
            # the backup journal holds what the main journal holds, with room for the
            # segment granularity of freeing on both sides
            args = (group, members, 2 * int(auth["journal_capacity"]), int(auth["generation"]),
                    peer_names)
            self.channels[cid] = ("creating", group)  # the main waits for the answer
            svc.spawn(self._open_session(cid, group, str(auth.get("mode", "async")), args))
        else:
            s = svc.sessions.get(group)
            if s is None or s.grp is not svc.array.secondary.get(group):
                self.refuse(cid, f"group {group!r} has no session here yet",
                            log_it=f"bulk lane for group {group!r} before its session")
                return
            if s.bulk is not None and s.bulk != (self, cid):
                old_lane, old_cid = s.bulk
                old_lane.channels.pop(old_cid, None)
            s.bulk = (self, cid)
            self.channels[cid] = ("ok", s, kind)
            self.send_json(cid, wire.STATE, s.state())

    async def _open_session(self, cid: int, group: str, mode: str, args: tuple) -> None:
        """A group's priority channel is authenticated: create (once) its backup side in the
        helper thread (volumes, journal, array.json: disk work that would hold this loop,
        and with it every running group's entries, for tens of milliseconds), then answer."""
        svc = self.service
        name, members, capacity, generation, peer_names = args

        def create() -> SecondaryGroup:
            grp = svc.array.ensure_secondary_group(name, members, capacity, generation,
                                                   peer_names=peer_names)
            if grp.state == SUSPENDED and grp.conf.get("demoted") and not grp.divergent and \
                    generation == grp.journal.generation:
                # a demoted old main, identical to the new main at the split: it replicates now
                grp.set_state(PAIR, "", consistent=True)
            return grp

        try:
            grp = await svc.loop.run_in_executor(svc.executor, create)
        except DrKitError as e:
            self.refuse(cid, str(e), log_it=f"refused group {group!r}: {e}")
            return
        if self.closed or self.channels.get(cid) != ("creating", group):
            return  # the main gave up on this handshake (it will announce the group again)
        if svc.array.secondary.get(group) is not grp:
            self.refuse(cid, f"group {group!r} changed at array {svc.array.name} while it was "
                        "announced; try again", log_it=f"group {group!r} changed while announced")
            return
        svc.sync_groups()
        s = svc.sessions.get(group)
        if s is None or s.grp is not grp:
            s = svc.sessions[group] = _Session(svc, grp, mode)
        s.mode = mode
        if s.prio is not None and s.prio != (self, cid):  # an older session of the group ends
            old_lane, old_cid = s.prio
            old_lane.channels.pop(old_cid, None)
        s.prio = (self, cid)
        if s.ack_soon_threadsafe not in grp.listeners:
            grp.listeners.append(s.ack_soon_threadsafe)
        self.channels[cid] = ("ok", s, wire.PRIO)
        div = grp.divergent_runs()  # a demoted old main says which regions it wrote itself
        self.send_json(cid, wire.STATE, s.state(**({"divergent": div} if div else {})))

    def _data(self, s: _Session, kind: str, cid: int, ftype: int, payload: bytes) -> None:
        g = s.grp
        svc = self.service
        if ftype == wire.ENTRIES:
            try:
                applied = g.receive(payload, apply=True)  # applied here when caught up
            except JournalError as e:
                self.send_json(cid, wire.ERROR, {"message": str(e)})
                return
            if not applied:
                s.ack_soon()
        elif ftype == wire.COPYDATA:
            gen, vid, off, length, flags = wire.COPY.unpack_from(payload)
            vol = g.members.get(vid)
            body = memoryview(payload)[wire.COPY.size:]
            if gen != s.copy_gen or g.state not in (COPY, RESYNC):
                return  # a frame of an earlier, abandoned copy
            if vol is None or off < 0 or off + length > vol.size or \
                    (not flags & wire.COPY_ZERO and len(body) != length):
                self.send_json(cid, wire.ERROR, {"message": f"copied region {vid}@{off}+{length} "
                                                 "does not fit a member volume"})
                return
            # stored by the helper thread, in arrival order: a write held up by a busy disk
            # holds that thread, not this loop and the running groups' entries
            fut = svc.loop.run_in_executor(svc.executor, self._store_copied, s, gen, vol, off,
                                           length, None if flags & wire.COPY_ZERO else body)
            fut.add_done_callback(functools.partial(self._copied, s=s, gen=gen, n=len(payload),
                                                    cid=cid))
        elif ftype == wire.RESYNC_START:
            msg = json.loads(payload)
            # frames of an earlier copy still in flight are dropped from now on
            s.copy_gen, s.copied, s.copy_acked = int(msg["generation"]), 0, 0
            svc.spawn(self._start_copy(s, msg))
        elif ftype == wire.COPY_DONE:
            svc.spawn(self._copy_done(s, int(json.loads(payload)["end_seq"])))
        elif ftype == wire.STATE:
            msg = json.loads(payload)
            g.main_head = (int(msg.get("head") or 0), float(msg.get("head_time") or 0.0))
        elif ftype == wire.BYE:
            self.channels.pop(cid, None)

    def _store_copied(self, s: _Session, gen: int, vol: Any, off: int, length: int,
                      body: memoryview | None) -> bool:
        """Helper thread: one copied region into its volume, unless its copy was abandoned
        or the group left this array meanwhile (a promoted volume is never written)."""
        g = s.grp
        with g.lock:
            if gen != s.copy_gen or g.state not in (COPY, RESYNC) \
                    or self.service.array.secondary.get(g.name) is not g:
                return False
            if body is None:
                vol.zero(off, length)  # a hole stays a hole; data there becomes one
            else:
                vol.write(off, body)
            return True

    def _copied(self, fut: asyncio.Future, s: _Session, gen: int, n: int, cid: int) -> None:
        """Loop: a copied region is stored; confirmed with the others stored this turn."""
        if fut.cancelled():
            return
        e = fut.exception()
        if e is not None:  # the main copies the region again in its next session
            log.warning("replication: group %s: a copied region could not be stored: %s",
                        s.grp.name, _one_line(e))
            self.send_json(cid, wire.ERROR, {"message": f"the backup could not store a copied "
                                             f"region: {_one_line(e)}"})
            return
        if fut.result() and gen == s.copy_gen:
            s.copied += n
            if not self.copy_sessions:
                self.service.loop.call_soon(self.after_frames)
            self.copy_sessions.add(s)

    async def _start_copy(self, s: _Session, msg: dict[str, Any]) -> None:
        """A copy begins: prepare the group in the helper thread (a guard snapshot, a new
        journal generation, array.json), off this loop, then confirm.  The main sends
        nothing more for the group until it has the confirmation."""
        svc = self.service
        try:
            await svc.loop.run_in_executor(svc.executor, svc.start_copy, s.grp, msg)
        except Exception as e:  # noqa: BLE001 - as a bad frame would: this connection ends
            log.warning("replication lane %s: the copy of group %s could not begin: %s: %s",
                        self.peer_name, s.grp.name, type(e).__name__, e)
            self.abort(str(e))
            return
        if s.copy_gen == int(msg["generation"]):
            s.send_prio(wire.ACK, s.state(reply=True))

    async def _copy_done(self, s: _Session, end_seq: int) -> None:
        """Every region is copied: consistent once applied through ``end_seq`` (the state
        saved in the helper thread; entries that arrive meanwhile are stored and applied
        as usual, the copied data being all stored already)."""
        g = s.grp

        def done() -> None:
            with g.lock:
                g.conf["copy_end_seq"] = end_seq
                if g.applied_seq >= end_seq:
                    g.conf["copy_end_seq"] = None
                    g.set_state(PAIR, "", consistent=True)

        await self.service.loop.run_in_executor(self.service.executor, done)
        g.kick()
        s.ack()

    def after_frames(self) -> None:
        # copied regions are acknowledged once per batch stored (not per region)
        for s in self.copy_sessions:
            s.flush_copy_ack()
        self.copy_sessions.clear()


class _Waker:
    """Sets events of the loop from other threads with one eventfd write (the commit path's
    wake-up of an idle sender), cheaper than ``call_soon_threadsafe``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pending: collections.deque[asyncio.Event] = collections.deque()
        self.loop = loop
        loop.add_reader(self.fd, self._drain)

    def wake(self, ev: asyncio.Event) -> None:
        self.pending.append(ev)
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:  # closed at shutdown
            pass

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)
        pending = self.pending
        while pending:
            pending.popleft().set()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


class _ApplyPool:
    """A fixed number of threads applying the backup groups' journals, groups taking turns."""

    def __init__(self, workers: int) -> None:
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"apply-{i}")
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def kick(self, g: SecondaryGroup) -> None:
        with self._lock:
            if id(g) in self._queued:
                return
            self._queued.add(id(g))
        self.q.put(g)

    def _work(self) -> None:
        while True:
            g = self.q.get()
            if g is None:
                return
            with self._lock:
                self._queued.discard(id(g))
            try:
                g.apply_available()
            except Exception as e:  # noqa: BLE001 - keep the backup alive; the group records the error
                log.exception("apply of group %s failed", g.name)
                with contextlib.suppress(Exception):
                    g.fail(f"apply failed: {e}")
                continue
            if g.pending and g.wakeup is not None:  # more to do: after the other groups' turn
                self.kick(g)

    def stop(self) -> None:
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:  # an apply in progress finishes before the journals close
            t.join(10)


# -- the service ----------------------------------------------------------------------------------


class ReplicationService:
    """Everything replication in one array process: one event loop thread (senders,
    receivers, the listener), a fixed pool of apply threads, one helper thread."""

    def __init__(self, array: Array, host: str = "127.0.0.1", port: int = 0) -> None:
        self.array = array
        self.loop = asyncio.new_event_loop()
        self.loop_thread_id = 0
        self._sock = socket.create_server((host, port))
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self.senders: dict[str, Sender] = {}
        self.sessions: dict[str, _Session] = {}
        self.peers: dict[str, _Peer] = {}
        self.lanes: set[_BackupLane] = set()
        self.pool = _ApplyPool(APPLY_WORKERS)
        from concurrent.futures import ThreadPoolExecutor
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="replication-bulk")
        self.copy_slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self.waker: _Waker | None = None
        self._started = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="replication")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise Unavailable("the replication service did not start")
        self.ensure_threads()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop_thread_id = threading.get_ident()
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = self.loop.create_future()
        self.copy_slots = asyncio.Semaphore(COPY_SLOTS)
        self.waker = _Waker(self.loop)
        server = await self.loop.create_server(lambda: _BackupLane(self), sock=self._sock)
        self._started.set()
        try:
            await self._stop
        finally:
            server.close()
            for s in self.senders.values():
                s.stop()
            await asyncio.gather(*(s.task for s in self.senders.values()), return_exceptions=True)
            for p in self.peers.values():
                p.close()
            for lane in list(self.lanes):
                lane.abort()
            await asyncio.sleep(0)
            self.waker.close()

    def stop(self) -> None:
        stop = self._stop
        if self._thread.is_alive() and stop is not None:
            def finish() -> None:
                if not stop.done():
                    stop.set_result(None)

            self.loop.call_soon_threadsafe(finish)
            self._thread.join(10)
        self.pool.stop()
        self.executor.shutdown(wait=False)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task of the loop (kept until it ends; a crash is logged)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("replication task failed: %r", task.exception())

    def peer(self, remote: str) -> _Peer:
        p = self.peers.get(remote)
        if p is None:
            p = self.peers[remote] = _Peer(self, remote)
        return p

    # -- groups ------------------------------------------------------------------------------
    def ensure_threads(self) -> None:
        """Start senders for new groups and stop those of deleted groups; end the sessions
        of backup groups that are gone (promoted, deleted).  No thread is started: senders
        are coroutines, applying is done by the fixed pool."""
        if threading.get_ident() == self.loop_thread_id:
            self.sync_groups()
            return
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._sync_async(), self.loop)
        fut.result(30)

    async def _sync_async(self) -> None:
        self.sync_groups()

    def sync_groups(self) -> None:
        a = self.array
        for name, g in list(a.primary.items()):
            s = self.senders.get(name)
            if s is None or s.grp is not g:
                if s is not None:
                    s.stop()
                self.senders[name] = Sender(self, g)
        for name in [n for n, s in self.senders.items() if a.primary.get(n) is not s.grp]:
            self.senders.pop(name).stop()
        for sg in list(a.secondary.values()):
            if sg.wakeup is None:
                sg.wakeup = lambda sg=sg: self.pool.kick(sg)
                self.pool.kick(sg)  # records received before a restart are applied now
        for name, sess in list(self.sessions.items()):
            if a.secondary.get(name) is not sess.grp:
                sess.end(f"group {name} no longer exists at array {a.name} (promoted or deleted)")
                del self.sessions[name]

    def start_copy(self, g: SecondaryGroup, msg: dict[str, Any]) -> None:
        """A copy begins (RESYNC_START): keep the last consistent image in a guard snapshot
        (a resync), start a new generation, say honestly that the volumes are inconsistent."""
        array = self.array
        with g.lock:
            if g.state != ERROR:
                g.apply_available(max_records=1 << 30)  # everything received is a consistent prefix
            was_consistent = bool(g.conf.get("consistent"))
            guard, note = (array.take_guard(g.name) if not msg.get("initial") and was_consistent
                           else (None, ""))
            g.journal.reset(int(msg["generation"]), int(msg["next_seq"]))
            g.applied.store(int(msg["next_seq"]) - 1, int(msg["generation"]), g.applied.time)
            g.conf["generation"] = int(msg["generation"])
            g.conf["copy_end_seq"] = None
            state = COPY if msg.get("initial") else RESYNC
            why = "initial copy" if msg.get("initial") else \
                f"resync running: volumes not consistent; the last consistent image is kept in snapshot {guard}" \
                if guard else "resync running: volumes not consistent"
            if note:
                why += f" ({note})"
            g.set_state(state, why, consistent=False)


__all__ = ["ReplicationService", "Sender", "ACK_INTERVAL_S", "GATHER_MIN_S", "GATHER_MAX_S",
           "gather_window"]
