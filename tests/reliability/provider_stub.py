"""WattTime and Electricity Maps on 127.0.0.1: a real `http.server` in a thread, answering like
the real APIs (shapes from ../shared/docs/providers.md, built with the helpers of the provider
tests), with faults switched on and off by the test.

The server's "now" is the test's fake clock, so its forecasts start at the daemon's now. Faults:

- `500`: HTTP 500 with a JSON error body;
- `429`: HTTP 429 with `Retry-After: 1` (the client waits and retries);
- `429-long`: HTTP 429 asking to wait 2 minutes (more than the client may wait: it gives up);
- `slow`: the answer comes after `slow_s` seconds, past the client's timeout;
- `truncated`: `Content-Length` promises the whole body, half is sent, the connection closes;
- `bad-json`: a complete answer whose JSON is cut short;
- `wrong-units`: WattTime values in `kg_co2_per_mwh`; Electricity Maps values of the `direct`
  emission factor when `lifecycle` was asked for.
"""

import base64
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.forecasting.helpers import em_point, wt_answer

FAULTS = ("ok", "500", "429", "429-long", "slow", "truncated", "bad-json", "wrong-units")
WT_USER, WT_PASSWORD, WT_TOKEN = "stub-user", "stub-Pa55word!", "stub-bearer-token"
EM_TOKEN = "stub-em-token"

Clock = Callable[[], datetime]
#: The intensity at a time, in the provider's unit (lbs/MWh for WattTime, g/kWh for EM).
Profile = Callable[[datetime], float]


def _floor(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // step) * step


class StubProviders:
    """Both providers on one port; `mode` is the fault now in force (`FAULTS`)."""

    def __init__(self, clock: Clock, profile: Profile, *, slow_s: float = 1.0) -> None:
        self.clock = clock
        self.profile = profile
        self.slow_s = slow_s
        self.mode = "ok"
        #: (fault mode, path) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> "StubProviders":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def record(self, path: str) -> str:
        with self._lock:
            self.requests.append((self.mode, path))
            return self.mode

    # -- answers ----------------------------------------------------------------------------
    def answer(self, path: str, query: dict[str, str], mode: str) -> dict[str, Any]:
        now = self.clock()
        if path == "/login":
            return {"token": WT_TOKEN}
        if path == "/v3/forecast":
            first = _floor(now, timedelta(minutes=5))
            hours = int(query.get("horizon_hours", "24"))
            points = [first + timedelta(minutes=5 * i) for i in range(hours * 12)]
            return self._wt(points, mode, generated_at=first)
        if path == "/v3/historical":
            start = _floor(datetime.fromisoformat(query["start"]), timedelta(minutes=5))
            end = min(datetime.fromisoformat(query["end"]), now)
            count = max(0, int((end - start) / timedelta(minutes=5)))
            return self._wt([start + timedelta(minutes=5 * i) for i in range(count)], mode)
        if path == "/v3/carbon-intensity/forecast":
            first = _floor(now, timedelta(hours=1))
            hours = int(query.get("horizonHours", "24"))
            items = [self._em(first + timedelta(hours=i), mode) for i in range(hours)]
            return {"zone": query.get("zone", "DE"), "forecast": items, "updatedAt": _iso(first)}
        if path in ("/v3/carbon-intensity/history", "/v3/carbon-intensity/past-range"):
            if path.endswith("history"):
                start, end = now - timedelta(hours=24), now
            else:
                start = datetime.fromisoformat(query["start"])
                end = min(datetime.fromisoformat(query["end"]), now)
            start = _floor(start, timedelta(hours=1))
            count = max(0, int((end - start) / timedelta(hours=1)))
            items = [self._em(start + timedelta(hours=i), mode) for i in range(count)]
            key = "history" if path.endswith("history") else "data"
            return {"zone": query.get("zone", "DE"), key: items}
        raise LookupError(path)

    def _wt(
        self, points: list[datetime], mode: str, generated_at: datetime | None = None
    ) -> dict[str, Any]:
        data = [{"point_time": _iso(t), "value": round(self.profile(t), 1)} for t in points]
        units = "kg_co2_per_mwh" if mode == "wrong-units" else "lbs_co2_per_mwh"
        answer = wt_answer(
            data, units=units, historical=generated_at is None, generated_at=_iso(generated_at)
        )
        return answer

    def _em(self, t: datetime, mode: str) -> dict[str, Any]:
        point = em_point(t, round(self.profile(t), 1))
        if mode == "wrong-units":
            point["emissionFactorType"] = "direct"
        return point


def _iso(t: datetime | None) -> str:
    return "" if t is None else t.astimezone(UTC).isoformat()


class _Handler(BaseHTTPRequestHandler):
    server_version = "ecoq-stub/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Quiet: the test asserts on ecoq's log, not the server's."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        stub: StubProviders = self.server.stub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        mode = stub.record(url.path)
        if not self._authorized(url.path):
            self._send(401, {"error": "Invalid auth-token"})
            return
        if mode == "500":
            self._send(500, {"error": "internal error"})
        elif mode in ("429", "429-long"):
            self._send(
                429, {"error": "TOO_MANY_REQUESTS"}, retry_after=120 if "long" in mode else 1
            )
        else:
            try:
                body = json.dumps(stub.answer(url.path, query, mode)).encode()
            except LookupError:
                self._send(404, {"error": f"no such endpoint {url.path}"})
                return
            if mode == "slow":
                time.sleep(stub.slow_s)  # the client has given up by now
            if mode == "truncated":
                self._raw(200, body, send=body[: len(body) // 2])
                self.close_connection = True
            elif mode == "bad-json":
                cut = body[: len(body) * 2 // 3]
                self._raw(200, cut, send=cut)
            else:
                self._raw(200, body, send=body)

    def _authorized(self, path: str) -> bool:
        header = self.headers.get("Authorization", "")
        if path == "/login":
            expected = base64.b64encode(f"{WT_USER}:{WT_PASSWORD}".encode()).decode()
            return header == f"Basic {expected}"
        if path.startswith("/v3/carbon-intensity"):
            return self.headers.get("auth-token") == EM_TOKEN
        return header == f"Bearer {WT_TOKEN}"

    def _send(self, status: int, payload: dict[str, Any], retry_after: int | None = None) -> None:
        body = json.dumps(payload).encode()
        extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._raw(status, body, send=body, headers=extra)

    def _raw(
        self, status: int, body: bytes, *, send: bytes, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(send)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left (the `slow` fault)
