"""Electricity Maps v3: forecast, history, past-range chunks, free accounts and bad payloads."""

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from ecoq.errors import ConfigError, ForecastUnavailable, UnknownZone
from ecoq.forecasting import Forecast, IntensityPoint, ProviderUnavailable, make_provider
from ecoq.forecasting.electricitymaps import (
    FALLBACK_LABEL,
    ElectricityMapsProvider,
    same_hour_yesterday,
)
from ecoq.forecasting.secrets import Credentials, Secret
from tests.forecasting.helpers import EM_BASE, EM_TOKEN, FakeTime, em_forecast, em_history

NOW = datetime(2024, 5, 28, 14, 10, tzinfo=UTC)
HOUR = datetime(2024, 5, 28, 14, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(NOW)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=EM_BASE, assert_all_called=False) as mock:
        yield mock


def make(fake: FakeTime, **kw: Any) -> ElectricityMapsProvider:
    return ElectricityMapsProvider(
        Secret(EM_TOKEN), sleep=fake.sleep, monotonic=fake.monotonic, now=fake.now, **kw
    )


def body(data: object) -> bytes:
    return json.dumps(data).encode()  # allows NaN, as a sloppy server might send


def test_forecast(router: respx.MockRouter, fake: FakeTime) -> None:
    route = router.get("/v3/carbon-intensity/forecast").respond(
        json=em_forecast(HOUR, [322, 310, 290, 301])
    )
    fc = make(fake).forecast("DE", NOW, NOW + 3 * H)
    assert [p.g_per_kwh for p in fc.points] == [322, 310, 290, 301]
    assert fc.points[0].start == HOUR and fc.step == H
    assert (fc.zone, fc.signal, fc.source, fc.emission_factor) == (
        "DE", "average", "electricitymaps", "lifecycle",
    )  # fmt: skip
    assert fc.label == "Electricity Maps lifecycle forecast" and not fc.realized
    assert fc.issued_at == datetime(2024, 5, 28, 14, tzinfo=UTC)
    request = route.calls.last.request
    assert request.headers["auth-token"] == EM_TOKEN
    assert dict(request.url.params) == {
        "zone": "DE", "emissionFactorType": "lifecycle", "horizonHours": "6",
    }  # fmt: skip


@pytest.mark.parametrize(("hours", "horizon"), [(1, "6"), (7, "24"), (30, "48"), (100, "72")])
def test_horizon_is_one_the_api_accepts(
    router: respx.MockRouter, fake: FakeTime, hours: int, horizon: str
) -> None:
    route = router.get("/v3/carbon-intensity/forecast").respond(json=em_forecast(HOUR, [1, 2]))
    make(fake).forecast("DE", NOW, NOW + hours * H)
    assert route.calls.last.request.url.params["horizonHours"] == horizon


def test_location_zone_never_falls_back_to_the_callers_ip(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    route = router.get("/v3/carbon-intensity/forecast").respond(json=em_forecast(HOUR, [1, 2]))
    fc = make(fake, emission_factor="direct").forecast("52.52,13.40", NOW, NOW + H)
    params = dict(route.calls.last.request.url.params)
    assert params["lat"] == "52.52" and params["lon"] == "13.4"
    assert params["shouldUseFallbackCallerLookup"] == "false"
    assert params["emissionFactorType"] == "direct" and "zone" not in params
    assert fc.zone == "DE"  # the zone the API resolved
    with pytest.raises(UnknownZone):
        make(fake).forecast("95,0", NOW, NOW + H)


@pytest.mark.parametrize("status", [401, 403])
def test_free_account_forecasts_from_history_with_the_fallback(
    router: respx.MockRouter, fake: FakeTime, status: int
) -> None:
    forecast = router.get("/v3/carbon-intensity/forecast").respond(
        status, json={"error": "Endpoint not available"}
    )
    day_ago = HOUR - 24 * H
    history = router.get("/v3/carbon-intensity/history").respond(
        json=em_history(day_ago, [float(100 + h) for h in range(25)])
    )
    provider = make(fake)
    fc = provider.forecast("DE", NOW, NOW + 3 * H)
    assert fc.label == FALLBACK_LABEL == "electricitymaps history + fallback forecaster"
    assert (fc.source, fc.signal, fc.emission_factor, fc.realized) == (
        "electricitymaps", "average", "lifecycle", False,
    )  # fmt: skip
    # The stand-in (or the fallback module): 14:00 today from 14:00 yesterday, and so on.
    assert fc.points[0].start == HOUR
    assert fc.value_at(NOW) > 0
    assert history.call_count == 1
    provider.forecast("DE", NOW, NOW + 3 * H)
    assert forecast.call_count == 1  # not asked again for an hour
    fake.advance(3601)
    provider.forecast("DE", NOW, NOW + 3 * H)
    assert forecast.call_count == 2


def test_fallback_is_pluggable(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/carbon-intensity/forecast").respond(
        401, json={"error": "Endpoint not available"}
    )
    router.get("/v3/carbon-intensity/history").respond(json=em_history(HOUR - 23 * H, [50] * 24))
    seen: list[Forecast] = []

    def flat(history: Forecast, start: datetime, end: datetime) -> Forecast:
        seen.append(history)
        return Forecast("x", "average", "mine", "mine", start, H, (IntensityPoint(start, 42.0),))

    fc = make(fake, fallback=flat).forecast("DE", NOW, NOW + H)
    assert seen[0].realized and len(seen[0].points) == 24
    assert fc.points == (IntensityPoint(NOW, 42.0),)
    assert (fc.zone, fc.label, fc.source) == ("DE", FALLBACK_LABEL, "electricitymaps")


def test_invalid_token_is_not_papered_over(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/carbon-intensity/forecast").respond(401, json={"error": "Invalid auth-token"})
    history = router.get("/v3/carbon-intensity/history").respond(json=em_history(HOUR, [1]))
    with pytest.raises(ProviderUnavailable, match="check ECOQ_ELECTRICITYMAPS_TOKEN") as info:
        make(fake).forecast("DE", NOW, NOW + H)
    assert info.value.status == 401 and history.call_count == 0
    assert EM_TOKEN not in str(info.value)


def test_no_forecast_and_no_history(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/carbon-intensity/forecast").respond(
        403, json={"error": "Endpoint not available"}
    )
    router.get("/v3/carbon-intensity/history").respond(
        401, json={"error": "Token unauthorized for zoneKey"}
    )
    with pytest.raises(ProviderUnavailable, match="/history failed too: HTTP 401"):
        make(fake).forecast("FR", NOW, NOW + H)


def test_recent_history_keeps_is_estimated(router: respx.MockRouter, fake: FakeTime) -> None:
    answer = em_history(HOUR - 3 * H, [300, 310, None, 330])
    answer["history"][1]["isEstimated"] = True
    router.get("/v3/carbon-intensity/history").respond(json=answer)
    fc = make(fake).history("DE", NOW - 5 * H, NOW)
    assert fc.realized and fc.label == "Electricity Maps lifecycle history"
    assert [p.g_per_kwh for p in fc.points] == [300, 310, 330]  # null: no value, a gap
    assert [p.is_estimated for p in fc.points] == [False, True, False]
    assert fc.gaps() == [(HOUR - H, HOUR)]


def test_older_history_uses_past_range_in_10_day_chunks(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    start = datetime(2024, 4, 1, tzinfo=UTC)
    end = start + timedelta(days=25)

    def answer(request: httpx.Request) -> httpx.Response:
        a = datetime.fromisoformat(request.url.params["start"])
        return httpx.Response(200, json=em_history(a, [200, 210], key="data"))

    route = router.get("/v3/carbon-intensity/past-range").mock(side_effect=answer)
    fc = make(fake).history("DE", start, end)
    starts = [c.request.url.params["start"] for c in route.calls]
    ends = [c.request.url.params["end"] for c in route.calls]
    assert starts == [(start + timedelta(days=d)).isoformat() for d in (0, 10, 20)]
    assert ends == [(start + timedelta(days=d)).isoformat() for d in (10, 20, 25)]
    assert len(fc.points) == 6 and fc.realized


def test_latest(router: respx.MockRouter, fake: FakeTime) -> None:
    point = em_history(HOUR, [322])["history"][0]
    router.get("/v3/carbon-intensity/latest").respond(json=point)
    fc = make(fake).latest("DE")
    assert fc.points == (IntensityPoint(HOUR, 322.0, False),)


def test_settings_and_make_provider(router: respx.MockRouter) -> None:
    class Cfg:
        base_url = "https://api.electricitymap.org"
        timeout_s = 4.0
        emission_factor = "direct"

    creds = Credentials(electricitymaps_token=Secret(EM_TOKEN))
    provider = make_provider("electricitymaps", electricitymaps=Cfg(), credentials=creds)
    assert isinstance(provider, ElectricityMapsProvider)
    assert provider.emission_factor == "direct"
    with pytest.raises(ConfigError, match="ECOQ_ELECTRICITYMAPS_TOKEN"):
        make_provider("electricitymaps", credentials=Credentials())
    with pytest.raises(ConfigError, match="'market'"):
        ElectricityMapsProvider(Secret("t"), emission_factor="market")


def test_same_hour_yesterday_repeats_the_last_day() -> None:
    start = datetime(2024, 5, 27, 14, tzinfo=UTC)
    history = Forecast(
        "DE", "average", "electricitymaps", "h", start + 24 * H, H,
        tuple(IntensityPoint(start + i * H, float(i)) for i in range(24)),
        realized=True,
    )  # fmt: skip
    fc = same_hour_yesterday(history, start + 24 * H + 30 * timedelta(minutes=1), start + 72 * H)
    assert fc.points[0].start == start + 24 * H
    assert [p.g_per_kwh for p in fc.points[:3]] == [0.0, 1.0, 2.0]
    assert len(fc.points) == 48 and fc.points[24].g_per_kwh == 0.0  # two days on: 2 days back
    with pytest.raises(ForecastUnavailable):
        same_hour_yesterday(history, start - 48 * H, start - 47 * H)


# -- bad and odd payloads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (b"{'zone': 'DE'", "malformed JSON"),
        ({"zone": "DE", "forecast": []}, "holds no data points"),
        ({"zone": "DE"}, "no 'forecast' list"),
        (em_forecast(HOUR, [300, math.nan]), "point 1: value nan is not a finite"),
        (em_forecast(HOUR, [300, -1]), "point 1: value -1 is not a finite, non-negative"),
        (em_forecast(HOUR, ["300", 1]), "point 0: value '300' is not a number"),
        (
            {
                "zone": "DE",
                "forecast": [
                    {"carbonIntensity": 1, "datetime": "2024-05-28T14:00Z"},
                    {"carbonIntensity": 2, "datetime": "2024-05-28T14:00Z"},
                ],
            },
            "two values for 2024-05-28T14:00:00",
        ),  # fmt: skip
        (em_forecast(HOUR - 48 * H, [300, 310]), "the data covers 2024-05-26T14:00"),
    ],
)
def test_bad_payloads(router: respx.MockRouter, fake: FakeTime, answer: Any, cause: str) -> None:
    content = answer if isinstance(answer, bytes) else body(answer)
    router.get("/v3/carbon-intensity/forecast").respond(200, content=content)
    with pytest.raises(ProviderUnavailable, match=cause) as info:
        make(fake).forecast("DE", NOW, NOW + 2 * H)
    assert str(info.value).startswith("electricitymaps forecast for zone 'DE' unavailable: ")


def test_wrong_emission_factor_in_payload(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/carbon-intensity/history").respond(json=em_history(HOUR - H, [1, 2]))
    with pytest.raises(ProviderUnavailable, match="asked for emissionFactorType 'direct'"):
        make(fake, emission_factor="direct").history("DE", NOW - 2 * H, NOW)


def test_unsorted_duplicated_mixed_offsets_and_past_start(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    answer = em_forecast(HOUR - 2 * H, [100, 110, 120, 130, 140])
    items = answer["forecast"]
    items[3]["datetime"] = "2024-05-28T17:00:00+02:00"  # 15:00Z in another offset
    answer["forecast"] = [items[4], items[0], items[3], dict(items[1]), items[2], items[1]]
    router.get("/v3/carbon-intensity/forecast").respond(json=answer)
    fc = make(fake).forecast("DE", NOW, NOW + 3 * H)
    assert [p.start for p in fc.points] == [HOUR, HOUR + H, HOUR + 2 * H]  # 12:00, 13:00 trimmed
    assert [p.g_per_kwh for p in fc.points] == [120, 130, 140]
