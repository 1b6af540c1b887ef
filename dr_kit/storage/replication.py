"""The replication link between two arrays: transfer, receive, apply, initial copy, resync.

Main side: one :class:`Sender` thread per consistency group connects to the backup array's
replication port (in the lab, through the link emulator), announces the group, and then
either copies changed regions (initial copy or resync) or streams journal records in
order.  A reader thread takes the backup's acknowledgements (received and applied
positions), which free the main journal and release synchronous writers.

Backup side: :class:`ReplicationServer` accepts senders; each connection stores records in
the group's journal after verifying them, and an :class:`Applier` thread per group applies
them strictly in sequence order.  Every refusal (bad checksum, gap, wrong generation) puts
the group in the error state with the reason, and nothing of the bad batch is applied.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import socketserver
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from dr_kit.errors import DrKitError, JournalError, Unavailable
from dr_kit.storage import wire
from dr_kit.storage.blocks import CHUNK, is_hole
from dr_kit.storage.groups import COPY, ERROR, PAIR, RESYNC, SUSPENDED, PrimaryGroup, SecondaryGroup

if TYPE_CHECKING:
    from dr_kit.storage.array import Array

log = logging.getLogger("dr_kit.replication")
COPY_WINDOW = 64  # copy frames in flight before waiting for the backup
BATCH_WINDOW_MS = 10.0  # asynchronous pairs: let writes gather this long before a transfer
ACK_INTERVAL_S = 0.002  # asynchronous pairs: at most one acknowledgement per this interval


class Sender(threading.Thread):
    """Ships one primary group's journal to the backup array."""

    def __init__(self, array: Array, grp: PrimaryGroup) -> None:
        super().__init__(name=f"sender-{grp.name}", daemon=True)
        self.array, self.grp = array, grp
        self.stopping = threading.Event()
        self.sock: socket.socket | None = None
        self.last_error = ""
        self._copied = 0
        self._ctl = threading.Condition()
        self._state_reply: dict[str, Any] | None = None
        self.rng = random.Random()

    def stop(self) -> None:
        self.stopping.set()
        with self.grp.lock:
            self.grp.changed.notify_all()
        s = self.sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        backoff = 0.05
        while not self.stopping.is_set():
            host, port = self.grp.conf["remote"].rsplit(":", 1)
            try:
                sock = socket.create_connection((host, int(port)), timeout=2.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
                self.sock = sock
                backoff = 0.05
                self._session(sock)
            except (OSError, DrKitError, ValueError) as e:
                msg = _one_line(e)
                if msg != self.last_error:  # a new kind of failure: say it once, not per retry
                    log.warning("group %s: replication session failed: %s", self.grp.name, msg)
                self.last_error = msg
                self.grp.last_error, self.grp.last_error_at = msg, time.time()
            finally:
                self.grp.connected = False
                if self.sock is not None:
                    try:
                        self.sock.close()
                    except OSError:
                        pass
                    self.sock = None
            self.stopping.wait(backoff)
            backoff = min(1.0, backoff * 2)

    # -- one connection -------------------------------------------------------------
    def _session(self, sock: socket.socket) -> None:
        g = self.grp
        g.conf.pop("reconnect", None)
        members = {str(vid): [g.remote_names[vid], v.size] for vid, v in g.members.items()}
        secret = g.conf.get("secret") or ""
        nm = wire.nonce()
        wire.send_json(sock, wire.HELLO, {"group": g.name, "nonce": nm})
        ftype, payload = wire.recv(sock)
        if ftype == wire.ERROR:
            raise Unavailable(f"the backup refused group {g.name}: {json.loads(payload)['message']}")
        ch = json.loads(payload) if ftype == wire.CHALLENGE else {}
        nb = ch.get("nonce") if isinstance(ch, dict) else None
        if not isinstance(nb, str) or not wire.proof_ok(secret, "backup", g.name, nm, nb, ch.get("proof")):
            raise Unavailable(f"the replication peer at {g.conf['remote']} did not prove the pair "
                              f"secret of group {g.name}; nothing was sent to it")
        wire.send_json(sock, wire.AUTH, {"proof": wire.proof(secret, "main", g.name, nm, nb),
                                         "generation": g.generation, "members": members,
                                         "mode": g.mode, "journal_capacity": g.journal.capacity})
        ftype, payload = wire.recv(sock)
        if ftype == wire.ERROR:
            raise Unavailable(f"the backup refused group {g.name}: {json.loads(payload)['message']}")
        st = json.loads(payload)
        self._on_state(st)
        g.connected = True
        g.last_error = g.last_error_at = None
        self.last_error = ""
        reader = threading.Thread(target=self._read_acks, args=(sock,), daemon=True,
                                  name=f"acks-{g.name}")
        reader.start()
        if st.get("state") == ERROR and g.state != ERROR:
            g.fail(f"the backup reports: {st.get('message')}")
        next_seq = int(st["received"]) + 1
        if st.get("generation") != g.generation and g.state == PAIR:
            g.suspend("the backup is at another generation; resync needed")
        last_beat = 0.0
        while not self.stopping.is_set() and reader.is_alive():
            if g.conf.pop("reconnect", False):
                raise Unavailable("group membership changed; announcing it again")
            state = g.state
            if state == COPY or (state in (SUSPENDED, RESYNC) and g.conf.get("auto_resync", True)) \
                    or (state in (ERROR, SUSPENDED) and g.conf.pop("resync_requested", False)):
                next_seq = self._copy(sock)  # the backup leaves its error state on RESYNC_START
                continue
            if state != PAIR or g.conf.get("transfer_paused"):
                with g.lock:
                    g.changed.wait(0.2)
                continue
            if next_seq < g.journal.first_seq and g.journal.last_seq >= g.journal.first_seq:
                g.suspend(f"journal records from {next_seq} are no longer held at the main site; resync")
                continue
            with g.lock:
                if g.journal.last_seq < next_seq and g.state == PAIR:
                    g.sender_waiting = True
                    g.changed.wait(0.25)
                    g.sender_waiting = False
            now = time.monotonic()
            if now - last_beat > 0.25:
                head = g.journal.last_seq
                wire.send_json(sock, wire.STATE, {"head": head, "head_time": g.journal.time_of(head)})
                last_beat = now
            interval = float(g.conf.get("transfer_interval_ms", 0)) / 1000.0
            if interval and g.journal.last_seq >= next_seq:
                # an independent transfer cycle: this journal is read on its own schedule
                self.stopping.wait(interval * self.rng.uniform(0.5, 1.5))
            elif g.mode == "async" and g.journal.last_seq >= next_seq:
                # let writes gather for a short window: fewer, larger transfers keep the
                # replication's CPU use from competing with the commit path, at the price
                # of this much extra lag
                self.stopping.wait(float(g.conf.get("batch_window_ms", BATCH_WINDOW_MS)) / 1000.0)
            batch = g.journal.read_batch(next_seq, max_bytes=1 << 20)
            if not batch:
                continue
            count = _count_records(batch)
            if g.faults.get("corrupt_next", 0) > 0:
                g.faults["corrupt_next"] -= 1
                b = bytearray(batch)
                b[-1] ^= 0xFF  # a bit flip on the wire, after the checksum was computed
                batch = bytes(b)
            wire.send(sock, wire.ENTRIES, batch)
            next_seq += count

    def _on_state(self, st: dict[str, Any]) -> None:
        self.grp.on_ack(int(st.get("received", 0)), int(st.get("applied", 0)),
                        float(st.get("applied_time") or 0.0), st.get("state"), st.get("consistent"))
        if st.get("state") == ERROR and self.grp.state not in (ERROR, COPY, RESYNC):
            self.grp.fail(f"the backup reports: {st.get('message') or 'error'}")

    def _read_acks(self, sock: socket.socket) -> None:
        try:
            while True:
                ftype, payload = wire.recv(sock)
                msg = json.loads(payload)
                if ftype == wire.ERROR:
                    self.grp.fail(f"the backup refused data: {msg['message']}")
                    continue
                if "copied" in msg:
                    with self._ctl:
                        self._copied = int(msg["copied"])
                        self._ctl.notify_all()
                if msg.get("reply"):
                    with self._ctl:
                        self._state_reply = msg
                        self._ctl.notify_all()
                self._on_state(msg)
        except (OSError, DrKitError, ValueError):
            with self._ctl:
                self._ctl.notify_all()
            with self.grp.lock:
                self.grp.changed.notify_all()

    def _wait_ctl(self, pred, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._ctl:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping.is_set() or self.sock is None:
                    raise Unavailable(f"the backup did not confirm {what}")
                self._ctl.wait(min(left, 0.5))

    def _copy(self, sock: socket.socket) -> int:
        """Initial copy or resync; returns the next sequence to stream."""
        g = self.grp
        gen, first_seq, initial = g.begin_copy()
        with self._ctl:
            self._state_reply = None
            self._copied = 0
        wire.send_json(sock, wire.RESYNC_START, {"generation": gen, "next_seq": first_seq,
                                                 "initial": initial})
        self._wait_ctl(lambda: self._state_reply is not None, "the start of the copy")
        sent = 0
        recent: list[tuple[int, int]] = []  # sent, maybe not yet stored at the backup
        try:
            for vid, dmap in g.dirty.items():
                vol = g.members[vid]
                fd = getattr(vol.dev, "fd", -1)
                for c in list(dmap):
                    if self.stopping.is_set():
                        raise Unavailable("sender stopping")
                    off = c * CHUNK
                    n = min(CHUNK, vol.size - off)
                    if initial and fd >= 0 and is_hole(fd, off, n):
                        flags, data = wire.COPY_ZERO, b""
                    else:
                        data = vol.dev.read(off, n)
                        flags = wire.COPY_ZERO if data.count(0) == len(data) else 0
                        if flags:
                            data = b""
                    wire.send(sock, wire.COPYDATA, wire.COPY.pack(vid, off, flags) + data)
                    sent += 1
                    dmap.discard(c)
                    recent.append((vid, c))
                    if len(recent) > 2 * COPY_WINDOW:
                        del recent[:COPY_WINDOW]
                    if sent > COPY_WINDOW:
                        target = sent - COPY_WINDOW
                        self._wait_ctl(lambda t=target: self._copied >= t, "copied regions")
                    g.copy_done += 1
            self._wait_ctl(lambda: self._copied >= sent, "the last copied regions")
        except BaseException:
            for vid, c in recent:  # not confirmed: copy them again next time
                g.dirty[vid].add(c)
            raise
        end_seq = g.end_copy()
        wire.send_json(sock, wire.COPY_DONE, {"end_seq": end_seq})
        return first_seq


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    if isinstance(e, OSError) and e.strerror:
        return f"cannot reach the backup array: {e.strerror}"
    return (text[0] if text else type(e).__name__)[:300]


def _count_records(batch: bytes) -> int:
    from dr_kit.storage import record as rec
    n = pos = 0
    while pos < len(batch):
        length = rec.HEADER.unpack_from(batch, pos)[7]
        pos += rec.HEADER_SIZE + length
        n += 1
    return n


class Applier(threading.Thread):
    """Applies one backup group's journal strictly in sequence order."""

    def __init__(self, grp: SecondaryGroup) -> None:
        super().__init__(name=f"applier-{grp.name}", daemon=True)
        self.grp = grp
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.grp.kick()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.grp.apply_available() == 0:
                    self.grp.wait_for_records(0.05)
            except Exception as e:  # keep the backup alive; the group records the error
                log.exception("applier %s", self.grp.name)
                self.grp.fail(f"apply failed: {e}")
                self.stopping.wait(0.5)


class _Conn(socketserver.BaseRequestHandler):
    server: ReplicationServer

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send_lock = threading.Lock()
        self.grp: SecondaryGroup | None = None
        self.copied = 0
        self.mode = "async"
        self._ack_due = threading.Event()
        self._closing = False

    def _ack_loop(self) -> None:
        """Asynchronous pairs: at most one acknowledgement per ACK_INTERVAL_S, carrying the
        latest received and applied positions (fewer wake-ups at the main site)."""
        while not self._closing:
            self._ack_due.wait(0.5)
            if self._closing:
                return
            if self._ack_due.is_set():
                self._ack_due.clear()
                try:
                    self.ack()
                except OSError:
                    return
                time.sleep(ACK_INTERVAL_S)

    def ack_soon(self) -> None:
        if self.mode == "sync":
            self.ack()
        else:
            self._ack_due.set()

    def _state(self, **extra: Any) -> dict[str, Any]:
        g = self.grp
        assert g is not None
        return {"received": g.received_seq, "applied": g.applied_seq, "applied_time": g.applied.time,
                "generation": g.journal.generation, "state": g.state,
                "consistent": bool(g.conf.get("consistent")), "message": g.conf.get("message", ""),
                **extra}

    def _send(self, ftype: int, obj: dict[str, Any]) -> None:
        with self.send_lock:
            wire.send_json(self.request, ftype, obj)

    def ack(self) -> None:
        self._send(wire.ACK, self._state())

    def handle(self) -> None:
        array = self.server.array
        sock = self.request
        try:
            hello = self._authenticate()
            if hello is None:
                return
            members = {int(k): (v[0], int(v[1])) for k, v in hello["members"].items()}
            try:
                # the backup journal holds what the main journal holds, with room for the
                # segment granularity of freeing on both sides
                self.grp = array.ensure_secondary_group(hello["group"], members,
                                                        2 * int(hello["journal_capacity"]),
                                                        int(hello["generation"]))
            except DrKitError as e:
                self._send(wire.ERROR, {"message": str(e)})
                return
            self.server.service.ensure_threads()
            g = self.grp
            with self.server.service._lock:
                self.server.conns.add(self)
            self.mode = hello.get("mode", "async")
            threading.Thread(target=self._ack_loop, daemon=True, name=f"acks-{g.name}").start()
            g.listeners.append(self.ack_soon)
            self._send(wire.STATE, self._state())
            while True:
                ftype, payload = wire.recv(sock)
                if ftype == wire.ENTRIES:
                    try:
                        g.receive(payload)
                    except JournalError as e:
                        self._send(wire.ERROR, {"message": str(e)})
                        continue
                    self.ack_soon()
                elif ftype == wire.COPYDATA:
                    vid, off, flags = wire.COPY.unpack_from(payload)
                    vol = g.members[vid]
                    n = min(CHUNK, vol.size - off)
                    data = bytes(n) if flags & wire.COPY_ZERO else payload[wire.COPY.size:]
                    with g.lock:
                        vol.write(off, data)
                    self.copied += 1
                    self._send(wire.ACK, self._state(copied=self.copied))
                elif ftype == wire.RESYNC_START:
                    msg = json.loads(payload)
                    self._start_copy(g, msg)
                    self.copied = 0
                    self._send(wire.ACK, self._state(reply=True, copied=0))
                elif ftype == wire.COPY_DONE:
                    msg = json.loads(payload)
                    self._send(wire.ACK, self._state(copied=self.copied))
                    with g.lock:
                        g.conf["copy_end_seq"] = int(msg["end_seq"])
                        if g.applied_seq >= int(msg["end_seq"]):
                            g.conf["copy_end_seq"] = None
                            g.set_state(PAIR, "", consistent=True)
                    g.kick()
                    self.ack()
                elif ftype == wire.STATE:
                    msg = json.loads(payload)
                    g.main_head = (int(msg.get("head") or 0), float(msg.get("head_time") or 0.0))
        except (OSError, DrKitError, ValueError, KeyError, TypeError, struct.error) as e:
            name = self.grp.name if self.grp is not None else "(not authenticated)"
            log.info("replication session of group %s from %s ended: %s: %s", name,
                     self.client_address, type(e).__name__, str(e)[:200])
        finally:
            with self.server.service._lock:
                self.server.conns.discard(self)
            self._closing = True
            self._ack_due.set()
            if self.grp is not None and self.ack_soon in self.grp.listeners:
                self.grp.listeners.remove(self.ack_soon)

    def _authenticate(self) -> dict[str, Any] | None:
        """The pair handshake (see :mod:`wire`): the group's session, or None when refused."""
        sock = self.request
        ftype, payload = wire.recv(sock)
        hello = json.loads(payload) if ftype == wire.HELLO else None
        if not isinstance(hello, dict) or not isinstance(hello.get("group"), str) \
                or not isinstance(hello.get("nonce"), str):
            log.warning("replication: refused a connection from %s that did not start with a "
                        "pair handshake", self.client_address)
            return None
        group, nm = hello["group"][:64], hello["nonce"][:64]
        secret = self.server.array.pair_secret(group)
        if secret is None:
            log.warning("replication: refused group %r from %s: no pair secret is registered "
                        "for it here", group, self.client_address)
            self._send(wire.ERROR, {"message": f"array {self.server.array.name} holds no pair "
                                    f"secret for group {group!r}; register it there first "
                                    "(POST /v1/pairs)"})
            return None
        nb = wire.nonce()
        self._send(wire.CHALLENGE, {"nonce": nb, "proof": wire.proof(secret, "backup", group, nm, nb)})
        ftype, payload = wire.recv(sock)
        auth = json.loads(payload) if ftype == wire.AUTH else None
        if not isinstance(auth, dict) or not wire.proof_ok(secret, "main", group, nm, nb, auth.get("proof")):
            log.warning("replication: refused group %r from %s: the peer did not prove the pair "
                        "secret", group, self.client_address)
            self._send(wire.ERROR, {"message": f"authentication of group {group!r} failed"})
            return None
        auth["group"] = group
        return auth

    def _start_copy(self, g: SecondaryGroup, msg: dict[str, Any]) -> None:
        array = self.server.array
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


class ReplicationServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, array: Array, service: ReplicationService, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.array = array
        self.service = service
        self.conns: set[_Conn] = set()  # authenticated sessions, by group
        super().__init__((host, port), _Conn)


class ReplicationService:
    """All replication threads of one array: senders, appliers and the listener."""

    def __init__(self, array: Array, host: str = "127.0.0.1", port: int = 0) -> None:
        self.array = array
        self.senders: dict[str, Sender] = {}
        self.appliers: dict[str, Applier] = {}
        self.server = ReplicationServer(array, self, host, port)
        self.port = self.server.server_address[1]
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="replication-listener")

    def start(self) -> None:
        self._thread.start()
        self.ensure_threads()

    def ensure_threads(self) -> None:
        """Start threads for new groups, stop those of deleted groups."""
        with self._lock:
            for name, g in list(self.array.primary.items()):
                s = self.senders.get(name)
                if s is None or s.grp is not g:
                    if s is not None:
                        s.stop()
                    self.senders[name] = Sender(self.array, g)
                    self.senders[name].start()
            for name in [n for n in self.senders if n not in self.array.primary]:
                self.senders.pop(name).stop()
            for name, sg in list(self.array.secondary.items()):
                a = self.appliers.get(name)
                if a is None or a.grp is not sg:
                    if a is not None:
                        a.stop()
                    self.appliers[name] = Applier(sg)
                    self.appliers[name].start()
            for name in [n for n in self.appliers if n not in self.array.secondary]:
                self.appliers.pop(name).stop()
            for conn in list(self.server.conns):  # sessions of deleted or promoted groups end
                if conn.grp is not None and self.array.secondary.get(conn.grp.name) is not conn.grp:
                    try:
                        conn.request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            for s in self.senders.values():
                s.stop()
            for a in self.appliers.values():
                a.stop()
