"""WattTime API v3: marginal (MOER) forecasts and history, converted to gCO2eq/kWh.

Login is `GET /login` with HTTP Basic auth, which returns a bearer token valid for 30 minutes.
The token is kept in memory only, renewed after `TOKEN_RENEW_S` and once more when a data call
answers 401. Zones are WattTime regions (`CAISO_NORTH`), or `"lat,lon"`, resolved with
`/v3/region-from-loc` (re-resolved monthly, as WattTime asks). Values arrive in lbs CO2/MWh and are
multiplied by 0.45359237. Free accounts may read only CAISO_NORTH.
"""

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ecoq.errors import ConfigError
from ecoq.forecasting import Forecast, IntensityPoint, ProviderUnavailable, WattTimeConfig
from ecoq.forecasting.http import DEFAULT_RETRY, ApiClient, RateLimiter, RetryPolicy, check_base_url
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
from ecoq.logs import redact

if TYPE_CHECKING:
    import httpx

__all__ = ["LBS_PER_MWH_TO_G_PER_KWH", "WattTimeProvider"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.watttime.org"
#: lbs CO2/MWh -> g/kWh: 453.59237 g per lb, 1000 kWh per MWh.
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237
UNITS = "lbs_co2_per_mwh"
SIGNALS = {"co2_moer": "marginal", "co2_aoer": "average"}
TOKEN_RENEW_S = 25 * 60  # tokens expire after 30 min; renew with a margin
MAX_HORIZON_H = 72
HISTORY_CHUNK = timedelta(days=30)  # the API allows 32 days per query
REGION_TTL_S = 30 * 24 * 3600  # boundaries change: re-query at least monthly
RATE_LIMIT_PER_S = 10  # 3,000 requests per rolling 5 minutes per user
WARNING_TYPE_MAX_CHARS = 80  # `meta.warnings[].type`, as logged
WARNING_MAX_CHARS = 300  # `meta.warnings[].message`, as logged
WARNINGS_PER_ANSWER = 10  # more in one answer are ignored
WARNINGS_REMEMBERED = 256  # distinct warnings kept for logging each once
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class WattTimeProvider:
    """Forecasts and realized values from WattTime v3.

    Args:
        username, password: the WattTime account (see `ecoq.forecasting.secrets`).
        base_url: the API root, without `/v3`.
        timeout_s: seconds per connect and per read.
        signal_type: `co2_moer` (marginal, default) or `co2_aoer` (average; historical only).
        transport, sleep, monotonic, now, retry: injected for tests.

    Raises:
        ConfigError: a bad `base_url` or `signal_type`.
    """

    name: str = "watttime"

    def __init__(
        self,
        username: Secret,
        password: Secret,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 10.0,
        signal_type: str = "co2_moer",
        transport: "httpx.BaseTransport | None" = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if signal_type not in SIGNALS:
            raise ConfigError(
                f"forecast.watttime.signal_type = {signal_type!r} is not supported; use "
                f"{' or '.join(map(repr, SIGNALS))} (values in gCO2eq/kWh)"
            )
        self.signal_type = signal_type
        self.signal = SIGNALS[signal_type]
        self._username = username
        self._password = password
        self._token: Secret | None = None
        self._token_at = 0.0
        self._monotonic = monotonic
        self._now = now
        self._warned: set[tuple[str, str]] = set()
        self._regions: dict[tuple[float, float], tuple[str, float]] = {}
        self.api = ApiClient(
            self.name,
            check_base_url(self.name, base_url),
            timeout_s=timeout_s,
            rate_limit=RateLimiter(RATE_LIMIT_PER_S, 1.0, clock=monotonic, sleep=sleep),
            retry=retry,
            transport=transport,
            sleep=sleep,
            now=now,
            secrets=self._secret_values,
        )

    @classmethod
    def from_config(
        cls,
        cfg: WattTimeConfig | None,
        credentials: Credentials,
        *,
        transport: "httpx.BaseTransport | None" = None,
    ) -> "WattTimeProvider":
        """Build from `[forecast.watttime]` settings (None: defaults) and the credentials.

        Raises:
            ConfigError: missing credentials or a bad setting.
        """
        username, password = credentials.watttime()
        if cfg is None:
            return cls(username, password, transport=transport)
        return cls(
            username,
            password,
            base_url=cfg.base_url,
            timeout_s=cfg.timeout_s,
            signal_type=cfg.signal_type,
            transport=transport,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.api.close()

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """The newest forecast (5-minute points, up to 72 h ahead) overlapping `[start, end)`.

        The first point is the current 5-minute period, so it may start before `start`; points
        that ended before `start` are dropped.

        Raises:
            ProviderUnavailable: network, HTTP, login or payload fault (message names the cause).
            UnknownZone: a `"lat,lon"` zone out of range.
        """
        where = Where(self.name, zone, "forecast")
        region = self._region(zone, where)
        ahead_h = math.ceil((end - self._now()).total_seconds() / 3600)
        params: dict[str, str | int | float] = {
            "region": region,
            "signal_type": self.signal_type,
            "horizon_hours": min(max(ahead_h, 1), MAX_HORIZON_H),
        }
        body = self._get("/v3/forecast", where, params)
        raw, meta = self._parse(body, where)
        generated = meta.get("generated_at")
        try:
            issued_at = parse_time(generated) if generated is not None else self._now()
        except ValueError:
            where.fail(f"meta.generated_at {generated!r} is not an ISO-8601 time")
        return self._build(raw, meta, where, region, start, end, issued_at, realized=False)

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Realized values over `[start, end)` from `/v3/historical`, in ≤ 30-day requests.

        WattTime may revise these later. Points flagged `imputed_data_used` are `is_estimated`.

        Raises:
            ProviderUnavailable: as `forecast`.
        """
        where = Where(self.name, zone, "history")
        if end <= start:
            where.fail(f"the range {start.isoformat()} to {end.isoformat()} is empty")
        region = self._region(zone, where)
        raw: list[tuple[datetime, float, bool | None]] = []
        meta: dict[str, Any] = {}
        for a, b in chunks(start, end, HISTORY_CHUNK):
            params = {
                "region": region,
                "signal_type": self.signal_type,
                "start": a.isoformat(),
                "end": b.isoformat(),
            }
            part, meta = self._parse(self._get("/v3/historical", where, params), where)
            raw.extend(part)
        return self._build(raw, meta, where, region, start, end, self._now(), realized=True)

    def region_from_location(self, latitude: float, longitude: float) -> str:
        """The WattTime region holding a location (cached for 30 days).

        Raises:
            ProviderUnavailable: the lookup failed or answered without a region.
        """
        key = (latitude, longitude)
        cached = self._regions.get(key)
        if cached is not None and self._monotonic() - cached[1] < REGION_TTL_S:
            return cached[0]
        where = Where(self.name, f"{latitude},{longitude}", "region lookup")
        params: dict[str, str | int | float] = {
            "latitude": latitude,
            "longitude": longitude,
            "signal_type": self.signal_type,
        }
        body = self._get("/v3/region-from-loc", where, params)
        region = body.get("region") if isinstance(body, dict) else None
        if not isinstance(region, str) or not region:
            where.fail("the answer has no 'region'")
        self._regions[key] = (region, self._monotonic())
        return region

    def _region(self, zone: str, where: Where) -> str:
        from ecoq.errors import UnknownZone

        try:
            location = parse_location(zone)
        except ValueError as exc:
            raise UnknownZone(f"{exc}; give a WattTime region such as CAISO_NORTH") from None
        if location is None:
            return zone.strip()
        return self.region_from_location(*location)

    def _secret_values(self) -> list[str]:
        values = [self._username.reveal(), self._password.reveal()]
        return values + ([self._token.reveal()] if self._token is not None else [])

    def _login(self, where: Where) -> Secret:
        auth = (self._username.reveal(), self._password.reveal())
        try:
            body = self.api.get_json("/login", where, auth=auth)
        except ProviderUnavailable as exc:
            if exc.status in (401, 403):
                where.fail(
                    f"login refused (HTTP {exc.status}); check ECOQ_WATTTIME_USERNAME and "
                    "ECOQ_WATTTIME_PASSWORD",
                    status=exc.status,
                )
            raise
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            where.fail("the login answer has no token")
        log.debug("watttime: logged in")
        self._token, self._token_at = Secret(token), self._monotonic()
        return self._token

    def _get(self, path: str, where: Where, params: Mapping[str, str | int | float]) -> Any:
        """GET with the bearer token; logs in when needed and once more after a 401."""
        retried = False
        while True:
            token = self._token
            if token is None or self._monotonic() - self._token_at >= TOKEN_RENEW_S:
                token = self._login(where)
            headers = {"Authorization": f"Bearer {token.reveal()}"}
            try:
                return self.api.get_json(path, where, params=params, headers=headers)
            except ProviderUnavailable as exc:
                if exc.status == 401 and not retried:
                    log.info("watttime: token refused (HTTP 401); logging in again")
                    self._token, retried = None, True
                    continue
                if exc.status == 401:
                    where.fail(
                        f"{exc.cause}; a freshly issued token was refused too: check that the "
                        "account may read this region",
                        status=401,
                    )
                if exc.status == 403:
                    where.fail(
                        f"{exc.cause}; the WattTime plan may not cover region "
                        f"{params.get('region', '?')} (free accounts: CAISO_NORTH only)",
                        status=403,
                    )
                raise

    def _parse(
        self, body: Any, where: Where
    ) -> tuple[list[tuple[datetime, float, bool | None]], dict[str, Any]]:
        """Raw `(time, g_per_kwh, imputed)` points and `meta` of a v3 data answer."""
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            where.fail("the answer has no 'data' list")
        meta = body.get("meta")
        if not isinstance(meta, dict):
            where.fail("the answer has no 'meta' object")
        units = meta.get("units")
        if units != UNITS:
            where.fail(f"meta.units is {units!r}, expected {UNITS!r}")
        signal_type = meta.get("signal_type", self.signal_type)
        if signal_type != self.signal_type:
            where.fail(f"asked for signal_type {self.signal_type!r}, got {signal_type!r}")
        self._log_warnings(meta.get("warnings"), where)
        raw: list[tuple[datetime, float, bool | None]] = []
        for i, item in enumerate(body["data"]):
            if not isinstance(item, dict):
                where.fail(f"data[{i}] is not an object")
            try:
                t = parse_time(item.get("point_time"))
                value = parse_value(item.get("value"), LBS_PER_MWH_TO_G_PER_KWH)
            except ValueError as exc:
                where.fail(f"data[{i}]: {exc}")
            imputed = item.get("imputed_data_used")
            if value is not None:
                raw.append((t, value, imputed if isinstance(imputed, bool) else None))
        return raw, meta

    def _log_warnings(self, warnings: Any, where: Where) -> None:
        """Log each new `meta.warnings` entry once, as one bounded line without credentials.

        The text comes from the API, which may echo what it was sent (a careless error path
        repeating the login, or the bearer token), so it is redacted like the HTTP layer's
        error messages and cut to `WARNING_MAX_CHARS`; at most `WARNINGS_REMEMBERED` distinct
        warnings are remembered for the once-only rule, so a provider that varies its text
        cannot grow the daemon's memory.
        """
        if not isinstance(warnings, list):
            return
        for warning in warnings[:WARNINGS_PER_ANSWER]:
            if not isinstance(warning, dict):
                continue
            kind = self._clean_text(warning.get("type", ""), WARNING_TYPE_MAX_CHARS)
            message = self._clean_text(warning.get("message", ""), WARNING_MAX_CHARS)
            key = (kind, message)
            if key in self._warned:
                continue
            if len(self._warned) >= WARNINGS_REMEMBERED:
                self._warned.clear()
            self._warned.add(key)
            log.warning("watttime warning for %s: %s: %s", where.zone, kind, message)

    def _clean_text(self, value: Any, max_chars: int) -> str:
        """`value` as one line of at most `max_chars`, credentials replaced by `***`.

        Redacted before cutting (a cut could leave a prefix of a secret that no longer
        matches), then control characters become spaces so one warning is one log line.
        """
        text = redact(value if isinstance(value, str) else str(value), self._secret_values())
        text = _CONTROL.sub(" ", text[: max_chars * 4])
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    def _build(
        self,
        raw: list[tuple[datetime, float, bool | None]],
        meta: dict[str, Any],
        where: Where,
        region: str,
        start: datetime,
        end: datetime,
        issued_at: datetime,
        *,
        realized: bool,
    ) -> Forecast:
        points: list[IntensityPoint] = clean_series(raw, where)
        period = meta.get("data_point_period_seconds")
        declared = (
            timedelta(seconds=period)
            if isinstance(period, int | float) and not isinstance(period, bool)
            else None
        )
        step = infer_step(points, where, declared, timedelta(minutes=5))
        model = meta.get("model")
        model_date = model.get("date") if isinstance(model, dict) else None
        return Forecast(
            region,
            "marginal" if self.signal == "marginal" else "average",
            self.name,
            f"WattTime {self.signal_type} {'history' if realized else 'forecast'}",
            issued_at,
            step,
            clip(points, step, start, end, where),
            emission_factor=None,
            realized=realized,
            model=model_date if isinstance(model_date, str) else None,
        )
