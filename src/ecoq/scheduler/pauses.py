"""Planned pauses of interruptible jobs: what the daemon does at segment boundaries.

At the end of a running segment, when another segment follows and the job has pauses left:

- **stop** (default): SIGSTOP to the job's process group, `running → paused`. Its GPUs stay
  allocated and its meters keep sampling (idle power is charged to the job). At the next
  segment: `paused → running`, then SIGCONT.
- **checkpoint** (`--checkpoint-signal SIG --resume CMD`): send SIG and wait for the job to exit
  by itself; after `daemon.kill_grace_s` it is SIGKILLed. The run is recorded and the job waits
  again (`planned`, at its next segment), keeping the work it did; at that segment the daemon
  runs the resume command as a new run.

A job the user paused (`ecoq hold`) is never resumed here, and no job is paused more often than
its `max_pauses`. Times are tz-aware UTC.
"""

import logging
import signal
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ecoq.models import Job, Run
from ecoq.scheduler import segments as segs
from ecoq.scheduler.executors import Executor, RunStatus
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState

__all__ = ["PauseReport", "Pauses", "pauses_left", "segment_end_for"]

log = logging.getLogger(__name__)
S = JobState


@dataclass
class PauseReport:
    """Jobs paused, resumed and checkpointed (their checkpoint run ended) by one tick."""

    paused: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    checkpointed: list[int] = field(default_factory=list)


def pauses_left(job: Job) -> float:
    """Planned pauses the job may still take (`inf`: no limit)."""
    if not job.interruptible or job.run_now:
        return 0
    if job.max_pauses is None:
        return float("inf")
    return max(0, job.max_pauses - job.pauses)


def segment_end_for(job: Job, now: datetime) -> datetime | None:
    """When the segment the job starts (or resumes) at `now` should pause; None: it runs to
    its end (a contiguous job, no pauses left, or its last segment)."""
    if pauses_left(job) <= 0:
        return None
    return segs.segment_end_at(
        segs.load(job.segments), now, min_segment=timedelta(seconds=job.min_segment_s)
    )


def _due_to_resume(job: Job, now: datetime) -> bool:
    """In a planned pause (not held by the user) whose next segment has begun."""
    return (
        job.state == S.PAUSED
        and not job.held
        and job.request is None
        and job.planned_start is not None
        and job.planned_start <= now
    )


def _signal_number(name: str | None) -> int:
    return int(signal.Signals[name]) if name else 0


class Pauses:
    """Pauses and resumes the daemon's interruptible jobs at their segment boundaries."""

    def __init__(self, queue: Queue, executor: Executor, *, kill_grace_s: float) -> None:
        self.queue = queue
        self.executor = executor
        self.grace = timedelta(seconds=kill_grace_s)

    def step(self, now: datetime, active: list[tuple[Job, Run]], report: PauseReport) -> None:
        """Pause the jobs whose segment has ended, resume those whose next segment has begun,
        and SIGKILL a checkpointing job that outlived its grace."""
        for job, run in active:
            assert job.id is not None
            run_dir = Path(run.run_dir)
            if job.state == S.RUNNING and job.checkpoint_at is not None:
                if now - job.checkpoint_at >= self.grace:
                    self.executor.signal(run_dir, signal.SIGKILL)
            elif job.state == S.RUNNING and job.segment_end is not None and now >= job.segment_end:
                self._segment_over(job, run_dir, now, report)
            elif _due_to_resume(job, now) and self.queue.resume_for_plan(
                job, now, segment_end=segment_end_for(job, now)
            ):
                self.executor.signal(run_dir, signal.SIGCONT)
                report.resumed.append(job.id)
                log.info("job %s resumed for its next segment", job.id)

    def _segment_over(self, job: Job, run_dir: Path, now: datetime, report: PauseReport) -> None:
        assert job.id is not None and job.segment_end is not None
        if job.held or job.request is not None:
            return  # the user's request goes first; the next tick looks again
        spans = segs.load(job.segments)
        nxt = segs.next_after(spans, job.segment_end)
        if nxt is None or pauses_left(job) <= 0:
            self.queue.set_segment_end(job.id, None)  # runs to its end
            return
        if nxt <= now:  # the next segment has begun already: carry on without a pause
            later = [(a, b) for a, b in spans if a >= nxt]
            self.queue.set_segment_end(job.id, segs.segment_end_at(later, now))
            return
        if job.checkpoint_signal is not None:
            if self.executor.status(run_dir).state != "running":
                return  # it is ending by itself: reaped as usual
            if self.queue.mark_checkpoint(job, now):
                self.executor.signal(run_dir, _signal_number(job.checkpoint_signal))
                log.info("job %s: %s sent for a checkpoint pause", job.id, job.checkpoint_signal)
            return
        began = job.segment_started_at or now
        ran = segs.dump(segs.with_run(spans, began, now))
        self.executor.signal(run_dir, signal.SIGSTOP)
        if self.queue.pause_for_plan(job, now, next_start=nxt, segments=ran):
            report.paused.append(job.id)
            log.info("job %s paused (SIGSTOP) until %s", job.id, segs.iso_z(nxt))
        else:  # it moved on meanwhile (a request came in): let it go on
            self.executor.signal(run_dir, signal.SIGCONT)

    def reap_checkpoint(
        self,
        job: Job,
        run: Run,
        status: RunStatus,
        now: datetime,
        energy: dict[str, Any],
        report: PauseReport,
    ) -> bool:
        """A run that exited after its checkpoint signal: record it and put the job back to
        wait for its next segment. An exit with status 0, by the checkpoint signal itself, or by
        the SIGKILL after the grace counts as a checkpoint. Returns False for any other status
        (the job failed): the caller ends the job as usual."""
        assert job.id is not None and job.checkpoint_at is not None
        began = job.segment_started_at or run.claimed_at
        finished = status.finished_at or now
        if finished <= began:  # the wrapper's clock disagrees with the daemon's: use ours
            finished = now
        code = status.exit_code
        sig = _signal_number(job.checkpoint_signal)
        if code == 0 or code == 128 + sig:
            reason = f"checkpointed on {job.checkpoint_signal} for a planned pause"
        elif code == 128 + signal.SIGKILL and now - job.checkpoint_at >= self.grace:
            reason = (
                f"killed: did not exit within {self.grace.total_seconds():g} s of "
                f"{job.checkpoint_signal} (daemon.kill_grace_s); resumes from its last checkpoint"
            )
        else:
            return False
        spans = segs.with_run(segs.load(job.segments), began, finished)
        nxt = segs.next_after(spans, finished)
        if self.queue.checkpointed(
            job,
            run,
            exit_code=code,
            finished_at=finished,
            reason=reason,
            next_start=nxt,
            segments=segs.dump(spans),
            **energy,
        ):
            report.checkpointed.append(job.id)
            log.info("job %s %s; next segment %s", job.id, reason, nxt and segs.iso_z(nxt))
        return True
