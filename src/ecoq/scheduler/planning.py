"""Choosing when (and where) jobs run. Pure functions over dataclasses; no database.

- `plan_window`: one job, one forecast: the cleanest contiguous window (below).
- `plan_jobs`: many jobs over many sites: vectorised window scoring (`scoring`), interruptible
  slots (`interruptible`, `slotdp`), capacity over time (`capacity`, `fitting`), run by
  `engine`. The daemon and
  `ecoq simulate` call it; numpy is imported only when it runs, so importing this module stays
  cheap for `ecoq submit` and the CLI.

The forecast is turned into a piecewise-linear intensity curve with cumulative integrals, so the
mean intensity of any window is two look-ups, and all candidate windows are scored in one sweep:
O(points + candidates), whatever the step (5 minutes to an hour).

Two averaging rules (docs/design.md, "Words"):

- `interval` (default): each value holds for `[start, start + step)`; a window's mean weights each
  value by the time it overlaps the window.
- `trapezoid` (as CATS computes): values sit at their timestamps, the intensity is linearly
  interpolated between consecutive points (not across a gap wider than one step) and integrated
  with the trapezoid rule, interpolating at the window's edges. Coverage ends at the last point.

Candidate starts are `earliest_start`, `latest_start`, and, strictly between them, every time at
which the window's start or its end meets a forecast boundary. Under the interval rule the mean is
linear in the start between those times, so this finds the exact optimum over all start times.
Only windows the forecast fully covers compete; means within a relative 1e-9 are ties, won by the
earliest start.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from heapq import merge
from typing import TYPE_CHECKING, Literal

from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast

if TYPE_CHECKING:
    from ecoq.scheduler.sites import Site

__all__ = [
    "JobRequest",
    "Placement",
    "Plan",
    "Reservation",
    "Rule",
    "Segment",
    "plan_jobs",
    "plan_window",
]

Rule = Literal["interval", "trapezoid"]
_RULES = ("interval", "trapezoid")
_US = timedelta(microseconds=1)
_TIE_REL = 1e-9


@dataclass(frozen=True)
class Plan:
    """When to start a job, and why.

    Attributes:
        start: the planned start (tz-aware UTC); always within `[earliest_start, latest_start]`,
            or `earliest_start` when the deadline cannot be met.
        mean_g_per_kwh: forecast mean intensity over the planned window.
        now_g_per_kwh: forecast mean intensity over the window starting at `earliest_start`. If
            the forecast covers only part of that window, the mean of the covered part; if none
            of it, the value of the forecast point nearest to it (a stand-in, never used to delay
            a job).
        saving_fraction: `(now - mean) / now` for the planned window; 0 when starting now.
        signal, source, label: copied from the forecast.
        candidates: how many candidate windows the forecast fully covered and were compared.
        runner_up_start, runner_up_g_per_kwh: the best covered window other than `start`
            (when starting now for a small saving, the cleanest window that was passed over).
        reason: a short sentence for users ("cleanest window", "saving 1.2 % below min_saving 2 %:
            run now", ...).
    """

    start: datetime
    mean_g_per_kwh: float
    now_g_per_kwh: float
    saving_fraction: float
    signal: str
    source: str
    label: str
    candidates: int
    runner_up_start: datetime | None
    runner_up_g_per_kwh: float | None
    reason: str


@dataclass(frozen=True)
class _Curve:
    """Intensity as linear segments `[x0, x1]` (µs from an origin; disjoint, sorted)."""

    x0: list[int]
    x1: list[int]
    y0: list[float]
    y1: list[float]
    area_before: list[float]  # integral of the segments before segment k, (g/kWh)·µs
    covered_before: list[int]  # total length of the segments before segment k, µs

    @classmethod
    def build(cls, forecast: Forecast, rule: Rule, origin: datetime) -> "_Curve":
        times = [(p.start - origin) // _US for p in forecast.points]
        values = [p.g_per_kwh for p in forecast.points]
        step = forecast.step // _US
        x0: list[int] = []
        x1: list[int] = []
        y0: list[float] = []
        y1: list[float] = []
        if rule == "interval":
            for i, (t, v) in enumerate(zip(times, values, strict=True)):
                end = t + step if i + 1 == len(times) else min(t + step, times[i + 1])
                x0.append(t)
                x1.append(end)
                y0.append(v)
                y1.append(v)
        else:
            for i in range(len(times) - 1):
                if times[i + 1] - times[i] <= step:  # never interpolate across a gap
                    x0.append(times[i])
                    x1.append(times[i + 1])
                    y0.append(values[i])
                    y1.append(values[i + 1])
        area = [0.0]
        covered = [0]
        for a, b, u, v in zip(x0, x1, y0, y1, strict=True):
            area.append(area[-1] + (b - a) * (u + v) / 2)
            covered.append(covered[-1] + (b - a))
        return cls(x0, x1, y0, y1, area, covered)

    def boundaries(self) -> list[int]:
        """Every segment start and end, sorted, without repeats."""
        out: list[int] = []
        for a, b in zip(self.x0, self.x1, strict=True):
            if not out or out[-1] != a:
                out.append(a)
            out.append(b)
        return out

    def cumulative(self, ts: list[int]) -> tuple[list[float], list[int]]:
        """Integral and covered length from the origin up to each `t` of the sorted `ts`."""
        areas: list[float] = []
        covered: list[int] = []
        k, n = 0, len(self.x0)
        for t in ts:
            while k < n and self.x1[k] <= t:
                k += 1
            if k < n and self.x0[k] < t:
                dt = t - self.x0[k]
                y_t = self.y0[k] + (self.y1[k] - self.y0[k]) * dt / (self.x1[k] - self.x0[k])
                areas.append(self.area_before[k] + dt * (self.y0[k] + y_t) / 2)
                covered.append(self.covered_before[k] + dt)
            else:
                areas.append(self.area_before[k])
                covered.append(self.covered_before[k])
        return areas, covered


def _require_aware(name: str, t: datetime) -> None:
    if t.tzinfo is None:
        raise ValidationError(f"{name} {t} has no timezone; pass a timezone-aware UTC datetime")


def _candidates(boundaries: list[int], earliest: int, latest: int, duration: int) -> list[int]:
    """Sorted distinct starts: `earliest`, `latest`, and between them every start or end on a
    boundary."""
    starts = (b for b in boundaries if earliest < b < latest)
    ends = (b - duration for b in boundaries if earliest < b - duration < latest)
    out = [earliest]
    for s in merge(starts, ends):
        if s != out[-1]:
            out.append(s)
    if latest > earliest:
        out.append(latest)
    return out


def _nearest_value(forecast: Forecast, t: datetime) -> float:
    return min(forecast.points, key=lambda p: abs(p.start - t)).g_per_kwh


def plan_window(
    forecast: Forecast,
    *,
    earliest_start: datetime,
    latest_start: datetime,
    duration: timedelta,
    min_saving: float = 0.02,
    rule: Rule = "interval",
) -> Plan:
    """Choose the start of the cleanest contiguous window `[s, s + duration)`.

    `latest_start` is the deadline minus `duration`, so any start up to it finishes in time.
    The job starts at `earliest_start` ("now") when the cleanest window saves less than
    `min_saving` (a fraction: 0.02 = 2 %) against now, when now is cleanest, when the deadline
    cannot be met (`latest_start < earliest_start`), or when the forecast fully covers no
    candidate window or nothing of the window starting now. A forecast problem never delays a
    job past its deadline: this function does not raise for one.

    Raises:
        ValidationError: a naive datetime, a non-positive `duration`, `min_saving` outside
            [0, 1], or an unknown `rule`.
    """
    _require_aware("earliest_start", earliest_start)
    _require_aware("latest_start", latest_start)
    if duration <= timedelta(0):
        raise ValidationError(f"duration {duration} is not positive; pass the expected run time")
    if not 0.0 <= min_saving <= 1.0:  # also rejects NaN
        raise ValidationError(
            f"min_saving {min_saving} is not a fraction between 0 and 1; use e.g. 0.02 for 2 %"
        )
    if rule not in _RULES:
        raise ValidationError(f"averaging rule {rule!r} is unknown; use one of {_RULES}")

    origin = forecast.points[0].start.astimezone(UTC)
    now_start = earliest_start.astimezone(UTC)
    curve = _Curve.build(forecast, rule, origin)
    earliest = (earliest_start - origin) // _US
    latest = (latest_start - origin) // _US
    span = duration // _US
    starts = _candidates(curve.boundaries(), earliest, max(latest, earliest), span)
    area_s, cov_s = curve.cumulative(starts)
    area_e, cov_e = curve.cumulative([s + span for s in starts])

    now_covered = cov_e[0] - cov_s[0]
    if now_covered > 0:
        now_mean = (area_e[0] - area_s[0]) / now_covered
    else:
        now_mean = _nearest_value(forecast, now_start + duration / 2)
    partial = "" if now_covered == span else " (now only partly forecast)"

    # The two best covered windows; later starts must be better by more than the tie tolerance.
    best: list[tuple[float, int]] = []
    count = 0
    for i, s in enumerate(starts):
        if cov_e[i] - cov_s[i] != span:
            continue
        count += 1
        mean = (area_e[i] - area_s[i]) / span
        if not best or mean < best[0][0] - _TIE_REL * max(abs(best[0][0]), 1.0):
            best = [(mean, s), *best[:1]]
        elif len(best) == 1 or mean < best[1][0] - _TIE_REL * max(abs(best[1][0]), 1.0):
            best = [best[0], (mean, s)]

    def at(x: int) -> datetime:
        return now_start if x == earliest else origin + x * _US

    def plan(start: int, mean: float, saving: float, reason: str) -> Plan:
        others = [(m, s) for m, s in best if s != start]
        return Plan(
            start=at(start),
            mean_g_per_kwh=mean,
            now_g_per_kwh=now_mean,
            saving_fraction=saving,
            signal=forecast.signal,
            source=forecast.source,
            label=forecast.label,
            candidates=count,
            runner_up_start=at(others[0][1]) if others else None,
            runner_up_g_per_kwh=others[0][0] if others else None,
            reason=reason,
        )

    if latest < earliest:
        return plan(
            earliest, now_mean, 0.0, "cannot finish by the deadline: start as early as possible"
        )
    if now_covered == 0:
        return plan(
            earliest, now_mean, 0.0, "forecast does not cover the window starting now: run now"
        )
    if not best:
        return plan(earliest, now_mean, 0.0, "forecast does not cover a full window: run now")
    best_mean, best_start = best[0]
    if best_start == earliest:
        return plan(earliest, now_mean, 0.0, "now is the cleanest window")
    saving = (now_mean - best_mean) / now_mean if now_mean > 0 else 0.0
    if saving < min_saving or saving <= _TIE_REL:  # no saving at all is never worth a wait
        return plan(
            earliest,
            now_mean,
            0.0,
            f"saving {saving * 100:.1f} % below min_saving {min_saving * 100:g} %: "
            f"run now{partial}",
        )
    return plan(best_start, best_mean, saving, f"cleanest window{partial}")


# Many jobs over many sites, with capacity and interruptible jobs (the engine is numpy, in
# `ecoq.scheduler.engine`, imported on first use so that importing this module stays cheap).

PauseKind = Literal["stop", "checkpoint"]
StartState = Literal["new", "running", "paused"]


@dataclass(frozen=True)
class JobRequest:
    """One job to place. Times are tz-aware UTC.

    Attributes:
        key: the caller's id for the job (database id, CSV id).
        earliest_start: not before this (now, `--not-before`, or the end of a running segment).
        deadline: finish by this.
        duration: expected run time still to do.
        sites: names of the sites it may run at; the first is its home (the baseline "now").
        gpus: GPUs it holds while running (and while stopped by SIGSTOP).
        power_kw: its expected power, kW; weighs a stopped pause's idle power.
        profile: relative power over equal parts of the run (empty: flat).
        interruptible: whether it may be split into segments.
        max_pauses: pauses still allowed (None: unlimited).
        min_segment: shortest segment worth running.
        pause: `stop` (SIGSTOP: GPUs stay held and draw the site's idle power) or `checkpoint`
            (the job saves and exits: GPUs are freed, no idle power).
        state: `new`, `running` (a segment runs up to `earliest_start`; carrying on is no
            pause) or `paused` (stopped now; its pause already counted).
        run_now: start as early as capacity allows, ignoring carbon (`ecoq start`).
        min_saving: this job's run-now threshold, overriding `plan_jobs`'s. Re-plans of a job
            that already waited pass 0: the wait was decided against its submission, and
            re-deciding it against every later "now" would let the job drift to worse hours.
    """

    key: int | str
    earliest_start: datetime
    deadline: datetime
    duration: timedelta
    sites: tuple[str, ...]
    gpus: int = 0
    power_kw: float = 1.0
    profile: tuple[float, ...] = ()
    interruptible: bool = False
    max_pauses: int | None = None
    min_segment: timedelta = timedelta(0)
    pause: PauseKind = "stop"
    state: StartState = "new"
    run_now: bool = False
    min_saving: float | None = None


@dataclass(frozen=True)
class Reservation:
    """Capacity already taken at a site over `[start, end)`: a running job, a fixed segment, a
    stopped job's GPUs."""

    site: str
    start: datetime
    end: datetime
    gpus: int = 0
    slots: int = 1


@dataclass(frozen=True)
class Segment:
    """One run of a job, `[start, end)`, tz-aware UTC."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Placement:
    """Where and when a job runs, and why.

    Attributes:
        key: the job's `JobRequest.key`.
        site, zone: where it runs.
        segments: its runs in time order (one for a contiguous job); together they last the
            job's duration.
        mean_g_per_kwh: forecast mean intensity × the site's PUE over the run, plus the idle
            power of stopped pauses, per kWh of the job's energy (g/kWh); None when no forecast
            covers it.
        now_g_per_kwh: the same for starting at `earliest_start` at the home site; None when no
            forecast covers it.
        saving_fraction: `(now - mean) / now`; 0 when it starts now.
        candidates: covered windows compared (all sites), plus 1 for an interruptible plan.
        late: it cannot finish by its deadline.
        reason: a short sentence for users.
        warning: set when capacity or the deadline forced a worse plan.
        runner_up_site, runner_up_start, runner_up_g_per_kwh: the best contiguous window at
            another site, or else the best other plan considered (None if none).
    """

    key: int | str
    site: str
    zone: str
    segments: tuple[Segment, ...]
    mean_g_per_kwh: float | None
    now_g_per_kwh: float | None
    saving_fraction: float
    candidates: int
    late: bool
    reason: str
    warning: str | None = None
    runner_up_site: str | None = None
    runner_up_start: datetime | None = None
    runner_up_g_per_kwh: float | None = None

    @property
    def start(self) -> datetime:
        """Start of the first segment."""
        return self.segments[0].start

    @property
    def end(self) -> datetime:
        """End of the last segment."""
        return self.segments[-1].end


def plan_jobs(
    jobs: Sequence[JobRequest],
    sites: Sequence["Site"],
    forecasts: Mapping[str, Forecast],
    *,
    now: datetime,
    fallbacks: Mapping[str, Forecast] | None = None,
    reservations: Sequence[Reservation] = (),
    min_saving: float = 0.02,
    rule: Rule = "interval",
) -> list[Placement]:
    """Place every job at a site and time (or in segments), respecting capacity over time.

    Each job is scored at every allowed site on that zone's forecast (`forecasts[zone]`, with
    `fallbacks[zone]` wherever the forecast has no value: beyond its horizon, never zero),
    weighted by its power profile, times the site's PUE. Jobs take capacity in order of least
    slack (then deadline, then input order); a job whose best window is full takes the best one
    that fits, and one that cannot fit before its deadline gets its earliest feasible start and
    a warning. A job runs as early as it can at its home site when waiting saves less than
    `min_saving` (a fraction) against that.

    Returns one `Placement` per job, in input order. Deterministic for equal inputs.

    Raises:
        ValidationError: naive times, a non-positive duration, an unknown site, a duplicate
            site name, `min_saving` outside [0, 1], an unknown rule, a bad profile or
            reservation.
    """
    _require_aware("now", now)
    if not 0.0 <= min_saving <= 1.0:
        raise ValidationError(
            f"min_saving {min_saving} is not a fraction between 0 and 1; use e.g. 0.02 for 2 %"
        )
    if rule not in _RULES:
        raise ValidationError(f"averaging rule {rule!r} is unknown; use one of {_RULES}")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValidationError(f"site names must be unique; got {names}")
    known = set(names)
    zero = timedelta(0)
    for job in jobs:
        if job.earliest_start.tzinfo is None or job.deadline.tzinfo is None:
            _require_aware(f"job {job.key} earliest_start", job.earliest_start)
            _require_aware(f"job {job.key} deadline", job.deadline)
        if job.duration <= zero:
            raise ValidationError(f"job {job.key}: duration {job.duration} is not positive")
        if not job.sites or not known.issuperset(job.sites):
            raise ValidationError(
                f"job {job.key}: sites {list(job.sites)} must be a non-empty list of {names}"
            )
        if job.profile and any(not w > 0 for w in job.profile):
            raise ValidationError(f"job {job.key}: profile weights must be positive")
        if job.min_saving is not None and not 0.0 <= job.min_saving <= 1.0:
            raise ValidationError(f"job {job.key}: min_saving {job.min_saving} is not a fraction")
        if job.gpus < 0 or not job.power_kw > 0:
            raise ValidationError(f"job {job.key}: gpus must be ≥ 0 and power_kw > 0")
    for r in reservations:
        if r.site not in known:
            raise ValidationError(f"reservation at unknown site {r.site!r}; sites are {names}")
        _require_aware("reservation start", r.start)
        _require_aware("reservation end", r.end)
    from ecoq.scheduler.engine import place_jobs

    return place_jobs(
        list(jobs),
        list(sites),
        forecasts,
        now=now.astimezone(UTC),
        fallbacks=fallbacks or {},
        reservations=list(reservations),
        min_saving=min_saving,
        rule=rule,
    )
