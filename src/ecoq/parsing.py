"""Parsing of what users type: durations (`90m`, `12h`, `1d`, `2h30m`), times and scripts.

Everything here raises `ValidationError` with the bad value and an example of a good one.
"""

import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ecoq.errors import ValidationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
#: Far enough for any real deadline; stops `99999999d` overflowing datetime arithmetic.
MAX_SPAN = timedelta(days=3660)


def parse_duration(text: str, *, flag: str = "--duration") -> timedelta:
    """`90m`, `12h`, `1d`, `1h30m`, `45s`, `2w` → timedelta (positive, at most ~10 years)."""
    raw = text.strip().lower()
    pos, total = 0, 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise ValidationError(
            f"{flag} {text!r} is not a duration; use a number with a unit s, m, h, d or w, "
            "e.g. 90m, 12h, 1d or 1h30m"
        )
    # Compare as seconds first: timedelta() overflows (or gets inf) long before 1e400s.
    if total > MAX_SPAN.total_seconds():
        raise ValidationError(f"{flag} {text!r} is more than 10 years; give a shorter span")
    span = timedelta(seconds=total)
    if span <= timedelta(0):
        raise ValidationError(f"{flag} {text!r} must be longer than zero, e.g. 30m")
    return span


def parse_time(text: str, *, flag: str) -> datetime:
    """An ISO-8601 timestamp with an offset (`2026-12-01T03:00+01:00`, `…Z`) → aware UTC."""
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw.replace("z", "Z"))
        # OverflowError when the offset moves it out of years 1-9999 (`0001-01-01T00:00+01:00`)
        utc = when.astimezone(UTC) if when.tzinfo is not None else None
    except (ValueError, OverflowError):
        raise ValidationError(
            f"{flag} {text!r} is not an ISO-8601 time; use e.g. 2026-12-01T03:00Z or a span "
            "like 12h"
        ) from None
    if utc is None:
        # A bare date takes no offset: `2026-12-01Z` is not ISO-8601, `2026-12-01T00:00Z` is.
        example = raw if "T" in raw.upper() or " " in raw else f"{raw}T00:00"
        raise ValidationError(
            f"{flag} {text!r} has no UTC offset, so its meaning depends on the machine; "
            f"add one, e.g. {example}Z or {example}+01:00"
        )
    return utc


def parse_when(text: str, now: datetime, *, flag: str) -> datetime:
    """A span after `now` (`12h`) or an absolute timestamp with an offset, at most `MAX_SPAN`
    after `now` (planning over centuries would never end, and times near year 9999 overflow)."""
    if _PART.match(text.strip().lower()) and not re.match(r"^\d{4}-", text.strip()):
        return now + parse_duration(text, flag=flag)
    when = parse_time(text, flag=flag)
    if when - now > MAX_SPAN:
        raise ValidationError(
            f"{flag} {text!r} is more than 10 years away; give a nearer time or a span like 12h"
        )
    return when


_INTERPRETERS = {".py": "python3", ".sh": "sh", ".bash": "bash"}


@dataclass(frozen=True)
class Script:
    """How to run what the user named: the argv prefix, and the absolute script path."""

    argv: list[str]
    path: str


def resolve_script(name: str, cwd: Path) -> Script:
    """Find SCRIPT: a path to an executable file, a script its interpreter can run (shebang or
    .py/.sh), or a command on PATH. Raises ValidationError naming the value and the fix."""
    path = (cwd / name) if not os.path.isabs(name) else Path(name)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # a name too long for the file system; is_dir() lets that through
        raise ValidationError(
            f"script {name!r} cannot be looked up ({exc.strerror}); give the path to the file "
            "to run"
        ) from None
    if is_dir:
        raise ValidationError(f"script {name!r} is a directory; give the file to run")
    if is_file:
        absolute = str(path.resolve())
        if os.access(absolute, os.X_OK):
            return Script([absolute], absolute)
        interpreter = _interpreter_of(path)
        if interpreter is None:
            raise ValidationError(
                f"script {name!r} is not executable and ecoq cannot tell its interpreter; "
                f"run `chmod +x {name}`, add a #! line, or submit e.g. `python3 {name}`"
            )
        return Script([interpreter, absolute], absolute)
    if os.sep not in name:
        found = shutil.which(name)
        if found:
            return Script([found], found)
    raise ValidationError(
        f"script {name!r} not found in {cwd} nor on PATH; give the path to the file to run"
    )


def _interpreter_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(256)
    except OSError as exc:
        raise ValidationError(f"script {str(path)!r} cannot be read: {exc.strerror}") from exc
    if first.startswith(b"#!"):
        parts = first[2:].decode(errors="replace").split()
        if parts:
            if os.path.basename(parts[0]) == "env" and len(parts) > 1:
                return shutil.which(parts[1])
            return parts[0] if os.access(parts[0], os.X_OK) else None
    found = _INTERPRETERS.get(path.suffix)
    return shutil.which(found) if found else None
