"""Property tests of what users type: durations, times (every offset, DST transitions, the ends
of the calendar), signals, script names and job specs. Each input gives a value with the
documented properties or a `ValidationError` naming the flag and the value; nothing else escapes.
"""

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ecoq.errors import ValidationError
from ecoq.parsing import MAX_SPAN, parse_duration, parse_time, parse_when, resolve_script
from ecoq.scheduler.jobspec import MAX_PAUSES, JobSpec, parse_signal, validate_spec

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 30 min before the EU's spring DST change
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
ZONES = [
    *("Europe/Berlin", "Europe/London", "America/New_York", "America/St_Johns"),
    *("Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham", "Pacific/Kiritimati"),
]
#: Typed text: any character but NUL (which no argv can hold).
typed = st.text(st.characters(exclude_characters="\x00"), max_size=40)
nasty_times = st.sampled_from(
    [
        *("0001-01-01T00:00Z", "0001-01-01T00:00+01:00", "9999-12-31T23:59:59.999999Z"),
        *("9999-12-31T23:59-01:00", "9999-12-31T23:00+14:00", "2026-02-29T00:00Z"),
        *("2026-03-29T02:30", "2026-03-29T02:30+01:00", "2026-10-25T02:30+02:00"),
        *("2026-12-01", "2026-12-01Z", "2026-12-01T00:00+24:00", "2026-W48-1T00:00Z", "T00:00Z"),
    ]
)


# -- durations ----------------------------------------------------------------------------------


@given(text=st.one_of(typed, st.from_regex(r"\A[0-9.]{1,30}[smhdwSMHDW]{0,2}\Z")))
@example(text="9" * 400 + "s")  # was OverflowError: float infinity into timedelta
@example(text="99999999999999d")  # was OverflowError: "Python int too large to convert to C int"
@example(text="١٢h")  # Unicode digits are digits
def test_any_duration_text_parses_or_names_the_flag(text: str) -> None:
    try:
        span = parse_duration(text, flag="--min-segment")
    except ValidationError as exc:
        assert str(exc).startswith(f"--min-segment {text!r} ")
        return
    assert timedelta(0) < span <= MAX_SPAN


@given(parts=st.lists(st.tuples(st.integers(0, 500), st.sampled_from("smhdw")), min_size=1))
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    seconds = sum(n * UNITS[unit] for n, unit in parts)
    if not 0 < seconds <= MAX_SPAN.total_seconds():
        with pytest.raises(ValidationError, match=re.escape(repr(text))):
            parse_duration(text)
        return
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(f"  {text.upper()} ") == timedelta(seconds=seconds)


# -- times ------------------------------------------------------------------------------------


@given(text=st.one_of(typed, nasty_times))
@example(text="0001-01-01T00:00+01:00")  # was OverflowError in astimezone
@example(text="9999-12-31T23:59-01:00")
def test_any_time_text_parses_or_names_the_flag(text: str) -> None:
    try:
        when = parse_time(text, flag="--until")
    except ValidationError as exc:
        assert str(exc).startswith(f"--until {text!r} ")
        return
    assert when.tzinfo is UTC


@given(
    when=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    offset_min=st.integers(-24 * 60 + 1, 24 * 60 - 1),
    timespec=st.sampled_from(["minutes", "seconds", "microseconds"]),
)
def test_every_offset_means_the_same_instant(
    when: datetime, offset_min: int, timespec: str
) -> None:
    from datetime import timezone

    local = when.astimezone(timezone(timedelta(minutes=offset_min)))
    text = local.isoformat(timespec=timespec)
    expected = datetime.fromisoformat(text).astimezone(UTC)  # what the text says, truncated
    assert parse_time(text, flag="--deadline") == expected
    assert parse_time(text.replace("+00:00", "Z"), flag="--deadline") == expected


@given(
    zone=st.sampled_from(ZONES),
    utc=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
    ),
)
def test_local_times_around_dst_transitions(zone: str, utc: datetime) -> None:
    """A wall-clock time with its offset is one instant, in a repeated (fall-back) hour too;
    without an offset it is refused, never guessed."""
    local = utc.astimezone(ZoneInfo(zone))
    assert parse_time(local.isoformat(), flag="--deadline") == utc
    naive = local.replace(tzinfo=None).isoformat()
    with pytest.raises(ValidationError, match="has no UTC offset"):
        parse_time(naive, flag="--deadline")


def test_dst_gap_and_fold_examples() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30 does not exist on 2026-03-29 in Berlin; with an offset it is still one instant.
    assert parse_time("2026-03-29T02:30+01:00", flag="-") == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    # 02:30 happens twice on 2026-10-25: the offset tells which.
    first = datetime(2026, 10, 25, 2, 30, tzinfo=berlin)
    second = first.replace(fold=1)
    assert parse_time(first.isoformat(), flag="-") == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert parse_time(second.isoformat(), flag="-") == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    # A 12h span is 12 real hours, whatever the wall clocks do meanwhile.
    assert parse_when("12h", NOW, flag="--deadline") == NOW + timedelta(hours=12)


@given(text=st.one_of(typed, nasty_times, st.from_regex(r"\A\d{1,12}[smhdw]\Z")))
@example(text="9999-12-31T23:00Z")  # was OverflowError later, planning up to year 9999
def test_any_when_is_near_enough_or_refused(text: str) -> None:
    try:
        when = parse_when(text, NOW, flag="--deadline")
    except ValidationError as exc:
        assert str(exc).startswith(f"--deadline {text!r} ")
        return
    assert when.tzinfo is not None and when - NOW <= MAX_SPAN


def test_far_absolute_deadline_is_refused() -> None:
    with pytest.raises(ValidationError, match="more than 10 years away"):
        parse_when("2037-01-01T00:00Z", NOW, flag="--deadline")
    assert parse_when("2036-01-01T00:00Z", NOW, flag="--deadline").year == 2036


# -- signals, scripts and specs -----------------------------------------------------------------


@given(text=st.one_of(typed, st.integers(-5, 100).map(str)))
def test_any_signal_text_is_a_catchable_signal_or_refused(text: str) -> None:
    import signal

    try:
        name = parse_signal(text)
    except ValidationError as exc:
        assert str(exc).startswith(f"--checkpoint-signal {text!r}")
        return
    assert name not in ("SIGKILL", "SIGSTOP") and signal.Signals[name]


SCRIPT_NAMES = st.one_of(
    st.text(
        st.characters(exclude_characters="\x00/", codec="utf-8"),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from(["$(touch pwned)", "`id`", "a;b", "a|b", "a&b", "-x", "*", "~x", "'\""]),
    st.binary(min_size=1, max_size=20).map(
        lambda b: b.replace(b"\0", b"_").replace(b"/", b"_").decode("utf-8", "surrogateescape")
    ),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(name=SCRIPT_NAMES)
def test_any_script_name_resolves_to_itself(tmp_path: Path, name: str) -> None:
    """A file of any name (metacharacters, Unicode, non-UTF-8 bytes) resolves to its own
    absolute path, as a one-element argv: nothing is run, nothing is split."""
    assume(name not in (".", "..") and len(os.fsencode(name)) <= 255)
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    try:
        script = resolve_script(name, tmp_path)
    finally:
        path.unlink()
    assert script.argv == [str(path)] and script.path == str(path)


@given(name=st.one_of(typed, st.just("A" * 5000), st.just("x/" * 3000)))
@example(name="A" * 5000)  # was OSError: File name too long, from Path.is_dir()
def test_any_missing_script_name_is_refused_clearly(name: str) -> None:
    root = Path("/nonexistent-ecoq-fuzz")
    assume(name.strip() not in ("", ".", "..") and not name.startswith("/"))
    try:
        resolve_script(name, root)
    except ValidationError as exc:
        assert str(exc).startswith(f"script {name!r} ")
    # else: a command of that name is on PATH, which is fine


@given(
    name=st.one_of(typed, st.just("n\udcff")),
    project=st.one_of(st.none(), typed, st.just("\udc80")),
    zone=st.one_of(st.just("DE"), typed),
    gpus=st.integers(-(2**40), 2**40),
    deadline_h=st.floats(-1e3, 1e5, allow_nan=False),
    duration_s=st.integers(-10, 10**9),
    max_pauses=st.one_of(st.none(), st.integers(-(2**70), 2**70)),
    min_segment_s=st.integers(-10, 10**6),
    interruptible=st.booleans(),
)
@example(  # was OverflowError when stored: too large for an SQL INTEGER
    name="n", project=None, zone="DE", gpus=0, deadline_h=10, duration_s=60,
    max_pauses=10**20, min_segment_s=0, interruptible=True,
)  # fmt: skip
def test_any_spec_is_valid_or_refused(
    name: str,
    project: str | None,
    zone: str,
    gpus: int,
    deadline_h: float,
    duration_s: int,
    max_pauses: int | None,
    min_segment_s: int,
    interruptible: bool,
) -> None:
    spec = JobSpec(
        command=["/bin/true"],
        cwd="/tmp",
        env={},
        user="u",
        uid=1000,
        zone=zone,
        deadline=NOW + timedelta(hours=deadline_h),
        duration=timedelta(seconds=duration_s),
        duration_source="user",
        name=name,
        project=project,
        gpus=gpus,
        interruptible=interruptible,
        max_pauses=max_pauses,
        min_segment=timedelta(seconds=min_segment_s),
    )
    try:
        validate_spec(spec, NOW, box_gpus=4)
    except ValidationError as exc:
        assert str(exc)
        return
    for text in (name, project or "", zone):
        text.encode("utf-8")  # storable as text
        assert "\x00" not in text
    assert 0 <= gpus <= 4 and spec.deadline >= NOW + spec.duration
    assert max_pauses is None or 0 <= max_pauses <= MAX_PAUSES
