"""The shared daemon's wire protocol: one request and one response per connection.

A message is a frame (`ecoq.shared.framing`): 4 bytes, the length of the body as a big-endian
unsigned integer, then the body, a UTF-8 JSON object of at most `MAX_REQUEST_BYTES` (requests)
or `MAX_RESPONSE_BYTES` (responses)::

    request   {"v": 1, "op": "cancel", "args": {"id": 7}}
    response  {"v": 1, "ok": true, "result": {"outcome": "requested"}}
              {"v": 1, "ok": false, "error": {"type": "JobNotFound", "message": "..."}}

The operations in `STREAMED` (`report`) follow a successful answer with their text as a
stream of frames (`send_stream`), as a by-job report of 100,000 runs is tens of MB.

Every request is checked field by field (`parse_request`): unknown operations or fields, wrong
types, out-of-range numbers and oversized values are refused with a `ProtocolError` that names
the field. No request carries a uid or a user name: the server learns who is asking from the
kernel. Stdlib only (plus `ecoq.errors`, `ecoq.shared.framing` and `ecoq.views`), so the
client stays fast to import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecoq import errors
from ecoq.errors import ConfigError, EcoqError
from ecoq.shared.framing import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_STREAM_BYTES,
    STREAM_CHUNK_BYTES,
    ProtocolError,
    encode,
    recv,
    recv_stream,
    send,
    send_stream,
)

if TYPE_CHECKING:
    from ecoq.scheduler.jobspec import JobSpec
    from ecoq.views import JobView

__all__ = [
    "LOG_CHUNK_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_STREAM_BYTES",
    "OPS",
    "STREAMED",
    "STREAM_CHUNK_BYTES",
    "VERSION",
    "ForecastAnswer",
    "ProtocolError",
    "Request",
    "Streamed",
    "SubmitRequest",
    "check_socket_path",
    "encode",
    "failure",
    "job_from_row",
    "job_row",
    "make_request",
    "ok",
    "parse_request",
    "recv",
    "recv_stream",
    "result_of",
    "send",
    "send_stream",
]

VERSION = 1
LOG_CHUNK_BYTES = 1024 * 1024  # most output bytes one `logs` call returns
#: Operations whose successful answer is followed by a streamed text (`send_stream`).
STREAMED = frozenset({"report"})
_MAX_ID = 2**31 - 1  # a 32-bit INTEGER column (PostgreSQL)
_MAX_TEXT = 4096  # paths, names, arguments
_MAX_ITEMS = 4096  # argv words, environment variables


_MAX_PATH_BYTES = 107  # sockaddr_un.sun_path holds 108 bytes, NUL included


def check_socket_path(path: str) -> Path:
    """`shared.socket` as a Path. Raises ConfigError when it is not an absolute path short
    enough for a Unix socket."""
    if not path.startswith("/"):
        raise ConfigError(
            f"shared.socket = {path!r} is not an absolute path; use e.g. /run/ecoq/ecoq.sock"
        )
    if len(os.fsencode(path)) > _MAX_PATH_BYTES:
        raise ConfigError(
            f"shared.socket = {path!r} is longer than a Unix socket path may be "
            f"({_MAX_PATH_BYTES} bytes); use a shorter one such as /run/ecoq/ecoq.sock"
        )
    return Path(path)


# -- field checks --------------------------------------------------------------------------

Check = Callable[[str, Any], Any]
_REQUIRED = object()


def _fail(name: str, value: Any, expected: str) -> ProtocolError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ProtocolError(f"field {name!r}: {shown} is not {expected}")


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, value, "true or false")
    return value


def _integer(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise _fail(name, value, f"an integer from {low} to {high}")
        return value

    return check


def _text(max_len: int = _MAX_TEXT, *, empty: bool = False) -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > max_len or "\0" in value:
            raise _fail(name, value, f"a string of at most {max_len} characters without NUL")
        if not value and not empty:
            raise _fail(name, value, "a non-empty string")
        return value

    return check


def _path(name: str, value: Any) -> str:
    text: str = _text()(name, value)
    if not text.startswith("/"):
        raise _fail(name, value, "an absolute path")
    return text


def _words(*, max_items: int = _MAX_ITEMS, item: Check | None = None) -> Check:
    word = item or _text(empty=True)

    def check(name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not 0 < len(value) <= max_items:
            raise _fail(name, value, f"a list of 1 to {max_items} strings")
        return [word(f"{name}[{i}]", v) for i, v in enumerate(value)]

    return check


def _environment(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > _MAX_ITEMS:
        raise _fail(name, value, f"an object of at most {_MAX_ITEMS} variables")
    for key, val in value.items():
        if not key or "=" in key or "\0" in key:
            raise _fail(name, key, "a variable name (no '=' or NUL)")
        if not isinstance(val, str) or "\0" in val:
            raise _fail(f"{name}[{key!r}]", val, "a string without NUL")
    return dict(value)


def _time(name: str, value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise _fail(name, value, "an ISO-8601 time with an offset")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(name, value, "an ISO-8601 time with an offset") from None
    if when.tzinfo is None:
        raise _fail(name, value, "an ISO-8601 time with an offset (naive times are ambiguous)")
    return when.astimezone(UTC)


def _number(name: str, value: Any) -> float:
    # NaN and infinities pass: the operation refuses them with the CLI's own message.
    if type(value) not in (int, float):
        raise _fail(name, value, "a number")
    return float(value)


def _optional(check: Check) -> Check:
    def optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return optional


def _zones(name: str, value: Any) -> list[str]:
    if value == []:
        return []
    return list(_words(max_items=16, item=_text(64))(name, value))


_JOB_ID = _integer(1, _MAX_ID)
_YEAR_S = 366 * 24 * 3600


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    """What `ecoq submit` sends: the parsed flags, the argv, the working directory and the
    submitter's environment (credential variables removed on both sides). `zones` may be empty
    (the daemon's `site.zone`); `duration_s` None: learned from earlier runs, else the default."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    name: str
    deadline: datetime
    zones: list[str]
    project: str | None = None
    not_before: datetime | None = None
    duration_s: int | None = None
    gpus: int = 0
    drop_if_late: bool = False
    interruptible: bool = False
    max_pauses: int | None = None
    min_segment_s: int = 0
    checkpoint_signal: str | None = None
    resume_command: list[str] | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec, *, duration_given: bool) -> SubmitRequest:
        """What `ecoq submit` sends for `spec` (its user and uid stay behind: the daemon takes
        them from the kernel); without `duration_given` the daemon learns or defaults it."""
        return cls(
            command=list(spec.command),
            cwd=spec.cwd,
            env=dict(spec.env),
            name=spec.name,
            deadline=spec.deadline,
            zones=spec.allowed_zones,
            project=spec.project,
            not_before=spec.not_before,
            duration_s=max(1, int(spec.duration.total_seconds())) if duration_given else None,
            gpus=spec.gpus,
            drop_if_late=spec.drop_if_late,
            interruptible=spec.interruptible,
            max_pauses=spec.max_pauses,
            min_segment_s=int(spec.min_segment.total_seconds()),
            checkpoint_signal=spec.checkpoint_signal,
            resume_command=list(spec.resume_command) if spec.resume_command else None,
        )

    def to_args(self) -> dict[str, Any]:
        """The request's `args` (times as ISO-8601 strings)."""
        args = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("deadline", "not_before"):
            if args[key] is not None:
                args[key] = args[key].isoformat()
        return args


#: For each operation, its fields: (check, default or _REQUIRED).
OPS: dict[str, dict[str, tuple[Check, Any]]] = {
    "hello": {},
    "queue": {"all": (_boolean, False)},
    "show": {"id": (_JOB_ID, _REQUIRED)},
    "logs": {
        "id": (_JOB_ID, _REQUIRED),
        "offset": (_integer(0, 2**62), 0),
        "max_bytes": (_integer(1, LOG_CHUNK_BYTES), LOG_CHUNK_BYTES),
    },
    "cancel": {"id": (_JOB_ID, _REQUIRED)},
    "hold": {"id": (_JOB_ID, _REQUIRED)},
    "release": {"id": (_JOB_ID, _REQUIRED)},
    "start": {"id": (_JOB_ID, _REQUIRED)},
    "report": {
        "since": (_text(empty=True), "30d"),
        "until": (_optional(_text(empty=True)), None),
        "by": (_text(empty=True), "project"),
        "format": (_text(empty=True), "table"),
        "codecarbon": (_boolean, False),
    },
    "forecast": {
        "zone": (_optional(_text(empty=True)), None),
        "hours": (_number, 24.0),
        "duration": (_optional(_text(empty=True)), None),
        "deadline": (_optional(_text(empty=True)), None),
        "provider": (_optional(_text(empty=True)), None),
    },
    "plot": {"id": (_JOB_ID, _REQUIRED)},
    "submit": {
        "command": (_words(), _REQUIRED),
        "cwd": (_path, _REQUIRED),
        "env": (_environment, _REQUIRED),
        "name": (_text(256), _REQUIRED),
        "deadline": (_time, _REQUIRED),
        "zones": (_zones, _REQUIRED),
        "project": (_optional(_text(256)), None),
        "not_before": (_optional(_time), None),
        "duration_s": (_optional(_integer(1, 10 * _YEAR_S)), None),
        "gpus": (_integer(0, 4096), 0),
        "drop_if_late": (_boolean, False),
        "interruptible": (_boolean, False),
        "max_pauses": (_optional(_integer(0, 10**6)), None),
        "min_segment_s": (_integer(0, 10 * _YEAR_S), 0),
        "checkpoint_signal": (_optional(_text(32)), None),
        "resume_command": (_optional(_words()), None),
    },
}


@dataclass(frozen=True)
class Request:
    """A checked request: its operation and its arguments, converted (times are datetimes)."""

    op: str
    args: dict[str, Any]

    def submit(self) -> SubmitRequest:
        return SubmitRequest(**self.args)


def make_request(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The message for `op` with `args` (what the client sends)."""
    return {"v": VERSION, "op": op, "args": dict(args)}


def parse_request(message: Mapping[str, Any]) -> Request:
    """Check a received request. Raises ProtocolError naming the first bad part."""
    extra = sorted(set(message) - {"v", "op", "args"})
    if extra:
        raise ProtocolError(f"unknown request key {extra[0]!r}; a request has v, op and args")
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not this daemon's ({VERSION}); use the ecoq "
            "that is installed with the daemon"
        )
    op = message.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}; known: {', '.join(sorted(OPS))}")
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise _fail("args", args, "an object")
    schema = OPS[op]
    unknown = sorted(set(args) - set(schema))
    if unknown:
        raise ProtocolError(
            f"{op}: unknown field {unknown[0]!r}; {op} takes "
            + (", ".join(schema) if schema else "no fields")
        )
    checked: dict[str, Any] = {}
    for name, (check, default) in schema.items():
        if name in args:
            checked[name] = check(name, args[name])
        elif default is _REQUIRED:
            raise ProtocolError(f"{op}: missing field {name!r}")
        else:
            checked[name] = default
    return Request(op, checked)


# -- responses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Streamed:
    """A result whose `text` follows the answer `head` as a stream (`send_stream`)."""

    head: dict[str, Any]
    text: str


@dataclass(frozen=True)
class ForecastAnswer:
    """What `ecoq forecast` prints: `data` with `--json`, else `lines`."""

    data: dict[str, Any]
    lines: list[str]

    def to_result(self) -> dict[str, Any]:
        return {"data": self.data, "lines": self.lines}

    @classmethod
    def from_result(cls, result: Any) -> ForecastAnswer:
        """Read `to_result()` back. Raises ProtocolError when it is not one."""
        if (
            not isinstance(result, dict)
            or not isinstance(result.get("data"), dict)
            or not isinstance(result.get("lines"), list)
            or not all(isinstance(line, str) for line in result["lines"])
        ):
            raise ProtocolError("the daemon answered forecast with a malformed result")
        return cls(result["data"], result["lines"])


#: The errors a response may name; anything else arrives as a plain EcoqError.
ERRORS: dict[str, type[EcoqError]] = {
    cls.__name__: cls
    for cls in (
        EcoqError,
        ProtocolError,
        errors.UsageError,
        errors.ConfigError,
        errors.ValidationError,
        errors.UnknownZone,
        errors.JobNotFound,
        errors.IllegalTransition,
        errors.ForecastUnavailable,
        errors.DatabaseError,
        errors.ExecutorError,
    )
}


def ok(result: Any) -> dict[str, Any]:
    return {"v": VERSION, "ok": True, "result": result}


def failure(exc: EcoqError) -> dict[str, Any]:
    """The error response for `exc`, as its nearest class the client knows."""
    kind = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in ERRORS)
    return {"v": VERSION, "ok": False, "error": {"type": kind, "message": str(exc)}}


def result_of(message: Mapping[str, Any]) -> Any:
    """The result of a response; raises its error as the EcoqError it names, or ProtocolError
    when the response is malformed."""
    if message.get("v") != VERSION or not isinstance(message.get("ok"), bool):
        raise ProtocolError(
            f"the daemon answered in protocol {message.get('v')!r}, not {VERSION}; use the ecoq "
            "that is installed with the daemon"
        )
    if message["ok"]:
        return message.get("result")
    error = message.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise ProtocolError("the daemon answered with a malformed error")
    raise ERRORS.get(str(error.get("type")), EcoqError)(error["message"])


# -- job rows --------------------------------------------------------------------------------


def job_row(view: JobView) -> dict[str, Any]:
    """A `JobView` as JSON that `JobView.from_row` reads back unchanged."""
    row: dict[str, Any] = {}
    for f in fields(view):
        value = getattr(view, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif f.name == "segments" and value is not None:
            value = [[a.isoformat(), b.isoformat()] for a, b in value]
        elif f.name == "state":
            value = str(value)
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        row[f.name] = value
    return row


def job_from_row(row: Any) -> JobView:
    """Read a `job_row` back. Raises ProtocolError when it is not one."""
    from ecoq.views import JobView

    try:
        return JobView.from_row(row)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"the daemon sent a malformed job: {exc!r}") from None
