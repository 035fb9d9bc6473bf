"""The daemon, driven one tick at a time against a real SQLite file and real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler.daemon import Daemon, DaemonConfig, DaemonLock
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState
from tests.conftest import make_spec

S = JobState


class FlatProvider:
    """The same intensity everywhere: every job plans to start now."""

    name = "flat"

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        first = start.replace(minute=0, second=0, microsecond=0)
        hours = int((end - first).total_seconds() // 3600) + 2
        points = tuple(IntensityPoint(first + timedelta(hours=h), 100.0) for h in range(hours))
        return Forecast(
            zone, "average", "flat", "flat test forecast", start, timedelta(hours=1), points
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


_DAEMONS: list[Daemon] = []


@pytest.fixture
def rq(db_url: str) -> Iterator[Queue]:
    """A queue on the real clock (the jobs are real processes); kills leftover jobs after."""
    queue = Queue(open_engine(db_url))
    yield queue
    for daemon in _DAEMONS:
        for run_dir in (
            Path(r.run_dir) for j in queue.jobs(list(S)) if (r := queue.latest_run(j.id or 0))
        ):
            daemon.executor.signal(run_dir, signal.SIGKILL)
        assert isinstance(daemon.executor, LocalExecutor)
        daemon.executor.reap(10)
    _DAEMONS.clear()


def make_daemon(rq: Queue, tmp_path: Path, **kw: object) -> Daemon:
    cfg = DaemonConfig(data_dir=tmp_path / "data", worker="box1", box_gpus=0, kill_grace_s=0.5)
    for key, value in kw.items():
        setattr(cfg, key, value)
    daemon = Daemon(rq, ForecastSource(FlatProvider()), cfg)
    _DAEMONS.append(daemon)
    return daemon


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def submit(rq: Queue, command: list[str], **kw: object) -> int:
    job = rq.submit(make_spec(_utcnow(), command=command, deadline_h=2, duration_h=0.01, **kw))
    assert job.id is not None
    return job.id


def tick_until(daemon: Daemon, done: Callable[[], bool], timeout_s: float = 15) -> None:
    limit = time.monotonic() + timeout_s
    while time.monotonic() < limit:
        daemon.tick()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached before the timeout")


def state_is(rq: Queue, job_id: int, *states: JobState) -> Callable[[], bool]:
    return lambda: rq.get(job_id).state in states


def test_job_runs_and_is_recorded(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    out = tmp_path / "env.json"
    job_id = submit(
        rq,
        [
            sys.executable,
            "-c",
            f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))",
        ],
    )
    report = daemon.tick()
    assert report.planned == 1 and report.started == [job_id]
    tick_until(daemon, state_is(rq, job_id, S.SUCCEEDED))
    job, run = rq.get(job_id), rq.latest_run(job_id)
    assert job.exit_code == 0 and job.started_at and job.finished_at
    assert run is not None and run.wrapper_pid and run.exit_code == 0
    env = json.loads(out.read_text())
    assert env["ECOQ_JOB_ID"] == str(job_id)
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["CUDA_VISIBLE_DEVICES"] == ""


def test_failing_job_keeps_its_exit_code_and_output(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, sh("echo to-stdout; echo to-stderr >&2; exit 3"))
    tick_until(daemon, state_is(rq, job_id, S.FAILED))
    job, run = rq.get(job_id), rq.latest_run(job_id)
    assert job.exit_code == 3 and "3" in (job.reason or "")
    assert run is not None
    log = (Path(run.run_dir) / "output.log").read_text()
    assert "to-stdout" in log and "to-stderr" in log


def test_cancel_while_planned_never_starts(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, ["/bin/true"], not_before=_utcnow() + timedelta(minutes=30))
    daemon.tick()
    assert rq.get(job_id).state == S.PLANNED
    assert rq.cancel(job_id) == "cancelled"
    daemon.tick()
    assert rq.get(job_id).state == S.CANCELLED and rq.latest_run(job_id) is None


def test_cancel_while_running_terminates_the_process_group(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, sh("sleep 30 & sleep 30; wait"))
    tick_until(daemon, lambda: (r := rq.latest_run(job_id)) is not None and r.pid is not None)
    assert rq.cancel(job_id) == "requested"
    tick_until(daemon, state_is(rq, job_id, S.CANCELLED))
    job = rq.get(job_id)
    assert job.exit_code == 128 + signal.SIGTERM and job.reason == "cancelled by user"


def test_cancel_escalates_to_sigkill_after_the_grace(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, sh("trap '' TERM; echo ready; sleep 30"))
    tick_until(daemon, lambda: (r := rq.latest_run(job_id)) is not None and r.pid is not None)
    time.sleep(0.2)  # let the shell install its trap
    rq.cancel(job_id)
    tick_until(daemon, state_is(rq, job_id, S.CANCELLED))
    assert rq.get(job_id).exit_code == 128 + signal.SIGKILL


def test_hold_pauses_and_release_resumes(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    flag = tmp_path / "go"
    job_id = submit(rq, sh(f"while [ ! -e {flag} ]; do sleep 0.05; done; exit 0"))
    tick_until(daemon, lambda: (r := rq.latest_run(job_id)) is not None and r.pid is not None)
    assert rq.hold(job_id) == "requested"
    tick_until(daemon, state_is(rq, job_id, S.PAUSED))
    run = rq.latest_run(job_id)
    assert run is not None
    assert daemon.executor.status(Path(run.run_dir)).reason == "stopped"
    flag.touch()
    time.sleep(0.3)
    daemon.tick()
    assert rq.get(job_id).state == S.PAUSED  # stopped: it cannot see the flag
    assert rq.release(job_id) == "requested"
    tick_until(daemon, state_is(rq, job_id, S.SUCCEEDED))


def test_never_more_gpus_than_the_box_has(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path, box_gpus=2)
    flag = tmp_path / "go"
    wait = f"echo $CUDA_VISIBLE_DEVICES; while [ ! -e {flag} ]; do sleep 0.05; done"
    ids = [submit(rq, sh(wait), gpus=1) for _ in range(3)]
    daemon.tick()
    running = [i for i in ids if rq.get(i).state == S.RUNNING]
    assert running == ids[:2]
    gpus = sorted(i for j in running for i in (rq.latest_run(j).gpu_indices))  # type: ignore[union-attr]
    assert gpus == [0, 1]
    daemon.tick()
    assert rq.get(ids[2]).state == S.PLANNED
    flag.touch()
    tick_until(daemon, lambda: all(rq.get(i).state == S.SUCCEEDED for i in ids))


def test_job_not_yet_due_waits(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, ["/bin/true"], not_before=_utcnow() + timedelta(minutes=10))
    report = daemon.tick()
    assert report.started == [] and rq.get(job_id).state == S.PLANNED
    assert rq.next_start() == rq.get(job_id).planned_start


def test_claimed_but_never_launched_is_requeued_and_runs_once(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    marker = tmp_path / "ran"
    job_id = submit(rq, sh(f"echo x >> {marker}"))
    daemon.tick.__self__  # noqa: B018 (the daemon exists; simulate its crash between claim and launch)
    rq.set_plan(job_id, planned_start=_utcnow())
    run = rq.claim(
        rq.get(job_id),
        worker="box1",
        host="h",
        run_dir=str(tmp_path / "data" / "jobs" / str(job_id) / "lost"),
        gpus=[],
    )
    assert run is not None
    report = daemon.tick()  # restarted daemon: finds the claim, abandons it, requeues, restarts
    assert job_id in report.requeued
    tick_until(daemon, state_is(rq, job_id, S.SUCCEEDED))
    assert marker.read_text() == "x\n"


def test_drop_if_late_expires_and_late_jobs_still_run(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    now = _utcnow()
    late = rq.submit(make_spec(now - timedelta(hours=2), deadline_h=2.5, duration_h=1))
    drop = rq.submit(
        make_spec(now - timedelta(hours=2), deadline_h=2.5, duration_h=1, drop_if_late=True)
    )
    assert late.id is not None and drop.id is not None
    report = daemon.tick()
    assert report.expired == [drop.id]
    assert rq.get(drop.id).state == S.EXPIRED
    tick_until(daemon, state_is(rq, late.id, S.SUCCEEDED))
    assert rq.get(late.id).late


def test_one_daemon_per_data_folder(tmp_path: Path) -> None:
    first, second = DaemonLock(tmp_path), DaemonLock(tmp_path)
    first.acquire()
    with pytest.raises(Exception, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


# -- the real daemon process: crashes, warm and cold stops ---------------------------------------
def _daemon_proc(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ECOQ_DAEMON__TICK_INTERVAL_S="0.2", ECOQ_DAEMON__KILL_GRACE_S="1")
    with open(tmp_path / "daemon.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ecoq", "daemon", *args], env=env, stdout=log, stderr=log
        )


def _wait_for(done: Callable[[], bool], timeout_s: float = 20) -> None:
    limit = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > limit:
            raise AssertionError("condition not reached before the timeout")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkilled_daemon_restarts_and_reconciles(rq: Queue, tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    flag = tmp_path / "go"
    job_id = submit(
        rq, sh(f"echo start >> {marker}; while [ ! -e {flag} ]; do sleep 0.05; done; exit 5")
    )
    proc = _daemon_proc(tmp_path)
    _wait_for(lambda: (r := rq.latest_run(job_id)) is not None and r.pid is not None)
    proc.kill()
    proc.wait(timeout=10)
    assert rq.get(job_id).state == S.RUNNING  # the job outlives its daemon

    proc = _daemon_proc(tmp_path)  # restarted while the job still runs
    time.sleep(1.0)
    assert rq.get(job_id).state == S.RUNNING
    proc.kill()
    proc.wait(timeout=10)

    flag.touch()  # the job ends while no daemon runs
    run = rq.latest_run(job_id)
    assert run is not None
    _wait_for(lambda: (Path(run.run_dir) / "exit.json").exists())
    proc = _daemon_proc(tmp_path, "--until-idle")
    assert proc.wait(timeout=30) == 0
    job = rq.get(job_id)
    assert job.state == S.FAILED and job.exit_code == 5
    assert marker.read_text() == "start\n"  # never started twice


@pytest.mark.slow
def test_warm_stop_lets_running_jobs_finish_and_starts_nothing_new(
    rq: Queue, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    running = submit(rq, sh(f"while [ ! -e {flag} ]; do sleep 0.05; done"))
    proc = _daemon_proc(tmp_path)
    _wait_for(lambda: rq.get(running).state == S.RUNNING)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    later = submit(rq, ["/bin/true"])
    time.sleep(1.0)
    assert proc.poll() is None  # still waiting for the running job
    assert rq.get(later).state in (S.PENDING, S.PLANNED)
    flag.touch()
    assert proc.wait(timeout=20) == 0
    assert rq.get(running).state == S.SUCCEEDED
    assert rq.get(later).state in (S.PENDING, S.PLANNED)


@pytest.mark.slow
def test_second_sigterm_terminates_and_fails_running_jobs(rq: Queue, tmp_path: Path) -> None:
    job_id = submit(rq, sh("sleep 60"))
    proc = _daemon_proc(tmp_path)
    _wait_for(lambda: (r := rq.latest_run(job_id)) is not None and r.pid is not None)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    job, run = rq.get(job_id), rq.latest_run(job_id)
    assert job.state == S.FAILED and "second SIGTERM" in (job.reason or "")
    assert run is not None
    _wait_for(lambda: (Path(run.run_dir) / "exit.json").exists())


# -- metering -------------------------------------------------------------------------------------
class CountingMeter:
    """Every read adds 10 J: deterministic energy for the daemon's bookkeeping."""

    max_interval_s = float("inf")

    def __init__(self, device: str) -> None:
        from ecoq.meters import MeterDescription

        self.description = MeterDescription(device, "counter", "test")
        self.reads = 0
        self.closed = False

    def energy_j(self) -> float:
        self.reads += 1
        return 10.0 * self.reads

    def close(self) -> None:
        self.closed = True


def test_running_jobs_are_metered_and_energy_is_stored(rq: Queue, tmp_path: Path) -> None:
    from ecoq.meters import Detection, MeterDefaults
    from ecoq.scheduler.metering import RunMeters

    opened: list[tuple[list[str], int]] = []
    meters: list[CountingMeter] = []

    def detect(*, settings: object, gpus: list[str], process: int) -> Detection:
        opened.append((gpus, process))
        meters.append(CountingMeter("cpu"))
        return Detection((meters[-1],), ("nvml: no NVIDIA driver (test)",))

    daemon = make_daemon(rq, tmp_path, box_gpus=1, meters=MeterDefaults())
    daemon.meters = RunMeters(MeterDefaults(), interval_s=0.05, detect=detect)
    flag = tmp_path / "go"
    job_id = submit(rq, sh(f"while [ ! -e {flag} ]; do sleep 0.05; done"), gpus=1)
    tick_until(daemon, lambda: bool(opened))
    run = rq.latest_run(job_id)
    assert run is not None and opened == [(["0"], run.pid)]
    time.sleep(0.3)
    flag.touch()
    tick_until(daemon, state_is(rq, job_id, S.SUCCEEDED))
    job, run = rq.get(job_id), rq.latest_run(job_id)
    assert run is not None and run.energy_series is not None
    [segment] = run.energy_series["segments"]
    assert segment["meters"][0]["device"] == "cpu"
    assert len(segment["t_s"]) >= 3  # the origin, samples while running, the final read
    assert job.energy_j == run.energy_j == segment["energy_j"][0][-1] > 0
    assert meters[0].closed


def test_unmetered_runs_keep_energy_unknown(rq: Queue, tmp_path: Path) -> None:
    from ecoq.meters import Detection, MeterDefaults
    from ecoq.scheduler.metering import RunMeters

    daemon = make_daemon(rq, tmp_path, meters=MeterDefaults())
    daemon.meters = RunMeters(
        MeterDefaults(), interval_s=0.05, detect=lambda **_: Detection((), ("all off",))
    )
    job_id = submit(rq, sh("sleep 0.3"))
    tick_until(daemon, state_is(rq, job_id, S.SUCCEEDED))
    assert rq.get(job_id).energy_j is None  # unknown, never a made-up zero


def test_finished_runs_are_accounted_by_the_tick(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, ["/bin/true"])
    tick_until(daemon, state_is(rq, job_id, S.SUCCEEDED))
    daemon.tick()  # the tick after the run ended accounts it
    run = rq.latest_run(job_id)
    assert run is not None and run.accounting is not None
