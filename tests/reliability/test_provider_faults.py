"""Provider faults end to end: the daemon, configured like a user would (`[forecast] provider`,
`[forecast.<provider>] base_url`, credentials in the environment), talks over real sockets to a
stub WattTime or Electricity Maps on 127.0.0.1 that fails for hours: 500s, 429s, slow answers,
truncated bodies, wrong units. Jobs still start no later than their latest start, and the log
says why once per fault episode, not once per tick. The daemon's clock is fake, so a day passes
in seconds; it wakes every 10 minutes and at each planned start, and re-plans every 30 minutes,
as `ecoq daemon` does."""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.config import load_settings, provider_chain
from ecoq.db import open_engine
from ecoq.forecasting import make_provider
from ecoq.forecasting.bundled import BundledProvider
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.executors import Launched, LaunchSpec, RunStatus
from ecoq.scheduler.forecasts import ChainSettings, ForecastSource, ForecastStore
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.replan import PlannerParams
from ecoq.states import JobState
from tests.conftest import FakeClock, make_spec
from tests.reliability.provider_stub import EM_TOKEN, WT_PASSWORD, WT_USER, StubProviders

S = JobState
TICK = timedelta(minutes=10)
REFRESH = timedelta(minutes=30)
#: The daemon's fake clock starts at the real time: the providers compute their horizons from
#: the real clock.
T0 = datetime.fromtimestamp(datetime.now(UTC).timestamp() // 300 * 300, UTC)


class InstantExecutor:
    """Jobs that end (exit 0) the moment they start; the suite is about when they start."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.launched: dict[Path, datetime] = {}

    def launch(self, spec: LaunchSpec) -> Launched:
        self.launched[spec.run_dir] = self.clock()
        return Launched(wrapper_pid=os.getpid(), started_at=self.clock())

    def status(self, run_dir: Path) -> RunStatus:
        started = self.launched.get(run_dir)
        if started is None:
            return RunStatus("not-started")
        return RunStatus("exited", exit_code=0, finished_at=self.clock(), started_at=started)

    def signal(self, run_dir: Path, sig: int) -> bool:
        return False

    def terminate(self, run_dir: Path, grace_s: float = 0.0) -> None:
        pass

    def abandon(self, run_dir: Path) -> bool:
        return run_dir not in self.launched


def profile(t: datetime) -> float:
    """Dirty, except 6-8 h and 18-20 h after T0 (a window worth waiting for)."""
    hour = (t - T0) / timedelta(hours=1) % 12
    return 300.0 if 6 <= hour < 8 else 900.0


@dataclass
class Rig:
    clock: FakeClock
    stub: StubProviders
    queue: Queue
    daemon: Daemon
    waits: list[float]


@pytest.fixture
def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fast_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
) -> Iterator[Rig]:
    """The daemon as `ecoq daemon` builds it from a config file naming the stub, on the fake
    clock. Parametrised by (provider, fail_policy)."""
    provider, fail_policy = request.param
    clock.now = T0
    with StubProviders(clock, profile, slow_s=1.2) as stub:
        config = tmp_path / "ecoq.toml"
        config.write_text(
            f'[forecast]\nprovider = "{provider}"\n'
            f'[forecast.{provider}]\nbase_url = "{stub.base_url}"\ntimeout_s = 0.5\n'
            f'[planner]\nfail_policy = "{fail_policy}"\n'
        )
        monkeypatch.setenv("ECOQ_CONFIG", str(config))
        monkeypatch.setenv("ECOQ_WATTTIME_USERNAME", WT_USER)
        monkeypatch.setenv("ECOQ_WATTTIME_PASSWORD", WT_PASSWORD)
        monkeypatch.setenv("ECOQ_ELECTRICITYMAPS_TOKEN", EM_TOKEN)
        settings = load_settings()
        engine = open_engine(settings.database_url)
        cfg = settings.forecast
        providers = [
            make_provider(name, watttime=cfg.watttime, electricitymaps=cfg.electricitymaps)
            for name in provider_chain(cfg.provider)
        ]
        waits: list[float] = []
        for p in providers:
            # Retries back off 1, 2, 4 s: record the waits instead of sleeping through them.
            p.api._sleep = waits.append  # type: ignore[attr-defined]
        source = ForecastSource(
            providers,
            store=ForecastStore(engine, clock),
            bundled=BundledProvider(),
            settings=ChainSettings(refresh_s=cfg.refresh_interval_s, max_age_s=cfg.max_age_s),
            clock=clock,
        )
        queue = Queue(engine, clock=clock)
        planner = PlannerParams(
            min_saving=settings.planner.min_saving,
            rule=settings.planner.averaging,
            fail_policy=settings.planner.fail_policy,
        )
        daemon = Daemon(
            queue,
            source,
            DaemonConfig(data_dir=fast_dir / "data", worker="box1", box_gpus=0, planner=planner),
            executor=InstantExecutor(clock),
        )
        yield Rig(clock, stub, queue, daemon, waits)
        engine.dispose()


@dataclass(frozen=True)
class Episode:
    mode: str
    start_h: float
    end_h: float


def run_day(rig: Rig, episodes: list[Episode], hours: float, every: timedelta) -> list[int]:
    """Drive the daemon from T0 for `hours`: submit a job every `every` (deadlines 2-9 h,
    durations 30-60 min), switch the stub's faults per `episodes`, tick every 10 minutes and at
    each planned start, re-plan every 30 minutes. Returns the jobs' ids."""
    ids: list[int] = []
    next_job = T0
    next_refresh = T0 + REFRESH
    end = T0 + timedelta(hours=hours)
    n = 0
    while rig.clock.now < end:
        now = rig.clock.now
        h = (now - T0) / timedelta(hours=1)
        rig.stub.mode = next((e.mode for e in episodes if e.start_h <= h < e.end_h), "ok")
        if now >= next_job:
            spec = make_spec(
                now, deadline_h=2 + n % 8, duration_h=0.5 + (n % 3) / 4, zone=_zone(rig)
            )
            job = rig.queue.submit(spec)
            assert job.id is not None
            ids.append(job.id)
            next_job += every
            n += 1
        if now >= next_refresh:
            rig.daemon.request_replan()  # `ecoq daemon`'s refresh job
            next_refresh += REFRESH
        rig.daemon.tick()
        wake = rig.queue.next_start()
        step = now + TICK
        if wake is not None and now < wake < step:
            step = wake
        rig.clock.now = min(step, next_job, next_refresh)
    return ids


def _zone(rig: Rig) -> str:
    names = [p.name for p in rig.daemon.source.providers]
    return "CAISO_NORTH" if "watttime" in names else "DE"


def check_started_in_time(rig: Rig, ids: list[int]) -> None:
    """Every job started, and no later than its latest start (deadline − duration)."""
    for job_id in ids:
        job = rig.queue.get(job_id)
        latest = job.deadline - timedelta(seconds=job.duration_s)
        if job.started_at is None:
            assert latest > rig.clock.now, f"job {job_id} never started ({job.plan_reason})"
            continue
        assert job.state == S.SUCCEEDED, (job_id, job.state, job.reason)
        assert job.submitted_at <= job.started_at <= latest, (
            f"job {job_id} started {job.started_at}, latest start {latest}: {job.plan_reason}"
        )


def warnings_by_episode(
    records: list[logging.LogRecord], episodes: list[Episode]
) -> dict[Episode, list[str]]:
    """The WARNING (or worse) lines logged while each episode was on."""
    out: dict[Episode, list[str]] = {e: [] for e in episodes}
    for record in records:
        if record.levelno < logging.WARNING:
            continue
        at = getattr(record, "fake_time", None)
        assert at is not None
        h = (at - T0) / timedelta(hours=1)
        episode = next((e for e in episodes if e.start_h <= h < e.end_h + 0.5), None)
        assert episode is not None, f"a warning outside any fault: {record.getMessage()}"
        out[episode].append(record.getMessage())
    return out


class _Recorder(logging.Handler):
    """Keeps ecoq's log records, each stamped with the daemon's (fake) time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(logging.INFO)
        self.clock = clock
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.fake_time = self.clock.now
        self.records.append(record)


@pytest.fixture
def logged(rig: Rig) -> Iterator[list[logging.LogRecord]]:
    """ecoq's log records while the test runs."""
    logger = logging.getLogger("ecoq")
    recorder = _Recorder(rig.clock)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(recorder)
    yield recorder.records
    logger.removeHandler(recorder)
    logger.setLevel(level)


EPISODES = [
    Episode("500", 0.5, 2.5),
    Episode("429", 3.5, 5.0),
    Episode("slow", 6.0, 7.5),
    Episode("truncated", 8.5, 10.0),
    Episode("bad-json", 11.0, 12.5),
    Episode("429-long", 13.5, 14.5),
    Episode("wrong-units", 15.5, 23.0),  # long enough for the cached forecast to go stale
]
CAUSES = {
    "500": "HTTP 500",
    "429": "HTTP 429",
    "429-long": "longer than",
    "slow": "timeout",
    "truncated": "connection failed",
    "bad-json": "malformed JSON",
    "wrong-units": "units",
}


@pytest.mark.slow
@pytest.mark.parametrize("rig", [("watttime", "now")], indirect=True)
def test_watttime_faults_for_hours_never_delay_a_start_and_are_logged_once(
    rig: Rig, logged: list[logging.LogRecord]
) -> None:
    ids = run_day(rig, EPISODES, hours=25, every=timedelta(minutes=50))
    check_started_in_time(rig, ids)
    by_episode = warnings_by_episode(logged, EPISODES)
    for episode, lines in by_episode.items():
        assert lines, f"{episode.mode}: nothing logged"
        assert len(lines) == len(set(lines)), f"{episode.mode}: a warning repeated: {lines}"
        # One warning per step down the chain (cache, stale cache, history, none), not per tick.
        assert len(lines) <= 3, f"{episode.mode}: {lines}"
        assert CAUSES[episode.mode] in lines[0], (episode.mode, lines[0])
        assert "watttime" in lines[0] and "CAISO_NORTH" in lines[0]
    back = [r for r in logged if "from watttime again" in r.getMessage()]
    assert len(back) == len(EPISODES)  # each episode's end is logged too
    # Every fault was served, and the stub saw each episode; a tick never waits long.
    modes = {mode for mode, _ in rig.stub.requests}
    assert modes == {"ok", *(e.mode for e in EPISODES)}
    assert max(rig.waits, default=0) <= 60 and sum(rig.waits) < 25 * 60
    # Jobs planned during a fault say what they were planned on.
    labels = {rig.queue.get(i).plan_label for i in ids}
    assert any(label and "cached" in label for label in labels), labels


@pytest.mark.slow
@pytest.mark.parametrize("rig", [("watttime", "latest")], indirect=True)
def test_watttime_down_from_the_start_jobs_start_at_their_latest_start(
    rig: Rig, logged: list[logging.LogRecord]
) -> None:
    episodes = [Episode("500", 0, 6)]
    ids = run_day(rig, episodes, hours=8, every=timedelta(minutes=70))
    check_started_in_time(rig, ids)
    lines = warnings_by_episode(logged, episodes)[episodes[0]]
    assert len(lines) == 1 and "using none" in lines[0] and "HTTP 500" in lines[0], lines
    started_during = [
        rig.queue.get(i) for i in ids if rig.queue.get(i).submitted_at < T0 + timedelta(hours=6)
    ]
    for job in started_during:
        latest = job.deadline - timedelta(seconds=job.duration_s)
        if job.started_at is not None and latest < T0 + timedelta(hours=6):
            assert job.started_at == latest, (job.id, job.plan_reason)  # fail_policy = latest
            assert "no forecast for CAISO_NORTH" in (job.plan_reason or "")


@pytest.mark.slow
@pytest.mark.parametrize("rig", [("electricitymaps", "now")], indirect=True)
def test_electricitymaps_faults_fall_back_to_the_typical_profile(
    rig: Rig, logged: list[logging.LogRecord]
) -> None:
    episodes = [Episode("500", 0, 3), Episode("slow", 4, 5.5), Episode("truncated", 6.5, 8)]
    ids = run_day(rig, episodes, hours=10, every=timedelta(minutes=45))
    check_started_in_time(rig, ids)
    by_episode = warnings_by_episode(logged, episodes)
    first = by_episode[episodes[0]]
    assert len(first) == 1 and "using typical profile" in first[0], first
    for episode, lines in by_episode.items():
        assert lines and len(lines) == len(set(lines)) <= 3, (episode.mode, lines)
    labels = {rig.queue.get(i).plan_label or "" for i in ids}
    assert any("typical" in label for label in labels), labels
