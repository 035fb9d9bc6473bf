"""The database layer: migrations match the models, SQLite is set up for concurrent use."""

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
