"""Running the daemon as a service: one daemon per data folder (`DaemonLock`), and
`run_forever`, which drives `Daemon.tick` with APScheduler, wakes it at the next planned start,
pause or resume, keeps the heartbeat and the planning apart from the tick, and handles SIGTERM
(warm, then cold stop). `ecoq.scheduler.daemon` re-exports both.
"""

import fcntl
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ecoq.errors import EcoqError

if TYPE_CHECKING:
    from ecoq.scheduler.daemon import Daemon
    from ecoq.scheduler.planthread import PlanRun

__all__ = ["DaemonLock", "run_forever"]

log = logging.getLogger("ecoq.scheduler.daemon")


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


def run_forever(
    daemon: "Daemon", *, until_idle: bool = False, metrics_port: int | None = None
) -> None:
    """Run the daemon under APScheduler until stopped.

    SIGTERM or SIGINT once: stop claiming, let running jobs finish, then return. Twice:
    terminate the running jobs, mark them failed with the reason, and return. With `until_idle`
    it also returns once nothing is waiting or running. With `metrics_port`, Prometheus metrics
    are served on that port (`ecoq.scheduler.metrics`) and refreshed after each tick.
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

    metrics = None
    if metrics_port is not None:
        from ecoq.scheduler.metrics import start_metrics

        metrics = start_metrics(metrics_port, daemon.queue.engine, now=daemon.clock())

    def guarded_tick() -> None:
        try:
            report = daemon.tick()
            if metrics is not None:
                metrics.update(daemon.clock())
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

    def planned(run: "PlanRun") -> None:  # tick now: a job may be planned to start now
        if (run.planned or run.all_waiting) and scheduler.running:
            tick_now = datetime.now(UTC)
            scheduler.add_job(
                guarded_tick, "date", run_date=tick_now, id="wake", replace_existing=True
            )

    daemon.plan_in_background(on_done=planned)
    # The heartbeat runs apart from the tick, so a long tick (thousands of jobs to re-plan)
    # never makes this daemon look lost to the others.
    beat = threading.Thread(
        target=_beat,
        args=(daemon, done_beating := threading.Event()),
        daemon=True,
        name="ecoq-heartbeat",
    )
    beat.start()
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
        done_beating.set()
        beat.join()
        if scheduler.running:
            scheduler.shutdown(wait=True)
        daemon.stop_planning()
        daemon.close()
        if metrics is not None:
            metrics.close()
        for s, handler in old.items():
            signal.signal(s, handler)


def _beat(daemon: "Daemon", done: threading.Event) -> None:
    every_s = max(0.2, min(daemon.config.stale_after_s / 5, 30.0))
    while not done.wait(every_s):
        try:
            daemon.heartbeat()
        except Exception:  # a database hiccup: the next beat retries
            log.warning("heartbeat failed", exc_info=True)
