"""SQLite on array volumes through the apsw VFS: durability, crash recovery, bad names."""

from __future__ import annotations

import itertools

import apsw
import pytest

from dr_kit.errors import InvalidInput
from dr_kit.shop.workload import Shop, judge_images, open_shop, seed
from dr_kit.sqlite import vfs as sqlite_vfs
from dr_kit.storage.array import Array
from dr_kit.storage.blocks import FileVolume

MiB = 1 << 20
_names = itertools.count()


def _vfs(open_device) -> sqlite_vfs.ArrayVFS:
    return sqlite_vfs.register(f"test-vfs-{next(_names)}", open_device)


def _rows(con) -> list[tuple]:
    return list(con.execute("SELECT id, val FROM t ORDER BY id"))


def _integrity(con) -> str:
    return next(con.execute("PRAGMA integrity_check"))[0]


def test_database_on_array_volume_survives_reopen_and_array_restart(arrays):
    main = arrays.start("main")
    mc = main.client
    mc.create_volume("db-vol", 8 * MiB)
    vfs = _vfs(mc.open_volume)
    con = sqlite_vfs.connect(vfs, "db-vol", "app.db")
    with con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"value-{i}" * 20) for i in range(500)])
    with con:
        con.execute("UPDATE t SET val = 'changed' WHERE id % 7 = 0")
    expect = _rows(con)
    con.close()
    vfs.forget("db-vol")

    con = sqlite_vfs.connect(vfs, "db-vol", "app.db", create=False)
    assert _rows(con) == expect
    assert _integrity(con) == "ok"
    con.close()
    vfs.forget("db-vol")

    main.stop()  # the array process goes away and comes back on its folder
    main2 = arrays.restart(main, same_repl_port=False)
    vfs2 = _vfs(main2.client.open_volume)
    con = sqlite_vfs.connect(vfs2, "db-vol", "app.db", create=False)
    assert _rows(con) == expect
    assert len(expect) == 500 and expect[7] == (7, "changed")
    assert _integrity(con) == "ok"
    con.close()
    vfs2.forget("db-vol")


def test_sqlite_writes_go_through_the_group_journal(tmp_path):
    a = Array(tmp_path / "arr", "main")
    try:
        a.create_volume("db-vol", 8 * MiB)
        grp = a.create_primary_group("grp", ["db-vol"], "127.0.0.1:9", secret="s" * 64)
        vfs = _vfs(lambda name: _ArrayDev(a, name))
        con = sqlite_vfs.connect(vfs, "db-vol", "app.db")
        before = grp.journal.last_seq
        with con:
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
            con.execute("INSERT INTO t VALUES (1, 'one')")
        assert grp.journal.last_seq > before  # the page writes are journal entries
        n = grp.journal.last_seq
        with con:
            con.execute("INSERT INTO t VALUES (2, 'two')")
        assert grp.journal.last_seq > n
        con.close()
        vfs.forget("db-vol")
    finally:
        a.close()


class _ArrayDev:
    """A volume reached through the array's data path in-process (commit path, journal)."""

    def __init__(self, array: Array, name: str) -> None:
        self.array, self.name = array, name
        self.size = array.volume(name).size

    def read(self, offset: int, length: int) -> bytes:
        return self.array.read(self.name, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.array.write(self.name, offset, data)

    def writev(self, extents: list[tuple[int, bytes]]) -> None:
        self.array.writev(self.name, extents)


class _Recorder:
    """A block device that passes writes on and remembers them, in order, as requests: a
    plain write is a request of one extent, ``writev`` one request of several."""

    def __init__(self, dev) -> None:
        self.dev, self.size = dev, dev.size
        self.requests: list[list[tuple[int, bytes]]] = []

    def read(self, offset: int, length: int) -> bytes:
        return self.dev.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.requests.append([(offset, bytes(data))])
        self.dev.write(offset, data)

    def writev(self, extents: list[tuple[int, bytes]]) -> None:
        self.requests.append([(off, bytes(d)) for off, d in extents])
        for off, data in extents:
            self.dev.write(off, data)

    def sync(self) -> None:
        pass


@pytest.mark.parametrize("cut_at", ["request", "extent"])
def test_hot_journal_image_rolls_back_to_last_commit(tmp_path, cut_at):
    """Images that hold only a prefix of the writes of a committing transaction (a copy taken
    mid-transaction) open with SQLite's crash recovery: each shows either the last committed
    state or the new one, never a mix, and passes integrity_check.

    ``request``: prefixes end between requests, as the array guarantees for a replicated
    volume (one journal entry per request).  ``extent``: prefixes end between any two
    extents, which is what :mod:`dr_kit.sqlite.volfs` promises (\"any prefix of them is a
    state SQLite's recovery understands\") and what a device without ``writev`` or an array
    killed in the middle of a request leaves behind."""
    size = 4 * MiB
    base_path = tmp_path / "base.vol"
    vol = FileVolume(base_path, size, create=True)
    vfs = _vfs(lambda name: vol)
    con = sqlite_vfs.connect(vfs, "vol", "app.db")
    with con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "old" * 30) for i in range(400)])
    with con:  # a small transaction: the persistent journal file now has a small size
        con.execute("UPDATE t SET val = 'old' || hex(zeroblob(44)) WHERE id < 40")
    committed = _rows(con)
    con.close()
    vfs.forget("vol")
    vol = FileVolume(base_path, size)
    base = vol.read(0, size)

    rec = _Recorder(vol)
    vfs_rec = _vfs(lambda name: rec)
    con = sqlite_vfs.connect(vfs_rec, "vol", "app.db", create=False)
    with con:  # one transaction touching most pages, with a larger journal than the last one
        con.execute("UPDATE t SET val = 'new' || id || replace(hex(zeroblob(40)), '0', 'x')")
        con.execute("DELETE FROM t WHERE id % 5 = 0")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(1000 + i, "fresh") for i in range(100)])
    after = _rows(con)
    con.close()
    vfs_rec.forget("vol")
    assert committed != after

    # the region of the database file itself (slot 0) on the volume
    from dr_kit.sqlite.volfs import VolumeFS
    db = VolumeFS(FileVolume(base_path, size), "vol").entries[0]
    db_lo, db_hi = db.start, db.start + db.capacity

    units = rec.requests if cut_at == "request" else [[e] for req in rec.requests for e in req]
    assert len(units) >= 2
    outcomes: dict[int, str] = {}
    problems: list[str] = []
    rolled_back = 0
    for n in range(len(units) + 1):
        img = tmp_path / f"img-{n}.vol"
        img.write_bytes(base)
        dev = FileVolume(img, size)
        touched_db = False
        for unit in units[:n]:
            for off, data in unit:
                dev.write(off, data)
                touched_db |= off < db_hi and off + len(data) > db_lo
        v = _vfs(lambda name, d=dev: d)
        try:
            c = sqlite_vfs.connect(v, "vol", "app.db", create=False)
            try:
                integrity = _integrity(c)
                rows = _rows(c)
            finally:
                c.close()
        except (apsw.Error, InvalidInput) as e:
            integrity, rows = f"{type(e).__name__}: {e}", None
        finally:
            v.forget("vol")
            img.unlink()
        state = "old" if rows == committed else "new" if rows == after else "mixed"
        outcomes[n] = state
        if integrity != "ok" or state == "mixed":
            problems.append(f"after {n} of {len(units)} {cut_at}s: integrity {integrity!r}, state {state}")
        if state == "old" and touched_db:
            rolled_back += 1  # database pages were overwritten; the hot journal undid them
    trace = [[(off, len(d)) for off, d in unit] for unit in units]
    assert not problems, f"images SQLite cannot recover: {problems}; {cut_at}s (offset, length): {trace}"
    assert outcomes[0] == "old" and outcomes[len(units)] == "new"
    assert rolled_back >= 1, f"no image exercised a rollback: {outcomes}"


def test_snapshot_clone_taken_mid_transaction_recovers(tmp_path):
    """The array's own path: a snapshot taken between two requests of a committing
    transaction, restored to a writable clone, opens at the state before or after it."""
    a = Array(tmp_path / "arr", "main")
    try:
        a.create_volume("db-vol", 4 * MiB)
        plan = {"count": 0, "snap_at": None, "name": None}

        class Tap(_ArrayDev):
            """Takes the snapshot right after the chosen request reached the array."""

            def _after(self):
                plan["count"] += 1
                if plan["count"] == plan["snap_at"]:
                    a.create_snapshot(plan["name"], volumes=["db-vol"])

            def write(self, offset, data):
                super().write(offset, data)
                self._after()

            def writev(self, extents):
                super().writev(extents)
                self._after()

        vfs = _vfs(lambda name: Tap(a, name))
        con = sqlite_vfs.connect(vfs, "db-vol", "app.db")
        with con:
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
            con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "a" * 200) for i in range(300)])

        def transaction(k: int) -> None:
            with con:
                con.execute("UPDATE t SET val = ? || id || hex(zeroblob(?))", (f"v{k}-", 20 + k % 3 * 40))

        start = plan["count"]
        transaction(0)
        per_tx = plan["count"] - start
        assert per_tx >= 2
        checked = []
        for k in range(1, per_tx):
            before = _rows(con)
            plan["snap_at"], plan["name"] = plan["count"] + k, f"mid-{k}"
            transaction(k)
            after = _rows(con)
            assert plan["name"] in a.snapshots, "the transaction wrote fewer times than expected"
            a.create_clone(f"img-{k}", plan["name"], "db-vol")
            cv = _vfs(lambda name: _ArrayDev(a, name))
            try:
                c = sqlite_vfs.connect(cv, f"img-{k}", "app.db", create=False)
                try:
                    integrity, rows = _integrity(c), _rows(c)
                finally:
                    c.close()
            except (apsw.Error, InvalidInput) as e:
                integrity, rows = f"{type(e).__name__}: {e}", None
            finally:
                cv.forget(f"img-{k}")
            assert integrity == "ok", f"clone after {k} of {per_tx} writes: {integrity}"
            assert rows in (before, after), f"clone after {k} of {per_tx} writes mixes two commits"
            checked.append("before" if rows == before else "after")
        con.close()
        vfs.forget("db-vol")
        assert "before" in checked, checked
        # the live volume holds the newest commit, untouched by the clones' recovery
        cv = _vfs(lambda name: _ArrayDev(a, name))
        c = sqlite_vfs.connect(cv, "db-vol", "app.db", create=False)
        try:
            assert _rows(c)[0] == (0, f"v{per_tx - 1}-0" + "00" * (20 + (per_tx - 1) % 3 * 40))
        finally:
            c.close()
            cv.forget("db-vol")
    finally:
        a.close()


def test_shop_images_on_volumes_judge_consistent(tmp_path):
    a = Array(tmp_path / "arr", "main")
    try:
        for v in ("stock-db", "sales-db"):
            a.create_volume(v, 16 * MiB)
        vfs = _vfs(lambda name: _ArrayDev(a, name))
        stock, sales = open_shop(vfs)
        assert seed(stock, sales) > 0
        shop = Shop(stock, sales, seed_value=3)
        shop.run(0, count=30)
        assert shop.stats.committed == 30 and shop.stats.failed == 0
        v = judge_images(stock, sales)
        assert v.consistent and v.orders == 30 and v.integrity == {"stock": "ok", "sales": "ok"}
        stock.close()
        sales.close()
    finally:
        a.close()


def test_bad_database_names_raise_invalid_input(tmp_path):
    a = Array(tmp_path / "arr", "main")
    try:
        a.create_volume("db-vol", 4 * MiB)
        a.create_volume("raw-vol", 4 * MiB)
        a.write("raw-vol", 0, b"some file system that is not ours")
        vfs = _vfs(lambda name: _ArrayDev(a, name))
        bad = [
            ("", "app.db", "must be <volume>/<file>"),
            ("db-vol", "", "must be <volume>/<file>"),
            ("db-vol", "dir/app.db", "must be <volume>/<file>"),
            ("db-vol", "a-very-long-database-file-name.db", "too long"),
            ("no-such-vol", "app.db", "no-such-vol"),
            ("raw-vol", "app.db", "not a dr_kit database volume"),
        ]
        for volume, file, words in bad:
            with pytest.raises(InvalidInput, match="cannot open database") as exc:
                sqlite_vfs.connect(vfs, volume, file)
            assert words in str(exc.value), (volume, file, str(exc.value))
        with pytest.raises(InvalidInput, match="holds no database"):
            sqlite_vfs.connect(vfs, "db-vol", "app.db", create=False)
        assert a.read("db-vol", 0, 4096) == bytes(4096)  # the refusals wrote nothing
        con = sqlite_vfs.connect(vfs, "db-vol", "app.db")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
        con.close()
        with pytest.raises(InvalidInput, match="is not one of them"):
            sqlite_vfs.connect(vfs, "db-vol", "other.db")
        with pytest.raises(InvalidInput):
            sqlite_vfs.ArrayVFS._split("no-slash")
        with pytest.raises(apsw.CantOpenError):
            apsw.Connection("db-vol/other.db", flags=apsw.SQLITE_OPEN_READWRITE, vfs=vfs.vfs_name)
        vfs.forget("db-vol")
    finally:
        a.close()


def test_database_too_big_for_its_region_fails_cleanly(tmp_path):
    vol = FileVolume(tmp_path / "small.vol", MiB, create=True)
    vfs = _vfs(lambda name: vol)
    con = sqlite_vfs.connect(vfs, "small", "app.db")
    con.execute("CREATE TABLE t (v BLOB)")
    with pytest.raises(apsw.Error), con:
        for _ in range(100):
            con.execute("INSERT INTO t VALUES (zeroblob(20000))")
    assert _integrity(con) == "ok"
    assert next(con.execute("SELECT COUNT(*) FROM t"))[0] == 0  # the failed transaction rolled back
    con.close()
    vfs.forget("small")


class _Failing:
    """A volume whose reads or writes fail like an array that went away."""

    def __init__(self, dev) -> None:
        self.dev, self.size = dev, dev.size
        self.fail_reads = self.fail_writes = False

    def read(self, offset: int, length: int) -> bytes:
        from dr_kit.errors import Unavailable

        if self.fail_reads:
            raise Unavailable("array data path failed for volume v")
        return self.dev.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        from dr_kit.errors import Unavailable

        if self.fail_writes:
            raise Unavailable("array data path failed for volume v")
        self.dev.write(offset, data)


def test_array_errors_reach_sqlite_as_io_errors_and_nothing_is_lost(tmp_path):
    dev = _Failing(FileVolume(tmp_path / "v.vol", 4 * MiB, create=True))
    vfs = _vfs(lambda name: dev)
    con = sqlite_vfs.connect(vfs, "v", "app.db")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
    con.execute("INSERT INTO t VALUES (1, 'one')")
    con.close()
    vfs.forget("v")
    con = sqlite_vfs.connect(vfs, "v", "app.db")
    dev.fail_reads = True  # the first read of a new connection goes to the device
    with pytest.raises(apsw.IOError, match="data path failed"):
        _rows(con)
    dev.fail_reads = False
    assert _rows(con) == [(1, "one")]
    dev.fail_writes = True  # the commit's sync cannot reach the array
    with pytest.raises(apsw.IOError, match="data path failed"):
        con.execute("INSERT INTO t VALUES (2, 'two')")
    dev.fail_writes = False
    con.execute("INSERT INTO t VALUES (3, 'three')")
    assert _integrity(con) == "ok"
    con.close()
    vfs.forget("v")
    con = sqlite_vfs.connect(vfs, "v", "app.db")  # what is on the volume
    rows = _rows(con)
    assert (1, "one") in rows and (3, "three") in rows and _integrity(con) == "ok"
    con.close()
    vfs.forget("v")


# -- WAL mode (the shop's databases) ---------------------------------------------------------


def test_wal_commit_is_one_request_and_images_recover_to_a_commit(tmp_path):
    """In WAL mode a commit reaches the array as one request (its frames); an image that
    holds any prefix of it, down to a frame cut short, recovers to the last commit or the
    new one (SQLite's WAL recovery checks every frame's checksum), for an owner and for a
    reader alike."""
    size = 4 * MiB
    vol = FileVolume(tmp_path / "base.vol", size, create=True)
    rec = _Recorder(vol)
    vfs = _vfs(lambda name: rec)
    con = sqlite_vfs.connect(vfs, "vol", "app.db", wal=True)
    assert next(con.execute("PRAGMA journal_mode"))[0] == "wal"
    with con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "old" * 30) for i in range(400)])
    committed = _rows(con)
    image_before = vol.read(0, size)  # what a copy taken now holds (the commit was sent)
    rec.requests.clear()
    with con:
        con.execute("UPDATE t SET val = 'new' || id WHERE id % 3 = 0")
        con.execute("DELETE FROM t WHERE id % 5 = 0")
    after = _rows(con)
    assert committed != after
    assert len(rec.requests) == 1, [[(o, len(d)) for o, d in r] for r in rec.requests]
    (req,) = rec.requests
    con.close()
    vfs.forget("vol")
    total = sum(len(d) for _, d in req)
    frame = 4096 + 24
    cuts = sorted({0, frame // 2, *range(frame, total, frame), total - 1, total})
    outcomes = []
    for cut in cuts:
        img = bytearray(image_before)
        pos = 0
        for off, data in req:  # the first ``cut`` bytes of the request reached the volume
            n = max(0, min(len(data), cut - pos))
            img[off:off + n] = data[:n]
            pos += len(data)
        path = tmp_path / f"img-{cut}.vol"
        for how in ("owner", "reader"):
            path.write_bytes(bytes(img))
            dev = FileVolume(path, size)
            v = _vfs(lambda name, d=dev: d)
            try:
                if how == "owner":
                    c = sqlite_vfs.connect(v, "vol", "app.db", create=False, wal=True)
                else:  # an analyst's connection: plain apsw through the VFS, read-write file
                    c = apsw.Connection("vol/app.db", flags=apsw.SQLITE_OPEN_READWRITE, vfs=v.vfs_name)
                try:
                    integrity, rows = _integrity(c), _rows(c)
                finally:
                    c.close()
            finally:
                v.forget("vol")
                dev.close()
            state = "old" if rows == committed else "new" if rows == after else "mixed"
            assert integrity == "ok" and state != "mixed", (cut, how, integrity, state)
            outcomes.append((cut, how, state))
        path.unlink()
    # the frames go first; a commit is new once its last frame is whole
    from dr_kit.sqlite.volfs import VolumeFS

    wal_start = VolumeFS(FileVolume(tmp_path / "base.vol", size), "vol").entries[2].start
    frames = sum(len(d) for off, d in req if off >= wal_start)
    assert frames >= 2 * frame
    assert {s for c, _, s in outcomes if c == total} == {"new"}, outcomes
    assert {s for c, _, s in outcomes if c < frames} == {"old"}, outcomes


def test_wal_clone_of_a_snapshot_opens_for_a_reader_pool(tmp_path):
    """A snapshot of a live WAL database (frames not checkpointed, the owner still open),
    restored to a writable clone, is recovered once and then read by several connections
    at the same time; the live database is untouched."""
    a = Array(tmp_path / "arr", "main")
    try:
        a.create_volume("db-vol", 8 * MiB)
        vfs = _vfs(lambda name: _ArrayDev(a, name))
        con = sqlite_vfs.connect(vfs, "db-vol", "app.db", wal=True)
        with con:
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
        for k in range(20):
            with con:
                con.execute("INSERT INTO t VALUES (?, ?)", (k, f"row-{k}"))
        expect = _rows(con)
        wal = vfs._fs["db-vol"].entries[2]
        assert wal.flags & 1 and wal.size > 0  # the commits are frames in the WAL
        a.create_snapshot("s1", volumes=["db-vol"])
        a.create_clone("img", "s1", "db-vol")
        readers = _vfs(lambda name: _ArrayDev(a, name))
        pool = [apsw.Connection("img/app.db", flags=apsw.SQLITE_OPEN_READWRITE, vfs=readers.vfs_name)
                for _ in range(3)]
        cursors = [c.execute("SELECT id, val FROM t ORDER BY id") for c in pool]
        assert [list(cur) for cur in cursors] == [expect] * 3  # three open read transactions
        assert _integrity(pool[0]) == "ok"
        for c in pool:
            c.close()
        readers.forget("img")
        with con:  # the owner goes on writing to the live database
            con.execute("INSERT INTO t VALUES (100, 'later')")
        assert _rows(con)[-1] == (100, "later")
        con.close()
        vfs.forget("db-vol")
    finally:
        a.close()


def test_wal_image_on_a_read_only_device_is_one_clear_error(tmp_path):
    vol = FileVolume(tmp_path / "v.vol", 4 * MiB, create=True)
    vfs = _vfs(lambda name: vol)
    con = sqlite_vfs.connect(vfs, "vol", "app.db", wal=True)
    with con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
        con.execute("INSERT INTO t VALUES (1, 'one')")
    image = vol.read(0, vol.size)
    con.close()
    vfs.forget("vol")
    path = tmp_path / "ro.vol"
    path.write_bytes(image)

    class ReadOnly:
        def __init__(self) -> None:
            self.dev = FileVolume(path, 4 * MiB)
            self.size = self.dev.size

        def read(self, offset: int, length: int) -> bytes:
            return self.dev.read(offset, length)

        def write(self, offset: int, data: bytes) -> None:
            from dr_kit.errors import Conflict

            raise Conflict("volume vol is a secondary and is read-only")

    v = _vfs(lambda name: ReadOnly())
    with pytest.raises(apsw.CantOpenError, match="WAL mode .* writable clone"):
        apsw.Connection("vol/app.db", flags=apsw.SQLITE_OPEN_READWRITE, vfs=v.vfs_name)
    v.forget("vol")
    assert path.read_bytes() == image  # nothing was written


def test_shop_runs_in_wal_mode_with_two_journal_entries_per_transaction(tmp_path):
    a = Array(tmp_path / "arr", "main")
    try:
        for v in ("stock-db", "sales-db"):
            a.create_volume(v, 16 * MiB)
        grp = a.create_primary_group("shop", ["stock-db", "sales-db"], "127.0.0.1:9", secret="s" * 64)
        vfs = _vfs(lambda name: _ArrayDev(a, name))
        stock, sales = open_shop(vfs)
        seed(stock, sales)
        assert [next(c.execute("PRAGMA journal_mode"))[0] for c in (stock, sales)] == ["wal", "wal"]
        shop = Shop(stock, sales, seed_value=3)
        shop.run(0, count=5)
        before = grp.journal.last_seq
        shop.run(0, count=50)
        per_tx = (grp.journal.last_seq - before) / 50
        assert 2 <= per_tx < 2.5, per_tx  # one per database, and a checkpoint now and then
        v = judge_images(stock, sales)
        assert v.consistent and v.orders == 55
        stock.close()
        sales.close()
    finally:
        a.close()


def test_snapshot_group_of_the_live_wal_shop_opens_consistent(tmp_path):
    """The shop's two WAL databases, snapshotted together while their owners are open and
    their latest commits are frames in the WALs only: clones of both volumes open (the WAL
    recovery runs on the clones, as judge_snapshot opens them and as an analyst's plain
    connection does), read every committed order and judge consistent; the live shop goes on."""
    a = Array(tmp_path / "arr", "main")
    try:
        for v in ("stock-db", "sales-db"):
            a.create_volume(v, 16 * MiB)
        vfs = _vfs(lambda name: _ArrayDev(a, name))
        stock, sales = open_shop(vfs)
        seed(stock, sales)
        shop = Shop(stock, sales, seed_value=5)
        shop.run(0, count=40)
        for v in ("stock-db", "sales-db"):
            wal = vfs._fs[v].entries[2]
            assert wal.flags & 1 and wal.size > 0, v  # commits not checkpointed
        a.create_snapshot("grp", volumes=["stock-db", "sales-db"])
        live = judge_images(stock, sales)
        assert live.consistent and live.orders == 40
        for how in ("owner", "reader"):
            for v in ("stock-db", "sales-db"):
                a.create_clone(f"{how}-{v}", "grp", v)
            cv = _vfs(lambda name: _ArrayDev(a, name))
            try:
                if how == "owner":  # as judge_snapshot opens them
                    cs = sqlite_vfs.connect(cv, f"{how}-stock-db", "stock.db", create=False)
                    cl = sqlite_vfs.connect(cv, f"{how}-sales-db", "sales.db", create=False)
                else:
                    cs, cl = (apsw.Connection(f"{how}-{v}/{f}", flags=apsw.SQLITE_OPEN_READWRITE,
                                              vfs=cv.vfs_name)
                              for v, f in (("stock-db", "stock.db"), ("sales-db", "sales.db")))
                try:
                    verdict = judge_images(cs, cl)
                    modes = [next(c.execute("PRAGMA journal_mode"))[0] for c in (cs, cl)]
                finally:
                    cs.close()
                    cl.close()
            finally:
                for v in ("stock-db", "sales-db"):
                    cv.forget(f"{how}-{v}")
            assert verdict.consistent and verdict.orders == 40, (how, verdict)
            assert verdict.integrity == {"stock": "ok", "sales": "ok"}, (how, verdict)
            assert "wal" not in modes, (how, modes)  # recovered out of WAL mode first
        shop.run(0, count=5)  # the owners were not disturbed by the clones' recovery
        after = judge_images(stock, sales)
        assert after.consistent and after.orders == 45
        stock.close()
        sales.close()
    finally:
        a.close()
