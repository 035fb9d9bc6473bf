"""Retention: the database and data folder stay bounded, and nothing accounting needs is lost."""

import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, update
from sqlmodel import col, select

from ecoq.accounting import profile_from_series
from ecoq.config import Settings, load_settings
from ecoq.db import make_engine, open_engine, session
from ecoq.errors import ConfigError, ForecastUnavailable
from ecoq.forecasting import Forecast
from ecoq.models import ForecastRecord, Job, Run, RunUnit
from ecoq.scheduler.compact import thin_series
from ecoq.scheduler.forecasts import ChainSettings, ForecastSource, ForecastStore
from ecoq.scheduler.reconcile import AccountingParams, account_run, reconcile
from ecoq.scheduler.retention import Retention, RetentionPolicy, _PruneLock, merge_spans
from tests.conftest import FakeClock
from tests.seed import add_run, forecast, series

T = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
FIGURES = (
    "energy_j",
    "cpu_energy_j",
    "gpu_energy_j",
    "facility_energy_j",
    "realized_g",
    "counterfactual_g",
    "avoided_g",
    "accounting",
    "intensity_kind",
)


class NoHistory:
    """A provider with nothing to fetch: realized values are stored by the test."""

    name = "file"
    signal = "average"

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable("none")

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable("none")


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    engine = open_engine(any_db_url)
    yield engine
    engine.dispose()


def busy_series(start: datetime, hours: float, every_s: float) -> dict[str, Any]:
    """A GPU counter, a CPU and a RAM estimate sampled every `every_s`, with varying power."""
    samples, gpu, cpu, ram = [], 0.0, 0.0, 0.0
    n = int(hours * 3600 / every_s)
    for i in range(n + 1):
        if i:
            gpu += every_s * (250 + 100 * math.sin(i / 7))
            cpu += every_s * (40 + 5 * (i % 3))
            ram += every_s * 3.0
        samples.append((i * every_s + 0.013 * (i % 5), [gpu, cpu, ram]))
    meters = [("gpu:0", "counter"), ("cpu", "estimate"), ("ram", "estimate")]
    return series(start, meters, samples)


def count(engine: Engine, realized: bool) -> int:
    with session(engine) as s:
        return int(
            s.exec(select(func.count()).where(col(ForecastRecord.realized) == realized)).one()
        )


def figures(engine: Engine, run_id: int) -> tuple[object, ...]:
    with session(engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        job = s.get(Job, run.job_id)
        assert job is not None
        return (
            *(getattr(run, f) for f in FIGURES),
            job.realized_g,
            job.avoided_g,
            job.accounting,
        )


# -- pure parts ------------------------------------------------------------------------------
def test_thinning_keeps_every_total_and_the_run_span() -> None:
    full = busy_series(T, 2.0, 5.0)
    thin = thin_series(full, 300.0)
    before, after = profile_from_series(full), profile_from_series(thin)
    assert before is not None and after is not None
    assert len(thin["segments"][0]["t_s"]) == 25  # 1441 samples -> one per 5 minutes
    assert after.energy_j == pytest.approx(before.energy_j, rel=1e-12)
    for kind in ("gpu", "cpu", "ram"):
        assert after.by_device_j[kind] == pytest.approx(before.by_device_j[kind], rel=1e-12)
    assert after.by_method_j == pytest.approx(before.by_method_j, rel=1e-12)
    assert (after.start, after.end, after.method) == (before.start, before.end, before.method)
    # hour by hour the energy is still right (the kept samples are 5 minutes apart)
    for h in range(2):
        lo, hi = T + timedelta(hours=h), T + timedelta(hours=h + 1)
        assert after.energy_between_j(lo, hi) == pytest.approx(
            before.energy_between_j(lo, hi), rel=2e-3
        )
    assert thin_series(thin, 300.0)["segments"][0]["t_s"] == thin["segments"][0]["t_s"]


def test_spans_merge_and_a_long_list_only_grows() -> None:
    h = [T + timedelta(hours=i) for i in range(30)]
    assert merge_spans([(h[5], h[7]), (h[1], h[3]), (h[2], h[4]), (h[4], h[5])]) == [(h[1], h[7])]
    spans = [(h[i], h[i] + timedelta(minutes=30)) for i in range(0, 30, 2)]
    merged = merge_spans(spans, limit=4)
    assert len(merged) == 4
    assert all(any(lo <= a and b <= hi for lo, hi in merged) for a, b in spans)


def test_settings_give_the_policy_and_refuse_too_little_realized_history(
    tmp_path: Path,
) -> None:
    policy = RetentionPolicy.from_settings(Settings().retention)
    assert policy == RetentionPolicy()
    assert (policy.forecasts, policy.realized, policy.jobs) == (30 * DAY, 90 * DAY, None)
    env = {"HOME": str(tmp_path), "ECOQ_RETENTION__REALIZED_DAYS": "30"}
    with pytest.raises(ConfigError, match="fallback forecaster"):
        load_settings(env=env)
    env["ECOQ_RETENTION__REALIZED_DAYS"] = "0"
    assert RetentionPolicy.from_settings(load_settings(env=env).retention).realized is None


def test_compaction_drops_only_what_newer_fetches_replaced(engine: Engine) -> None:
    """The daemon's pattern: 2 days of 5-minute realized values every 6 hours; later fetches
    revise values, one has a gap, one repeats another's span exactly."""
    now = T + 10 * DAY
    fetched = {"at": T}
    store = ForecastStore(engine, clock=lambda: fetched["at"])
    for k in range(40):
        at = T + timedelta(hours=6 * k)
        fetched["at"] = at
        values = [300.0 + k + (i % 7) for i in range(576)]
        fc = forecast("DE", at - 2 * DAY, values, step_h=1 / 12, realized=True, issued_at=at)
        if k == 20:  # a gap: the older fetches' value there stays in use
            fc = Forecast(**{**fc.__dict__, "points": fc.points[:100] + fc.points[101:]})
        store.save(fc)
        if k == 30:
            store.save(fc)  # the same span fetched twice: the older copy is all replaced
    lo, hi = T - 2 * DAY, T + 10 * DAY
    before = store.history("DE", "average", lo, hi)
    with session(engine) as s:
        points_before = sum(len(r.points) for r in s.exec(select(ForecastRecord)).all())
    report = Retention(engine, RetentionPolicy(realized=None)).run(now)
    after = store.history("DE", "average", lo, hi)
    assert after == before
    with session(engine) as s:
        records = s.exec(select(ForecastRecord).order_by(col(ForecastRecord.id))).all()
    assert report.realized == 1 and len(records) == 40  # the repeated fetch's older copy
    assert report.compacted == 36  # all but the last day's 4
    assert sum(len(r.points) for r in records) < points_before / 3
    assert [r.compacted_at is None for r in records[-4:]] == [True] * 4
    assert Retention(engine, RetentionPolicy(realized=None)).run(now).compacted == 0


# -- months of use ---------------------------------------------------------------------------
@pytest.mark.slow
def test_months_of_use_stay_bounded_and_accounting_is_unchanged(
    engine: Engine, tmp_path: Path
) -> None:
    """80 days: each day two zones' forecasts and realized values arrive, a job runs 2 h with a
    sample a minute and is accounted; retention runs daily."""
    policy = RetentionPolicy(
        forecasts=10 * DAY,
        realized=64 * DAY,
        samples=5 * DAY,
        samples_step_s=600.0,
        run_logs=20 * DAY,
        batch=7,  # many small batches
    )
    data = tmp_path / "data"
    retention = Retention(engine, policy, data_dir=data)
    store = ForecastStore(engine, clock=lambda: T)
    source = ForecastSource(NoHistory(), store=store)
    final: dict[int, tuple[object, ...]] = {}
    counts: list[tuple[int, int, int]] = []
    runs: list[tuple[int, datetime]] = []
    for d in range(80):
        day = T + d * DAY
        now = day + timedelta(hours=12)
        for zone in ("DE", "FR"):
            values = [200.0 + 10 * ((h + d) % 24) for h in range(48)]
            store.save(forecast(zone, day, values, issued_at=day))
            if d:
                real = [v + 7 for v in values[:24]]
                store.save(forecast(zone, day - DAY, real, realized=True, issued_at=day))
        run_dir = data / "jobs" / str(d + 1) / "run"
        run_dir.mkdir(parents=True)
        (run_dir / "output.log").write_text("epoch 1\n")
        _, run_id = add_run(
            engine,
            submitted_at=day,
            started_at=day + timedelta(hours=3),
            finished_at=day + timedelta(hours=5),
            energy_series=busy_series(day + timedelta(hours=3), 2.0, 60.0),
            run_dir=str(run_dir),
        )
        runs.append((run_id, day + timedelta(hours=5)))
        account_run(engine, store, run_id, now=now)
        reconcile(engine, store, source, now)
        for rid, _ in runs:
            if rid not in final and figures(engine, rid)[FIGURES.index("accounting")] == "final":
                final[rid] = figures(engine, rid)
        retention.run(now)
        folders = sum(1 for _ in (data / "jobs").iterdir())
        counts.append((count(engine, False), count(engine, True), folders))

    assert len(final) == 79  # every run but today's became final on realized values
    for rid, seen in final.items():
        assert figures(engine, rid) == seen, rid
    # bounded: forecasts_days + the needed spans, realized_days, run_logs_days (+ a day or two)
    assert max(c[0] for c in counts) <= 2 * (10 + 3)
    assert max(c[1] for c in counts) <= 2 * (64 + 2)
    assert max(c[2] for c in counts) <= 20 + 2
    assert counts[-1] == counts[-10]  # steady state
    with session(engine) as s:
        stored = {r.id: r for r in s.exec(select(Run)).all()}
    now = T + 79 * DAY + timedelta(hours=12)
    for rid, ended in runs:
        run = stored[rid]
        assert run.energy_series is not None
        samples = len(run.energy_series["segments"][0]["t_s"])
        if now - ended > 5 * DAY:
            assert run.samples_pruned_at is not None and samples == 13
        else:
            assert run.samples_pruned_at is None and samples == 121
        profile = profile_from_series(run.energy_series)
        assert profile is not None and profile.energy_j == pytest.approx(run.energy_j, rel=1e-9)


def test_what_a_provisional_run_needs_is_kept_and_gives_the_same_figures(
    engine: Engine,
) -> None:
    """A run 40 days ago that is still provisional (no realized values, a long finalize_after):
    the forecasts over its run and its "run now" window stay; the others go."""
    store = ForecastStore(engine, clock=lambda: T)
    old = T - 40 * DAY
    for d in range(-45, 1):
        store.save(forecast("DE", T + d * DAY, [300.0 + d + h for h in range(24)]))
    _, run_id = add_run(
        engine,
        submitted_at=old + timedelta(hours=2),
        started_at=old + timedelta(hours=20),
        finished_at=old + timedelta(hours=30),  # into the next day's forecast
        energy_series=busy_series(old + timedelta(hours=20), 10.0, 300.0),
    )
    account_run(engine, store, run_id, now=old + DAY * 2)
    before = figures(engine, run_id)
    assert before[FIGURES.index("accounting")] == "provisional"
    report = Retention(engine, RetentionPolicy(forecasts=10 * DAY)).run(T)
    # deleted: the 34 that ended over 10 days ago, less the 3 around its run and its window
    assert report.forecasts == 34 - 3 and report.spans == 2
    assert count(engine, False) == 12 + 3
    long_wait = AccountingParams(finalize_after=timedelta(days=365))
    source = ForecastSource(NoHistory(), store=store)
    reconcile(engine, store, source, T, long_wait.finalize_after, params=long_wait)
    assert figures(engine, run_id) == before
    # once final, its forecasts are no longer needed
    with session(engine) as s:
        s.execute(update(Run).values(accounting="final-forecast"))
        s.commit()
    assert Retention(engine, RetentionPolicy(forecasts=10 * DAY)).run(T).forecasts == 3


def test_a_waiting_job_keeps_its_run_now_window(engine: Engine) -> None:
    store = ForecastStore(engine, clock=lambda: T)
    for d in range(-50, 1):
        store.save(forecast("DE", T + d * DAY, [300.0] * 24, realized=True))
    _, run_id = add_run(
        engine,
        submitted_at=T - 70 * DAY,  # held since then, its counterfactual starts there
        started_at=None,
        finished_at=None,
        state="pending",
        duration_s=3 * 3600,
    )
    with session(engine) as s:  # a waiting job has no run
        s.execute(delete(Run).where(col(Run.id) == run_id))
        s.commit()
    Retention(engine, RetentionPolicy(realized=64 * DAY)).run(T)
    assert count(engine, True) == 51  # none older than 64 days, none at its window either
    store.save(forecast("DE", T - 70 * DAY, [300.0] * 24, realized=True))
    store.save(forecast("DE", T - 80 * DAY, [300.0] * 24, realized=True))
    assert Retention(engine, RetentionPolicy(realized=64 * DAY)).run(T).realized == 1


# -- run folders and jobs --------------------------------------------------------------------
def test_run_folders_go_only_for_finished_accounted_jobs_past_the_limit(
    engine: Engine, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    jobs = data / "jobs"

    def job(ended_days_ago: float, *, state: str = "succeeded", account: bool = True) -> int:
        end = T - timedelta(days=ended_days_ago)
        job_id, run_id = add_run(
            engine,
            submitted_at=end - timedelta(hours=2),
            started_at=end - timedelta(hours=1),
            finished_at=None if state == "running" else end,
            energy_j=100.0,
            state=state,
        )
        for run in ("20260101T000000-aaaaaa", "slurm-20260102T000000-bbbbbb"):
            (jobs / str(job_id) / run).mkdir(parents=True)
            (jobs / str(job_id) / run / "output.log").write_text("out\n")
        if account and state != "running":
            with session(engine) as s:
                s.execute(update(Run).where(col(Run.id) == run_id).values(accounting="final"))
                s.commit()
        return job_id

    old = job(100)
    unaccounted = job(100, account=False)
    recent = job(10)
    running = job(100, state="running")
    failed = job(95, state="failed")
    (jobs / "notes").mkdir()
    (jobs / "999").symlink_to(jobs / "notes")
    (jobs / "12345").mkdir()  # no such job: not ours to judge
    retention = Retention(engine, RetentionPolicy(run_logs=90 * DAY), data_dir=data)
    report = retention.run(T)
    assert report.folders == 2 and report.errors == []
    left = {p.name for p in jobs.iterdir()}
    assert left == {str(unaccounted), str(recent), str(running), "notes", "999", "12345"}
    assert str(old) not in left and str(failed) not in left
    with session(engine) as s:  # the jobs themselves stay
        assert s.get(Job, old) is not None and s.get(Job, failed) is not None
    keep = Retention(engine, RetentionPolicy(run_logs=None), data_dir=data).run(T)
    assert keep.folders == 0


def test_jobs_days_deletes_old_final_jobs_with_their_runs(engine: Engine, tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = T - 400 * DAY
    ids = {}
    for name, status in (("final", "final"), ("provisional", "provisional"), ("recent", "final")):
        end = T - 10 * DAY if name == "recent" else old
        ids[name], run_id = add_run(
            engine, submitted_at=end, started_at=end, finished_at=end, energy_j=1.0
        )
        with session(engine) as s:
            s.execute(update(Run).where(col(Run.id) == run_id).values(accounting=status))
            s.add(RunUnit(run_id=run_id, unit="epoch", count=3))
            s.commit()
        (data / "jobs" / str(ids[name]) / "r").mkdir(parents=True)
    policy = RetentionPolicy(jobs=365 * DAY, run_logs=None, batch=1)
    assert Retention(engine, policy, data_dir=data).run(T).jobs == 1
    with session(engine) as s:
        assert {j.id for j in s.exec(select(Job)).all()} == {ids["provisional"], ids["recent"]}
        assert len(s.exec(select(Run)).all()) == 2 and len(s.exec(select(RunUnit)).all()) == 2
    assert not (data / "jobs" / str(ids["final"])).exists()


# -- the daemon's hook -----------------------------------------------------------------------
def test_step_runs_hourly_continues_when_cut_short_and_never_raises(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ForecastStore(engine, clock=lambda: T)
    for d in range(-60, -40):
        store.save(forecast("DE", T + d * DAY, [300.0] * 24))
    short = Retention(engine, RetentionPolicy(forecasts=10 * DAY, budget_s=0.0))
    cut = short.step(T)
    assert cut is not None and not cut.done and count(engine, False) == 20
    retention = Retention(engine, RetentionPolicy(forecasts=10 * DAY, batch=5))
    first = retention.step(T)
    assert first is not None and first.done and first.forecasts == 20
    assert retention.step(T + timedelta(minutes=59)) is None
    assert retention.step(T + timedelta(minutes=61)) is not None

    broken = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables
    with caplog.at_level(logging.ERROR):
        assert Retention(broken, RetentionPolicy()).step(T) is None
    assert "retention pass failed" in caplog.text
    broken.dispose()


def test_one_daemon_at_a_time_prunes_a_postgresql_database(engine: Engine) -> None:
    store = ForecastStore(engine, clock=lambda: T)
    store.save(forecast("DE", T - 60 * DAY, [300.0] * 24))
    with _PruneLock(engine) as held:
        assert held
        report = Retention(engine, RetentionPolicy(forecasts=10 * DAY)).run(T)
    assert report.forecasts == (0 if engine.dialect.name == "postgresql" else 1)


# -- the tick with months of stored history ------------------------------------------------
def test_the_fallback_forecast_is_reused_for_the_refresh_interval(engine: Engine) -> None:
    """With the provider down, each re-plan would read 63 days of history and refit."""
    store = ForecastStore(engine, clock=lambda: T)
    store.save(forecast("DE", T - 3 * DAY, [300.0] * 72, realized=True))
    made: list[datetime] = []

    def fallback(history: Forecast, start: datetime, end: datetime) -> Forecast:
        made.append(start)
        hours = int((end - start).total_seconds() // 3600) + 1
        return forecast("DE", start, [250.0] * hours, source="fallback")

    clock = FakeClock(T)
    source = ForecastSource(
        NoHistory(),
        store=store,
        fallback=fallback,
        settings=ChainSettings(refresh_s=1800.0),
        clock=clock,
    )
    first = source.forecast("DE", T, T + 12 * HOUR)
    clock.advance(minutes=10)
    assert source.forecast("DE", clock.now, T + 12 * HOUR) is first
    assert len(made) == 1
    assert source.forecast("DE", clock.now, T + 20 * HOUR) is not first  # a longer window
    clock.advance(minutes=31)
    source.forecast("DE", clock.now, T + 12 * HOUR)
    assert len(made) == 3


def test_the_daemon_prunes_during_its_tick(engine: Engine, tmp_path: Path) -> None:
    from ecoq.scheduler.daemon import Daemon, DaemonConfig
    from ecoq.scheduler.queue import Queue

    store = ForecastStore(engine, clock=lambda: T)
    for d in range(-60, -40):
        store.save(forecast("DE", T + d * DAY, [300.0] * 24))
    queue = Queue(engine, clock=lambda: T)
    policy = RetentionPolicy(forecasts=10 * DAY)
    config = DaemonConfig(data_dir=tmp_path / "data", worker="box", box_gpus=0, retention=policy)
    daemon = Daemon(queue, ForecastSource(NoHistory(), store=store), config)
    daemon.tick()
    assert count(engine, False) == 0
    without = DaemonConfig(data_dir=tmp_path / "data", worker="box", box_gpus=0)
    assert Daemon(queue, ForecastSource(NoHistory(), store=store), without).retention is None
