import csv
import math
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.forecasting.bundled import BundledProvider
from ecoq.scheduler.planning import plan_window

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = datetime(2026, 1, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)


def make_forecast(
    values: list[float],
    step: timedelta = HOUR,
    start: datetime = T0,
    times: list[datetime] | None = None,
) -> Forecast:
    starts = times if times is not None else [start + i * step for i in range(len(values))]
    return Forecast(
        zone="TEST",
        signal="average",
        source="test",
        label="test forecast",
        issued_at=starts[0],
        step=step,
        points=tuple(IntensityPoint(t, v) for t, v in zip(starts, values, strict=True)),
    )


def ukgrid() -> Forecast:
    with (FIXTURES / "ukgrid-regional-forecast-2023-05-04.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    times = [datetime.fromisoformat(r["time"]) for r in rows]
    return make_forecast(
        [float(r["intensity"]) for r in rows], step=timedelta(minutes=30), times=times
    )


# Known answers (from CATS's recorded 48 h UK forecast).


@pytest.mark.parametrize(
    ("rule", "start", "mean"),
    [
        ("interval", datetime(2023, 5, 5, 12, 30, tzinfo=UTC), 43 / 6),  # 8,7,7,5,8,8
        ("trapezoid", datetime(2023, 5, 5, 12, 0, tzinfo=UTC), 44 / 6),  # 10,8,7,7,5,8,8
    ],
)
def test_ukgrid_best_three_hour_window(rule: str, start: datetime, mean: float) -> None:
    forecast = ukgrid()
    duration = 3 * HOUR
    plan = plan_window(
        forecast,
        earliest_start=forecast.start,
        latest_start=forecast.end - duration,
        duration=duration,
        rule=rule,  # type: ignore[arg-type]
    )
    assert plan.start == start
    assert plan.mean_g_per_kwh == pytest.approx(mean)
    assert round(plan.mean_g_per_kwh, 4) == round(mean, 4)
    assert plan.reason == "cleanest window"
    assert plan.saving_fraction == pytest.approx(1 - plan.mean_g_per_kwh / plan.now_g_per_kwh)
    assert (plan.signal, plan.source, plan.label) == ("average", "test", "test forecast")
    assert plan.runner_up_start is not None and plan.runner_up_start != plan.start
    assert plan.runner_up_g_per_kwh is not None
    assert plan.runner_up_g_per_kwh >= plan.mean_g_per_kwh


def test_ukgrid_now_mean_interval_rule() -> None:
    forecast = ukgrid()
    plan = plan_window(
        forecast, earliest_start=forecast.start, latest_start=forecast.start, duration=HOUR
    )
    assert plan.now_g_per_kwh == pytest.approx((11 + 15) / 2)
    assert plan.reason == "now is the cleanest window"
    assert plan.candidates == 1


# Behaviour.


def test_min_saving_runs_now_for_a_small_saving() -> None:
    forecast = make_forecast([100, 99, 100, 100])
    kwargs = {"earliest_start": T0, "latest_start": T0 + 3 * HOUR, "duration": HOUR}
    plan = plan_window(forecast, **kwargs)  # type: ignore[arg-type]
    assert plan.start == T0
    assert plan.reason == "saving 1.0 % below min_saving 2 %: run now"
    assert (plan.mean_g_per_kwh, plan.now_g_per_kwh, plan.saving_fraction) == (100, 100, 0.0)
    assert (plan.runner_up_start, plan.runner_up_g_per_kwh) == (T0 + HOUR, 99)
    shifted = plan_window(forecast, min_saving=0.005, **kwargs)  # type: ignore[arg-type]
    assert shifted.start == T0 + HOUR
    assert shifted.saving_fraction == pytest.approx(0.01)
    assert shifted.reason == "cleanest window"


def test_tie_goes_to_the_earliest_window() -> None:
    forecast = make_forecast([10, 5, 10, 5, 10])
    plan = plan_window(forecast, earliest_start=T0, latest_start=T0 + 4 * HOUR, duration=HOUR)
    assert plan.start == T0 + HOUR
    assert (plan.runner_up_start, plan.runner_up_g_per_kwh) == (T0 + 3 * HOUR, 5)
    flat = make_forecast([7.1] * 48, step=timedelta(minutes=30))
    plan = plan_window(flat, earliest_start=T0, latest_start=T0 + 20 * HOUR, duration=3 * HOUR)
    assert plan.start == T0
    assert plan.reason == "now is the cleanest window"


def test_unaligned_window_may_end_on_a_boundary() -> None:
    # 90 minutes over hourly values 50, 0, 100: starting at 00:30 gives (50*30 + 0*60)/90.
    forecast = make_forecast([50, 0, 100])
    plan = plan_window(
        forecast, earliest_start=T0, latest_start=T0 + 90 * MIN, duration=90 * MIN, min_saving=0
    )
    assert plan.start == T0 + 30 * MIN
    assert plan.mean_g_per_kwh == pytest.approx(50 / 3)
    assert plan.now_g_per_kwh == pytest.approx(100 / 3)


def test_unaligned_earliest_and_latest_starts() -> None:
    forecast = make_forecast([40, 40, 10, 40, 40])
    plan = plan_window(
        forecast,
        earliest_start=T0 + 7 * MIN,
        latest_start=T0 + 2 * HOUR + 20 * MIN,
        duration=40 * MIN,
    )
    assert plan.start == T0 + 2 * HOUR  # the whole window inside the clean hour
    assert plan.mean_g_per_kwh == pytest.approx(10)
    assert plan.now_g_per_kwh == pytest.approx(40)
    late = plan_window(
        forecast, earliest_start=T0 + 7 * MIN, latest_start=T0 + 100 * MIN, duration=40 * MIN
    )
    assert late.start == T0 + 100 * MIN  # deadline-limited: as much of the clean hour as allowed
    assert late.mean_g_per_kwh == pytest.approx((20 * 40 + 20 * 10) / 40)


def test_five_minute_steps_match_brute_force() -> None:
    values = [300 + 200 * math.sin(i / 288 * 2 * math.pi) for i in range(288)]  # one day
    forecast = make_forecast(values, step=5 * MIN)
    duration = 47 * MIN
    plan = plan_window(
        forecast,
        earliest_start=T0 + 3 * MIN,
        latest_start=T0 + 23 * HOUR,
        duration=duration,
        min_saving=0,
    )
    means = {}
    for s in range(3, 23 * 60 + 1):
        means[s] = sum(values[m // 5] for m in range(s, s + 47)) / 47
    best = min(means.values())
    assert plan.mean_g_per_kwh == pytest.approx(best)
    assert plan.start == T0 + min(s for s, m in means.items() if m <= best + 1e-9) * MIN


def test_cannot_finish_by_deadline_starts_now() -> None:
    forecast = make_forecast([100, 1, 1])
    plan = plan_window(forecast, earliest_start=T0, latest_start=T0 - HOUR, duration=HOUR)
    assert plan.start == T0
    assert plan.reason == "cannot finish by the deadline: start as early as possible"
    assert plan.mean_g_per_kwh == plan.now_g_per_kwh == 100


def test_forecast_that_does_not_cover_now_runs_now_without_nan() -> None:
    forecast = make_forecast([100, 1, 1], start=T0 - 10 * HOUR)  # stale
    plan = plan_window(forecast, earliest_start=T0, latest_start=T0 + 5 * HOUR, duration=HOUR)
    assert plan.start == T0
    assert plan.reason == "forecast does not cover the window starting now: run now"
    assert plan.now_g_per_kwh == plan.mean_g_per_kwh == 1  # nearest forecast value stands in
    assert plan.candidates == 0
    assert plan.runner_up_start is None


def test_forecast_shorter_than_the_window_runs_now() -> None:
    forecast = make_forecast([100, 50])
    plan = plan_window(forecast, earliest_start=T0, latest_start=T0 + HOUR, duration=3 * HOUR)
    assert plan.start == T0
    assert plan.reason == "forecast does not cover a full window: run now"
    assert plan.now_g_per_kwh == pytest.approx(75)  # the covered part's mean
    assert plan.candidates == 0


def test_partly_forecast_now_window_compares_the_covered_part() -> None:
    forecast = make_forecast([100, 100, 10, 10], start=T0 + 30 * MIN)
    plan = plan_window(forecast, earliest_start=T0, latest_start=T0 + 3 * HOUR, duration=HOUR)
    assert plan.now_g_per_kwh == 100
    assert plan.start == T0 + 150 * MIN
    assert plan.reason == "cleanest window (now only partly forecast)"


def test_window_across_a_gap_is_not_a_candidate() -> None:
    times = [T0, T0 + HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR]  # 02:00-03:00 missing
    forecast = make_forecast([50, 40, 1, 60], times=times)
    plan = plan_window(
        forecast, earliest_start=T0, latest_start=T0 + 3 * HOUR, duration=2 * HOUR, min_saving=0
    )
    assert plan.start == T0 + 3 * HOUR
    assert plan.mean_g_per_kwh == pytest.approx(30.5)
    trapezoid = plan_window(
        forecast,
        earliest_start=T0,
        latest_start=T0 + 3 * HOUR,
        duration=HOUR,
        rule="trapezoid",
        min_saving=0,
    )
    assert trapezoid.start == T0 + 3 * HOUR  # interpolates 1..60 within the covered hour
    assert trapezoid.mean_g_per_kwh == pytest.approx(30.5)


def test_long_forecast_is_planned_in_linear_time() -> None:
    values = [float((i * 7919) % 613) for i in range(365 * 288)]  # a year of 5-minute points
    forecast = make_forecast(values, step=5 * MIN)
    began = time.perf_counter()
    plan = plan_window(
        forecast,
        earliest_start=T0 + 2 * MIN,
        latest_start=forecast.end - 7 * HOUR,
        duration=7 * HOUR,
        rule="trapezoid",
    )
    assert time.perf_counter() - began < 10
    assert T0 <= plan.start <= forecast.end - 7 * HOUR
    assert plan.candidates > 100_000


def test_bundled_profile_prefers_solar_hours_in_california() -> None:
    now = datetime(2025, 6, 2, 0, tzinfo=UTC)  # Monday 17:00 in California
    forecast = BundledProvider().forecast("US-CAL-CISO", now, now + 24 * HOUR)
    plan = plan_window(
        forecast, earliest_start=now, latest_start=now + 20 * HOUR, duration=3 * HOUR
    )
    assert plan.saving_fraction > 0.2
    assert 16 <= plan.start.hour <= 22  # roughly 09:00-15:00 Pacific


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"earliest_start": datetime(2026, 1, 5)}, "earliest_start .* no timezone"),
        ({"latest_start": datetime(2026, 1, 5)}, "latest_start .* no timezone"),
        ({"duration": timedelta(0)}, "duration 0:00:00 is not positive"),
        ({"min_saving": 1.5}, "min_saving 1.5 is not a fraction"),
        ({"min_saving": math.nan}, "min_saving nan"),
        ({"rule": "simpson"}, "averaging rule 'simpson' is unknown"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"earliest_start": T0, "latest_start": T0, "duration": HOUR}
    args.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        plan_window(make_forecast([1, 2]), **args)  # type: ignore[arg-type]


# Property tests against brute force on a fine grid. Times are in ticks (1 minute for 5-minute
# steps, else 5 minutes), so every window start and end, and every forecast boundary, lies on the
# grid; under the interval rule the mean is linear in the start between such points, so the grid
# contains the true optimum.


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    step_min = draw(st.sampled_from([5, 15, 30, 60]))
    tick_min = 1 if step_min == 5 else 5
    step = step_min // tick_min
    n = draw(st.integers(1, 16))
    kept = [i for i in range(n) if draw(st.booleans()) or i == 0] if draw(st.booleans()) else []
    kept = kept or list(range(n))
    values = [draw(st.integers(0, 1000)) for _ in kept]
    horizon = (n + 1) * step
    earliest = draw(st.integers(-2 * step, horizon))
    latest = earliest + draw(st.integers(-3, horizon))
    duration = draw(st.integers(1, horizon))
    min_saving = draw(st.sampled_from([0.0, 0.0173, 0.1]))
    return {
        "tick": timedelta(minutes=tick_min),
        "step": step,
        "positions": [i * step for i in kept],
        "values": values,
        "earliest": earliest,
        "latest": latest,
        "duration": duration,
        "min_saving": min_saving,
    }


def expected_start(
    means: dict[int, Fraction],
    now_mean: Fraction | None,
    earliest: int,
    latest: int,
    min_saving: float,
) -> int:
    """The planner's decision rule, from brute-force means of the covered windows."""
    if latest < earliest or now_mean is None or not means:
        return earliest
    best = min(means.values())
    best_start = min(s for s, m in means.items() if m == best)
    if best_start == earliest:
        return earliest
    saving = (now_mean - best) / now_mean if now_mean > 0 else Fraction(0)
    assume(abs(float(saving) - min_saving) > 1e-6)
    return earliest if saving <= 0 or saving < min_saving else best_start


def run_plan(sc: dict[str, object], rule: str) -> tuple[Forecast, int, float]:
    tick: timedelta = sc["tick"]  # type: ignore[assignment]
    positions: list[int] = sc["positions"]  # type: ignore[assignment]
    forecast = make_forecast(
        [float(v) for v in sc["values"]],  # type: ignore[attr-defined]
        step=sc["step"] * tick,  # type: ignore[operator]
        times=[T0 + p * tick for p in positions],
    )
    earliest: int = sc["earliest"]  # type: ignore[assignment]
    plan = plan_window(
        forecast,
        earliest_start=T0 + earliest * tick,
        latest_start=T0 + sc["latest"] * tick,  # type: ignore[operator]
        duration=sc["duration"] * tick,  # type: ignore[operator]
        min_saving=sc["min_saving"],  # type: ignore[arg-type]
        rule=rule,  # type: ignore[arg-type]
    )
    start_ticks = (plan.start - T0) / tick
    assert start_ticks == int(start_ticks)
    assert math.isfinite(plan.mean_g_per_kwh) and math.isfinite(plan.now_g_per_kwh)
    latest: int = sc["latest"]  # type: ignore[assignment]
    if latest >= earliest:  # the deadline is respected
        assert earliest <= start_ticks <= latest
    else:
        assert start_ticks == earliest
    return forecast, int(start_ticks), plan.mean_g_per_kwh


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_interval_rule_matches_brute_force(sc: dict[str, object]) -> None:
    step: int = sc["step"]  # type: ignore[assignment]
    earliest: int = sc["earliest"]  # type: ignore[assignment]
    latest: int = sc["latest"]  # type: ignore[assignment]
    duration: int = sc["duration"]  # type: ignore[assignment]
    value_at = {
        p + k: v
        for p, v in zip(sc["positions"], sc["values"], strict=True)  # type: ignore[call-overload]
        for k in range(step)
    }
    means: dict[int, Fraction] = {}
    for s in range(earliest, latest + 1):
        window = range(s, s + duration)
        if all(t in value_at for t in window):
            means[s] = Fraction(sum(value_at[t] for t in window), duration)
    now = [value_at[t] for t in range(earliest, earliest + duration) if t in value_at]
    now_mean = Fraction(sum(now), len(now)) if now else None
    want = expected_start(means, now_mean, earliest, latest, sc["min_saving"])  # type: ignore[arg-type]
    _, got, mean = run_plan(sc, "interval")
    assert got == want
    if want in means:
        assert mean == pytest.approx(float(means[want]), rel=1e-9, abs=1e-9)


def trapezoid_mean(
    positions: list[int], values: list[int], step: int, a: int, b: int
) -> tuple[Fraction, int]:
    """Exact integral and covered length of the interpolated intensity over [a, b]."""
    cuts = sorted({a, b, *(p for p in positions if a < p < b)})
    area, covered = Fraction(0), 0
    for u, w in zip(cuts, cuts[1:], strict=False):
        for i in range(len(positions) - 1):
            p, q = positions[i], positions[i + 1]
            if p <= u and w <= q and q - p <= step:
                f = [
                    values[i] + Fraction(values[i + 1] - values[i], q - p) * (x - p) for x in (u, w)
                ]
                area += (w - u) * (f[0] + f[1]) / 2
                covered += w - u
                break
    return area, covered


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_trapezoid_rule_matches_direct_integration(sc: dict[str, object]) -> None:
    step: int = sc["step"]  # type: ignore[assignment]
    positions: list[int] = sc["positions"]  # type: ignore[assignment]
    values: list[int] = sc["values"]  # type: ignore[assignment]
    earliest: int = sc["earliest"]  # type: ignore[assignment]
    latest: int = sc["latest"]  # type: ignore[assignment]
    duration: int = sc["duration"]  # type: ignore[assignment]
    candidates = {earliest, max(latest, earliest)}
    for p in positions:
        candidates |= {x for x in (p, p - duration) if earliest < x < latest}
    means: dict[int, Fraction] = {}
    for s in candidates:
        area, covered = trapezoid_mean(positions, values, step, s, s + duration)
        if covered == duration:
            means[s] = area / duration
    area, covered = trapezoid_mean(positions, values, step, earliest, earliest + duration)
    now_mean = area / covered if covered else None
    want = expected_start(means, now_mean, earliest, latest, sc["min_saving"])  # type: ignore[arg-type]
    _, got, mean = run_plan(sc, "trapezoid")
    assert got == want
    if want in means:
        assert mean == pytest.approx(float(means[want]), rel=1e-9, abs=1e-9)


# plan_jobs: many jobs, sites, interruptible slots (the engine the daemon and simulate share).

from ecoq.scheduler.planning import JobRequest, plan_jobs  # noqa: E402
from ecoq.scheduler.sites import Site  # noqa: E402


def one_site(forecast: Forecast, **job: object) -> object:
    [placed] = plan_jobs(
        [JobRequest(key=1, sites=("s",), **job)],  # type: ignore[arg-type]
        [Site("s", forecast.zone)],
        {forecast.zone: forecast},
        now=job["earliest_start"],  # type: ignore[arg-type]
        min_saving=0,
    )
    return placed


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from(["interval", "trapezoid"]))
def test_plan_jobs_agrees_with_plan_window(sc: dict[str, object], rule: str) -> None:
    tick: timedelta = sc["tick"]  # type: ignore[assignment]
    forecast = make_forecast(
        [float(v) for v in sc["values"]],  # type: ignore[attr-defined]
        step=sc["step"] * tick,  # type: ignore[operator]
        times=[T0 + p * tick for p in sc["positions"]],  # type: ignore[attr-defined]
    )
    earliest = T0 + sc["earliest"] * tick  # type: ignore[operator]
    latest = T0 + sc["latest"] * tick  # type: ignore[operator]
    duration = sc["duration"] * tick  # type: ignore[operator]
    want = plan_window(
        forecast, earliest_start=earliest, latest_start=latest, duration=duration,
        min_saving=sc["min_saving"], rule=rule,  # type: ignore[arg-type]
    )  # fmt: skip
    [got] = plan_jobs(
        [JobRequest(1, earliest, latest + duration, duration, ("s",))],
        [Site("s", "TEST")],
        {"TEST": forecast},
        now=earliest,
        min_saving=sc["min_saving"],  # type: ignore[arg-type]
        rule=rule,  # type: ignore[arg-type]
    )
    assert got.start == want.start
    assert got.reason == want.reason.replace(" (now only partly forecast)", "")
    if want.start != earliest:
        assert got.mean_g_per_kwh == pytest.approx(want.mean_g_per_kwh)
        assert got.saving_fraction == pytest.approx(want.saving_fraction)


@st.composite
def hourly_jobs(draw: st.DrawFn) -> tuple[list[float], int, int, int, int | None]:
    values = [float(draw(st.integers(0, 500))) for _ in range(draw(st.integers(2, 30)))]
    need = draw(st.integers(1, len(values)))
    first = draw(st.integers(0, len(values) - need))
    stop = draw(st.integers(first + need, len(values)))
    return values, need, first, stop, draw(st.sampled_from([None, 0, 1, 2]))


@settings(max_examples=300, deadline=None)
@given(hourly_jobs())
def test_deadlines_brute_force_and_interruptible_beats_contiguous(
    case: tuple[list[float], int, int, int, int | None],
) -> None:
    values, need, first, stop, pauses = case
    forecast = make_forecast(values)
    common = {
        "earliest_start": T0 + first * HOUR,
        "deadline": T0 + stop * HOUR,
        "duration": need * HOUR,
    }
    whole = one_site(forecast, **common)
    split = one_site(forecast, interruptible=True, max_pauses=pauses, pause="checkpoint", **common)
    brute = min(sum(values[s : s + need]) / need for s in range(first, stop - need + 1))
    assert whole.mean_g_per_kwh == pytest.approx(brute)  # type: ignore[attr-defined]
    assert split.mean_g_per_kwh <= whole.mean_g_per_kwh + 1e-9  # type: ignore[attr-defined]
    assert split.saving_fraction >= whole.saving_fraction - 1e-9  # type: ignore[attr-defined]
    for p in (whole, split):
        assert not p.late and p.end <= common["deadline"]  # type: ignore[attr-defined]
        assert p.start >= common["earliest_start"]  # type: ignore[attr-defined]
    if pauses is not None:
        assert len(split.segments) <= pauses + 1  # type: ignore[attr-defined]


def test_plan_jobs_picks_the_cleaner_site_counting_pue() -> None:
    de = make_forecast([300.0] * 12)
    fr = Forecast("FR", "average", "t", "t", T0, HOUR, tuple(
        IntensityPoint(T0 + i * HOUR, 200.0) for i in range(12)))  # fmt: skip
    sites = [Site("home", "TEST"), Site("fr", "FR", pue=1.4), Site("fr2", "FR", pue=1.6)]
    job = JobRequest(1, T0, T0 + 6 * HOUR, 2 * HOUR, ("home", "fr", "fr2"))
    [p] = plan_jobs([job], sites, {"TEST": de, "FR": fr}, now=T0)
    assert (p.site, p.zone, p.start) == ("fr", "FR", T0)
    assert p.mean_g_per_kwh == pytest.approx(280.0)
    assert p.now_g_per_kwh == pytest.approx(300.0)
    assert p.reason == "cleanest window at fr"
    assert (p.runner_up_site, p.runner_up_g_per_kwh) == ("home", pytest.approx(300.0))
    [q] = plan_jobs([job], [Site("home", "TEST", pue=1.0), *sites[1:]], {"TEST": de, "FR": fr},
                    now=T0, min_saving=0.1)  # fmt: skip
    assert q.site == "home" and "below min_saving" in q.reason


def test_plan_jobs_uses_the_fallback_beyond_the_horizon() -> None:
    short = make_forecast([300.0] * 4, step=15 * MIN)  # one hour
    typical = make_forecast([300.0] * 5 + [50.0] * 2 + [300.0] * 5)
    job = JobRequest(1, T0, T0 + 10 * HOUR, 2 * HOUR, ("s",))
    [p] = plan_jobs([job], [Site("s", "TEST")], {"TEST": short}, now=T0,
                    fallbacks={"TEST": typical})  # fmt: skip
    assert p.start == T0 + 5 * HOUR and p.mean_g_per_kwh == pytest.approx(50.0)
    [q] = plan_jobs([job], [Site("s", "TEST")], {"TEST": short}, now=T0)
    assert q.start == T0 and q.reason == "forecast does not cover a full window: run now"
    [r] = plan_jobs([job], [Site("s", "NONE")], {}, now=T0)
    assert r.start == T0 and r.mean_g_per_kwh is None and r.now_g_per_kwh is None


def test_power_profile_weights_the_window() -> None:
    forecast = make_forecast([100, 10, 100, 100, 10, 100])
    heavy_end = JobRequest(1, T0, T0 + 6 * HOUR, 2 * HOUR, ("s",), profile=(1.0, 9.0))
    [p] = plan_jobs([heavy_end], [Site("s", "TEST")], {"TEST": forecast}, now=T0)
    assert p.start == T0  # the heavy second hour lands on the clean 01:00
    assert p.mean_g_per_kwh == pytest.approx(0.1 * 100 + 0.9 * 10)


def test_plan_jobs_validates() -> None:
    sites = [Site("s", "TEST")]
    good = JobRequest(1, T0, T0 + HOUR, HOUR, ("s",))
    with pytest.raises(ValidationError, match="sites"):
        plan_jobs([JobRequest(1, T0, T0 + HOUR, HOUR, ("x",))], sites, {}, now=T0)
    with pytest.raises(ValidationError, match="not positive"):
        plan_jobs([JobRequest(1, T0, T0 + HOUR, timedelta(0), ("s",))], sites, {}, now=T0)
    with pytest.raises(ValidationError, match="unique"):
        plan_jobs([good], sites * 2, {}, now=T0)
    with pytest.raises(ValidationError, match="no timezone"):
        plan_jobs([good], sites, {}, now=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="PUE"):
        Site("s", "Z", pue=0.5)
    assert plan_jobs([], sites, {}, now=T0) == []


def test_importing_the_planner_does_not_import_numpy() -> None:
    import subprocess
    import sys

    code = "import sys, ecoq.scheduler.planning, ecoq.cli; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_per_job_min_saving_overrides_the_call() -> None:
    forecast = make_forecast([100, 99, 100, 100])
    waited = JobRequest(1, T0, T0 + 4 * HOUR, HOUR, ("s",), min_saving=0.0)
    fresh = JobRequest(2, T0, T0 + 4 * HOUR, HOUR, ("s",))
    a, b = plan_jobs([waited, fresh], [Site("s", "TEST")], {"TEST": forecast}, now=T0)
    assert a.start == T0 + HOUR and b.start == T0
    assert b.reason == "saving 1.0 % below min_saving 2 %: run now"
