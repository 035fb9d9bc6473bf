"""Planning across `[[sites]]`: the planner picks site and time together, spreads jobs over the
sites' capacity, avoids sites whose daemon is gone, and each daemon starts only its own site's
jobs. Real SQLite files; the daemons' clock is a fake one."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.models import Job
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.replan import PlannerParams, plan_batch
from ecoq.scheduler.sites import Site, SiteMap
from ecoq.states import JobState
from tests.conftest import FakeClock, make_spec

S = JobState
T0 = FakeClock(datetime.fromisoformat("2026-11-30T10:00:00+00:00")).now
#: DE is dirty all day; FR is clean from hour 2 on; PL is dirtiest.
ZONES = {"DE": [400.0] * 48, "FR": [300.0, 300.0] + [50.0] * 46, "PL": [700.0] * 48}


class ZoneProvider:
    """Hourly values per zone from T0 on (`values[zone][h]` holds over hour h)."""

    name = "zones"

    def __init__(self, values: dict[str, list[float]]) -> None:
        self.values = values

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        series = self.values[zone]
        points = tuple(IntensityPoint(T0 + timedelta(hours=h), v) for h, v in enumerate(series))
        return Forecast(zone, "average", "zones", "test forecast", T0, timedelta(hours=1), points)


SITES = (
    Site("box-de", "DE", slots=1, kind="local"),
    Site("box-fr", "FR", slots=1, kind="remote"),
    Site("hpc-pl", "PL", kind="slurm"),
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def queue(db_url: str, clock: FakeClock) -> Queue:
    return Queue(open_engine(db_url), clock=clock)


def _submit(queue: Queue, zones: tuple[str, ...], **kw: object) -> Job:
    spec = make_spec(T0, zone=zones[0], zones=zones, deadline_h=12, duration_h=1, **kw)
    return queue.submit(spec)


def _plan(queue: Queue, sites: SiteMap) -> dict[int, dict[str, object]]:
    todo = queue.jobs([S.PENDING])
    planned = plan_batch(todo, [], ForecastSource(ZoneProvider(ZONES)), T0, PlannerParams(), sites)
    return {job.id or 0: fields for job, fields in planned}


def test_a_job_allowed_in_two_zones_is_relocated_to_the_cleaner_site(queue: Queue) -> None:
    job = _submit(queue, ("DE", "FR"))
    [fields] = _plan(queue, SiteMap("box-de", SITES)).values()
    assert fields["site"] == "box-fr" and fields["plan_zone"] == "FR"
    assert fields["planned_start"] == T0 + timedelta(hours=2)
    assert "relocated from DE to FR (box-fr)" in str(fields["plan_reason"])
    assert fields["plan_saving"] == pytest.approx(1 - 50 / 400)
    assert job.zone == "DE"  # the home zone (the counterfactual) does not change


def test_a_site_whose_daemon_is_gone_gets_no_new_work(queue: Queue) -> None:
    _submit(queue, ("DE", "FR"))
    [fields] = _plan(queue, SiteMap("box-de", SITES, down=frozenset({"box-fr"}))).values()
    assert fields["site"] == "box-de"


def test_capacity_spreads_jobs_over_sites_and_hours(queue: Queue) -> None:
    for _ in range(3):
        _submit(queue, ("FR", "DE"))
    plans = list(_plan(queue, SiteMap("box-de", SITES)).values())
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for fields in plans:
        start = fields["planned_start"]
        assert isinstance(start, datetime)
        spans.setdefault(str(fields["site"]), []).append((start, start + timedelta(hours=1)))
    for site, windows in spans.items():  # one slot per site: no two windows overlap
        windows.sort()
        assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:], strict=False)), site
    assert len(spans["box-fr"]) >= 2  # the clean site takes most, one after another


def test_interruptible_jobs_are_split_only_at_daemon_sites(queue: Queue) -> None:
    _submit(queue, ("PL",), interruptible=True)
    [fields] = _plan(queue, SiteMap("box-de", SITES)).values()
    assert fields["site"] == "hpc-pl"
    assert len(fields["segments"] or []) == 1  # type: ignore[arg-type]


def test_no_site_for_the_zones_is_an_error_at_submit_and_a_reason_later(queue: Queue) -> None:
    _submit(queue, ("GB",))
    source = ForecastSource(ZoneProvider(ZONES))
    todo = queue.jobs([S.PENDING])
    with pytest.raises(ValidationError, match=r"no usable site serves zone\(s\) GB; sites: box-de"):
        plan_batch(todo, [], source, T0, PlannerParams(), SiteMap("x", SITES), strict=True)
    [(_, fields)] = plan_batch(todo, [], source, T0, PlannerParams(), SiteMap("x", SITES))
    assert fields["site"] is None and "no usable site serves" in str(fields["plan_reason"])


_DAEMONS: list[Daemon] = []


@pytest.fixture
def daemons(queue: Queue) -> Iterator[list[Daemon]]:
    yield _DAEMONS
    for daemon in _DAEMONS:
        assert isinstance(daemon.executor, LocalExecutor)
        daemon.executor.reap(10)
    _DAEMONS.clear()


def _daemon(queue: Queue, tmp_path: Path, name: str, zone: str) -> Daemon:
    config = DaemonConfig(
        data_dir=tmp_path / name, worker=name, box_gpus=0, zone=zone, max_jobs=1, sites=SITES
    )
    daemon = Daemon(queue, ForecastSource(ZoneProvider(ZONES)), config)
    _DAEMONS.append(daemon)
    return daemon


def test_each_daemon_starts_only_its_sites_jobs(
    queue: Queue, clock: FakeClock, tmp_path: Path, daemons: list[Daemon]
) -> None:
    de = _daemon(queue, tmp_path, "box-de", "DE")
    fr = _daemon(queue, tmp_path, "box-fr", "FR")
    fr.heartbeat()  # box-fr is alive
    job = _submit(queue, ("DE", "FR"))
    de_only = _submit(queue, ("DE",))
    assert job.id is not None and de_only.id is not None
    de.tick()
    assert queue.get(job.id).site == "box-fr"
    clock.advance(hours=2, seconds=1)
    fr.heartbeat()
    report = de.tick()
    assert job.id not in report.started  # box-fr's job: box-de leaves it alone
    assert de_only.id in report.started or queue.get(de_only.id).state != S.PLANNED
    report = fr.tick()
    assert report.started == [job.id]
    assert queue.get(job.id).worker == "box-fr"


def test_jobs_planned_at_a_lost_daemons_site_move_to_a_live_one(
    queue: Queue, clock: FakeClock, tmp_path: Path, daemons: list[Daemon]
) -> None:
    de = _daemon(queue, tmp_path, "box-de", "DE")
    fr = _daemon(queue, tmp_path, "box-fr", "FR")
    fr.heartbeat()
    job = _submit(queue, ("DE", "FR"))
    assert job.id is not None
    de.tick()
    assert queue.get(job.id).site == "box-fr"
    clock.advance(seconds=de.config.stale_after_s + 1)  # box-fr falls silent
    de.request_replan()
    de.tick()
    assert queue.get(job.id).site == "box-de"
