"""Structured log lines: ``key=value`` text or JSON lines, one line per record, secrets removed.

`configure_logging(fmt)` installs one handler on the root logger (``ecoq daemon --log-format
text|json``). Every record becomes one line, so journald and log shippers never split a
traceback:

    time=2026-11-30T10:00:00.123Z level=info logger=ecoq.scheduler.daemon msg="job 7 started"
    {"time": "2026-11-30T10:00:00.123Z", "level": "info", "logger": "...", "msg": "job 7 started"}

Fields passed as ``extra={"job_id": 7}`` become keys of their own. Before anything is written,
`redact` removes secrets: passwords in URLs (``postgresql://u:***@db``), the values of
``Authorization``, ``auth-token``, ``password=``, ``token=`` and the like, the values of ecoq's
credential variables and of the secrets file, and any extra field whose name says it is a
secret (``password``, ``token``, ``secret``, ``api_key``, ``authorization``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

from ecoq.errors import ValidationError

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
MASK = "***"

#: LogRecord attributes that are not `extra` fields.
_RECORD_ATTRS = frozenset(
    set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)))
    | {"message", "asctime"}
)
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|authori[sz]ation|credential", re.I)
_URL_PASSWORD = re.compile(r"\b([a-z][\w+.-]*://[^\s:/@?#]*):[^\s@/]*@", re.I)
_HEADER_VALUE = re.compile(
    r"\b(authorization|auth-token|x-api-key|api[_-]?key|proxy-authorization)"
    r"(\s*[:=]\s*)(\"?)(?:(?:bearer|basic|token)\s+)?[^\s\",;&]+",
    re.I,
)
_KEY_VALUE = re.compile(
    r"\b([\w.-]*(?:password|passwd|secret|token|api_key|apikey)[\w.-]*)"
    r"(\s*[=:]\s*)(['\"]?)[^\s'\",;&]+",
    re.I,
)
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with secrets replaced by ``***``: URL passwords, credential headers and
    ``key=value`` pairs whose key names a secret, and every value in `secrets` (at least 4
    characters long)."""
    for value in sorted((s for s in secrets if len(s) >= _MIN_SECRET_LEN), key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _HEADER_VALUE.sub(rf"\1\2\3{MASK}", text)
    return _KEY_VALUE.sub(rf"\1\2\3{MASK}", text)


def known_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The credential values ecoq knows of: its credential variables in `env` (default
    `os.environ`) and the secrets file. Never raises: an unreadable or insecure secrets file
    adds nothing here (the command that needs it reports it)."""
    from ecoq.config import CREDENTIAL_ENV_VARS

    env = os.environ if env is None else env
    values = [env[name] for name in CREDENTIAL_ENV_VARS if env.get(name)]
    try:
        from ecoq.errors import EcoqError
        from ecoq.forecasting.secrets import load_credentials

        creds = load_credentials(env)
    except (EcoqError, OSError):
        return values
    for secret in (creds.watttime_username, creds.watttime_password, creds.electricitymaps_token):
        if secret is not None:
            values.append(secret.reveal())
    return values


class StructuredFormatter(logging.Formatter):
    """Base of the two formats: builds the fields of a record, secrets removed.

    Args:
        secrets: values to mask, or a callable returning them (read at each record, so secrets
            loaded later are masked too).
    """

    def __init__(self, secrets: Iterable[str] | Callable[[], Iterable[str]] = ()) -> None:
        super().__init__()
        self._secrets = secrets

    def _secret_values(self) -> list[str]:
        return list(self._secrets() if callable(self._secrets) else self._secrets)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """``time`` (ISO-8601 UTC, ms, ``Z``), ``level``, ``logger``, ``msg``, the extra
        fields, then ``exc`` (the traceback) and ``stack`` when present; all redacted."""
        secrets = self._secret_values()
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage(), secrets),
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_") or key in out:
                continue
            out[key] = self._clean(key, value, secrets)
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            out["exc"] = redact(text, secrets)
        elif record.exc_text:
            out["exc"] = redact(record.exc_text, secrets)
        if record.stack_info:
            out["stack"] = redact(record.stack_info, secrets)
        return out

    @staticmethod
    def _clean(key: str, value: Any, secrets: list[str]) -> Any:
        if _SECRET_KEY.search(key):
            return MASK
        if value is None or isinstance(value, bool | int | float):
            return value
        return redact(value if isinstance(value, str) else str(value), secrets)


def _logfmt_value(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if text and not re.search(r'[\s"=\\]|[^\x21-\x7e]', text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted, with \n, \" and \\ escaped


class KeyValueFormatter(StructuredFormatter):
    """``key=value`` pairs (logfmt); values with spaces, quotes or ``=`` are JSON-quoted, so a
    record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in self.fields(record).items())


class JsonFormatter(StructuredFormatter):
    """One JSON object per line; values that are not JSON become strings."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), ensure_ascii=False, default=str)


def make_formatter(
    fmt: str, secrets: Iterable[str] | Callable[[], Iterable[str]] = ()
) -> StructuredFormatter:
    """The formatter for ``--log-format`` `fmt`.

    Raises:
        ValidationError: `fmt` is not ``text`` or ``json``.
    """
    if fmt == "text":
        return KeyValueFormatter(secrets)
    if fmt == "json":
        return JsonFormatter(secrets)
    raise ValidationError(f"--log-format {fmt!r} is not known; use 'text' (key=value) or 'json'")


class _EcoqHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    fmt: str = "text",
    *,
    level: int = logging.INFO,
    stream: IO[str] | None = None,
    secrets: Iterable[str] | Callable[[], Iterable[str]] | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (default stderr) as `fmt` lines, at `level` and up.

    Replaces a handler installed by an earlier call; other handlers stay. APScheduler's own
    chatter is kept to warnings. `secrets` defaults to `known_secrets()`, read once now.

    Raises:
        ValidationError: `fmt` is not ``text`` or ``json``.
    """
    formatter = make_formatter(fmt, known_secrets() if secrets is None else secrets)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EcoqHandler)]:
        root.removeHandler(old)
    handler = _EcoqHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return handler


__all__ = [
    "LOG_FORMATS",
    "MASK",
    "JsonFormatter",
    "KeyValueFormatter",
    "LogFormat",
    "StructuredFormatter",
    "configure_logging",
    "known_secrets",
    "make_formatter",
    "redact",
]
