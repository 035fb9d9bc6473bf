"""The files of `ecoq simulate`: TRACE.csv, FORECASTS.csv, JOBS.csv in; SCHEDULE.csv out.

Formats (docs/design.md, "`ecoq simulate` contract"):

- TRACE.csv: `time` (ISO-8601; naive means UTC) and one column per zone, gCO2eq/kWh; each value
  holds until the next time (the last one for the median step, and beyond).
- FORECASTS.csv: `issued_at,time,zone,value`; every `time` must be one of the trace's times.
- JOBS.csv: `id,submit,duration_h,deadline,zones,interruptible,power_kw[,max_pauses]`;
  `deadline` is absolute (finish by); `zones` separated by `|`; `power_kw` defaults to 1.
- SCHEDULE.csv: `id,zone,start,end`, ISO-8601 UTC ending in `Z`.
"""

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecoq.errors import ValidationError
from ecoq.scheduler.scoring import Floats, Ints

if TYPE_CHECKING:
    from ecoq.scheduler.simulate import ScheduledSegment

__all__ = [
    "ForecastIssue",
    "ForecastLog",
    "SimJob",
    "Trace",
    "read_forecasts",
    "read_jobs",
    "read_trace",
    "write_schedule",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def parse_time(raw: str, where: str) -> datetime:
    """An ISO-8601 time; naive means UTC.

    Raises:
        ValidationError: not ISO-8601 (the message names `where`).
    """
    try:
        t = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValidationError(f"{where}: {raw!r} is not an ISO-8601 time") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _epoch(t: datetime) -> float:
    return (t - _EPOCH) / timedelta(seconds=1)


def iso(t: datetime) -> str:
    """`t` as ISO-8601 UTC ending in `Z`."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Trace:
    """True intensity per zone. `times`: epoch seconds, strictly increasing."""

    times: Floats
    zones: dict[str, Floats]
    step_s: float

    @property
    def end_s(self) -> float:
        """End of the last value's interval (last time + median step)."""
        return float(self.times[-1]) + self.step_s

    def integral(self, zone: str, a: float, b: float) -> float:
        """∫ intensity dt over `[a, b)` epoch seconds, (g/kWh)·s. Before the first time the first
        value holds; after the end, the last value."""
        if b <= a:
            return 0.0
        t, v = self.times, self.zones[zone]
        cum = self._cumulative(zone)

        def at(x: float) -> float:
            if x <= t[0]:
                return (x - float(t[0])) * float(v[0])
            if x >= self.end_s:
                return float(cum[-1]) + (x - self.end_s) * float(v[-1])
            i = int(np.searchsorted(t, x, side="right")) - 1
            return float(cum[i]) + (x - float(t[i])) * float(v[i])

        return at(b) - at(a)

    def _cumulative(self, zone: str) -> Floats:
        cache: dict[str, Floats] = self.__dict__.setdefault("_cum", {})
        if zone not in cache:
            ends = np.append(self.times[1:], self.end_s)
            cache[zone] = np.concatenate(([0.0], np.cumsum((ends - self.times) * self.zones[zone])))
        return cache[zone]


@dataclass(frozen=True)
class ForecastIssue:
    """One zone's forecast issued at `issued_s`: values at trace indices `index`."""

    issued_s: float
    zone: str
    index: Ints
    values: Floats


@dataclass(frozen=True)
class ForecastLog:
    """Every forecast issue, sorted by issue time (then zone)."""

    issues: list[ForecastIssue]


@dataclass(frozen=True)
class SimJob:
    """A job of JOBS.csv; times in epoch seconds."""

    id: str
    submit_s: float
    duration_s: float
    deadline_s: float
    zones: tuple[str, ...]
    interruptible: bool = False
    power_kw: float = 1.0
    max_pauses: int | None = None


def _rows(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise ValidationError(f"{path}: missing column(s) {', '.join(missing)}; has {fields}")
    return rows


def read_trace(path: Path) -> Trace:
    """Read TRACE.csv.

    Raises:
        ValidationError: unreadable, no `time` or zone column, a bad time or number, times
            not strictly increasing, or fewer than two rows.
    """
    rows = _rows(path, ["time"])
    zones = [c for c in (rows[0].keys() if rows else []) if c != "time"]
    if len(rows) < 2 or not zones:
        raise ValidationError(f"{path}: needs a time column, a zone column and two rows or more")
    times = np.array(
        [_epoch(parse_time(r["time"], f"{path} line {i + 2}")) for i, r in enumerate(rows)]
    )
    if np.any(np.diff(times) <= 0):
        raise ValidationError(f"{path}: times must be strictly increasing")
    values: dict[str, Floats] = {}
    for z in zones:
        try:
            values[z] = np.array([float(r[z]) for r in rows])
        except (TypeError, ValueError):
            raise ValidationError(
                f"{path}: column {z!r} has a value that is not a number"
            ) from None
        if not np.all(np.isfinite(values[z])):
            raise ValidationError(f"{path}: column {z!r} has a missing or infinite value")
    return Trace(times, values, float(np.median(np.diff(times))))


def read_forecasts(path: Path, trace: Trace) -> ForecastLog:
    """Read FORECASTS.csv (long format) against `trace`'s times.

    Raises:
        ValidationError: unreadable, a missing column, a bad time or value, or a `time` that
            is not one of the trace's times.
    """
    rows = _rows(path, ["issued_at", "time", "zone", "value"])
    grouped: dict[tuple[float, str], list[tuple[int, float]]] = {}
    lookup = {float(t): i for i, t in enumerate(trace.times)}
    for n, r in enumerate(rows, start=2):
        where = f"{path} line {n}"
        issued = _epoch(parse_time(r["issued_at"], where))
        target = _epoch(parse_time(r["time"], where))
        if target not in lookup:
            raise ValidationError(f"{where}: time {r['time']} is not a time of the trace")
        try:
            value = float(r["value"])
        except ValueError:
            raise ValidationError(f"{where}: value {r['value']!r} is not a number") from None
        grouped.setdefault((issued, r["zone"]), []).append((lookup[target], value))
    issues = [
        ForecastIssue(
            issued,
            zone,
            np.array([i for i, _ in pts], dtype=np.int64),
            np.array([v for _, v in pts]),
        )
        for (issued, zone), pts in sorted(grouped.items())
    ]
    return ForecastLog(issues)


def read_jobs(path: Path) -> list[SimJob]:
    """Read JOBS.csv.

    Raises:
        ValidationError: unreadable, a missing column, or a bad value (named with its line).
    """
    cols = ["id", "submit", "duration_h", "deadline", "zones", "interruptible", "power_kw"]
    jobs: list[SimJob] = []
    for n, r in enumerate(_rows(path, cols), start=2):
        where = f"{path} line {n}"
        try:
            duration_h = float(r["duration_h"])
            power = float(r["power_kw"]) if (r.get("power_kw") or "").strip() else 1.0
            pauses_raw = (r.get("max_pauses") or "").strip()
            pauses = int(pauses_raw) if pauses_raw else None
        except ValueError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        flag = (r["interruptible"] or "").strip().lower()
        if flag not in _TRUE | _FALSE:
            raise ValidationError(f"{where}: interruptible {flag!r} is not true or false")
        zones = tuple(z.strip() for z in r["zones"].split("|") if z.strip())
        if not zones or not duration_h > 0 or not power > 0 or (pauses is not None and pauses < 0):
            raise ValidationError(
                f"{where}: needs zones, duration_h > 0, power_kw > 0, max_pauses ≥ 0"
            )
        jobs.append(
            SimJob(
                id=r["id"],
                submit_s=_epoch(parse_time(r["submit"], where)),
                duration_s=duration_h * 3600.0,
                deadline_s=_epoch(parse_time(r["deadline"], where)),
                zones=zones,
                interruptible=flag in _TRUE,
                power_kw=power,
                max_pauses=pauses,
            )
        )
    return jobs


def write_schedule(path: Path, segments: "Iterable[ScheduledSegment]") -> None:
    """Write SCHEDULE.csv: one row per executed segment.

    Raises:
        ValidationError: the file cannot be written.
    """
    try:
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["id", "zone", "start", "end"])
            for s in segments:
                out.writerow([s.id, s.zone, iso(s.start), iso(s.end)])
    except OSError as exc:
        raise ValidationError(f"cannot write {path}: {exc.strerror}") from None
