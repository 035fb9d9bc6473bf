"""Forecasts from a CSV file the user maintains (offline use, demos, an in-house forecaster).

Format (header names are case-insensitive, extra columns are ignored):

    # signal: marginal          <- optional first line; default "average"
    time,value                  <- one series, used for any zone
    2026-05-01T10:00Z,231.5
    ...

or `time,zone,value` (rows filtered by zone), optionally with a `signal` column (one value for the
whole file). Times are ISO-8601: naive means UTC, offsets are converted to UTC. Values are
gCO2eq/kWh. The step is the most common difference between consecutive times; a larger difference
is a gap the forecast does not cover.
"""

import csv
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting import Forecast, IntensityPoint, Signal

__all__ = ["FileProvider"]

_SIGNALS = ("average", "marginal")


def _parse_time(raw: str) -> datetime:
    t = datetime.fromisoformat(raw.strip())
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class FileProvider:
    """Reads `path` at every call, so an updated file is picked up without a restart."""

    name: str = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"file {path}"

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """The file's points for `zone` whose intervals overlap `[start, end)`.

        If `end <= start`, the point in force at `start`.

        `issued_at` is the file's modification time.

        Raises:
            ForecastUnavailable: the file cannot be read, has a bad header or row (the message
                gives the line number and value), too few rows to infer the step, or no point
                overlapping `[start, end)` (the message gives the file's time range).
            UnknownZone: the file has a `zone` column without rows for `zone`; lists its zones.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
            mtime = self.path.stat().st_mtime
        except (OSError, UnicodeDecodeError) as exc:
            raise ForecastUnavailable(
                f"cannot read forecast file {self.path} ({exc}); check forecast.file"
            ) from exc
        signal, zone, series = self._parse(text, zone)
        where = f"forecast file {self.path}"
        if len(series) < 2:
            raise ForecastUnavailable(
                f"{where} has {len(series)} row(s) for zone {zone!r}; at least two are needed to "
                "infer the step: add rows"
            )
        diffs = Counter(b[0] - a[0] for a, b in zip(series, series[1:], strict=False))
        # Most common difference; ties go to the smallest, so the result is deterministic.
        step = min(diffs, key=lambda d: (-diffs[d], d))
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
            issued_at=datetime.fromtimestamp(mtime, UTC),
            step=step,
            points=points,
        )

    def _parse(self, text: str, zone: str) -> tuple[Signal, str, list[tuple[datetime, float]]]:
        """The signal, the zone as the file spells it, and its sorted `(time, g_per_kwh)` rows."""
        where = f"forecast file {self.path}"
        lines = text.splitlines()
        declared: str | None = None  # from a first line "# signal: marginal"
        if lines and lines[0].startswith("#"):
            key, _, raw_signal = lines[0].lstrip("#").partition(":")
            if key.strip().lower() == "signal":
                declared = self._check_signal(raw_signal.strip().lower(), 1)
        reader = csv.reader(lines)
        header: list[str] | None = None
        rows: dict[str, list[tuple[datetime, float, int]]] = {}
        signals: set[str] = set()
        for row in reader:
            line = reader.line_num
            if not row or row[0].startswith("#") or not "".join(row).strip():
                continue
            if header is None:
                header = [h.strip().lower() for h in row]
                if "time" not in header or "value" not in header:
                    raise ForecastUnavailable(
                        f"{where}, line {line}: header {','.join(row)!r} lacks a 'time' and a "
                        "'value' column; write the header time,value or time,zone,value"
                    )
                continue
            if len(row) != len(header):
                raise ForecastUnavailable(
                    f"{where}, line {line}: {len(row)} fields, the header has {len(header)}; "
                    "fix the row"
                )
            cells = dict(zip(header, row, strict=True))
            raw_time, raw_value = cells["time"], cells["value"]
            try:
                t = _parse_time(raw_time)
            except ValueError as exc:
                raise ForecastUnavailable(
                    f"{where}, line {line}: time {raw_time!r} is not ISO-8601; "
                    "write it like 2026-05-01T10:00Z"
                ) from exc
            try:
                value = float(raw_value)
            except ValueError as exc:
                raise ForecastUnavailable(
                    f"{where}, line {line}: value {raw_value!r} is not a number; "
                    "write gCO2eq/kWh as a plain decimal like 231.5"
                ) from exc
            if not math.isfinite(value) or value < 0:
                raise ForecastUnavailable(
                    f"{where}, line {line}: value {raw_value!r} is not a finite, non-negative "
                    "intensity; write gCO2eq/kWh as a plain decimal like 231.5"
                )
            if "signal" in cells:
                signals.add(self._check_signal(cells["signal"].strip().lower(), line))
            rows.setdefault(cells.get("zone", "").strip(), []).append((t, value, line))
        if header is None:
            raise ForecastUnavailable(f"{where} is empty; write a header time,value and rows")
        if declared is not None:
            signals.add(declared)
        if len(signals) > 1:
            raise ForecastUnavailable(
                f"{where} mixes signals {', '.join(sorted(signals))}; "
                "a forecast file holds one signal: split it"
            )
        signal = signals.pop() if signals else "average"
        if "zone" in header:
            if zone not in rows:
                by_folded = {z.casefold(): z for z in rows}
                if zone.strip().casefold() not in by_folded:
                    raise UnknownZone(
                        f"zone {zone!r} is not in {where}; it has {', '.join(sorted(rows))}. "
                        "Use one of those zones or add rows for this one."
                    )
                zone = by_folded[zone.strip().casefold()]
            selected = rows[zone]
        else:
            selected = rows.get("", [])
        selected.sort()
        for (t0, _, line0), (t1, _, line1) in zip(selected, selected[1:], strict=False):
            if t0 == t1:
                raise ForecastUnavailable(
                    f"{where}, lines {line0} and {line1}: time {t1.isoformat()} appears twice "
                    f"for zone {zone!r}; keep one"
                )
        return cast(Signal, signal), zone, [(t, v) for t, v, _ in selected]

    def _check_signal(self, value: str, line: int) -> str:
        if value not in _SIGNALS:
            raise ForecastUnavailable(
                f"forecast file {self.path}, line {line}: signal {value!r} is not one of "
                f"{', '.join(_SIGNALS)}; fix the signal"
            )
        return value
