"""SQLModel tables: jobs and their runs.

Every datetime column is stored as UTC and read back timezone-aware (`UTCDateTime`), because
SQLite drops offsets. Commands are JSON argv lists, never shell strings. The schema itself is
owned by the Alembic migrations in `ecoq.migrations`; `SQLModel.metadata` must match them (a test
compares the two).
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Dialect, Index, String, TypeDecorator
from sqlmodel import Field, SQLModel

from ecoq.states import JobState


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime column that refuses naive values and always returns aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the database; use UTC-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _utc(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class Job(SQLModel, table=True):
    """One submitted job: what to run, its constraints, its plan and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_planned_start", "state", "planned_start"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str
    project: str | None = None
    user: str
    uid: int
    command: list[str] = Field(sa_column=Column(JSON, nullable=False))
    cwd: str
    env: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    zone: str
    site: str | None = None
    gpus: int = 0
    submitted_at: datetime = _utc()
    not_before: datetime | None = _utc(default=None)
    deadline: datetime = _utc()
    duration_s: int
    #: "user" (--duration), "default" (config) or "learned" (earlier runs).
    duration_source: str
    drop_if_late: bool = False

    state: JobState = Field(default=JobState.PENDING, sa_type=String(16), index=True)
    late: bool = False
    held: bool = False
    #: Set by `ecoq start`: dispatch as soon as possible, ignoring carbon.
    run_now: bool = False
    #: A request for the owning daemon ("cancel", "hold", "release"), carried out at its next tick.
    request: str | None = None
    requested_at: datetime | None = _utc(default=None)

    planned_start: datetime | None = _utc(default=None)
    planned_at: datetime | None = _utc(default=None)
    plan_g_per_kwh: float | None = None
    now_g_per_kwh: float | None = None
    plan_signal: str | None = None
    plan_source: str | None = None
    plan_label: str | None = None
    plan_reason: str | None = None
    forecast_issued_at: datetime | None = _utc(default=None)

    #: The daemon that owns the job once claimed ("host:pid").
    worker: str | None = None
    started_at: datetime | None = _utc(default=None)
    finished_at: datetime | None = _utc(default=None)
    exit_code: int | None = None
    #: Why the job ended as it did when it is not its own exit status (cancelled, daemon stopped…).
    reason: str | None = None
    energy_j: float | None = None
    realized_g: float | None = None
    counterfactual_g: float | None = None
    avoided_g: float | None = None
    updated_at: datetime = _utc()


class Run(SQLModel, table=True):
    """One attempt at running a job: the wrapper process and how it ended."""

    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    worker: str
    host: str
    run_dir: str
    gpu_indices: list[int] = Field(sa_column=Column(JSON, nullable=False))
    wrapper_pid: int | None = None
    pid: int | None = None
    claimed_at: datetime = _utc()
    started_at: datetime | None = _utc(default=None)
    finished_at: datetime | None = _utc(default=None)
    exit_code: int | None = None
    reason: str | None = None
    #: When the owning daemon sent SIGTERM (cancel or cold stop); SIGKILL follows after a grace.
    term_sent_at: datetime | None = _utc(default=None)
    #: Metered energy of the run, all meters (J); None when nothing could meter it.
    energy_j: float | None = None
    #: `{"segments": [EnergySeries.to_dict(), ...]}`: one segment per daemon that metered it.
    energy_series: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class ForecastRecord(SQLModel, table=True):
    """One fetched forecast, or one fetched series of realized values, as the provider gave it.

    Points are stored compactly as JSON `[[epoch_s, g_per_kwh, is_estimated | null], ...]`
    (gCO2eq/kWh; each value holds for `[t, t + step_s)`).
    """

    __tablename__ = "forecasts"
    __table_args__ = (Index("ix_forecasts_lookup", "zone", "realized", "source", "issued_at"),)

    id: int | None = Field(default=None, primary_key=True)
    zone: str
    source: str
    signal: str
    emission_factor: str | None = None
    model: str | None = None
    label: str
    #: False: a forecast issued at `issued_at`; True: realized values (history) for accounting.
    realized: bool = False
    issued_at: datetime = _utc()
    fetched_at: datetime = _utc()
    step_s: int
    start: datetime = _utc()
    end: datetime = _utc()
    points: list[list[float | None]] = Field(sa_column=Column(JSON, nullable=False))
