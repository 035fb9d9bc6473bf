"""The database: engines, the SQLite settings that make concurrent use safe, and migrations.

SQLite (the default) runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE`, so several `ecoq submit` shells and a ticking daemon queue up for the write
lock instead of failing. The schema is created or upgraded on first use by Alembic, under a file
lock so two processes opening a new database do not race.

An engine on a SQLite file keeps one connection open between transactions (`QueuePool`, more
while threads overlap). With a connection per transaction (`NullPool`, before), closing the
process's last connection checkpointed the WAL and deleted it, fsyncs included: 8-20 ms per
transaction on the development disk against 0.2 ms pooled (`benchmarks/sqlite_pool.py`). The
WAL is then checkpointed by SQLite every 1000 pages and cut back to `SQLITE_WAL_LIMIT_BYTES`
after a checkpoint, and deleted when the engine is disposed. Pooled connections never cross a
fork: the child of `os.fork()` gets fresh pools, and the parent's connections are left alone
there (closing one in the child could checkpoint under the parent's feet, as SQLite warns).
"""

import fcntl
import os
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool, Pool, QueuePool
from sqlmodel import Session

from ecoq.errors import DatabaseError
from ecoq.faults import armed, fault
from ecoq.migrations import HEAD
from ecoq.views import sqlite_path

SQLITE_BUSY_TIMEOUT_MS = 60_000
#: The size the WAL file is cut back to after a checkpoint (`PRAGMA journal_size_limit`): twice
#: the ~4 MB (1000 pages) at which SQLite checkpoints by itself, so a large transaction (a
#: retention pass, a migration) does not leave a large file behind.
SQLITE_WAL_LIMIT_BYTES = 8 * 1024 * 1024
#: Idle connections an engine on a SQLite file keeps (threads that overlap open more, and close
#: them when done).
SQLITE_POOL_SIZE = 1

#: Engines on SQLite files, so a forked child can give each a fresh pool.
_SQLITE_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()
#: In a forked child: the parent's pools, kept referenced so their connections are never
#: closed (nor garbage-collected, which closes them) in the child.
_INHERITED_POOLS: list[Pool] = []
_fork_hook_installed = False


def make_engine(url: str) -> Engine:
    """An engine for `url` (any SQLAlchemy URL). Raises DatabaseError for an unusable URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(
            f"database URL {_redact(url)!r} is not a valid SQLAlchemy URL ({exc}); "
            "fix database.url or ECOQ_DATABASE_URL"
        ) from exc
    if parsed.get_backend_name() != "sqlite":
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except (ImportError, SQLAlchemyError) as exc:
            raise DatabaseError(
                f"cannot use database {_shown(parsed)}: {exc}; "
                "for PostgreSQL install `ecoq[postgres]`"
            ) from exc
        _arm_faults(engine)
        return engine
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the database folder {path.parent}: {exc.strerror}; "
                "set paths.data_dir or database.url to a writable place"
            ) from exc
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None}
    if path is None:  # in memory: each connection is its own database anyway
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    else:
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=-1,  # never wait for a connection: SQLite itself queues the writers
            connect_args=connect_args,
        )
        _track_for_fork(engine)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin_immediate)
    _arm_faults(engine)
    return engine


def _track_for_fork(engine: Engine) -> None:
    global _fork_hook_installed
    _SQLITE_ENGINES.add(engine)
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_fresh_pools_after_fork)
        _fork_hook_installed = True


def _fresh_pools_after_fork() -> None:
    """In a forked child, give every SQLite engine a new, empty pool.

    The parent's connections stay referenced (`_INHERITED_POOLS`) and are never used or
    closed here: SQLite forbids using a connection across `fork()`, and closing the last one
    would checkpoint and delete the WAL that the parent still writes to.
    """
    for engine in list(_SQLITE_ENGINES):
        _INHERITED_POOLS.append(engine.pool)
        engine.dispose(close=False)


def _arm_faults(engine: Engine) -> None:
    """Crash points between and inside transactions, only when a test asks (`ecoq.faults`)."""
    if armed("db-begin"):
        event.listen(engine, "begin", lambda _conn: fault("db-begin"), insert=True)
    if armed("db-commit"):
        event.listen(engine, "commit", lambda _conn: fault("db-commit"))


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA journal_mode = WAL")  # persistent; cheap once set
    cur.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_LIMIT_BYTES}")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock up front: a deferred transaction that later writes can fail with
    # SQLITE_BUSY without ever waiting on the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    path = sqlite_path(url)
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".migrate.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except OperationalError:
            return None
        except SQLAlchemyError:
            conn.rollback()
            return None
    return None if row is None else str(row[0])


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to `HEAD`. Raises DatabaseError naming the database."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            try:
                if sqlite:
                    # Altering a SQLite table rebuilds it (copy, drop, rename), and dropping
                    # `jobs` fails while enforced foreign keys point at it. The switch is
                    # ignored inside a transaction, so it is set before BEGIN and checked
                    # before COMMIT, as SQLite's own procedure for table rebuilds says.
                    conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
                with conn.begin():
                    if armed("migrate-statement"):
                        event.listen(
                            conn, "after_cursor_execute", lambda *_: fault("migrate-statement")
                        )
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                        raise DatabaseError(
                            "the schema upgrade would leave rows whose foreign keys point "
                            "nowhere; nothing was changed"
                        )
            finally:
                if sqlite:
                    # The pool keeps connections: never hand this one back with foreign keys
                    # off. Closed instead, whatever happened.
                    conn.invalidate()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate database {_shown(engine.url)}: {exc}") from exc


def _shown(url: URL) -> str:
    """`url` for messages: no password, in the user part or the query (``?password=``)."""
    return _redact(url.render_as_string(hide_password=True))


def _redact(url: str) -> str:
    from ecoq.config import redact_url

    return redact_url(url)


def open_engine(url: str) -> Engine:
    """An engine whose database exists and is at the current schema (created on first use).

    Raises:
        DatabaseError: unusable URL, unreachable server, or a database newer than this ecoq.
    """
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot open database {_shown(engine.url)}: {exc}; "
            "check database.url and that the server is running"
        ) from exc
    if revision != HEAD:
        with _migration_lock(url):
            if current_revision(engine) != HEAD:
                _refuse_unknown_revision(engine, current_revision(engine))
                migrate(engine)
    return engine


def _refuse_unknown_revision(engine: Engine, revision: str | None) -> None:
    versions = Path(__file__).with_name("migrations") / "versions"
    known = {p.name.split("_", 1)[0] for p in versions.glob("*.py")}
    if revision is not None and revision not in known:
        raise DatabaseError(
            f"database {_shown(engine.url)} is at schema revision "
            f"{revision!r}, newer than this ecoq knows ({HEAD}); upgrade ecoq"
        )


def session(engine: Engine) -> Session:
    """A session whose objects stay readable after commit."""
    return Session(engine, expire_on_commit=False)


class EngineReader:
    """The `ecoq.views.Reader` for any SQLAlchemy engine (used for PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), dict(params))]


def ensure_private(path: Path) -> None:
    """Make a data folder readable only by its owner (it holds job environments and logs)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
