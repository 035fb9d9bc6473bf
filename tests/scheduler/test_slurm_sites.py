"""Slurm sites driven by the daemon, on a real single-node Slurm (`tests/services/slurm.sh`):
submitted held at plan time, moved on re-plan, released when due, withdrawn when the plan no
longer wants it, cancelled, and reaped with its real times and exit status."""

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.errors import ForecastUnavailable
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.executors.slurm import SlurmExecutor, SlurmSite
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.sites import Site
from ecoq.scheduler.slurmdriver import SlurmDriver
from ecoq.states import JobState
from tests.conftest import make_spec
from tests.scheduler.executors.test_slurm import slurm, slurm_site  # noqa: F401 (fixtures)

S = JobState
HPC = Site("hpc", "DE", kind="slurm")


class FlatProvider:
    """The same intensity at every hour: the planner starts jobs at once."""

    name = "flat"

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        t0 = start.replace(minute=0, second=0, microsecond=0)
        hours = int((end - t0).total_seconds() // 3600) + 2
        points = tuple(IntensityPoint(t0 + timedelta(hours=h), 300.0) for h in range(hours))
        return Forecast(zone, "average", "flat", "test forecast", t0, timedelta(hours=1), points)

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable("flat: keeps no realized values")


def _setup(tmp_path: Path, site: SlurmSite) -> tuple[Queue, SlurmDriver, Daemon]:
    queue = Queue(open_engine(f"sqlite:///{tmp_path / 'ecoq.db'}"))
    ex = SlurmExecutor(replace(site, name="hpc"))
    driver = SlurmDriver(queue, {"hpc": ex}, data_dir=tmp_path / "data", worker="login")
    config = DaemonConfig(data_dir=tmp_path / "data", worker="login", box_gpus=0, sites=(HPC,))
    return queue, driver, Daemon(queue, ForecastSource(FlatProvider()), config, slurm=driver)


def _job(queue: Queue, tmp_path: Path, command: list[str]) -> int:
    job = queue.submit(make_spec(datetime.now(UTC), command=command, cwd=str(tmp_path)))
    assert job.id is not None
    return job.id


def _until(check: Callable[[], bool], step: Callable[[], object], within_s: float = 30) -> None:
    limit = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < limit, "condition not reached in time"
        step()
        time.sleep(0.3)


def _ceil(t: datetime) -> datetime:
    return t.replace(microsecond=0) + timedelta(seconds=1 if t.microsecond else 0)


@pytest.mark.slurm
def test_held_at_plan_time_moved_released_and_reaped(
    slurm_site: SlurmSite,  # noqa: F811
    slurm: SlurmExecutor,  # noqa: F811
    tmp_path: Path,
) -> None:
    queue, driver, daemon = _setup(tmp_path, slurm_site)
    job_id = _job(queue, tmp_path, ["/bin/sh", "-c", "echo hello from slurm"])
    start = datetime.now(UTC) + timedelta(hours=3)
    assert queue.set_plan(job_id, planned_start=start, site="hpc")
    assert driver.sync(datetime.now(UTC)).submitted == [job_id]
    run_dir = Path(queue.get(job_id).slurm_run_dir or "")
    held = slurm.job(run_dir)
    assert held is not None and held.held and held.eligible_at == _ceil(start)
    assert driver.sync(datetime.now(UTC)).submitted == []  # once only

    moved_to = datetime.now(UTC) + timedelta(hours=1)
    assert queue.set_plan(job_id, planned_start=moved_to, site="hpc")
    assert driver.sync(datetime.now(UTC)).moved == [job_id]
    again = slurm.job(run_dir)
    assert again is not None and again.held and again.eligible_at == _ceil(moved_to)
    assert queue.get(job_id).state == S.PLANNED  # not before its time

    assert queue.set_plan(job_id, planned_start=datetime.now(UTC), site="hpc")
    released = driver.sync(datetime.now(UTC))
    assert released.released == [job_id]
    job = queue.get(job_id)
    run = queue.latest_run(job_id)
    assert job.state == S.RUNNING and job.worker == "login"
    assert run is not None and run.run_dir == str(run_dir)

    _until(lambda: queue.get(job_id).state == S.SUCCEEDED, daemon.tick)
    job = queue.get(job_id)
    assert job.exit_code == 0 and job.started_at is not None and job.finished_at is not None
    assert job.finished_at >= job.started_at and job.slurm_run_dir is None
    assert (run_dir / "output.log").read_text() == "hello from slurm\n"


@pytest.mark.slurm
def test_withdrawn_when_replanned_elsewhere_or_cancelled_before_its_time(
    slurm_site: SlurmSite,  # noqa: F811
    slurm: SlurmExecutor,  # noqa: F811
    tmp_path: Path,
) -> None:
    queue, driver, _ = _setup(tmp_path, slurm_site)
    later = datetime.now(UTC) + timedelta(hours=2)
    moved, cancelled = (_job(queue, tmp_path, ["/bin/true"]) for _ in range(2))
    for job_id in (moved, cancelled):
        assert queue.set_plan(job_id, planned_start=later, site="hpc")
    assert sorted(driver.sync(datetime.now(UTC)).submitted) == [moved, cancelled]
    dirs = {j: Path(queue.get(j).slurm_run_dir or "") for j in (moved, cancelled)}
    assert queue.set_plan(moved, planned_start=later, site="box-elsewhere")
    assert queue.cancel(cancelled) == "cancelled"
    report = driver.sync(datetime.now(UTC))
    assert sorted(report.withdrawn) == [moved, cancelled]
    for job_id, run_dir in dirs.items():
        assert slurm.status(run_dir).state == "not-started"  # cancelled in Slurm, never ran
        assert queue.get(job_id).slurm_run_dir is None
    assert driver.sync(datetime.now(UTC)) == type(report)()  # nothing left to do


@pytest.mark.slurm
def test_the_daemon_plans_at_the_slurm_site_and_a_running_job_is_cancelled(
    slurm_site: SlurmSite,  # noqa: F811
    slurm: SlurmExecutor,  # noqa: F811
    tmp_path: Path,
) -> None:
    queue, _, daemon = _setup(tmp_path, slurm_site)
    job_id = _job(queue, tmp_path, ["/bin/sleep", "60"])
    report = daemon.tick()  # plans (flat forecast: now), submits held and releases at once
    assert report.slurm is not None and report.slurm.released == [job_id]
    assert queue.get(job_id).site == "hpc"
    run = queue.latest_run(job_id)
    assert run is not None
    _until(lambda: slurm.status(Path(run.run_dir)).state == "running", lambda: None)
    assert queue.cancel(job_id) == "requested"
    _until(lambda: queue.get(job_id).state == S.CANCELLED, daemon.tick)
    status = slurm.status(Path(run.run_dir))
    assert status.state == "exited" and status.reason is not None and "CANCELLED" in status.reason


@pytest.mark.slurm
def test_runs_on_the_cluster_do_not_take_this_boxs_slots(
    slurm_site: SlurmSite,  # noqa: F811
    slurm: SlurmExecutor,  # noqa: F811
    tmp_path: Path,
) -> None:
    queue = Queue(open_engine(f"sqlite:///{tmp_path / 'ecoq.db'}"))
    ex = SlurmExecutor(replace(slurm_site, name="hpc"))
    driver = SlurmDriver(queue, {"hpc": ex}, data_dir=tmp_path / "data", worker="login")
    sites = (Site("login", "DE", slots=1), Site("hpc", "FR", kind="slurm"))
    config = DaemonConfig(
        data_dir=tmp_path / "data", worker="login", box_gpus=0, max_jobs=1, sites=sites
    )
    daemon = Daemon(queue, ForecastSource(FlatProvider()), config, slurm=driver)
    now = datetime.now(UTC)
    on_cluster = queue.submit(make_spec(now, command=["/bin/sleep", "60"], zone="FR"))
    assert on_cluster.id is not None
    daemon.tick()  # plans it at hpc, submits and releases it
    run = queue.latest_run(on_cluster.id)
    assert run is not None and queue.get(on_cluster.id).site == "hpc"
    _until(lambda: slurm.status(Path(run.run_dir)).state == "running", lambda: None)
    local = queue.submit(make_spec(now, command=["/bin/true"], zone="DE", cwd=str(tmp_path)))
    started: list[int] = []
    _until(lambda: local.id in started, lambda: started.extend(daemon.tick().started))
    assert queue.get(local.id or 0).site == "login"
    daemon.executor.reap(10)  # type: ignore[attr-defined]
