"""The CLI's side of the shared daemon: each call is one connection, one request, one answer.

The CLI uses a `Client` instead of the database when `shared.socket` is set and the caller is
not root (`ecoq.cli.app.shared_client`). Errors come back as the EcoqError the daemon raised
(a `JobNotFound` stays a `JobNotFound`, so exit codes match the direct path).
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecoq.errors import EcoqError
from ecoq.shared.protocol import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    STREAMED,
    ForecastAnswer,
    ProtocolError,
    SubmitRequest,
    job_from_row,
    make_request,
    recv,
    recv_stream,
    result_of,
    send,
)

if TYPE_CHECKING:
    from ecoq.views import JobView

__all__ = ["Client", "LogChunk"]


@dataclass(frozen=True)
class LogChunk:
    """Output bytes of a job's latest run from some offset, and where the next read starts."""

    data: bytes
    offset: int
    state: str | None
    has_run: bool


class Client:
    """Talks to the shared daemon at `path`; `timeout_s` bounds each call (a submit plans the
    job first, so it may take a few seconds)."""

    def __init__(self, path: Path, *, timeout_s: float = 120.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result.

        Raises:
            EcoqError: the daemon cannot be reached (message says how to check it), or the
                error the daemon answered with; ProtocolError for a malformed answer.
        """
        return self._exchange(op, args)[0]

    def call_stream(self, op: str, **args: Any) -> tuple[Any, str]:
        """Like `call`, for an operation in `STREAMED`: its result and the text that follows."""
        result, text = self._exchange(op, args)
        assert text is not None
        return result, text

    def _exchange(self, op: str, args: dict[str, Any]) -> tuple[Any, str | None]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise EcoqError(
                    f"cannot reach the shared ecoq daemon at {self.path}: {exc.strerror or exc}; "
                    "is it running (`systemctl status ecoq`), and is shared.socket right?"
                ) from exc
            try:
                send(sock, make_request(op, args), limit=MAX_REQUEST_BYTES)
                answer = recv(sock, limit=MAX_RESPONSE_BYTES)
                result = result_of(answer)  # raises the daemon's error: then no text follows
                text = recv_stream(sock) if op in STREAMED else None
            except ProtocolError:
                raise
            except OSError as exc:
                raise EcoqError(
                    f"the shared ecoq daemon at {self.path} did not answer {op}: "
                    f"{exc.strerror or exc!r}; see its log (`journalctl -u ecoq`)"
                ) from exc
        finally:
            sock.close()
        return result, text

    def hello(self) -> dict[str, Any]:
        """Who the daemon takes this caller to be: uid, user, admin, version, protocol."""
        result = self.call("hello")
        if not isinstance(result, dict):
            raise ProtocolError("the daemon answered hello with a malformed result")
        return result

    def list_jobs(self, *, include_finished: bool = False) -> list[JobView]:
        """The caller's waiting and running jobs (all of them with `include_finished`); an
        admin's list holds every user's."""
        rows = self.call("queue", all=include_finished)
        if not isinstance(rows, list):
            raise ProtocolError("the daemon answered queue with a malformed result")
        return [job_from_row(row) for row in rows]

    def show(self, job_id: int) -> tuple[JobView, list[tuple[str, str]]]:
        """The job and `ecoq show`'s accounting lines. Raises JobNotFound (also for another
        user's job)."""
        result = self.call("show", id=job_id)
        try:
            lines = [(str(a), str(b)) for a, b in result["accounting"]]
            return job_from_row(result["job"]), lines
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(
                f"the daemon answered show with a malformed result: {exc!r}"
            ) from None

    def get_job(self, job_id: int) -> JobView:
        return self.show(job_id)[0]

    def request(self, action: str, job_id: int) -> str:
        """`cancel`, `hold`, `release` or `start` (`run_now`) a job; returns the outcome as
        `Queue` words it ("cancelled", "held", "released", "requested")."""
        op = "start" if action == "run_now" else action
        result = self.call(op, id=job_id)
        if not isinstance(result, dict) or not isinstance(result.get("outcome"), str):
            raise ProtocolError(f"the daemon answered {op} with a malformed result")
        return str(result["outcome"])

    def logs(self, job_id: int, offset: int = 0) -> LogChunk:
        """Output of the job's latest run from byte `offset` (at most 1 MiB per call)."""
        result = self.call("logs", id=job_id, offset=offset)
        try:
            return LogChunk(
                data=base64.b64decode(result["data"], validate=True),
                offset=int(result["offset"]),
                state=result["state"],
                has_run=bool(result["run"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(
                f"the daemon answered logs with a malformed result: {exc!r}"
            ) from None

    def report(
        self, *, since: str, until: str | None, by: str, fmt: str, codecarbon: bool
    ) -> tuple[str, int]:
        """`ecoq report`'s text and run count, made by the daemon over the caller's own jobs (an
        admin's: everyone's). Raises what `ecoq report` raises (bad flags: ValidationError)."""
        result, text = self.call_stream(
            "report", since=since, until=until, by=by, format=fmt, codecarbon=codecarbon
        )
        if not isinstance(result, dict) or type(result.get("runs")) is not int:
            raise ProtocolError("the daemon answered report with a malformed result")
        return text, result["runs"]

    def forecast(
        self,
        *,
        zone: str | None,
        hours: float,
        duration: str | None,
        deadline: str | None,
        provider: str | None,
    ) -> ForecastAnswer:
        """`ecoq forecast`'s output, from the daemon's providers and cache (with its
        credentials). Raises what `ecoq forecast` raises."""
        result = self.call(
            "forecast",
            zone=zone,
            hours=hours,
            duration=duration,
            deadline=deadline,
            provider=provider,
        )
        return ForecastAnswer.from_result(result)

    def job_plot(self, job_id: int) -> bytes:
        """The PNG `ecoq show --plot` draws for the job. Raises JobNotFound (also for another
        user's job), or EcoqError when the daemon cannot draw (no matplotlib)."""
        result = self.call("plot", id=job_id)
        try:
            return base64.b64decode(result["png"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(
                f"the daemon answered plot with a malformed result: {exc!r}"
            ) from None

    def submit(self, request: SubmitRequest) -> JobView:
        """Submit a job; it will run as this caller. Raises what `ecoq submit` raises."""
        result = self.call("submit", **request.to_args())
        if not isinstance(result, dict):
            raise ProtocolError("the daemon answered submit with a malformed result")
        return job_from_row(result.get("job"))
