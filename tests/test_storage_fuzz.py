"""Bad input on every storage interface, generated (hypothesis) and bounded in time.

Surfaces: the array's management API (HTTP/JSON), the data path (block protocol), the
replication port before authentication, the journal record parser, a backup group's
receive path and the wire frame reader.  For each input the test asserts: no 5xx, no
crash (the server answers the next request), and nothing changed when it was refused.

The inputs are derandomized (the same on every run) and counted; the totals are printed
at the end of the module (``pytest -s`` or the terminal summary shows them).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dr_kit.errors import JournalError, Unavailable  # noqa: E402
from dr_kit.storage import record as rec  # noqa: E402
from dr_kit.storage import wire  # noqa: E402
from dr_kit.storage.array import Array  # noqa: E402
from dr_kit.storage.client import ArrayClient, RemoteVolume, new_pair_secret  # noqa: E402
from dr_kit.storage.server import ArrayProcess  # noqa: E402

MiB = 1 << 20
TOKEN = "fuzz-token-" + "f" * 32
TRIED: dict[str, Counter] = {}


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def count(surface: str, outcome: str) -> None:
    TRIED.setdefault(surface, Counter())[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    total = sum(sum(c.values()) for c in TRIED.values())
    lines = [f"storage fuzz: {total} generated inputs"]
    for surface, c in sorted(TRIED.items()):
        lines.append(f"  {surface}: {sum(c.values())} -> " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines), flush=True)


# -- the management API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def array(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "arr"
    proc = ArrayProcess(root, "main", token=TOKEN)
    proc.start()
    c = ArrayClient(proc.endpoints()["mgmt_url"], token=TOKEN)
    for v in ("v1", "v2", "v3"):
        c.create_volume(v, MiB)
    c.create_group("gm", ["v1"], "127.0.0.1:9", secret=new_pair_secret())
    proc.array.authorize_pair("gs", new_pair_secret())
    proc.array.ensure_secondary_group("gs", {7: ("vs", MiB)}, 4 * MiB, 1)
    c.create_snapshot("s1", volumes=["v2"])
    try:
        yield proc
    finally:
        proc.stop()


def state_of(root: Path) -> str:
    files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                   if p.is_file() and p.suffix != ".tmp")
    return json.dumps([files, json.loads((root / "array.json").read_text())], sort_keys=True)


NAMES = st.one_of(st.sampled_from(["v1", "v2", "v3", "vs", "gm", "gs", "s1", "nope", "..", "%2e%2e",
                                   "a" * 70, "V1", "v1%00", "ü", ""]),
                  st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), max_size=12))
PATHS = st.one_of(
    st.builds(lambda t, a: t.format(a=a),
              st.sampled_from(["/v1/volumes", "/v1/groups", "/v1/snapshots", "/v1/clones", "/v1/pairs",
                               "/v1/groups/{a}/actions", "/v1/groups/{a}/members"]),
              st.sampled_from(["gm", "gs"])),
    st.builds(lambda t, a, b: t.format(a=a, b=b),
              st.sampled_from(["/v1/status", "/v1/volumes", "/v1/volumes/{a}", "/v1/groups",
                               "/v1/groups/{a}", "/v1/groups/{a}/lag", "/v1/groups/{a}/actions",
                               "/v1/groups/{a}/members", "/v1/groups/{a}/members/{b}",
                               "/v1/snapshots", "/v1/snapshots/{a}", "/v1/clones", "/v1/pairs",
                               "/v1/pairs/{a}", "/v2/status", "/", "/v1/groups/{a}?delete_volumes={b}"]),
              NAMES, NAMES),
    st.text(alphabet=st.characters(codec="ascii", min_codepoint=33), max_size=40).map(lambda s: "/" + s),
)
HUGE = st.sampled_from([2**62, 2**63, 2**64 + 1, -(2**63), 10**30, 1 << 44, (1 << 44) + 1, 0, -1, 1, MiB])
SCALARS = st.one_of(st.none(), st.booleans(), HUGE, st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20), NAMES)
JSON = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4),
                                                  st.dictionaries(st.text(max_size=8), c, max_size=4)),
                    max_leaves=12)
FIELDS = ["name", "size", "volumes", "remote", "secret", "group", "action", "snapshot", "volume",
          "mode", "journal_capacity", "transfer_interval_ms", "sync_timeout_s", "auto_resync",
          "remote_names", "remote_name"]
OBJECTS = st.dictionaries(st.sampled_from(FIELDS), st.one_of(JSON, st.just("promote"),
                                                              st.sampled_from(["suspend", "resync", "configure"])),
                          max_size=6)


def _nested(depth: int, kind: str) -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "list" else (b'{"a":' * depth + b"1" + b"}" * depth)


RAW_BODIES = st.one_of(
    OBJECTS.map(lambda o: json.dumps(o).encode()),
    JSON.map(lambda o: json.dumps(o).encode()),
    st.sampled_from([b'{"name": "big", "size": 1e400}', b'{"name": "big", "size": 4611686018427387904}',
                     b'{"name": "nan", "size": NaN}', b'{"name": "inf", "size": Infinity}',
                     b'{"name": "neg", "size": -Infinity}', b'{"name": "x", "size": 1e308}',
                     b'{"name": "x", "size": 1' + b"0" * 5000 + b"}", b'{"name": "x"', b"\xff\xfe{}",
                     b'{"name": "x", "size": 1048576, "name": "y"}', b"null", b"[]", b'"x"']),
    st.builds(_nested, st.integers(min_value=20, max_value=20000), st.sampled_from(["list", "dict"])),
    st.binary(max_size=200),
)
CTYPES = st.one_of(st.just("application/json"),
                   st.sampled_from(["application/json; charset=utf-8", "text/plain",
                                    "application/x-www-form-urlencoded", "", "APPLICATION/JSON"]))


class _Http:
    """One kept-alive connection; reopened only when the server said Connection: close."""

    def __init__(self, url: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=20)
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if (r.getheader("Connection") or "").lower() == "close":
            self.conn.close()
            self.conn = None
        return r.status, data


@pytest.fixture(scope="module")
def mgmt(array):
    h = _Http(array.endpoints()["mgmt_url"])
    yield h
    if h.conn:
        h.conn.close()


@fuzz_settings(300)
@given(method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]), path=PATHS,
       body=st.one_of(st.none(), RAW_BODIES), ctype=CTYPES)
def test_management_api_never_fails_on_bad_input(array, mgmt, method, path, body, ctype):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if ctype:
        headers["Content-Type"] = ctype
    before = state_of(array.root)
    try:
        status, data = mgmt.request(method, quote(path, safe="/?=&%"), body, headers)
    except (http.client.HTTPException, OSError) as e:
        pytest.fail(f"{method} {path} dropped the connection: {type(e).__name__}: {e}")
    assert status < 500, (method, path, body, data[:300])
    if status >= 400:
        reply = json.loads(data)
        assert reply["message"] and "Traceback" not in reply["message"]
        assert state_of(array.root) == before, f"refused {method} {path} changed the array"
        count("management API", str(status))
    else:
        count("management API", "accepted")


@pytest.mark.parametrize("body", [
    b'{"name": "huge", "size": 4611686018427387904}',  # 2**62
    b'{"name": "huge", "size": 1e400}',
    b'{"name": "huge", "size": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"name": "huge", "size": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
])
def test_huge_sizes_and_deep_json_are_400_with_nothing_created(array, mgmt, body):
    before = state_of(array.root)
    status, data = mgmt.request("POST", "/v1/volumes", body, {"Authorization": f"Bearer {TOKEN}",
                                                             "Content-Type": "application/json"})
    assert status in (400, 413), data
    assert not (array.root / "volumes" / "huge.vol").exists(), "a 0-byte volume file was left behind"
    assert state_of(array.root) == before
    status, data = mgmt.request("GET", "/v1/status", None, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "huge" not in data.decode()  # the same connection still serves


# -- the data path -------------------------------------------------------------------------------


@fuzz_settings(100)
@given(data=st.one_of(st.binary(min_size=1, max_size=300),
                      st.builds(lambda op, h, off, n, tail: struct.pack("<BIQI", op, h, off, n) + tail,
                                st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                                st.integers(0, 2**32 - 1), st.binary(max_size=64))))
def test_data_path_survives_garbage(array, data):
    before = json.loads((array.root / "array.json").read_text())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(array.sock_path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
    assert json.loads((array.root / "array.json").read_text()) == before
    v = RemoteVolume(str(array.sock_path), "v3")  # the data path still serves
    assert len(v.read(0, 16)) == 16
    v.close()
    count("data path", "refused or ignored")


# -- the replication port, unauthenticated ------------------------------------------------------


FRAMES = st.lists(st.tuples(st.integers(0, 255), st.one_of(
    JSON.map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({"group": NAMES, "nonce": st.text(max_size=40)}).map(lambda o: json.dumps(o).encode()),
    st.binary(max_size=200))), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def backup_array(tmp_path_factory):
    proc = ArrayProcess(tmp_path_factory.mktemp("fuzz-repl") / "arr", "backup", token=TOKEN)
    proc.start()
    proc.array.authorize_pair("gs", new_pair_secret())
    proc.array.ensure_secondary_group("gs", {7: ("vs", MiB)}, 4 * MiB, 1)
    try:
        yield proc
    finally:
        proc.stop()


@fuzz_settings(80)
@given(frames=st.one_of(FRAMES, st.binary(min_size=1, max_size=300).map(lambda b: [(None, b)])))
def test_replication_port_refuses_strangers_and_keeps_serving(backup_array, frames):
    array = backup_array
    before = state_of(array.root)
    host, port = array.endpoints()["replication"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        try:
            for ftype, payload in frames:
                if ftype is None:
                    s.sendall(payload)
                else:
                    wire.send(s, ftype, payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
    assert state_of(array.root) == before
    with socket.create_connection((host, int(port)), timeout=5) as s:  # still serving
        wire.send_json(s, wire.HELLO, {"group": "gs", "nonce": wire.nonce()})
        assert wire.recv(s)[0] == wire.CHALLENGE
    count("replication port", "refused")


# -- journal records and wire frames --------------------------------------------------------------


def _record(seq: int, data: bytes, kind: int = rec.KIND_WRITE, vol: int = 7, off: int = 0) -> bytes:
    return rec.encode(kind, 1, seq, 1.0, vol, off, data)


@st.composite
def batches(draw) -> bytes:
    n = draw(st.integers(1, 4))
    raw = b"".join(_record(i + 1, draw(st.binary(max_size=64)), draw(st.sampled_from([1, 2, 3])),
                           draw(st.sampled_from([7, 8])), draw(st.integers(0, 2 * MiB)))
                   for i in range(n))
    b = bytearray(raw)
    for _ in range(draw(st.integers(0, 3))):  # flips, cuts and insertions
        how = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        if how == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del b[i:]
        elif how == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            b[i] = draw(st.integers(0, 255))
    return bytes(b)


@fuzz_settings(400)
@given(buf=st.one_of(batches(), st.binary(max_size=400)))
def test_record_parser_accepts_only_whole_checksummed_records(buf):
    try:
        out = list(rec.iter_records(buf))
    except JournalError:
        count("journal record parser", "refused")
        return
    for r, raw in out:  # anything accepted is a record that re-encodes to exactly its bytes
        assert rec.encode(r.kind, r.generation, r.sequence, r.time, r.volume, r.offset, r.data) == raw
        try:
            r.extents()
        except JournalError:
            pass
    count("journal record parser", "accepted" if out else "empty")


@fuzz_settings(200)
@given(vector=st.one_of(st.binary(max_size=80),
                        st.builds(lambda n, body: struct.pack("<I", n) + body,
                                  st.integers(0, 2**32 - 1), st.binary(max_size=80))))
def test_write_vector_parser_refuses_what_does_not_add_up(vector):
    raw = _record(1, vector, rec.KIND_WRITEV)
    (r, _), = rec.iter_records(raw)  # a valid checksum over a bad write vector
    try:
        ext = r.extents()
    except JournalError:
        count("write vector parser", "refused")
        return
    assert sum(len(d) for _, d in ext) + 4 + 12 * len(ext) == len(vector)
    count("write vector parser", "accepted")


@pytest.fixture(scope="module")
def backup_group(tmp_path_factory):
    a = Array(tmp_path_factory.mktemp("fuzz-backup") / "b", "backup")
    g = a.ensure_secondary_group("g", {7: ("vol-a", MiB)}, 4 * MiB, 1)
    yield a, g
    a.close()


@fuzz_settings(150)
@given(buf=st.one_of(batches(), st.binary(min_size=1, max_size=300)))
def test_backup_receive_stores_nothing_of_a_bad_batch(backup_group, buf):
    a, g = backup_group
    g.set_state("pair", "", consistent=True)  # each input meets a healthy group
    first, next_seq = g.journal.first_seq, g.journal.next_seq
    image = a.read("vol-a", 0, MiB)
    try:
        g.receive(buf)
    except JournalError:
        assert (g.journal.first_seq, g.journal.next_seq) == (first, next_seq)
        assert g.state == "error"  # a refused entry from the main site stops the pair, said so
        count("backup receive", "refused")
    else:
        count("backup receive", "stored")
        g.journal.reset(1, 1)  # forget it again for the next input
        g.applied.store(0, 1, 0.0)
    assert a.read("vol-a", 0, MiB) == image  # nothing was applied by receiving


@fuzz_settings(200)
@given(stream=st.one_of(st.binary(max_size=64),
                        st.builds(lambda n, t, p: struct.pack("<IB", n, t) + p,
                                  st.integers(0, 2**32 - 1), st.integers(0, 255), st.binary(max_size=64))))
def test_wire_frame_reader_returns_a_frame_or_unavailable(stream):
    a, b = socket.socketpair()
    try:
        a.sendall(stream)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(5)
        try:
            ftype, payload = wire.recv(b)
        except Unavailable:
            count("wire frame reader", "refused")
            return
        assert 0 <= ftype <= 255 and len(payload) == struct.unpack_from("<I", stream)[0]
        count("wire frame reader", "frame")
    finally:
        a.close()
        b.close()


def _crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (reflected polynomial 0x82F63B78): the documented checksum,
    computed without the library the engine uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc_of_the_record_parser_is_the_documented_one():
    assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    raw = _record(5, b"abc")
    head = raw[:rec.HEADER_SIZE]
    assert head[:4] == b"DRJ2"
    assert struct.unpack("<I", head[-4:])[0] == _crc32c(head[:-4] + b"abc")


def test_records_of_the_previous_format_are_still_read_and_verified():
    """A DRJ1 record (zlib CRC-32 of the header with its crc zero, then the data), as
    journals written before CRC-32C hold them."""
    head = rec.HEADER.pack(b"DRJ1", rec.KIND_WRITE, 1, 5, 1.5, 2, 4096, 3, 0)
    crc = zlib.crc32(b"abc", zlib.crc32(head))
    raw = head[:-4] + struct.pack("<I", crc) + b"abc"
    r = rec.decode(raw)
    assert (r.sequence, r.volume, r.offset, r.data) == (5, 2, 4096, b"abc")
    assert [x[2] for x in rec.scan(raw + _record(6, b"de"), 5)] == [5, 6]
    bad = raw[:-1] + b"x"
    with pytest.raises(JournalError, match="fails its checksum"):
        rec.decode(bad)
    with pytest.raises(JournalError, match="fails its checksum"):
        list(rec.scan(bytearray(bad)))
