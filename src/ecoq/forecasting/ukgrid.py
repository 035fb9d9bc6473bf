"""UK Carbon Intensity API (NESO, api.carbonintensity.org.uk): keyless, half-hourly, gCO2eq/kWh.

Zones: `GB` (also `national` or `uk`) for Great Britain; a region id `1`-`17` (14 DNO regions,
15 England, 16 Scotland, 17 Wales); or an outward postcode (`RG10`; a full postcode is cut to its
outward part). The forecast covers 48 h. Realized values are the national `actual`s; where an
`actual` is missing, and for every regional value (the API publishes no regional actuals), the
estimate is used and marked `is_estimated`. Values are operational (generation only, including
imports and losses), so `emission_factor` is `direct`. Licence: CC BY 4.0.
"""

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ecoq.errors import UnknownZone
from ecoq.forecasting import Forecast, UKGridConfig
from ecoq.forecasting.http import DEFAULT_RETRY, ApiClient, RetryPolicy, check_base_url
from ecoq.forecasting.validation import (
    Where,
    chunks,
    clean_series,
    clip,
    infer_step,
    parse_time,
    parse_value,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["UKGridProvider", "api_time"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.carbonintensity.org.uk"
NATIONAL = ("GB", "NATIONAL", "UK")
HALF_HOUR = timedelta(minutes=30)
HISTORY_CHUNK = timedelta(days=14)  # the API's from/to ranges are limited (14 days assumed)
_OUTWARD = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")


def api_time(t: datetime) -> str:
    """`t` as the API writes times: `YYYY-MM-DDTHH:MMZ`, UTC."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _half_hour_floor(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=t.minute - t.minute % 30, second=0, microsecond=0)


class UKGridProvider:
    """Forecasts and realized values from the UK Carbon Intensity API (no account needed).

    Args:
        base_url: the API root.
        timeout_s: seconds per connect and per read.
        transport, sleep, now, retry: injected for tests.

    Raises:
        ConfigError: a bad `base_url`.
    """

    name: str = "ukgrid"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 10.0,
        transport: "httpx.BaseTransport | None" = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._now = now
        self.api = ApiClient(
            self.name,
            check_base_url(self.name, base_url),
            timeout_s=timeout_s,
            retry=retry,
            transport=transport,
            sleep=sleep,
            now=now,
        )

    @classmethod
    def from_config(
        cls, cfg: UKGridConfig | None, *, transport: "httpx.BaseTransport | None" = None
    ) -> "UKGridProvider":
        """Build from `[forecast.ukgrid]` settings (None: defaults).

        Raises:
            ConfigError: a bad `base_url`.
        """
        if cfg is None:
            return cls(transport=transport)
        return cls(base_url=cfg.base_url, timeout_s=cfg.timeout_s, transport=transport)

    def close(self) -> None:
        """Close the HTTP connections."""
        self.api.close()

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """The 48 h half-hourly forecast from the half hour holding `start`, clipped to
        `[start, end)`.

        Raises:
            ProviderUnavailable: network, HTTP or payload fault.
            UnknownZone: `zone` is not GB, a region id 1-17 or an outward postcode.
        """
        name, suffix = self._zone(zone)
        where = Where(self.name, name, "forecast")
        # The API may begin with the half hour *ending* at `from`; clipping drops it.
        frm = api_time(_half_hour_floor(start))
        path = f"/regional/intensity/{frm}/fw48h/{suffix}" if suffix else f"/intensity/{frm}/fw48h"
        items = self._items(self.api.get_json(path, where), where, regional=bool(suffix))
        return self._build(items, where, start, end, realized=False)

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Realized values overlapping `[start, end)` (national `actual`s; estimates where none,
        marked `is_estimated`), in ≤ 14-day requests.

        Raises:
            ProviderUnavailable: network, HTTP or payload fault.
            UnknownZone: as `forecast`.
        """
        name, suffix = self._zone(zone)
        where = Where(self.name, name, "history")
        if end <= start:
            where.fail(f"the range {start.isoformat()} to {end.isoformat()} is empty")
        items: list[dict[str, Any]] = []
        for a, b in chunks(_half_hour_floor(start), end, HISTORY_CHUNK):
            span = f"{api_time(a)}/{api_time(b)}"
            path = f"/regional/intensity/{span}/{suffix}" if suffix else f"/intensity/{span}"
            items.extend(self._items(self.api.get_json(path, where), where, bool(suffix)))
        return self._build(items, where, start, end, realized=True)

    def _zone(self, zone: str) -> tuple[str, str]:
        """`(zone as named in forecasts, path suffix)`; the suffix is "" for national."""
        text = zone.strip().upper()
        if text in NATIONAL:
            return "GB", ""
        if text.isdigit():
            if not 1 <= int(text) <= 17:
                raise UnknownZone(
                    f"UK region id {zone!r} is not 1-17 (14 DNO regions, 15 England, "
                    "16 Scotland, 17 Wales); use one of those, an outward postcode or GB"
                )
            return str(int(text)), f"regionid/{int(text)}"
        outward = text.split()[0] if text else ""
        if not _OUTWARD.match(outward):
            raise UnknownZone(
                f"zone {zone!r} is not a UK zone for the ukgrid provider; use GB, a region id "
                "1-17 or an outward postcode such as RG10"
            )
        return outward, f"postcode/{outward}"

    def _items(self, body: Any, where: Where, regional: bool) -> list[dict[str, Any]]:
        data = body.get("data") if isinstance(body, dict) else None
        if regional:
            # Regional answers wrap the series: {"data": {"regionid": .., "data": [...]}};
            # some endpoints put that object in a one-element list.
            if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
                data = data[0]
            data = data.get("data") if isinstance(data, dict) else None
        if not isinstance(data, list):
            where.fail("the answer has no 'data' list")
        for i, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("intensity"), dict):
                where.fail(f"data[{i}] is not an object with an 'intensity'")
        return data

    def _build(
        self,
        items: list[dict[str, Any]],
        where: Where,
        start: datetime,
        end: datetime,
        *,
        realized: bool,
    ) -> Forecast:
        raw: list[tuple[datetime, float, bool | None]] = []
        steps: Counter[timedelta] = Counter()
        for i, item in enumerate(items):
            intensity = item["intensity"]
            try:
                t, until = parse_time(item.get("from")), parse_time(item.get("to"))
                forecast = parse_value(intensity.get("forecast"))
                actual = parse_value(intensity.get("actual")) if realized else None
            except ValueError as exc:
                where.fail(f"data[{i}]: {exc}")
            steps[until - t] += 1
            if actual is not None:
                raw.append((t, actual, False))
            elif forecast is not None:
                raw.append((t, forecast, True if realized else None))
        points = clean_series(raw, where)
        declared = min(steps, key=lambda d: (-steps[d], d)) if steps else None
        step = infer_step(points, where, declared, HALF_HOUR)
        kind = "history" if realized else "forecast"
        if where.zone == "GB":
            region = "national"
        else:
            region = f"{'region' if where.zone.isdigit() else 'postcode'} {where.zone}"
        return Forecast(
            where.zone,
            "average",
            self.name,
            f"UK Carbon Intensity {region} {kind}",
            self._now(),
            step,
            clip(points, step, start, end, where),
            emission_factor="direct",
            realized=realized,
        )
