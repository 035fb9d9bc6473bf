"""The forecast cache and the failover chain (design.md, "Planning")."""

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ecoq.db import open_engine
from ecoq.errors import ForecastUnavailable
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.forecasting.bundled import BundledProvider
from ecoq.scheduler.forecasts import ChainSettings, ForecastSource, ForecastStore
from tests.conftest import FakeClock

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)


def hourly(
    start: datetime,
    values: list[float],
    *,
    source: str = "stub",
    realized: bool = False,
    signal: str = "average",
    issued_at: datetime | None = None,
) -> Forecast:
    return Forecast(
        zone="DE",
        signal=signal,
        source=source,
        label=f"{source} forecast",  # type: ignore[arg-type]
        issued_at=issued_at or start,
        step=H,
        points=tuple(IntensityPoint(start + i * H, v) for i, v in enumerate(values)),
        realized=realized,
    )


class StubProvider:
    """Answers with a queue of results; an exception in the queue is raised."""

    def __init__(self, name: str = "stub", signal: str = "average") -> None:
        self.name = name
        self.signal = signal
        self.results: list[Forecast | Exception] = []
        self.calls = 0

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        self.calls += 1
        result = self.results.pop(0) if self.results else ForecastUnavailable("stub: down")
        if isinstance(result, Exception):
            raise result
        return result

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable("stub: no history")


@pytest.fixture
def store(any_db_url: str, clock: FakeClock) -> Iterator[ForecastStore]:
    engine = open_engine(any_db_url)
    yield ForecastStore(engine, clock=clock)
    engine.dispose()


def chain(
    provider: StubProvider, store: ForecastStore, clock: FakeClock, **kw: object
) -> ForecastSource:
    return ForecastSource(
        provider,
        store=store,
        bundled=BundledProvider(),
        settings=ChainSettings(refresh_s=1800, max_age_s=6 * 3600),
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def test_store_round_trip_and_newest(store: ForecastStore, clock: FakeClock) -> None:
    old = hourly(T0, [100, 200, 300], issued_at=T0 - 2 * H)
    new = hourly(T0, [10, 20, 30], issued_at=T0 - H)
    store.save(new)
    store.save(old)  # fetched later but issued earlier: not the newest
    found = store.newest("DE", ["stub"], covering=T0 + H)
    assert found is not None
    forecast, fetched_at = found
    assert [p.g_per_kwh for p in forecast.points] == [10, 20, 30]
    assert forecast.issued_at == T0 - H and fetched_at == clock.now
    assert store.newest("DE", ["stub"], covering=T0 + 3 * H) is None
    assert store.newest("DE", ["other"], covering=T0) is None
    assert store.newest("FR", ["stub"], covering=T0) is None


def test_history_merges_fetches_newest_wins(store: ForecastStore, clock: FakeClock) -> None:
    store.save(hourly(T0, [1, 2, 3], realized=True))
    clock.advance(hours=5)
    store.save(hourly(T0 + H, [20, 30, 40], realized=True))  # revised values, later fetch
    merged = store.history("DE", "average", T0, T0 + 10 * H)
    assert merged is not None and merged.realized
    assert [(p.start - T0) // H for p in merged.points] == [0, 1, 2, 3]
    assert [p.g_per_kwh for p in merged.points] == [1, 20, 30, 40]
    assert store.history("DE", "marginal", T0, T0 + 10 * H) is None


def test_live_then_fresh_cache_then_live_again(store: ForecastStore, clock: FakeClock) -> None:
    provider = StubProvider()
    provider.results = [hourly(clock.now, [5] * 24), hourly(clock.now, [7] * 48)]
    source = chain(provider, store, clock)
    first = source.forecast("DE", clock.now, clock.now + 3 * H)
    assert first is not None and first.points[0].g_per_kwh == 5 and provider.calls == 1
    clock.advance(minutes=20)
    cached = source.forecast("DE", clock.now, clock.now + 3 * H)
    assert cached is not None and cached.points[0].g_per_kwh == 5 and provider.calls == 1
    clock.advance(minutes=20)  # past refresh_s: ask the provider again
    again = source.forecast("DE", clock.now, clock.now + 3 * H)
    assert again is not None and again.points[0].g_per_kwh == 7 and provider.calls == 2


def test_a_fresh_but_short_cached_forecast_does_not_cut_a_longer_request_short(
    store: ForecastStore, clock: FakeClock
) -> None:
    provider = StubProvider()
    provider.results = [hourly(clock.now, [5] * 2), hourly(clock.now, [6] * 24)]
    source = chain(provider, store, clock)
    short = source.forecast("DE", clock.now, clock.now + 2 * H)  # `ecoq forecast --hours 2`
    assert short is not None and len(short.points) == 2 and provider.calls == 1
    day = source.forecast("DE", clock.now, clock.now + 24 * H)
    assert day is not None and len(day.points) == 24 and provider.calls == 2
    # A full day-ahead forecast is as long as the provider gives: a longer ask uses it.
    longer = source.forecast("DE", clock.now, clock.now + 72 * H)
    assert longer is not None and len(longer.points) == 24 and provider.calls == 2
    # The provider down: the short cached one still serves (step 2 of the chain).
    provider.results = []
    store_only = chain(provider, store, clock)
    assert store_only.forecast("DE", clock.now, clock.now + 48 * H) is not None


def test_provider_down_uses_cache_then_marks_it_stale(
    store: ForecastStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    provider = StubProvider()
    provider.results = [hourly(clock.now, [5] * 72)]
    source = chain(provider, store, clock)
    source.forecast("DE", clock.now, clock.now + H)
    caplog.set_level(logging.INFO, logger="ecoq.scheduler.forecasts")
    clock.advance(hours=1)
    cached = source.forecast("DE", clock.now, clock.now + H)
    assert cached is not None and "cached 1.0 h ago" in cached.label
    assert "stale" not in cached.label
    clock.advance(hours=6)
    stale = source.forecast("DE", clock.now, clock.now + H)
    assert stale is not None and stale.label.endswith("(stale)")
    for _ in range(5):
        clock.advance(minutes=31)
        source.forecast("DE", clock.now, clock.now + H)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per episode: cache, then stale cache; not one per call
    assert "stub: down" in warnings[0].getMessage()


def test_no_cache_uses_fallback_forecaster_on_stored_history(
    store: ForecastStore, clock: FakeClock
) -> None:
    start = clock.now - timedelta(days=3)
    store.save(hourly(start, [100 + (i % 24) for i in range(72)], realized=True))
    source = chain(StubProvider(), store, clock)
    forecast = source.forecast("DE", clock.now, clock.now + 6 * H)
    assert forecast is not None and forecast.source == "fallback"
    assert "fallback forecaster" in forecast.label


def test_no_history_falls_to_the_typical_profile(store: ForecastStore, clock: FakeClock) -> None:
    forecast = chain(StubProvider(), store, clock).forecast("DE", clock.now, clock.now + 6 * H)
    assert forecast is not None and forecast.label == "typical profile"


def test_marginal_chain_never_falls_to_the_average_profile(
    store: ForecastStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = chain(StubProvider(signal="marginal"), store, clock)
    assert source.bundled is None
    with caplog.at_level(logging.WARNING, logger="ecoq.scheduler.forecasts"):
        assert source.forecast("DE", clock.now, clock.now + H) is None
        assert source.forecast("DE", clock.now, clock.now + H) is None
    assert len(caplog.records) == 1 and "using none" in caplog.records[0].getMessage()


def test_recovery_is_logged(
    store: ForecastStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    provider = StubProvider()
    source = chain(provider, store, clock)
    caplog.set_level(logging.INFO, logger="ecoq.scheduler.forecasts")
    source.forecast("DE", clock.now, clock.now + H)  # down: typical profile
    provider.results = [hourly(clock.now, [1] * 24)]
    back = source.forecast("DE", clock.now, clock.now + H)
    assert back is not None and back.source == "stub"
    assert any("again" in r.getMessage() for r in caplog.records)


def test_providers_are_tried_in_order(
    store: ForecastStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = StubProvider("first"), StubProvider("second")
    second.results = [hourly(clock.now, [3] * 24, source="second")]
    source = ForecastSource([first, second], store=store, clock=clock)
    with caplog.at_level(logging.WARNING, logger="ecoq.scheduler.forecasts"):
        got = source.forecast("DE", clock.now, clock.now + H)
    assert got is not None and got.source == "second" and (first.calls, second.calls) == (1, 1)
    assert "using live from second" in caplog.records[0].getMessage()
    clock.advance(minutes=5)  # the second provider's forecast is now the fresh cache
    cached = source.forecast("DE", clock.now, clock.now + H)
    assert cached is not None and cached.source == "second" and first.calls == 1
