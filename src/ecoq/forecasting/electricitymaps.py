"""Electricity Maps API v3: average (life-cycle or direct) carbon intensity, gCO2eq/kWh.

The token goes in the `auth-token` header. Zones are Electricity Maps zone keys (`DE`) or
`"lat,lon"`; lookups send `shouldUseFallbackCallerLookup=false` so that an unmapped location is an
error instead of silently becoming the caller's own IP location.

Free accounts have no `/forecast` (HTTP 401/403 such as "Endpoint not available"). Then the
provider reads the last 24 h from `/history` and hands them to a fallback forecaster (by default
`ecoq.forecasting.fallback.forecast_from_history`); the result is labelled
"electricitymaps history + fallback forecaster". It tries `/forecast` again after an hour.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ecoq.errors import ConfigError, ForecastUnavailable, UnknownZone
from ecoq.forecasting import (
    ElectricityMapsConfig,
    Fallback,
    Forecast,
    IntensityPoint,
    ProviderUnavailable,
)
from ecoq.forecasting.http import DEFAULT_RETRY, ApiClient, RetryPolicy, check_base_url
from ecoq.forecasting.secrets import Credentials, Secret
from ecoq.forecasting.validation import (
    Where,
    chunks,
    clean_series,
    clip,
    infer_step,
    parse_location,
    parse_time,
    parse_value,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["FALLBACK_LABEL", "ElectricityMapsProvider", "same_hour_yesterday"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.electricitymaps.com"
EMISSION_FACTORS = ("lifecycle", "direct")
FALLBACK_LABEL = "electricitymaps history + fallback forecaster"
HORIZONS_H = (6, 24, 48, 72)  # the values /forecast accepts for horizonHours
RECENT = timedelta(hours=24)  # what /history covers
_SLACK = timedelta(hours=1)  # its first hour may begin just over 24 h ago
PAST_RANGE_CHUNK = timedelta(days=10)  # /past-range allows 10 days of hourly data
NO_FORECAST_RETRY_S = 3600.0
_DAY = timedelta(days=1)


def same_hour_yesterday(history: Forecast, start: datetime, end: datetime) -> Forecast:
    """A stand-in forecaster: each step's value is the latest realized value a whole number of
    days earlier (yesterday's, else the day before, ...).

    Raises:
        ForecastUnavailable: `history` has no value a whole number of days before any step.
    """
    step = history.step
    t = history.start + ((start - history.start) // step) * step
    stop = max(end, start + timedelta(microseconds=1))
    points: list[IntensityPoint] = []
    while t < stop:
        k = 1
        while t - k * _DAY >= history.start:
            try:
                points.append(IntensityPoint(t, history.value_at(t - k * _DAY)))
                break
            except ForecastUnavailable:
                k += 1
        t += step
    if not points:
        raise ForecastUnavailable(
            f"history for zone {history.zone!r} ({history.start.isoformat()} to "
            f"{history.end.isoformat()}) has no value a day before {start.isoformat()}"
        )
    return Forecast(
        history.zone,
        history.signal,
        history.source,
        "same hour yesterday",
        history.issued_at,
        step,
        tuple(points),
        emission_factor=history.emission_factor,
    )


def default_fallback() -> Fallback:
    """`ecoq.forecasting.fallback.forecast_from_history` if present, else `same_hour_yesterday`."""
    try:
        from ecoq.forecasting.fallback import forecast_from_history
    except ModuleNotFoundError as exc:
        if exc.name != "ecoq.forecasting.fallback":
            raise
        return same_hour_yesterday
    return forecast_from_history


class ElectricityMapsProvider:
    """Forecasts and realized values from Electricity Maps v3.

    Args:
        token: the API token (see `ecoq.forecasting.secrets`).
        base_url: the API root, without `/v3`.
        timeout_s: seconds per connect and per read.
        emission_factor: `lifecycle` (default) or `direct`.
        fallback: builds a forecast from `/history` when the account has no `/forecast`;
            None: `default_fallback()`.
        transport, sleep, monotonic, now, retry: injected for tests.

    Raises:
        ConfigError: a bad `base_url` or `emission_factor`.
    """

    name: str = "electricitymaps"

    def __init__(
        self,
        token: Secret,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 10.0,
        emission_factor: str = "lifecycle",
        fallback: Fallback | None = None,
        transport: "httpx.BaseTransport | None" = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if emission_factor not in EMISSION_FACTORS:
            raise ConfigError(
                f"forecast.electricitymaps.emission_factor = {emission_factor!r} is not "
                f"supported; use {' or '.join(map(repr, EMISSION_FACTORS))}"
            )
        self.emission_factor = emission_factor
        self.fallback = fallback or default_fallback()
        self._monotonic = monotonic
        self._now = now
        self._no_forecast_until: dict[str, float] = {}
        self.api = ApiClient(
            self.name,
            check_base_url(self.name, base_url),
            timeout_s=timeout_s,
            headers={"auth-token": token.reveal()},
            retry=retry,
            transport=transport,
            sleep=sleep,
            now=now,
            secrets=lambda: [token.reveal()],
        )

    @classmethod
    def from_config(
        cls,
        cfg: ElectricityMapsConfig | None,
        credentials: Credentials,
        *,
        transport: "httpx.BaseTransport | None" = None,
    ) -> "ElectricityMapsProvider":
        """Build from `[forecast.electricitymaps]` settings (None: defaults) and the token.

        Raises:
            ConfigError: no token, or a bad setting.
        """
        token = credentials.electricitymaps()
        if cfg is None:
            return cls(token, transport=transport)
        return cls(
            token,
            base_url=cfg.base_url,
            timeout_s=cfg.timeout_s,
            emission_factor=cfg.emission_factor,
            transport=transport,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.api.close()

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """The forecast (hourly, up to 72 h) overlapping `[start, end)`; for accounts without
        forecast access, the fallback forecaster's, built from the last 24 h.

        Raises:
            ProviderUnavailable: network, HTTP or payload fault; a refused token.
            UnknownZone: a `"lat,lon"` zone out of range.
        """
        where = Where(self.name, zone, "forecast")
        params = self._params(zone)
        if self._monotonic() >= self._no_forecast_until.get(zone, -math.inf):
            ahead_h = math.ceil((end - self._now()).total_seconds() / 3600)
            params["horizonHours"] = next((h for h in HORIZONS_H if h >= ahead_h), HORIZONS_H[-1])
            try:
                body = self.api.get_json("/v3/carbon-intensity/forecast", where, params=params)
            except ProviderUnavailable as exc:
                self._check_token(exc, where)
                if exc.status not in (401, 403):
                    raise
                log.warning(
                    "electricitymaps: no forecast for zone %s (%s); forecasting from the last "
                    "24 h of /history with the fallback forecaster",
                    zone,
                    exc.cause,
                )
                self._no_forecast_until[zone] = self._monotonic() + NO_FORECAST_RETRY_S
            else:
                items = self._items(body, "forecast", where)
                issued = self._time(body.get("updatedAt"), where) or self._now()
                return self._build(body, items, where, start, end, issued, realized=False)
        try:
            # All of /history: the fallback forecaster needs a full day.
            now = self._now()
            history = self._history(zone, now - RECENT - _SLACK, now, recent=True)
        except ProviderUnavailable as exc:
            where.fail(
                f"no forecast access, and /history failed too: {exc.cause}", status=exc.status
            )
        try:
            made = self.fallback(history, start, end)
        except ForecastUnavailable as exc:
            where.fail(f"no forecast access, and the fallback forecaster failed: {exc}")
        return replace(
            made,
            zone=history.zone,
            signal="average",
            source=self.name,
            label=FALLBACK_LABEL,
            emission_factor=history.emission_factor,
            realized=False,
        )

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Realized values overlapping `[start, end)`: `/history` for the last 24 h, else
        `/past-range` in ≤ 10-day requests (not in the free tier). Keeps `isEstimated`.

        Raises:
            ProviderUnavailable: network, HTTP or payload fault; a refused token.
        """
        recent = start >= self._now() - RECENT - _SLACK
        return self._history(zone, start, end, recent=recent)

    def _history(self, zone: str, start: datetime, end: datetime, *, recent: bool) -> Forecast:
        """`/history` (the last 24 h) when `recent`, else `/past-range` in chunks."""
        where = Where(self.name, zone, "history")
        params = self._params(zone)
        raw: list[dict[str, Any]] = []
        body: Any = {}
        try:
            if recent:
                body = self.api.get_json("/v3/carbon-intensity/history", where, params=params)
                raw = self._items(body, "history", where)
            else:
                for a, b in chunks(start, end, PAST_RANGE_CHUNK):
                    span = {"start": a.isoformat(), "end": b.isoformat()}
                    path = "/v3/carbon-intensity/past-range"
                    body = self.api.get_json(path, where, params={**params, **span})
                    raw.extend(self._items(body, "data", where))
        except ProviderUnavailable as exc:
            self._check_token(exc, where)
            raise
        return self._build(body, raw, where, start, end, self._now(), realized=True)

    def latest(self, zone: str) -> Forecast:
        """The current value (`/latest`), as a one-point realized series.

        Raises:
            ProviderUnavailable: network, HTTP or payload fault; a refused token.
        """
        where = Where(self.name, zone, "latest value")
        body = self.api.get_json("/v3/carbon-intensity/latest", where, params=self._params(zone))
        if not isinstance(body, dict):
            where.fail("the answer is not an object")
        now = self._now()
        return self._build(body, [body], where, now, now, now, realized=True)

    def _params(self, zone: str) -> dict[str, str | int | float]:
        params: dict[str, str | int | float] = {"emissionFactorType": self.emission_factor}
        try:
            location = parse_location(zone)
        except ValueError as exc:
            raise UnknownZone(f"{exc}; give an Electricity Maps zone such as DE") from None
        if location is None:
            params["zone"] = zone.strip()
        else:
            params["lat"], params["lon"] = location
            params["shouldUseFallbackCallerLookup"] = "false"
        return params

    def _check_token(self, exc: ProviderUnavailable, where: Where) -> None:
        if exc.status == 401 and "invalid" in exc.cause.lower():
            where.fail(f"{exc.cause}; check ECOQ_ELECTRICITYMAPS_TOKEN", status=401)

    def _items(self, body: Any, key: str, where: Where) -> list[dict[str, Any]]:
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            where.fail(f"the answer has no {key!r} list")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                where.fail(f"{key}[{i}] is not an object")
        return items

    def _time(self, raw: object, where: Where) -> datetime | None:
        if raw is None:
            return None
        try:
            return parse_time(raw)
        except ValueError:
            where.fail(f"time {raw!r} is not ISO-8601")

    def _build(
        self,
        body: Any,
        items: list[dict[str, Any]],
        where: Where,
        start: datetime,
        end: datetime,
        issued_at: datetime,
        *,
        realized: bool,
    ) -> Forecast:
        raw: list[tuple[datetime, float, bool | None]] = []
        factors: set[str] = set()
        for i, item in enumerate(items):
            try:
                t = parse_time(item.get("datetime"))
                value = parse_value(item.get("carbonIntensity"))
            except ValueError as exc:
                where.fail(f"point {i}: {exc}")
            estimated = item.get("isEstimated")
            if isinstance(item.get("emissionFactorType"), str):
                factors.add(item["emissionFactorType"])
            if value is not None:  # null: no value for that hour, a gap
                raw.append((t, value, estimated if isinstance(estimated, bool) else None))
        if factors - {self.emission_factor}:
            where.fail(
                f"asked for emissionFactorType {self.emission_factor!r}, got "
                f"{', '.join(sorted(factors))}"
            )
        points = clean_series(raw, where)
        step = infer_step(points, where, None, timedelta(hours=1))
        zone = body.get("zone") if isinstance(body, dict) else None
        kind = "history" if realized else "forecast"
        return Forecast(
            zone if isinstance(zone, str) and zone else where.zone,
            "average",
            self.name,
            f"Electricity Maps {self.emission_factor} {kind}",
            issued_at,
            step,
            clip(points, step, start, end, where),
            emission_factor=self.emission_factor,
            realized=realized,
        )
