"""Vectorised window scoring (numpy): the mean forecast intensity of every feasible window.

A zone's forecast (and, beyond its horizon or before its start, a fallback forecast, never zero)
is laid on a regular grid of cells (`Curve`). The tick is the greatest common divisor of the steps
and point offsets, so 5, 15, 30 and 60 minute forecasts mix exactly. Each cell holds a linear
piece `y0 → y1` (equal under the interval rule; interpolated between points under the trapezoid
rule, as CATS computes) and cumulative integrals, so the mean over any window `[s, s + d)`, at any
start, aligned or not, is a few array look-ups.

Jobs are grouped by length (and power profile): each group is one row of candidate starts
(every start where a window edge, or a profile piece's edge, meets a cell boundary), scored in one
vectorised pass. Under the interval rule the (profile-weighted) mean is linear in the start between
those candidates, so the best candidate in a job's `[earliest, latest]` (plus the two ends) is the
exact optimum. Per-job range minima use running minima or a sparse table (`rangemin`), so no
jobs × sites × steps array is built. Rows whose windows start and end on cell boundaries (flat
profile, whole-cell lengths: the usual case) are scored from the boundaries' integrals, the same
values `window_means` computes, and only where the forecast could cover a window. On a grid of
whole seconds, such rows are stored only as far as the jobs search them (and the forecast
reaches): the grid can reach far past both, for capacity taken far ahead, and the rest of each
row is the cell boundaries, scored `inf`, which the capacity search walks without a table.

Times inside this module are float seconds from the curve's origin. Intensities are gCO2eq/kWh.
Only `ecoq.scheduler` imports this module: it imports numpy at once.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil, gcd
from typing import Literal

import numpy as np
import numpy.typing as npt

from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast
from ecoq.scheduler.rangemin import RangeMin, RunningMin

__all__ = ["Candidates", "Curve", "RangeMin", "build_curve", "empty_curve", "window_means"]

Rule = Literal["interval", "trapezoid"]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_MAX_CELLS = 4_000_000
_COVER_TOL_S = 1e-6
TIE_REL = 1e-9


@dataclass(frozen=True)
class Curve:
    """Intensity on a regular grid of `n` cells of `tick_s` seconds from `origin`.

    Attributes:
        origin: the grid's start (tz-aware UTC).
        tick_s: cell length, seconds.
        y0, y1: intensity (g/kWh) at each cell's start and end; 0 where not covered.
        covered: whether a forecast covers each cell.
        primary: whether the primary forecast (not the fallback) covers each cell.
        area: cumulative integral at each cell start, `n + 1` values, (g/kWh)·s.
        cover: cumulative covered time at each cell start, `n + 1` values, s.
    """

    origin: datetime
    tick_s: float
    y0: Floats
    y1: Floats
    covered: Bools
    primary: Bools
    area: Floats
    cover: Floats

    @property
    def n(self) -> int:
        """Number of cells."""
        return int(self.y0.shape[0])

    @property
    def span_s(self) -> float:
        """Grid length, seconds."""
        return self.n * self.tick_s

    def seconds(self, t: datetime) -> float:
        """`t` (tz-aware) as seconds from the origin."""
        return (t - self.origin) / timedelta(seconds=1)

    def at(self, s: float) -> datetime:
        """Seconds from the origin as a UTC datetime (rounded to the microsecond)."""
        return self.origin + timedelta(microseconds=round(s * 1e6))

    def cell_costs(self) -> Floats:
        """Mean intensity of each cell (g/kWh); `inf` where not covered."""
        return np.where(self.covered, (self.y0 + self.y1) / 2, np.inf)

    def integral(self, t: Floats) -> tuple[Floats, Floats]:
        """Integral (g/kWh·s) and covered seconds from the origin up to each time `t` (s)."""
        tc = np.clip(t, 0.0, self.span_s)
        k = np.minimum((tc // self.tick_s).astype(np.int64), self.n - 1)
        dt = tc - k * self.tick_s
        if not dt.any():  # every time on a cell boundary: plain look-ups
            return self.area[k], self.cover[k]
        y0, y1, cov = self.y0[k], self.y1[k], self.covered[k]
        yt = y0 + (y1 - y0) * (dt / self.tick_s)
        area = self.area[k] + np.where(cov, dt * (y0 + yt) / 2, 0.0)
        cover = self.cover[k] + np.where(cov, dt, 0.0)
        return area, cover


def _micros(d: timedelta) -> int:
    return d // timedelta(microseconds=1)


def _paint(
    curve_y0: Floats,
    curve_y1: Floats,
    covered: Bools,
    forecast: Forecast,
    rule: Rule,
    origin: datetime,
    tick_us: int,
) -> None:
    """Write `forecast`'s pieces into the cells they cover (later paints win)."""
    n = curve_y0.shape[0]
    times = np.array([_micros(p.start - origin) for p in forecast.points], dtype=np.int64)
    values = np.array([p.g_per_kwh for p in forecast.points], dtype=np.float64)
    step = _micros(forecast.step)
    if rule == "interval":
        ends = np.minimum(times + step, np.append(times[1:], np.iinfo(np.int64).max))
        a, b = times, ends
        va, vb = values, values
    else:
        keep = np.diff(times) <= step  # never interpolate across a gap
        a, b = times[:-1][keep], times[1:][keep]
        va, vb = values[:-1][keep], values[1:][keep]
    c0 = np.clip(a // tick_us, 0, n)
    c1 = np.clip(b // tick_us, 0, n)
    lens = np.maximum(c1 - c0, 0)
    total = int(lens.sum())
    if total == 0:
        return
    piece = np.repeat(np.arange(len(lens)), lens)
    cells = c0[piece] + (np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens))
    span = (b - a).astype(np.float64)[piece]
    slope = (vb - va)[piece] / span
    x0 = (cells * tick_us - a[piece]).astype(np.float64)
    curve_y0[cells] = va[piece] + slope * x0
    curve_y1[cells] = va[piece] + slope * (x0 + tick_us)
    covered[cells] = True


def build_curve(
    forecast: Forecast | None,
    *,
    start: datetime,
    end: datetime,
    fallback: Forecast | None = None,
    rule: Rule = "interval",
) -> Curve:
    """Lay `forecast` over `[start, end)` on a grid, with `fallback` wherever it has no value.

    The grid starts at or just before `start` and ends at or just after `end`. Cells neither
    forecast covers stay uncovered: windows over them are never candidates.

    Raises:
        ValidationError: naive times, no forecast at all, an unknown rule, or points whose
            spacing has no common divisor of at least one second within 4 million cells.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationError("build_curve needs timezone-aware UTC start and end")
    if rule not in ("interval", "trapezoid"):
        raise ValidationError(f"averaging rule {rule!r} is unknown; use interval or trapezoid")
    sources = [f for f in (fallback, forecast) if f is not None]
    if not sources:
        raise ValidationError("build_curve needs a forecast or a fallback")
    ref = sources[-1].points[0].start.astimezone(UTC)
    tick_us = 0
    for f in sources:
        tick_us = gcd(tick_us, _micros(f.step))
        for p in f.points:
            tick_us = gcd(tick_us, _micros(p.start - ref))
    if tick_us < 1_000_000:
        raise ValidationError(
            "forecast points are not on a common grid of whole seconds; resample the forecast"
        )
    before = max(0, ceil(_micros(ref - start) / tick_us))
    origin = ref - timedelta(microseconds=before * tick_us)
    n = max(1, ceil(_micros(end - origin) / tick_us))
    if n > _MAX_CELLS:
        raise ValidationError(
            f"planning grid of {n} cells of {tick_us / 1e6:g} s is too large; "
            "use forecasts with a coarser common step or a nearer deadline"
        )
    y0 = np.zeros(n)
    y1 = np.zeros(n)
    covered = np.zeros(n, dtype=np.bool_)
    primary = np.zeros(n, dtype=np.bool_)
    if fallback is not None:
        _paint(y0, y1, covered, fallback, rule, origin, tick_us)
    if forecast is not None:
        _paint(y0, y1, primary, forecast, rule, origin, tick_us)
        covered |= primary
    y0[~covered] = 0.0
    y1[~covered] = 0.0
    tick_s = tick_us / 1e6
    area = np.concatenate(([0.0], np.cumsum(np.where(covered, tick_s * (y0 + y1) / 2, 0.0))))
    cover = np.concatenate(([0.0], np.cumsum(np.where(covered, tick_s, 0.0))))
    return Curve(origin, tick_s, y0, y1, covered, primary, area, cover)


def empty_curve(start: datetime, end: datetime, tick_s: float = 3600.0) -> Curve:
    """A grid over `[start, end)` that no forecast covers (no window is ever a candidate)."""
    n = max(1, ceil((end - start) / timedelta(seconds=tick_s)))
    zeros = np.zeros(n)
    none = np.zeros(n, dtype=np.bool_)
    flat = np.zeros(n + 1)
    return Curve(start.astimezone(UTC), tick_s, zeros, zeros, none, none, flat, flat)


def window_means(
    curve: Curve, starts: Floats, durations: Floats, weights: Floats, *, partial: bool = False
) -> Floats:
    """Profile-weighted mean intensity (g/kWh) of each window `[starts, starts + durations)`.

    `weights` (positive, summing to 1) give the job's relative power over equal parts of its
    run; `[1.0]` is a flat profile. Windows not fully covered get `inf`; with `partial`, the
    flat mean of the covered part instead (`inf` when nothing is covered).
    """
    if partial:
        a0, c0 = curve.integral(starts)
        a1, c1 = curve.integral(starts + durations)
        seen = c1 - c0
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(seen > _COVER_TOL_S, (a1 - a0) / seen, np.inf)
        full = window_means(curve, starts, durations, weights)
        return np.where(np.isfinite(full), full, part)
    k = len(weights)
    total = np.zeros_like(starts)
    area_prev, cover_prev = curve.integral(starts)
    cover_first = cover_prev
    for i in range(k):
        area_next, cover_next = curve.integral(starts + durations * ((i + 1) / k))
        total += weights[i] * (area_next - area_prev)
        area_prev, cover_prev = area_next, cover_next
    covered: Bools = (cover_prev - cover_first) >= durations - _COVER_TOL_S
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(covered, total * k / durations, np.inf)


def _knot_means(
    curve: Curve, knots: Floats, durations_s: Floats, lens: list[int], out: Floats
) -> Ints | None:
    """`window_means` (flat profile) of `Candidates.build`'s rows when every window starts and
    ends on a cell boundary: the same values from the boundaries' integrals, looked up instead
    of interpolated per window, written into `out` (rows × width, `inf` already). Returns each
    row's length in cells, or None when some window does not end exactly on a boundary.

    Only windows within the covered cells are worked out: any other one holds an uncovered cell
    (a whole tick, at least a second, short of its length), so it is `inf` either way."""
    tick, n = curve.tick_s, curve.n
    cells = durations_s / tick
    if not np.all(cells == np.floor(cells)):
        return None
    shift = np.minimum(cells.astype(np.int64), n + 1)
    padded = np.concatenate((knots, np.full(max(lens, default=0) + 1, knots[-1])))
    if not _exact_knots(tick, n, durations_s):
        for d, m, size in zip(durations_s.tolist(), shift.tolist(), lens, strict=True):
            if np.any(knots[:size] + d != padded[m : m + size]):
                return None
    covered = np.flatnonzero(curve.covered)
    if len(covered) == 0:
        return shift
    first, last = int(covered[0]), int(covered[-1])
    area, cover = curve.integral(knots)
    area = np.concatenate((area, np.full(len(padded) - len(area), area[-1])))
    cover = np.concatenate((cover, np.full(len(padded) - len(cover), cover[-1])))
    for r, (d, m, size) in enumerate(zip(durations_s.tolist(), shift.tolist(), lens, strict=True)):
        a, b = first, min(size, last + 2 - m)
        if b <= a:
            continue
        # As `window_means` computes them, term by term (k = 1, weight 1).
        total = 0.0 + 1.0 * (area[a + m : b + m] - area[a:b])
        seen = (cover[a + m : b + m] - cover[a:b]) >= d - _COVER_TOL_S
        with np.errstate(divide="ignore", invalid="ignore"):
            out[r, a:b] = np.where(seen, total * 1 / d, np.inf)
    return shift


def _exact_knots(tick: float, n: int, durations_s: Floats) -> bool:
    """Whether every knot and window end is a whole number of seconds below 2**53, so that
    `knots[i] + d == knots[i + d / tick]` holds exactly (no need to check it element-wise)."""
    if not tick.is_integer() or len(durations_s) == 0:
        return False
    whole = np.all(durations_s == np.floor(durations_s)) and np.all(durations_s % tick == 0)
    return bool(whole) and (n + 1) * tick + float(durations_s.max()) < 2.0**53


@dataclass
class Candidates:
    """Candidate starts for several job lengths on one curve, flattened into one sorted array.

    Row `r` holds the starts for `durations_s[r]`; its values are stored at
    `keys = start + r * stride` so that one `searchsorted` serves every row. `scores` holds each
    candidate's mean intensity (`inf` when not fully covered, and for padding). A row stores
    `row_len[r]` candidates; when `row_end[r]` is larger, the row goes on with the cell
    boundaries `knots[row_len[r]:row_end[r]]`, all scored `inf`, not stored (see `build`).
    `shifts`: per row, the window's length in cells when its starts are the cell boundaries
    `0, 1, 2, ...` and every window ends exactly on one (else -1). `valid_before[r, c]`: how
    many of row `r`'s first `c` scores are finite (columns past the last finite score left out).
    """

    curve: Curve
    durations_s: Floats
    weights: Floats
    stride: float
    starts: Floats
    keys: Floats
    scores: Floats
    valid_before: Ints
    rmq: RangeMin | None  # built on first use (`best`'s "table" method)
    width: int
    row_len: Ints
    shifts: Ints
    row_end: Ints
    knots: Floats
    released: bool = False

    @classmethod
    def build(
        cls, curve: Curve, durations_s: Floats, weights: Floats, until_s: float | None = None
    ) -> "Candidates":
        """Score every candidate start of each length in `durations_s` (seconds, distinct).

        `until_s`: the latest start (seconds) any caller will search from or up to; None: any.
        Rows of whole cells on a grid of whole seconds then store their candidates only up to
        a little past it, or as far as the forecast could cover a window: the rest of such a
        row is the cell boundaries, scored `inf` (a grid can reach far past the forecast, for
        reservations far ahead)."""
        knots = np.arange(curve.n + 1, dtype=np.float64) * curve.tick_s
        k = len(weights)
        rows: list[Floats] = []
        for d in durations_s:
            top = curve.span_s - d + _COVER_TOL_S
            if k == 1 and (d / curve.tick_s).is_integer():  # window ends fall on boundaries too
                # The knots are sorted and not negative: the row is those up to `top`.
                rows.append(knots[: int(np.searchsorted(knots, top, side="right"))])
            else:
                cand = np.unique(np.concatenate([knots - d * (j / k) for j in range(k + 1)]))
                rows.append(cand[(cand >= 0.0) & (cand <= top)])
        ends = [len(r) for r in rows]
        if until_s is not None and k == 1 and _exact_knots(curve.tick_s, curve.n, durations_s):
            # Two more than asked: searches for a start up to `until_s` end within the row.
            keep = int(np.searchsorted(knots, until_s, side="right")) + 2
            covered = np.flatnonzero(curve.covered)
            last = int(covered[-1]) if len(covered) else -1
            cells = (durations_s / curve.tick_s).astype(np.int64).tolist()
            rows = [r[: max(keep, last + 2 - m)] for r, m in zip(rows, cells, strict=True)]
        lens = [len(r) for r in rows]
        width = max(1, max(lens))
        stride = curve.span_s + float(durations_s.max()) + 2 * curve.tick_s + 1.0
        # Row by row, without temporaries of the whole table.
        starts = np.zeros((len(rows), width))  # padding: 0.0
        keys = np.empty((len(rows), width))
        bases = np.arange(len(rows), dtype=np.float64) * stride
        for i, (row, base) in enumerate(zip(rows, bases, strict=True)):
            starts[i, : len(row)] = row
            np.add(row, base, out=keys[i, : len(row)])
            keys[i, len(row) :] = base + stride - 0.5
        scores = np.full((len(rows), width), np.inf)
        shifts = None
        if k == 1:
            shifts = _knot_means(curve, knots, durations_s, lens, scores)
        if shifts is None:
            shifts = np.full(len(rows), -1, dtype=np.int64)
            for i, (row, d) in enumerate(zip(rows, durations_s, strict=True)):
                scores[i, : len(row)] = window_means(curve, row, np.full(len(row), d), weights)
        finite = np.isfinite(scores)
        used = np.flatnonzero(finite.any(axis=0))
        cols = int(used[-1]) + 1 if len(used) else 0
        valid = np.zeros((len(rows), cols + 1), dtype=np.int64)
        np.cumsum(finite[:, :cols], axis=1, out=valid[:, 1:])
        return cls(
            curve, durations_s, weights, stride, starts.ravel(), keys.ravel(), scores.ravel(),
            valid, None, width, np.array(lens, dtype=np.int64), shifts,
            np.array(ends, dtype=np.int64), knots,
        )  # fmt: skip

    def row_starts(self, row: int, col: int) -> Floats:
        """Row `row`'s candidate starts from column `col` to its end (`row_end`)."""
        end = int(self.row_end[row])
        if end > self.row_len[row]:
            return self.knots[col:end]
        at = row * self.width
        return self.starts[at + col : at + end]

    def row_scores(self, row: int, col: int) -> Floats:
        """Row `row`'s scores from column `col` to its end (`row_end`)."""
        at, stored, end = row * self.width, int(self.row_len[row]), int(self.row_end[row])
        scores = self.scores[at + min(col, stored) : at + stored]
        if end > stored:
            scores = np.concatenate((scores, np.full(end - max(col, stored), np.inf)))
        return scores

    def best(
        self,
        rows: Ints,
        earliest: Floats,
        latest: Floats,
        method: Literal["auto", "prefix", "table"] = "auto",
    ) -> tuple[Floats, Floats, Floats, Ints, Floats, Floats]:
        """Each job's cleanest start in `[earliest, latest]` (seconds; row = its length).

        Returns `(start_s, mean, now_mean, count)`: the best start (earliest among ties within a
        relative 1e-9), its mean (`inf` when no window is fully covered, then the start is
        `earliest`), the mean of the window starting at `earliest` (of its covered part when
        the forecast covers only part of it; `inf` when none), how many covered candidates
        were compared, and the means of the windows at `earliest` and at `latest` (`inf` unless
        fully covered). `latest < earliest` is treated as `latest = earliest`.

        Range minima come from running minima from each distinct first candidate ("prefix":
        few of them when jobs share their earliest start, as the daemon's do) or a sparse table
        ("table"); "auto" picks by size. Both give the same answers.
        """
        if self.released:
            raise ValueError("Candidates.best after release(); build the candidates again")
        latest = np.maximum(latest, earliest)
        dur = self.durations_s[rows]
        now_mean = window_means(self.curve, earliest, dur, self.weights)
        now_ref = window_means(self.curve, earliest, dur, self.weights, partial=True)
        last_mean = window_means(self.curve, latest, dur, self.weights)
        base = rows * self.stride
        lo = np.searchsorted(self.keys, base + earliest, side="right").astype(np.int64)
        hi = np.searchsorted(self.keys, base + latest, side="left").astype(np.int64) - 1
        firsts, pair = np.unique(lo, return_inverse=True)
        prefix = None
        if method == "prefix" or (method == "auto" and len(firsts) <= 2 * len(self.durations_s)):
            prefix = RunningMin(self.scores, firsts, pair, hi - lo)
            inner = prefix.min()
        else:
            if self.rmq is None:
                self.rmq = RangeMin(self.scores, self.width)
            inner = self.rmq.min(lo, hi)
        best = np.minimum(np.minimum(now_mean, inner), last_mean)
        threshold = best + TIE_REL * np.maximum(np.abs(best), 1.0)
        if prefix is not None:
            first = prefix.first_at_most(threshold, lo)
        else:
            assert self.rmq is not None
            first = self.rmq.first_at_most(lo, hi, threshold)
        start = np.where(
            now_mean <= threshold,
            earliest,
            np.where(first >= 0, self.starts[np.maximum(first, 0)], latest),
        )
        start = np.where(np.isfinite(best), start, earliest)
        cols = self.valid_before.shape[1] - 1
        row_at = rows * self.width
        after = self.valid_before[rows, np.clip(hi + 1 - row_at, 0, cols)]
        inner_count = np.where(
            hi >= lo, after - self.valid_before[rows, np.clip(lo - row_at, 0, cols)], 0
        )
        count = inner_count + np.isfinite(now_mean) + (np.isfinite(last_mean) & (latest > earliest))
        return start, best, now_ref, count.astype(np.int64), now_mean, last_mean

    def release(self) -> None:
        """Free the range-minimum index (most of the memory); `best` no longer works."""
        self.rmq = None
        self.released = True
