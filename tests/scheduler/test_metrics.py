"""The daemon's Prometheus metrics, read from a seeded database and scraped over HTTP."""

import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine

from ecoq.db import open_engine
from ecoq.errors import EcoqError
from ecoq.scheduler.metrics import Metrics, start_metrics
from tests.seed import add_run, at, seed_demo


@pytest.fixture
def engine(any_db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(any_db_url)
    seed_demo(engine, tmp_path / "runs")
    add_run(engine, submitted_at=at(9), started_at=None, finished_at=None, state="planned")
    yield engine
    engine.dispose()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_over_http(engine: Engine) -> None:
    now = at(9.5)
    metrics = start_metrics(0, engine, addr="127.0.0.1", now=now)
    try:
        assert metrics.port
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10)
        got = samples(body.read().decode())
    finally:
        metrics.close()
    assert got[("ecoq_jobs", (("state", "succeeded"),))] == 4
    assert got[("ecoq_jobs", (("state", "planned"),))] == 1
    assert got[("ecoq_jobs", (("state", "running"),))] == 0
    assert got[("ecoq_realized_gco2e_total", (("signal", "average"),))] == pytest.approx(510.0)
    assert got[("ecoq_avoided_gco2e_total", (("signal", "average"),))] == pytest.approx(600.0)
    assert got[("ecoq_realized_gco2e_total", (("signal", "marginal"),))] == pytest.approx(800.0)
    assert got[("ecoq_energy_joules_total", ())] == pytest.approx(5.5 * 3.6e6)
    assert got[("ecoq_meter_errors_total", ())] == 0
    # the DE forecast says 300 at 09:30; the WattTime one 500; both fetched at 00:00
    key = ("ecoq_intensity_g_per_kwh", (("signal", "average"), ("source", "file"), ("zone", "DE")))
    assert got[key] == 300.0
    marginal = (("signal", "marginal"), ("source", "watttime"), ("zone", "CAISO_NORTH"))
    assert got[("ecoq_intensity_g_per_kwh", marginal)] == 500.0
    age = ("ecoq_forecast_age_seconds", (("source", "file"), ("zone", "DE")))
    assert got[age] == pytest.approx(9.5 * 3600)
    assert got[("ecoq_metrics_updated_timestamp_seconds", ())] == now.timestamp()


def test_update_is_throttled_and_survives_database_errors(engine: Engine, tmp_path: Path) -> None:
    metrics = Metrics(engine, registry=CollectorRegistry(), min_interval_s=15)
    first = metrics.update(at(10))
    assert first.jobs_by_state["succeeded"] == 4
    assert metrics.update(at(10) + timedelta(seconds=5)) is first  # not re-read yet
    assert metrics.update(at(10) + timedelta(seconds=20)) is not first
    (tmp_path / "file").write_text("")
    unreadable = create_engine(f"sqlite:///{tmp_path / 'file' / 'ecoq.db'}")
    broken = Metrics(unreadable)
    assert broken.update(at(11)).taken_at is None  # the empty snapshot stays; no exception


def test_typical_profile_for_zones_in_use_without_a_forecast(db_url: str) -> None:
    engine = open_engine(db_url)
    add_run(engine, submitted_at=at(9), started_at=None, finished_at=None, state="planned")
    snap = Metrics(engine).update(at(9.5))
    assert ("DE", "average", "bundled") in snap.intensity
    engine.dispose()


def test_a_busy_port_is_an_error_naming_the_option(engine: Engine) -> None:
    metrics = start_metrics(0, engine, addr="127.0.0.1")
    try:
        with pytest.raises(EcoqError, match="choose another --metrics-port"):
            start_metrics(metrics.port or 0, engine, addr="127.0.0.1")
    finally:
        metrics.close()
