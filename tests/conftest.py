"""Shared fixtures: a clean ECOQ_* environment, real SQLite files in tmp dirs, a fake clock."""

import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.scheduler.queue import JobSpec, Queue

#: A PostgreSQL server for the `pg` tier (`.ci/run` starts one); read before the environment is
#: cleaned for each test.
PG_URL = os.environ.get("ECOQ_TEST_PG_URL", "")
#: Set by `.ci/run`: there, a missing service is a failure, not a skip.
REQUIRE_SERVICES = os.environ.get("ECOQ_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose service is absent, except in CI, where that is a failure."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, but ECOQ_REQUIRE_SERVICES=1 (CI) requires it")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's ecoq settings; each gets its own data folder."""
    for name in list(os.environ):
        if name.startswith("ECOQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("ECOQ_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ECOQ_DATABASE_URL", f"sqlite:///{tmp_path / 'ecoq.db'}")
    yield


class FakeClock:
    """A settable UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 30, 10, 0, tzinfo=UTC))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ecoq.db'}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database, copied for each test (much faster than migrating)."""
    if not PG_URL:
        skip_or_fail("no PostgreSQL: set ECOQ_TEST_PG_URL (.ci/run starts one)")
    from sqlalchemy import create_engine, text

    name = f"ecoq_tmpl_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    open_engine(_pg_db(name)).dispose()
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _pg_db(name: str) -> str:
    return PG_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at the current schema for one test."""
    from sqlalchemy import create_engine, text

    name = f"ecoq_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield _pg_db(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs on SQLite and, when a server is available, PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ecoq.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def queue(any_db_url: str, clock: FakeClock) -> Iterator[Queue]:
    engine = open_engine(any_db_url)
    yield Queue(engine, clock=clock)
    engine.dispose()


def make_spec(
    now: datetime,
    *,
    command: list[str] | None = None,
    deadline_h: float = 12,
    duration_h: float = 1,
    zone: str = "DE",
    gpus: int = 0,
    cwd: str | None = None,
    **kw: object,
) -> JobSpec:
    """A valid spec; `command` defaults to a quick `true`."""
    return JobSpec(
        command=command or ["/bin/true"],
        cwd=cwd or os.getcwd(),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ":".join(sys.path)},
        user="tester",
        uid=os.getuid(),
        zone=zone,
        deadline=now + timedelta(hours=deadline_h),
        duration=timedelta(hours=duration_h),
        duration_source="user",
        name="test-job",
        gpus=gpus,
        **kw,  # type: ignore[arg-type]
    )
