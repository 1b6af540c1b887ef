"""Read-only queries are enforced by the database, not by reading the SQL text.

Every injection string below is run twice: through :func:`analytics.run_query` as an
analyst would (the text check may refuse it first, with a friendly message), and with the
text check switched off, so that only the database stands between the string and the
data.  After each one, nothing has changed: the rows, the tables, the sequence, the large
objects, the role's settings, the application's own session, and the pooled analyst
connection is still read-only.

PostgreSQL tests need ``DR_KIT_PG_URL`` (``scripts/postgres.sh`` prints it); without it
they are skipped with that reason.  The SQLite tests always run.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from dr_kit import analytics as an
from dr_kit.analytics import readonly
from dr_kit.errors import InvalidInput
from dr_kit.sqlite import dbapi

PG_URL = os.environ.get("DR_KIT_PG_URL")

# the scratch schemas hold only what the injections aim at, not a whole shop image
pytestmark = pytest.mark.filterwarnings("ignore::dr_kit.analytics.InconsistentCopyWarning")

# Statements an analyst could type into `dr-kit query`, each trying to change something.
PG_INJECTIONS = [
    # the string that deleted rows before: an E'' string hides the rest from a naive parser
    "SELECT E'\\''; COMMIT; DELETE FROM orders; --'",
    r"SELECT E'a\\\''; DELETE FROM orders; --'",
    "SELECT 1; DELETE FROM orders",
    "SELECT 1;DELETE FROM orders;",
    "COMMIT; DELETE FROM orders",
    "ROLLBACK; DELETE FROM orders",
    "SELECT 1; COMMIT; BEGIN READ WRITE; DELETE FROM orders",
    # dollar quoting, comments, semicolon tricks
    "SELECT $$;$$; DELETE FROM orders",
    "SELECT $x$ $$ ; $x$; DELETE FROM orders",
    "SELECT $a1$ ' $a1$; DELETE FROM orders; SELECT ' '",
    "SELECT 1 /* ; */; DELETE FROM orders",
    "SELECT 1 /* nested /* ; */ still */; DELETE FROM orders",
    "SELECT 1 -- ;\n; DELETE FROM orders",
    "SELECT ';' AS a; DELETE FROM orders",
    "SELECT \"a;b\".* FROM orders AS \"a;b\"; DELETE FROM orders",
    "SELECT U&'\\0027'; DELETE FROM orders",
    # transaction control, one statement at a time
    "COMMIT",
    "BEGIN",
    "ROLLBACK",
    "START TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "RESET ALL",
    "ALTER ROLE CURRENT_USER SET default_transaction_read_only = off",
    # writes dressed as reads
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE orders SET channel = 'x' RETURNING 1) SELECT count(*) FROM u",
    "WITH i AS (INSERT INTO orders VALUES (999, 't', 'c', 'web') RETURNING 1) SELECT * FROM i",
    "SELECT * INTO stolen FROM orders",
    "CREATE TABLE stolen AS SELECT * FROM orders",
    "CREATE TEMP TABLE stolen AS SELECT * FROM orders",
    "SELECT * FROM orders FOR UPDATE",
    "LOCK TABLE orders",
    "DELETE FROM orders",
    "TRUNCATE orders",
    "UPDATE orders SET channel = 'x'",
    "DROP TABLE order_lines",
    "DO $$BEGIN DELETE FROM orders; END$$",
    "PREPARE p AS DELETE FROM orders",
    "EXECUTE p",
    "COPY orders FROM STDIN",
    "COPY (SELECT 1) TO '/tmp/dr-kit-stolen.txt'",
    # functions with side effects
    "SELECT nextval('order_seq')",
    "SELECT setval('order_seq', 1000)",
    "SELECT set_config('transaction_read_only', 'off', false)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('search_path', 'pg_catalog', false)",
    "SELECT lo_import('/etc/hostname')",
    "SELECT lo_create(0)",
    "SELECT lo_from_bytea(0, 'x'::bytea)",
    "SELECT pg_reload_conf()",
]


# single SELECTs the database runs: what they change is undone by the rollback that ends
# every query (settings, large objects are transactional)
ROLLED_BACK = {
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('search_path', 'pg_catalog', false)",
    "SELECT lo_create(0)",
    "SELECT lo_from_bytea(0, 'x'::bytea)",
}


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[dict[str, Any]]:
    """A scratch schema with the sales tables and a sequence, owned by the test's role."""
    if not PG_URL:
        pytest.skip("DR_KIT_PG_URL is not set; start a server with scripts/postgres.sh "
                    "and export the URL it prints")
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schema = f"drkit_ro_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
        c.exec_driver_sql(f"SET search_path = {schema}")
        c.exec_driver_sql("CREATE TABLE orders (order_id INTEGER PRIMARY KEY, "
                          "ordered_at VARCHAR(32), customer VARCHAR(40), channel VARCHAR(20))")
        c.exec_driver_sql("CREATE TABLE order_lines (order_id INTEGER, line_no INTEGER, "
                          "product_id INTEGER, quantity INTEGER, unit_price_cents INTEGER, "
                          "PRIMARY KEY (order_id, line_no))")
        c.exec_driver_sql("INSERT INTO orders SELECT g, '2024-05-01T00:00:00', 'C' || g, "
                          "'web' FROM generate_series(1, 50) g")
        c.exec_driver_sql("INSERT INTO order_lines SELECT g, 1, mod(g, 7), 2, 1999 "
                          "FROM generate_series(1, 50) g")
        c.exec_driver_sql("CREATE SEQUENCE order_seq")
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    yield {"admin": admin, "schema": schema, "url": url}
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


def pg_fingerprint(admin: Engine, schema: str) -> dict[str, Any]:
    """Everything an injection could change, seen by a separate connection."""
    with admin.connect() as c:
        def one(sql: str, **p: Any) -> Any:
            return c.execute(text(sql), p).scalar()
        rows = c.execute(text(f"SELECT * FROM {schema}.orders ORDER BY order_id")).all()
        lines = c.execute(text(f"SELECT * FROM {schema}.order_lines ORDER BY 1, 2")).all()
        return {
            "orders": hashlib.sha256(repr(rows).encode()).hexdigest(),
            "lines": hashlib.sha256(repr(lines).encode()).hexdigest(),
            "tables": sorted(r[0] for r in c.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema})),
            "seq": one(f"SELECT last_value FROM {schema}.order_seq"),
            "large_objects": one("SELECT count(*) FROM pg_largeobject_metadata"),
            "role_settings": one("SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r "
                                 "ON r.oid = s.setrole WHERE r.rolname = current_user"),
        }


def attempt(run: Any, sql: str) -> str:
    """Run one injection; 'refused' or 'ran' (a read that changed nothing is fine)."""
    try:
        run(sql)
    except InvalidInput as e:
        assert "\n" not in str(e)
        return "refused"
    return "ran"


def still_read_only(dbs: an.ShopDatabases) -> None:
    """The pooled analyst connection was not left writable by the previous statement."""
    got = dbs.query("SELECT current_setting('transaction_read_only') AS tx, "
                    "current_setting('default_transaction_read_only') AS dflt, "
                    "current_setting('search_path') AS path")
    assert got[["tx", "dflt"]].iloc[0].tolist() == ["on", "on"]
    assert "drkit_ro_" in got["path"].iloc[0]


@pytest.mark.postgres
@pytest.mark.parametrize("text_check", [True, False], ids=["with-text-check", "database-only"])
def test_postgres_injections_change_nothing(pg, monkeypatch, text_check):
    if not text_check:
        monkeypatch.setattr(readonly, "check_select", lambda sql: None)
    dbs = an.open_databases(pg["url"], pg["url"], snapshot="s")
    before = pg_fingerprint(pg["admin"], pg["schema"])
    outcome = {}
    for sql in PG_INJECTIONS:
        outcome[sql] = attempt(lambda s: dbs.query(s), sql)
        assert pg_fingerprint(pg["admin"], pg["schema"]) == before, sql
        still_read_only(dbs)
    # everything is refused, by the text check or else by the database, except a few
    # single SELECTs whose only effect the rollback undoes (checked above: same fingerprint,
    # the session still read-only)
    ran = {sql for sql, o in outcome.items() if o == "ran"}
    assert ran <= ROLLED_BACK, ran
    assert not os.path.exists("/tmp/dr-kit-stolen.txt")
    assert dbs.query("SELECT count(*) AS n FROM orders")["n"].tolist() == [50]
    dbs.close()


@pytest.mark.postgres
def test_postgres_plain_engine_is_made_read_only_per_query(pg, monkeypatch):
    """run_query on an engine the caller made (no read-only options) is guarded as well."""
    monkeypatch.setattr(readonly, "check_select", lambda sql: None)
    engine = create_engine(pg["url"])
    before = pg_fingerprint(pg["admin"], pg["schema"])
    for sql in PG_INJECTIONS:
        attempt(lambda s: an.run_query(engine, s), sql)
        assert pg_fingerprint(pg["admin"], pg["schema"]) == before, sql
    with pytest.raises(InvalidInput, match="one statement"):
        an.run_query(engine, "SELECT E'\\''; COMMIT; DELETE FROM orders; --'")
    assert an.run_query(engine, "SELECT count(*) AS n FROM orders")["n"].tolist() == [50]
    with engine.connect() as conn:  # the caller's engine is left as it was
        assert conn.connection.dbapi_connection.prepare_threshold == 5
        conn.exec_driver_sql("UPDATE orders SET channel = 'web' WHERE order_id = 1")
        conn.rollback()
    engine.dispose()


@pytest.mark.postgres
def test_postgres_the_analyst_role_cannot_signal_the_application(pg, monkeypatch):
    """As the documented analyst role, pg_terminate_backend cannot end the shop's session."""
    admin, schema = pg["admin"], pg["schema"]
    role = f"{schema}_analyst"
    with admin.connect() as c:
        can = c.exec_driver_sql("SELECT rolcreaterole OR rolsuper FROM pg_roles "
                                "WHERE rolname = current_user").scalar()
        if not can:
            pytest.skip("the test role may not create roles (scripts/postgres.sh grants "
                        "CREATEROLE on a new cluster)")
        c.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        c.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        c.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    monkeypatch.setattr(readonly, "check_select", lambda sql: None)
    app = create_engine(PG_URL)
    try:
        with app.connect() as shop_session:
            pid = shop_session.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            url = make_url(pg["url"]).set(username=role)
            dbs = an.open_databases(url, url)
            before = pg_fingerprint(admin, schema)
            for sql in (f"SELECT pg_terminate_backend({pid})",
                        f"SELECT pg_cancel_backend({pid})",
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
                        "DELETE FROM orders", "SELECT E'\\''; DELETE FROM orders; --'"):
                attempt(lambda s, d=dbs: d.query(s), sql)
                assert pg_fingerprint(admin, schema) == before, sql
            assert shop_session.exec_driver_sql("SELECT 1").scalar() == 1  # still alive
            dbs.close()
    finally:
        app.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}")
            c.exec_driver_sql(f"REVOKE ALL ON SCHEMA {schema} FROM {role}")
            c.exec_driver_sql(f"DROP ROLE {role}")


@pytest.mark.postgres
def test_postgres_analyses_still_run_on_the_read_only_engine(pg):
    dbs = an.open_databases(pg["url"], pg["url"])
    url = dbs.sales.url
    assert url.drivername == "postgresql+psycopg"
    assert "default_transaction_read_only=on" in url.query["options"]
    assert "search_path" in url.query["options"]  # the caller's options are kept
    df = dbs.query("SELECT channel, count(*) AS n FROM orders WHERE order_id > :k "
                   "GROUP BY channel", {"k": 10})
    assert df["n"].tolist() == [40]
    assert dbs.query("SELECT '100%' AS a, $$x;y$$ AS b")["b"].tolist() == ["x;y"]
    dbs.close()


def test_drivers_that_run_several_statements_are_refused():
    for url in ("postgresql+psycopg2://u@h/db", "postgresql+pg8000://u@h/db"):
        with pytest.raises(InvalidInput, match="psycopg driver"):
            an.open_databases(url, url)
    with pytest.raises(InvalidInput, match="unsupported"):
        an.open_databases("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db")
    engine = readonly.read_only_engine(make_url("postgresql://u:pw@h/db?options=-cx%3D1"))
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.url.query["options"] == "-cx=1 -c default_transaction_read_only=on"
    engine.dispose()


# --- SQLite ---------------------------------------------------------------------------------------

SQLITE_INJECTIONS = [
    "SELECT 1; DELETE FROM orders",
    "SELECT ';'; DELETE FROM orders",
    "SELECT 1 /* ; */; DELETE FROM orders",
    "DELETE FROM orders",
    "UPDATE orders SET channel = 'x' RETURNING order_id",
    "INSERT INTO orders VALUES (999, 't', 'c', 'web')",
    "REPLACE INTO orders VALUES (1, 't', 'c', 'web')",
    "INSERT INTO orders SELECT order_id + 1000, ordered_at, customer, channel FROM orders",
    "WITH x AS (SELECT 1) DELETE FROM orders",
    "DROP TABLE order_lines",
    "CREATE TABLE stolen AS SELECT * FROM orders",
    "CREATE TEMP TABLE stolen AS SELECT * FROM orders",
    "CREATE VIEW v AS SELECT 1",
    "CREATE TRIGGER t AFTER INSERT ON orders BEGIN DELETE FROM orders; END",
    "ALTER TABLE orders ADD COLUMN x",
    "PRAGMA query_only = 0",
    "PRAGMA main.query_only = off",
    "PRAGMA writable_schema = 1",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "ATTACH DATABASE '{dir}/evil.db' AS evil",
    "VACUUM INTO '{dir}/copy.db'",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
    "BEGIN IMMEDIATE",
    "COMMIT",
    "SAVEPOINT s",
    "SELECT load_extension('{dir}/evil.so')",
]


@pytest.fixture
def sqlite_files(tmp_path: Path) -> Path:
    path = tmp_path / "sales.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (order_id INTEGER PRIMARY KEY, ordered_at TEXT, "
                 "customer TEXT, channel TEXT)")
    conn.execute("CREATE TABLE order_lines (order_id INTEGER, line_no INTEGER, "
                 "product_id INTEGER, quantity INTEGER, unit_price_cents INTEGER)")
    conn.executemany("INSERT INTO orders VALUES (?, '2024-05-01', 'c', 'web')",
                     [(i,) for i in range(1, 21)])
    conn.executemany("INSERT INTO order_lines VALUES (?, 1, 1, 2, 100)",
                     [(i,) for i in range(1, 21)])
    conn.commit()
    conn.close()
    return path


def _listing(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _engines(path: Path) -> dict[str, Engine]:
    return {
        # the analysts' adapter, opened read-only (as open_sqlite does)
        "apsw-read-only": dbapi.engine_for_apsw(lambda: apsw.Connection(str(path))),
        # the adapter on a connection that may write: run_query makes it read-only
        "apsw-read-write": dbapi.engine_for_apsw(lambda: apsw.Connection(str(path)),
                                                 read_only=False),
        # SQLAlchemy's own sqlite3 driver
        "sqlite3": create_engine(f"sqlite:///{path}"),
    }


@pytest.mark.parametrize("kind", ["apsw-read-only", "apsw-read-write", "sqlite3"])
@pytest.mark.parametrize("text_check", [True, False], ids=["with-text-check", "database-only"])
def test_sqlite_injections_change_nothing(sqlite_files, monkeypatch, kind, text_check):
    if not text_check:
        monkeypatch.setattr(readonly, "check_select", lambda sql: None)
    folder = sqlite_files.parent
    engine = _engines(sqlite_files)[kind]
    before = _listing(folder)
    outcome = {}
    for raw in SQLITE_INJECTIONS:
        sql = raw.replace("{dir}", str(folder))
        outcome[raw] = attempt(lambda s: an.run_query(engine, s), sql)
        assert _listing(folder) == before, raw
    # every one of them was refused (none of them reads)
    assert set(outcome.values()) == {"refused"}, outcome
    assert an.run_query(engine, "SELECT count(*) AS n FROM orders")["n"].tolist() == [20]
    if kind != "apsw-read-only":  # the caller's read-write engine is left as it was
        with engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
            conn.exec_driver_sql("UPDATE orders SET channel = 'store' WHERE order_id = 1")
        assert _listing(folder) != before
    engine.dispose()


def test_sqlite_refusal_names_what_was_refused(sqlite_files, monkeypatch):
    monkeypatch.setattr(readonly, "check_select", lambda sql: None)
    engine = create_engine(f"sqlite:///{sqlite_files}")
    with pytest.raises(InvalidInput, match="ATTACH.*refused, nothing was changed"):
        an.run_query(engine, f"ATTACH DATABASE '{sqlite_files.parent}/x.db' AS x")
    with pytest.raises(InvalidInput, match="one statement"):
        an.run_query(engine, "SELECT 1; DELETE FROM orders")
    engine.dispose()


# --- the text check, the first and friendly refusal --------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT E'\\''; COMMIT; DELETE FROM orders; --'",
    "SELECT e'\\\\\\''; DELETE FROM orders; --'",
    "SELECT $a1$ x $a1$; DELETE FROM orders",
    "SELECT $$ $a$ $$; DELETE FROM orders",
])
def test_text_check_understands_postgres_strings(sql):
    with pytest.raises(InvalidInput, match="one statement"):
        an.check_select(sql)


@pytest.mark.parametrize("sql", [
    "SELECT E'it\\'s; fine' AS a",
    "SELECT $tag1$ ; DELETE $tag1$ AS a",
    "SELECT 'a\\' AS b",  # a standard string: the backslash is an ordinary character
])
def test_text_check_accepts_one_select(sql):
    an.check_select(sql)


def test_oracle_engines_begin_every_transaction_read_only():
    """No Oracle server here: the engine is built, and its first statement is rendered."""
    engine = readonly.read_only_engine(make_url("oracle+oracledb://analyst@db:1521/?service_name=S"))
    assert engine in readonly._READ_ONLY and engine.dialect.name == "oracle"
    sent: list[str] = []

    class Conn:  # what the "begin" listener sends, without a server
        def exec_driver_sql(self, sql: str) -> None:
            sent.append(sql)

    engine.dispatch.begin(Conn())
    assert sent == ["SET TRANSACTION READ ONLY"]
    with pytest.raises(InvalidInput, match="oracledb driver"):
        readonly.read_only_engine(make_url("oracle+nosuch://u@h/s"))
    engine.dispose()
