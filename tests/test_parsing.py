"""What users type: durations, times, scripts."""

import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecoq.errors import ValidationError
from ecoq.parsing import parse_duration, parse_time, parse_when, resolve_script

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("12h", 43200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("45s", 45),
        ("2w", 1209600),
        ("1.5h", 5400),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "12", "h", "12x", "-1h", "1h 30m", "0m", "99999d", "1e3h"])
def test_bad_durations_name_the_value_and_the_fix(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_duration(text, flag="--duration")
    assert repr(text) in str(info.value)
    assert "--duration" in str(info.value)


@given(st.text(max_size=30))
def test_any_text_parses_or_gives_a_validation_error(text: str) -> None:
    with contextlib.suppress(ValidationError):
        parse_duration(text)


def test_times_need_an_offset_and_become_utc() -> None:
    assert parse_time("2026-12-01T03:00+01:00", flag="--deadline") == datetime(
        2026, 12, 1, 2, 0, tzinfo=UTC
    )
    assert parse_time("2026-12-01T03:00Z", flag="--deadline").tzinfo is not None
    with pytest.raises(ValidationError, match="no UTC offset"):
        parse_time("2026-12-01T03:00", flag="--deadline")
    with pytest.raises(ValidationError, match="not an ISO-8601 time"):
        parse_time("tomorrow", flag="--deadline")


def test_when_is_a_span_or_a_time() -> None:
    assert parse_when("12h", NOW, flag="--deadline") == NOW + timedelta(hours=12)
    assert parse_when("2026-12-01T00:00Z", NOW, flag="--deadline") == datetime(
        2026, 12, 1, tzinfo=UTC
    )


def test_scripts(tmp_path: Path) -> None:
    exe = tmp_path / "run.sh"
    exe.write_text("#!/bin/sh\necho hi\n")
    exe.chmod(0o755)
    assert resolve_script("run.sh", tmp_path).argv == [str(exe)]

    py = tmp_path / "train.py"
    py.write_text("print('hi')\n")
    argv = resolve_script("train.py", tmp_path).argv
    assert argv[1] == str(py) and os.path.basename(argv[0]).startswith("python")

    shebang = tmp_path / "noexec"
    shebang.write_text("#!/usr/bin/env sh\necho hi\n")
    assert resolve_script("noexec", tmp_path).argv[1] == str(shebang)

    assert resolve_script("true", tmp_path).argv[0].endswith("/true")


def test_bad_scripts(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not found"):
        resolve_script("missing.sh", tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValidationError, match="is a directory"):
        resolve_script("d", tmp_path)
    data = tmp_path / "data.bin"
    data.write_text("x")
    with pytest.raises(ValidationError, match="chmod \\+x"):
        resolve_script("data.bin", tmp_path)
