"""The job queue: the one API through which every job mutation goes.

Every state change is a compare-and-set (`UPDATE … WHERE id = :id AND state IN (…)`) checked
against `ecoq.states.TRANSITIONS`, so two processes racing on a job (a user cancelling while a
daemon claims it) cannot both win. Requests that need a job's process (cancel, hold or release of a
running job) are written to the job and carried out by the daemon that owns it, so the same calls
work from any shell, box or user. The primitive and the daemon's side (claim, reap, planned
pauses) are in `ecoq.scheduler.queue_core` and `ecoq.scheduler.queue_daemon`; job SQL lives in
these three modules only.
"""

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.errors import ValidationError
from ecoq.faults import fault
from ecoq.models import DaemonRow, Job, Run
from ecoq.scheduler.jobspec import JobSpec, parse_signal, validate_spec
from ecoq.scheduler.queue_core import Clock, utcnow
from ecoq.scheduler.queue_daemon import DaemonSide
from ecoq.states import ACTIVE, TERMINAL, WAITING, JobState

__all__ = ["Clock", "JobSpec", "Queue", "utcnow", "validate_spec"]

S = JobState
#: How often a user's request is tried on a job that keeps moving under it before giving up.
_ATTEMPTS = 3


class Queue(DaemonSide):
    """Jobs and runs in one database. Thread-compatible: each call opens its own session."""

    # -- submission and lookup -------------------------------------------------------------
    def submit(self, spec: JobSpec) -> Job:
        """Store a new pending job. The caller validates (`validate_spec`) first."""
        job = self.new_job(spec)
        with session(self.engine) as s:
            s.add(job)
            s.commit()
            s.refresh(job)
        return job

    def new_job(self, spec: JobSpec) -> Job:
        """The pending job `spec` asks for, not stored (what `submit` stores; `ecoq submit`
        plans it before storing it)."""
        now = self.clock()
        return Job(
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
            zones=spec.allowed_zones if len(spec.allowed_zones) > 1 else None,
            interruptible=spec.interruptible,
            max_pauses=spec.max_pauses,
            min_segment_s=int(spec.min_segment.total_seconds()),
            checkpoint_signal=parse_signal(spec.checkpoint_signal)
            if spec.checkpoint_signal
            else None,
            resume_command=list(spec.resume_command) if spec.resume_command else None,
        )

    def zones_in_use(self) -> list[str]:
        """Zones of waiting and active jobs, sorted."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Job.zone)
                .where(col(Job.state).in_([str(x) for x in WAITING | ACTIVE]))
                .distinct()
            ).all()
        return sorted(rows)

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

    # -- planning ---------------------------------------------------------------------------
    def set_plan(self, job_id: int, **plan: Any) -> bool:
        """Record a plan (planned_start and its figures) on a waiting job; False if it moved on."""
        return self.transition(
            job_id, [S.PENDING, S.PLANNED], S.PLANNED, planned_at=self.clock(), **plan
        )

    def planning_jobs(self) -> list[Job]:
        """Every waiting and active job (what a re-plan plans or reserves), by id, in one query."""
        return self.jobs(WAITING | ACTIVE)

    def live_daemons(self, since: datetime) -> int:
        """Daemons on this database that heartbeat since `since` and did not stop."""
        with session(self.engine) as s:
            count = s.exec(
                select(func.count())
                .select_from(DaemonRow)
                .where(col(DaemonRow.stopped_at).is_(None), col(DaemonRow.heartbeat_at) >= since)
            ).one()
        return int(count)

    def live_daemon_names(self, since: datetime) -> set[str]:
        """Names of the daemons that heartbeat since `since` and did not stop."""
        with session(self.engine) as s:
            names = s.exec(
                select(DaemonRow.name).where(
                    col(DaemonRow.stopped_at).is_(None), col(DaemonRow.heartbeat_at) >= since
                )
            ).all()
        return set(names)

    def has_pending(self) -> bool:
        """Whether any unheld job waits for its first plan."""
        with session(self.engine) as s:
            found = s.exec(
                select(Job.id).where(Job.state == str(S.PENDING), col(Job.held).is_(False)).limit(1)
            ).first()
        return found is not None

    def set_plans(
        self,
        plans: Sequence[tuple[int, JobState, dict[str, Any]]],
        *,
        seen: Mapping[int, datetime] | None = None,
    ) -> int:
        """Record many plans in one transaction: `(job id, state it is in, column values)`.

        A waiting job (`pending`/`planned`) becomes `planned`; a `paused` job (a planned pause,
        not held) stays paused and gets the plan for its remaining work. Each row is a
        compare-and-set on the state, so a job that moved on meanwhile is left alone. With
        `seen` (job id → its `updated_at` when the planner read it; every job in `plans` must
        be in it), a row is also skipped when the job changed since (`ecoq start`, `hold`, a
        request) or is held, started by hand or has a request: a plan made from an older copy
        never overwrites a user's action. Every dict must have the same keys. Returns how many
        rows were sent (a skipped row is counted too).
        """
        if not plans:
            return 0
        now = self.clock()
        table = Job.__table__  # type: ignore[attr-defined]
        keys = sorted(plans[0][2])
        fresh = (
            [
                table.c.updated_at == bindparam("p_seen", type_=table.c.updated_at.type),
                table.c.held.is_(False),
                table.c.run_now.is_(False),
                table.c.request.is_(None),
            ]
            if seen is not None
            else []
        )
        written = 0
        with session(self.engine) as s:
            conn = s.connection()
            for kind in (S.PENDING, S.PAUSED):
                rows = [
                    {
                        "p_id": job_id,
                        **({"p_seen": seen[job_id]} if seen is not None else {}),
                        **{f"p_{k}": v for k, v in values.items()},
                    }
                    for job_id, state, values in plans
                    if (state == S.PAUSED) == (kind == S.PAUSED)
                ]
                if not rows:
                    continue
                if kind == S.PAUSED:
                    where = and_(table.c.state == str(S.PAUSED), table.c.held.is_(False))
                    target = str(S.PAUSED)
                else:
                    # No IN (…): expanding parameters cannot be used with executemany.
                    where = or_(table.c.state == str(S.PENDING), table.c.state == str(S.PLANNED))
                    target = str(S.PLANNED)
                stmt = (
                    table.update()
                    .where(table.c.id == bindparam("p_id"), where, *fresh)
                    .values(
                        state=target,
                        planned_at=now,
                        updated_at=now,
                        **{k: bindparam(f"p_{k}") for k in keys},
                    )
                )
                conn.execute(stmt, rows)
                written += len(rows)
            fault("plans-txn")
            s.commit()
        return written

    # -- Slurm sites -------------------------------------------------------------------------
    def slurm_work(self, sites: Sequence[str]) -> list[Job]:
        """What the Slurm sites `sites` need done: planned jobs there, and every job not running
        that still has a submission in a Slurm queue (to move, release or withdraw), by id."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Job)
                .where(
                    or_(
                        and_(col(Job.state) == str(S.PLANNED), col(Job.site).in_(list(sites))),
                        and_(
                            col(Job.slurm_run_dir).is_not(None),
                            col(Job.state).not_in([str(S.RUNNING), str(S.PAUSED)]),
                        ),
                    )
                )
                .order_by(col(Job.id))
            )
            return list(rows)

    def set_slurm_run_dir(self, job_id: int, expect: str | None, value: str | None) -> bool:
        """Compare-and-set the job's Slurm submission (`Job.slurm_run_dir`) from `expect` to
        `value`; False if another daemon changed it first."""
        same = (
            col(Job.slurm_run_dir).is_(None) if expect is None else col(Job.slurm_run_dir) == expect
        )
        with session(self.engine) as s:
            stmt = update(Job).where(col(Job.id) == job_id, same).values(slurm_run_dir=value)
            moved = bool(s.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]
            s.commit()
        return moved

    def started_remotely(self, job_id: int, run_id: int, started_at: datetime) -> None:
        """Record when a job the daemon released to Slurm really started (it may wait in
        Slurm's queue after the claim): the job's start, its segment's and its run's."""
        with session(self.engine) as s:
            s.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.state) == str(S.RUNNING))
                .values(started_at=started_at, segment_started_at=started_at)
            )
            s.execute(update(Run).where(col(Run.id) == run_id).values(started_at=started_at))
            s.commit()

    def adopt(self, job_id: int, lost: str, me: str) -> bool:
        """Take over an active job of the lost daemon `lost` (a Slurm job: Slurm still runs
        it); False if it is not that daemon's any more."""
        with session(self.engine) as s:
            stmt = (
                update(Job)
                .where(
                    col(Job.id) == job_id,
                    col(Job.worker) == lost,
                    col(Job.state).in_([str(S.RUNNING), str(S.PAUSED)]),
                )
                .values(worker=me, updated_at=self.clock())
            )
            moved = bool(s.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]
            s.commit()
        return moved

    # -- user requests ----------------------------------------------------------------------
    def cancel(self, job_id: int) -> str:
        """Cancel a job. Waiting jobs are cancelled at once ("cancelled"); running or paused ones
        get a request their daemon carries out ("requested"). Raises for finished jobs."""

        def attempt(job: Job) -> str | None:
            if job.state in WAITING and self.transition(
                job_id, WAITING, S.CANCELLED, finished_at=self.clock(), reason="cancelled by user"
            ):
                return "cancelled"
            return self._try_request(job_id, "cancel", ACTIVE)

        return self._settle(job_id, attempt, "cancel", ACTIVE)

    def hold(self, job_id: int) -> str:
        """Keep a waiting job from starting ("held"); keep a job in a planned pause from resuming
        ("held"); pause a running one ("requested": its daemon sends SIGSTOP)."""

        def attempt(job: Job) -> str | None:
            if job.state in WAITING and self._cas(job_id, list(WAITING), held=True, run_now=False):
                return "held"
            if job.state == S.PAUSED and self._cas_where(
                job_id, [S.PAUSED], [col(Job.planned_start).is_not(None)], held=True
            ):
                return "held"
            return self._try_request(job_id, "hold", [S.RUNNING])

        return self._settle(job_id, attempt, "hold", [S.RUNNING])

    def release(self, job_id: int) -> str:
        """Undo `hold`: a waiting job is re-planned ("released"); a job held in a planned pause
        resumes at its next segment ("released"); one the user paused resumes now
        ("requested": its daemon sends SIGCONT)."""
        job = self.get(job_id)
        # planned → pending is a legal move and pending stays pending: no transition check needed.
        if job.state in WAITING and self._cas(
            job_id,
            list(WAITING),
            state=str(S.PENDING),
            held=False,
            planned_start=None,
            plan_saving=None,
        ):
            return "released"
        if job.state == S.PAUSED and self._cas_where(
            job_id,
            [S.PAUSED],
            [col(Job.held).is_(True), col(Job.planned_start).is_not(None)],
            held=False,
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

    def _settle(
        self,
        job_id: int,
        attempt: Callable[[Job], str | None],
        action: str,
        states: Iterable[JobState],
    ) -> str:
        """`attempt` on the job as it is now, again if it moved meanwhile (a daemon claimed it,
        or put back to wait a claim that never started); then `_request`, which raises naming
        the state the job is in."""
        for _ in range(_ATTEMPTS):
            done = attempt(self.get(job_id))
            if done is not None:
                return done
        return self._request(job_id, action, states)

    def _try_request(self, job_id: int, action: str, states: Iterable[JobState]) -> str | None:
        """Leave `action` for the job's daemon ("requested") if the job is in `states`."""
        if self._cas(job_id, list(states), request=action, requested_at=self.clock()):
            return "requested"
        return None

    def _request(self, job_id: int, action: str, states: Iterable[JobState]) -> str:
        expect = list(states)
        if self._try_request(job_id, action, expect) is not None:
            return "requested"
        job = self.get(job_id)
        raise ValidationError(
            f"cannot {action} job {job_id}: it is {job.state}"
            + (" and finished" if job.state in TERMINAL else "")
            + f"; {action} applies to {', '.join(str(s) for s in expect)} or waiting jobs"
        )
