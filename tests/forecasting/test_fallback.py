"""The fallback forecaster: hand-computed cases on synthetic history, degradation, labels."""

import csv
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.errors import ForecastUnavailable
from ecoq.forecasting import Forecast, IntensityPoint, Signal
from ecoq.forecasting.fallback import (
    DEFAULT_WEIGHT,
    _fit_decay,
    _fit_weight,
    fallback_model,
    forecast_from_history,
)

H = timedelta(hours=1)
DAY = timedelta(days=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/dacf/ciso-direct-2021-09-01-to-11-15.csv"


def history(
    values: Sequence[float | None],
    *,
    start: datetime = T0,
    step: timedelta = H,
    source: str = "eia",
    signal: Signal = "average",
    emission_factor: str | None = None,
) -> Forecast:
    """Realized values from `start`, one per `step`; None leaves the point out (a gap)."""
    points = tuple(
        IntensityPoint(start=start + i * step, g_per_kwh=v)
        for i, v in enumerate(values)
        if v is not None
    )
    return Forecast(
        zone="XX",
        signal=signal,
        source=source,
        label=f"{source} history",
        issued_at=points[-1].start + step,
        step=step,
        points=points,
        emission_factor=emission_factor,
        realized=True,
    )


def values(fc: Forecast) -> list[float]:
    return [p.g_per_kwh for p in fc.points]


DAY1 = [100.0 + i for i in range(24)]  # 100..123
DAY2 = [200.0 + 2 * i for i in range(24)]  # 200..246


def test_one_day_of_history_repeats_the_same_hour_yesterday() -> None:
    hist = history(DAY1)
    fc = forecast_from_history(hist, T0 + DAY, T0 + 3 * DAY)
    assert [p.start for p in fc.points] == [T0 + DAY + i * H for i in range(48)]
    assert values(fc) == DAY1 + DAY1  # 25-48 h ahead: the latest day with that hour
    model = fallback_model(hist)
    assert (model.weight, model.decay_per_hour) == (DEFAULT_WEIGHT, 0.0)  # nothing to fit on


def test_persistence_correction_decays_the_last_error() -> None:
    # Base for day 3 = day 2 (same hour yesterday; no profile yet). Last error r0 at 23:00 of
    # day 2 = 246 - 123 = 123 (day 1 was its "yesterday"). With phi = 0.5/h the forecast for
    # hour i of day 3 is DAY2[i] + 0.5 ** (i + 1) * 123.
    model = fallback_model(history(DAY1 + DAY2))
    model.decay_per_hour = 0.5
    fc = model.forecast(T0 + 2 * DAY, T0 + 3 * DAY)
    assert values(fc) == pytest.approx([DAY2[i] + 0.5 ** (i + 1) * 123 for i in range(24)])


def test_forecast_is_never_negative() -> None:
    model = fallback_model(history(DAY2 + DAY1))  # r0 = 123 - 246 = -123
    model.decay_per_hour = 0.95
    fc = model.forecast(T0 + 2 * DAY, T0 + 3 * DAY)
    assert min(values(fc)) == 0.0  # 100 - 0.95 * 123 < 0, clipped
    assert values(fc)[-1] == pytest.approx(123 - 0.95**24 * 123)


def test_weekly_pattern_beats_yesterday_when_history_says_so() -> None:
    # 5 weeks: weekdays 100, weekends 200. Yesterday (Sunday) says 200 for Monday; the
    # hour-of-week profile says 100 and is always right, so w fits to 0 and phi to 0.
    week = [100.0] * (5 * 24) + [200.0] * (2 * 24)
    hist = history(week * 5)
    model = fallback_model(hist)
    assert model.weight == 0.0
    assert model.decay_per_hour == 0.0
    monday = T0 + 35 * DAY
    fc = model.forecast(monday, monday + 7 * DAY)
    assert values(fc) == week


def test_level_shift_makes_yesterday_win() -> None:
    # 30 days at 100, then 30 days at 300: over the last 28 days "yesterday" was always right
    # and the 4-week profile was not, so w fits to 1 and the forecast is 300.
    hist = history([100.0] * (30 * 24) + [300.0] * (30 * 24))
    model = fallback_model(hist)
    assert model.weight == 1.0
    fc = model.forecast(hist.end, hist.end + 3 * DAY)
    assert values(fc) == [300.0] * 72


def test_fit_weight_and_decay_by_least_squares() -> None:
    rows = [(0.25 * a + 0.75 * b, a, b) for a, b in [(1, 5), (10, 2), (7, 7), (3, 0)]]
    assert _fit_weight(rows) == pytest.approx(0.25)
    assert _fit_weight([(4, 2, 2)]) == DEFAULT_WEIGHT  # a == b: cannot tell
    assert _fit_weight([(10, 2, 1)]) == 1.0  # clipped to 0..1
    decays = [(0.7**h * r0, h, r0) for r0 in (5.0, -3.0) for h in (1, 2, 3, 6, 12)]
    assert _fit_decay(decays) == pytest.approx(0.7)
    assert _fit_decay([]) == 0.0


@pytest.mark.parametrize("bad", [None, math.nan, -5.0], ids=["missing", "nan", "negative"])
def test_a_missing_day_falls_back_to_the_day_before(bad: float | None) -> None:
    hist = history(DAY1 + DAY2 + [bad] * 24 if bad is not None else DAY1 + DAY2)
    issued = T0 + 3 * DAY  # the third day is missing, NaN or negative
    model = fallback_model(hist, issued_at=issued)
    assert model.history_hours == 48
    model.decay_per_hour = 0.5  # no correction: no known value in the last day to anchor it
    fc = model.forecast(issued, issued + DAY)
    assert values(fc) == DAY2


def test_scattered_gaps_still_give_a_full_forecast() -> None:
    week = [100.0 + (i % 24) for i in range(24 * 7)]
    raw: list[float | None] = list(week * 3)
    for i in range(5, len(raw), 7):
        raw[i] = None if i % 2 else math.nan
    fc = forecast_from_history(history(raw), T0 + 21 * DAY, T0 + 24 * DAY)
    assert len(fc.points) == 72
    assert all(100 <= v <= 123 for v in values(fc))


def test_values_after_issued_at_are_not_used() -> None:
    hist = history(DAY1 + DAY2 + [999.0] * 24)
    fc = forecast_from_history(hist, T0 + 2 * DAY, T0 + 3 * DAY, issued_at=T0 + 2 * DAY)
    assert max(values(fc)) < 999
    assert fc.issued_at == T0 + 2 * DAY


def test_labels_signal_and_basis_come_from_the_history() -> None:
    hist = history(DAY1 * 2, source="watttime", signal="marginal")
    fc = forecast_from_history(hist, hist.end, hist.end + DAY)
    assert fc.source == "fallback"
    assert fc.label == "fallback forecaster from watttime history"
    assert (fc.zone, fc.signal, fc.step, fc.realized) == ("XX", "marginal", H, False)
    assert fc.issued_at == hist.end
    avg = history(DAY1 * 2, source="electricitymaps", emission_factor="lifecycle")
    fc = forecast_from_history(avg, avg.end, avg.end + DAY)
    assert (fc.signal, fc.emission_factor) == ("average", "lifecycle")
    assert fc.model is not None and "w=" in fc.model


def test_sub_hourly_history_gives_forecast_at_its_step() -> None:
    step = timedelta(minutes=30)
    day = [50.0 + i for i in range(48)]
    hist = history(day * 3, step=step)
    fc = forecast_from_history(hist, hist.end, hist.end + DAY)
    assert fc.step == step and len(fc.points) == 48
    assert values(fc) == pytest.approx(day)


def test_range_is_cut_into_slots_like_the_bundled_provider() -> None:
    hist = history(DAY1 * 2)
    fc = forecast_from_history(hist, T0 + 2 * DAY + timedelta(minutes=20), T0 + 2 * DAY + 2 * H)
    assert [p.start for p in fc.points] == [T0 + 2 * DAY, T0 + 2 * DAY + H]
    one = forecast_from_history(hist, T0 + 2 * DAY, T0 + 2 * DAY)
    assert len(one.points) == 1


def test_long_range_beyond_72_h_still_forecasts() -> None:
    hist = history([100.0 + (i % 24) + 10 * ((i // 24) % 7 > 4) for i in range(24 * 40)])
    fc = forecast_from_history(hist, hist.end, hist.end + 14 * DAY)
    assert len(fc.points) == 14 * 24
    assert all(math.isfinite(v) and v >= 0 for v in values(fc))


def test_less_than_a_day_of_history_is_refused() -> None:
    with pytest.raises(ForecastUnavailable, match=r"only 23 h of usable.*at least 24 h"):
        forecast_from_history(history(DAY1[:23]), T0 + DAY, T0 + 2 * DAY)


def test_no_usable_history_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ForecastUnavailable, match=r"zone 'XX' \(eia history\): only 0 h"):
        forecast_from_history(history([math.nan] * 48), T0 + 2 * DAY, T0 + 3 * DAY)
    with pytest.raises(ForecastUnavailable, match="only 0 h"):  # all of it after issued_at
        forecast_from_history(history(DAY1 * 3), T0, T0 + DAY, issued_at=T0)


def test_step_that_does_not_divide_a_day_is_refused() -> None:
    with pytest.raises(ForecastUnavailable, match="does not divide a day"):
        fallback_model(history([1.0] * 20, step=timedelta(hours=7)))


def test_naive_times_are_refused() -> None:
    hist = history(DAY1 * 2)
    with pytest.raises(ValueError, match="naive"):
        forecast_from_history(hist, datetime(2024, 1, 3), datetime(2024, 1, 4))
    with pytest.raises(ValueError, match="naive"):
        fallback_model(hist, issued_at=datetime(2024, 1, 3))


def test_real_history_beats_same_hour_yesterday() -> None:
    # CISO, real EIA data (fixture): forecast each of the last 14 days from the history before it.
    with FIXTURE.open(newline="") as f:
        rows = [
            (datetime.fromisoformat(r["utc_time"]), float(r["carbon_intensity"]))
            for r in csv.DictReader(f)
        ]
    start = rows[0][0].replace(tzinfo=UTC)
    hist = history([v for _, v in rows], start=start)
    realized = {p.start: p.g_per_kwh for p in hist.points}
    fallback_err: list[float] = []
    naive_err: list[float] = []
    for k in range(14, 0, -1):
        issued = hist.end - k * DAY
        for p in forecast_from_history(hist, issued, issued + DAY, issued_at=issued).points:
            actual = realized[p.start]
            fallback_err.append(abs(p.g_per_kwh - actual) / actual)
            naive_err.append(abs(realized[p.start - DAY] - actual) / actual)
    fallback_mape = 100 * sum(fallback_err) / len(fallback_err)
    naive_mape = 100 * sum(naive_err) / len(naive_err)
    assert fallback_mape < 0.95 * naive_mape, (fallback_mape, naive_mape)
