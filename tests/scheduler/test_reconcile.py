"""Accounting of finished runs in the database, and reconciliation with realized values."""

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from ecoq.accounting import Intensity, account, profile_from_series
from ecoq.db import open_engine, session
from ecoq.errors import EcoqError, ForecastUnavailable
from ecoq.forecasting import Forecast
from ecoq.forecasting.bundled import BundledProvider
from ecoq.models import Job, Run, RunUnit
from ecoq.scheduler.forecasts import ForecastSource, ForecastStore
from ecoq.scheduler.reconcile import (
    AccountingParams,
    account_run,
    ingest_marks,
    reconcile,
)
from ecoq.sci import Embodied
from tests.conftest import FakeClock
from tests.seed import add_run, at, flat_series, forecast

KWH = 3.6e6


class FakeProvider:
    """A provider whose history is what the test says (or unavailable)."""

    def __init__(self, history: Forecast | None = None, signal: str = "average") -> None:
        self.name = "file"
        self.signal = signal
        self._history = history
        self.calls: list[tuple[str, datetime, datetime]] = []

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable("no live forecast in this test")

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        self.calls.append((zone, start, end))
        if self._history is None:
            raise ForecastUnavailable("this provider keeps no history")
        return self._history


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    engine = open_engine(any_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> ForecastStore:
    return ForecastStore(engine, clock=FakeClock(at(9)))


def the_run(engine: Engine, run_id: int) -> tuple[Run, Job]:
    with session(engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        job = s.get(Job, run.job_id)
        assert job is not None
        return run, job


def seed_standard(engine: Engine, store: ForecastStore, **kw: object) -> tuple[int, int]:
    """Submitted 09:15, ran 10:30-11:30 drawing 1 kWh; forecast 400, 100, 300 from 09:00."""
    store.save(forecast("DE", at(9), [400.0, 100.0, 300.0], issued_at=at(9)))
    return add_run(
        engine,
        submitted_at=at(9.25),
        started_at=at(10.5),
        finished_at=at(11.5),
        energy_series=flat_series(at(10.5), 1.0, KWH),
        **kw,  # type: ignore[arg-type]
    )


def test_provisional_then_realized_changes_the_totals(engine: Engine, store: ForecastStore) -> None:
    job_id, run_id = seed_standard(engine, store)
    run = account_run(engine, store, run_id, now=at(12))
    assert run is not None
    # realized: 0.5 kWh at 100 + 0.5 at 300 = 200 g; counterfactual from 09:15: 0.75*400 + 0.25*100
    assert run.accounting == "provisional"
    assert (run.realized_g, run.counterfactual_g, run.avoided_g) == (
        pytest.approx(200.0),
        pytest.approx(325.0),
        pytest.approx(125.0),
    )
    assert (run.intensity_kind, run.intensity_source, run.accounting_signal) == (
        "forecast",
        "file",
        "average",
    )
    assert run.energy_method == "measured" and run.pue == 1.0
    assert run.counterfactual_start == at(9.25)
    _, job = the_run(engine, run_id)
    assert job.accounting == "provisional" and job.realized_g == pytest.approx(200.0)

    realized = forecast("DE", at(9), [380.0, 120.0, 360.0], realized=True, issued_at=at(12))
    source = ForecastSource(FakeProvider(realized), store=store, clock=FakeClock(at(13.5)))
    report = reconcile(engine, store, source, at(13.5))
    assert report.history_fetched == ["DE"] and report.final == [run_id]
    run, job = the_run(engine, run_id)
    # realized values: 0.5*120 + 0.5*360 = 240 g; counterfactual 0.75*380 + 0.25*120 = 315 g
    assert run.accounting == "final" and run.intensity_kind == "realized"
    assert (run.realized_g, run.counterfactual_g, run.avoided_g) == (
        pytest.approx(240.0),
        pytest.approx(315.0),
        pytest.approx(75.0),
    )
    assert job.id == job_id and job.accounting == "final"
    assert (job.realized_g, job.avoided_g) == (pytest.approx(240.0), pytest.approx(75.0))
    assert reconcile(engine, store, source, at(20)).final == []  # nothing left to do


def test_without_history_a_run_becomes_final_on_forecasts_after_finalize_after(
    engine: Engine, store: ForecastStore
) -> None:
    _, run_id = seed_standard(engine, store)
    account_run(engine, store, run_id, now=at(12))
    provider = FakeProvider(None)
    source = ForecastSource(provider, store=store)
    assert reconcile(engine, store, source, at(12.5)).provisional == []  # retried hourly
    report = reconcile(engine, store, source, at(13))
    assert report.provisional == [run_id] and provider.calls
    late = at(11.5) + timedelta(days=7)
    report = reconcile(engine, store, source, late, timedelta(days=7))
    assert report.final_forecast == [run_id]
    run, job = the_run(engine, run_id)
    assert run.accounting == "final-forecast" and run.intensity_kind == "forecast"
    assert run.realized_g == pytest.approx(200.0)
    assert job.accounting == "final-forecast"


def test_history_of_another_signal_is_not_fetched(engine: Engine, store: ForecastStore) -> None:
    seed_standard(engine, store)
    provider = FakeProvider(None, signal="marginal")
    reconcile(engine, store, ForecastSource(provider, store=store), at(12))  # first accounting
    report = reconcile(engine, store, ForecastSource(provider, store=store), at(14))
    assert provider.calls == [] and report.history_fetched == []


def test_realized_values_already_stored_make_a_run_final_at_once(
    engine: Engine, store: ForecastStore
) -> None:
    _, run_id = seed_standard(engine, store)
    store.save(forecast("DE", at(9), [380.0, 120.0, 360.0], realized=True, issued_at=at(12)))
    run = account_run(engine, store, run_id, now=at(12))
    assert run is not None and run.accounting == "final"
    assert run.realized_g == pytest.approx(240.0)


def test_the_typical_profile_when_nothing_is_cached(engine: Engine, store: ForecastStore) -> None:
    _, run_id = add_run(
        engine,
        submitted_at=at(9.25),
        started_at=at(10.5),
        finished_at=at(11.5),
        energy_series=flat_series(at(10.5), 1.0, KWH),
        plan_source="bundled",
    )
    run = account_run(engine, store, run_id, now=at(12), params=AccountingParams(pue=1.2))
    assert run is not None
    assert (run.accounting, run.intensity_source, run.intensity_label) == (
        "provisional",
        "bundled",
        "typical profile",
    )
    typical = Intensity.from_forecast(BundledProvider().forecast("DE", at(9), at(12)))
    profile = profile_from_series(run.energy_series)
    assert profile is not None
    expected = account(profile, typical, counterfactual_start=at(9.25), pue=1.2)
    assert run.realized_g == pytest.approx(expected.realized_g)
    assert run.counterfactual_g == pytest.approx(expected.counterfactual_g)
    assert run.facility_energy_j == pytest.approx(1.2 * KWH)


def test_a_marginal_job_is_never_accounted_on_the_average_typical_profile(
    engine: Engine, store: ForecastStore
) -> None:
    _, run_id = add_run(
        engine,
        submitted_at=at(9),
        started_at=at(10),
        finished_at=at(11),
        energy_series=flat_series(at(10), 1.0, KWH),
        plan_signal="marginal",
        plan_source="watttime",
    )
    run = account_run(engine, store, run_id, now=at(12))
    assert run is not None and run.accounting == "provisional" and run.realized_g is None
    source = ForecastSource(FakeProvider(None, signal="marginal"), store=store)
    reconcile(engine, store, source, at(11) + timedelta(days=8))
    run, job = the_run(engine, run_id)
    assert run.accounting == "no-intensity" and run.realized_g is None
    assert job.accounting == "no-intensity"


def test_an_unmetered_run(engine: Engine, store: ForecastStore) -> None:
    _, run_id = add_run(engine, submitted_at=at(9), started_at=at(10), finished_at=at(11))
    run = account_run(engine, store, run_id, now=at(12))
    assert run is not None and run.accounting == "unmetered" and run.realized_g is None
    report = reconcile(engine, store, ForecastSource(FakeProvider(), store=store), at(20))
    assert report.accounted == [] and report.provisional == []


def test_a_run_that_never_started_is_not_accounted(engine: Engine, store: ForecastStore) -> None:
    _, run_id = add_run(engine, submitted_at=at(9), started_at=None, finished_at=at(10))
    assert account_run(engine, store, run_id, now=at(12)) is None
    with pytest.raises(EcoqError, match="no run with id 999"):
        account_run(engine, store, 999, now=at(12))


def test_marks_give_units_and_window_energy(
    engine: Engine, store: ForecastStore, tmp_path: Path
) -> None:
    lines = [
        {"t": "2026-11-02T10:30:00Z", "name": "train", "kind": "start", "pid": 1},
        {"t": "2026-11-02T10:45:00Z", "name": "train", "kind": "mark", "unit": "epoch", "n": 1},
        {"t": "2026-11-02T11:15:00Z", "name": "train", "kind": "mark", "unit": "epoch", "n": 1},
        {
            "t": "2026-11-02T11:30:00Z",
            "name": "train",
            "kind": "window",
            "label": "eval",
            "start": "2026-11-02T11:00:00Z",
        },
    ]
    text = "\n".join(json.dumps(r) for r in lines) + "\n{not json\n[1, 2]\n"
    (tmp_path / "marks.jsonl").write_text(text)
    assert len(ingest_marks(tmp_path)) == 4
    assert ingest_marks(tmp_path / "absent") == []
    _, run_id = seed_standard(engine, store, run_dir=str(tmp_path), gpus=2)
    params = AccountingParams(embodied=Embodied(g_per_gpu_hour=30.0))
    run = account_run(engine, store, run_id, now=at(12), params=params)
    assert run is not None
    assert run.marks is not None and run.marks["units"] == {"epoch": 2.0}
    with session(engine) as s:
        units = s.exec(select(RunUnit).where(RunUnit.run_id == run_id)).all()
    assert [(u.unit, u.count) for u in units] == [("epoch", 2.0)]
    assert run.delay_s == pytest.approx(1.25 * 3600) and run.deadline_missed is False
    (window,) = run.marks["windows"]
    assert window["label"] == "eval" and window["energy_j"] == pytest.approx(KWH / 2)
    assert run.embodied_g == pytest.approx(60.0)  # 2 GPUs x 1 h x 30 g


def test_reconcile_accounts_runs_never_accounted_of_its_own_worker(
    engine: Engine, store: ForecastStore
) -> None:
    _, mine = seed_standard(engine, store, worker="box:1")
    _, theirs = seed_standard(engine, store, worker="other:2")
    source = ForecastSource(FakeProvider(), store=store)
    report = reconcile(engine, store, source, at(12), worker="box:1")
    assert report.accounted == [mine]
    assert the_run(engine, theirs)[0].accounting is None
    assert the_run(engine, mine)[0].accounting == "provisional"


def test_stitched_forecasts_cover_submission_and_run(engine: Engine, store: ForecastStore) -> None:
    # the 09:00 issue covers 09:00-10:00 only; the 10:00 issue covers 10:00-12:00 and wins there
    store.save(forecast("DE", at(9), [400.0], issued_at=at(9)))
    store.save(forecast("DE", at(10), [100.0, 300.0], issued_at=at(10)))
    _, run_id = add_run(
        engine,
        submitted_at=at(9.25),
        started_at=at(10.5),
        finished_at=at(11.5),
        energy_series=flat_series(at(10.5), 1.0, KWH),
    )
    run = account_run(engine, store, run_id, now=at(12))
    assert run is not None and run.accounting == "provisional"
    assert (run.realized_g, run.counterfactual_g) == (pytest.approx(200.0), pytest.approx(325.0))


def test_one_bad_run_does_not_stop_the_others(engine: Engine, store: ForecastStore) -> None:
    _, bad = seed_standard(engine, store)
    _, good = seed_standard(engine, store)
    account_run(engine, store, bad, now=at(12))
    account_run(engine, store, good, now=at(12))
    with session(engine) as s:
        run = s.get(Run, bad)
        assert run is not None
        run.pue = 0.5  # corrupt: a PUE below 1 is refused
        s.add(run)
        s.commit()
    source = ForecastSource(FakeProvider(None), store=store)
    report = reconcile(engine, store, source, at(14))
    assert report.failed == [bad] and report.provisional == [good]
