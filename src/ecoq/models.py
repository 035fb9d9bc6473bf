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
    __table_args__ = (
        Index("ix_jobs_state_planned_start", "state", "planned_start"),
        Index("ix_jobs_state_finished_at", "state", "finished_at"),
    )

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
    #: Accounting of its runs (`ecoq.scheduler.reconcile`): provisional, final, final-forecast,
    #: unmetered or no-intensity (see `ecoq.accounting`); None before a run was accounted.
    accounting: str | None = Field(default=None, sa_type=String(16))
    #: The provenance of realized_g / counterfactual_g / avoided_g (its latest run's).
    accounting_signal: str | None = None
    intensity_source: str | None = None
    #: "forecast" or "realized" intensity values.
    intensity_kind: str | None = None
    #: "measured", "estimate", "partly estimate" or "unknown".
    energy_method: str | None = None
    # -- planning in the daemon (migration 0006) --------------------------------------------
    #: The zones the job may run in, home zone first (`--zone DE --zone FR`); None: `[zone]`.
    zones: list[str] | None = Field(default=None, sa_column=Column(JSON))
    #: May be split into segments (`--interruptible`).
    interruptible: bool = False
    #: Most pauses allowed (None: unlimited); the daemon never pauses the job more often.
    max_pauses: int | None = None
    #: Shortest segment worth running, seconds (`--min-segment`).
    min_segment_s: int = 0
    #: The signal that makes the job save its state and exit ("SIGUSR1"); None: SIGSTOP pauses.
    checkpoint_signal: str | None = None
    #: The argv that resumes a checkpointed job (same cwd and environment).
    resume_command: list[str] | None = Field(default=None, sa_column=Column(JSON))
    #: The job's segments, `[[start, end], ...]` as ISO-8601 UTC: those it ran (as they ran)
    #: and those planned. A contiguous job has one.
    segments: list[list[str]] | None = Field(default=None, sa_column=Column(JSON))
    #: Where the plan runs the job (the site's zone), and the figures `ecoq show` explains.
    plan_zone: str | None = None
    plan_candidates: int | None = None
    plan_runner_up_start: datetime | None = _utc(default=None)
    plan_runner_up_g_per_kwh: float | None = None
    plan_runner_up_zone: str | None = None
    #: The plan's saving against starting now (fraction; 0 when it starts now) and the
    #: min_saving it was held to.
    plan_saving: float | None = None
    plan_min_saving: float | None = None
    #: Planned pauses taken so far, and seconds of work done in finished segments.
    pauses: int = 0
    work_done_s: float = 0.0
    #: The running segment: when it started and when its planned pause is due (None: no pause).
    segment_started_at: datetime | None = _utc(default=None)
    segment_end: datetime | None = _utc(default=None)
    #: When the daemon sent the checkpoint signal (the job is expected to exit).
    checkpoint_at: datetime | None = _utc(default=None)
    #: The plan starts the job as early as it can (now, or as soon as there is room): the
    #: dispatcher may start it before `planned_start` when capacity frees up.
    plan_asap: bool = False
    #: A job planned at a Slurm site: the run directory of its held submission in Slurm's queue
    #: (`ecoq.scheduler.slurmdriver`); None: not submitted to Slurm.
    slurm_run_dir: str | None = None


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
    #: Accounting (`ecoq.scheduler.reconcile`, formulas in `ecoq.accounting`): provisional,
    #: final, final-forecast, unmetered or no-intensity; None until the run is accounted.
    accounting: str | None = Field(default=None, sa_type=String(16))
    accounted_at: datetime | None = _utc(default=None)
    #: Provenance: the zone, signal, provider, kind ("forecast"/"realized") and label of the
    #: intensity that weighed the energy, and how the energy was measured.
    intensity_zone: str | None = None
    accounting_signal: str | None = None
    intensity_source: str | None = None
    intensity_kind: str | None = None
    intensity_label: str | None = None
    energy_method: str | None = None
    #: Joules of `energy_j` that came from an estimate, and per device kind (IT energy).
    estimate_energy_j: float | None = None
    cpu_energy_j: float | None = None
    gpu_energy_j: float | None = None
    ram_energy_j: float | None = None
    meter_errors: int | None = None
    pue: float | None = None
    facility_energy_j: float | None = None
    realized_g: float | None = None
    counterfactual_g: float | None = None
    avoided_g: float | None = None
    #: When the counterfactual run ("without ecoq") starts: submission, or --not-before.
    counterfactual_start: datetime | None = _utc(default=None)
    #: SCI's M (g CO2e) from the configured per-device figures; None when none is configured.
    embodied_g: float | None = None
    #: Seconds ecoq made the job wait (start − submission or --not-before), and whether the run
    #: finished after the job's deadline; stored so reports aggregate in SQL.
    delay_s: float | None = None
    deadline_missed: bool | None = None
    #: What the job's `ecoq.track` calls recorded: {"units": {...}, "windows": [...], ...}.
    marks: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    #: When retention thinned out `energy_series` (`ecoq.scheduler.retention`); None: as sampled.
    samples_pruned_at: datetime | None = _utc(default=None)

    __table_args__ = (
        Index("ix_runs_accounting", "accounting"),
        Index("ix_runs_samples_pruned", "samples_pruned_at", "finished_at"),
    )


class RunUnit(SQLModel, table=True):
    """Units of work one run marked with `ecoq.track` (epochs, inferences): SCI's R."""

    __tablename__ = "run_units"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    unit: str
    count: float


class ForecastRecord(SQLModel, table=True):
    """One fetched forecast, or one fetched series of realized values, as the provider gave it.

    Points are stored compactly as JSON `[[epoch_s, g_per_kwh, is_estimated | null], ...]`
    (gCO2eq/kWh; each value holds for `[t, t + step_s)`).
    """

    __tablename__ = "forecasts"
    __table_args__ = (
        Index("ix_forecasts_lookup", "zone", "realized", "source", "issued_at"),
        Index("ix_forecasts_realized_end", "realized", "end"),
        Index("ix_forecasts_compaction", "realized", "compacted_at"),
    )

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
    #: When retention dropped the realized points a newer fetch replaced (`ecoq.scheduler.compact`).
    compacted_at: datetime | None = _utc(default=None)


class DaemonRow(SQLModel, table=True):
    """A daemon that owns jobs (one per site), and its heartbeat.

    Another daemon that sees the heartbeat go stale reconciles the silent daemon's jobs.
    """

    __tablename__ = "daemons"

    #: The worker name: the site name (`site.name`, default the host name).
    name: str = Field(primary_key=True)
    host: str
    pid: int
    zone: str | None = None
    started_at: datetime = _utc()
    heartbeat_at: datetime = _utc()
    #: Set when the daemon stopped cleanly; a stopped daemon is never "stale".
    stopped_at: datetime | None = _utc(default=None)
