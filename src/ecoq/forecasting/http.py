"""HTTP for the forecast providers: one `httpx.Client` each, and every fault made one error.

`ApiClient.get_json` sends a GET with the configured timeout and:

- retries timeouts, dropped connections and HTTP 500/502/503/504 with exponential backoff
  (`backoff_s`, 2×, 4×, ...; `retries` extra attempts);
- on HTTP 429 waits `Retry-After` (seconds or an HTTP date), else the backoff, then retries; a wait
  longer than `max_wait_s` is not waited for (the daemon must not stall) and is an error;
- keeps a client-side sliding-window rate limit (WattTime allows ~10 requests/s per user);
- never follows redirects, so a credential header cannot leak to another host;
- turns everything else (connection refused, DNS, other HTTP statuses, malformed JSON) into
  `ProviderUnavailable` naming provider, zone and cause, with any credential value scrubbed.

Clock and sleep are injectable, so tests never sleep.
"""

import email.utils
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from ecoq.errors import ConfigError
from ecoq.forecasting.validation import Where

__all__ = [
    "DEFAULT_RETRY",
    "ApiClient",
    "RateLimiter",
    "RetryPolicy",
    "check_base_url",
    "make_client",
]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({500, 502, 503, 504})
USER_AGENT = "ecoq (carbon-aware job scheduler)"
#: Transport faults worth another try: the request may not have reached the server.
_TRANSIENT = (httpx.RemoteProtocolError, httpx.ReadError)


def check_base_url(provider: str, base_url: str) -> str:
    """`base_url` without a trailing slash.

    Raises:
        ConfigError: not an http(s) URL, or it ends in `/v3` (the setting is the API root).
    """
    url = base_url.strip().rstrip("/")
    key = f"forecast.{provider}.base_url"
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{key} = {base_url!r} is not an http(s) URL; use e.g. https://host")
    if url.endswith("/v3"):
        raise ConfigError(
            f"{key} = {base_url!r} ends in /v3; give the API root without it: {url[:-3]!r}"
        )
    return url


def make_client(
    base_url: str,
    timeout_s: float,
    *,
    headers: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An `httpx.Client` for one provider: `timeout_s` seconds per phase, no redirects."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
        transport=transport,
        follow_redirects=False,
    )


class RateLimiter:
    """At most `max_calls` requests in any sliding window of `period_s` seconds."""

    def __init__(
        self,
        max_calls: int,
        period_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_calls = max_calls
        self.period_s = period_s
        self._clock = clock
        self._sleep = sleep
        self._calls: deque[float] = deque()

    def acquire(self) -> None:
        """Wait (with the injected sleep) until one more request fits, and count it."""
        while True:
            now = self._clock()
            while self._calls and self._calls[0] <= now - self.period_s:
                self._calls.popleft()
            if len(self._calls) < self.max_calls:
                self._calls.append(now)
                return
            self._sleep(self._calls[0] + self.period_s - now)


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts, waiting `backoff_s` × 2^n (capped at `max_wait_s` seconds)."""

    retries: int = 3
    backoff_s: float = 1.0
    max_wait_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        return float(min(self.backoff_s * 2**attempt, self.max_wait_s))


DEFAULT_RETRY = RetryPolicy()


class ApiClient:
    """GET JSON from one provider's API with retries, rate limit and error translation.

    Args:
        provider: the provider's name, for messages (`watttime`).
        base_url: the API root (`https://api.watttime.org`).
        timeout_s: seconds allowed for connecting, and for each read, of a request.
        headers: sent with every request (credential headers go here; never logged).
        rate_limit: None, or a shared `RateLimiter`.
        retry: the retry policy.
        transport: an httpx transport (tests: `httpx.MockTransport`); None: the network.
        sleep: how to wait (tests pass a recorder).
        now: the wall clock, for `Retry-After` dates.
        secrets: returns the credential values to scrub from error messages.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        rate_limit: RateLimiter | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        secrets: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self.provider = provider
        self.timeout_s = timeout_s
        self.client = make_client(base_url, timeout_s, headers=headers, transport=transport)
        self.rate_limit = rate_limit
        self.retry = retry
        self._sleep = sleep
        self._now = now
        self._secrets = secrets

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def get_json(
        self,
        path: str,
        where: Where,
        *,
        params: Mapping[str, str | int | float] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
    ) -> Any:
        """The decoded JSON body of `GET path` (relative to the base URL).

        Raises:
            ProviderUnavailable: after the retries, or at once for a non-retryable fault; its
                `status` is the last HTTP status (e.g. 401, 403, 429, 503) or None.
        """
        attempts = self.retry.retries + 1
        for attempt in range(attempts):
            if self.rate_limit is not None:
                self.rate_limit.acquire()
            log.debug("%s: GET %s %s", self.provider, path, dict(params or {}))
            status: int | None = None
            try:
                response = self.client.get(path, params=params, headers=headers, auth=auth)
            except httpx.TimeoutException:
                cause = f"no answer within the {self.timeout_s:g} s timeout"
                wait = self.retry.backoff(attempt)
            except _TRANSIENT as exc:
                cause = f"the connection failed ({type(exc).__name__})"
                wait = self.retry.backoff(attempt)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                self._fail(
                    where,
                    f"cannot reach {self.client.base_url} ({type(exc).__name__}: {exc}); "
                    "check the network and the provider's base_url",
                )
            else:
                status = response.status_code
                if response.is_success:
                    return self._decode(response, where)
                detail = self._scrub(self._detail(response))
                cause = f"HTTP {status} {response.reason_phrase}{detail}"
                if status == 429 or (
                    status in RETRY_STATUSES and "retry-after" in response.headers
                ):
                    wait = self._retry_after(response, attempt)
                    if wait > self.retry.max_wait_s:
                        self._fail(
                            where,
                            f"{cause}; the provider asks to wait {wait:.0f} s, longer than "
                            f"{self.retry.max_wait_s:.0f} s",
                            status,
                        )
                elif status in RETRY_STATUSES:
                    wait = self.retry.backoff(attempt)
                elif response.is_redirect:
                    where_to = response.headers.get("location", "?")
                    self._fail(
                        where, f"{cause}: redirected to {where_to}; set base_url to that host"
                    )
                else:
                    self._fail(where, cause, status)
            if attempt + 1 < attempts:
                log.info(
                    "%s: %s for zone %s; retrying in %.3g s (attempt %d of %d)",
                    self.provider,
                    cause,
                    where.zone,
                    wait,
                    attempt + 2,
                    attempts,
                )
                self._sleep(wait)
        self._fail(where, f"{cause}; gave up after {attempts} attempts", status)

    def _decode(self, response: httpx.Response, where: Where) -> Any:
        if not response.content.strip():
            self._fail(where, f"HTTP {response.status_code} with an empty body")
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            start = response.text[:60].replace("\n", " ")
            self._fail(where, f"malformed JSON in the response ({exc}); it starts {start!r}")

    def _detail(self, response: httpx.Response) -> str:
        """`: <the API's error message>` from a JSON error body, else the text's start, else ''."""
        try:
            body = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = response.text.strip().replace("\n", " ")[:120]
            return f": {text}" if text else ""
        found: list[str] = []
        if isinstance(body, dict):
            for key in ("error", "message", "msg"):
                value = body.get(key)
                if isinstance(value, dict):
                    value = value.get("message")
                if isinstance(value, str) and value not in found:
                    found.append(value)
        return f": {'; '.join(found)[:200]}" if found else ""

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        raw = response.headers.get("retry-after", "").strip()
        if raw:
            try:
                return max(0.0, float(raw))
            except ValueError:
                pass
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, (when - self._now()).total_seconds())
        return self.retry.backoff(attempt)

    def _scrub(self, text: str) -> str:
        """`text` with every credential value replaced by `***`."""
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    def _fail(self, where: Where, cause: str, status: int | None = None) -> NoReturn:
        where.fail(self._scrub(cause), status=status)
