"""Reaping: how the daemon learns that its jobs ended, and records it (`Daemon` inherits it).

Each active run of this daemon is read through its executor (the local wrapper's records, or
Slurm's): an exit is recorded with its code, times and energy (the meters' final read, or what
Slurm accounted); a run whose process vanished fails with the reason; a claimed run whose
wrapper never took its start token is put back in the queue (it never started); a Slurm run
still pending is released if its daemon died before releasing it.

A daemon that comes back after another one reconciled it as lost also reads the runs that were
failed as lost (`_reap_lost`): a run that ended is recorded as it really ended; a job still
running is this daemon's again; a claim it never launched is abandoned (the start token), never
acted on, and the job goes back to the queue. The job changes only if nothing else changed it
since the reconciliation (`ecoq.scheduler.lost`); the run always gets the truth.
"""

import logging
import signal
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecoq.models import Job, Run
from ecoq.scheduler.executors import Executor, RunStatus
from ecoq.scheduler.executors.wrapper import proc_stat
from ecoq.scheduler.lost import LostRuns
from ecoq.scheduler.metering import RunMeters, merge_segments, total_energy_j
from ecoq.scheduler.pauses import Pauses
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.slurmdriver import SlurmDriver
from ecoq.states import JobState

if TYPE_CHECKING:
    from ecoq.scheduler.daemon import DaemonConfig, TickReport
    from ecoq.scheduler.daemons import DaemonRegistry

__all__ = ["Reaping"]

log = logging.getLogger(__name__)
S = JobState


class Reaping:
    """The reap step of `ecoq.scheduler.daemon.Daemon`."""

    queue: Queue
    config: "DaemonConfig"
    executor: Executor
    meters: RunMeters | None
    pauses: Pauses
    slurm: SlurmDriver | None
    registry: "DaemonRegistry"

    def _slurm_executor(self, job: Job) -> Executor | None:
        """The executor of the Slurm site `job` runs at, if this daemon drives it."""
        return self.slurm.executor(job.site) if self.slurm is not None else None

    def _executor_for(self, job: Job) -> Executor:
        return self._slurm_executor(job) or self.executor

    def _reap(self, now: datetime, report: "TickReport") -> None:
        self._reap_lost(now, report)  # first: a job running again is reaped below as usual
        for job, run in self.queue.active(self.config.worker):
            assert job.id is not None and run.id is not None
            slurm = self._slurm_executor(job)
            status = self._executor_for(job).status(Path(run.run_dir))
            if slurm is not None and status.started_at is not None and run.started_at is None:
                # Released to Slurm at the claim; it may have waited there for a node.
                self.queue.started_remotely(job.id, run.id, status.started_at)
                run.started_at = job.started_at = job.segment_started_at = status.started_at
            if status.state in ("exited", "vanished") and slurm is not None:
                assert self.slurm is not None
                energy_j = self.slurm.finished(job, run)
                if energy_j is not None:
                    self.queue.update_run(run.id, energy_j=energy_j)
                    run.energy_j = energy_j
            if status.state in ("exited", "vanished") and run.started_at is None:
                # A job that ended between two ticks was never seen running: record its start.
                self.queue.update_run(run.id, pid=status.pid, started_at=status.started_at)
                run.started_at = status.started_at
            if status.state == "exited":
                energy = self._final_energy(run)
                if (
                    job.checkpoint_at is not None
                    and job.request != "cancel"
                    and self.pauses.reap_checkpoint(job, run, status, now, energy, report)
                ):
                    continue
                code = status.exit_code
                if job.request == "cancel":
                    target, reason = S.CANCELLED, "cancelled by user"
                elif code == 0:
                    target, reason = S.SUCCEEDED, None
                else:
                    target, reason = S.FAILED, status.reason or f"exited with status {code}"
                    if job.checkpoint_at is not None:
                        reason += f" after {job.checkpoint_signal} (checkpoint pause)"
                if self.queue.finish(
                    job,
                    run,
                    target,
                    exit_code=code,
                    finished_at=status.finished_at or now,
                    reason=reason,
                    **energy,
                ):
                    report.reaped.append(job.id)
            elif status.state == "vanished":
                reason = status.reason or "the job's wrapper and process are gone"
                if self.queue.finish(
                    job,
                    run,
                    S.FAILED,
                    exit_code=None,
                    finished_at=now,
                    reason=reason,
                    **self._final_energy(run),
                ):
                    report.reaped.append(job.id)
            elif slurm is not None:
                assert self.slurm is not None
                why = (
                    self.slurm.still_pending(job, run, status)
                    if status.state != "running"
                    else None
                )
                if why is not None and self.queue.finish(
                    job, run, S.FAILED, exit_code=None, finished_at=now, reason=why
                ):
                    report.reaped.append(job.id)
            elif status.state == "running":
                if run.pid is None:
                    self.queue.update_run(run.id, pid=status.pid, started_at=status.started_at)
                if self.meters is not None and status.pid is not None:
                    self.meters.start(run.id, status.pid, list(run.gpu_indices))
            elif _unlaunched(status, run) and self.executor.abandon(Path(run.run_dir)):
                # Claimed, but the wrapper never took the start token: it never ran. Requeue
                # (or cancel it, if its user asked meanwhile).
                if run.finished_at is None:
                    self.queue.update_run(
                        run.id, finished_at=now, reason="never started: the daemon stopped first"
                    )
                moved = self.queue.requeue(job.id, now)
                if moved is not None:
                    (report.requeued if moved == S.PENDING else report.reaped).append(job.id)

    def _reap_lost(self, now: datetime, report: "TickReport") -> None:
        """Record what really happened to this daemon's runs that another daemon failed as lost
        while this one was silent. Runs only after a heartbeat found this daemon's row stopped
        (`DaemonRegistry.returned`), and again each tick while such a run still runs."""
        me = self.config.worker
        if not self.registry.returned(me):
            return
        look_again = True  # also if this fails half-way: the next tick tries again
        try:
            look_again = self._reap_lost_runs(now, report)
        finally:
            if look_again:
                self.registry.watch_lost(me)

    def _reap_lost_runs(self, now: datetime, report: "TickReport") -> bool:
        """One pass over the lost runs; True when one must be looked at again."""
        lost = LostRuns(self.queue.engine, self.queue.clock)
        look_again = False
        for job, run in lost.find(self.config.worker):
            assert job.id is not None and run.id is not None
            run_dir = Path(run.run_dir)
            executor = self._executor_for(job)
            status = executor.status(run_dir)
            if status.state in ("starting", "not-started"):
                # A claim made before this daemon went silent is never acted on now: take the
                # start token. Lost to the wrapper: it started the job, which is followed below.
                if executor.abandon(run_dir):
                    self._requeue_lost(lost, job, run, report)
                    continue
                status = executor.status(run_dir)
            if status.state in ("exited", "vanished"):
                self._settle_lost(lost, job, run, status, now, report)
            elif status.state == "running":
                if not self._revive_lost(lost, job, run, status):
                    look_again = True  # the job moved on: record the run once it ends
                    if self.meters is not None and status.pid is not None:
                        self.meters.start(run.id, status.pid, list(run.gpu_indices))
            else:
                look_again = True
        return look_again

    def _settle_lost(
        self,
        lost: LostRuns,
        job: Job,
        run: Run,
        status: RunStatus,
        now: datetime,
        report: "TickReport",
    ) -> None:
        assert job.id is not None and run.finished_at is not None
        energy = self._final_energy(run)
        if self.slurm is not None and self._slurm_executor(job) is not None:
            energy_j = self.slurm.finished(job, run)
            energy = {} if energy_j is None else {"energy_j": energy_j}
        note = f"recorded by {self.config.worker} after it came back (the job was failed as lost)"
        code = status.exit_code if status.state == "exited" else None
        if status.state == "exited" and code == 0:
            target, reason = S.SUCCEEDED, f"exited with status 0; {note}"
        elif status.state == "exited":
            target, reason = S.FAILED, f"{status.reason or f'exited with status {code}'}; {note}"
        else:  # vanished: still unknown, but this daemon says why; it ended by its last sight
            target = S.FAILED
            reason = f"{status.reason or 'the wrapper and the job are gone'}; {note}"
        finished_at = (status.finished_at or now) if status.state == "exited" else run.finished_at
        outcome = lost.settle(
            job,
            run,
            target,
            exit_code=code,
            finished_at=finished_at,
            reason=reason,
            started_at=status.started_at,
            pid=status.pid,
            **energy,
        )
        if outcome == "job":
            report.reaped.append(job.id)
            log.info("job %s was failed as lost; recorded as it really ended: %s", job.id, target)
        elif outcome == "run":
            log.info(
                "job %s changed since it was failed as lost; its run %s recorded", job.id, run.id
            )

    def _revive_lost(self, lost: LostRuns, job: Job, run: Run, status: RunStatus) -> bool:
        if not lost.revive(job, run, started_at=status.started_at, pid=status.pid):
            return False
        if status.reason is not None and self._slurm_executor(job) is None:
            # Stopped for a planned pause when it was failed: the plan is gone, so it runs on.
            self.executor.signal(Path(run.run_dir), signal.SIGCONT)
        log.warning("job %s was failed as lost but still runs here: it is running again", job.id)
        return True

    def _requeue_lost(self, lost: LostRuns, job: Job, run: Run, report: "TickReport") -> None:
        assert job.id is not None
        why = "never started: its daemon was reconciled as lost before launching it"
        if lost.requeue(job, run, reason=why) == "job":
            if job.request == "cancel":  # a failed job's request cannot change: as it was read
                report.reaped.append(job.id)
                log.info("job %s was failed as lost but never started: cancelled", job.id)
            else:
                report.requeued.append(job.id)
                log.info("job %s was failed as lost but never started: back in the queue", job.id)

    def _final_energy(self, run: Run) -> dict[str, Any]:
        """The run's energy for `Queue.finish`: this daemon's final read plus earlier segments."""
        if self.meters is None or run.id is None:
            return {}
        series = self.meters.stop(run.id)
        if series is None and not run.energy_series:
            return {}
        merged = merge_segments(run.energy_series, series.to_dict() if series else None)
        return {"energy_j": total_energy_j(merged), "energy_series": merged}

    def _save_energy_snapshots(self) -> None:
        if self.meters is None:
            return
        snapshots = self.meters.due_snapshots()
        if not snapshots:
            return
        for _job, run in self.queue.active(self.config.worker):
            if run.id in snapshots:
                merged = merge_segments(run.energy_series, snapshots[run.id])
                self.queue.update_run(run.id, energy_series=merged, energy_j=total_energy_j(merged))


def _unlaunched(status: RunStatus, run: Run) -> bool:
    """Whether a claimed run that is not running can be abandoned: the executor says it never
    started (abandoned, never launched, or its wrapper exited before it took the start token),
    or the wrapper whose pid the daemon stored is gone (all it can tell without `launch.json`)."""
    return status.state == "not-started" or not _alive(run.wrapper_pid)


def _alive(pid: int | None) -> bool:
    """Whether process `pid` runs. A zombie does not: a wrapper orphaned by a daemon that
    exited is reaped by init, which may never do so (some containers' init)."""
    stat = proc_stat(pid) if pid is not None else None
    return stat is not None and stat[1] not in ("Z", "X")
