"""Carbon-intensity forecasts: the data types, the provider protocol and `make_provider`.

All intensities are gCO2eq/kWh and all times timezone-aware UTC datetimes. A forecast value holds
for its interval `[start, start + step)` (the interval rule; see docs/design.md, "Words").

Importing this package is cheap: providers are imported, and their data read, on first use.
"""

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from ecoq.errors import ConfigError, ForecastUnavailable

__all__ = [
    "PROVIDER_KINDS",
    "Forecast",
    "ForecastProvider",
    "IntensityPoint",
    "Signal",
    "make_provider",
]

Signal = Literal["average", "marginal"]
PROVIDER_KINDS = ("bundled", "file")


@dataclass(frozen=True)
class IntensityPoint:
    """One forecast value: `g_per_kwh` holds from `start` (tz-aware UTC) for `Forecast.step`."""

    start: datetime
    g_per_kwh: float


@dataclass(frozen=True)
class Forecast:
    """A carbon-intensity forecast for one zone.

    Attributes:
        zone: the provider's zone id (`DE`, `US-CAL-CISO`, ...).
        signal: `average` or `marginal`; never compare numbers of different signals.
        source: the provider's machine name (`bundled`, `file`).
        label: what users read (`typical profile`, `file /path/x.csv`).
        issued_at: when the forecast was made (tz-aware UTC).
        step: how long each point's value holds.
        points: at least one point, strictly increasing `start`s. Usually `step` apart; a larger
            difference is a gap the forecast does not cover.

    Raises:
        ForecastUnavailable: on construction, if there are no points, `step` is not positive,
            a time is naive, or the points are not in strictly increasing time order.
    """

    zone: str
    signal: Signal
    source: str
    label: str
    issued_at: datetime
    step: timedelta
    points: tuple[IntensityPoint, ...]

    def __post_init__(self) -> None:
        where = f"forecast for zone {self.zone!r} from {self.source!r}"
        if not self.points:
            raise ForecastUnavailable(f"{where} has no points; the provider must return some")
        if self.step <= timedelta(0):
            raise ForecastUnavailable(f"{where} has step {self.step}; the step must be positive")
        if self.issued_at.tzinfo is None:
            raise ForecastUnavailable(f"{where}: issued_at {self.issued_at} is naive; use UTC")
        previous: datetime | None = None
        for point in self.points:
            if point.start.tzinfo is None:
                raise ForecastUnavailable(f"{where}: point time {point.start} is naive; use UTC")
            if previous is not None and point.start <= previous:
                raise ForecastUnavailable(
                    f"{where}: point {point.start} does not follow {previous}; "
                    "sort the points by time and drop duplicates"
                )
            previous = point.start

    @property
    def start(self) -> datetime:
        """Start of the first point."""
        return self.points[0].start

    @property
    def end(self) -> datetime:
        """End of the last point's interval: last start + step."""
        return self.points[-1].start + self.step

    def value_at(self, t: datetime) -> float:
        """The intensity (gCO2eq/kWh) in force at `t` under the interval rule.

        A point's value holds for `[start, start + step)`, cut short by the next point if that
        starts earlier.

        Raises:
            ForecastUnavailable: `t` falls before the first point, in a gap, or at/after `end`.
            ValueError: `t` is naive.
        """
        if t.tzinfo is None:
            raise ValueError(f"time {t} is naive; pass a timezone-aware UTC datetime")
        i = bisect_right(self.points, t, key=lambda p: p.start) - 1
        if i >= 0 and t < self.points[i].start + self.step:
            return self.points[i].g_per_kwh
        pairs = zip(self.points, self.points[1:], strict=False)
        gaps = any(b.start - a.start > self.step for a, b in pairs)
        raise ForecastUnavailable(
            f"forecast for zone {self.zone!r} ({self.label}) has no value at {t.isoformat()}: "
            f"it covers {self.start.isoformat()} to {self.end.isoformat()}"
            f"{' with gaps' if gaps else ''}; fetch a forecast that covers that time"
        )


class ForecastProvider(Protocol):
    """A source of carbon-intensity forecasts, chosen by `make_provider`."""

    name: str

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Points covering `[start, end)` in gCO2eq/kWh.

        Raises:
            ForecastUnavailable: the source has no usable data for that range.
            UnknownZone: the source does not know `zone`.
        """
        ...


def make_provider(kind: str, *, file: Path | None = None) -> ForecastProvider:
    """The provider for the configuration value `forecast.provider = kind`.

    Args:
        kind: one of `PROVIDER_KINDS`.
        file: the CSV file for kind `file` (config `forecast.file`).

    Raises:
        ConfigError: unknown `kind`, or kind `file` without `file`.
    """
    if kind == "bundled":
        from ecoq.forecasting.bundled import BundledProvider

        return BundledProvider()
    if kind == "file":
        if file is None:
            raise ConfigError(
                "forecast provider 'file' needs a CSV file: set forecast.file to its path"
            )
        from ecoq.forecasting.files import FileProvider

        return FileProvider(file)
    valid = ", ".join(repr(k) for k in PROVIDER_KINDS)
    raise ConfigError(
        f"unknown forecast provider {kind!r}; set forecast.provider to one of {valid}"
    )
