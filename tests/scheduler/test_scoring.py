"""Vectorised window scoring: grids, mixed steps, fallbacks, profiles, range queries."""

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler.scoring import Candidates, RangeMin, build_curve, empty_curve, window_means

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = datetime(2026, 1, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)
FLAT = np.array([1.0])


def forecast(values: list[float], step: timedelta = HOUR, start: datetime = T0) -> Forecast:
    points = tuple(IntensityPoint(start + i * step, v) for i, v in enumerate(values))
    return Forecast("Z", "average", "test", "test", start, step, points)


def ukgrid() -> Forecast:
    with (FIXTURES / "ukgrid-regional-forecast-2023-05-04.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    points = tuple(
        IntensityPoint(datetime.fromisoformat(r["time"]), float(r["intensity"])) for r in rows
    )
    return Forecast("RG", "average", "t", "t", points[0].start, timedelta(minutes=30), points)


def best(fc: Forecast, duration: timedelta, rule: str = "interval", **kw: object) -> tuple:
    curve = build_curve(fc, start=fc.start, end=fc.end, rule=rule, **kw)  # type: ignore[arg-type]
    cands = Candidates.build(curve, np.array([duration.total_seconds()]), FLAT)
    latest = curve.seconds(fc.end - duration) if rule == "interval" else curve.span_s
    s, m, now, count, _, _ = cands.best(np.array([0]), np.array([0.0]), np.array([latest]))
    return curve.at(float(s[0])), float(m[0]), float(now[0]), int(count[0])


@pytest.mark.parametrize(
    ("rule", "start", "mean"),
    [
        ("interval", datetime(2023, 5, 5, 12, 30, tzinfo=UTC), 43 / 6),
        ("trapezoid", datetime(2023, 5, 5, 12, 0, tzinfo=UTC), 44 / 6),
    ],
)
def test_ukgrid_known_answers(rule: str, start: datetime, mean: float) -> None:
    got_start, got_mean, _, _ = best(ukgrid(), 3 * HOUR, rule)
    assert got_start == start
    assert got_mean == pytest.approx(mean)


def test_unaligned_window_mean() -> None:
    curve = build_curve(forecast([50, 0, 100]), start=T0, end=T0 + 3 * HOUR)
    m = window_means(curve, np.array([1800.0, 0.0]), np.array([5400.0, 5400.0]), FLAT)
    assert m == pytest.approx([50 / 3, 100 / 3])


@pytest.mark.parametrize("minutes", [5, 15, 30, 60])
def test_steps_and_fallback_beyond_the_horizon(minutes: int) -> None:
    step = timedelta(minutes=minutes)
    primary = forecast([100.0] * int(6 * HOUR / step), step=step)  # 6 h ahead
    fallback = forecast([100.0] * 9 + [10.0] * 3 + [100.0] * 12)  # hourly, 24 h
    curve = build_curve(primary, fallback=fallback, start=T0, end=T0 + 24 * HOUR)
    assert curve.tick_s == minutes * 60
    assert curve.covered.all()
    assert not curve.primary[curve.n - 1] and curve.primary[0]
    cands = Candidates.build(curve, np.array([3 * 3600.0]), FLAT)
    s, m, _, _, _, _ = cands.best(np.array([0]), np.array([0.0]), np.array([20 * 3600.0]))
    assert curve.at(float(s[0])) == T0 + 9 * HOUR  # found in the fallback, never zero
    assert m[0] == pytest.approx(10.0)


def test_mixed_step_grid_and_uncovered_cells() -> None:
    primary = forecast([1.0, 2.0, 3.0, 4.0], step=15 * MIN, start=T0 + 30 * MIN)
    curve = build_curve(primary, start=T0, end=T0 + 2 * HOUR)
    assert curve.tick_s == 900
    assert not curve.covered[:2].any() and curve.covered[2:6].all()
    m = window_means(curve, np.array([0.0, 1800.0]), np.array([1800.0, 3600.0]), FLAT)
    assert m[0] == np.inf and m[1] == pytest.approx(2.5)
    part = window_means(curve, np.array([900.0]), np.array([1800.0]), FLAT, partial=True)
    assert part[0] == pytest.approx(1.0)


def test_profile_weighting() -> None:
    curve = build_curve(forecast([10, 20, 30, 40]), start=T0, end=T0 + 4 * HOUR)
    m = window_means(curve, np.array([0.0]), np.array([7200.0]), np.array([0.75, 0.25]))
    assert m[0] == pytest.approx(0.75 * 10 + 0.25 * 20)


def test_empty_curve_and_bad_grids() -> None:
    curve = empty_curve(T0, T0 + 3 * HOUR)
    assert not curve.covered.any()
    odd = Forecast(
        "Z", "average", "t", "t", T0, HOUR,
        (IntensityPoint(T0, 1), IntensityPoint(T0 + timedelta(microseconds=1500), 2)),
    )  # fmt: skip
    with pytest.raises(ValidationError, match="common grid"):
        build_curve(odd, start=T0, end=T0 + HOUR)
    with pytest.raises(ValidationError, match="unknown"):
        build_curve(forecast([1]), start=T0, end=T0 + HOUR, rule="simpson")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="needs a forecast"):
        build_curve(None, start=T0, end=T0 + HOUR)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=70),
    st.data(),
)
def test_range_min_matches_brute_force(values: list[int], data: st.DataObject) -> None:
    arr = np.array(values, dtype=np.float64)
    rmq = RangeMin(arr)
    n = len(values)
    lo = np.array(data.draw(st.lists(st.integers(0, n), min_size=5, max_size=5)))
    hi = np.array(data.draw(st.lists(st.integers(-1, n - 1), min_size=5, max_size=5)))
    thr = np.array(data.draw(st.lists(st.integers(-1, 50), min_size=5, max_size=5)), dtype=float)
    mins = rmq.min(lo, hi)
    firsts = rmq.first_at_most(lo, hi, thr)
    for k in range(5):
        part = values[lo[k] : hi[k] + 1]
        assert mins[k] == (min(part) if part else np.inf)
        hits = [i for i in range(lo[k], hi[k] + 1) if values[i] <= thr[k]]
        assert firsts[k] == (hits[0] if hits else -1)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([5, 15, 30, 60]),
    st.lists(st.integers(0, 500), min_size=2, max_size=30),
    st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True),
    st.data(),
)
def test_best_window_matches_brute_force(
    step_min: int, values: list[int], lengths: list[int], data: st.DataObject
) -> None:
    tick = 1 if step_min == 5 else 5  # every start and end on a tick grid
    per = step_min // tick
    fc = forecast([float(v) for v in values], step=timedelta(minutes=step_min))
    horizon = len(values) * per
    curve = build_curve(fc, start=fc.start, end=fc.end)
    durs = [min(d, horizon) * tick * 60.0 for d in lengths]
    cands = Candidates.build(curve, np.unique(durs), FLAT)
    fine = [values[i // per] for i in range(horizon)]
    for d in durs:
        ticks = int(d // (tick * 60))
        e = data.draw(st.integers(0, horizon - ticks))
        latest = data.draw(st.integers(e, horizon - ticks))
        row = int(np.searchsorted(np.unique(durs), d))
        s, m, _, _, _, _ = cands.best(
            np.array([row]), np.array([e * tick * 60.0]), np.array([latest * tick * 60.0])
        )
        means = [sum(fine[x : x + ticks]) / ticks for x in range(e, latest + 1)]
        low = min(means)
        assert m[0] == pytest.approx(low, rel=1e-9, abs=1e-9)
        want = next(x for x, v in zip(range(e, latest + 1), means, strict=True) if v <= low + 1e-7)
        assert s[0] == pytest.approx(want * tick * 60.0)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([5, 15, 30, 60]),
    st.lists(st.one_of(st.integers(0, 500), st.floats(0, 500)), min_size=2, max_size=40),
    st.lists(st.integers(1, 60), min_size=1, max_size=6, unique=True),
    st.sampled_from(["interval", "trapezoid"]),
    st.data(),
)
def test_whole_cell_windows_score_exactly_as_window_means(
    step_min: int, values: list[float], cells: list[int], rule: str, data: st.DataObject
) -> None:
    """Windows of whole cells are scored from the boundaries' integrals (a fast path): the same
    values, bit for bit, as `window_means` computes window by window."""
    fc = forecast([float(v) for v in values], step=timedelta(minutes=step_min))
    gap = data.draw(st.integers(0, len(values) - 1))
    fc = Forecast("Z", "average", "t", "t", T0, fc.step, fc.points[:gap] + fc.points[gap + 1 :])
    curve = build_curve(fc, start=T0 - data.draw(st.integers(0, 2)) * fc.step, end=fc.end + HOUR,
                        rule=rule)  # type: ignore[arg-type]  # fmt: skip
    durations = np.unique(np.array(cells, dtype=np.float64) * curve.tick_s)
    cands = Candidates.build(curve, durations, FLAT)
    for r, d in enumerate(durations):
        n = int(cands.row_len[r])
        starts = cands.starts[r * cands.width : r * cands.width + n]
        want = window_means(curve, starts, np.full(n, d), FLAT)
        assert np.array_equal(cands.scores[r * cands.width : r * cands.width + n], want)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 500), min_size=2, max_size=30),
    st.lists(st.integers(1, 12), min_size=1, max_size=4, unique=True),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=20),
)
def test_running_minima_and_sparse_table_answer_alike(
    values: list[int], lengths: list[int], windows: list[tuple[int, int]]
) -> None:
    """`Candidates.best` takes running minima when jobs share their earliest starts, else a
    sparse table: the same answers either way (for starts on the grid, as the engine asks)."""
    windows = [(min(a, 2 * len(values)), min(b, 2 * len(values))) for a, b in windows]
    fc = forecast([float(v) for v in values], step=timedelta(minutes=30))
    curve = build_curve(fc, start=fc.start, end=fc.end)
    durs = np.unique(np.array(lengths, dtype=np.float64) * 900.0)
    cands = Candidates.build(curve, durs, FLAT)
    rows = np.array([k % len(durs) for k in range(len(windows))])
    earliest = np.array([a * 900.0 for a, _ in windows])
    latest = np.array([b * 900.0 for _, b in windows])
    got = cands.best(rows, earliest, latest, method="prefix")
    want = cands.best(rows, earliest, latest, method="table")
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 500), min_size=2, max_size=30),
    st.lists(st.integers(1, 12), min_size=1, max_size=4, unique=True),
    st.integers(2, 8),
    st.data(),
)
def test_rows_stored_only_as_far_as_searched_read_alike(
    values: list[int], lengths: list[int], far: int, data: st.DataObject
) -> None:
    """A grid reaching `far` times past the forecast: with `until_s`, rows of whole cells keep
    only what searches up to it read, and go on (`row_end`) with cell boundaries scored `inf`;
    the rows read, and the searches answer, as when every candidate is stored."""
    fc = forecast([float(v) for v in values], step=timedelta(minutes=15))
    curve = build_curve(fc, start=fc.start, end=fc.start + far * (fc.end - fc.start))
    durs = np.unique(np.array(lengths, dtype=np.float64) * 900.0)
    until = data.draw(st.integers(0, curve.n)) * 900.0 + data.draw(st.sampled_from([0.0, 300.0]))
    full = Candidates.build(curve, durs, FLAT)
    part = Candidates.build(curve, durs, FLAT, until_s=until)
    assert part.width <= full.width
    assert np.array_equal(part.row_end, full.row_len)
    for r in range(len(durs)):
        for col in (0, data.draw(st.integers(0, int(full.row_len[r])))):
            assert np.array_equal(part.row_starts(r, col), full.row_starts(r, col))
            assert np.array_equal(part.row_scores(r, col), full.row_scores(r, col))
    rows = np.array([data.draw(st.integers(0, len(durs) - 1)) for _ in range(5)])
    earliest = np.array([data.draw(st.integers(0, int(until // 900))) * 900.0 for _ in rows])
    latest = np.minimum(earliest + 900.0 * data.draw(st.integers(0, 20)), until)
    got, want = part.best(rows, earliest, latest), full.best(rows, earliest, latest)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_rows_far_past_the_forecast_are_not_stored() -> None:
    fc = forecast([100.0 + i for i in range(8)], step=timedelta(minutes=15))
    curve = build_curve(fc, start=fc.start, end=fc.start + 10 * (fc.end - fc.start))
    durs = np.array([900.0, 3600.0])
    cands = Candidates.build(curve, durs, FLAT, until_s=0.0)
    assert cands.width == 8 and list(cands.row_end) == [80, 77]  # covered cells, of 80
    assert (
        np.isinf(cands.row_scores(0, 7)[1:]).all() and np.isfinite(cands.row_scores(0, 0)[:8]).all()
    )
