"""The daemon: one `tick` that does everything, driven by APScheduler.

A tick reaps ended jobs, carries out requests (cancel, hold, release), expires jobs that may not
run late, plans new jobs (and re-plans all waiting ones after a forecast refresh), and starts the
jobs that are due, never using more GPUs than the box has. Jobs run under detached wrappers
(`ecoq.scheduler.executors`), so a daemon killed at any point learns on restart how each job
ended, and a claimed job whose wrapper never took its start token is put back in the queue:
no job is ever started twice.
"""

import fcntl
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from ecoq.errors import EcoqError
from ecoq.meters import MeterSettings
from ecoq.models import Job, Run
from ecoq.scheduler.executors import Executor, LaunchSpec
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.metering import RunMeters, merge_segments, total_energy_j
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.replan import PlannerParams, replan
from ecoq.states import ACTIVE, WAITING, JobState

log = logging.getLogger(__name__)
S = JobState


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


@dataclass
class TickReport:
    """What one tick did (for logs and tests)."""

    reaped: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    planned: int = 0
    expired: list[int] = field(default_factory=list)


class Daemon:
    """Owns this box's jobs. Drive it with `tick()` (tests, `--once`) or `run()`."""

    def __init__(
        self,
        queue: Queue,
        source: ForecastSource,
        config: DaemonConfig,
        executor: Executor | None = None,
    ) -> None:
        self.queue = queue
        self.source = source
        self.config = config
        self.executor: Executor = executor or LocalExecutor()
        self.clock: Callable[[], datetime] = queue.clock
        self.stopping = False  # warm stop: claim nothing more
        self._replan_all = True
        self._lock = threading.Lock()
        self.meters = (
            RunMeters(config.meters, interval_s=config.meter_interval_s)
            if config.meters is not None
            else None
        )
        self._history_at: dict[str, datetime] = {}

    # -- the tick ---------------------------------------------------------------------------
    def tick(self) -> TickReport:
        """One pass over the queue. Safe to call from one thread at a time."""
        with self._lock:
            report = TickReport()
            now = self.clock()
            self._reap(now, report)
            self._save_energy_snapshots()
            self._carry_out_requests(now)
            report.expired = [j.id for j in self.queue.expire_overdue(now) if j.id is not None]
            report.planned = replan(
                self.queue, self.source, now, self.config.planner, all_waiting=self._replan_all
            )
            self._replan_all = False
            if not self.stopping:
                self._dispatch(now, report)
            self._refresh_history(now)
            return report

    def request_replan(self) -> None:
        """Re-plan every waiting job at the next tick (after a forecast refresh)."""
        self._replan_all = True

    def _reap(self, now: datetime, report: TickReport) -> None:
        for job, run in self.queue.active(self.config.worker):
            assert job.id is not None and run.id is not None
            status = self.executor.status(Path(run.run_dir))
            if status.state == "exited":
                code = status.exit_code
                if job.request == "cancel":
                    target, reason = S.CANCELLED, "cancelled by user"
                elif code == 0:
                    target, reason = S.SUCCEEDED, None
                else:
                    target, reason = S.FAILED, status.reason or f"exited with status {code}"
                if self.queue.finish(
                    job,
                    run,
                    target,
                    exit_code=code,
                    finished_at=status.finished_at or now,
                    reason=reason,
                    **self._final_energy(run),
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
            elif status.state == "running":
                if run.pid is None:
                    self.queue.update_run(run.id, pid=status.pid, started_at=status.started_at)
                if self.meters is not None and status.pid is not None:
                    self.meters.start(run.id, status.pid, list(run.gpu_indices))
            elif not _alive(run.wrapper_pid) and self.executor.abandon(Path(run.run_dir)):
                # Claimed, but the wrapper never took the start token: it never ran. Requeue.
                self.queue.update_run(
                    run.id, finished_at=now, reason="never started: the daemon stopped first"
                )
                self.queue.transition(
                    job.id,
                    [S.RUNNING],
                    S.PENDING,
                    worker=None,
                    started_at=None,
                    planned_start=None,
                )
                report.requeued.append(job.id)

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
                self._terminate(run, now, run_dir)
            elif job.request == "hold" and job.state == S.RUNNING:
                self.executor.signal(run_dir, signal.SIGSTOP)
                self.queue.transition(job.id, [S.RUNNING], S.PAUSED, request=None)
            elif job.request == "release" and job.state == S.PAUSED:
                self.executor.signal(run_dir, signal.SIGCONT)
                self.queue.transition(job.id, [S.PAUSED], S.RUNNING, request=None)
            elif job.request is not None and job.request != "cancel":
                self.queue.clear_request(job.id)  # e.g. release of a job that already resumed

    def _terminate(self, run: Run, now: datetime, run_dir: Path) -> None:
        assert run.id is not None
        if run.term_sent_at is None:
            self.executor.signal(run_dir, signal.SIGCONT)  # a paused job must see the SIGTERM
            self.executor.signal(run_dir, signal.SIGTERM)
            self.queue.update_run(run.id, term_sent_at=now)
        elif now - run.term_sent_at >= timedelta(seconds=self.config.kill_grace_s):
            self.executor.signal(run_dir, signal.SIGKILL)

    def _dispatch(self, now: datetime, report: TickReport) -> None:
        used = {i for _, run in self.queue.active(self.config.worker) for i in run.gpu_indices}
        free = [i for i in range(self.config.box_gpus) if i not in used]
        for job in self.queue.due(now):
            if job.gpus > len(free):
                continue  # waits for GPUs; smaller jobs behind it may still fit
            gpus, free = free[: job.gpus], free[job.gpus :]
            if self._start(job, gpus, now):
                assert job.id is not None
                report.started.append(job.id)
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
        spec = LaunchSpec(
            job_id=job.id,
            run_id=run.id,
            argv=list(job.command),
            cwd=job.cwd,
            env=env,
            run_dir=run_dir,
        )
        try:
            launched = self.executor.launch(spec)
        except EcoqError as exc:
            self.queue.finish(
                job, run, S.FAILED, exit_code=None, finished_at=now, reason=f"launch failed: {exc}"
            )
            return True
        self.queue.update_run(run.id, wrapper_pid=launched.wrapper_pid)
        log.info("job %s started in %s (gpus=%s)", job.id, run_dir, gpus or "none")
        return True

    # -- the warm and cold stop -------------------------------------------------------------
    def has_active(self) -> bool:
        return bool(self.queue.active(self.config.worker))

    def is_idle(self) -> bool:
        """Nothing running and nothing waiting that could start (held jobs wait for a user);
        used by `--until-idle`."""
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


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DaemonLock:
    """One daemon per data folder: an exclusive `flock` held for the daemon's life."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "daemon.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Raises EcoqError naming the pid of the daemon that already runs."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 (held for the daemon's lifetime)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            raise EcoqError(
                f"another ecoq daemon (pid {other}) already runs on {self.path.parent}; "
                "stop it first, or use another paths.data_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def run_forever(daemon: Daemon, *, until_idle: bool = False) -> None:
    """Run the daemon under APScheduler until stopped.

    SIGTERM or SIGINT once: stop claiming, let running jobs finish, then return. Twice:
    terminate the running jobs, mark them failed with the reason, and return. With `until_idle`
    it also returns once nothing is waiting or running.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    done = threading.Event()
    idle = threading.Event()
    signals = {"count": 0}
    cfg = daemon.config

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        daemon.stopping = True
        log.warning(
            "signal %s (%d): %s",
            signum,
            signals["count"],
            "warm stop" if signals["count"] == 1 else "cold stop",
        )
        done.set()

    def guarded_tick() -> None:
        try:
            report = daemon.tick()
        except Exception:  # keep the daemon alive; the next tick retries
            log.exception("tick failed")
            return
        if report.started or report.reaped:
            log.info("tick: started=%s ended=%s", report.started, report.reaped)
        if until_idle and daemon.is_idle():
            idle.set()
            done.set()
        wake = daemon.queue.next_start()
        if wake is not None and wake > daemon.clock():
            scheduler.add_job(guarded_tick, "date", run_date=wake, id="wake", replace_existing=True)

    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    scheduler.add_job(
        guarded_tick,
        "interval",
        seconds=cfg.tick_interval_s,
        id="tick",
        next_run_time=daemon.clock(),
    )
    scheduler.add_job(
        daemon.request_replan, "interval", seconds=cfg.refresh_interval_s, id="refresh"
    )
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    scheduler.start()
    try:
        while True:
            done.wait(cfg.tick_interval_s)
            done.clear()
            if signals["count"] >= 2:
                scheduler.shutdown(wait=True)
                daemon.cold_stop()
                return
            if signals["count"] == 1 and not daemon.has_active():
                return  # warm stop complete: every running job has ended
            if idle.is_set():
                return
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=True)
        for s, handler in old.items():
            signal.signal(s, handler)
