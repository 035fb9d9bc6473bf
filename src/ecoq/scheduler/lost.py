"""Runs reconciled as lost, and what their own daemon records when it comes back.

A daemon silent for `daemon.stale_after_s` is declared lost by another daemon, which cannot see
that box's processes: its running jobs end `failed` with `lost_reason` ("outcome unknown"), on
the job and on its run. The box may come back (a network partition, a suspended VM, a clock
that drifted): its jobs' wrappers kept running and recorded how they really ended. The daemon
that owns such a run then applies what really happened, once (`LostRuns.settle`, `revive`,
`requeue`). Every step is a compare-and-set:

- the run is updated only while it still carries the lost reason (so only once);
- the job is changed only while it is exactly as the reconciliation left it: `failed` with the
  lost reason, still this daemon's, and this run its latest. A job that was retried, started
  elsewhere or cancelled since keeps its state; only the run row gets the truth.

A reconciler fails a job only while the lost daemon is still lost (`LostRuns.fail`), in the same
transaction that checks it, so a daemon that comes back in the middle of its own reconciliation
keeps the jobs not yet failed.
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, update
from sqlmodel import Session, col, select

from ecoq.db import session
from ecoq.models import DaemonRow, Job, Run
from ecoq.scheduler.queue_core import Clock, ended, requeued, utcnow
from ecoq.states import ACTIVE, JobState

__all__ = ["LOST_REASON_LIKE", "LostRuns", "lost_reason"]

S = JobState

#: Matches every reason `lost_reason` writes (an SQL LIKE pattern).
LOST_REASON_LIKE = "its daemon % stopped heartbeating (%); reconciled by %: outcome unknown"


def lost_reason(lost: str, last_seen: datetime | None, stale_after: timedelta, by: str) -> str:
    """The reason a reconciler gives a lost daemon's job and run."""
    seen = last_seen.isoformat() if last_seen is not None else "?"
    return (
        f"its daemon {lost} stopped heartbeating (last seen {seen}, stale after "
        f"{int(stale_after.total_seconds())} s); reconciled by {by}: outcome unknown"
    )


def _untouched(job: Job, run: Run) -> list[ColumnElement[bool]]:
    """The job is exactly as the reconciliation left it: failed with the run's lost reason,
    still the run's daemon's, and the run is its latest (no retry made another)."""
    newer = select(Run.id).where(col(Run.job_id) == job.id, col(Run.id) > run.id)
    return [
        col(Job.id) == job.id,
        col(Job.state) == str(S.FAILED),
        col(Job.worker) == run.worker,
        col(Job.reason) == run.reason,
        ~newer.exists(),
    ]


def _unsettled(run: Run) -> list[ColumnElement[bool]]:
    """The run still carries the reconciler's reason (nobody recorded its truth yet)."""
    return [col(Run.id) == run.id, col(Run.reason) == run.reason, col(Run.exit_code).is_(None)]


def _moved(s: Session, stmt: Any) -> bool:
    return bool(s.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]


class LostRuns:
    """The SQL of lost runs: the reconciler's failure and the owner's settlement."""

    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def fail(self, job: Job, run: Run, *, lost: str, reconciled_at: datetime, reason: str) -> bool:
        """Fail an active job of the lost daemon `lost` and close its run, unknown outcome;
        only while `lost` is still the daemon this reconciliation stopped at `reconciled_at`
        (it has not heartbeat since) and the job is still its. False: left alone."""
        assert job.id is not None and run.id is not None
        with session(self.engine) as s:
            # Lock the daemon's row (PostgreSQL; SQLite serialises writers): its heartbeat waits
            # for this transaction, and a heartbeat that came first makes the check fail.
            still_lost = s.exec(
                select(DaemonRow.name)
                .where(col(DaemonRow.name) == lost, col(DaemonRow.stopped_at) == reconciled_at)
                .with_for_update()
            ).first()
            if still_lost is None:
                s.rollback()
                return False
            failed = _moved(
                s,
                update(Job)
                .where(
                    col(Job.id) == job.id,
                    col(Job.worker) == lost,
                    col(Job.state).in_([str(x) for x in ACTIVE]),
                )
                .values(
                    **ended(
                        job,
                        S.FAILED,
                        reconciled_at,
                        exit_code=None,
                        reason=reason,
                        updated_at=self.clock(),
                        # A user's request stays for the owner: a job it revives acts on it,
                        # one it requeues is cancelled or held as asked.
                        request=col(Job.request),
                    )
                ),
            )
            if not failed:
                s.rollback()
                return False
            s.execute(
                update(Run)
                .where(col(Run.id) == run.id)
                .values(exit_code=None, finished_at=reconciled_at, reason=reason)
            )
            s.commit()
        return True

    def find(self, worker: str) -> list[tuple[Job, Run]]:
        """The runs of daemon `worker` that another daemon closed as lost and whose truth is
        not recorded yet, with their jobs, oldest first."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Job, Run)
                .join(Run, col(Run.job_id) == col(Job.id))
                .where(
                    col(Run.worker) == worker,
                    col(Run.finished_at).is_not(None),
                    col(Run.exit_code).is_(None),
                    col(Run.reason).like(LOST_REASON_LIKE),
                )
                .order_by(col(Run.id))
            ).all()
        return [(job, run) for job, run in rows]

    def settle(
        self,
        job: Job,
        run: Run,
        target: JobState,
        *,
        exit_code: int | None,
        finished_at: datetime,
        reason: str | None,
        started_at: datetime | None = None,
        pid: int | None = None,
        energy_j: float | None = None,
        energy_series: dict[str, Any] | None = None,
    ) -> str | None:
        """Record how a lost run really ended; the job too (`target`, its exit code, end, energy
        and work) when it is untouched since the reconciliation. The run is accounted again.

        Returns "job" (both recorded), "run" (the job had moved on: only the run) or None (the
        run was settled already).
        """
        assert job.id is not None and run.id is not None and run.finished_at is not None
        run_values: dict[str, Any] = {
            "exit_code": exit_code,
            "finished_at": finished_at,
            "reason": reason,
            "accounting": None,  # accounted (if at all) with no energy: again, with the truth
            "accounted_at": None,
            **(
                {}
                if run.started_at is not None or started_at is None
                else {"started_at": started_at}
            ),
            **({} if run.pid is not None or pid is None else {"pid": pid}),
            **({} if energy_j is None else {"energy_j": energy_j}),
            **({} if energy_series is None else {"energy_series": energy_series}),
        }
        earlier = job.energy_j if job.pauses and job.checkpoint_signal else None
        job_values: dict[str, Any] = {
            "state": str(target),
            "exit_code": exit_code,
            "finished_at": finished_at,
            "reason": reason,
            "request": None,
            "updated_at": self.clock(),
            # The reconciler counted the work up to its own time; the job ran until `finished_at`.
            "work_done_s": max(
                0.0, job.work_done_s + (finished_at - run.finished_at).total_seconds()
            ),
            **({} if energy_j is None else {"energy_j": (earlier or 0.0) + energy_j}),
        }
        return self._apply(job, run, run_values, job_values)

    def revive(self, job: Job, run: Run, *, started_at: datetime | None, pid: int | None) -> bool:
        """A lost run whose job still runs: reopen the run and put the untouched job back to
        `running` (this daemon's again), so it is reaped, metered and cancellable as before.
        Its segment runs to the end (a planned pause is dropped). False: the job moved on (or
        the run was settled), and nothing changed."""
        assert run.finished_at is not None
        run_values: dict[str, Any] = {
            "exit_code": None,
            "finished_at": None,
            "reason": None,
            **(
                {}
                if run.started_at is not None or started_at is None
                else {"started_at": started_at}
            ),
            **({} if run.pid is not None or pid is None else {"pid": pid}),
        }
        job_values: dict[str, Any] = {
            "state": str(S.RUNNING),
            "exit_code": None,
            "finished_at": None,
            "reason": None,
            "updated_at": self.clock(),
            # The reconciler counted the work up to its own time: the segment goes on from there.
            "segment_started_at": run.finished_at,
            "segment_end": None,
        }
        return self._apply(job, run, run_values, job_values, job_only=True) == "job"

    def requeue(self, job: Job, run: Run, *, reason: str) -> str | None:
        """A lost run whose job provably never started (its start token was taken): record that
        on the run, and put the untouched job back in the queue (`pending`; `cancelled` if its
        user asked, see `queue_core.requeued`), as a daemon does with a claim it never
        launched. Returns as `settle`."""
        assert run.finished_at is not None
        run_values: dict[str, Any] = {"reason": reason}
        now = self.clock()
        job_values: dict[str, Any] = {
            **requeued(now),
            "updated_at": now,
            # The reconciler counted work from the claim to its own time; none was done.
            "work_done_s": max(
                0.0, job.work_done_s - (run.finished_at - run.claimed_at).total_seconds()
            ),
        }
        return self._apply(job, run, run_values, job_values)

    def _apply(
        self,
        job: Job,
        run: Run,
        run_values: dict[str, Any],
        job_values: dict[str, Any],
        *,
        job_only: bool = False,
    ) -> str | None:
        """One transaction: the run (only while unsettled), then the job (only if untouched).
        With `job_only`, nothing is written unless the job can be changed too."""
        with session(self.engine) as s:
            if not _moved(s, update(Run).where(*_unsettled(run)).values(**run_values)):
                s.rollback()
                return None
            if _moved(s, update(Job).where(*_untouched(job, run)).values(**job_values)):
                s.commit()
                return "job"
            if job_only:
                s.rollback()
                return None
            s.commit()
        return "run"
