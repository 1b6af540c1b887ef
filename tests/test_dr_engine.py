"""Role swaps in the storage engine, on two array processes: demote (fencing), promote
(clean or tracking), reverse replication without a copy when both sides are identical, and
a resync of only the regions changed on either side after an unplanned failover."""

from __future__ import annotations

import time

import pytest
from conftest import wait_for

from dr_kit.errors import Conflict
from dr_kit.storage.blocks import CHUNK
from dr_kit.storage.client import ArrayClient, create_pair, new_pair_secret

MiB = 1 << 20
SIZE = 8 * MiB
VOLS = ("vol-a", "vol-b")


def image(client: ArrayClient, volume: str) -> bytes:
    v = client.open_volume(volume)
    try:
        return v.read(0, v.size)
    finally:
        v.close()


def write(client: ArrayClient, volume: str, offset: int, data: bytes) -> None:
    v = client.open_volume(volume)
    try:
        v.write(offset, data)
    finally:
        v.close()


def caught_up(client: ArrayClient, group: str) -> dict:
    return client.wait_group(group, lambda s: s["side"] == "main" and s["state"] == "pair"
                             and s["lag"]["consistent"] is True and s["lag"]["sequence_lag"] == 0,
                             timeout=30, what="pair, caught up")


@pytest.fixture
def pair(arrays):
    main, backup = arrays.start("main"), arrays.start("backup")
    for v in VOLS:
        main.client.create_volume(v, SIZE)
    arrays.link_to_backup = arrays.link(backup.replication)
    create_pair(main.client, backup.client, "g", list(VOLS), arrays.link_to_backup.address)
    caught_up(main.client, "g")
    for i in range(20):  # some history on both volumes
        write(main.client, VOLS[i % 2], i * 3 * CHUNK, bytes([i + 1]) * 4096)
    caught_up(main.client, "g")
    return main, backup


def test_planned_swap_reverses_without_a_copy_and_fences_the_old_main(pair, arrays):
    main, backup = pair
    mc, bc = main.client, backup.client
    head = mc.group_status("g")["lag"]["main"]
    demoted = mc.group_action("g", "demote")
    assert demoted["clean"] is True and demoted["position"] == head
    assert demoted["lost_entries"] == 0 and demoted["divergent_regions"] == 0
    with pytest.raises(Conflict, match="read-only"):  # fenced: the old main's hosts are refused
        write(mc, VOLS[0], 0, b"x" * 4096)
    assert mc.group_action("g", "demote")["already"] is True  # idempotent

    secret = new_pair_secret()
    mc.authorize_pair("g", secret)
    promoted = bc.group_action("g", "promote", track=True, clean=True,
                               remote=main.replication, secret=secret)
    assert promoted["clean"] is True and promoted["position"] == head  # the same point: proven
    assert bc.group_action("g", "promote", track=True)["already"] is True
    write(bc, VOLS[1], 5 * CHUNK, b"n" * 4096)
    st = caught_up(bc, "g")
    assert st["last_copy"] is None, "identical sides: nothing is copied"
    assert int(st["lag"]["main"].split("/")[1]) == int(head.split("/")[1]) + 1  # the sequence goes on
    for v in VOLS:
        assert image(mc, v) == image(bc, v)
    # and back again the same way
    bc.group_action("g", "demote")
    secret2 = new_pair_secret()
    bc.authorize_pair("g", secret2)
    mc.group_action("g", "promote", track=True, clean=True, remote=backup.replication, secret=secret2)
    write(mc, VOLS[0], 0, b"h" * 4096)
    st = caught_up(mc, "g")
    assert st["last_copy"] is None
    for v in VOLS:
        assert image(mc, v) == image(bc, v)


def test_a_clean_promotion_is_refused_when_the_sides_differ(pair):
    main, backup = pair
    backup.client.group_action("g", "pause-apply")
    write(main.client, VOLS[0], 0, b"z" * 4096)
    wait_for(lambda: backup.client.group_status("g")["received"] >
             int(backup.client.group_status("g")["applied"].split("/")[1]), what="an unapplied entry")
    with pytest.raises(Conflict, match="without a copy"):
        backup.client.group_action("g", "promote", track=True, clean=True)
    assert backup.client.group_status("g")["side"] == "backup"  # nothing changed


def test_failover_then_failback_copies_only_the_regions_changed_on_either_side(pair, arrays):
    main, backup = pair
    mc, bc = main.client, backup.client
    # the old main writes beyond what the backup will have: the link is down meanwhile
    arrays.link_to_backup.cut()
    for i in range(5):
        write(mc, VOLS[0], (100 + i) * CHUNK, b"L" * 4096)  # lost writes (never applied)
    split = bc.group_status("g")["applied"]
    main.kill()  # the disaster
    promoted = bc.group_action("g", "promote", track=True)
    assert promoted["clean"] is False and promoted["position"] == split
    for i in range(3):  # the new main writes while the old one is down
        write(bc, VOLS[1], (80 + i) * CHUNK, b"N" * 4096)

    main = arrays.restart(main)
    mc = main.client
    assert mc.group_status("g")["side"] == "main"  # still a main: fenced by the demotion below
    demoted = mc.group_action("g", "demote", split=split)
    # each lost write is a journal entry beyond the split, or (its entry still queued when
    # the old main was killed) a region the restart marked changed without an entry
    assert demoted["lost_entries"] + demoted["untracked_regions"] >= 5
    assert demoted["divergent_regions"] >= 5
    before = image(mc, VOLS[0])
    assert before[100 * CHUNK:100 * CHUNK + 4] == b"LLLL"

    secret = new_pair_secret()
    mc.authorize_pair("g", secret)
    bc.group_action("g", "pair", remote=main.replication, secret=secret)
    st = caught_up(bc, "g")
    copied = st["last_copy"]["regions"]
    assert 8 <= copied <= 8 + 4, st["last_copy"]  # 5 divergent + 3 new (+ a boundary chunk)
    assert st["last_copy"]["bytes"] <= 0.10 * st["volume_bytes"]
    for v in VOLS:
        assert image(mc, v) == image(bc, v)
    assert image(mc, VOLS[0])[100 * CHUNK:100 * CHUNK + 4] == b"\0\0\0\0"  # lost writes gone
    back = mc.group_status("g")
    assert back["divergent_regions"] == 0 and back["consistent"] is True


def test_a_swap_keeps_each_volume_to_its_own_when_the_arrays_number_them_differently(arrays):
    """The main array numbers vol-b 1 and vol-a 2 (made in that order); the backup numbers
    them as the pair announced them.  After the swap the new main's records carry its own
    ids: the old main must map them by name, not keep its own numbering."""
    main, backup = arrays.start("main"), arrays.start("backup")
    for v in reversed(VOLS):
        main.client.create_volume(v, SIZE)
    link = arrays.link(backup.replication)
    create_pair(main.client, backup.client, "g", list(VOLS), link.address)
    mc, bc = main.client, backup.client
    write(mc, VOLS[0], 0, b"A" * 4096)
    write(mc, VOLS[1], 0, b"B" * 4096)
    caught_up(mc, "g")
    mc.group_action("g", "demote")
    secret = new_pair_secret()
    mc.authorize_pair("g", secret)
    bc.group_action("g", "promote", track=True, clean=True, remote=main.replication, secret=secret)
    write(bc, VOLS[0], CHUNK, b"a" * 4096)
    write(bc, VOLS[1], CHUNK, b"b" * 4096)
    caught_up(bc, "g")
    for v in VOLS:
        assert image(mc, v) == image(bc, v), v
    assert image(mc, VOLS[0])[CHUNK:CHUNK + 1] == b"a" and image(mc, VOLS[1])[CHUNK:CHUNK + 1] == b"b"


def test_a_demoted_copy_promoted_again_copies_what_the_other_side_never_got(pair, arrays):
    """A demotion that was not clean (writes the backup never got), then the same side
    promoted again before any resync, as when a planned move is called off: the regions it
    wrote beyond the split are what the other side lacks, so the resync toward it must copy
    them, not only the regions written after the promotion."""
    main, backup = pair
    mc, bc = main.client, backup.client
    arrays.link_to_backup.cut()
    for i in range(4):
        write(mc, VOLS[0], (60 + i) * CHUNK, b"D" * 4096)  # never reach the backup
    demoted = mc.group_action("g", "demote")
    assert demoted["clean"] is False and demoted["divergent_regions"] >= 4
    promoted = mc.group_action("g", "promote", track=True)
    assert promoted["clean"] is False and promoted["divergent_regions"] == demoted["divergent_regions"]
    assert "beyond the split" in mc.group_status("g")["message"]
    write(mc, VOLS[1], 70 * CHUNK, b"P" * 4096)  # and one write after the promotion
    arrays.link_to_backup.restore()
    secret = new_pair_secret()
    bc.authorize_pair("g", secret)
    mc.group_action("g", "pair", remote=arrays.link_to_backup.address, secret=secret)
    st = caught_up(mc, "g")
    assert st["last_copy"]["regions"] >= 5, st["last_copy"]
    for v in VOLS:
        assert image(mc, v) == image(bc, v), v
    assert image(bc, VOLS[0])[60 * CHUNK:60 * CHUNK + 4] == b"DDDD"


def test_a_pair_suspended_by_request_stays_suspended_until_a_resync_is_asked_for(pair):
    """A suspension asked for (Hitachi's split) holds: the group tracks changes and does not
    resync by itself, as it does after a suspension of its own (journal full, restart);
    the resync action copies the changed regions and ends the hold."""
    main, backup = pair
    mc, bc = main.client, backup.client
    before = mc.group_status("g")["last_copy"]
    mc.group_action("g", "suspend")
    write(mc, VOLS[0], 90 * CHUNK, b"S" * 4096)  # tracked, not sent
    for _ in range(30):  # the sender looks at an idle group at least every 2 s
        st = mc.group_status("g")
        assert st["state"] == "suspended" and st["held"] is True and st["last_copy"] == before, st
        time.sleep(0.1)
    assert image(bc, VOLS[0])[90 * CHUNK:90 * CHUNK + 1] == b"\0"
    mc.group_action("g", "resync")
    st = caught_up(mc, "g")
    assert st["held"] is False and st["last_copy"]["regions"] >= 1
    assert image(bc, VOLS[0]) == image(mc, VOLS[0])
