"""The storage doors: the arrays' management API, the link's control API, the replication port.

Every management and control request needs the site's token, no foreign Origin and JSON
bodies; a refused request changes nothing.  The replication link authenticates both ends
of each pair with the pair's secret: a stranger can neither feed a backup array entries nor
read the journal stream.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for

from dr_kit.errors import InvalidInput
from dr_kit.storage import wire
from dr_kit.storage.client import ArrayClient, create_pair, new_pair_secret
from dr_kit.storage.link import ControlServer, LinkEmulator
from dr_kit.storage.server import ArrayProcess

MiB = 1 << 20
TOKEN = "t0ken-" + "x" * 40


@pytest.fixture
def array(tmp_path: Path):
    proc = ArrayProcess(tmp_path / "arr", "main", token=TOKEN)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def raw(url: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def good(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(extra or {})}


def state_of(proc: ArrayProcess) -> str:
    """What a refused request must not change: the configuration and the files."""
    files = sorted(str(p.relative_to(proc.root)) for p in proc.root.rglob("*") if p.is_file()
                   and p.name != "array.json")
    conf = json.loads((proc.root / "array.json").read_text())
    return json.dumps([files, conf], sort_keys=True)


REFUSED = [
    ("no token", {"Content-Type": "application/json"}, 401),
    ("wrong token", {"Authorization": "Bearer " + "y" * 46, "Content-Type": "application/json"}, 401),
    ("basic auth", {"Authorization": "Basic dXNlcjpwYXNz", "Content-Type": "application/json"}, 401),
    ("foreign origin", good({"Origin": "http://evil.example"}), 403),
    ("cross-site fetch", good({"Sec-Fetch-Site": "cross-site"}), 403),
    ("text/plain body", {**good(), "Content-Type": "text/plain"}, 415),
    ("form body", {**good(), "Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("no content type", {"Authorization": f"Bearer {TOKEN}"}, 415),
]


@pytest.mark.parametrize("what,headers,code", REFUSED, ids=[r[0] for r in REFUSED])
def test_management_api_refuses_and_changes_nothing(array, what, headers, code):
    url = array.endpoints()["mgmt_url"]
    client = ArrayClient(url, token=TOKEN)
    client.create_volume("keep", MiB)
    before = state_of(array)
    calls = [("POST", "/v1/volumes", {"name": "evil", "size": MiB}),
             ("DELETE", "/v1/volumes/keep", None),
             ("POST", "/v1/pairs", {"group": "evil", "secret": "s" * 64})]
    for method, path, body in calls:
        data = json.dumps(body).encode() if body is not None else None
        if data is None and code == 415:
            continue  # a body-less request needs no content type
        got, reply = raw(url + path, method, data, headers)
        assert got == code, (what, method, path, got, reply)
        assert reply["message"] and TOKEN not in reply["message"]
    assert state_of(array) == before, f"a refused request ({what}) changed the array"
    if code != 415:  # reading needs the token too
        assert raw(url + "/v1/status", "GET", None, headers)[0] == code


def test_management_api_with_token_works_and_never_returns_secrets(array, monkeypatch):
    url = array.endpoints()["mgmt_url"]
    c = ArrayClient(url, token=TOKEN)
    c.create_volume("v1", MiB)
    secret = new_pair_secret()
    c.authorize_pair("gx", secret)
    c.create_group("gm", ["v1"], "127.0.0.1:9", secret=new_pair_secret())
    text = json.dumps(c.status()) + json.dumps(c.group_status("gm")) + json.dumps(c.lag("gm").to_dict())
    assert secret not in text and "secret" not in text
    # the array's own origin is fine (its own page, if it had one)
    port = url.rsplit(":", 1)[1]
    assert raw(url + "/v1/status", headers=good({"Origin": f"http://127.0.0.1:{port}"}))[0] == 200
    # without a token the client says so in one line, with no token in it
    monkeypatch.delenv("DR_KIT_ARRAY_TOKEN", raising=False)
    with pytest.raises(InvalidInput, match="no token"):
        ArrayClient(url).status()
    with pytest.raises(InvalidInput, match="not this array's") as e:
        ArrayClient(url, token="z" * 40).status()
    assert "z" * 40 not in str(e.value)
    monkeypatch.setenv("DR_KIT_ARRAY_TOKEN", TOKEN)  # the environment's token is the fallback
    assert ArrayClient(url).status()["name"] == "main"
    # the folder is the owner's alone, the configuration (with the secrets) too
    assert stat.S_IMODE(array.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((array.root / "array.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(array.sock_path).st_mode) == 0o600


def test_array_process_refuses_to_start_without_a_token(tmp_path):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "DR_KIT_ARRAY_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "dr_kit.storage.server", "--dir", str(tmp_path / "a")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("error: set DR_KIT_ARRAY_TOKEN") and "Traceback" not in p.stderr


def test_link_control_api_needs_the_token(tmp_path):
    link = LinkEmulator("127.0.0.1:9").start()
    ctl = ControlServer(link, token=TOKEN)
    t = threading.Thread(target=ctl.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{ctl.server_address[1]}/link"
    try:
        body = json.dumps({"delay_ms": 500, "cut": True}).encode()
        for what, headers, code in REFUSED:
            got, reply = raw(url, "POST", body, headers)
            assert got == code, (what, got, reply)
        assert link.delay_ms == 0 and not link.is_cut, "a refused request changed the link"
        assert raw(url, "POST", json.dumps({"delay_ms": "5"}).encode(), good())[0] == 400
        assert raw(url, "POST", json.dumps({"speed": 5}).encode(), good())[0] == 400
        assert raw(url, "POST", json.dumps([1, 2]).encode(), good())[0] == 400
        assert link.delay_ms == 0
        got, st = raw(url, "POST", json.dumps({"delay_ms": 5}).encode(), good())
        assert got == 200 and st["delay_ms"] == 5.0 and link.delay_ms == 5.0
    finally:
        ctl.shutdown()
        ctl.server_close()
        link.stop()


# -- the replication link -----------------------------------------------------------------


def test_stranger_cannot_feed_a_backup_array(arrays):
    """A peer without the pair's secret gets no backup group, no volume, no entry stored."""
    backup = arrays.start("backup")
    bc = backup.client
    bc.authorize_pair("g", new_pair_secret())
    host, port = backup.replication.rsplit(":", 1)
    before = bc.status()

    def attempt(frames_after_hello: list[tuple[int, bytes]]) -> list[tuple[int, dict]]:
        got = []
        with socket.create_connection((host, int(port)), timeout=5) as s:
            wire.send_json(s, wire.HELLO, {"group": "g", "nonce": wire.nonce()})
            for ftype, payload in frames_after_hello:
                try:
                    wire.send(s, ftype, payload)
                except OSError:
                    break
            try:
                while True:
                    ftype, payload = wire.recv(s)
                    got.append((ftype, json.loads(payload)))
            except (OSError, Exception):  # closed by the backup
                pass
        return got

    members = {"1": ["vol-x", MiB]}
    forged = json.dumps({"proof": "0" * 64, "generation": 1, "members": members, "mode": "async",
                         "journal_capacity": MiB}).encode()
    entries = b"DRJ1" + bytes(60)
    # a guessed proof, then entries anyway
    replies = attempt([(wire.AUTH, forged), (wire.ENTRIES, entries)])
    kinds = [k for k, _ in replies]
    assert kinds[0] == wire.CHALLENGE and wire.ERROR in kinds and wire.STATE not in kinds
    assert "authentication" in dict(replies)[wire.ERROR]["message"]
    # entries straight away, with no handshake at all
    replies = attempt([(wire.ENTRIES, entries)])
    assert wire.STATE not in [k for k, _ in replies]
    # a group the backup was never told about
    with socket.create_connection((host, int(port)), timeout=5) as s:
        wire.send_json(s, wire.HELLO, {"group": "other", "nonce": wire.nonce()})
        ftype, payload = wire.recv(s)
        assert ftype == wire.ERROR and "no pair secret" in json.loads(payload)["message"]
    after = bc.status()
    assert after["groups"] == before["groups"] == [] and after["volumes"] == before["volumes"] == []


def test_main_with_the_wrong_secret_is_refused_and_reports_it(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 2 * MiB)
    mc.open_volume("vol-a").write(0, b"private data" * 100)
    bc.authorize_pair("g", new_pair_secret())
    mc.create_group("g", ["vol-a"], backup.replication, secret=new_pair_secret())  # another one
    st = mc.wait_group("g", lambda s: s["last_error"], timeout=20, what="a reported link error")
    assert "did not prove the pair secret" in st["last_error"] and st["connected"] is False
    assert st["state"] == "copy"
    assert bc.status()["groups"] == [] and bc.status()["volumes"] == []


def test_stranger_posing_as_the_backup_reads_nothing(arrays, tmp_path):
    """The main checks the backup's proof before it sends anything of the pair."""
    main = arrays.start("main")
    mc = main.client
    mc.create_volume("vol-a", 2 * MiB)
    secret_data = b"journal-stream-secret" * 50
    mc.open_volume("vol-a").write(0, secret_data)
    fake = socket.create_server(("127.0.0.1", 0))
    port = fake.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        fake.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = fake.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    ftype, channel, payload = wire.recv_frame(conn)
                    received.append((ftype, payload))
                    wire.send_json(conn, wire.CHALLENGE, {"nonce": wire.nonce(), "proof": "f" * 64},
                                   channel=channel)
                    while True:
                        ftype, _, payload = wire.recv_frame(conn)
                        received.append((ftype, payload))
                except Exception:  # noqa: BLE001 - closed by the main array
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        mc.create_group("g", ["vol-a"], f"127.0.0.1:{port}", secret=new_pair_secret())
        st = mc.wait_group("g", lambda s: s["last_error"], timeout=20, what="the refusal")
        assert "did not prove the pair secret" in st["last_error"]
        wait_for(lambda: sum(f == wire.HELLO for f, _ in received) >= 2, what="a second attempt")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(5)
        fake.close()
    everything = b"".join(p for _, p in received)
    assert b"journal-stream" not in everything and b"vol-a" not in everything
    assert b"members" not in everything and b"proof" not in everything
    for ftype, payload in received:  # only the opening HELLO (group name and a nonce) was sent
        if ftype == wire.HELLO:
            assert set(json.loads(payload)) == {"group", "nonce", "lane"}
        else:
            assert ftype == wire.BYE and payload == b"", (ftype, payload[:80])


def test_pair_with_the_secret_replicates_and_promotion_fences_the_old_main(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    mc, bc = main.client, backup.client
    mc.create_volume("vol-a", 2 * MiB)
    create_pair(mc, bc, "g", ["vol-a"], backup.replication)
    mc.wait_group("g", lambda s: s["state"] == "pair" and s["lag"]["consistent"], timeout=30,
                  what="pair")
    assert mc.group_status("g")["last_error"] is None
    bc.group_action("g", "promote")  # the backup's copy is now a plain volume: the pair is gone
    st = mc.wait_group("g", lambda s: s["last_error"] and "no pair secret" in s["last_error"],
                       timeout=20, what="the old main refused")
    assert st["connected"] is False
    assert bc.status()["groups"] == []
