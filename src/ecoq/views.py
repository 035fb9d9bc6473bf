"""The public job object and the read-only queries behind `ecoq queue` and `ecoq show`.

Reads go through a tiny `Reader` (plain SQL, rows as dicts) rather than the ORM, so that listing
the queue of a local SQLite database needs only the stdlib `sqlite3`: importing SQLAlchemy and
SQLModel alone costs more than `ecoq queue` may take. Other databases use
`ecoq.db.EngineReader`; both run the same SQL and build the same `JobView`.
"""

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ecoq.states import ACTIVE, WAITING, JobState


class Reader(Protocol):
    """Runs one read-only SQL statement with `:name` parameters; rows come back as dicts."""

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...


class SqliteReader:
    """A `Reader` on a SQLite file, opened read-only with the stdlib driver."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        self._conn.row_factory = sqlite3.Row

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [dict(row) for row in self._conn.execute(sql, dict(params))]

    def tuples(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """`query`'s rows as tuples in column order: no dict per row (reports read 100,000)."""
        cursor = self._conn.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, dict(params)).fetchall()

    def close(self) -> None:
        self._conn.close()


def sqlite_path(url: str) -> Path | None:
    """The file behind a `sqlite:///…` URL, or None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def fast_reader(url: str) -> SqliteReader | None:
    """A stdlib reader when `url` is a SQLite file already at the current schema, else None
    (the caller then opens the database through `ecoq.db`, which creates or migrates it)."""
    from ecoq.migrations import HEAD

    path = sqlite_path(url)
    if path is None or sqlite_revision(path) != HEAD:
        return None
    return SqliteReader(path)


def sqlite_revision(path: Path) -> str | None:
    """The schema revision of a SQLite file, None when it has no ecoq schema (or no file)."""
    if not path.exists():
        return None
    try:
        reader = SqliteReader(path)
        try:
            rows = reader.query("SELECT version_num FROM alembic_version", {})
        finally:
            reader.close()
    except sqlite3.Error:
        return None
    return str(rows[0]["version_num"]) if rows else None


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _spans(stored: Any) -> list[tuple[datetime, datetime]] | None:
    """Stored segments (`[[start, end], ...]`, ISO-8601) as aware UTC pairs."""
    if not stored:
        return None
    out = []
    for a, b in stored:
        start, end = _time(a), _time(b)
        if start is not None and end is not None:
            out.append((start, end))
    return out


def iso(when: datetime | None) -> str | None:
    """ISO-8601 UTC with a `Z`, as every `--json` output writes times."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class JobView:
    """A job as users and scripts see it (the design doc's job object)."""

    id: int
    name: str
    state: JobState
    command: list[str]
    cwd: str
    user: str
    project: str | None
    zone: str
    site: str | None
    gpus: int
    submitted_at: datetime
    not_before: datetime | None
    deadline: datetime
    duration_s: int
    duration_source: str
    drop_if_late: bool
    late: bool
    held: bool
    run_now: bool
    request: str | None
    planned_start: datetime | None
    plan_g_per_kwh: float | None
    now_g_per_kwh: float | None
    plan_signal: str | None
    plan_source: str | None
    plan_label: str | None
    plan_reason: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    reason: str | None
    energy_j: float | None
    realized_g: float | None
    counterfactual_g: float | None
    avoided_g: float | None
    zones: list[str] | None = None
    interruptible: bool = False
    max_pauses: int | None = None
    min_segment_s: int = 0
    checkpoint_signal: str | None = None
    resume_command: list[str] | None = None
    segments: list[tuple[datetime, datetime]] | None = None
    plan_zone: str | None = None
    plan_candidates: int | None = None
    plan_runner_up_start: datetime | None = None
    plan_runner_up_g_per_kwh: float | None = None
    plan_runner_up_zone: str | None = None
    plan_saving: float | None = None
    plan_min_saving: float | None = None
    pauses: int = 0
    work_done_s: float = 0.0

    @property
    def allowed_zones(self) -> list[str]:
        """The zones the job may run in, home zone first."""
        return list(self.zones) if self.zones else [self.zone]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "JobView":
        """Build from a `jobs` row as any driver returns it (strings or datetimes, JSON text)."""
        return cls(
            id=int(row["id"]),
            name=row["name"],
            state=JobState(row["state"]),
            command=list(_json(row["command"])),
            cwd=row["cwd"],
            user=row["user"],
            project=row["project"],
            zone=row["zone"],
            site=row["site"],
            gpus=int(row["gpus"]),
            submitted_at=_time(row["submitted_at"]) or datetime.min.replace(tzinfo=UTC),
            not_before=_time(row["not_before"]),
            deadline=_time(row["deadline"]) or datetime.min.replace(tzinfo=UTC),
            duration_s=int(row["duration_s"]),
            duration_source=row["duration_source"],
            drop_if_late=bool(row["drop_if_late"]),
            late=bool(row["late"]),
            held=bool(row["held"]),
            run_now=bool(row["run_now"]),
            request=row["request"],
            planned_start=_time(row["planned_start"]),
            plan_g_per_kwh=row["plan_g_per_kwh"],
            now_g_per_kwh=row["now_g_per_kwh"],
            plan_signal=row["plan_signal"],
            plan_source=row["plan_source"],
            plan_label=row["plan_label"],
            plan_reason=row["plan_reason"],
            worker=row["worker"],
            started_at=_time(row["started_at"]),
            finished_at=_time(row["finished_at"]),
            exit_code=row["exit_code"],
            reason=row["reason"],
            energy_j=row["energy_j"],
            realized_g=row["realized_g"],
            counterfactual_g=row["counterfactual_g"],
            avoided_g=row["avoided_g"],
            zones=_json(row["zones"]),
            interruptible=bool(row["interruptible"]),
            max_pauses=row["max_pauses"],
            min_segment_s=int(row["min_segment_s"] or 0),
            checkpoint_signal=row["checkpoint_signal"],
            resume_command=_json(row["resume_command"]),
            segments=_spans(_json(row["segments"])),
            plan_zone=row["plan_zone"],
            plan_candidates=row["plan_candidates"],
            plan_runner_up_start=_time(row["plan_runner_up_start"]),
            plan_runner_up_g_per_kwh=row["plan_runner_up_g_per_kwh"],
            plan_runner_up_zone=row["plan_runner_up_zone"],
            plan_saving=row["plan_saving"],
            plan_min_saving=row["plan_min_saving"],
            pauses=int(row["pauses"] or 0),
            work_done_s=float(row["work_done_s"] or 0.0),
        )

    @classmethod
    def from_model(cls, job: Any) -> "JobView":
        """Build from an `ecoq.models.Job` (or anything with the same attributes)."""
        return cls.from_row({name: getattr(job, name) for name in _FIELDS})

    def to_json(self) -> dict[str, Any]:
        """The `--json` object: the design doc's keys first, then ecoq's extra detail."""
        return {
            "id": self.id,
            "name": self.name,
            "state": str(self.state),
            "command": self.command,
            "zone": self.zone,
            "site": self.site,
            "submitted_at": iso(self.submitted_at),
            "deadline": iso(self.deadline),
            "planned_start": iso(self.planned_start),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "exit_code": self.exit_code,
            "energy_j": self.energy_j,
            "realized_g": self.realized_g,
            "counterfactual_g": self.counterfactual_g,
            "avoided_g": self.avoided_g,
            "signal": self.plan_signal,
            "cwd": self.cwd,
            "user": self.user,
            "project": self.project,
            "gpus": self.gpus,
            "not_before": iso(self.not_before),
            "duration_s": self.duration_s,
            "duration_source": self.duration_source,
            "drop_if_late": self.drop_if_late,
            "late": self.late,
            "held": self.held,
            "request": self.request,
            "plan_g_per_kwh": self.plan_g_per_kwh,
            "now_g_per_kwh": self.now_g_per_kwh,
            "plan_source": self.plan_source,
            "plan_label": self.plan_label,
            "plan_reason": self.plan_reason,
            "reason": self.reason,
            "zones": self.allowed_zones,
            "segments": [{"start": iso(a), "end": iso(b)} for a, b in self.segments or []],
            "interruptible": self.interruptible,
            "max_pauses": self.max_pauses,
            "min_segment_s": self.min_segment_s,
            "checkpoint_signal": self.checkpoint_signal,
            "resume_command": self.resume_command,
            "pauses": self.pauses,
            "plan_zone": self.plan_zone,
            "plan_candidates": self.plan_candidates,
            "plan_runner_up_start": iso(self.plan_runner_up_start),
            "plan_runner_up_g_per_kwh": self.plan_runner_up_g_per_kwh,
            "plan_saving_fraction": self.plan_saving,
            "plan_min_saving_fraction": self.plan_min_saving,
        }


_FIELDS = list(JobView.__dataclass_fields__)
_COLUMNS = ", ".join(f'"{name}"' for name in _FIELDS)


def list_jobs(reader: Reader, *, include_finished: bool = False) -> list[JobView]:
    """Jobs by id; only waiting and active ones unless `include_finished`."""
    if include_finished:
        rows = reader.query(f"SELECT {_COLUMNS} FROM jobs ORDER BY id", {})
    else:
        states = sorted(WAITING | ACTIVE)
        marks = ", ".join(f":s{i}" for i in range(len(states)))
        rows = reader.query(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id",
            {f"s{i}": str(s) for i, s in enumerate(states)},
        )
    return [JobView.from_row(r) for r in rows]


def get_job(reader: Reader, job_id: int) -> JobView | None:
    """One job, or None when no job has that id."""
    rows = reader.query(f"SELECT {_COLUMNS} FROM jobs WHERE id = :id", {"id": job_id})
    return JobView.from_row(rows[0]) if rows else None


def latest_run_dir(reader: Reader, job_id: int) -> Path | None:
    """The folder of the job's latest run (it holds `output.log`), or None before any run."""
    rows = reader.query(
        "SELECT run_dir FROM runs WHERE job_id = :id ORDER BY id DESC LIMIT 1", {"id": job_id}
    )
    return Path(rows[0]["run_dir"]) if rows else None
