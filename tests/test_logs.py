"""Structured log lines: key=value and JSON, one line per record, secrets never written."""

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecoq.errors import ValidationError
from ecoq.logs import (
    JsonFormatter,
    KeyValueFormatter,
    configure_logging,
    known_secrets,
    make_formatter,
    redact,
)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and level after a test that configures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ecoq.scheduler.daemon", logging.INFO, __file__, 1, msg, args, None)
    record.created = 1796032800.123456  # 2026-11-30T10:00:00.123Z
    record.__dict__.update(extra)
    return record


def test_key_value_line() -> None:
    line = KeyValueFormatter().format(_record("job %s started", 7, job_id=7, run_dir="/a b"))
    assert line == (
        'time=2026-11-30T10:00:00.123Z level=info logger=ecoq.scheduler.daemon msg="job 7 '
        'started" job_id=7 run_dir="/a b"'
    )


def test_json_line() -> None:
    line = JsonFormatter().format(_record("job %s started", 7, job_id=7, late=False))
    assert json.loads(line) == {
        "time": "2026-11-30T10:00:00.123Z",
        "level": "info",
        "logger": "ecoq.scheduler.daemon",
        "msg": "job 7 started",
        "job_id": 7,
        "late": False,
    }


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_stays_on_one_line(fmt: str) -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        import sys

        record = _record("tick failed")
        record.exc_info = sys.exc_info()
    line = make_formatter(fmt).format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in (json.loads(line)["exc"] if fmt == "json" else line)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_never_written(fmt: str) -> None:
    secret = "tok-9f8e7d6c5b4a"
    formatter = make_formatter(fmt, secrets=[secret])
    lines = [
        formatter.format(_record("db postgresql+psycopg://ecoq:pg-pass-1@db/ecoq is down")),
        formatter.format(_record("GET /v3/forecast with Authorization: Bearer abc.def.ghi")),
        formatter.format(_record("electricitymaps answered 401 for auth-token %s", secret)),
        formatter.format(_record("retrying", password="hunter22", api_key="k-1", zone="DE")),
        formatter.format(_record("login with password=hunter22 failed")),
    ]
    text = "\n".join(lines)
    for leaked in ("pg-pass-1", "abc.def.ghi", secret, "hunter22", "k-1"):
        assert leaked not in text
    assert "postgresql+psycopg://ecoq:***@db/ecoq" in text and "zone" in text


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "job 7 (tokenizer run) finished; password protected files kept; zone=DE"
    assert redact(text, ["abc"]) == text  # a 3-character secret would mask ordinary words


def test_known_secrets_come_from_the_environment_and_the_secrets_file(tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text('[electricitymaps]\ntoken = "em-file-token"\n')
    secrets_file.chmod(0o600)
    env = {"ECOQ_WATTTIME_PASSWORD": "wt-pass", "ECOQ_SECRETS_FILE": str(secrets_file)}
    found = known_secrets(env)
    assert "wt-pass" in found and "em-file-token" in found
    secrets_file.chmod(0o644)  # insecure: refused by the providers, and never raised from here
    assert known_secrets(env) == ["wt-pass"]


def test_configure_logging_replaces_its_own_handler(root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("text", stream=first, secrets=[])
    configure_logging("json", stream=second, secrets=["s3cr3t-value"], level=logging.DEBUG)
    logging.getLogger("ecoq.test").debug("password is s3cr3t-value", extra={"job_id": 3})
    assert first.getvalue() == ""
    record = json.loads(second.getvalue())
    assert record["msg"] == "password is ***" and record["job_id"] == 3
    assert record["level"] == "debug"


def test_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(ValidationError, match="--log-format 'xml'"):
        make_formatter("xml")
