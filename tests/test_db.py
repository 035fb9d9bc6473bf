"""The database layer: migrations match the models, SQLite is set up for concurrent use."""

import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, text
from sqlmodel import SQLModel

import ecoq.db
from ecoq.db import EngineReader, current_revision, open_engine
from ecoq.errors import DatabaseError
from ecoq.migrations import HEAD
from ecoq.scheduler.queue import Queue
from ecoq.views import SqliteReader, fast_reader, get_job, list_jobs, sqlite_revision
from tests.conftest import FakeClock, make_spec


def test_head_constant_is_alembic_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(ecoq.db.__file__).with_name("migrations")))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD


def test_migrations_match_models(db_url: str) -> None:
    engine = open_engine(db_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    # SQLite reflects our UTCDateTime as DATETIME; only real structural differences count.
    structural = [d for d in diffs if not (isinstance(d, list) and d[0][0] == "modify_type")]
    assert structural == []


def test_new_database_is_created_in_wal_mode_at_head(db_url: str, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    assert current_revision(engine) == HEAD
    conn = sqlite3.connect(tmp_path / "ecoq.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sqlite_revision(tmp_path / "ecoq.db") == HEAD


def test_readers_see_what_the_orm_wrote(any_db_url: str, clock: FakeClock) -> None:
    engine = open_engine(any_db_url)
    queue = Queue(engine, clock=clock)
    job = queue.submit(make_spec(clock(), command=["/bin/echo", "a b", "ü;$(x)"]))
    fast = fast_reader(any_db_url)
    if any_db_url.startswith("sqlite"):
        assert isinstance(fast, SqliteReader)
    else:
        assert fast is None  # other databases are read through the engine
    for reader in [r for r in (fast, EngineReader(engine)) if r is not None]:
        [view] = list_jobs(reader)
        assert view.id == job.id
        assert view.command == ["/bin/echo", "a b", "ü;$(x)"]
        assert view.submitted_at == clock.now
        assert view.deadline.tzinfo is not None
        assert view == get_job(reader, job.id or 0)
    engine.dispose()


def test_fast_reader_is_none_without_a_current_schema(tmp_path: Path) -> None:
    assert fast_reader(f"sqlite:///{tmp_path / 'absent.db'}") is None
    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE t (x)")
    assert fast_reader(f"sqlite:///{tmp_path / 'empty.db'}") is None
    assert fast_reader("postgresql+psycopg://u@h/db") is None


def test_naive_datetimes_are_refused(queue: Queue, clock: FakeClock) -> None:
    spec = make_spec(clock())
    naive = spec.deadline.replace(tzinfo=None)
    from dataclasses import replace

    with pytest.raises(Exception, match="naive datetime"):
        queue.submit(replace(spec, deadline=naive))
    assert queue.jobs(["pending"]) == []  # type: ignore[list-item]


def test_unusable_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="not a valid SQLAlchemy URL"):
        open_engine("not a url")


def test_newer_schema_is_refused(db_url: str, tmp_path: Path) -> None:
    open_engine(db_url)
    conn = sqlite3.connect(tmp_path / "ecoq.db")
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    with pytest.raises(DatabaseError, match="newer than this ecoq"):
        open_engine(db_url)


def test_parallel_first_use_creates_the_schema_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    code = f"from ecoq.db import open_engine; open_engine({url!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert sqlite_revision(tmp_path / "race.db") == HEAD


def test_utc_round_trip(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    loaded = queue.get(job.id)
    assert isinstance(loaded.submitted_at, datetime)
    assert loaded.submitted_at == clock.now
    assert loaded.submitted_at.utcoffset() is not None


# -- the SQLite connection pool ---------------------------------------------------------------


def _connects(engine: Engine) -> list[int]:
    """The pids that opened each new DBAPI connection of `engine` from now on."""
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(os.getpid()))
    return opened


def _write(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        for _ in range(n):
            conn.execute(text("INSERT INTO t (pid) VALUES (:pid)"), {"pid": os.getpid()})


def _table(url: str) -> Engine:
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, pid INTEGER, pad TEXT)"))
    return engine


def test_a_sqlite_engine_keeps_its_connection_and_the_wal(db_url: str, tmp_path: Path) -> None:
    """One connection serves every transaction, so no transaction pays for a checkpoint; the
    WAL is checkpointed and removed when the engine is disposed."""
    engine = _table(db_url)
    opened = _connects(engine)
    for _ in range(50):
        _write(engine, 1)
    assert len(opened) <= 1  # the one kept since the table was made, or one new one
    assert (tmp_path / "ecoq.db-wal").exists()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == (
            ecoq.db.SQLITE_WAL_LIMIT_BYTES
        )
    engine.dispose()
    assert not (tmp_path / "ecoq.db-wal").exists()


def test_the_wal_is_cut_back_after_a_large_transaction(db_url: str, tmp_path: Path) -> None:
    engine = _table(db_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO t (pid, pad) VALUES (:pid, :pad)"),
            [{"pid": i, "pad": "x" * 1000} for i in range(12_000)],
        )
    assert (tmp_path / "ecoq.db-wal").stat().st_size > ecoq.db.SQLITE_WAL_LIMIT_BYTES
    for _ in range(1100):  # past the automatic checkpoint (1000 pages), then a WAL restart
        _write(engine, 1)
    assert (tmp_path / "ecoq.db-wal").stat().st_size <= ecoq.db.SQLITE_WAL_LIMIT_BYTES
    engine.dispose()


def test_foreign_keys_are_enforced_on_pooled_connections_after_a_migration(db_url: str) -> None:
    """The migration turns foreign keys off on its connection; that connection must never be
    handed out again."""
    engine = open_engine(db_url)  # creates the schema: a migration ran on this engine
    for _ in range(3):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_a_forked_child_never_uses_the_parents_connection(db_url: str) -> None:
    """`os.fork()` (the crash harness's fork server, any forking executor) copies the pool;
    the child must open its own connection and leave the parent's alone."""
    engine = _table(db_url)
    _write(engine, 1)
    opened = _connects(engine)
    pool_before = id(engine.pool)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            _write(engine, 5)
            fresh = id(engine.pool) != pool_before and opened == [os.getpid()]
            engine.dispose()
            code = 0 if fresh else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _write(engine, 1)
    assert opened == [] and id(engine.pool) == pool_before  # the parent's connection, unharmed
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 7
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()


_WRITER = """
import sys
from sqlalchemy import text
from ecoq.db import open_engine
engine = open_engine(sys.argv[1])
for _ in range(40):
    with engine.begin() as conn:
        n = conn.execute(text("SELECT count(*) FROM t")).scalar()
        conn.execute(text("INSERT INTO t (pid, pad) VALUES (:n, 'w')"), {"n": n})
engine.dispose()
"""


def test_processes_write_safely_while_a_daemon_keeps_its_connection(db_url: str) -> None:
    """Several CLI-like processes and a daemon-like engine that keeps its connection open
    write to one file at once: every transaction lands, none sees another half-done."""
    engine = _table(db_url)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, db_url]) for _ in range(3)]
    for _ in range(40):
        with engine.begin() as conn:
            n = conn.execute(text("SELECT count(*) FROM t")).scalar()
            conn.execute(text("INSERT INTO t (pid, pad) VALUES (:n, 'd')"), {"n": n})
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with engine.connect() as conn:
        counts = [row[0] for row in conn.execute(text("SELECT pid FROM t ORDER BY id"))]
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert counts == list(range(160))  # each writer saw every earlier commit, none lost
    engine.dispose()
