"""Accounting: what a run emitted, what it would have emitted without ecoq, and SCI. Pure.

No database, no I/O: the scheduler (`ecoq.scheduler.reconcile`) feeds these functions and stores
what they return. Formulas (docs/design.md, "Accounting"; SCI after the Green Software
Foundation's specification):

- **Realized** emissions = Σ over metered intervals of energy (kWh) × PUE × the zone's intensity
  (gCO2e/kWh) for that interval. An intensity value holds for its step `[t, t + step)` (the
  interval rule) and a sample interval's energy is spread evenly over it, so an interval that
  straddles a step boundary is split there exactly.
- **Counterfactual** ("without ecoq") = the same energy profile shifted to start when the job
  could first have run (its submission, or its `--not-before` when later, but never after the
  run's own start: a run started by hand was not delayed) in its home zone.
- **Avoided** = counterfactual − realized. Both sides use one provider, one signal and one
  kind of value (forecast or realized): `account` raises `MixedSignals` otherwise, so marginal
  and average numbers are never mixed.
- **SCI** = (O + M) / R with O = E × PUE × I (the realized emissions): `ecoq.sci`, re-exported
  here.

Every result carries its provenance (`Provenance`): provider, signal, forecast or realized
intensity, how the energy was measured (`estimate` energy stays labelled) and the status:
``provisional`` (forecast-based, realized values may still arrive), ``final`` (realized values),
``final-forecast`` (final after `finalize_after` on forecast-based figures), ``unmetered`` (no
energy) or ``no-intensity`` (final with no intensity to weigh the energy by).
"""

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ecoq.errors import EcoqError, ForecastUnavailable
from ecoq.forecasting import Forecast
from ecoq.meters.sampler import EnergySeries
from ecoq.sci import Embodied, Sci, embodied_g, sci, sci_per_unit, summarize_marks

__all__ = [
    "J_PER_KWH",
    "Embodied",
    "EnergyInterval",
    "EnergyProfile",
    "Intensity",
    "MixedSignals",
    "NotCovered",
    "Provenance",
    "RunEmissions",
    "Sci",
    "account",
    "embodied_g",
    "emissions_g",
    "flat_profile",
    "profile_from_series",
    "sci",
    "sci_per_unit",
    "summarize_marks",
    "window_energy",
]

J_PER_KWH = 3.6e6
Status = Literal["provisional", "final", "final-forecast", "unmetered", "no-intensity"]
#: ``measured`` (counters or integrated power only), ``estimate`` (models only), ``partly
#: estimate`` (both) or ``unknown`` (a total without a series).
EnergyMethod = Literal["measured", "estimate", "partly estimate", "unknown"]
STATUSES: tuple[Status, ...] = (
    "provisional",
    "final",
    "final-forecast",
    "unmetered",
    "no-intensity",
)


class MixedSignals(EcoqError):
    """Emissions of different signals, providers or value kinds were compared or summed."""


class NotCovered(ForecastUnavailable):
    """The intensity has no value for part of the energy profile."""


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


@dataclass(frozen=True)
class EnergyInterval:
    """Energy (joules, all meters) drawn over `[start_s, end_s)`, in epoch seconds (UTC)."""

    start_s: float
    end_s: float
    energy_j: float


@dataclass(frozen=True)
class EnergyProfile:
    """A run's energy over time.

    Attributes:
        intervals: sorted and non-overlapping; a gap between them (no daemon metered the run
            then) carries no energy.
        by_method_j: joules per meter method (``counter``, ``power-integration``, ``estimate``).
        by_device_j: joules per device kind (``gpu``, ``cpu``, ``ram``).
        meter_errors: how many meters failed during the run (their energy stayed flat after).
        known_method: False for a total without a series (its method is unknown).
    """

    intervals: tuple[EnergyInterval, ...]
    by_method_j: Mapping[str, float] = field(default_factory=dict)
    by_device_j: Mapping[str, float] = field(default_factory=dict)
    meter_errors: int = 0
    known_method: bool = True

    @property
    def energy_j(self) -> float:
        """Joules over the whole profile (IT energy, before PUE)."""
        return math.fsum(i.energy_j for i in self.intervals)

    @property
    def start(self) -> datetime:
        """UTC start of the first interval. Raises ValueError for an empty profile."""
        if not self.intervals:
            raise ValueError("the energy profile has no intervals")
        return _utc(self.intervals[0].start_s)

    @property
    def end(self) -> datetime:
        """UTC end of the last interval. Raises ValueError for an empty profile."""
        if not self.intervals:
            raise ValueError("the energy profile has no intervals")
        return _utc(self.intervals[-1].end_s)

    @property
    def estimate_j(self) -> float:
        """Joules that came from an estimate rather than a counter or power readings."""
        return float(self.by_method_j.get("estimate", 0.0))

    @property
    def method(self) -> EnergyMethod:
        """How the energy was obtained, for labels (see `EnergyMethod`)."""
        if not self.known_method:
            return "unknown"
        total = sum(self.by_method_j.values())
        estimate = self.estimate_j
        if estimate <= 0.0:
            return "measured"
        return "estimate" if estimate >= total else "partly estimate"

    def shifted(self, delta: timedelta) -> "EnergyProfile":
        """The same profile moved by `delta` in time."""
        d = delta.total_seconds()
        moved = tuple(
            EnergyInterval(i.start_s + d, i.end_s + d, i.energy_j) for i in self.intervals
        )
        return replace(self, intervals=moved)

    def energy_between_j(self, start: datetime, end: datetime) -> float:
        """Joules drawn within `[start, end)`, each interval's energy spread evenly over it."""
        lo, hi = start.timestamp(), end.timestamp()
        total = 0.0
        for i in self.intervals:
            width = i.end_s - i.start_s
            if width <= 0:
                total += i.energy_j if lo <= i.start_s < hi else 0.0
                continue
            overlap = min(hi, i.end_s) - max(lo, i.start_s)
            if overlap > 0:
                total += i.energy_j * overlap / width
        return total


def _device_kind(device: str) -> str:
    return device.split(":", 1)[0]


def profile_from_series(series: Mapping[str, Any] | None) -> EnergyProfile | None:
    """The profile of a run's stored `energy_series` (``{"segments": [EnergySeries.to_dict()]}``).

    Returns None when nothing was metered (no segment with two samples and no energy).

    Raises:
        ValueError: a segment is malformed.
    """
    if not series:
        return None
    intervals: list[EnergyInterval] = []
    by_method: dict[str, float] = {}
    by_device: dict[str, float] = {}
    errors = 0
    found = False
    for data in series.get("segments", []):
        segment = EnergySeries.from_dict(data)
        found = True
        errors += len(segment.errors)
        methods = [d.method for d in segment.descriptions]
        devices = [_device_kind(d.device) for d in segment.descriptions]
        for start, end, per_meter in segment.intervals():
            for method, device, joules in zip(methods, devices, per_meter, strict=True):
                by_method[method] = by_method.get(method, 0.0) + joules
                by_device[device] = by_device.get(device, 0.0) + joules
            intervals.append(EnergyInterval(start.timestamp(), end.timestamp(), sum(per_meter)))
    if not found:
        return None
    intervals.sort(key=lambda i: i.start_s)
    return EnergyProfile(tuple(intervals), by_method, by_device, errors)


def flat_profile(
    start: datetime, end: datetime, energy_j: float, *, method: str | None = None
) -> EnergyProfile:
    """A profile drawing `energy_j` joules evenly over `[start, end)` (a total without a series).

    `method` (``counter``, ``estimate``, ...) labels the energy; None: unknown.
    """
    interval = EnergyInterval(start.timestamp(), max(end, start).timestamp(), energy_j)
    by_method = {method: energy_j} if method else {}
    return EnergyProfile((interval,), by_method, {}, 0, known_method=method is not None)


@dataclass(frozen=True)
class Intensity:
    """Carbon intensity of one zone as steps, with one provenance.

    Attributes:
        zone, signal, source, label: as in `ecoq.forecasting.Forecast` (`source` is the
            provider's machine name).
        realized: True for realized (historical) values, False for forecasts.
        steps: sorted, non-overlapping ``(start_s, end_s, g_per_kwh)`` (epoch seconds, UTC);
            gaps between them are not covered.
    """

    zone: str
    signal: str
    source: str
    label: str
    realized: bool
    steps: tuple[tuple[float, float, float], ...]

    @classmethod
    def from_forecast(cls, forecast: Forecast) -> "Intensity":
        """Each point holds for its step, cut short by the next point (the interval rule)."""
        step_s = forecast.step.total_seconds()
        points = forecast.points
        steps = []
        for i, point in enumerate(points):
            start = point.start.timestamp()
            end = start + step_s
            if i + 1 < len(points):
                end = min(end, points[i + 1].start.timestamp())
            steps.append((start, end, point.g_per_kwh))
        return cls(
            zone=forecast.zone,
            signal=forecast.signal,
            source=forecast.source,
            label=forecast.label,
            realized=forecast.realized,
            steps=tuple(steps),
        )

    @property
    def kind(self) -> Literal["forecast", "realized"]:
        return "realized" if self.realized else "forecast"

    def _check_same(self, other: "Intensity", what: str) -> None:
        mine = (self.signal, self.source, self.realized)
        theirs = (other.signal, other.source, other.realized)
        if mine != theirs:
            raise MixedSignals(
                f"cannot {what} {self.signal} {self.kind} intensity from {self.source} with "
                f"{other.signal} {other.kind} intensity from {other.source}; both sides of an "
                "emissions comparison must use one provider, signal and value kind"
            )

    def filled_from(self, other: "Intensity") -> "Intensity":
        """This intensity with its uncovered spans filled from `other` (same zone, provider,
        signal and kind; newer forecasts first, older ones filling in).

        Raises:
            MixedSignals: `other` differs in zone, signal, provider or kind.
        """
        self._check_same(other, "combine")
        if other.zone != self.zone:
            raise MixedSignals(f"cannot combine intensity of zone {self.zone} with {other.zone}")
        steps = list(self.steps)
        for start, end, value in other.steps:
            for lo, hi in _uncovered(steps, start, end):
                steps.append((lo, hi, value))
            steps.sort()
        return replace(self, steps=tuple(steps))

    def uncovered(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """The spans of `[start, end)` without a value (UTC); [] when all is covered."""
        lo, hi = start.timestamp(), max(end.timestamp(), start.timestamp() + 1e-6)
        return [(_utc(a), _utc(b)) for a, b in _uncovered(list(self.steps), lo, hi)]

    def value_at(self, t: datetime) -> float:
        """The intensity (g/kWh) in force at `t`. Raises NotCovered outside the steps."""
        ts = t.timestamp()
        i = bisect_right(self.steps, ts, key=lambda s: s[0]) - 1
        if i >= 0 and ts < self.steps[i][1]:
            return self.steps[i][2]
        raise NotCovered(f"{self.label} ({self.zone}) has no value at {_iso(t)}")


def _uncovered(
    steps: list[tuple[float, float, float]], start: float, end: float
) -> list[tuple[float, float]]:
    """The parts of `[start, end)` no step covers (`steps` sorted, non-overlapping)."""
    out = []
    t = start
    i = max(0, bisect_right(steps, t, key=lambda s: s[0]) - 1)
    while t < end and i < len(steps):
        s, e, _ = steps[i]
        if e <= t:
            i += 1
            continue
        if s > t:
            out.append((t, min(s, end)))
        t = max(t, e)
        i += 1
    if t < end:
        out.append((t, end))
    return out


def emissions_g(profile: EnergyProfile, intensity: Intensity, *, pue: float = 1.0) -> float:
    """Σ interval energy (kWh) × `pue` × intensity (g/kWh): grams of CO2e.

    Each interval's energy is spread evenly over it and split exactly at intensity steps (the
    interval rule); an instantaneous interval takes the value in force at its time.

    Raises:
        NotCovered: the intensity has no value for part of an interval with energy.
        ValueError: `pue` is below 1 or not finite.
    """
    if not (math.isfinite(pue) and pue >= 1.0):
        raise ValueError(f"PUE {pue!r} must be a finite number >= 1 (1.0 = no facility overhead)")
    steps = intensity.steps
    starts = [s[0] for s in steps]
    total = 0.0
    for interval in profile.intervals:
        if interval.energy_j == 0.0:
            continue
        a, b, e = interval.start_s, interval.end_s, interval.energy_j
        i = bisect_right(starts, a) - 1
        if b <= a:
            if i < 0 or a >= steps[i][1]:
                raise _gap(intensity, a, a)
            total += e * steps[i][2]
            continue
        t = a
        if i < 0 or steps[i][1] <= a:
            i += 1  # a gap at `a` unless the next step starts exactly there
        while t < b:
            if i >= len(steps) or steps[i][0] > t:
                raise _gap(intensity, t, b if i >= len(steps) else min(b, steps[i][0]))
            end = min(b, steps[i][1])
            total += e * (end - t) / (b - a) * steps[i][2]
            t = end
            i += 1
    return total / J_PER_KWH * pue


def _gap(intensity: Intensity, lo: float, hi: float) -> NotCovered:
    return NotCovered(
        f"{intensity.label} ({intensity.signal}, {intensity.kind}) for zone {intensity.zone} has "
        f"no value from {_iso(_utc(lo))} to {_iso(_utc(hi))}"
    )


@dataclass(frozen=True)
class Provenance:
    """Where a figure came from.

    Attributes:
        provider: the intensity's provider (``electricitymaps``, ``bundled``...); None without one.
        signal: ``average`` or ``marginal``; None without an intensity.
        intensity: ``forecast`` or ``realized`` values; None without an intensity.
        label: the intensity's label for people (``typical profile``).
        zone: the zone whose intensity weighed the run's energy.
        energy_method: see `EnergyMethod`; None when unmetered.
        status: see the module docstring.
    """

    provider: str | None
    signal: str | None
    intensity: str | None
    label: str | None
    zone: str
    energy_method: EnergyMethod | None
    status: Status

    def describe(self) -> str:
        """``provisional: average forecast from electricitymaps (…), measured energy``."""
        if self.signal is None:
            where = "no intensity"
        else:
            where = f"{self.signal} {self.intensity} from {self.provider} ({self.label})"
        energy = f"{self.energy_method} energy" if self.energy_method else "no energy"
        return f"{self.status}: {where}, {energy}"


@dataclass(frozen=True)
class RunEmissions:
    """A run's figures (grams CO2e, joules) and their provenance."""

    energy_j: float
    pue: float
    realized_g: float
    counterfactual_g: float
    counterfactual_start: datetime
    provenance: Provenance

    @property
    def facility_energy_j(self) -> float:
        """IT energy × PUE, joules."""
        return self.energy_j * self.pue

    @property
    def avoided_g(self) -> float:
        """Counterfactual − realized, grams (negative when the run emitted more)."""
        return self.counterfactual_g - self.realized_g


def account(
    profile: EnergyProfile,
    intensity: Intensity,
    *,
    counterfactual_start: datetime,
    pue: float = 1.0,
    home_intensity: Intensity | None = None,
    finalized: bool = False,
) -> RunEmissions:
    """Realized, counterfactual and avoided emissions of one run.

    Args:
        profile: the run's energy (IT joules over time).
        intensity: the intensity of the zone the run drew power in.
        counterfactual_start: when the job could first have run without ecoq (UTC).
        pue: facility energy / IT energy (>= 1), applied to both sides.
        home_intensity: the home zone's intensity when the run was relocated; None: `intensity`.
        finalized: for forecast-based figures: final after `finalize_after` (``final-forecast``)
            rather than ``provisional``.

    Raises:
        MixedSignals: the two intensities differ in signal, provider or value kind.
        NotCovered: an intensity lacks values for the run or for the counterfactual window.
        ValueError: the profile is empty, or `pue` is invalid.
    """
    home = home_intensity or intensity
    intensity._check_same(home, "compare")
    if counterfactual_start.tzinfo is None:
        raise ValueError(f"counterfactual_start {counterfactual_start} is naive; pass UTC")
    realized_g = emissions_g(profile, intensity, pue=pue)
    shifted = profile.shifted(counterfactual_start - profile.start)
    counterfactual_g = emissions_g(shifted, home, pue=pue)
    if intensity.realized:
        status: Status = "final"
    else:
        status = "final-forecast" if finalized else "provisional"
    return RunEmissions(
        energy_j=profile.energy_j,
        pue=pue,
        realized_g=realized_g,
        counterfactual_g=counterfactual_g,
        counterfactual_start=counterfactual_start.astimezone(UTC),
        provenance=Provenance(
            provider=intensity.source,
            signal=intensity.signal,
            intensity=intensity.kind,
            label=intensity.label,
            zone=intensity.zone,
            energy_method=profile.method,
            status=status,
        ),
    )


def window_energy(profile: EnergyProfile, windows: Sequence[Mapping[str, str]]) -> list[float]:
    """Joules within each marked window (``start``/``end`` ISO-8601 UTC), in order.

    Raises:
        ValueError: a time is malformed.
    """

    def parse(text: str) -> datetime:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    return [profile.energy_between_j(parse(w["start"]), parse(w["end"])) for w in windows]
