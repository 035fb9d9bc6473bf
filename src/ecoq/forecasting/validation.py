"""Payload checks shared by the providers: raw points in, a clean UTC series out, or a clear error.

Every API fault ends as `ProviderUnavailable(provider, zone, cause)`. The policies, in one place:

- times: ISO-8601; any offset is converted to UTC (so mixed offsets are fine); naive means UTC;
- values: finite and non-negative numbers, else the payload is refused; JSON `null` is "no value"
  and leaves a gap;
- order: points are sorted; exact duplicates are dropped; two different values for one time are
  refused;
- gaps: allowed and kept (`Forecast.gaps()`, `value_at` raises inside one);
- a forecast that starts in the past is trimmed: points whose interval ended before the requested
  start are dropped, the point in force at the start is kept. Nothing left is an error.
"""

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from ecoq.forecasting import IntensityPoint, ProviderUnavailable

__all__ = [
    "Where",
    "chunks",
    "clean_series",
    "clip",
    "infer_step",
    "parse_location",
    "parse_time",
    "parse_value",
]

_LOCATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Where:
    """Which request a fault belongs to: provider name, zone and `forecast` or `history`."""

    provider: str
    zone: str
    what: str = "forecast"

    def fail(self, cause: str, *, status: int | None = None) -> NoReturn:
        """Raise `ProviderUnavailable` for this request."""
        raise ProviderUnavailable(self.provider, self.zone, cause, what=self.what, status=status)


def parse_time(raw: object) -> datetime:
    """An ISO-8601 string (`2024-05-28T14:20:00+00:00`, `...Z`, `2023-12-03T10:30Z`) as UTC.

    Raises:
        ValueError: not a string or not ISO-8601.
    """
    if not isinstance(raw, str):
        raise ValueError(f"time {raw!r} is not a string")
    t = datetime.fromisoformat(raw.strip())
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_value(raw: object, scale: float = 1.0) -> float | None:
    """`raw` × `scale` as a finite, non-negative float; None for JSON null (no value).

    Raises:
        ValueError: a bool, a non-number, NaN, infinite or negative.
    """
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"value {raw!r} is not a number")
    if not math.isfinite(raw) or raw < 0:
        raise ValueError(f"value {raw!r} is not a finite, non-negative intensity")
    return float(raw) * scale


def clean_series(
    raw: Iterable[tuple[datetime, float, bool | None]], where: Where
) -> list[IntensityPoint]:
    """Sorted points without duplicates.

    Raises:
        ProviderUnavailable: no points, or two different values for one time.
    """
    points: list[IntensityPoint] = []
    for t, value, estimated in sorted(raw, key=lambda r: r[0]):
        if points and points[-1].start == t:
            if points[-1].g_per_kwh != value:
                where.fail(
                    f"the payload gives two values for {t.isoformat()} "
                    f"({points[-1].g_per_kwh:g} and {value:g})"
                )
            continue
        points.append(IntensityPoint(t, value, estimated))
    if not points:
        where.fail("the payload holds no data points")
    return points


def infer_step(
    points: list[IntensityPoint], where: Where, declared: timedelta | None, default: timedelta
) -> timedelta:
    """The step: `declared` (the payload's own period), else the most common spacing, else
    `default` for a single point.

    Raises:
        ProviderUnavailable: the step is not positive, or points lie closer than the step.
    """
    diffs = Counter(b.start - a.start for a, b in zip(points, points[1:], strict=False))
    if declared is None:
        # Ties go to the smallest difference, so the result is deterministic.
        declared = min(diffs, key=lambda d: (-diffs[d], d)) if diffs else default
    if declared <= timedelta(0):
        where.fail(f"the payload's step {declared} is not positive")
    if diffs and min(diffs) < declared:
        where.fail(f"points lie {min(diffs)} apart, closer than the step {declared}")
    return declared


def clip(
    points: list[IntensityPoint], step: timedelta, start: datetime, end: datetime, where: Where
) -> tuple[IntensityPoint, ...]:
    """The points whose interval overlaps `[start, end)`; for `end <= start`, the one in force at
    `start`. Points of a forecast issued earlier that ended before `start` are dropped.

    Raises:
        ProviderUnavailable: no point overlaps the range (the message gives what was returned).
    """
    stop = max(end, start + timedelta(microseconds=1))
    kept = tuple(p for p in points if p.start < stop and p.start + step > start)
    if not kept:
        where.fail(
            f"the data covers {points[0].start.isoformat()} to "
            f"{(points[-1].start + step).isoformat()}, not {start.isoformat()} to "
            f"{end.isoformat()}"
        )
    return kept


def parse_location(zone: str) -> tuple[float, float] | None:
    """`(latitude, longitude)` for a zone spelled `"lat,lon"` (`"52.52,13.40"`), else None.

    Raises:
        ValueError: the numbers are out of range.
    """
    m = _LOCATION.match(zone)
    if m is None:
        return None
    lat, lon = float(m.group(1)), float(m.group(2))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"location {zone!r} is out of range (latitude ±90, longitude ±180)")
    return lat, lon


def chunks(start: datetime, end: datetime, size: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """Consecutive `[a, b)` pieces of `[start, end)`, each at most `size` long."""
    a = start
    while a < end:
        b = min(a + size, end)
        yield a, b
        a = b
