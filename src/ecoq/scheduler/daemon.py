"""The daemon: one `tick` that does everything, driven by APScheduler (`ecoq.scheduler.service`).

A tick reaps ended jobs, carries out requests (cancel, hold, release), expires jobs that may not
run late, plans new jobs with `plan_jobs` (and re-plans every waiting job after a forecast
refresh, or when capacity frees up on a limited site; `ecoq.scheduler.replan`) or, as a service,
asks the planner thread to (`ecoq.scheduler.planthread`: a re-plan of thousands of jobs takes
seconds, and the tick must not wait for it), pauses and
resumes interruptible jobs at their segment boundaries (`ecoq.scheduler.pauses`), and starts the
jobs that are due, never using more GPUs or job slots than the box has. Jobs run under detached
wrappers (`ecoq.scheduler.executors`), so a daemon killed at any point learns on restart how each
job ended, and a claimed job whose wrapper never took its start token is put back in the queue:
no job is ever started twice.
"""

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from ecoq.errors import EcoqError
from ecoq.meters import MeterSettings
from ecoq.models import Job, Run
from ecoq.scheduler.daemons import DaemonRegistry
from ecoq.scheduler.executors import Executor, LaunchSpec
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.forecasts import ForecastSource, ForecastStore
from ecoq.scheduler.metering import RunMeters, merge_segments, total_energy_j
from ecoq.scheduler.pauses import PauseReport, Pauses, segment_end_for
from ecoq.scheduler.planthread import PlannerThread, PlanRun
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.reap import Reaping
from ecoq.scheduler.reconcile import AccountingParams, reconcile
from ecoq.scheduler.replan import LocalSite, PlannerParams, replan
from ecoq.scheduler.retention import Retention, RetentionPolicy
from ecoq.scheduler.service import DaemonLock, run_forever
from ecoq.scheduler.sites import Site, SiteMap
from ecoq.scheduler.slurmdriver import SlurmDriver, SlurmReport
from ecoq.states import ACTIVE, WAITING, JobState

__all__ = ["Daemon", "DaemonConfig", "DaemonLock", "TickReport", "run_forever"]

log = logging.getLogger(__name__)
S = JobState
#: A re-plan for capacity that came free waits until this many times the last full re-plan's
#: duration has passed since it (a forecast refresh or a new job is planned at once).
_REPLAN_SHARE = 5.0


@dataclass
class DaemonConfig:
    """What the daemon needs from `Settings`, resolved."""

    data_dir: Path
    worker: str
    box_gpus: int
    planner: PlannerParams = field(default_factory=PlannerParams)
    tick_interval_s: float = 5.0
    refresh_interval_s: float = 1800.0
    kill_grace_s: float = 30.0
    #: The `[meters]` settings; None: jobs are not metered (tests that do not need it).
    meters: MeterSettings | None = None
    meter_interval_s: float = 5.0
    #: Seconds between fetches of realized history per zone (fallback forecaster, accounting).
    history_interval_s: float = 6 * 3600.0
    #: The site's zone (`site.zone`), recorded with the heartbeat.
    zone: str | None = None
    #: Most jobs running at once on this site; 0 = no limit beyond the GPUs.
    max_jobs: int = 0
    #: Another daemon silent this long (seconds) is lost and its running jobs are reconciled.
    stale_after_s: float = 300.0
    #: Watts each GPU of a stopped (SIGSTOP) job still draws; the planner weighs pauses by it.
    idle_w_per_gpu: float = 50.0
    #: How finished runs are accounted (PUE, embodied figures, finalize after); None: defaults.
    accounting: AccountingParams | None = None
    #: Every `[[sites]]` entry (empty: this box is the only site): the planner picks site and
    #: time together, and this daemon starts the jobs planned at the site named `worker`.
    sites: tuple[Site, ...] = ()
    #: What the daemon prunes, at most hourly (`[retention]`); None: nothing (tests).
    retention: RetentionPolicy | None = None

    def site(self) -> LocalSite:
        """This box as the planner sees it."""
        return LocalSite(
            name=self.worker,
            zone=self.zone,
            gpus=self.box_gpus,
            max_jobs=self.max_jobs,
            idle_w_per_gpu=self.idle_w_per_gpu,
        )


@dataclass
class TickReport(PauseReport):
    """What one tick did (for logs and tests): also `paused`, `resumed`, `checkpointed`."""

    reaped: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    #: Jobs this tick planned (0 when a planner thread plans: `Daemon.plan_in_background`).
    planned: int = 0
    expired: list[int] = field(default_factory=list)
    #: Jobs of a lost daemon that this tick reconciled as failed.
    lost: list[int] = field(default_factory=list)
    #: What the Slurm sites' driver did (None: this daemon drives no Slurm site).
    slurm: SlurmReport | None = None


class Daemon(Reaping):
    """Owns this box's jobs. Drive it with `tick()` (tests, `--once`) or `run()`."""

    def __init__(
        self,
        queue: Queue,
        source: ForecastSource,
        config: DaemonConfig,
        executor: Executor | None = None,
        slurm: SlurmDriver | None = None,
    ) -> None:
        self.queue = queue
        self.source = source
        self.config = config
        self.executor: Executor = executor or LocalExecutor()
        self.clock: Callable[[], datetime] = queue.clock
        self.stopping = False  # warm stop: claim nothing more
        self._replan_all = True
        # Capacity that came free (a job ended) re-plans every waiting job too, but a re-plan of
        # thousands of jobs takes seconds: such re-plans use at most 1/_REPLAN_SHARE of the time.
        self._capacity_freed = False
        self._replanned_at = 0.0  # time.monotonic() of the last full re-plan
        self._replan_took_s = 0.0
        self._lock = threading.Lock()
        #: A re-plan of every waiting job has run (on the planner thread: or failed, or was
        #: left to another daemon): with a planner thread, jobs may start.
        self._replanned = False
        #: Plans on its own thread once `plan_in_background()` is called (the service does);
        #: None: each tick plans inline (tests, `ecoq daemon --once`).
        self.planner: PlannerThread | None = None
        self.meters = (
            RunMeters(config.meters, interval_s=config.meter_interval_s)
            if config.meters is not None
            else None
        )
        self._history_at: dict[str, datetime] = {}
        self.registry = DaemonRegistry(queue)
        self.pauses = Pauses(queue, self.executor, kill_grace_s=config.kill_grace_s)
        #: The Slurm sites this daemon drives (`[[sites]]` of kind slurm); None: none.
        self.slurm = slurm
        self.retention = (
            Retention(queue.engine, config.retention, data_dir=config.data_dir)
            if config.retention is not None
            else None
        )

    # -- the tick ---------------------------------------------------------------------------
    def tick(self) -> TickReport:
        """One pass over the queue. Safe to call from one thread at a time."""
        with self._lock:
            report = TickReport()
            now = self.clock()
            self.heartbeat()
            report.lost = self.registry.reconcile_stale(
                self.config.worker,
                timedelta(seconds=self.config.stale_after_s),
                adopt=lambda job: self._slurm_executor(job) is not None,
            )
            self._reap(now, report)
            self._save_energy_snapshots()
            self._carry_out_requests(now)
            report.expired = [j.id for j in self.queue.expire_overdue(now) if j.id is not None]
            limited = self.config.site().limited or any(s.limited for s in self.config.sites)
            if (report.reaped or report.checkpointed) and limited:
                self._capacity_freed = True  # jobs pushed later for want of room may fit now
            report.planned = self._plan_step(now)
            # Jobs start on plans made with this daemon's forecasts: with a planner thread, not
            # before its first re-plan of every waiting job is done (a plan from `ecoq submit` or
            # from before a restart may be stale); inline, that re-plan ran above.
            starting = not self.stopping and (self.planner is None or self._replanned)
            if self.slurm is not None and starting:
                report.slurm = self.slurm.sync(now)
            self.pauses.step(now, self.queue.active(self.config.worker), report)
            if starting:
                self._dispatch(now, report)
            self._refresh_history(now)
            self._account(now)
            if self.retention is not None:
                self.retention.step(now)  # hourly, at most ~1 s a tick; never raises
            return report

    # -- planning ---------------------------------------------------------------------------
    def _plan_step(self, now: datetime) -> int:
        """Plan new jobs, or every waiting job after a forecast refresh (or, at most a
        1/_REPLAN_SHARE of the time, when capacity came free). Inline, returns how many jobs got
        a plan; with a planner thread (`plan_in_background`), asks it and returns 0."""
        everything = self._replan_all or (
            self._capacity_freed
            and time.monotonic() - self._replanned_at >= _REPLAN_SHARE * self._replan_took_s
        )
        if self.planner is None:
            return self._plan(now, all_waiting=everything) or 0
        if everything:
            # Cleared when asked: a refresh asked for while the thread plans gets one more plan.
            self._replan_all = self._capacity_freed = False
            self.planner.request(all_waiting=True)
        elif self.queue.has_pending():
            self.planner.request(all_waiting=False)
        return 0

    def _plan(self, now: datetime, *, all_waiting: bool) -> int | None:
        """One plan (`ecoq.scheduler.replan.replan`), under the planning lock shared by the
        daemons on one database: how many jobs got a plan; None when another daemon holds the
        lock (a later tick tries again)."""
        with self.registry.planning_lock() as planner:
            if not planner:
                return None
            began = time.monotonic()
            planned = replan(
                self.queue,
                self.source,
                now,
                self.config.planner,
                self._site(now),
                all_waiting=all_waiting,
            )
            if all_waiting:
                self._replan_all = self._capacity_freed = False
                self._replanned_at = time.monotonic()
                self._replan_took_s = self._replanned_at - began
                self._replanned = True
            return planned

    def _plan_beside(self, all_waiting: bool) -> int:
        """The planner thread's plan: at the time it starts; a failed plan of every waiting
        job is asked for again at the next tick."""
        planned = None
        try:
            planned = self._plan(self.clock(), all_waiting=all_waiting)
        finally:
            if all_waiting:
                # Another daemon plans, or this plan failed: asked again at the next tick; jobs
                # start meanwhile on the plans they have, so a broken planner delays nobody.
                self._replanned = True
                if planned is None:
                    self._replan_all = True
        return planned or 0

    def plan_in_background(self, on_done: "Callable[[PlanRun], None] | None" = None) -> None:
        """From now on, plan on a thread of its own (`ecoq.scheduler.planthread`): ticks stay
        short however many jobs wait. `on_done` runs on that thread after each plan."""
        if self.planner is None:
            self.planner = PlannerThread(self._plan_beside, on_done=on_done)
        self.planner.start()

    def stop_planning(self, timeout_s: float = 60.0) -> None:
        """Stop the planner thread, waiting up to `timeout_s` for a plan in progress."""
        if self.planner is not None and not self.planner.stop(timeout_s):
            log.warning("a plan still runs after %.0f s; left to finish or die with us", timeout_s)

    def _account(self, now: datetime) -> None:
        """Account runs that ended and reconcile provisional ones with realized values."""
        params = self.config.accounting or AccountingParams()
        store = self.source.store or ForecastStore(self.queue.engine)
        try:
            reconcile(
                self.queue.engine,
                store,
                self.source,
                now,
                params.finalize_after,
                params=params,
                worker=self.config.worker,
            )
        except Exception:  # accounting must never stop the scheduling
            log.exception("accounting failed; the next tick retries")

    def _site(self, now: datetime) -> LocalSite | SiteMap:
        """This box for the planner, with the number of live daemons sharing the database; with
        `[[sites]]`, every site, less the daemon sites whose daemon is not alive."""
        since = now - timedelta(seconds=self.config.stale_after_s)
        if self.config.sites:
            live = self.queue.live_daemon_names(since) | {self.config.worker}
            return SiteMap.seen_from(self.config.worker, self.config.sites, live)
        return replace(self.config.site(), daemons=max(1, self.queue.live_daemons(since)))

    def heartbeat(self) -> None:
        """Tell other daemons on the database that this one is alive (thread-safe)."""
        self.registry.heartbeat(
            self.config.worker, host=socket.gethostname(), pid=os.getpid(), zone=self.config.zone
        )

    def request_replan(self) -> None:
        """Re-plan every waiting job at the next tick (after a forecast refresh)."""
        self._replan_all = True

    def _refresh_history(self, now: datetime) -> None:
        """Fetch realized values for zones in use, every `history_interval_s` per zone."""
        every = timedelta(seconds=self.config.history_interval_s)
        for zone in self.queue.zones_in_use():
            last = self._history_at.get(zone)
            if last is not None and now - last < every:
                continue
            self._history_at[zone] = now
            self.source.refresh_history(zone, now - timedelta(days=2), now)

    def _carry_out_requests(self, now: datetime) -> None:
        for job, run in self.queue.active(self.config.worker):
            assert job.id is not None and run.id is not None
            run_dir = Path(run.run_dir)
            if job.request == "cancel":
                self._terminate(job, run, now, run_dir)
            elif job.request == "hold" and job.state == S.RUNNING:
                if job.checkpoint_at is not None:
                    continue  # checkpointing: the hold applies once it has exited
                self._executor_for(job).signal(run_dir, signal.SIGSTOP)
                self.queue.user_pause(job, now)
            elif job.request == "release" and job.state == S.PAUSED:
                keep = job.segment_end if job.segment_end and job.segment_end > now else None
                if self.queue.user_resume(job, now, segment_end=keep):
                    self._executor_for(job).signal(run_dir, signal.SIGCONT)
            elif job.request is not None and job.request != "cancel":
                self.queue.clear_request(job.id)  # e.g. release of a job that already resumed

    def _terminate(self, job: Job, run: Run, now: datetime, run_dir: Path) -> None:
        assert run.id is not None
        slurm = self._slurm_executor(job)
        if slurm is not None:  # scancel: Slurm sends SIGTERM, then SIGKILL after KillWait
            if run.term_sent_at is None:
                slurm.terminate(run_dir)
                self.queue.update_run(run.id, term_sent_at=now)
            return
        if run.term_sent_at is None:
            self.executor.signal(run_dir, signal.SIGCONT)  # a paused job must see the SIGTERM
            self.executor.signal(run_dir, signal.SIGTERM)
            self.queue.update_run(run.id, term_sent_at=now)
        elif now - run.term_sent_at >= timedelta(seconds=self.config.kill_grace_s):
            self.executor.signal(run_dir, signal.SIGKILL)

    def _dispatch(self, now: datetime, report: TickReport) -> None:
        if self.config.sites and all(s.name != self.config.worker for s in self.config.sites):
            return  # with [[sites]], a daemon that is no site only drives Slurm sites
        # This box's capacity: the runs it claimed on a Slurm cluster do not take it.
        active = [
            (job, run)
            for job, run in self.queue.active(self.config.worker)
            if self._slurm_executor(job) is None
        ]
        used = {i for _, run in active for i in run.gpu_indices}
        free = [i for i in range(self.config.box_gpus) if i not in used]
        slots = self.config.max_jobs - len(active) if self.config.max_jobs else None
        for job in self.queue.due(now, site=self.config.worker, max_gpus=self.config.box_gpus):
            if slots is not None and slots <= 0:
                break
            if job.gpus > len(free):
                continue  # waits for GPUs; smaller jobs behind it may still fit
            gpus, free = free[: job.gpus], free[job.gpus :]
            if self._start(job, gpus, now):
                assert job.id is not None
                report.started.append(job.id)
                slots = None if slots is None else slots - 1
            else:
                free = sorted(free + gpus)

    def _start(self, job: Job, gpus: list[int], now: datetime) -> bool:
        assert job.id is not None
        stamp = now.strftime("%Y%m%dT%H%M%S")
        run_dir = self.config.data_dir / "jobs" / str(job.id) / f"{stamp}-{uuid.uuid4().hex[:6]}"
        run = self.queue.claim(
            job,
            worker=self.config.worker,
            host=socket.gethostname(),
            run_dir=str(run_dir),
            gpus=gpus,
            segment_end=segment_end_for(job, now),
        )
        if run is None:
            return False
        assert run.id is not None
        env = dict(job.env)
        env.update(
            ECOQ_JOB_ID=str(job.id),
            ECOQ_RUN_DIR=str(run_dir),
            CUDA_DEVICE_ORDER="PCI_BUS_ID",
            CUDA_VISIBLE_DEVICES=",".join(str(i) for i in gpus),
        )
        resume = bool(job.pauses and job.checkpoint_signal and job.resume_command)
        spec = LaunchSpec(
            job_id=job.id,
            run_id=run.id,
            argv=list(job.resume_command or []) if resume else list(job.command),
            cwd=job.cwd,
            env=env,
            run_dir=run_dir,
            uid=job.uid,  # its submitter: a root daemon (shared box) starts it as them
        )
        if not self.queue.claim_holds(job.id, run.id, self.config.worker):
            # Stalled between claim and launch, and reconciled as lost meanwhile: the lost-run
            # reap (`ecoq.scheduler.lost`) takes the start token and puts the job back.
            log.warning("job %s not started: its claim went stale (reconciled as lost)", job.id)
            return False
        try:
            launched = self.executor.launch(spec)
        except EcoqError as exc:
            self.queue.finish(
                job, run, S.FAILED, exit_code=None, finished_at=now, reason=f"launch failed: {exc}"
            )
            return True
        self.queue.update_run(run.id, wrapper_pid=launched.wrapper_pid)
        log.info(
            "job %s %s in %s (gpus=%s)",
            job.id,
            "resumed (resume command)" if resume else "started",
            run_dir,
            gpus or "none",
        )
        return True

    def close(self) -> None:
        """Leave cleanly: store what the meters measured so far (a later daemon continues with
        a new segment) and record the stop, so no other daemon reconciles this one as lost."""
        with self._lock:
            if self.meters is not None:
                for _job, run in self.queue.active(self.config.worker):
                    assert run.id is not None
                    series = self.meters.stop(run.id)
                    if series is not None:
                        merged = merge_segments(run.energy_series, series.to_dict())
                        self.queue.update_run(
                            run.id, energy_series=merged, energy_j=total_energy_j(merged)
                        )
                self.meters.stop_all()
            self.registry.stopped(self.config.worker)

    # -- the warm and cold stop -------------------------------------------------------------
    def has_active(self) -> bool:
        return bool(self.queue.active(self.config.worker))

    def is_idle(self) -> bool:
        """Nothing running, nothing waiting that could start (held jobs wait for a user) and no
        plan being made; used by `--until-idle`."""
        if self.planner is not None and self.planner.busy:
            return False
        return not any(
            job.state in ACTIVE or not job.held for job in self.queue.jobs(WAITING | ACTIVE)
        )

    def cold_stop(self) -> None:
        """Terminate this daemon's jobs and mark them failed (the second SIGTERM)."""
        now = self.clock()
        with self._lock:
            for job, run in self.queue.active(self.config.worker):
                run_dir = Path(run.run_dir)
                self.executor.signal(run_dir, signal.SIGCONT)
                self.executor.signal(run_dir, signal.SIGTERM)
                self.queue.finish(
                    job,
                    run,
                    S.FAILED,
                    exit_code=None,
                    finished_at=now,
                    reason="daemon stopped: second SIGTERM terminated the job",
                    **self._final_energy(run),
                )
        deadline = now + timedelta(seconds=self.config.kill_grace_s)
        while self.clock() < deadline and any(
            self.executor.status(Path(r.run_dir)).state == "running" for r in self._recent_runs()
        ):
            threading.Event().wait(0.2)
        for run in self._recent_runs():
            self.executor.signal(Path(run.run_dir), signal.SIGKILL)

    def _recent_runs(self) -> list[Run]:
        runs = []
        for job in self.queue.jobs([S.FAILED]):
            if job.worker == self.config.worker and job.reason and "second SIGTERM" in job.reason:
                assert job.id is not None
                run = self.queue.latest_run(job.id)
                if run is not None:
                    runs.append(run)
        return runs
