"""Shared fixtures: a clean ECOQ_* environment, real SQLite files in tmp dirs, a fake clock."""

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.scheduler.queue import JobSpec, Queue


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


@pytest.fixture
def queue(db_url: str, clock: FakeClock) -> Queue:
    return Queue(open_engine(db_url), clock=clock)


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
