"""Forecasts from a file the user maintains (air-gapped sites, demos, replaying real data).

CSV (header names are case-insensitive, extra columns are ignored):

    # signal: marginal          <- optional first line; default "average"
    time,value                  <- one series, used for any zone
    2026-05-01T10:00Z,231.5
    ...

or `time,zone,value` (rows filtered by zone), optionally with a `signal` column (one value for the
whole file). A file with an `issued_at` column holds *issued forecasts* (the `ecoq simulate`
format `issued_at,time,zone,value`): each call uses the newest issue made at or before `as_of`
(default: now), so recorded forecasts replay as the daemon would have seen them.

JSON (a file ending in `.json`, or starting with `[` or `{`): a list of objects with the same keys
(`time`, `value`, optional `zone`, `issued_at`, `signal`), or `{"signal": ..., "points": [...]}`.

Times are ISO-8601: naive means UTC, offsets are converted to UTC. Values are gCO2eq/kWh. The step
is the most common difference between consecutive times; a larger difference is a gap the
forecast does not cover.
"""

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting import Forecast, IntensityPoint, Signal

if TYPE_CHECKING:
    from _csv import Reader

__all__ = ["FileProvider"]

_SIGNALS = ("average", "marginal")
#: Values above this (gCO2eq/kWh) are not real intensities (coal is about 1,000): a unit mistake,
#: and sums of them would overflow in the planner.
MAX_G_PER_KWH = 1e6


def _parse_time(raw: str) -> datetime:
    t = datetime.fromisoformat(raw.strip())
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class _Row:
    ref: str  # "line 3" (CSV) or "item 3" (JSON), for messages
    time: datetime
    value: float
    zone: str
    issued_at: datetime | None


def _csv_rows(reader: "Reader", where: str) -> Iterator[list[str]]:
    """The rows of `reader`; a CSV error (a field over the size limit) as ForecastUnavailable."""
    try:
        yield from reader
    except csv.Error as exc:
        raise ForecastUnavailable(
            f"{where}, line {reader.line_num}: not a CSV row ({exc}); fix the row"
        ) from exc


class FileProvider:
    """Reads `path` at every call, so an updated file is picked up without a restart.

    Args:
        path: the CSV or JSON file.
        now: the clock giving the default `as_of` for files of issued forecasts.
    """

    name: str = "file"

    def __init__(
        self, path: Path, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.path = path
        self.label = f"file {path}"
        self._now = now

    def forecast(
        self, zone: str, start: datetime, end: datetime, *, as_of: datetime | None = None
    ) -> Forecast:
        """The file's points for `zone` whose intervals overlap `[start, end)`.

        If `end <= start`, the point in force at `start`. `issued_at` is the chosen issue's time
        for a file of issued forecasts (the newest at or before `as_of`, default now), else the
        file's modification time.

        Raises:
            ForecastUnavailable: the file cannot be read, has a bad header, row or item (the
                message gives the line or item and value), too few rows to infer the step, no
                issue at or before `as_of`, or no point overlapping `[start, end)` (the message
                gives the file's time range).
            UnknownZone: the file has a `zone` column without rows for `zone`; lists its zones.
        """
        return self._read(zone, start, end, as_of=as_of, realized=False)

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """The file's values over `[start, end)`, taken as realized values.

        Raises:
            ForecastUnavailable: as `forecast`, and for a file of issued forecasts (they are
                forecasts, not realized values).
            UnknownZone: as `forecast`.
        """
        return self._read(zone, start, end, as_of=None, realized=True)

    def _read(
        self, zone: str, start: datetime, end: datetime, *, as_of: datetime | None, realized: bool
    ) -> Forecast:
        try:
            text = self.path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM
            mtime = self.path.stat().st_mtime
        except (OSError, UnicodeDecodeError) as exc:
            raise ForecastUnavailable(
                f"cannot read forecast file {self.path} ({exc}); check forecast.file"
            ) from exc
        where = f"forecast file {self.path}"
        stripped = text.lstrip()
        if self.path.suffix.lower() == ".json" or stripped.startswith(("[", "{")):
            signal, rows, zoned = self._parse_json(text)
        else:
            signal, rows, zoned = self._parse_csv(text)
        zone, selected = self._select_zone(rows, zone, zoned)
        issued_at = datetime.fromtimestamp(mtime, UTC)
        issues = {r.issued_at for r in selected if r.issued_at is not None}
        if issues:
            if realized:
                raise ForecastUnavailable(
                    f"{where} holds issued forecasts, not realized values; use a time,value "
                    "file for history"
                )
            moment = as_of or self._now()
            usable = [t for t in issues if t <= moment]
            if not usable:
                raise ForecastUnavailable(
                    f"{where} has no forecast for zone {zone!r} issued at or before "
                    f"{moment.isoformat()}; its first is issued {min(issues).isoformat()}"
                )
            issued_at = max(usable)
            selected = [r for r in selected if r.issued_at == issued_at]
        series = self._series(selected, zone)
        if len(series) < 2:
            raise ForecastUnavailable(
                f"{where} has {len(series)} row(s) for zone {zone!r}; at least two are needed to "
                "infer the step: add rows"
            )
        diffs = Counter(b[0] - a[0] for a, b in zip(series, series[1:], strict=False))
        # Most common difference; ties go to the smallest, so the result is deterministic.
        step = min(diffs, key=lambda d: (-diffs[d], d))
        if series[-1][0] > datetime.max.replace(tzinfo=UTC) - step:
            raise ForecastUnavailable(
                f"{where}: its last time {series[-1][0].isoformat()} plus its step {step} "
                "passes the year 9999; remove the rows that far ahead"
            )
        # An empty range still gets the point in force at `start`, as the bundled provider does.
        stop = max(end, start + timedelta(microseconds=1))
        points = tuple(IntensityPoint(t, v) for t, v in series if t < stop and t + step > start)
        if not points:
            raise ForecastUnavailable(
                f"{where} covers {series[0][0].isoformat()} to {(series[-1][0] + step).isoformat()}"
                f" for zone {zone!r}, not the requested {start.isoformat()} to "
                f"{end.isoformat()}; update the file"
            )
        return Forecast(
            zone=zone,
            signal=signal,
            source=self.name,
            label=self.label,
            issued_at=issued_at,
            step=step,
            points=points,
            realized=realized,
        )

    def _parse_csv(self, text: str) -> tuple[Signal, list[_Row], bool]:
        """The signal, the rows, and whether the file has a zone column."""
        where = f"forecast file {self.path}"
        lines = text.splitlines()
        signals: set[str] = set()
        if lines and lines[0].startswith("#"):  # a first line "# signal: marginal"
            key, _, raw_signal = lines[0].lstrip("#").partition(":")
            if key.strip().lower() == "signal":
                signals.add(self._check_signal(raw_signal.strip().lower(), "line 1"))
        reader = csv.reader(lines)
        header: list[str] | None = None
        rows: list[_Row] = []
        for row in _csv_rows(reader, where):
            ref = f"line {reader.line_num}"
            if not row or row[0].startswith("#") or not "".join(row).strip():
                continue
            if header is None:
                header = [h.strip().lower() for h in row]
                if "time" not in header or "value" not in header:
                    raise ForecastUnavailable(
                        f"{where}, {ref}: header {','.join(row)!r} lacks a 'time' and a "
                        "'value' column; write the header time,value or time,zone,value"
                    )
                continue
            if len(row) != len(header):
                raise ForecastUnavailable(
                    f"{where}, {ref}: {len(row)} fields, the header has {len(header)}; fix the row"
                )
            cells = dict(zip(header, row, strict=True))
            if "signal" in cells:
                signals.add(self._check_signal(cells["signal"].strip().lower(), ref))
            rows.append(self._row(cells, ref))
        if header is None:
            raise ForecastUnavailable(f"{where} is empty; write a header time,value and rows")
        return self._one_signal(signals), rows, "zone" in header

    def _parse_json(self, text: str) -> tuple[Signal, list[_Row], bool]:
        where = f"forecast file {self.path}"
        try:
            data: Any = json.loads(text)
        # ValueError: also an integer of over 4,300 digits; RecursionError: nesting too deep.
        except (ValueError, RecursionError) as exc:
            raise ForecastUnavailable(f"{where} is not valid JSON ({exc}); fix it") from exc
        signals: set[str] = set()
        if isinstance(data, dict):
            if "signal" in data:
                signals.add(self._check_signal(str(data["signal"]).lower(), "key 'signal'"))
            data = data.get("points")
        if not isinstance(data, list):
            raise ForecastUnavailable(
                f"{where} is neither a list of points nor an object with a 'points' list; "
                'write [{"time": "2026-05-01T10:00Z", "value": 231.5}, ...]'
            )
        rows: list[_Row] = []
        zoned = False
        for i, item in enumerate(data, start=1):
            ref = f"item {i}"
            if not isinstance(item, dict) or "time" not in item or "value" not in item:
                raise ForecastUnavailable(
                    f"{where}, {ref}: not an object with 'time' and 'value'; fix the item"
                )
            if "signal" in item:
                signals.add(self._check_signal(str(item["signal"]).lower(), ref))
            zoned = zoned or "zone" in item
            cells = {k: v if isinstance(v, str) else json.dumps(v) for k, v in item.items()}
            rows.append(self._row(cells, ref))
        return self._one_signal(signals), rows, zoned

    def _row(self, cells: dict[str, str], ref: str) -> _Row:
        where = f"forecast file {self.path}, {ref}"
        times: list[datetime] = []
        for key in ("time", "issued_at"):
            raw = cells.get(key)
            if raw is None:
                continue
            try:
                times.append(_parse_time(raw))
            except (ValueError, OverflowError) as exc:  # Overflow: an offset past year 1 or 9999
                raise ForecastUnavailable(
                    f"{where}: {'issued_at' if key == 'issued_at' else 'time'} {raw!r} is not "
                    "ISO-8601; write it like 2026-05-01T10:00Z"
                ) from exc
        raw_value = cells["value"]
        try:
            value = float(raw_value)
        except ValueError as exc:
            raise ForecastUnavailable(
                f"{where}: value {raw_value!r} is not a number; "
                "write gCO2eq/kWh as a plain decimal like 231.5"
            ) from exc
        if not 0 <= value <= MAX_G_PER_KWH:  # also refuses NaN
            raise ForecastUnavailable(
                f"{where}: value {raw_value!r} is not a finite, non-negative intensity of at "
                f"most {MAX_G_PER_KWH:,.0f}; write gCO2eq/kWh as a plain decimal like 231.5"
            )
        issued = times[1] if len(times) > 1 else None
        return _Row(ref, times[0], value, cells.get("zone", "").strip(), issued)

    def _select_zone(self, rows: list[_Row], zone: str, zoned: bool) -> tuple[str, list[_Row]]:
        """The zone as the file spells it and its rows."""
        if not zoned:
            return zone, rows
        names = {r.zone for r in rows}
        if zone not in names:
            by_folded = {z.casefold(): z for z in names}
            if zone.strip().casefold() not in by_folded:
                raise UnknownZone(
                    f"zone {zone!r} is not in forecast file {self.path}; it has "
                    f"{', '.join(sorted(names))}. Use one of those zones or add rows for this one."
                )
            zone = by_folded[zone.strip().casefold()]
        return zone, [r for r in rows if r.zone == zone]

    def _series(self, rows: list[_Row], zone: str) -> list[tuple[datetime, float]]:
        """Sorted `(time, g_per_kwh)` pairs. Raises ForecastUnavailable on a repeated time."""
        ordered = sorted(rows, key=lambda r: r.time)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.time == b.time:
                kind, first = a.ref.split()
                refs = f"{kind}s {first} and {b.ref.split()[-1]}"
                raise ForecastUnavailable(
                    f"forecast file {self.path}, {refs}: time {b.time.isoformat()} appears twice "
                    f"for zone {zone!r}; keep one"
                )
        return [(r.time, r.value) for r in ordered]

    def _one_signal(self, signals: set[str]) -> Signal:
        if len(signals) > 1:
            raise ForecastUnavailable(
                f"forecast file {self.path} mixes signals {', '.join(sorted(signals))}; "
                "a forecast file holds one signal: split it"
            )
        return cast(Signal, signals.pop() if signals else "average")

    def _check_signal(self, value: str, ref: str) -> str:
        if value not in _SIGNALS:
            raise ForecastUnavailable(
                f"forecast file {self.path}, {ref}: signal {value!r} is not one of "
                f"{', '.join(_SIGNALS)}; fix the signal"
            )
        return value
