"""The shared daemon's wire protocol: framing, limits and strict checks of every field."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ecoq.errors import JobNotFound, UsageError, ValidationError
from ecoq.shared import protocol
from ecoq.shared.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    SubmitRequest,
    failure,
    job_from_row,
    job_row,
    make_request,
    ok,
    parse_request,
    recv,
    recv_stream,
    result_of,
    send,
    send_stream,
)
from ecoq.states import JobState
from ecoq.views import JobView

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def submit_args(**over: Any) -> dict[str, Any]:
    req = SubmitRequest(
        command=["/bin/echo", "hi"],
        cwd="/home/alice",
        env={"PATH": "/usr/bin:/bin", "HOME": "/home/alice"},
        name="echo",
        deadline=NOW + timedelta(hours=12),
        zones=["DE"],
    )
    return {**req.to_args(), **over}


# --- framing --------------------------------------------------------------------------------


def test_a_message_round_trips(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send(a, make_request("show", {"id": 7}), limit=MAX_REQUEST_BYTES)
    assert recv(b, limit=MAX_REQUEST_BYTES) == {"v": 1, "op": "show", "args": {"id": 7}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'"text"', "JSON str, not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "not UTF-8 JSON"),  # deep nesting: no RecursionError
    ],
)
def test_garbage_bodies_are_protocol_errors(
    pair: tuple[socket.socket, socket.socket], body: bytes, message: str
) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match=message):
        recv(b, limit=MAX_REQUEST_BYTES)


def test_oversized_frame_is_refused_before_reading_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", MAX_REQUEST_BYTES + 1))  # no body follows: it is never read
    with pytest.raises(ProtocolError, match="exceeds the 4194304-byte limit"):
        recv(b, limit=MAX_REQUEST_BYTES)
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.encode({"x": "y" * 100}, limit=50)


def test_truncated_frame_says_how_much_arrived(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", 10) + b'{"v"')
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="closed after 4 of the 10 bytes"):
        recv(b, limit=MAX_REQUEST_BYTES)
    c, d = socket.socketpair()
    c.sendall(b"\x00\x00")
    c.close()
    with pytest.raises(ProtocolError, match="length header"):
        recv(d, limit=MAX_REQUEST_BYTES)
    d.close()


def exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def test_a_text_streams_in_bounded_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    import threading

    a, b = pair
    text = ("ü \udcff 𝔼 report line\n" * 200_000)[:-1]  # ~5 MB: several frames
    sender = threading.Thread(target=send_stream, args=(a, ok({"runs": 2}), text))
    sender.start()
    assert result_of(recv(b, limit=protocol.MAX_RESPONSE_BYTES)) == {"runs": 2}
    frames = []
    while True:
        (size,) = struct.unpack(">I", exactly(b, 4))
        frames.append(size)
        if size == 0:
            break
        exactly(b, size)
    sender.join()
    assert len(frames) > 4 and max(frames) <= protocol.STREAM_CHUNK_BYTES and frames[-1] == 0
    sender = threading.Thread(target=send_stream, args=(a, ok({}), text))
    sender.start()
    recv(b, limit=protocol.MAX_RESPONSE_BYTES)
    assert recv_stream(b) == text  # surrogates of undecodable argv bytes survive
    sender.join()
    send_stream(a, ok({}), "")
    recv(b, limit=protocol.MAX_RESPONSE_BYTES)
    assert recv_stream(b) == ""


def test_a_stream_is_cut_at_its_limits() -> None:
    def fed(data: bytes) -> socket.socket:
        a, b = socket.socketpair()
        with a:
            a.sendall(data)
        b.settimeout(5)
        return b

    cases = [
        (struct.pack(">I", protocol.STREAM_CHUNK_BYTES + 1), "frame of 1048577 bytes exceeds"),
        (struct.pack(">I", 6) + b"abcdef" + struct.pack(">I", 6) + b"ghijkl", "exceeds 10 bytes"),
        (struct.pack(">I", 6) + b"ab", "closed after 2 of the 6 bytes of the stream"),
        (struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">I", 0), "not UTF-8"),
    ]
    for data, message in cases:
        with fed(data) as sock, pytest.raises(ProtocolError, match=message):
            recv_stream(sock, limit=10)


def test_messages_with_undecodable_argv_bytes_still_encode(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    message = make_request("forecast", {"zone": "DE\udcff"})
    send(a, message, limit=MAX_REQUEST_BYTES)
    assert recv(b, limit=MAX_REQUEST_BYTES) == message


# --- requests ------------------------------------------------------------------------------


def test_every_operation_parses_with_its_defaults() -> None:
    assert parse_request(make_request("hello", {})).args == {}
    assert parse_request(make_request("queue", {})).args == {"all": False}
    logs = parse_request(make_request("logs", {"id": 3})).args
    assert logs == {"id": 3, "offset": 0, "max_bytes": protocol.LOG_CHUNK_BYTES}
    for op in ("show", "cancel", "hold", "release", "start", "plot"):
        assert parse_request(make_request(op, {"id": 1})).args == {"id": 1}
    report = parse_request(make_request("report", {})).args
    assert report == {
        "since": "30d",
        "until": None,
        "by": "project",
        "format": "table",
        "codecarbon": False,
    }
    forecast = parse_request(make_request("forecast", {"hours": 6})).args
    assert forecast == {
        "zone": None,
        "hours": 6.0,
        "duration": None,
        "deadline": None,
        "provider": None,
    }
    req = parse_request(make_request("submit", submit_args())).submit()
    assert req.deadline == NOW + timedelta(hours=12) and req.deadline.tzinfo is not None
    assert req.command == ["/bin/echo", "hi"] and req.duration_s is None


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"v": 1, "op": "show", "args": {"id": 1}, "uid": 0}, "unknown request key 'uid'"),
        ({"v": 2, "op": "show", "args": {"id": 1}}, "protocol version 2"),
        ({"op": "show", "args": {"id": 1}}, "protocol version None"),
        ({"v": 1, "op": "drop_tables", "args": {}}, "unknown operation 'drop_tables'"),
        ({"v": 1, "op": 7, "args": {}}, "unknown operation 7"),
        ({"v": 1, "op": "show", "args": []}, "'args'"),
        ({"v": 1, "op": "show", "args": {}}, "missing field 'id'"),
        ({"v": 1, "op": "show", "args": {"id": "7"}}, "'id': '7' is not an integer"),
        ({"v": 1, "op": "show", "args": {"id": True}}, "'id': True is not an integer"),
        ({"v": 1, "op": "show", "args": {"id": 0}}, "from 1 to"),
        ({"v": 1, "op": "show", "args": {"id": 2**70}}, "from 1 to"),
        ({"v": 1, "op": "show", "args": {"id": 1.5}}, "is not an integer"),
        ({"v": 1, "op": "show", "args": {"id": 1, "uid": 0}}, "unknown field 'uid'"),
        ({"v": 1, "op": "hello", "args": {"x": 1}}, "hello takes no fields"),
        ({"v": 1, "op": "queue", "args": {"all": "yes"}}, "true or false"),
        ({"v": 1, "op": "logs", "args": {"id": 1, "offset": -1}}, "'offset'"),
        ({"v": 1, "op": "logs", "args": {"id": 1, "max_bytes": 10**9}}, "'max_bytes'"),
        ({"v": 1, "op": "report", "args": {"uid": 0}}, "report: unknown field 'uid'"),
        ({"v": 1, "op": "report", "args": {"by": 3}}, "'by': 3 is not a string"),
        ({"v": 1, "op": "report", "args": {"since": "x" * 5000}}, "at most 4096"),
        ({"v": 1, "op": "report", "args": {"codecarbon": 1}}, "true or false"),
        ({"v": 1, "op": "report", "args": {"format": "csv\0"}}, "without NUL"),
        ({"v": 1, "op": "forecast", "args": {"hours": "24"}}, "'hours': '24' is not a number"),
        ({"v": 1, "op": "forecast", "args": {"zone": ["DE"]}}, "'zone'"),
        ({"v": 1, "op": "forecast", "args": {"out": "/etc/passwd"}}, "unknown field 'out'"),
        ({"v": 1, "op": "plot", "args": {}}, "plot: missing field 'id'"),
    ],
)
def test_bad_requests_name_what_is_wrong(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("(", r"\(")):
        parse_request(message)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("uid", 0, "unknown field 'uid'"),
        ("user", "root", "unknown field 'user'"),
        ("command", [], "a list of 1 to"),
        ("command", "rm -rf /", "a list of 1 to"),
        ("command", ["/bin/echo", 3], r"command\[1\]"),
        ("command", ["/bin/echo", "a\0b"], "without NUL"),
        ("cwd", "relative/dir", "an absolute path"),
        ("env", {"A=B": "x"}, "a variable name"),
        ("env", {"A": 1}, "a string without NUL"),
        ("env", ["PATH"], "an object"),
        ("deadline", "tomorrow", "ISO-8601"),
        ("deadline", "2026-12-01T08:00:00", "naive times are ambiguous"),
        ("zones", "DE", "a list of 1 to 16"),
        ("zones", ["DE"] * 17, "a list of 1 to 16"),
        ("name", "", "a non-empty string"),
        ("name", "x" * 300, "at most 256"),
        ("gpus", -1, "from 0 to 4096"),
        ("duration_s", 0, "from 1 to"),
        ("max_pauses", "3", "an integer"),
        ("resume_command", [], "a list of 1 to"),
    ],
)
def test_submit_fields_are_checked_one_by_one(field: str, value: Any, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_request(make_request("submit", submit_args(**{field: value})))


def test_submit_missing_a_required_field() -> None:
    args = submit_args()
    del args["cwd"]
    with pytest.raises(ProtocolError, match="submit: missing field 'cwd'"):
        parse_request(make_request("submit", args))


def test_submit_request_from_a_spec_leaves_the_identity_behind() -> None:
    from tests.conftest import make_spec

    spec = make_spec(NOW, zones=("DE", "FR"))
    req = SubmitRequest.from_spec(spec, duration_given=False)
    args = req.to_args()
    assert "uid" not in args and "user" not in args
    assert args["duration_s"] is None and args["zones"] == ["DE", "FR"]
    assert SubmitRequest.from_spec(spec, duration_given=True).duration_s == 3600
    assert parse_request(make_request("submit", json.loads(json.dumps(args)))).submit() == req


# --- responses ------------------------------------------------------------------------------


def test_errors_travel_as_their_class() -> None:
    for exc in (JobNotFound("no job 7"), ValidationError("bad"), ProtocolError("garbled")):
        wire = json.loads(json.dumps(failure(exc)))
        with pytest.raises(type(exc), match=str(exc)):
            result_of(wire)

    class Custom(UsageError):
        pass

    assert failure(Custom("x"))["error"]["type"] == "UsageError"
    assert result_of(json.loads(json.dumps(ok({"a": 1})))) == {"a": 1}
    with pytest.raises(ProtocolError, match="protocol 9"):
        result_of({"v": 9, "ok": True})
    with pytest.raises(ProtocolError, match="malformed error"):
        result_of({"v": 1, "ok": False, "error": "boom"})


def test_forecast_answers_round_trip() -> None:
    answer = protocol.ForecastAnswer({"zone": "DE", "points": []}, ["zone DE: ..."])
    wire = json.loads(json.dumps(answer.to_result()))
    assert protocol.ForecastAnswer.from_result(wire) == answer
    bads: list[Any] = [None, {"data": {}}, {"data": [], "lines": []}, {"data": {}, "lines": [1]}]
    for bad in bads:
        with pytest.raises(ProtocolError, match="malformed result"):
            protocol.ForecastAnswer.from_result(bad)


def test_job_rows_round_trip_through_json() -> None:
    view = JobView(
        id=3,
        name="train",
        state=JobState.PLANNED,
        command=["python3", "train.py"],
        cwd="/home/a",
        user="alice",
        project=None,
        zone="DE",
        site=None,
        gpus=1,
        submitted_at=NOW,
        not_before=None,
        deadline=NOW + timedelta(hours=5),
        duration_s=3600,
        duration_source="user",
        drop_if_late=False,
        late=False,
        held=False,
        run_now=False,
        request=None,
        planned_start=NOW + timedelta(hours=1),
        plan_g_per_kwh=200.0,
        now_g_per_kwh=300.0,
        plan_signal="average",
        plan_source="bundled",
        plan_label="typical profile",
        plan_reason="cleanest window",
        worker=None,
        started_at=None,
        finished_at=None,
        exit_code=None,
        reason=None,
        energy_j=None,
        realized_g=None,
        counterfactual_g=None,
        avoided_g=None,
        zones=["DE", "FR"],
        segments=[(NOW + timedelta(hours=1), NOW + timedelta(hours=2))],
    )
    assert job_from_row(json.loads(json.dumps(job_row(view)))) == view
    with pytest.raises(ProtocolError, match="malformed job"):
        job_from_row({"id": 1})
