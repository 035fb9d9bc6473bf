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
import math
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
    "check_horizon",
    "read_forecasts",
    "read_jobs",
    "read_trace",
    "write_schedule",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}
#: The longest job window (submit to deadline) and duration: 10 years, as `ecoq submit` allows.
MAX_SPAN_S = 3660 * 86400.0
#: Intensities above this (gCO2eq/kWh) are not real (coal is about 1,000) and would overflow sums.
MAX_G_PER_KWH = 1e6
#: How far past the trace's end a job's deadline may lie, in trace steps: the planner extends
#: the trace step by step (persistence), so a far deadline on a fine trace would never finish.
MAX_STEPS_PAST_END = 100_000


def parse_time(raw: str, where: str) -> datetime:
    """An ISO-8601 time; naive means UTC.

    Raises:
        ValidationError: not ISO-8601 (the message names `where`).
    """
    try:
        t = datetime.fromisoformat(raw.strip())
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: the offset moves it out of years 1-9999
        raise ValidationError(
            f"{where}: {raw!r} is not an ISO-8601 time; write it like 2026-05-01T10:00Z"
        ) from None


def _intensity(raw: str, where: str) -> float:
    """A gCO2eq/kWh value: a finite number from 0 to `MAX_G_PER_KWH`. Raises ValidationError."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_G_PER_KWH:  # also refuses NaN
        raise ValidationError(
            f"{where}: {raw!r} is not an intensity; write gCO2eq/kWh as a number from 0 to "
            f"{MAX_G_PER_KWH:,.0f}, like 231.5"
        )
    return value


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
    """The rows of the CSV file at `path`, each with every header column.

    Raises:
        ValidationError: unreadable, not UTF-8, not CSV, a missing, blank or repeated column
            name, or a row with more or fewer fields than the header (named with its line).
    """
    reader: csv.DictReader[str] | None = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet BOM
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as a UTF-8 CSV file"
        ) from None
    except csv.Error as exc:
        line = reader.reader.line_num if reader is not None else 0  # DictReader.line_num lags
        raise ValidationError(f"{path} line {line}: not a CSV row ({exc}); fix the row") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise ValidationError(f"{path}: missing column(s) {', '.join(missing)}; has {fields}")
    repeated = sorted({c for c in fields if fields.count(c) > 1})
    if repeated or any(not c.strip() for c in fields):
        what = f"column {repeated[0]!r} appears twice" if repeated else "a column has no name"
        raise ValidationError(f"{path} line 1: {what}; give every column its own name")
    for n, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ValidationError(
                f"{path} line {n}: the header has {len(fields)} fields but this row "
                f"{'more' if None in row else 'fewer'}; fix the row"
            )
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
        values[z] = np.array(
            [_intensity(r[z], f"{path} line {i + 2}, column {z!r}") for i, r in enumerate(rows)]
        )
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
        value = _intensity(r["value"], f"{where}, value")
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
    lines: dict[str, int] = {}
    for n, r in enumerate(_rows(path, cols), start=2):
        where = f"{path} line {n}"
        duration_h = _number(r["duration_h"], f"{where}: duration_h", "hours, like 1.5")
        power_raw = (r.get("power_kw") or "").strip()
        power = _number(power_raw, f"{where}: power_kw", "kW, like 0.3") if power_raw else 1.0
        pauses_raw = (r.get("max_pauses") or "").strip()
        pauses = None
        if pauses_raw:
            if not pauses_raw.isdecimal() or len(pauses_raw) > 9:
                raise ValidationError(
                    f"{where}: max_pauses {pauses_raw!r} is not a whole number ≥ 0; write e.g. "
                    "3, or leave it empty for no limit"
                )
            pauses = int(pauses_raw)
        flag = r["interruptible"].strip().lower()
        if flag not in _TRUE | _FALSE:
            raise ValidationError(f"{where}: interruptible {flag!r} is not true or false")
        zones = tuple(z.strip() for z in r["zones"].split("|") if z.strip())
        if not zones or not duration_h > 0 or not power > 0:
            raise ValidationError(f"{where}: needs zones, duration_h > 0 and power_kw > 0")
        if r["id"] in lines:
            first = lines[r["id"]]
            raise ValidationError(
                f"{where}: id {r['id']!r} is also on line {first}; give each job its own id"
            )
        lines[r["id"]] = n
        submit_s = _epoch(parse_time(r["submit"], where))
        deadline_s = _epoch(parse_time(r["deadline"], where))
        if duration_h * 3600.0 > MAX_SPAN_S or deadline_s - submit_s > MAX_SPAN_S:
            raise ValidationError(
                f"{where}: the job spans more than 10 years (duration_h, or submit to deadline); "
                "give a shorter duration_h or an earlier deadline"
            )
        jobs.append(
            SimJob(
                id=r["id"],
                submit_s=submit_s,
                duration_s=duration_h * 3600.0,
                deadline_s=deadline_s,
                zones=zones,
                interruptible=flag in _TRUE,
                power_kw=power,
                max_pauses=pauses,
            )
        )
    return jobs


def _number(raw: str, what: str, example: str) -> float:
    """A finite number. Raises ValidationError naming `what` and the `example`."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValidationError(f"{what} {raw!r} is not a number; write {example}")
    return value


def check_horizon(trace: Trace, jobs: Iterable[SimJob]) -> None:
    """Check that no job's deadline lies more than `MAX_STEPS_PAST_END` trace steps past the
    trace's end (beyond it the planner extends the trace one step at a time).

    Raises:
        ValidationError: names the job and the fix.
    """
    for job in jobs:
        steps = (job.deadline_s - trace.end_s) / trace.step_s
        if steps > MAX_STEPS_PAST_END:
            raise ValidationError(
                f"job {job.id}: its deadline is {steps:,.0f} trace steps past the end of the "
                f"intensity trace (at most {MAX_STEPS_PAST_END:,}); extend the trace or give "
                "the job an earlier deadline"
            )


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
