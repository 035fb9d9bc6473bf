"""The shared HTTP layer: retries, backoff, Retry-After, rate limit, and error translation."""

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import respx

from ecoq.errors import ConfigError, ForecastUnavailable
from ecoq.forecasting import ProviderUnavailable
from ecoq.forecasting.http import ApiClient, RateLimiter, RetryPolicy, check_base_url
from ecoq.forecasting.validation import Where
from tests.forecasting.helpers import FakeTime

BASE = "https://api.example.org"
WHERE = Where("example", "ZONE-1")


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(datetime(2026, 5, 1, 12, tzinfo=UTC))


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def client(fake: FakeTime, **kw: object) -> ApiClient:
    return ApiClient(
        "example",
        BASE,
        timeout_s=5,
        sleep=fake.sleep,
        now=fake.now,
        **kw,  # type: ignore[arg-type]
    )


def fails(api: ApiClient, *, status: int | None = None) -> ProviderUnavailable:
    with pytest.raises(ProviderUnavailable) as info:
        api.get_json("/data", WHERE)
    exc = info.value
    assert isinstance(exc, ForecastUnavailable)
    assert str(exc).startswith("example forecast for zone 'ZONE-1' unavailable: ")
    assert exc.provider == "example" and exc.zone == "ZONE-1"
    assert exc.status == status
    return exc


def test_success_returns_json_and_sends_params(router: respx.MockRouter, fake: FakeTime) -> None:
    route = router.get("/data").respond(json={"ok": 1})
    assert client(fake).get_json("/data", WHERE, params={"a": "b", "n": 3}) == {"ok": 1}
    request = route.calls.last.request
    assert request.url.params["a"] == "b" and request.url.params["n"] == "3"
    assert "ecoq" in request.headers["user-agent"]
    assert fake.sleeps == []


def test_500s_then_success_backs_off(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").mock(
        side_effect=[httpx.Response(500), httpx.Response(502), httpx.Response(200, json=[1])]
    )
    assert client(fake).get_json("/data", WHERE) == [1]
    assert fake.sleeps == [1.0, 2.0]


def test_persistent_503_gives_up_after_the_retries(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    route = router.get("/data").respond(503, json={"message": "maintenance"})
    exc = fails(client(fake), status=503)
    assert route.call_count == 4
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert "HTTP 503 Service Unavailable: maintenance; gave up after 4 attempts" in str(exc)


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(retries=10, backoff_s=1, max_wait_s=8)
    assert [policy.backoff(n) for n in range(6)] == [1, 2, 4, 8, 8, 8]


@pytest.mark.parametrize(
    ("header", "wait"),
    [("7", 7.0), ("Fri, 01 May 2026 12:00:30 GMT", 30.0), (None, 1.0), ("soon", 1.0)],
)
def test_429_honours_retry_after(
    router: respx.MockRouter, fake: FakeTime, header: str | None, wait: float
) -> None:
    headers = {"Retry-After": header} if header else {}
    router.get("/data").mock(
        side_effect=[httpx.Response(429, headers=headers), httpx.Response(200, json={})]
    )
    assert client(fake).get_json("/data", WHERE) == {}
    assert fake.sleeps == [wait]


def test_429_with_a_long_retry_after_fails_at_once(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    route = router.get("/data").respond(429, headers={"Retry-After": "3600"})
    exc = fails(client(fake), status=429)
    assert route.call_count == 1 and fake.sleeps == []
    assert "asks to wait 3600 s, longer than 60 s" in str(exc)


def test_503_with_retry_after_waits_that_long(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "5"}), httpx.Response(200, json=0)]
    )
    assert client(fake).get_json("/data", WHERE) == 0
    assert fake.sleeps == [5.0]


def test_timeouts_are_retried(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").mock(
        side_effect=[
            httpx.ReadTimeout("slow"),
            httpx.ConnectTimeout("slow"),
            httpx.Response(200, json=2),
        ]
    )
    assert client(fake).get_json("/data", WHERE) == 2
    assert fake.sleeps == [1.0, 2.0]


def test_persistent_timeout_names_the_timeout(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").mock(side_effect=httpx.ReadTimeout("slow"))
    exc = fails(client(fake, retry=RetryPolicy(retries=1)))
    assert "no answer within the 5 s timeout; gave up after 2 attempts" in str(exc)


def test_dropped_connection_is_retried(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").mock(
        side_effect=[httpx.RemoteProtocolError("reset"), httpx.Response(200, json=3)]
    )
    assert client(fake).get_json("/data", WHERE) == 3


def test_connection_refused_fails_without_retrying(
    router: respx.MockRouter, fake: FakeTime
) -> None:
    route = router.get("/data").mock(side_effect=httpx.ConnectError("refused"))
    exc = fails(client(fake))
    assert route.call_count == 1 and fake.sleeps == []
    assert "cannot reach https://api.example.org" in str(exc) and "ConnectError" in str(exc)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"error": "INVALID_QUERY_PARAMS", "msg": "bad region"}, "HTTP 400 Bad Request: "),
        (404, "<html>not here</html>", "HTTP 404 Not Found: <html>not here</html>"),
        (401, {"error": "Invalid auth-token"}, "HTTP 401 Unauthorized: Invalid auth-token"),
        (400, {"error": {"message": "Please enter a valid postcode"}}, "valid postcode"),
    ],
)
def test_client_errors_fail_at_once_with_the_apis_message(
    router: respx.MockRouter, fake: FakeTime, status: int, body: object, expected: str
) -> None:
    kw = {"json": body} if not isinstance(body, str) else {"text": body}
    route = router.get("/data").respond(status, **kw)  # type: ignore[arg-type]
    exc = fails(client(fake), status=status)
    assert expected in str(exc)
    assert route.call_count == 1


def test_malformed_json(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").respond(200, content=b'{"data": [1, 2')
    assert "malformed JSON in the response" in str(fails(client(fake)))


def test_empty_body(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").respond(200, content=b"")
    assert "HTTP 200 with an empty body" in str(fails(client(fake)))


def test_redirects_are_not_followed(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").respond(302, headers={"Location": "https://elsewhere.example/data"})
    exc = fails(client(fake, headers={"auth-token": "t0k3n-value"}))
    assert "redirected to https://elsewhere.example/data" in str(exc)


def test_secret_values_are_scrubbed_from_messages(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").respond(403, json={"error": "token t0k3n-value not allowed"})
    exc = fails(client(fake, secrets=lambda: ["t0k3n-value"]), status=403)
    assert "t0k3n-value" not in str(exc)
    assert "token *** not allowed" in str(exc)


def test_rate_limiter_is_a_sliding_window(fake: FakeTime) -> None:
    limiter = RateLimiter(3, 1.0, clock=fake.monotonic, sleep=fake.sleep)
    for _ in range(3):
        limiter.acquire()
    assert fake.sleeps == []
    fake.advance(0.4)
    limiter.acquire()  # the 4th call must wait until the 1st leaves the window
    assert fake.sleeps == [pytest.approx(0.6)]
    fake.advance(1.0)
    limiter.acquire()
    assert len(fake.sleeps) == 1


def test_client_applies_the_rate_limit(router: respx.MockRouter, fake: FakeTime) -> None:
    router.get("/data").respond(json={})
    api = client(fake, rate_limit=RateLimiter(10, 1.0, clock=fake.monotonic, sleep=fake.sleep))
    for _ in range(25):
        api.get_json("/data", WHERE)
    assert len(fake.sleeps) == 2  # calls 11 and 21 waited for the window


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://api.watttime.org/v3", "without it: 'https://api.watttime.org'"),
        ("https://api.watttime.org/v3/", "without it"),
        ("api.watttime.org", "not an http(s) URL"),
    ],
)
def test_check_base_url(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        check_base_url("watttime", url)
    assert check_base_url("x", "https://proxy.example/wt/") == "https://proxy.example/wt"


def test_real_sockets_are_blocked() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(AssertionError, match="reach the network"),
    ):
        sock.connect(("192.0.2.1", 443))
