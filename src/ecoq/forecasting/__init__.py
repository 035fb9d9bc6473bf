"""Carbon-intensity forecasts: the data types, the provider protocol and `make_provider`.

All intensities are gCO2eq/kWh and all times timezone-aware UTC datetimes. A forecast value holds
for its interval `[start, start + step)` (the interval rule; see docs/design.md, "Words").

Importing this package is cheap: providers are imported, and their data read, on first use
(the HTTP providers import httpx only when one is built by `make_provider`).
"""

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from ecoq.errors import ConfigError, ForecastUnavailable

if TYPE_CHECKING:
    import httpx

    from ecoq.forecasting.secrets import Credentials

__all__ = [
    "PROVIDER_KINDS",
    "ElectricityMapsConfig",
    "Forecast",
    "ForecastProvider",
    "IntensityPoint",
    "ProviderUnavailable",
    "Signal",
    "UKGridConfig",
    "WattTimeConfig",
    "make_provider",
]

Signal = Literal["average", "marginal"]
PROVIDER_KINDS = ("bundled", "file", "watttime", "electricitymaps", "ukgrid")


class ProviderUnavailable(ForecastUnavailable):
    """A provider gave no usable data: unreachable, refused, or returned a bad payload.

    The message names the provider, the zone and the cause. `status` is the HTTP status when the
    provider answered with an error (401, 429, 503, ...), else None. Credentials never appear in
    the message.
    """

    def __init__(
        self,
        provider: str,
        zone: str,
        cause: str,
        *,
        what: str = "forecast",
        status: int | None = None,
    ) -> None:
        super().__init__(f"{provider} {what} for zone {zone!r} unavailable: {cause}")
        self.provider = provider
        self.zone = zone
        self.cause = cause
        self.status = status


@dataclass(frozen=True)
class IntensityPoint:
    """One value: `g_per_kwh` holds from `start` (tz-aware UTC) for `Forecast.step`.

    `is_estimated` is the provider's own flag (Electricity Maps `isEstimated`, WattTime
    `imputed_data_used`, UK values without an `actual`); None where the provider says nothing.
    """

    start: datetime
    g_per_kwh: float
    is_estimated: bool | None = None


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
            difference is a gap the forecast does not cover (`gaps`; `value_at` raises there).
        emission_factor: the basis of average signals where the provider says (`lifecycle`,
            `direct`); None when unknown or marginal.
        realized: True for realized (historical) values from `history`, False for forecasts.
        model: the provider's model version where it names one (WattTime `meta.model.date`).

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
    emission_factor: str | None = None
    realized: bool = False
    model: str | None = None

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

    def gaps(self) -> list[tuple[datetime, datetime]]:
        """The uncovered spans `[a, b)` between points more than `step` apart (UTC)."""
        pairs = zip(self.points, self.points[1:], strict=False)
        return [(a.start + self.step, b.start) for a, b in pairs if b.start - a.start > self.step]

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
        raise ForecastUnavailable(
            f"forecast for zone {self.zone!r} ({self.label}) has no value at {t.isoformat()}: "
            f"it covers {self.start.isoformat()} to {self.end.isoformat()}"
            f"{' with gaps' if self.gaps() else ''}; fetch a forecast that covers that time"
        )


class ForecastProvider(Protocol):
    """A source of carbon-intensity data, chosen by `make_provider`."""

    name: str

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Points overlapping `[start, end)` in gCO2eq/kWh (the point in force at `start` first).

        Raises:
            ForecastUnavailable: the source has no usable data for that range (for the HTTP
                providers, `ProviderUnavailable`: network, HTTP or payload fault).
            UnknownZone: the source does not know `zone`.
        """
        ...

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Realized values (`Forecast.realized` is True) overlapping `[start, end)`, gCO2eq/kWh.

        Raises:
            ForecastUnavailable: the source keeps no realized values for that range.
            UnknownZone: the source does not know `zone`.
        """
        ...


class WattTimeConfig(Protocol):
    """Settings of the WattTime provider (`[forecast.watttime]`); read-only attributes."""

    @property
    def base_url(self) -> str: ...  # the API root, without /v3
    @property
    def timeout_s(self) -> float: ...
    @property
    def signal_type(self) -> str: ...  # co2_moer (marginal) or co2_aoer (average)


class ElectricityMapsConfig(Protocol):
    """Settings of the Electricity Maps provider (`[forecast.electricitymaps]`)."""

    @property
    def base_url(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def emission_factor(self) -> str: ...  # lifecycle or direct


class UKGridConfig(Protocol):
    """Settings of the UK Carbon Intensity provider (`[forecast.ukgrid]`)."""

    @property
    def base_url(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...


#: A forecaster that builds a forecast for `[start, end)` from realized values.
Fallback = Callable[[Forecast, datetime, datetime], Forecast]


def make_provider(
    kind: str,
    *,
    file: Path | None = None,
    watttime: WattTimeConfig | None = None,
    electricitymaps: ElectricityMapsConfig | None = None,
    ukgrid: UKGridConfig | None = None,
    credentials: "Credentials | None" = None,
    transport: "httpx.BaseTransport | None" = None,
) -> ForecastProvider:
    """The provider for the configuration value `forecast.provider = kind`.

    Args:
        kind: one of `PROVIDER_KINDS`.
        file: the forecast file for kind `file` (config `forecast.file`).
        watttime, electricitymaps, ukgrid: the provider's settings (`Settings.forecast.watttime`
            and so on, or any object with those attributes); None: the defaults.
        credentials: for `watttime` and `electricitymaps`; None: read them now with
            `ecoq.forecasting.secrets.load_credentials()` (environment, then secrets file).
        transport: an httpx transport for the HTTP providers (tests); None: the network.

    Raises:
        ConfigError: unknown `kind`, kind `file` without `file`, missing credentials, or an
            insecure secrets file.
    """
    if kind == "bundled":
        from ecoq.forecasting.bundled import BundledProvider

        return BundledProvider()
    if kind == "file":
        if file is None:
            raise ConfigError(
                "forecast provider 'file' needs a forecast file: set forecast.file to its path"
            )
        from ecoq.forecasting.files import FileProvider

        return FileProvider(file)
    if kind == "ukgrid":
        from ecoq.forecasting.ukgrid import UKGridProvider

        return UKGridProvider.from_config(ukgrid, transport=transport)
    if kind in ("watttime", "electricitymaps") and credentials is None:
        from ecoq.forecasting.secrets import load_credentials

        credentials = load_credentials()
    if kind == "watttime" and credentials is not None:
        from ecoq.forecasting.watttime import WattTimeProvider

        return WattTimeProvider.from_config(watttime, credentials, transport=transport)
    if kind == "electricitymaps" and credentials is not None:
        from ecoq.forecasting.electricitymaps import ElectricityMapsProvider

        return ElectricityMapsProvider.from_config(
            electricitymaps, credentials, transport=transport
        )
    valid = ", ".join(repr(k) for k in PROVIDER_KINDS)
    raise ConfigError(
        f"unknown forecast provider {kind!r}; set forecast.provider to one of {valid}"
    )
