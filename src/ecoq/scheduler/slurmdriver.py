"""Slurm sites in the daemon: ecoq decides when and where, Slurm runs the job.

A daemon drives the `[[sites]]` of kind ``slurm`` in its config (several daemons may drive one
cluster: every step below is a compare-and-set, so only one of them acts on a job):

- **plan time**: a job planned at a Slurm site is submitted held (``sbatch --hold
  --begin=<planned start>``), so Slurm knows the job and its start, and cannot start it without
  ecoq. The run directory is recorded on the job (`Job.slurm_run_dir`) before ``sbatch`` runs,
  so a daemon that dies in between finds the submission again by its name.
- **re-plan**: a new planned start is sent with ``scontrol update StartTime=`` (never a past
  time); a job re-planned to another site, held by a user before its time, cancelled or expired
  has its submission withdrawn (``scancel`` of the pending job).
- **due time**: the job is claimed (`planned → running`, with its run) and released
  (``scontrol release``). A daemon that dies between the two releases it after its restart.
- **as whom**: on a shared box (`run_as`, the local executor's `RunAs` policy) each job is
  submitted as its submitter (``sbatch --uid --gid``). A job that may not run as its user (the
  account is gone, or it is root's and root's jobs are not allowed) fails with the reason, at
  plan time or, if its user vanished after the submission, at due time (its submission is
  withdrawn first); it is never submitted as root.
- **reap**: the daemon's usual reap reads the run through `SlurmExecutor.status`; energy comes
  from ``sacct``'s ConsumedEnergyRaw when the cluster gathers it, else the run is accounted as an
  estimate (no local meter sees a Slurm node).
"""

import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from ecoq.errors import ConfigError, EcoqError, ExecutorError
from ecoq.models import Job, Run
from ecoq.scheduler.executors import LaunchSpec, RunStatus
from ecoq.scheduler.executors.identity import RunAs
from ecoq.scheduler.executors.slurm import SlurmExecutor
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState

__all__ = ["SlurmDriver", "SlurmReport"]

log = logging.getLogger(__name__)
S = JobState


@dataclass
class SlurmReport:
    """What one `SlurmDriver.sync` did (job ids)."""

    submitted: list[int] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  #: failed: may not run as their user


class SlurmDriver:
    """The Slurm sites one daemon drives.

    Args:
        queue: the job queue.
        executors: site name -> its executor (for the site of that name), for every ``slurm``
            site in this daemon's config.
        data_dir: where run directories go (`<data_dir>/jobs/<id>/slurm-...`); it must be on a
            file system the cluster's nodes share (job output is written there).
        worker: this daemon's name (the claims are its).
        run_as: the shared-box policy, given to every executor: each job is submitted as its
            submitter, never as root unless the policy allows it. None: each executor's own
            (personal mode: as the daemon's user).
    """

    def __init__(
        self,
        queue: Queue,
        executors: Mapping[str, SlurmExecutor],
        *,
        data_dir: Path,
        worker: str,
        run_as: RunAs | None = None,
    ) -> None:
        for name, ex in executors.items():
            if ex.site.name != name:  # submissions record the executor's site name
                raise ConfigError(f"Slurm site {name!r} has an executor for {ex.site.name!r}")
        self.queue = queue
        self.executors = {
            name: ex if run_as is None else replace(ex, run_as=run_as)
            for name, ex in executors.items()
        }
        self.data_dir = data_dir
        self.worker = worker
        self._warned: dict[int, str] = {}

    def executor(self, site: str | None) -> SlurmExecutor | None:
        """The executor of Slurm site `site`, if this daemon drives it."""
        return self.executors.get(site) if site is not None else None

    # -- plan, re-plan and due time -----------------------------------------------------------
    def sync(self, now: datetime) -> SlurmReport:
        """Bring Slurm's queues in line with the plan: submit, move, withdraw and release.

        A Slurm command that fails is logged (once per job and problem) and retried at the next
        tick; the job keeps its plan meanwhile.
        """
        report = SlurmReport()
        if not self.executors:
            return report
        for job in self.queue.slurm_work(sorted(self.executors)):
            assert job.id is not None
            try:
                self._sync_one(job, now, report)
            except EcoqError as exc:
                if self._warned.get(job.id) != str(exc):
                    self._warned[job.id] = str(exc)
                    log.warning("job %s at Slurm site %s: %s; retrying", job.id, job.site, exc)
            else:
                self._warned.pop(job.id, None)
        return report

    def _sync_one(self, job: Job, now: datetime, report: SlurmReport) -> None:
        assert job.id is not None
        ref = job.slurm_run_dir
        record: dict[str, object] = {}
        if ref is not None:
            # The record is a file in the run folder: any executor reads it.
            record = next(iter(self.executors.values())).record(Path(ref)) or {}
            site = record.get("site", job.site)  # none yet: the daemon died before writing it
            if site not in self.executors:
                return  # another daemon's cluster
            ex = self.executors[str(site)]
            if job.state != S.PLANNED or job.site != site:
                self._withdraw(job, ex, Path(ref), report)
                if job.state != S.PLANNED or job.site not in self.executors:
                    return
                ref, record = None, {}
                job.slurm_run_dir = None
        if job.state != S.PLANNED or job.planned_start is None or job.held:
            return
        ex = self.executors[str(job.site)]
        if ref is None:
            ref = self._submit(job, ex, now, report)
            if ref is None:
                return
            report.submitted.append(job.id)
        elif _sent_start(record) != job.planned_start:
            ex.move(Path(ref), job.planned_start)
            report.moved.append(job.id)
        if not self._due(job, now):
            return
        try:
            ex.submitter(job.id, job.uid)  # its user may have gone since it was submitted
        except ExecutorError as exc:
            self._withdraw(job, ex, Path(ref), report)
            self._refuse(job, Path(ref), exc, now, report)
            return
        if self._claim_and_release(job, ex, Path(ref)):
            report.released.append(job.id)

    @staticmethod
    def _due(job: Job, now: datetime) -> bool:
        assert job.planned_start is not None
        if job.planned_start <= now:
            return True
        # Planned as early as it can, waiting only for room: Slurm decides when there is room.
        return job.plan_asap and (job.not_before is None or job.not_before <= now)

    def _submit(
        self, job: Job, ex: SlurmExecutor, now: datetime, report: SlurmReport
    ) -> str | None:
        assert job.id is not None and job.planned_start is not None
        stamp = now.strftime("%Y%m%dT%H%M%S")
        run_dir = self.data_dir / "jobs" / str(job.id) / f"slurm-{stamp}-{uuid.uuid4().hex[:6]}"
        try:
            ex.submitter(job.id, job.uid)
        except ExecutorError as exc:
            self._refuse(job, run_dir, exc, now, report)
            return None
        if not self.queue.set_slurm_run_dir(job.id, None, str(run_dir)):
            return None  # another daemon submits it
        spec = LaunchSpec(
            job_id=job.id,
            run_id=0,  # no run yet: the run is created when the job is released
            argv=list(job.command),
            cwd=job.cwd,
            env={**job.env, "ECOQ_JOB_ID": str(job.id), "ECOQ_RUN_DIR": str(run_dir)}
            | {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
            run_dir=run_dir,
            uid=job.uid,
        )
        try:
            ex.submit(spec, start=job.planned_start, gpus=job.gpus, hold=True)
        except EcoqError:
            self.queue.set_slurm_run_dir(job.id, str(run_dir), None)
            raise
        log.info(
            "job %s submitted held to Slurm site %s for %s", job.id, job.site, job.planned_start
        )
        return str(run_dir)

    def _refuse(
        self, job: Job, run_dir: Path, exc: ExecutorError, now: datetime, report: SlurmReport
    ) -> None:
        """Fail a job that may not run as its user (as the local executor's launch does): it
        is claimed, so that one daemon fails it, and ended with the reason."""
        assert job.id is not None
        run = self.queue.claim(
            job, worker=self.worker, host=socket.gethostname(), run_dir=str(run_dir), gpus=[]
        )
        if run is None:
            return  # another daemon got it first
        reason = f"not submitted to Slurm site {job.site}: {exc}"
        self.queue.finish(job, run, S.FAILED, exit_code=None, finished_at=now, reason=reason)
        report.refused.append(job.id)
        log.warning("job %s failed: %s", job.id, reason)

    def _withdraw(self, job: Job, ex: SlurmExecutor, run_dir: Path, report: SlurmReport) -> None:
        """Cancel a submission the plan no longer wants (it never started: ecoq releases only
        claimed jobs)."""
        assert job.id is not None
        if not ex.abandon(run_dir):
            log.warning(
                "job %s: its Slurm submission in %s had started; left to Slurm", job.id, run_dir
            )
        if self.queue.set_slurm_run_dir(job.id, str(run_dir), None):
            report.withdrawn.append(job.id)
            log.info("job %s: Slurm submission withdrawn (%s)", job.id, job.state)

    def _claim_and_release(self, job: Job, ex: SlurmExecutor, run_dir: Path) -> bool:
        run = self.queue.claim(
            job, worker=self.worker, host=socket.gethostname(), run_dir=str(run_dir), gpus=[]
        )
        if run is None:
            return False
        ex.release(run_dir)
        log.info("job %s released to Slurm site %s (run dir %s)", job.id, job.site, run_dir)
        return True

    # -- reaping (called from the daemon's reap) ----------------------------------------------
    def still_pending(self, job: Job, run: Run, status: RunStatus) -> str | None:
        """What to do with a claimed run Slurm has not started: None while it waits for a node
        (a run the daemon claimed but did not release before it died is released now); a reason
        to fail the job when Slurm ended it before it ran (``scancel`` by someone else)."""
        ex = self.executor(job.site)
        assert ex is not None
        if status.state == "not-started":
            return status.reason or "Slurm ended the job before it ran"
        slurm_job = ex.job(Path(run.run_dir))
        if slurm_job is not None and slurm_job.held:
            ex.release(Path(run.run_dir))
        return None

    def finished(self, job: Job, run: Run) -> float | None:
        """The run ended: forget its submission; returns the joules Slurm accounted
        (``sacct`` ConsumedEnergyRaw), or None when the cluster gathers none."""
        ex = self.executor(job.site)
        assert ex is not None and job.id is not None
        self.queue.set_slurm_run_dir(job.id, run.run_dir, None)
        try:
            return ex.energy_j(Path(run.run_dir))
        except EcoqError as exc:
            log.warning("job %s: no energy from Slurm accounting: %s", job.id, exc)
            return None


def _sent_start(record: dict[str, object]) -> datetime | None:
    """The start last sent to Slurm (`begin` in the submission record); None: "now"."""
    begin = record.get("begin")
    return datetime.fromisoformat(begin) if isinstance(begin, str) else None
