"""WattTime v3 against recorded payloads: login, token renewal, units, chunking, bad payloads."""

import base64
import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from ecoq.errors import ConfigError, UnknownZone
from ecoq.forecasting import ProviderUnavailable, make_provider
from ecoq.forecasting.secrets import Credentials, Secret
from ecoq.forecasting.watttime import LBS_PER_MWH_TO_G_PER_KWH, WattTimeProvider
from tests.forecasting.helpers import (
    WT_BASE,
    WT_PASSWORD,
    WT_TOKEN,
    WT_USER,
    FakeTime,
    wt_answer,
    wt_fixture_points,
)

NOW = datetime(2024, 5, 28, 14, 22, tzinfo=UTC)  # inside the fixture's first 5-minute period
T0 = datetime(2024, 5, 28, 14, 20, tzinfo=UTC)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(NOW)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=WT_BASE, assert_all_called=False) as mock:
        mock.get("/login", name="login").respond(json={"token": WT_TOKEN})
        yield mock


def make(fake: FakeTime, **kw: Any) -> WattTimeProvider:
    return WattTimeProvider(
        Secret(WT_USER),
        Secret(WT_PASSWORD),
        sleep=fake.sleep,
        monotonic=fake.monotonic,
        now=fake.now,
        **kw,
    )


def points(values: list[Any], start: datetime = T0, step_min: int = 5) -> list[dict[str, Any]]:
    return [
        {"point_time": (start + timedelta(minutes=step_min * i)).isoformat(), "value": v}
        for i, v in enumerate(values)
    ]


def test_forecast_from_recorded_payload_converts_lbs_per_mwh(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    recorded = wt_fixture_points()
    route = router.get("/v3/forecast").respond(json=wt_answer(recorded))
    fc = make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(hours=24))
    assert len(fc.points) == 288
    assert fc.points[0].start == T0  # the current 5-minute period, begun before NOW
    assert fc.points[0].g_per_kwh == pytest.approx(479.4 * 0.45359237)
    assert LBS_PER_MWH_TO_G_PER_KWH == 453.59237 / 1000
    assert [p.g_per_kwh for p in fc.points] == pytest.approx(
        [v["value"] * 0.45359237 for v in recorded]
    )
    assert (fc.zone, fc.signal, fc.source, fc.step) == (
        "CAISO_NORTH", "marginal", "watttime", timedelta(minutes=5),
    )  # fmt: skip
    assert fc.issued_at == T0 and fc.model == "2023-03-01" and not fc.realized
    assert fc.emission_factor is None
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {WT_TOKEN}"
    assert dict(request.url.params) == {
        "region": "CAISO_NORTH", "signal_type": "co2_moer", "horizon_hours": "24",
    }  # fmt: skip
    login = router.routes["login"].calls.last.request
    basic = base64.b64encode(f"{WT_USER}:{WT_PASSWORD}".encode()).decode()
    assert login.headers["authorization"] == f"Basic {basic}"


def test_horizon_is_clamped_to_72_hours(router: respx.MockRouter, fake: FakeTime) -> None:
    route = router.get("/v3/forecast").respond(json=wt_answer(points([900, 900])))
    make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(days=5))
    assert route.calls.last.request.url.params["horizon_hours"] == "72"
    make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(minutes=10))
    assert route.calls.last.request.url.params["horizon_hours"] == "1"


def test_token_is_cached_and_renewed_before_30_minutes(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    router.get("/v3/forecast").respond(json=wt_answer(points([900, 900])))
    provider = make(fake)
    provider.forecast("CAISO_NORTH", NOW, NOW)
    provider.forecast("CAISO_NORTH", NOW, NOW)
    assert router.routes["login"].call_count == 1
    fake.advance(26 * 60)
    fake.wall = NOW  # keep the payload current; only the token's age matters here
    provider.forecast("CAISO_NORTH", NOW, NOW)
    assert router.routes["login"].call_count == 2


def test_token_renewed_once_on_401(router: respx.MockRouter, fake: FakeTime) -> None:
    router.routes["login"].mock(
        side_effect=[
            httpx.Response(200, json={"token": "old-token-1"}),
            httpx.Response(200, json={"token": WT_TOKEN}),
        ]
    )
    route = router.get("/v3/forecast").mock(
        side_effect=[
            httpx.Response(401, json={"error": "token expired"}),
            httpx.Response(200, json=wt_answer(points([900, 900]))),
        ]
    )
    fc = make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(minutes=10))
    assert len(fc.points) == 2
    assert router.routes["login"].call_count == 2
    assert route.calls[0].request.headers["authorization"] == "Bearer old-token-1"
    assert route.calls[1].request.headers["authorization"] == f"Bearer {WT_TOKEN}"


def test_second_401_is_an_error(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/forecast").respond(401, json={"error": "nope"})
    with pytest.raises(ProviderUnavailable) as info:
        make(fake).forecast("CAISO_NORTH", NOW, NOW)
    assert info.value.status == 401
    assert router.routes["login"].call_count == 2
    assert "freshly issued token was refused" in str(info.value)


def test_refused_login_names_the_variables_not_the_values(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    router.routes["login"].respond(401, json={"error": "bad credentials"})
    with pytest.raises(ProviderUnavailable) as info:
        make(fake).forecast("CAISO_NORTH", NOW, NOW)
    message = str(info.value)
    assert message.startswith("watttime forecast for zone 'CAISO_NORTH' unavailable: login refused")
    assert "ECOQ_WATTTIME_USERNAME" in message
    assert WT_USER not in message and WT_PASSWORD not in message


def test_403_hints_at_the_plan(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/forecast").respond(403, json={"error": "Forbidden", "message": "no access"})
    with pytest.raises(ProviderUnavailable, match="free accounts: CAISO_NORTH only") as info:
        make(fake).forecast("PJM_DC", NOW, NOW)
    assert info.value.status == 403


def test_429_then_success_waits_retry_after(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/v3/forecast").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(200, json=wt_answer(points([900, 900]))),
        ]
    )
    make(fake).forecast("CAISO_NORTH", NOW, NOW)
    assert 2.0 in fake.sleeps


def test_warnings_are_logged_once(
    router: respx.MockRouter, fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    warning = {"type": "EXAMPLE_WARNING", "message": "This is just an example"}
    router.get("/v3/forecast").respond(json=wt_answer(points([900, 900]), warnings=[warning]))
    provider = make(fake)
    with caplog.at_level(logging.WARNING, logger="ecoq.forecasting.watttime"):
        provider.forecast("CAISO_NORTH", NOW, NOW)
        provider.forecast("CAISO_NORTH", NOW, NOW)
    logged = [r.getMessage() for r in caplog.records if "EXAMPLE_WARNING" in r.getMessage()]
    assert logged == ["watttime warning for CAISO_NORTH: EXAMPLE_WARNING: This is just an example"]


def test_warnings_are_logged_without_credentials_and_bounded(
    router: respx.MockRouter, fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    echoed = (
        f"login {WT_USER}:{WT_PASSWORD} with token {WT_TOKEN};\nfake line password=hunter2x "
        + "x" * 5000
    )
    warnings: list[Any] = [
        {"type": f"ECHO {WT_TOKEN}", "message": echoed},
        {"type": "LONG", "message": "y" * 100_000},
        "not an object",
    ]
    router.get("/v3/forecast").respond(json=wt_answer(points([900, 900]), warnings=warnings))
    with caplog.at_level(logging.WARNING, logger="ecoq.forecasting.watttime"):
        make(fake).forecast("CAISO_NORTH", NOW, NOW)
    records = [r for r in caplog.records if r.getMessage().startswith("watttime warning")]
    assert len(records) == 2
    for record in records:
        text = f"{record.getMessage()} {record.args!r}"
        for secret in (WT_USER, WT_PASSWORD, WT_TOKEN, "hunter2x"):
            assert secret not in text
        assert "\n" not in record.getMessage()
        assert len(record.getMessage()) < 500
    first = records[0].getMessage()
    assert first.startswith("watttime warning for CAISO_NORTH: ECHO ***: login ***:*** with token")
    assert "password=***" in first and first.endswith("…")


def test_odd_warnings_fields_are_ignored(router: respx.MockRouter, fake: FakeTime) -> None:
    for odd in (5, "text", {"type": "W"}):
        router.get("/v3/forecast").respond(json=wt_answer(points([900, 900]), warnings=odd))
        assert make(fake).forecast("CAISO_NORTH", NOW, NOW).points


def test_history_is_chunked_to_30_days(router: respx.MockRouter, fake: FakeTime) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    end = start + timedelta(days=65)

    def answer(request: httpx.Request) -> httpx.Response:
        a = datetime.fromisoformat(request.url.params["start"])
        pts = points([1000, 1100], start=a)
        pts[1]["imputed_data_used"] = True
        return httpx.Response(200, json=wt_answer(pts, historical=True))

    route = router.get("/v3/historical").mock(side_effect=answer)
    fc = make(fake).history("CAISO_NORTH", start, end)
    spans = [
        (datetime.fromisoformat(c.request.url.params["start"]),
         datetime.fromisoformat(c.request.url.params["end"]))
        for c in route.calls
    ]  # fmt: skip
    assert spans == [
        (start, start + timedelta(days=30)),
        (start + timedelta(days=30), start + timedelta(days=60)),
        (start + timedelta(days=60), end),
    ]
    assert fc.realized and fc.label == "WattTime co2_moer history"
    assert len(fc.points) == 6 and fc.gaps()  # 10 minutes of data per chunk: gaps between
    assert [p.is_estimated for p in fc.points[:2]] == [None, True]
    assert fc.points[1].g_per_kwh == pytest.approx(1100 * 0.45359237)


def test_location_is_resolved_to_a_region_and_cached(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    region = router.get("/v3/region-from-loc").respond(
        json={
            "region": "ISONE_WCMA",
            "region_full_name": "ISONE Western/Central Massachusetts",
            "signal_type": "co2_moer",
        }
    )
    forecast = router.get("/v3/forecast").respond(
        json=wt_answer(points([900, 900]), region="ISONE_WCMA")
    )
    provider = make(fake)
    fc = provider.forecast("42.37, -72.52", NOW, NOW)
    provider.forecast("42.37,-72.52", NOW, NOW)
    assert fc.zone == "ISONE_WCMA"
    assert region.call_count == 1
    assert dict(region.calls.last.request.url.params) == {
        "latitude": "42.37", "longitude": "-72.52", "signal_type": "co2_moer",
    }  # fmt: skip
    assert forecast.calls.last.request.url.params["region"] == "ISONE_WCMA"
    with pytest.raises(UnknownZone, match="out of range"):
        provider.forecast("142.0,10.0", NOW, NOW)


def test_aoer_is_an_average_signal_and_bad_signal_types_are_refused(fake: FakeTime) -> None:
    assert make(fake, signal_type="co2_aoer").signal == "average"
    with pytest.raises(ConfigError, match="health_damage"):
        make(fake, signal_type="health_damage")


def test_make_provider_builds_watttime_from_settings(router: respx.MockRouter) -> None:
    class Cfg:
        base_url = "https://proxy.example/wt/"
        timeout_s = 2.0
        signal_type = "co2_moer"

    creds = Credentials(watttime_username=Secret(WT_USER), watttime_password=Secret(WT_PASSWORD))
    provider = make_provider("watttime", watttime=Cfg(), credentials=creds)
    assert isinstance(provider, WattTimeProvider)
    assert str(provider.api.client.base_url) == "https://proxy.example/wt/"
    with pytest.raises(ConfigError, match="ECOQ_WATTTIME_USERNAME"):
        make_provider("watttime", credentials=Credentials())


# -- bad and odd payloads: each is ProviderUnavailable naming provider, zone and cause -------


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (b"<html>oops", "malformed JSON"),
        ({"data": [], "meta": {"units": "lbs_co2_per_mwh"}}, "holds no data points"),
        ({"meta": {"units": "lbs_co2_per_mwh"}}, "no 'data' list"),
        ({"data": points([1])}, "no 'meta' object"),
        (wt_answer(points([900, 900]), units="kg_co2_per_mwh"), "meta.units is 'kg_co2_per_mwh'"),
        (wt_answer(points([900, math.nan])), r"data\[1\]: value nan is not a finite"),
        (wt_answer(points([900, -3])), r"data\[1\]: value -3 is not a finite, non-negative"),
        (wt_answer(points([900, "high"])), r"data\[1\]: value 'high' is not a number"),
        (wt_answer([{"point_time": "yesterday", "value": 1}]), r"data\[0\]: .*yesterday"),
        (wt_answer(points([900, 1]) + points([901])), r"two values for 2024-05-28T14:20:00"),
        (wt_answer(points([900, 900], start=T0 - timedelta(days=2))), "not 2024-05-28T14:22"),
        (wt_answer(points([900, 900], step_min=1)), "closer than the step 0:05:00"),
    ],
)
def test_bad_payloads(router: respx.MockRouter, fake: FakeTime, answer: Any, cause: str) -> None:
    content = answer if isinstance(answer, bytes) else json.dumps(answer).encode()  # NaN too
    router.get("/v3/forecast").respond(200, content=content)
    with pytest.raises(ProviderUnavailable, match=cause) as info:
        make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(hours=1))
    assert str(info.value).startswith("watttime forecast for zone 'CAISO_NORTH' unavailable: ")
    assert (info.value.provider, info.value.zone) == ("watttime", "CAISO_NORTH")


def test_unsorted_duplicated_and_mixed_offset_points(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    pts = points([900, 910, 920, 930])
    pts[1]["point_time"] = "2024-05-28T16:25:00+02:00"  # 14:25Z, written in another offset
    pts[3]["point_time"] = "2024-05-28T14:35:00Z"
    payload = [pts[2], pts[0], pts[3], pts[1], dict(pts[0])]  # shuffled, one exact duplicate
    router.get("/v3/forecast").respond(json=wt_answer(payload))
    fc = make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(hours=1))
    assert [p.start for p in fc.points] == [T0 + timedelta(minutes=5 * i) for i in range(4)]
    assert all(p.start.tzinfo == UTC for p in fc.points)
    assert [p.g_per_kwh for p in fc.points] == pytest.approx(
        [v * 0.45359237 for v in (900, 910, 920, 930)]
    )


def test_gaps_are_kept_and_marked(router: respx.MockRouter, fake: FakeTime) -> None:
    pts = points([900, 910]) + points([950, 960], start=T0 + timedelta(minutes=30))
    router.get("/v3/forecast").respond(json=wt_answer(pts))
    fc = make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(hours=1))
    assert fc.gaps() == [(T0 + timedelta(minutes=10), T0 + timedelta(minutes=30))]
    assert fc.value_at(T0 + timedelta(minutes=31)) == pytest.approx(950 * 0.45359237)
    with pytest.raises(ProviderUnavailable.__mro__[1], match="with gaps"):
        fc.value_at(T0 + timedelta(minutes=15))


def test_forecast_issued_in_the_past_is_trimmed(router: respx.MockRouter, fake: FakeTime) -> None:
    issued = NOW - timedelta(hours=2)
    start = issued.replace(minute=20)
    pts = points(list(range(100, 160)), start=start)  # 5 h of points from 12:20
    router.get("/v3/forecast").respond(json=wt_answer(pts, generated_at=start.isoformat()))
    fc = make(fake).forecast("CAISO_NORTH", NOW, NOW + timedelta(hours=1))
    assert fc.issued_at == start
    assert fc.points[0].start == T0  # 12:20 .. 14:15 dropped; 14:20 holds NOW
    assert fc.points[-1].start < NOW + timedelta(hours=1)
    assert len(fc.points) == 13
