"""Offline typical-week profiles: the forecast of last resort, needing no network or account.

For each of 123 Electricity Maps zones, the mean 2022 life-cycle average intensity per UTC hour of
the week (data/typical_week_2022.csv, made by tools/make_typical_profiles.py; Electricity Maps
(electricitymaps.com), via Sukprasert et al. 2024, ODbL 1.0: see data/README.md). Solar-driven
daily cycles are predictable enough that this alone captures most of the possible saving in sunny
zones; wind-driven grids need a real forecast.
"""

import csv
import difflib
import functools
import io
import math
from datetime import UTC, datetime, timedelta
from importlib import resources

from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting import Forecast, IntensityPoint

__all__ = ["BundledProvider", "resolve_zone"]

DATA_FILE = "typical_week_2022.csv"
HOURS_PER_WEEK = 168
_HOUR = timedelta(hours=1)


@functools.cache
def _profiles() -> dict[str, tuple[float, ...]]:
    """Zone -> 168 hourly values (index 0 = Monday 00:00 UTC), read once per process.

    Raises:
        ForecastUnavailable: the data file is missing or malformed (a broken installation).
    """
    try:
        text = resources.files("ecoq.forecasting").joinpath("data", DATA_FILE).read_text("utf-8")
    except OSError as exc:
        raise ForecastUnavailable(
            f"bundled profile data {DATA_FILE} cannot be read ({exc}); reinstall ecoq"
        ) from exc
    rows = csv.reader(line for line in io.StringIO(text) if not line.startswith("#"))
    next(rows, None)  # header: zone,v0,...,v167
    profiles: dict[str, tuple[float, ...]] = {}
    for row in rows:
        try:
            values = tuple(float(v) for v in row[1:])
        except ValueError as exc:
            raise ForecastUnavailable(
                f"bundled profile data {DATA_FILE} is malformed for zone {row[0]!r} ({exc}); "
                "reinstall ecoq or rerun tools/make_typical_profiles.py"
            ) from exc
        if len(values) != HOURS_PER_WEEK or not all(math.isfinite(v) for v in values):
            raise ForecastUnavailable(
                f"bundled profile data {DATA_FILE} has {len(values)} values for zone {row[0]!r}, "
                f"expected {HOURS_PER_WEEK}; reinstall ecoq or rerun tools/make_typical_profiles.py"
            )
        profiles[row[0]] = values
    return profiles


@functools.cache
def _zones_by_folded_name() -> dict[str, str]:
    return {zone.casefold(): zone for zone in _profiles()}


def zones() -> list[str]:
    """The zones with a bundled profile, sorted (Electricity Maps zone codes)."""
    return sorted(_profiles())


def resolve_zone(name: str) -> str:
    """The bundled zone code for `name`: exact, else ignoring case (`de` -> `DE`), else an alias.

    Aliases are cloud regions and cities (`aws:eu-central-1`, `frankfurt` -> `DE`), from
    `ecoq.forecasting.regions`.

    Raises:
        UnknownZone: no such zone or alias; the message lists close zones and aliases.
        ConfigError: the bundled regions file is broken (reinstall ecoq).
    """
    from ecoq.forecasting.regions import close_aliases, resolve_alias

    profiles = _profiles()
    if name in profiles:
        return name
    folded = _zones_by_folded_name()
    key = name.strip().casefold()
    if key in folded:
        return folded[key]
    alias = resolve_alias(name)
    if alias in profiles:
        return alias
    close = [folded[c] for c in difflib.get_close_matches(key, list(folded), n=5, cutoff=0.6)]
    close += [f"{a} ({zone})" for a, zone in close_aliases(name) if zone in profiles]
    hint = f"; did you mean {', '.join(close)}?" if close else "."
    raise UnknownZone(
        f"zone {name!r} has no bundled typical profile{hint} "
        f"Run `ecoq zones` to list the {len(profiles)} bundled zones (Electricity Maps codes) "
        "and their aliases (cloud regions like aws:eu-central-1, cities), "
        "or configure a forecast provider that covers this zone."
    )


def hour_of_week(t: datetime) -> int:
    """0 = Monday 00:00 UTC ... 167 = Sunday 23:00 UTC, for the hour containing `t`."""
    t = t.astimezone(UTC)
    return t.weekday() * 24 + t.hour


class BundledProvider:
    """Typical-week profiles bundled with ecoq (life-cycle average signal, hourly).

    The profile repeats every week, so any range has a forecast.
    """

    name: str = "bundled"
    label: str = "typical profile"

    def zones(self) -> list[str]:
        """The zones this provider knows, sorted."""
        return zones()

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Hourly points from `start` floored to the hour through the hour containing `end`.

        Points cover `[start, end)`; at least one point (the hour containing `start`) is
        returned. `issued_at` is `start`; `zone` is the canonical code (`de` -> `DE`).

        Raises:
            UnknownZone: no bundled profile for `zone`; lists close matches.
            ValueError: `start` or `end` is naive.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError(f"start {start} and end {end} must be timezone-aware UTC datetimes")
        code = resolve_zone(zone)
        week = _profiles()[code]
        start = start.astimezone(UTC)
        first = start.replace(minute=0, second=0, microsecond=0)
        count = max(1, math.ceil((end - first) / _HOUR))
        how = hour_of_week(first)
        points = tuple(
            IntensityPoint(first + i * _HOUR, week[(how + i) % HOURS_PER_WEEK])
            for i in range(count)
        )
        return Forecast(
            zone=code,
            signal="average",
            source=self.name,
            label=self.label,
            issued_at=start,
            step=_HOUR,
            points=points,
            emission_factor="lifecycle",
        )

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        """Typical profiles are not measurements, so there are no realized values.

        Raises:
            ForecastUnavailable: always.
        """
        raise ForecastUnavailable(
            f"the typical profile has no realized values for zone {zone!r}; configure a live "
            "provider (watttime, electricitymaps, ukgrid) or a forecast file for history"
        )
