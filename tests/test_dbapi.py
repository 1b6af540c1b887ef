"""The DBAPI face of apsw: PEP 249 behaviour, SQLAlchemy on top, read-only refusals."""

from __future__ import annotations

import apsw
import pandas as pd
import pytest
from sqlalchemy import column, func, select, table, text
from sqlalchemy.pool import QueuePool

from dr_kit.errors import InvalidInput
from dr_kit.sqlite import dbapi


@pytest.fixture
def db_path(tmp_path):
    path = str(tmp_path / "t.db")
    conn = apsw.Connection(path)
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c REAL)")
    conn.execute("CREATE INDEX t_b ON t (b)")
    conn.execute("INSERT INTO t (b, c) VALUES ('x', 1.5), ('y', 2.5), ('z', NULL)")
    conn.close()
    return path


def read_only_factory(path):
    return lambda: apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)


def rows(path, sql="SELECT a, b, c FROM t ORDER BY a"):
    conn = apsw.Connection(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_module_globals():
    assert dbapi.apilevel == "2.0"
    assert dbapi.paramstyle == "qmark"
    assert dbapi.sqlite_version_info >= (3, 35, 0)
    assert issubclass(dbapi.IntegrityError, dbapi.DatabaseError)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)
    assert issubclass(dbapi.WriteRefused, dbapi.OperationalError)
    assert issubclass(dbapi.WriteRefused, InvalidInput)


def test_select_fetch_and_description(db_path):
    conn = dbapi.connect(apsw.Connection(db_path))
    cur = conn.cursor()
    cur.execute("SELECT a, b FROM t WHERE a >= ? ORDER BY a", (2,))
    assert [d[0] for d in cur.description] == ["a", "b"]
    assert cur.rowcount == -1
    assert cur.fetchone() == (2, "y")
    assert cur.fetchone() == (3, "z")
    assert cur.fetchone() is None
    cur.execute("SELECT a FROM t ORDER BY a")
    assert cur.fetchmany(2) == [(1,), (2,)]
    assert cur.fetchmany(5) == [(3,)]
    assert cur.fetchmany() == []
    cur.arraysize = 2
    cur.execute("SELECT a FROM t ORDER BY a")
    assert cur.fetchmany() == [(1,), (2,)]
    assert cur.fetchall() == [(3,)]
    cur.execute("SELECT a FROM t ORDER BY a")
    assert list(cur) == [(1,), (2,), (3,)]
    conn.close()


def test_description_of_empty_result_and_of_statements_without_rows(db_path):
    conn = dbapi.connect(db_path)
    cur = conn.cursor()
    cur.execute("SELECT a, b FROM t WHERE a > 100")
    assert [d[0] for d in cur.description] == ["a", "b"]
    assert cur.fetchall() == []
    cur.execute("UPDATE t SET b = b WHERE a > 100")
    assert cur.description is None
    assert cur.rowcount == 0
    conn.close()


def test_named_parameters_and_binding_errors(db_path):
    conn = dbapi.connect(db_path)
    cur = conn.cursor()
    cur.execute("SELECT b FROM t WHERE a = :a", {"a": 1})
    assert cur.fetchall() == [("x",)]
    with pytest.raises(dbapi.ProgrammingError):
        cur.execute("SELECT b FROM t WHERE a = ?", (1, 2))
    with pytest.raises(dbapi.InterfaceError):
        cur.execute("SELECT b FROM t WHERE a = ?", (object(),))
    conn.close()


def test_parameters_are_bound_not_interpolated(db_path):
    conn = dbapi.connect(db_path)
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM t WHERE b = ?", ("x' OR '1'='1",))
    assert cur.fetchone() == (0,)
    conn.close()


def test_rowcount_lastrowid_executemany_commit_rollback(db_path):
    conn = dbapi.connect(apsw.Connection(db_path))
    cur = conn.cursor()
    cur.execute("INSERT INTO t (b) VALUES (?)", ("w",))
    assert cur.rowcount == 1
    assert cur.lastrowid == 4
    assert conn.in_transaction
    conn.rollback()
    assert not conn.in_transaction
    assert len(rows(db_path)) == 3

    cur.executemany("INSERT INTO t (b, c) VALUES (?, ?)", [("p", 1.0), ("q", 2.0)])
    assert cur.rowcount == 2
    cur.execute("UPDATE t SET c = 0 WHERE c IS NOT NULL")
    assert cur.rowcount == 4
    conn.commit()
    assert not conn.in_transaction
    assert [r[1] for r in rows(db_path)] == ["x", "y", "z", "p", "q"]
    conn.close()


def test_autocommit_when_isolation_level_is_none(db_path):
    conn = dbapi.connect(db_path, isolation_level=None)
    conn.execute("DELETE FROM t WHERE a = 1")
    assert not conn.in_transaction
    assert len(rows(db_path)) == 2
    conn.close()


def test_context_manager_commits_or_rolls_back(db_path):
    conn = dbapi.connect(db_path)
    with conn:
        conn.execute("DELETE FROM t WHERE a = 1")
    assert len(rows(db_path)) == 2
    with pytest.raises(RuntimeError), conn:
        conn.execute("DELETE FROM t")
        raise RuntimeError("boom")
    assert len(rows(db_path)) == 2
    conn.close()


def test_exceptions_are_mapped(db_path):
    conn = dbapi.connect(db_path)
    with pytest.raises(dbapi.IntegrityError):
        conn.execute("INSERT INTO t (a, b) VALUES (1, 'dup')")
    with pytest.raises(dbapi.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM nope")
    with pytest.raises(dbapi.OperationalError, match="syntax"):
        conn.execute("SELEC 1")
    conn.close()
    with pytest.raises(dbapi.ProgrammingError, match="closed database"):
        conn.cursor()


def test_multiple_statements_refused_before_anything_runs(db_path):
    conn = dbapi.connect(db_path)
    cur = conn.cursor()
    with pytest.raises(dbapi.ProgrammingError, match="one statement"):
        cur.execute("DELETE FROM t; DELETE FROM t")
    assert len(rows(db_path)) == 3
    # a semicolon inside a string, a trailing semicolon and comments are one statement
    cur.execute("SELECT ';' || b FROM t WHERE a = 1; -- done")
    assert cur.fetchall() == [(";x",)]


@pytest.mark.parametrize(("sql", "n"), [
    ("", 0), ("  -- just a comment\n", 0), (";", 0),
    ("SELECT 1", 1), ("SELECT 1;", 1), ("SELECT ';'", 1), ('SELECT 1 AS ";"', 1),
    ("SELECT 1; /* c */ ", 1), ("SELECT 1 -- ;\n", 1),
    ("SELECT 1; SELECT 2", 2), ("SELECT 1;;SELECT 2", 2),
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END;", 1),
])
def test_count_statements(sql, n):
    assert dbapi.count_statements(sql) == n


def test_read_only_connection_refuses_writes_and_changes_nothing(db_path):
    conn = dbapi.connect(apsw.Connection(db_path), read_only=True)
    cur = conn.cursor()
    for sql in ("INSERT INTO t (b) VALUES ('w')", "UPDATE t SET b = 'w'", "DELETE FROM t",
                "DROP TABLE t", "CREATE TABLE u (x)", "CREATE TEMP TABLE u (x)",
                "ALTER TABLE t ADD COLUMN d", "PRAGMA query_only = 0",
                "PRAGMA journal_mode = DELETE", "ATTACH DATABASE ':memory:' AS other",
                "VACUUM", "REINDEX"):
        with pytest.raises(dbapi.WriteRefused, match="read-only") as err:
            cur.execute(sql)
        assert isinstance(err.value, InvalidInput)
    cur.execute("SELECT count(*) FROM t")
    assert cur.fetchone() == (3,)
    cur.execute("PRAGMA table_info(t)")
    assert [r[1] for r in cur.fetchall()] == ["a", "b", "c"]
    cur.execute("PRAGMA integrity_check")
    assert cur.fetchall() == [("ok",)]
    conn.close()
    assert rows(db_path)[0] == (1, "x", 1.5)


def test_engine_runs_sqlalchemy_core_and_pandas(db_path):
    engine = dbapi.engine_for_apsw(read_only_factory(db_path))
    t = table("t", column("a"), column("b"), column("c"))
    stmt = select(func.count().label("n"), func.sum(t.c.c).label("total"))
    with engine.connect() as conn:
        assert conn.execute(stmt).one() == (3, 4.0)
        got = conn.execute(text("SELECT b FROM t WHERE a = :a"), {"a": 2}).scalar_one()
        assert got == "y"
    df = pd.read_sql(select(t.c.a, t.c.b).where(t.c.a > 5), engine)
    assert list(df.columns) == ["a", "b"]
    assert df.empty
    df = pd.read_sql(select(t.c.a, t.c.b).order_by(t.c.a), engine)
    assert df["b"].tolist() == ["x", "y", "z"]
    engine.dispose()


def test_engine_read_only_refusal_is_invalid_input(db_path):
    engine = dbapi.engine_for_apsw(lambda: apsw.Connection(db_path))  # opened read-write
    with engine.connect() as conn, pytest.raises(InvalidInput, match="read-only.*INSERT"):
        conn.execute(text("INSERT INTO t (b) VALUES ('w')"))
    assert len(rows(db_path)) == 3


def test_engine_read_write_transactions(db_path):
    engine = dbapi.engine_for_apsw(lambda: apsw.Connection(db_path), read_only=False,
                                   poolclass=QueuePool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t (b) VALUES (:b)"), [{"b": "p"}, {"b": "q"}])
        assert conn.execute(text("UPDATE t SET c = 9 WHERE b IN ('p', 'q')")).rowcount == 2
    assert len(rows(db_path)) == 5
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("DELETE FROM t"))
        raise RuntimeError("abort")
    assert len(rows(db_path)) == 5
    engine.dispose()


def test_engine_factory_failure_is_a_dbapi_error(tmp_path):
    missing = str(tmp_path / "missing" / "x.db")
    engine = dbapi.engine_for_apsw(read_only_factory(missing))
    with pytest.raises(Exception) as err:
        engine.connect()
    assert isinstance(getattr(err.value, "orig", None), dbapi.OperationalError)


def test_ctrl_c_is_not_turned_into_a_database_error(db_path):
    """A KeyboardInterrupt raised while SQLite runs a statement reaches the caller as itself."""
    conn = dbapi.connect(db_path)

    def interrupted(a):
        if a == 3:
            raise KeyboardInterrupt
        return a

    conn.create_function("interrupted", 1, interrupted)
    cur = conn.cursor()
    with pytest.raises(KeyboardInterrupt):  # while executing (the first row)
        cur.execute("SELECT interrupted(a) FROM t WHERE a = 3")
    cur = conn.cursor()
    cur.execute("SELECT interrupted(a) FROM t ORDER BY a")
    assert cur.fetchone() == (1,)
    with pytest.raises(KeyboardInterrupt):  # while fetching a later row
        cur.fetchall()
    # an ordinary error is still translated
    with pytest.raises(dbapi.OperationalError):
        conn.execute("SELECT * FROM nope")
    conn.close()


def test_read_only_scope_on_a_read_write_connection(db_path):
    conn = dbapi.connect(db_path)
    with conn.read_only_scope():
        for sql in ("DELETE FROM t", "PRAGMA query_only = 0", "ATTACH ':memory:' AS x"):
            with pytest.raises(dbapi.WriteRefused, match="refused, nothing was changed"):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    conn.execute("DELETE FROM t WHERE a = 1")  # writable again afterwards
    conn.commit()
    assert conn.execute("PRAGMA query_only").fetchone() == (0,)
    conn.close()
    assert len(rows(db_path)) == 2
