"""The fallback forecaster: a forecast built from stored realized history, needing no provider.

It is the failover step after the providers and the forecast cache (docs/design.md, "Planning"),
and how a zone without a forecast API (an Electricity Maps free account) still gets one. The
forecast for slot `t` issued when slots before `o` are known is

    base(t)     = w * recent(t) + (1 - w) * profile(t)
    forecast(t) = max(0, base(t) + phi ** hours(t - L) * r0)

- `recent(t)`: the latest known value at the same time of day ("same hour yesterday" for the
  next 24 h; further ahead, or over gaps, the latest day that has one, up to 7 days back).
- `profile(t)`: the mean of the latest known values at the same time of week, over up to 4 weeks
  (the hour-of-week profile).
- `r0`: the error of `base` at `L`, the last known slot; `phi` (per hour) decays this
  persistence correction with the lead time. Recent surprises persist for a few hours.
- `w` (0..1) and `phi` (0..0.95 per hour) are fitted for each forecast by least squares over a
  rolling-origin backtest on the history itself: the forecasts that would have been issued at the
  same time of day on each of the last 28 days, for leads up to 72 h, against what was realized.

Missing parts degrade: with less than a week of history there is no profile, so the forecast is
the latest same-hour value; a slot with neither part gets the mean of the known values. The
backtest on real data (benchmarks/fallback_backtest.py, benchmarks/RESULTS.md) chose this model.

Pure Python, stdlib only. Values are gCO2eq/kWh in the history's own signal and basis; times are
tz-aware UTC.
"""

import math
from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from ecoq.errors import ForecastUnavailable
from ecoq.forecasting import Forecast, IntensityPoint

__all__ = ["MIN_HISTORY", "FallbackModel", "fallback_model", "forecast_from_history"]

#: Less usable history than this and the forecaster refuses (`ForecastUnavailable`).
MIN_HISTORY = timedelta(hours=24)
#: Weeks averaged in the hour-of-week profile.
PROFILE_WEEKS = 4
#: Days of rolling-origin backtest that fit `w` and `phi`.
FIT_DAYS = 28
#: Leads covered by the fit (longer forecasts reuse the same model).
FIT_HORIZON = timedelta(hours=72)
#: How many days back `recent` looks for a same-time-of-day value over gaps.
MAX_BACKOFF_DAYS = 7
#: Realized values older than this before the issue time are not used.
LOOKBACK = timedelta(days=FIT_DAYS + 7 * PROFILE_WEEKS + MAX_BACKOFF_DAYS + 4)
#: The blend weight used when the history cannot fit one (only one part is ever available then).
DEFAULT_WEIGHT = 0.5
#: Candidate persistence decays per hour; ties go to the smaller.
DECAY_GRID = tuple(i / 20 for i in range(20))

_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Values = dict[int, float]


def forecast_from_history(
    history: Forecast, start: datetime, end: datetime, *, issued_at: datetime | None = None
) -> Forecast:
    """Forecast `[start, end)` from the realized values in `history`.

    Points are at the history's step, from the slot containing `start` through the slot before
    `end` (at least one). Only values known at `issued_at` are used. The model is fitted for
    leads up to 72 h; longer ranges reuse it (the profile then dominates).

    Args:
        history: realized values (gCO2eq/kWh), e.g. a provider's `history`; NaN and negative
            values and missing points are gaps. Its step must divide a day.
        start, end: the range to forecast (tz-aware).
        issued_at: when the forecast is made; values after it are ignored. Default: the end of
            the history's last point.

    Returns:
        A forecast with `source` "fallback", label "fallback forecaster from <source> history",
        and the history's zone, signal, emission factor and step.

    Raises:
        ForecastUnavailable: less than 24 h of usable values before `issued_at`, or a step that
            does not divide a day.
        ValueError: a naive `start`, `end` or `issued_at`.
    """
    return fallback_model(history, issued_at=issued_at).forecast(start, end)


def fallback_model(history: Forecast, *, issued_at: datetime | None = None) -> "FallbackModel":
    """Fit the fallback forecaster on `history` as known at `issued_at` (see the module doc).

    Raises:
        ForecastUnavailable: less than 24 h of usable values before `issued_at`, or a step that
            does not divide a day.
        ValueError: a naive `issued_at`.
    """
    return FallbackModel(history, issued_at=issued_at)


class FallbackModel:
    """The fallback forecaster fitted on one history at one issue time.

    Attributes:
        weight: `w`, the share of `recent` (same time yesterday) in the blend, 0..1.
        decay_per_hour: `phi`, how much of the last known error persists per hour, 0..0.95.
        issued_at: the issue time (tz-aware UTC); slots ending after it are unknown.
        history_hours: usable realized hours (not counting gaps) within `LOOKBACK`.
    """

    def __init__(self, history: Forecast, *, issued_at: datetime | None = None) -> None:
        if issued_at is not None and issued_at.tzinfo is None:
            raise ValueError(f"issued_at {issued_at} is naive; pass a timezone-aware UTC datetime")
        self.history = history
        self.issued_at = (issued_at or history.end).astimezone(UTC)
        self.step = history.step
        where = f"fallback forecaster for zone {history.zone!r} ({history.source} history)"
        if _DAY % self.step:
            raise ForecastUnavailable(
                f"{where}: the history's step {self.step} does not divide a day; "
                "store realized values at a step such as 5 min, 15 min, 30 min or 1 h"
            )
        self._per_day = _DAY // self.step
        self._per_week = 7 * self._per_day
        self._hours_per_slot = self.step / _HOUR
        self._first_unknown = (self.issued_at - _EPOCH) // self.step
        self._values = _index(history, self.issued_at, self._first_unknown)
        self.history_hours = len(self._values) * self._hours_per_slot
        if self.step * len(self._values) < MIN_HISTORY:
            raise ForecastUnavailable(
                f"{where}: only {self.history_hours:g} h of usable realized values before "
                f"{self.issued_at.isoformat()} (NaN, negative and missing values do not count); "
                f"it needs at least {MIN_HISTORY / _HOUR:g} h. Store more history for this zone "
                "or configure a forecast provider that covers it."
            )
        self._level = sum(self._values.values()) / len(self._values)
        self.weight, self.decay_per_hour = self._fit()

    # -- the two parts and the blend ------------------------------------------------------------

    def _recent(self, t: int, origin: int) -> float | None:
        """The latest value known at `origin` at the same time of day as slot `t`."""
        first = max(1, -((origin - 1 - t) // self._per_day))  # smallest k: t - k*day < origin
        for k in range(first, first + MAX_BACKOFF_DAYS):
            value = self._values.get(t - k * self._per_day)
            if value is not None:
                return value
        return None

    def _profile(self, t: int, origin: int) -> float | None:
        """Mean of up to `PROFILE_WEEKS` latest values known at `origin` at `t`'s time of week."""
        first = max(1, -((origin - 1 - t) // self._per_week))
        found = [
            v
            for j in range(first, first + PROFILE_WEEKS)
            if (v := self._values.get(t - j * self._per_week)) is not None
        ]
        return sum(found) / len(found) if found else None

    def _base(self, t: int, origin: int, weight: float) -> float | None:
        return _blend(self._recent(t, origin), self._profile(t, origin), weight)

    def _anchor(self, origin: int, weight: float) -> tuple[int, float] | None:
        """`(L, r0)`: the last known slot before `origin` (within a day) and base's error there."""
        for slot in range(origin - 1, origin - 1 - self._per_day, -1):
            value = self._values.get(slot)
            if value is not None:
                base = self._base(slot, slot, weight)
                return None if base is None else (slot, value - base)
        return None

    # -- fitting --------------------------------------------------------------------------------

    def _fit(self) -> tuple[float, float]:
        """`(w, phi)` by least squares over the rolling-origin backtest (see the module doc)."""
        stride = max(1, round(1 / self._hours_per_slot))  # hourly leads for sub-hourly steps
        leads = range(0, int(FIT_HORIZON / self.step), stride)
        rows: list[tuple[int, int, float, float | None, float | None]] = []
        for j in range(1, FIT_DAYS + 1):
            origin = self._first_unknown - j * self._per_day
            for lead in leads:
                t = origin + lead
                if t >= self._first_unknown:
                    break
                actual = self._values.get(t)
                if actual is not None:
                    rows.append(
                        (origin, t, actual, self._recent(t, origin), self._profile(t, origin))
                    )
        weight = _fit_weight((y, a, b) for _, _, y, a, b in rows if a is not None and b is not None)

        anchors = {o: self._anchor(o, weight) for o in {row[0] for row in rows}}
        residuals: list[tuple[float, float, float]] = []
        for origin, t, actual, recent, profile in rows:
            anchor = anchors[origin]
            base = _blend(recent, profile, weight)
            if anchor is not None and base is not None:
                slot, r0 = anchor
                residuals.append((actual - base, (t - slot) * self._hours_per_slot, r0))
        return weight, _fit_decay(residuals)

    # -- forecasting ----------------------------------------------------------------------------

    def _value(self, slot: int, anchor: tuple[int, float] | None) -> float:
        base = self._base(slot, self._first_unknown, self.weight)
        if base is None:
            base = self._level
        if anchor is not None:
            last, r0 = anchor
            base += self.decay_per_hour ** (max(1, slot - last) * self._hours_per_slot) * r0
        return max(0.0, base)

    def forecast(self, start: datetime, end: datetime) -> Forecast:
        """Points at the history's step for `[start, end)` (see `forecast_from_history`).

        Raises:
            ValueError: a naive `start` or `end`.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError(f"start {start} or end {end} is naive; pass timezone-aware UTC times")
        first = (start - _EPOCH) // self.step
        stop = max(first + 1, -((_EPOCH - end) // self.step))  # ceil
        anchor = self._anchor(self._first_unknown, self.weight)
        points = tuple(
            IntensityPoint(start=_EPOCH + slot * self.step, g_per_kwh=self._value(slot, anchor))
            for slot in range(first, stop)
        )
        h = self.history
        return Forecast(
            zone=h.zone,
            signal=h.signal,
            source="fallback",
            label=f"fallback forecaster from {h.source} history",
            issued_at=self.issued_at,
            step=self.step,
            points=points,
            emission_factor=h.emission_factor,
            realized=False,
            model=f"w={self.weight:.2f} phi={self.decay_per_hour:.2f}/h",
        )


def _index(history: Forecast, issued_at: datetime, first_unknown: int) -> Values:
    """Slot -> value of the usable points in `[issued_at - LOOKBACK, issued_at)`, averaged."""
    step = history.step
    points = history.points
    lo = bisect_left(points, issued_at - LOOKBACK - step, key=lambda p: p.start)
    sums: dict[int, tuple[float, int]] = {}
    for p in points[lo:]:
        slot = (p.start - _EPOCH) // step
        if slot >= first_unknown:
            break
        v = p.g_per_kwh
        if math.isfinite(v) and v >= 0 and (issued_at - p.start) <= LOOKBACK:
            total, n = sums.get(slot, (0.0, 0))
            sums[slot] = (total + v, n + 1)
    return {slot: total / n for slot, (total, n) in sums.items()}


def _blend(recent: float | None, profile: float | None, weight: float) -> float | None:
    if recent is None:
        return profile
    if profile is None:
        return recent
    return weight * recent + (1 - weight) * profile


def _fit_weight(rows: Iterable[tuple[float, float, float]]) -> float:
    """The `w` in 0..1 minimising sum((w*a + (1-w)*b - y)^2) over `(y, a, b)` rows.

    `DEFAULT_WEIGHT` when the rows cannot tell (none, or `a == b` throughout).
    """
    num = den = 0.0
    for y, a, b in rows:
        num += (y - b) * (a - b)
        den += (a - b) ** 2
    if den <= 1e-12:
        return DEFAULT_WEIGHT
    return min(1.0, max(0.0, num / den))


def _fit_decay(rows: list[tuple[float, float, float]]) -> float:
    """The `phi` in `DECAY_GRID` minimising sum((e - phi**hours * r0)^2) over `(e, hours, r0)`.

    0 (no correction) when there are no rows.
    """
    best, best_sse = 0.0, math.fsum(e * e for e, _, _ in rows)
    for phi in DECAY_GRID[1:]:
        sse = math.fsum((e - phi**hours * r0) ** 2 for e, hours, r0 in rows)
        if sse < best_sse * (1 - 1e-9):
            best, best_sse = phi, sse
    return best
