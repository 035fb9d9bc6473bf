"""UK Carbon Intensity API against recorded answers: national, regional, history, bad payloads."""

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from ecoq.errors import UnknownZone
from ecoq.forecasting import ProviderUnavailable, make_provider
from ecoq.forecasting.ukgrid import UKGridProvider, api_time
from tests.forecasting.helpers import UK_BASE, FakeTime, uk_answer, uk_points

NOW = datetime(2023, 12, 3, 10, 41, tzinfo=UTC)
T0 = datetime(2023, 12, 3, 10, 30, tzinfo=UTC)
HALF = timedelta(minutes=30)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(NOW)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=UK_BASE, assert_all_called=False) as mock:
        yield mock


def make(fake: FakeTime) -> UKGridProvider:
    return UKGridProvider(sleep=fake.sleep, now=fake.now)


def test_api_time_format() -> None:
    t = datetime(2023, 12, 3, 11, 30, 59, tzinfo=UTC)
    assert api_time(t) == "2023-12-03T11:30Z"


def test_national_forecast_from_recorded_answer(router: respx.MockRouter, fake: FakeTime) -> None:
    route = router.get("/intensity/2023-12-03T10:30Z/fw48h").respond(json=uk_answer("uk.json"))
    fc = make(fake).forecast("GB", NOW, NOW + timedelta(hours=48))
    assert route.call_count == 1
    assert len(fc.points) == 96
    assert fc.points[0].start == T0 and fc.points[0].g_per_kwh == 211  # the forecast, not actual
    assert fc.points[1].g_per_kwh == 216
    assert fc.step == HALF and not fc.gaps()
    assert (fc.zone, fc.signal, fc.source, fc.emission_factor) == (
        "GB", "average", "ukgrid", "direct",
    )  # fmt: skip
    assert fc.label == "UK Carbon Intensity national forecast"
    assert fc.issued_at == NOW


@pytest.mark.parametrize(
    ("zone", "path", "name"),
    [
        ("SW1A 1AA", "postcode/SW1A", "SW1A"),
        ("rg10", "postcode/RG10", "RG10"),
        ("13", "regionid/13", "13"),
    ],
)
def test_regional_forecast(
    router: respx.MockRouter, fake: FakeTime, zone: str, path: str, name: str
) -> None:
    route = router.get(f"/regional/intensity/2023-12-03T10:30Z/fw48h/{path}").respond(
        json=uk_answer("london.json")
    )
    fc = make(fake).forecast(zone, NOW, NOW + timedelta(hours=3))
    assert route.call_count == 1
    assert fc.zone == name and len(fc.points) == 7  # 10:30 .. 13:30 cover 10:41 .. 13:41
    assert fc.points[0].g_per_kwh == 134
    assert fc.label.startswith("UK Carbon Intensity ")


def test_regional_answer_wrapped_in_a_list(router: respx.MockRouter, fake: FakeTime) -> None:
    wrapped = {"data": [uk_answer("london.json")["data"]]}
    router.get("/regional/intensity/2023-12-03T10:30Z/fw48h/regionid/13").respond(json=wrapped)
    assert make(fake).forecast("13", NOW, NOW + HALF).points[0].g_per_kwh == 134


@pytest.mark.parametrize("zone", ["0", "18", "not a zone", "12345", "!!"])
def test_unknown_zones(fake: FakeTime, zone: str) -> None:
    with pytest.raises(UnknownZone, match="GB"):
        make(fake).forecast(zone, NOW, NOW + HALF)


@pytest.mark.parametrize("zone", ["national", "uk", " gb "])
def test_national_aliases(router: respx.MockRouter, fake: FakeTime, zone: str) -> None:
    router.get("/intensity/2023-12-03T10:30Z/fw48h").respond(json=uk_answer())
    assert make(fake).forecast(zone, NOW, NOW + HALF).zone == "GB"


def test_history_uses_actuals_and_marks_estimates(router: respx.MockRouter, fake: FakeTime) -> None:
    answer = uk_points(T0 - 4 * HALF, [200, 210, 220, 230], actual=True)
    answer["data"][2]["intensity"]["actual"] = None
    route = router.get("/intensity/2023-12-03T08:30Z/2023-12-03T10:30Z").respond(json=answer)
    fc = make(fake).history("GB", T0 - 4 * HALF, T0)
    assert route.call_count == 1
    assert fc.realized and fc.label == "UK Carbon Intensity national history"
    assert [p.g_per_kwh for p in fc.points] == [200, 210, 220, 230]
    assert [p.is_estimated for p in fc.points] == [False, False, True, False]


def test_history_is_chunked_to_14_days(router: respx.MockRouter, fake: FakeTime) -> None:
    start = datetime(2023, 10, 1, tzinfo=UTC)

    def answer(request: httpx.Request) -> httpx.Response:
        frm = request.url.path.split("/")[2]
        t = datetime.fromisoformat(frm)
        return httpx.Response(200, json=uk_points(t, [100, 101], actual=True))

    route = router.route(method="GET", path__startswith="/intensity/").mock(side_effect=answer)
    fc = make(fake).history("GB", start, start + timedelta(days=30))
    paths = [c.request.url.path for c in route.calls]
    assert paths == [
        "/intensity/2023-10-01T00:00Z/2023-10-15T00:00Z",
        "/intensity/2023-10-15T00:00Z/2023-10-29T00:00Z",
        "/intensity/2023-10-29T00:00Z/2023-10-31T00:00Z",
    ]
    assert len(fc.points) == 6 and len(fc.gaps()) == 2


def test_regional_history_is_estimated(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/regional/intensity/2023-12-03T10:30Z/2023-12-03T11:30Z/postcode/RG10").respond(
        json=uk_answer("london.json")
    )
    fc = make(fake).history("RG10", T0, T0 + 2 * HALF)
    assert all(p.is_estimated for p in fc.points) and len(fc.points) == 2


def test_unknown_postcode_answered_with_an_empty_body(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    router.get("/regional/intensity/2023-12-03T10:30Z/fw48h/postcode/ZZ99").respond(content=b"")
    with pytest.raises(ProviderUnavailable, match="empty body") as info:
        make(fake).forecast("ZZ99", NOW, NOW + HALF)
    assert str(info.value).startswith("ukgrid forecast for zone 'ZZ99' unavailable: ")


def test_make_provider_needs_no_credentials(router: respx.MockRouter) -> None:
    class Cfg:
        base_url = "http://mirror.internal:8080/ci"
        timeout_s = 1.5

    provider = make_provider("ukgrid", ukgrid=Cfg())
    assert isinstance(provider, UKGridProvider)
    assert provider.api.timeout_s == 1.5


# -- bad and odd payloads -----------------------------------------------------------------------


def points(values: list[Any], start: datetime = T0) -> dict[str, Any]:
    return uk_points(start, values)


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (b"<html>502 Bad Gateway</html>", "malformed JSON"),
        ({"data": []}, "holds no data points"),
        ({"error": {"code": "400", "message": "bad"}}, "no 'data' list"),
        ({"data": [{"from": "2023-12-03T10:30Z"}]}, r"data\[0\] is not an object with"),
        (points([200, math.nan]), r"data\[1\]: value nan is not a finite"),
        (points([200, -7]), r"data\[1\]: value -7 is not a finite, non-negative"),
        (points([None, None]), "holds no data points"),
        (
            {"data": points([1])["data"] + points([2])["data"]},
            "two values for 2023-12-03T10:30:00",
        ),
        (points([1, 2], start=T0 - timedelta(days=3)), "the data covers 2023-11-30T10:30"),
    ],
)
def test_bad_payloads(router: respx.MockRouter, fake: FakeTime, answer: Any, cause: str) -> None:
    content = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    router.get("/intensity/2023-12-03T10:30Z/fw48h").respond(200, content=content)
    with pytest.raises(ProviderUnavailable, match=cause) as info:
        make(fake).forecast("GB", NOW, NOW + timedelta(hours=1))
    assert str(info.value).startswith("ukgrid forecast for zone 'GB' unavailable: ")


def test_unsorted_duplicates_mixed_offsets_gaps_and_past_start(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    data = points([90, 100, 110, 120, 130], start=T0 - 2 * HALF)["data"]
    data[3]["from"] = "2023-12-03T12:00+01:00"  # 11:00Z written with an offset
    del data[4]  # 11:30 missing: a gap
    data.append(points([140], start=T0 + 3 * HALF)["data"][0])
    shuffled = [data[3], data[0], data[2], data[1], dict(data[2]), data[4]]
    router.get("/intensity/2023-12-03T10:30Z/fw48h").respond(json={"data": shuffled})
    fc = make(fake).forecast("GB", NOW, NOW + 3 * HALF)
    assert [p.start for p in fc.points] == [T0, T0 + HALF, T0 + 3 * HALF]  # 09:30, 10:00 trimmed
    assert [p.g_per_kwh for p in fc.points] == [110, 120, 140]
    assert fc.gaps() == [(T0 + 2 * HALF, T0 + 3 * HALF)]
