"""Choosing when a job starts: the cleanest contiguous window in a forecast. Pure functions.

The forecast is turned into a piecewise-linear intensity curve with cumulative integrals, so the
mean intensity of any window is two look-ups, and all candidate windows are scored in one sweep:
O(points + candidates), whatever the step (5 minutes to an hour).

Two averaging rules (docs/design.md, "Words"):

- `interval` (default): each value holds for `[start, start + step)`; a window's mean weights each
  value by the time it overlaps the window.
- `trapezoid` (as CATS computes): values sit at their timestamps, the intensity is linearly
  interpolated between consecutive points (not across a gap wider than one step) and integrated
  with the trapezoid rule, interpolating at the window's edges. Coverage ends at the last point.

Candidate starts are `earliest_start`, `latest_start`, and, strictly between them, every time at
which the window's start or its end meets a forecast boundary. Under the interval rule the mean is
linear in the start between those times, so this finds the exact optimum over all start times.
Only windows the forecast fully covers compete; means within a relative 1e-9 are ties, won by the
earliest start.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from heapq import merge
from typing import Literal

from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast

__all__ = ["Plan", "Rule", "plan_window"]

Rule = Literal["interval", "trapezoid"]
_RULES = ("interval", "trapezoid")
_US = timedelta(microseconds=1)
_TIE_REL = 1e-9


@dataclass(frozen=True)
class Plan:
    """When to start a job, and why.

    Attributes:
        start: the planned start (tz-aware UTC); always within `[earliest_start, latest_start]`,
            or `earliest_start` when the deadline cannot be met.
        mean_g_per_kwh: forecast mean intensity over the planned window.
        now_g_per_kwh: forecast mean intensity over the window starting at `earliest_start`. If
            the forecast covers only part of that window, the mean of the covered part; if none
            of it, the value of the forecast point nearest to it (a stand-in, never used to delay
            a job).
        saving_fraction: `(now - mean) / now` for the planned window; 0 when starting now.
        signal, source, label: copied from the forecast.
        candidates: how many candidate windows the forecast fully covered and were compared.
        runner_up_start, runner_up_g_per_kwh: the best covered window other than `start`
            (when starting now for a small saving, the cleanest window that was passed over).
        reason: a short sentence for users ("cleanest window", "saving 1.2 % below min_saving 2 %:
            run now", ...).
    """

    start: datetime
    mean_g_per_kwh: float
    now_g_per_kwh: float
    saving_fraction: float
    signal: str
    source: str
    label: str
    candidates: int
    runner_up_start: datetime | None
    runner_up_g_per_kwh: float | None
    reason: str


@dataclass(frozen=True)
class _Curve:
    """Intensity as linear segments `[x0, x1]` (µs from an origin; disjoint, sorted)."""

    x0: list[int]
    x1: list[int]
    y0: list[float]
    y1: list[float]
    area_before: list[float]  # integral of the segments before segment k, (g/kWh)·µs
    covered_before: list[int]  # total length of the segments before segment k, µs

    @classmethod
    def build(cls, forecast: Forecast, rule: Rule, origin: datetime) -> "_Curve":
        times = [(p.start - origin) // _US for p in forecast.points]
        values = [p.g_per_kwh for p in forecast.points]
        step = forecast.step // _US
        x0: list[int] = []
        x1: list[int] = []
        y0: list[float] = []
        y1: list[float] = []
        if rule == "interval":
            for i, (t, v) in enumerate(zip(times, values, strict=True)):
                end = t + step if i + 1 == len(times) else min(t + step, times[i + 1])
                x0.append(t)
                x1.append(end)
                y0.append(v)
                y1.append(v)
        else:
            for i in range(len(times) - 1):
                if times[i + 1] - times[i] <= step:  # never interpolate across a gap
                    x0.append(times[i])
                    x1.append(times[i + 1])
                    y0.append(values[i])
                    y1.append(values[i + 1])
        area = [0.0]
        covered = [0]
        for a, b, u, v in zip(x0, x1, y0, y1, strict=True):
            area.append(area[-1] + (b - a) * (u + v) / 2)
            covered.append(covered[-1] + (b - a))
        return cls(x0, x1, y0, y1, area, covered)

    def boundaries(self) -> list[int]:
        """Every segment start and end, sorted, without repeats."""
        out: list[int] = []
        for a, b in zip(self.x0, self.x1, strict=True):
            if not out or out[-1] != a:
                out.append(a)
            out.append(b)
        return out

    def cumulative(self, ts: list[int]) -> tuple[list[float], list[int]]:
        """Integral and covered length from the origin up to each `t` of the sorted `ts`."""
        areas: list[float] = []
        covered: list[int] = []
        k, n = 0, len(self.x0)
        for t in ts:
            while k < n and self.x1[k] <= t:
                k += 1
            if k < n and self.x0[k] < t:
                dt = t - self.x0[k]
                y_t = self.y0[k] + (self.y1[k] - self.y0[k]) * dt / (self.x1[k] - self.x0[k])
                areas.append(self.area_before[k] + dt * (self.y0[k] + y_t) / 2)
                covered.append(self.covered_before[k] + dt)
            else:
                areas.append(self.area_before[k])
                covered.append(self.covered_before[k])
        return areas, covered


def _require_aware(name: str, t: datetime) -> None:
    if t.tzinfo is None:
        raise ValidationError(f"{name} {t} has no timezone; pass a timezone-aware UTC datetime")


def _candidates(boundaries: list[int], earliest: int, latest: int, duration: int) -> list[int]:
    """Sorted distinct starts: `earliest`, `latest`, and between them every start or end on a
    boundary."""
    starts = (b for b in boundaries if earliest < b < latest)
    ends = (b - duration for b in boundaries if earliest < b - duration < latest)
    out = [earliest]
    for s in merge(starts, ends):
        if s != out[-1]:
            out.append(s)
    if latest > earliest:
        out.append(latest)
    return out


def _nearest_value(forecast: Forecast, t: datetime) -> float:
    return min(forecast.points, key=lambda p: abs(p.start - t)).g_per_kwh


def plan_window(
    forecast: Forecast,
    *,
    earliest_start: datetime,
    latest_start: datetime,
    duration: timedelta,
    min_saving: float = 0.02,
    rule: Rule = "interval",
) -> Plan:
    """Choose the start of the cleanest contiguous window `[s, s + duration)`.

    `latest_start` is the deadline minus `duration`, so any start up to it finishes in time.
    The job starts at `earliest_start` ("now") when the cleanest window saves less than
    `min_saving` (a fraction: 0.02 = 2 %) against now, when now is cleanest, when the deadline
    cannot be met (`latest_start < earliest_start`), or when the forecast fully covers no
    candidate window or nothing of the window starting now. A forecast problem never delays a
    job past its deadline: this function does not raise for one.

    Raises:
        ValidationError: a naive datetime, a non-positive `duration`, `min_saving` outside
            [0, 1], or an unknown `rule`.
    """
    _require_aware("earliest_start", earliest_start)
    _require_aware("latest_start", latest_start)
    if duration <= timedelta(0):
        raise ValidationError(f"duration {duration} is not positive; pass the expected run time")
    if not 0.0 <= min_saving <= 1.0:  # also rejects NaN
        raise ValidationError(
            f"min_saving {min_saving} is not a fraction between 0 and 1; use e.g. 0.02 for 2 %"
        )
    if rule not in _RULES:
        raise ValidationError(f"averaging rule {rule!r} is unknown; use one of {_RULES}")

    origin = forecast.points[0].start.astimezone(UTC)
    now_start = earliest_start.astimezone(UTC)
    curve = _Curve.build(forecast, rule, origin)
    earliest = (earliest_start - origin) // _US
    latest = (latest_start - origin) // _US
    span = duration // _US
    starts = _candidates(curve.boundaries(), earliest, max(latest, earliest), span)
    area_s, cov_s = curve.cumulative(starts)
    area_e, cov_e = curve.cumulative([s + span for s in starts])

    now_covered = cov_e[0] - cov_s[0]
    if now_covered > 0:
        now_mean = (area_e[0] - area_s[0]) / now_covered
    else:
        now_mean = _nearest_value(forecast, now_start + duration / 2)
    partial = "" if now_covered == span else " (now only partly forecast)"

    # The two best covered windows; later starts must be better by more than the tie tolerance.
    best: list[tuple[float, int]] = []
    count = 0
    for i, s in enumerate(starts):
        if cov_e[i] - cov_s[i] != span:
            continue
        count += 1
        mean = (area_e[i] - area_s[i]) / span
        if not best or mean < best[0][0] - _TIE_REL * max(abs(best[0][0]), 1.0):
            best = [(mean, s), *best[:1]]
        elif len(best) == 1 or mean < best[1][0] - _TIE_REL * max(abs(best[1][0]), 1.0):
            best = [best[0], (mean, s)]

    def at(x: int) -> datetime:
        return now_start if x == earliest else origin + x * _US

    def plan(start: int, mean: float, saving: float, reason: str) -> Plan:
        others = [(m, s) for m, s in best if s != start]
        return Plan(
            start=at(start),
            mean_g_per_kwh=mean,
            now_g_per_kwh=now_mean,
            saving_fraction=saving,
            signal=forecast.signal,
            source=forecast.source,
            label=forecast.label,
            candidates=count,
            runner_up_start=at(others[0][1]) if others else None,
            runner_up_g_per_kwh=others[0][0] if others else None,
            reason=reason,
        )

    if latest < earliest:
        return plan(
            earliest, now_mean, 0.0, "cannot finish by the deadline: start as early as possible"
        )
    if now_covered == 0:
        return plan(
            earliest, now_mean, 0.0, "forecast does not cover the window starting now: run now"
        )
    if not best:
        return plan(earliest, now_mean, 0.0, "forecast does not cover a full window: run now")
    best_mean, best_start = best[0]
    if best_start == earliest:
        return plan(earliest, now_mean, 0.0, "now is the cleanest window")
    saving = (now_mean - best_mean) / now_mean if now_mean > 0 else 0.0
    if saving < min_saving or saving <= _TIE_REL:  # no saving at all is never worth a wait
        return plan(
            earliest,
            now_mean,
            0.0,
            f"saving {saving * 100:.1f} % below min_saving {min_saving * 100:g} %: "
            f"run now{partial}",
        )
    return plan(best_start, best_mean, saving, f"cleanest window{partial}")
