"""The daemon's side of the job queue: which jobs are due, claiming one (and checking the claim
still stands just before launch), putting back a claim that never started, ending a run, and the
planned pauses and checkpoints of interruptible jobs. Every change is a compare-and-set on the
job's state (`ecoq.scheduler.queue_core`).
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.faults import fault
from ecoq.models import Job, Run
from ecoq.scheduler.jobspec import hm
from ecoq.scheduler.queue_core import (
    QueueCore,
    close_run,
    ended,
    requeued,
    stopped_daemon,
    worked_s,
)
from ecoq.states import ACTIVE, WAITING, JobState, check_transition

__all__ = ["DaemonSide"]

S = JobState


class DaemonSide(QueueCore):
    """What a daemon does to the jobs it owns."""

    def due(
        self,
        now: datetime,
        limit: int = 100,
        *,
        site: str | None = None,
        max_gpus: int | None = None,
    ) -> list[Job]:
        """Planned, unheld jobs whose start has come, earliest first, then those planned to
        start as early as they can that only wait for room (`plan_asap`); with `site`, only jobs
        planned for that site or for no site in particular; with `max_gpus`, only jobs that need
        no more GPUs than that (so jobs a box can never run do not crowd out those it can)."""
        with session(self.engine) as s:
            where: list[ColumnElement[bool]] = [
                col(Job.state) == str(S.PLANNED),
                col(Job.held).is_(False),
                or_(
                    col(Job.planned_start) <= now,
                    and_(
                        col(Job.plan_asap).is_(True),
                        or_(col(Job.not_before).is_(None), col(Job.not_before) <= now),
                    ),
                ),
            ]
            if site is not None:
                where.append(or_(col(Job.site).is_(None), col(Job.site) == site))
            if max_gpus is not None:
                where.append(col(Job.gpus) <= max_gpus)
            rows = s.exec(
                select(Job).where(*where).order_by(col(Job.planned_start), col(Job.id)).limit(limit)
            )
            return list(rows)

    def next_start(self) -> datetime | None:
        """When a tick next has work (to wake the daemon then): the earliest planned start of an
        unheld planned job or of a job in a planned pause, or the end of a running segment."""
        with session(self.engine) as s:
            start = s.exec(
                select(func.min(Job.planned_start)).where(
                    col(Job.state).in_([str(S.PLANNED), str(S.PAUSED)]), col(Job.held).is_(False)
                )
            ).one()
            end = s.exec(select(func.min(Job.segment_end)).where(Job.state == str(S.RUNNING))).one()
        times = [t for t in (start, end) if t is not None]
        return min(times) if times else None

    def claim(
        self,
        job: Job,
        *,
        worker: str,
        host: str,
        run_dir: str,
        gpus: list[int],
        segment_end: datetime | None = None,
    ) -> Run | None:
        """Claim a planned job for this daemon and create its run; None if another got it first.

        The claim and the run row commit together, so a job is never running without a run. A
        resumed job (after a checkpoint) keeps its first start time; it is late when what is
        left of its work can no longer finish by the deadline. `segment_end` is when the run's
        planned pause is due (None: it runs to the end).

        A daemon that another daemon reconciled as lost (its row in `daemons` is stopped) claims
        nothing until its next heartbeat: what it read before it went silent is stale.
        """
        now = self.clock()
        remaining = max(0.0, job.duration_s - job.work_done_s)
        late = job.late or now > job.deadline - timedelta(seconds=remaining)
        assert job.id is not None
        fault("claim-before")
        with session(self.engine) as s:
            # Row lock first, skipping a row another daemon is claiming (PostgreSQL; SQLite has
            # no FOR UPDATE and serialises writers instead), then the compare-and-set decides.
            locked = s.exec(
                select(Job.id).where(col(Job.id) == job.id).with_for_update(skip_locked=True)
            ).first()
            if locked is None:
                s.rollback()
                return None
            result = s.execute(
                update(Job)
                .where(
                    col(Job.id) == job.id,
                    col(Job.state) == str(S.PLANNED),
                    col(Job.held).is_(False),
                    ~stopped_daemon(worker),
                )
                .values(
                    state=str(S.RUNNING),
                    worker=worker,
                    started_at=job.started_at or now,
                    late=late,
                    updated_at=now,
                    segment_started_at=now,
                    segment_end=segment_end,
                    checkpoint_at=None,
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
        fault("claim-after")
        return run

    def claim_holds(self, job_id: int, run_id: int, worker: str) -> bool:
        """Whether `worker`'s claim that created run `run_id` still stands: the job is still
        running as its, the run is its latest and open, and the daemon was not reconciled as
        lost meanwhile. A daemon checks this just before it launches a claimed job, so one that
        stalled between claim and launch never starts a job another daemon has failed."""
        newer = select(Run.id).where(col(Run.job_id) == job_id, col(Run.id) > run_id)
        with session(self.engine) as s:
            found = s.exec(
                select(Run.id)
                .join(Job, col(Job.id) == col(Run.job_id))
                .where(
                    col(Run.id) == run_id,
                    col(Run.job_id) == job_id,
                    col(Run.finished_at).is_(None),
                    col(Job.state) == str(S.RUNNING),
                    col(Job.worker) == worker,
                    ~newer.exists(),
                    ~stopped_daemon(worker),
                )
            ).first()
        return found is not None

    def requeue(self, job_id: int, now: datetime) -> JobState | None:
        """Put a running job whose run never started (its start token was taken from the
        wrapper) back to wait, carrying out its user's cancel or hold (`queue_core.requeued`);
        returns its new state (`pending` or `cancelled`), None if it was no longer running."""
        for target in (S.PENDING, S.CANCELLED):
            check_transition(job_id, S.RUNNING, target)
        if not self._cas_where(job_id, [S.RUNNING], [], **requeued(now)):
            return None
        return self.get(job_id).state

    def active(self, worker: str | None) -> list[tuple[Job, Run]]:
        """A daemon's running and paused jobs with their latest runs (every daemon's with
        `worker` None), in two queries whatever their number."""
        with session(self.engine) as s:
            where: list[ColumnElement[bool]] = [col(Job.state).in_([str(x) for x in ACTIVE])]
            if worker is not None:
                where.append(col(Job.worker) == worker)
            jobs = s.exec(select(Job).where(*where).order_by(col(Job.id))).all()
            if not jobs:
                return []
            ids = [j.id for j in jobs]
            newest = (
                select(func.max(Run.id)).where(col(Run.job_id).in_(ids)).group_by(col(Run.job_id))
            )
            runs = {r.job_id: r for r in s.exec(select(Run).where(col(Run.id).in_(newest)))}
            return [(job, runs[job.id]) for job in jobs if job.id in runs]

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

        `energy_j` (J, None = not metered) and `energy_series` are the run's and are stored on
        it when given; the job's energy is the sum over its runs (earlier checkpointed runs'
        energy is already on the job).
        """
        assert job.id is not None
        for state in ACTIVE:
            check_transition(job.id, state, target)
        earlier = job.energy_j if job.pauses and job.checkpoint_signal else None
        job_energy = None if energy_j is None else (earlier or 0.0) + energy_j
        with session(self.engine) as s:
            result = s.execute(
                update(Job)
                .where(col(Job.id) == job.id, col(Job.state).in_([str(x) for x in ACTIVE]))
                .values(
                    **ended(
                        job,
                        target,
                        finished_at,
                        exit_code=exit_code,
                        reason=reason,
                        updated_at=self.clock(),
                        **({} if job_energy is None else {"energy_j": job_energy}),
                    )
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            fault("finish-txn")
            s.execute(close_run(run, exit_code, finished_at, reason, energy_j, energy_series))
            s.commit()
        fault("finish-after")
        return True

    def expire_overdue(self, now: datetime) -> list[Job]:
        """Expire waiting `--drop-if-late` jobs whose remaining work can no longer finish by
        their deadline."""
        with session(self.engine) as s:
            candidates = list(
                s.exec(
                    select(Job).where(
                        col(Job.state).in_([str(x) for x in WAITING]),
                        col(Job.drop_if_late).is_(True),
                    )
                )
            )
        expired = []
        for job in candidates:
            assert job.id is not None
            latest = job.deadline - timedelta(seconds=max(0.0, job.duration_s - job.work_done_s))
            if now > latest and self.transition(
                job.id,
                WAITING,
                S.EXPIRED,
                finished_at=now,
                reason=f"could not start by its latest start {hm(latest)} (--drop-if-late)",
            ):
                expired.append(job)
        return expired

    # -- pauses -----------------------------------------------------------------------------
    def pause_for_plan(
        self, job: Job, now: datetime, *, next_start: datetime, segments: list[list[str]]
    ) -> bool:
        """A planned pause (SIGSTOP sent): running → paused until `next_start`. Counts the pause
        and the segment's work; the GPUs stay with the job. False if the job moved on."""
        assert job.id is not None
        return self._move(
            job.id,
            [S.RUNNING],
            S.PAUSED,
            [col(Job.held).is_(False), col(Job.request).is_(None)],
            pauses=col(Job.pauses) + 1,
            work_done_s=col(Job.work_done_s) + worked_s(job, now),
            planned_start=next_start,
            segment_started_at=None,
            segment_end=None,
            segments=segments,
        )

    def resume_for_plan(self, job: Job, now: datetime, *, segment_end: datetime | None) -> bool:
        """The next segment of a job in a planned pause begins: paused → running (before the
        SIGCONT). Never resumes a job the user holds. False if the job moved on."""
        assert job.id is not None
        return self._move(
            job.id,
            [S.PAUSED],
            S.RUNNING,
            [col(Job.held).is_(False), col(Job.request).is_(None)],
            segment_started_at=now,
            segment_end=segment_end,
        )

    def user_pause(self, job: Job, now: datetime) -> bool:
        """`ecoq hold` of a running job (SIGSTOP sent): running → paused, held, until
        `ecoq release`; the planner never resumes it."""
        assert job.id is not None
        return self._move(
            job.id,
            [S.RUNNING],
            S.PAUSED,
            [],
            held=True,
            request=None,
            planned_start=None,
            work_done_s=col(Job.work_done_s) + worked_s(job, now),
            segment_started_at=None,
        )

    def user_resume(self, job: Job, now: datetime, *, segment_end: datetime | None) -> bool:
        """`ecoq release` of a job the user paused: paused → running (before the SIGCONT)."""
        assert job.id is not None
        return self._move(
            job.id,
            [S.PAUSED],
            S.RUNNING,
            [],
            held=False,
            request=None,
            segment_started_at=now,
            segment_end=segment_end,
        )

    def mark_checkpoint(self, job: Job, now: datetime) -> bool:
        """Record that the checkpoint signal was sent (the job should now save and exit)."""
        assert job.id is not None
        return self._cas_where(
            job.id, [S.RUNNING], [col(Job.checkpoint_at).is_(None)], checkpoint_at=now
        )

    def checkpointed(
        self,
        job: Job,
        run: Run,
        *,
        exit_code: int | None,
        finished_at: datetime,
        reason: str,
        next_start: datetime | None,
        segments: list[list[str]],
        energy_j: float | None = None,
        energy_series: dict[str, Any] | None = None,
    ) -> bool:
        """A checkpoint pause ended the run: record the run, count the pause and the work done,
        and put the job back to wait for its next segment (`planned` at `next_start`; `pending`,
        to be planned again, when there is none). Its GPUs are free. A hold requested meanwhile
        becomes the `held` flag. False if the job moved on, or if its user asked to cancel it
        meanwhile (the next reap ends it `cancelled`)."""
        assert job.id is not None
        target = S.PLANNED if next_start is not None else S.PENDING
        total = None if energy_j is None else (job.energy_j or 0.0) + energy_j
        with session(self.engine) as s:
            result = s.execute(
                update(Job)
                .where(
                    col(Job.id) == job.id,
                    col(Job.state) == str(S.RUNNING),
                    or_(col(Job.request).is_(None), col(Job.request) != "cancel"),
                )
                .values(
                    state=str(target),
                    pauses=col(Job.pauses) + 1,
                    work_done_s=col(Job.work_done_s) + worked_s(job, finished_at),
                    planned_start=next_start,
                    segment_started_at=None,
                    segment_end=None,
                    checkpoint_at=None,
                    worker=None,
                    request=None,
                    held=job.held or job.request == "hold",
                    segments=segments,
                    plan_asap=False,
                    updated_at=self.clock(),
                    **({} if total is None else {"energy_j": total}),
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            s.execute(close_run(run, exit_code, finished_at, reason, energy_j, energy_series))
            s.commit()
        return True

    def set_segment_end(self, job_id: int, end: datetime | None) -> bool:
        """Move (or clear: run to the end) the planned pause of a running job."""
        return self._cas(job_id, [S.RUNNING], segment_end=end)
