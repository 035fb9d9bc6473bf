"""The job queue's core: the compare-and-set primitive and the SQL pieces the daemon's side
(`ecoq.scheduler.queue_daemon`: claiming, reaping, planned pauses) and
`ecoq.scheduler.queue.Queue` (user-facing calls, submission, planning) build on. Job SQL lives
in these three modules only.

Every state change is a compare-and-set (`UPDATE … WHERE id = :id AND state IN (…)`) checked
against `ecoq.states.TRANSITIONS`, so two processes racing on a job cannot both win. (The runs
of a daemon reconciled as lost have their own SQL, in `ecoq.scheduler.lost`.)
"""

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, exists, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.errors import JobNotFound
from ecoq.faults import fault
from ecoq.models import DaemonRow, Job, Run
from ecoq.states import JobState, check_transition

__all__ = [
    "CANCELLED_UNSTARTED",
    "Clock",
    "QueueCore",
    "close_run",
    "ended",
    "requeued",
    "stopped_daemon",
    "utcnow",
    "worked_s",
]

S = JobState
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def close_run(
    run: Run,
    exit_code: int | None,
    finished_at: datetime,
    reason: str | None,
    energy_j: float | None,
    energy_series: dict[str, Any] | None,
) -> Any:
    """The UPDATE that records how a run ended (energy only when metered)."""
    return (
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


def stopped_daemon(worker: str) -> ColumnElement[bool]:
    """True when daemon `worker` has a row marked stopped (reconciled as lost, or stopped and
    not yet started again). A worker without a row (tests, `Queue` used alone) is not."""
    return exists().where(col(DaemonRow.name) == worker, col(DaemonRow.stopped_at).is_not(None))


def ended(job: Job, state: JobState, finished_at: datetime, **values: Any) -> dict[str, Any]:
    """The job's columns when it ends in `state` at `finished_at` (its open segment's work
    counted, no request or segment left), with `values` (exit code, reason, …) on top."""
    return {
        "state": str(state),
        "finished_at": finished_at,
        "request": None,
        "segment_end": None,
        "checkpoint_at": None,
        "work_done_s": col(Job.work_done_s) + worked_s(job, finished_at),
        "segment_started_at": None,
        **values,
    }


#: The reason of a job whose user cancelled it while its claim never started.
CANCELLED_UNSTARTED = "cancelled by user before it started"


def requeued(now: datetime) -> dict[str, Any]:
    """The job's columns when a claim that never started goes back to wait (`pending`, to be
    planned again), as SQL on the row being updated.

    What its user asked while the job looked running is carried out in the same statement,
    since no daemon acts on the request of a waiting job: a cancel ends it `cancelled` at
    `now`, a hold becomes the `held` flag, anything else lapses. A resumed job keeps its first
    start.
    """
    cancel = col(Job.request) == "cancel"
    return {
        "state": case((cancel, str(S.CANCELLED)), else_=str(S.PENDING)),
        "finished_at": case((cancel, now), else_=None),
        "reason": case((cancel, CANCELLED_UNSTARTED), else_=None),
        "exit_code": None,
        "held": case((col(Job.request) == "hold", True), else_=col(Job.held)),
        "request": None,
        "worker": None,
        "started_at": case((col(Job.pauses) > 0, col(Job.started_at)), else_=None),
        "planned_start": None,
        "segment_started_at": None,
        "segment_end": None,
        "checkpoint_at": None,
    }


def worked_s(job: Job, until: datetime) -> float:
    """Seconds of work in the job's running segment up to `until` (0 when none runs)."""
    if job.segment_started_at is None:
        return 0.0
    return max(0.0, (until - job.segment_started_at).total_seconds())


class QueueCore:
    """Jobs and runs in one database. Thread-compatible: each call opens its own session."""

    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

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

    def latest_run(self, job_id: int) -> Run | None:
        with session(self.engine) as s:
            return s.exec(
                select(Run).where(Run.job_id == job_id).order_by(col(Run.id).desc()).limit(1)
            ).first()

    # -- the compare-and-set primitive ------------------------------------------------------
    def transition(
        self, job_id: int, expect: Iterable[JobState], target: JobState, **values: Any
    ) -> bool:
        """Move the job to `target` if it is in one of `expect`; False when it was not.

        Raises IllegalTransition when `expect → target` is not a legal move at all.
        """
        return self._move(job_id, list(expect), target, [], **values)

    def _move(
        self,
        job_id: int,
        expect: Sequence[JobState],
        target: JobState,
        extra: Sequence[ColumnElement[bool]],
        **values: Any,
    ) -> bool:
        for state in expect:
            check_transition(job_id, state, target)
        return self._cas_where(job_id, expect, extra, state=str(target), **values)

    def _cas(self, job_id: int, expect: Sequence[JobState], **values: Any) -> bool:
        return self._cas_where(job_id, expect, [], **values)

    def _cas_where(
        self,
        job_id: int,
        expect: Sequence[JobState],
        extra: Sequence[ColumnElement[bool]],
        **values: Any,
    ) -> bool:
        """`_cas` with more conditions on the row (all must hold)."""
        values.setdefault("updated_at", self.clock())
        stmt = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state).in_([str(x) for x in expect]), *extra)
            .values(**values)
        )
        with session(self.engine) as s:
            moved = bool(s.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]
            s.commit()
        if moved:
            fault("transition")
        return moved

    def clear_request(self, job_id: int) -> None:
        with session(self.engine) as s:
            s.execute(update(Job).where(col(Job.id) == job_id).values(request=None))
            s.commit()

    def update_run(self, run_id: int, **values: Any) -> None:
        with session(self.engine) as s:
            s.execute(update(Run).where(col(Run.id) == run_id).values(**values))
            s.commit()
        fault("update-run")
