"""PostgreSQL beside the kit in one ``dr-kit bench`` run: the anchor for its ratios.

Three throwaway PostgreSQL servers in one temporary folder, bound to 127.0.0.1 on free
ports (run as the ``postgres`` user when the bench runs as root, since initdb refuses root):

- ``off``: a primary with no standby attached, so no WAL sender;
- ``async``: a primary with exactly the same settings, and
- ``standby``: an asynchronous streaming standby of it (``pg_basebackup -R``, hot standby),
  which connects to its primary through a link emulator, as the kit's backup array does.

Both primaries hold the shop's two databases, ``stock`` and ``sales``, with the shop's
tables, and :class:`PgShop` runs the shop's business transaction on them: the statements
of :meth:`dr_kit.shop.workload.Shop.transact` (same random choices for the same seed), the
stock movement committed first, then the sale, each in its own transaction.

Durability, the same for both primaries: ``synchronous_commit=on`` (a commit returns once
its WAL is written) with ``fsync=off`` (that WAL is in the kernel's page cache, not flushed
to the disk).  That is what the bench's arrays do: they run without ``--fsync``, so a
journal write is acknowledged once it is in the page cache.  Both survive the crash of a
server process, neither a power loss, and neither waits for this machine's disk, whose
flush (0.3-4 ms here, noisy) would otherwise dominate both sides of the ratio.
``full_page_writes=on`` and ``wal_level=replica`` on both primaries, so off and async write
the same WAL; the only difference is the WAL sender and the standby.

Lag is measured as the kit's ``time_lag`` is defined: the age of the oldest main-site
write not yet applied at the backup.  A writer commits one 4 KiB row per transaction at
the target rate, noting the time just before each commit; a sampler asks the standby for
the newest row it can see every 10 ms; the age of the oldest row it cannot see yet is
the lag (0 when it sees all).  ``pg_stat_replication.replay_lag`` on the primary is
sampled beside it for reference.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dr_kit.errors import DrKitError, InvalidInput, Unavailable
from dr_kit.shop.schema import CHANNELS, SALES_DDL, STOCK_DDL, Product, load_catalog
from dr_kit.shop.workload import CUSTOMERS, ShopStats, _iso

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
INSTALL_HINT = "install Debian's postgresql package (as root: apt-get install -y postgresql)"

# identical for every server of the anchor; see the module docstring
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "wal_keep_size": "'256MB'",
    "hot_standby": "on",
    "shared_buffers": "'64MB'",
    "max_connections": "20",
    "wal_receiver_status_interval": "'1s'",
}


class AnchorUnavailable(Unavailable):
    """The PostgreSQL anchor cannot run here (no server binaries, no psycopg, no start)."""


def find_bindir() -> Path | None:
    """PostgreSQL's server binaries, looked for as ``scripts/postgres.sh`` does."""
    def ok(d: Path) -> bool:
        return all(os.access(d / b, os.X_OK) for b in SERVER_BINARIES)

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            d = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                    timeout=10).stdout.strip())
            if ok(d):
                return d
        except (OSError, subprocess.SubprocessError):
            pass

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True):
        if ok(d):
            return d
    initdb = shutil.which("initdb")
    if initdb and ok(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    return None


def why_unavailable() -> str | None:
    """None when the anchor can run; otherwise one line saying why not and what to do."""
    if find_bindir() is None:
        return f"no PostgreSQL server binaries found ({', '.join(SERVER_BINARIES)}); {INSTALL_HINT}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed; pip install 'dr_kit[postgres]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run the server"
    return None


def folder_prefix() -> str:
    """The anchor's temporary folders start with this (one process's, see ``remove_leftovers``)."""
    return f"dr-kit-bench-pg-{os.getpid()}-"


def remove_leftovers() -> None:
    """Remove this process's anchor folders (after an interrupt in the middle of ``create``)."""
    for d in Path(tempfile.gettempdir()).glob(folder_prefix() + "*"):
        shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _RunAs:
    """Runs the server's commands as ``postgres`` when we are root (initdb refuses root)."""

    def __init__(self) -> None:
        self.pw = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def own(self, path: Path) -> None:
        if self.pw:
            os.chown(path, self.pw.pw_uid, self.pw.pw_gid)

    def run(self, cmd: list[str], *, timeout: float, what: str, log: Path | None = None) -> None:
        kw: dict[str, Any] = {}
        if self.pw:
            kw = {"user": self.pw.pw_uid, "group": self.pw.pw_gid, "extra_groups": [],
                  "env": {**os.environ, "HOME": self.pw.pw_dir, "USER": "postgres"}}
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise AnchorUnavailable(f"PostgreSQL {what} timed out after {timeout:.0f} s") from None
        if p.returncode != 0:
            tail = " ".join((p.stderr or p.stdout).strip().splitlines()[-2:])
            if log and log.exists():
                tail = tail or " ".join(log.read_text(errors="replace").strip().splitlines()[-2:])
            raise AnchorUnavailable(f"PostgreSQL {what} failed: {tail[:300]}")


class PgServer:
    """One PostgreSQL server (data folder, port) driven with pg_ctl."""

    def __init__(self, name: str, bindir: Path, root: Path, runas: _RunAs) -> None:
        self.name, self.bindir, self.runas = name, bindir, runas
        self.data = root / name
        self.log = root / f"{name}.log"
        self.sockdir = root
        self.port = 0
        self.started = False

    def initdb(self) -> None:
        self.runas.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
                       timeout=120, what=f"initdb of {self.name}")
        self.configure()

    def configure(self) -> None:
        conf = self.data / "postgresql.conf"
        lines = [f"{k} = {v}" for k, v in SETTINGS.items()]
        lines.append(f"unix_socket_directories = '{self.sockdir}'")
        with conf.open("a") as f:
            f.write("\n# dr-kit bench anchor\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        for attempt in range(3):  # a free port can be taken between the probe and the start
            self.port = free_port()
            try:
                self.runas.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                "-w", "-t", "120", "-o", f"-p {self.port}", "start"],
                               timeout=150, what=f"start of {self.name}", log=self.log)
                self.started = True
                return
            except AnchorUnavailable:
                if attempt == 2:
                    raise

    def stop(self, modes: tuple[str, ...] = ("fast", "immediate")) -> None:
        """Fast shutdown; immediate if that hangs; SIGKILL of the postmaster as a last resort."""
        if not (self.data / "postmaster.pid").exists():
            return
        for mode in modes:
            try:
                self.runas.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                                "-t", "30", "stop"], timeout=40, what=f"stop of {self.name}")
                return
            except AnchorUnavailable:
                continue
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres"

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True):
        import psycopg
        return psycopg.connect(f"{self.conninfo} dbname={dbname}", autocommit=autocommit,
                               connect_timeout=20)


def _pg_ddl(ddl: str) -> str:
    """The shop's portable DDL for PostgreSQL: SQLite's rowid alias becomes an identity."""
    if "movement_id INTEGER PRIMARY KEY" in ddl:
        return ddl.replace("movement_id INTEGER PRIMARY KEY",
                           "movement_id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    return ddl


def seed(server: PgServer, catalog: list[Product]) -> None:
    """Create the ``stock`` and ``sales`` databases with the shop's tables and catalog."""
    with server.connect() as c:
        for db in ("stock", "sales"):
            c.execute(f"CREATE DATABASE {db}")
    with server.connect("stock", autocommit=False) as stock:
        for ddl in STOCK_DDL:
            stock.execute(_pg_ddl(ddl))
        with stock.cursor() as cur:
            cur.executemany("INSERT INTO products VALUES (%s,%s,%s,%s)",
                            [(p.product_id, p.name, p.category, p.unit_price_cents) for p in catalog])
            cur.executemany("INSERT INTO stock_levels VALUES (%s,%s,%s)",
                            [(p.product_id, p.initial_units, p.initial_units) for p in catalog])
        stock.execute("CREATE TABLE lag_probe (id INTEGER PRIMARY KEY, payload BYTEA NOT NULL)")
        stock.commit()
    with server.connect("sales", autocommit=False) as sales:
        for ddl in SALES_DDL:
            sales.execute(ddl)
        with sales.cursor() as cur:
            cur.executemany("INSERT INTO products VALUES (%s,%s,%s,%s)",
                            [(p.product_id, p.name, p.category, p.unit_price_cents) for p in catalog])
        sales.commit()


class PgShop:
    """The shop's business transaction on PostgreSQL, statement for statement.

    Mirrors :meth:`dr_kit.shop.workload.Shop.transact` (and the latency bookkeeping of
    ``Shop.run``): keep the two in step when the shop's transaction changes.
    """

    def __init__(self, server: PgServer, *, seed_value: int | None = None) -> None:
        self.stock = server.connect("stock")
        self.sales = server.connect("sales")
        self.rng = random.Random(seed_value)
        self.products = [r[0] for r in self.stock.execute(
            "SELECT product_id FROM products ORDER BY product_id").fetchall()]
        if not self.products:
            raise InvalidInput("the stock database has no products; seed it first")
        self.prices = dict(self.stock.execute("SELECT product_id, unit_price_cents FROM products").fetchall())
        last_sale = self.sales.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders").fetchone()[0]
        last_move = self.stock.execute("SELECT COALESCE(MAX(order_id), 0) FROM stock_movements").fetchone()[0]
        self.next_order = max(last_sale, last_move) + 1
        self.stats = ShopStats()

    def transact(self) -> int:
        order = self.next_order
        self.next_order += 1
        now = time.time()
        lines = [(self.rng.choice(self.products), self.rng.randint(1, 4))
                 for _ in range(self.rng.randint(1, 3))]
        stock, sales = self.stock, self.sales
        with stock.transaction():  # 1. the stock movement
            for pid, qty in lines:
                on_hand = stock.execute("SELECT on_hand FROM stock_levels WHERE product_id=%s", (pid,)).fetchone()[0]
                if on_hand < qty:  # restock: an inbound movement keeps the balance rule
                    stock.execute("INSERT INTO stock_movements(order_id, product_id, quantity, moved_at) "
                                  "VALUES (NULL, %s, %s, %s)", (pid, -500, _iso(now)))
                    stock.execute("UPDATE stock_levels SET on_hand = on_hand + 500 WHERE product_id=%s", (pid,))
                stock.execute("INSERT INTO stock_movements(order_id, product_id, quantity, moved_at) "
                              "VALUES (%s, %s, %s, %s)", (order, pid, qty, _iso(now)))
                stock.execute("UPDATE stock_levels SET on_hand = on_hand - %s WHERE product_id=%s", (qty, pid))
        with sales.transaction(), sales.cursor() as cur:  # 2. the sale
            cur.execute("INSERT INTO orders VALUES (%s,%s,%s,%s)",
                        (order, _iso(now), f"C{self.rng.randint(1, CUSTOMERS):05d}", self.rng.choice(CHANNELS)))
            cur.executemany("INSERT INTO order_lines VALUES (%s,%s,%s,%s,%s)",
                            [(order, i + 1, pid, qty, self.prices[pid]) for i, (pid, qty) in enumerate(lines)])
        return order

    def run(self, rate: float = 0, *, count: int) -> ShopStats:
        """``count`` transactions back to back (``rate`` 0, as the bench runs the shop)."""
        if rate != 0:
            raise InvalidInput("the PostgreSQL shop runs back to back only (rate 0)")
        for _ in range(count):
            t0 = time.perf_counter()
            self.transact()
            self.stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
            self.stats.committed += 1
        return self.stats

    def close(self) -> None:
        self.stock.close()
        self.sales.close()


class PostgresAnchor:
    """The three servers, the two shops and the measurements on them."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root, self.bindir = root, bindir
        self.runas = _RunAs()
        self.off = PgServer("off", bindir, root, self.runas)
        self.primary = PgServer("async", bindir, root, self.runas)
        self.standby = PgServer("standby", bindir, root, self.runas)
        self.shops: dict[str, PgShop] = {}
        self.version = ""

    @classmethod
    def create(cls) -> PostgresAnchor:
        """An anchor with its temporary folder and no server yet (``launch`` starts them);
        :meth:`close` or :meth:`kill` removes whatever it started."""
        reason = why_unavailable()
        if reason:
            raise AnchorUnavailable(reason)
        bindir = find_bindir()
        assert bindir is not None
        self = cls(Path(tempfile.mkdtemp(prefix=folder_prefix())), bindir)
        self.runas.own(self.root)
        return self

    @classmethod
    def start(cls, via_link: Callable[[str], str], *, progress: Callable[[str], None] | None = None,
              catalog: list[Product] | None = None) -> PostgresAnchor:
        """``create`` and ``launch`` in one call (closing the anchor if the launch fails)."""
        self = cls.create()
        try:
            self.launch(via_link, progress=progress, catalog=catalog)
        except BaseException:
            self.close()
            raise
        return self

    def launch(self, via_link: Callable[[str], str], *, progress: Callable[[str], None] | None = None,
               catalog: list[Product] | None = None) -> None:
        """Start off, async and its standby; ``via_link(target)`` returns the address through
        which the standby reaches its primary (a link emulator, or the target itself)."""
        say = progress or (lambda s: None)
        catalog = catalog or load_catalog()
        say(f"PostgreSQL anchor ({self.bindir}): primary without standby, primary with an "
            "asynchronous streaming standby")
        for srv in (self.off, self.primary):
            srv.initdb()
            srv.start()
            seed(srv, catalog)
        host, port = via_link(f"127.0.0.1:{self.primary.port}").rsplit(":", 1)
        self.runas.run([str(self.bindir / "pg_basebackup"), "-D", str(self.standby.data), "-h", host,
                        "-p", port, "-U", "postgres", "-X", "stream", "-R", "--no-sync",
                        "-c", "fast"], timeout=300, what="pg_basebackup of the standby")
        self.standby.start()
        self._wait_streaming()
        with self.off.connect() as c:
            self.version = c.execute("SHOW server_version").fetchone()[0]
            if c.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]:
                raise AnchorUnavailable("the primary without standby has a WAL sender")
        self.shops = {"off": PgShop(self.off, seed_value=7), "async": PgShop(self.primary, seed_value=7)}

    def _wait_streaming(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.primary.connect() as c:
            while True:
                rows = c.execute("SELECT state FROM pg_stat_replication").fetchall()
                if rows and rows[0][0] == "streaming":
                    return
                if time.monotonic() > deadline:
                    raise AnchorUnavailable(f"the standby is not streaming after {timeout:.0f} s "
                                            f"(pg_stat_replication: {rows}); see {self.standby.log}")
                time.sleep(0.05)

    def wal_senders(self) -> dict[str, int]:
        out = {}
        for name, srv in (("off", self.off), ("async", self.primary)):
            with srv.connect() as c:
                out[name] = int(c.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0])
        return out

    # -- lag --------------------------------------------------------------------------
    def lag(self, rate: float, seconds: float) -> dict[str, Any]:
        """Commit one 4 KiB row per transaction at ``rate``/s for ``seconds``; sample the
        age of the oldest row the standby cannot see yet every 10 ms (see module doc)."""
        data = os.urandom(4096)
        w = self.primary.connect("stock")
        base = int(w.execute("SELECT COALESCE(MAX(id), 0) FROM lag_probe").fetchone()[0])
        issued: list[float] = []  # issued[k]: time just before committing row base + k + 1
        samples: list[float] = []
        view: list[float] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def sampler() -> None:
            try:
                with self.standby.connect("stock") as s, self.primary.connect() as p:
                    last_view = 0.0
                    while not stop.is_set():
                        seen = int(s.execute("SELECT COALESCE(MAX(id), 0) FROM lag_probe").fetchone()[0]) - base
                        t = time.time()
                        n = len(issued)
                        samples.append(max(0.0, t - issued[seen]) * 1000 if n > seen >= 0 else 0.0)
                        if t - last_view >= 0.1:
                            r = p.execute("SELECT EXTRACT(EPOCH FROM replay_lag) FROM pg_stat_replication").fetchone()
                            if r and r[0] is not None:
                                view.append(float(r[0]) * 1000)
                            last_view = t
                        stop.wait(0.01)
            except BaseException as e:  # reported by the caller
                errors.append(e)

        th = threading.Thread(target=sampler, daemon=True, name="pg-lag-sampler")
        th.start()
        try:
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < seconds:
                n += 1
                issued.append(time.time())
                w.execute("INSERT INTO lag_probe VALUES (%s, %s)", (base + n, data))  # autocommit
                delay = t0 + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            achieved = n / (time.monotonic() - t0)
        finally:
            stop.set()
            th.join(30)
            w.close()
        if errors:
            raise AnchorUnavailable(f"PostgreSQL lag sampler failed: {errors[0]}")
        return {"writes_per_s": achieved, "samples_ms": samples, "replay_lag_view_ms": view}

    # -- verification -----------------------------------------------------------------
    def catch_up(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the standby replayed everything the primary wrote; compare row counts."""
        with self.primary.connect() as p:
            target = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        deadline = time.monotonic() + timeout
        with self.standby.connect() as s:
            while not s.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0",
                                (target,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise AnchorUnavailable(f"the standby did not replay up to {target} in {timeout:.0f} s")
                time.sleep(0.02)
        tables = {"stock": ("stock_movements", "lag_probe"), "sales": ("orders", "order_lines")}
        counts: dict[str, dict[str, int]] = {"primary": {}, "standby": {}}
        for side, srv in (("primary", self.primary), ("standby", self.standby)):
            for db, names in tables.items():
                with srv.connect(db) as c:
                    for t in names:
                        counts[side][t] = int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                    if db == "stock":
                        counts[side]["sum_on_hand"] = int(c.execute(
                            "SELECT COALESCE(SUM(on_hand), 0) FROM stock_levels").fetchone()[0])
        return {"replayed_to": target, "rows": counts, "standby_rows_match": counts["primary"] == counts["standby"]}

    def kill(self) -> None:
        """On an interrupt: immediate shutdown of every server, no connection touched."""
        for srv in (self.standby, self.primary, self.off):
            try:
                srv.stop(modes=("immediate",))
            except DrKitError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        for shop in self.shops.values():
            try:
                shop.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
        self.shops = {}
        for srv in (self.standby, self.primary, self.off):
            try:
                srv.stop()
            except DrKitError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
