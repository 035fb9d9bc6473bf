"""Crash safety of schema migrations: a daemon SIGKILLed after any statement of an Alembic upgrade
leaves the database as it was (the whole upgrade is one SQLite transaction), and the next start
upgrades it completely, keeping the rows."""

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import ecoq.db
from ecoq.db import make_engine, open_engine
from ecoq.migrations import HEAD
from ecoq.scheduler.queue import Queue
from tests.reliability.crashkit import KILLED, Daemons

#: Revisions the upgrade test starts from: enough steps that it adds columns to tables with rows,
#: creates tables and indexes.
STEPS_BACK = 4


def _alembic(url: str, revision: str) -> None:
    """Create the database at `url` at an old `revision` (before it holds any rows)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(ecoq.db.__file__).with_name("migrations")))
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def _base_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(ecoq.db.__file__).with_name("migrations")))
    revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()]
    assert revisions[0] == HEAD and len(revisions) > STEPS_BACK
    return revisions[STEPS_BACK]


def _schema(db: Path) -> list[tuple[Any, ...]]:
    """What the schema is: every table, index and their SQL; and the Alembic revision."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        try:
            version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError:
            version = []
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        assert check == "ok", check
    finally:
        conn.close()
    return [*rows, ("version", *version)]


def _fill(conn: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
    """Insert a row with `values`, and a plain value in every other NOT NULL column."""
    by_type = {"INTEGER": 0, "FLOAT": 0.0, "BOOLEAN": 0, "JSON": "[]", "DATETIME": ""}
    row = dict(values)
    for _, name, kind, notnull, default, pk in conn.execute(f"PRAGMA table_info({table})"):
        if notnull and default is None and not pk and name not in row:
            row[name] = by_type.get(kind.upper(), "x")
            if kind.upper() == "DATETIME":
                row[name] = "2026-11-01 10:00:00.000000"
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))


def _walk_kills(daemons: Daemons, db: Path, before: list[tuple[Any, ...]]) -> int:
    """Kill the upgrade after its 1st, 2nd, ... statement until one upgrade completes; after
    each kill the schema must be exactly as it was. Returns the number of kills."""
    k = 0
    while True:
        k += 1
        code = daemons.run("daemon", "--once", fault=f"migrate-statement:{k}")
        if code == 0:
            return k - 1
        assert code == KILLED, daemons.log.read_text()[-3000:]
        assert _schema(db) == before, f"a kill after statement {k} left a half-upgraded schema"
        assert k < 500, "the upgrade never completed"


@pytest.mark.slow
def test_kill_inside_the_first_migration_leaves_nothing_then_it_completes(
    tmp_path: Path, fast_dir: Path
) -> None:
    daemons = Daemons(tmp_path, {})
    db = fast_dir / "ecoq.db"
    reference = tmp_path / "reference.db"
    open_engine(f"sqlite:///{reference}").dispose()

    db.touch()  # an empty file, as a first `ecoq` command finds it
    kills = _walk_kills(daemons, db, _schema(db))
    assert kills >= 20  # every statement of the upgrade was a crash point
    assert _schema(db) == _schema(reference)  # the run that completed built the whole schema
    # The kill before the upgrade's commit too.
    db.unlink()
    db.touch()
    assert daemons.run("daemon", "--once", fault="db-commit:1") == KILLED
    assert _schema(db) == [("version",)]
    assert daemons.run("daemon", "--once") == 0
    assert _schema(db) == _schema(reference)


@pytest.mark.slow
def test_kill_inside_an_upgrade_keeps_the_rows_and_the_old_schema(
    tmp_path: Path, fast_dir: Path
) -> None:
    daemons = Daemons(tmp_path, {})
    url = os.environ["ECOQ_DATABASE_URL"]
    db = fast_dir / "ecoq.db"
    base = _base_revision()
    _alembic(url, base)
    conn = sqlite3.connect(db)
    with conn:
        _fill(
            conn,
            "jobs",
            {"name": "old", "state": "succeeded", "command": '["/bin/true"]', "env": "{}"},
        )
        _fill(conn, "runs", {"job_id": 1, "run_dir": "/nowhere", "exit_code": 0})
    conn.close()
    reference = tmp_path / "reference.db"
    reference.write_bytes(db.read_bytes())
    open_engine(f"sqlite:///{reference}").dispose()  # upgraded without a crash

    kills = _walk_kills(daemons, db, _schema(db))
    assert kills >= 5
    assert _schema(db) == _schema(reference)
    queue = Queue(open_engine(url))
    job = queue.get(1)
    assert (job.name, job.state, job.command) == ("old", "succeeded", ["/bin/true"])
    run = queue.latest_run(1)
    assert run is not None and run.exit_code == 0 and run.run_dir == "/nowhere"
    queue.engine.dispose()
