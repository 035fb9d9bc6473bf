"""The job queue: the one API through which every job mutation goes.

Every state change is a compare-and-set (`UPDATE … WHERE id = :id AND state IN (…)`) checked
against `ecoq.states.TRANSITIONS`, so two processes racing on a job (a user cancelling while a
daemon claims it) cannot both win. Requests that need a job's process (cancel, hold or release of a
running job) are written to the job and carried out by the daemon that owns it, so the same calls
work from any shell, box or user.
"""

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.errors import JobNotFound, ValidationError
from ecoq.models import Job, Run
from ecoq.states import ACTIVE, TERMINAL, WAITING, JobState, check_transition

S = JobState
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobSpec:
    """What `ecoq submit` asks for, already parsed. Times are aware UTC."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    user: str
    uid: int
    zone: str
    deadline: datetime
    duration: timedelta
    duration_source: str
    name: str
    project: str | None = None
    gpus: int = 0
    not_before: datetime | None = None
    drop_if_late: bool = False


def validate_spec(spec: JobSpec, now: datetime, *, box_gpus: int) -> None:
    """Check a spec against the clock and the box. Raises ValidationError naming value and fix."""
    if not spec.command:
        raise ValidationError(
            "no command given; pass the script to run, e.g. `ecoq submit train.sh`"
        )
    if spec.duration <= timedelta(0):
        raise ValidationError(f"--duration {spec.duration} must be positive, e.g. --duration 90m")
    if spec.gpus < 0:
        raise ValidationError(f"--gpus {spec.gpus} must be 0 or more")
    if spec.gpus > box_gpus:
        raise ValidationError(
            f"--gpus {spec.gpus} is more than this box has ({box_gpus}); ask for at most "
            f"{box_gpus}, or set site.gpus if GPU detection is wrong"
        )
    if spec.deadline <= now:
        raise ValidationError(
            f"--deadline {_hm(spec.deadline)} is in the past (now {_hm(now)}); "
            "give a later time or a span like --deadline 12h"
        )
    earliest = max(now, spec.not_before or now)
    if spec.deadline < earliest + spec.duration:
        not_before = spec.not_before if spec.not_before and spec.not_before > now else None
        by_not_before = not_before is not None
        if not_before is not None and not_before >= spec.deadline:
            raise ValidationError(
                f"--not-before {_hm(not_before)} is not before --deadline "
                f"{_hm(spec.deadline)}; give an earlier --not-before or a later --deadline"
            )
        raise ValidationError(
            f"--deadline {_hm(spec.deadline)} is {_span(spec.deadline - earliest)} after the "
            f"earliest start {_hm(earliest)}"
            + (" (--not-before)" if by_not_before else "")
            + f" but the job needs --duration {_span(spec.duration)}; "
            + ("give an earlier --not-before, " if by_not_before else "")
            + "extend --deadline or shorten --duration"
        )


def _hm(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Queue:
    """Jobs and runs in one database. Thread-compatible: each call opens its own session."""

    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    # -- submission and lookup -------------------------------------------------------------
    def submit(self, spec: JobSpec) -> Job:
        """Store a new pending job. The caller validates (`validate_spec`) first."""
        now = self.clock()
        job = Job(
            name=spec.name,
            project=spec.project,
            user=spec.user,
            uid=spec.uid,
            command=list(spec.command),
            cwd=spec.cwd,
            env=dict(spec.env),
            zone=spec.zone,
            gpus=spec.gpus,
            submitted_at=now,
            not_before=spec.not_before,
            deadline=spec.deadline,
            duration_s=int(spec.duration.total_seconds()),
            duration_source=spec.duration_source,
            drop_if_late=spec.drop_if_late,
            state=S.PENDING,
            updated_at=now,
        )
        with session(self.engine) as s:
            s.add(job)
            s.commit()
            s.refresh(job)
        return job

    def get(self, job_id: int) -> Job:
        """The job with that id. Raises JobNotFound."""
        with session(self.engine) as s:
            job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}; `ecoq queue --all` lists the jobs")
        return job

    def jobs(self, states: Iterable[JobState]) -> list[Job]:
        """Jobs in any of `states`, oldest first."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Job)
                .where(col(Job.state).in_([str(x) for x in states]))
                .order_by(col(Job.id))
            )
            return list(rows)

    def zones_in_use(self) -> list[str]:
        """Zones of waiting and active jobs, sorted."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Job.zone)
                .where(col(Job.state).in_([str(x) for x in WAITING | ACTIVE]))
                .distinct()
            ).all()
        return sorted(rows)

    def latest_run(self, job_id: int) -> Run | None:
        with session(self.engine) as s:
            return s.exec(
                select(Run).where(Run.job_id == job_id).order_by(col(Run.id).desc()).limit(1)
            ).first()

    def learned_duration_s(self, command: Sequence[str], *, last: int = 5) -> int | None:
        """Median run time in seconds of the last successful runs of the same argv, or None."""
        durations = [
            (j.finished_at - j.started_at).total_seconds()
            for j in self._succeeded_with(list(command), last)
            if j.finished_at and j.started_at
        ]
        return int(statistics.median(durations)) if durations else None

    def _succeeded_with(self, command: list[str], last: int) -> list[Job]:
        with session(self.engine) as s:
            candidates = s.exec(
                select(Job)
                .where(Job.state == str(S.SUCCEEDED))
                .order_by(col(Job.id).desc())
                .limit(500)
            ).all()
        return [j for j in candidates if j.command == command][:last]

    # -- the compare-and-set primitive ------------------------------------------------------
    def transition(
        self, job_id: int, expect: Iterable[JobState], target: JobState, **values: Any
    ) -> bool:
        """Move the job to `target` if it is in one of `expect`; False when it was not.

        Raises IllegalTransition when `expect → target` is not a legal move at all.
        """
        expected = list(expect)
        for state in expected:
            check_transition(job_id, state, target)
        return self._cas(job_id, expected, state=str(target), **values)

    def _cas(self, job_id: int, expect: Sequence[JobState], **values: Any) -> bool:
        values.setdefault("updated_at", self.clock())
        stmt = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state).in_([str(x) for x in expect]))
            .values(**values)
        )
        with session(self.engine) as s:
            result = s.execute(stmt)
            s.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    # -- planning ---------------------------------------------------------------------------
    def set_plan(self, job_id: int, **plan: Any) -> bool:
        """Record a plan (planned_start and its figures) on a waiting job; False if it moved on."""
        return self.transition(
            job_id, [S.PENDING, S.PLANNED], S.PLANNED, planned_at=self.clock(), **plan
        )

    # -- user requests ----------------------------------------------------------------------
    def cancel(self, job_id: int) -> str:
        """Cancel a job. Waiting jobs are cancelled at once ("cancelled"); running or paused ones
        get a request their daemon carries out ("requested"). Raises for finished jobs."""
        job = self.get(job_id)
        now = self.clock()
        if job.state in WAITING and self.transition(
            job_id, WAITING, S.CANCELLED, finished_at=now, reason="cancelled by user"
        ):
            return "cancelled"
        return self._request(job_id, "cancel", ACTIVE)

    def hold(self, job_id: int) -> str:
        """Keep a waiting job from starting ("held"); pause a running one ("requested")."""
        job = self.get(job_id)
        if job.state in WAITING and self._cas(job_id, list(WAITING), held=True, run_now=False):
            return "held"
        return self._request(job_id, "hold", [S.RUNNING])

    def release(self, job_id: int) -> str:
        """Undo `hold`: a waiting job is re-planned ("released"); a paused one resumes."""
        job = self.get(job_id)
        # planned → pending is a legal move and pending stays pending: no transition check needed.
        if job.state in WAITING and self._cas(
            job_id, list(WAITING), state=str(S.PENDING), held=False, planned_start=None
        ):
            return "released"
        return self._request(job_id, "release", [S.PAUSED])

    def run_now(self, job_id: int) -> str:
        """Start a waiting job at the next tick, ignoring carbon ("requested")."""
        job = self.get(job_id)
        now = self.clock()
        if job.state in WAITING and self.transition(
            job_id,
            WAITING,
            S.PLANNED,
            run_now=True,
            held=False,
            planned_start=now,
            planned_at=now,
            plan_reason="started by user (ecoq start)",
        ):
            return "requested"
        raise ValidationError(
            f"job {job_id} is {self.get(job_id).state}; only waiting jobs can start"
        )

    def _request(self, job_id: int, action: str, states: Iterable[JobState]) -> str:
        expect = list(states)
        now = self.clock()
        if self._cas(job_id, expect, request=action, requested_at=now):
            return "requested"
        job = self.get(job_id)
        raise ValidationError(
            f"cannot {action} job {job_id}: it is {job.state}"
            + (" and finished" if job.state in TERMINAL else "")
            + f"; {action} applies to {', '.join(str(s) for s in expect)} or waiting jobs"
        )

    def clear_request(self, job_id: int) -> None:
        with session(self.engine) as s:
            s.execute(update(Job).where(col(Job.id) == job_id).values(request=None))
            s.commit()

    # -- the daemon's side -----------------------------------------------------------------
    def due(self, now: datetime, limit: int = 100) -> list[Job]:
        """Planned, unheld jobs whose start has come, earliest first."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Job)
                .where(
                    Job.state == str(S.PLANNED),
                    col(Job.held).is_(False),
                    col(Job.planned_start) <= now,
                )
                .order_by(col(Job.planned_start), col(Job.id))
                .limit(limit)
            )
            return list(rows)

    def next_start(self) -> datetime | None:
        """The earliest planned start among unheld planned jobs (to wake the daemon then)."""
        with session(self.engine) as s:
            return s.exec(
                select(func.min(Job.planned_start)).where(
                    Job.state == str(S.PLANNED), col(Job.held).is_(False)
                )
            ).one()

    def claim(
        self, job: Job, *, worker: str, host: str, run_dir: str, gpus: list[int]
    ) -> Run | None:
        """Claim a planned job for this daemon and create its run; None if another got it first.

        The claim and the run row commit together, so a job is never running without a run.
        """
        now = self.clock()
        late = now > job.deadline - timedelta(seconds=job.duration_s)
        assert job.id is not None
        with session(self.engine) as s:
            result = s.execute(
                update(Job)
                .where(
                    col(Job.id) == job.id,
                    col(Job.state) == str(S.PLANNED),
                    col(Job.held).is_(False),
                )
                .values(
                    state=str(S.RUNNING), worker=worker, started_at=now, late=late, updated_at=now
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return None
            run = Run(
                job_id=job.id,
                worker=worker,
                host=host,
                run_dir=run_dir,
                gpu_indices=gpus,
                claimed_at=now,
            )
            s.add(run)
            s.commit()
            s.refresh(run)
        return run

    def update_run(self, run_id: int, **values: Any) -> None:
        with session(self.engine) as s:
            s.execute(update(Run).where(col(Run.id) == run_id).values(**values))
            s.commit()

    def active(self, worker: str) -> list[tuple[Job, Run]]:
        """This daemon's running and paused jobs with their latest runs."""
        with session(self.engine) as s:
            jobs = s.exec(
                select(Job)
                .where(col(Job.state).in_([str(x) for x in ACTIVE]), Job.worker == worker)
                .order_by(col(Job.id))
            ).all()
            out: list[tuple[Job, Run]] = []
            for job in jobs:
                run = s.exec(
                    select(Run).where(Run.job_id == job.id).order_by(col(Run.id).desc()).limit(1)
                ).first()
                if run is not None:
                    out.append((job, run))
            return out

    def finish(
        self,
        job: Job,
        run: Run,
        target: JobState,
        *,
        exit_code: int | None,
        finished_at: datetime,
        reason: str | None = None,
        energy_j: float | None = None,
        energy_series: dict[str, Any] | None = None,
    ) -> bool:
        """End a running or paused job and its run together; False if it had already moved.

        `energy_j` (J, None = not metered) and `energy_series` are stored on both when given.
        """
        assert job.id is not None
        for state in ACTIVE:
            check_transition(job.id, state, target)
        with session(self.engine) as s:
            result = s.execute(
                update(Job)
                .where(col(Job.id) == job.id, col(Job.state).in_([str(x) for x in ACTIVE]))
                .values(
                    state=str(target),
                    exit_code=exit_code,
                    finished_at=finished_at,
                    reason=reason,
                    request=None,
                    updated_at=self.clock(),
                    **({} if energy_j is None else {"energy_j": energy_j}),
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            s.execute(
                update(Run)
                .where(col(Run.id) == run.id)
                .values(
                    exit_code=exit_code,
                    finished_at=finished_at,
                    reason=reason,
                    **({} if energy_j is None else {"energy_j": energy_j}),
                    **({} if energy_series is None else {"energy_series": energy_series}),
                )
            )
            s.commit()
        return True

    def expire_overdue(self, now: datetime) -> list[Job]:
        """Expire waiting `--drop-if-late` jobs that can no longer finish by their deadline."""
        expired = []
        for job in self.jobs(WAITING):
            assert job.id is not None
            latest = job.deadline - timedelta(seconds=job.duration_s)
            if (
                job.drop_if_late
                and now > latest
                and self.transition(
                    job.id,
                    WAITING,
                    S.EXPIRED,
                    finished_at=now,
                    reason=f"could not start by its latest start {_hm(latest)} (--drop-if-late)",
                )
            ):
                expired.append(job)
        return expired
