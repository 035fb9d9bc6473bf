"""Backtesting (`ecoq simulate`): replay jobs on a real intensity trace as the daemon lives them.

The contract is docs/design.md, "`ecoq simulate` contract". Time is replayed event by event: at
each submission and each forecast issue, every job not yet finished is (re-)planned by the same
`plan_jobs` the daemon calls, seeing only the forecasts issued by then; a job's start, or an
interruptible job's segment, becomes fixed once its time arrives. Emissions are always measured on
the true trace: a job of `power_kw` kW running over `[a, b)` emits power_kw × ∫ intensity dt
(g, with time in hours).

Policies: `now` (every job at submission in its home zone: the baseline), `window` (the cleanest
contiguous window in the home zone, decided once at submission, as CATS and the Carbon Aware SDK
do), `ecoq` (re-planning, every listed zone, interruptible slots, capacity) and `oracle` (`ecoq`
with the true trace as its forecast).

Beyond the newest forecast's horizon the planner sees a daily-persistence fallback: the value of
the same time of day on the last day already observed (never zero).

Pure: no database, no printing. Times are epoch seconds inside, tz-aware UTC outside.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np

from ecoq.errors import ValidationError
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler.planning import JobRequest, Placement, Reservation, StartState, plan_jobs
from ecoq.scheduler.scoring import Floats
from ecoq.scheduler.simdata import ForecastLog, SimJob, Trace, check_horizon
from ecoq.scheduler.sites import Site

__all__ = ["POLICIES", "Policy", "ScheduledSegment", "SimResult", "simulate"]

Policy = Literal["now", "window", "ecoq", "oracle"]
POLICIES: tuple[Policy, ...] = ("now", "window", "ecoq", "oracle")
_DAY_S = 86_400.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPS = 1e-6


def _dt(s: float) -> datetime:
    return _EPOCH + timedelta(microseconds=round(s * 1e6))


def _ts(t: datetime) -> float:
    return (t - _EPOCH) / timedelta(seconds=1)


@dataclass(frozen=True)
class ScheduledSegment:
    """One executed run of a job (a row of SCHEDULE.csv)."""

    id: str
    zone: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class SimResult:
    """Executed segments (sorted by job order, then time) and the contract's summary keys."""

    segments: list[ScheduledSegment]
    jobs: int
    baseline_g: float
    scheduled_g: float
    savings_pct: float
    deadline_misses: int
    plan_seconds: float

    def summary(self) -> dict[str, float | int]:
        """The summary as the contract's keys."""
        return {
            "jobs": self.jobs,
            "baseline_g": self.baseline_g,
            "scheduled_g": self.scheduled_g,
            "savings_pct": self.savings_pct,
            "deadline_misses": self.deadline_misses,
            "plan_seconds": self.plan_seconds,
        }


@dataclass
class _Live:
    job: SimJob
    fixed: list[tuple[str, float, float]] = field(default_factory=list)
    plan: Placement | None = None

    @property
    def done_s(self) -> float:
        return sum(b - a for _, a, b in self.fixed)

    def finished(self) -> bool:
        return self.done_s >= self.job.duration_s - _EPS


class _View:
    """What the planner may know at a time: forecasts issued so far, else persistence."""

    def __init__(self, trace: Trace, log: ForecastLog | None, truth: dict[str, Floats]) -> None:
        self.trace = trace
        self.log = log
        self.truth = truth  # the values the planner treats as forecast when there is no log
        self.known = {z: np.full(len(trace.times), np.nan) for z in trace.zones}
        self.next_issue = 0

    def advance(self, now: float) -> None:
        """Take in every forecast issued at or before `now`."""
        if self.log is None:
            return
        issues = self.log.issues
        while self.next_issue < len(issues) and issues[self.next_issue].issued_s <= now:
            issue = self.log.issues[self.next_issue]
            if issue.zone in self.known:
                self.known[issue.zone][issue.index] = issue.values
            self.next_issue += 1

    def forecasts(
        self, zones: set[str], now: float, until: float
    ) -> tuple[dict[str, Forecast], dict[str, Forecast]]:
        tr = self.trace
        lo = max(0, int(np.searchsorted(tr.times, now, side="right")) - 1)
        hi = min(len(tr.times), int(np.searchsorted(tr.times, until, side="right")) + 1)
        t = tr.times[lo:hi]
        step = timedelta(seconds=tr.step_s)
        issued = _dt(now)
        main: dict[str, Forecast] = {}
        back: dict[str, Forecast] = {}
        tail = np.arange(1, int((until - tr.end_s) // tr.step_s) + 3) * tr.step_s + tr.end_s
        tail = tail if until > tr.end_s else np.zeros(0)
        for z in zones:
            values = self.truth[z][lo:hi] if self.log is None else self.known[z][lo:hi]
            ok = ~np.isnan(values)
            if ok.any():
                points = tuple(
                    IntensityPoint(_dt(float(a)), float(v))
                    for a, v in zip(t[ok], values[ok], strict=True)
                )
                main[z] = Forecast(
                    z, "average", "simulate", "simulated forecast", issued, step, points
                )
            times = np.concatenate((t, tail))
            persist = self._persistence(z, times, now)
            points = tuple(
                IntensityPoint(_dt(float(a)), float(v)) for a, v in zip(times, persist, strict=True)
            )
            if points:
                back[z] = Forecast(z, "average", "persistence", "persistence", issued, step, points)
        return main, back

    def _persistence(self, zone: str, times: Floats, now: float) -> Floats:
        """The true value at the same time of day on the last day observed by `now`."""
        tr = self.trace
        k = np.maximum(np.ceil((times + tr.step_s - now) / _DAY_S - 1e-9), 0.0)
        seen = np.maximum(times - k * _DAY_S, tr.times[0])
        idx = np.clip(np.searchsorted(tr.times, seen, side="right") - 1, 0, len(tr.times) - 1)
        values: Floats = tr.zones[zone][idx]
        return values


def _request(live: _Live, now: float, policy: Policy) -> tuple[JobRequest, list[Reservation]]:
    job = live.job
    reserve: list[Reservation] = []
    if not live.fixed:
        sites = job.zones if policy in ("ecoq", "oracle") else job.zones[:1]
        request = JobRequest(
            key=job.id,
            earliest_start=_dt(max(now, job.submit_s)),
            deadline=_dt(job.deadline_s),
            duration=timedelta(seconds=job.duration_s),
            sites=sites,
            power_kw=job.power_kw,
            interruptible=job.interruptible and policy in ("ecoq", "oracle"),
            max_pauses=job.max_pauses,
            pause="checkpoint",
            run_now=policy == "now",
            min_saving=0.0 if now > job.submit_s else None,  # it already waited
        )
        return request, reserve
    zone, _, last_end = live.fixed[-1]
    gaps = len(live.fixed) - 1
    state: StartState = "running" if last_end >= now - _EPS else "paused"
    if last_end > now:
        reserve.append(Reservation(zone, _dt(now), _dt(last_end)))
    left = None if job.max_pauses is None else max(0, job.max_pauses - gaps - (state == "paused"))
    request = JobRequest(
        key=job.id,
        earliest_start=_dt(max(now, last_end)),
        deadline=_dt(job.deadline_s),
        duration=timedelta(seconds=job.duration_s - live.done_s),
        sites=(zone,),
        power_kw=job.power_kw,
        interruptible=True,
        max_pauses=left,
        pause="checkpoint",
        state=state,
        min_saving=0.0,
    )
    return request, reserve


def simulate(
    trace: Trace,
    jobs: Sequence[SimJob],
    *,
    policy: Policy = "ecoq",
    forecasts: ForecastLog | None = None,
    forecast_error: float | None = None,
    seed: int = 0,
    capacity: int | None = None,
    min_saving: float = 0.02,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Replay `jobs` on `trace` under `policy` and measure their emissions on the true trace.

    Args:
        forecasts: forecasts with their issue times (FORECASTS.csv); None: the planner sees
            the truth, or with `forecast_error` the truth × (1 + noise), noise drawn once per
            target time with standard deviation `forecast_error` (a fraction) from `seed`.
            The `oracle` policy always sees the truth.
        capacity: jobs that may run at once per zone (None: unlimited).
        min_saving: the run-now threshold (a fraction).
        progress: called with (events done, events in all) as the replay advances.

    Raises:
        ValidationError: a job's zone is not in the trace, a job's deadline lies too far past
            the trace's end (`simdata.check_horizon`), `policy` is unknown, or a
            `forecast_error` is negative.
    """
    if policy not in POLICIES:
        raise ValidationError(f"policy {policy!r} is unknown; use one of {POLICIES}")
    if forecast_error is not None and not forecast_error >= 0:
        raise ValidationError(f"--forecast-error {forecast_error} must be a fraction ≥ 0")
    check_horizon(trace, jobs)  # here, not in the CLI: every caller gets it
    for job in jobs:
        missing = [z for z in job.zones if z not in trace.zones]
        if missing:
            raise ValidationError(
                f"job {job.id}: zone {missing[0]!r} is not a column of the intensity trace "
                f"(columns: {', '.join(sorted(trace.zones))})"
            )
    truth = dict(trace.zones)
    log = forecasts if policy != "oracle" else None
    if log is None and forecast_error and policy != "oracle":
        rng = np.random.default_rng(seed)
        truth = {
            z: np.maximum(v * (1 + rng.normal(0.0, forecast_error, len(v))), 0.0)
            for z, v in sorted(trace.zones.items())
        }
    view = _View(trace, log, truth)
    sites = [Site(z, z, slots=capacity) for z in sorted(trace.zones)]
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].submit_s, i))
    events = sorted({jobs[i].submit_s for i in order})
    if log is not None and jobs:
        first, last = events[0], max(j.deadline_s for j in jobs)
        events = sorted(set(events) | {i.issued_s for i in log.issues if first < i.issued_s < last})
    everyone = [_Live(job) for job in jobs]
    live: list[_Live] = []
    arrived = 0
    plan_s = 0.0
    for n, now in enumerate(events):
        view.advance(now)
        for item in live:
            _commit(item, now)
        live = [item for item in live if not item.finished() or item.fixed[-1][2] > now]
        new: list[_Live] = []
        while arrived < len(order) and jobs[order[arrived]].submit_s <= now:
            new.append(everyone[order[arrived]])
            arrived += 1
        live.extend(new)
        if policy in ("now", "window"):
            todo = new  # decided once, at submission
        else:
            todo = [item for item in live if not item.finished()]
        if todo:
            plan_s += _plan(view, live, todo, now, policy, sites, min_saving)
        if policy in ("now", "window"):
            for item in new:
                _commit(item, float("inf"))
        if progress is not None:
            progress(n + 1, len(events))
    for item in live:
        _commit(item, float("inf"))
    return _measure(trace, everyone, plan_s)


def _commit(item: _Live, now: float) -> None:
    """Fix every planned segment that has started by `now` (a started segment is never moved)."""
    if item.plan is None:
        return
    for seg in item.plan.segments:
        a, b = _ts(seg.start), _ts(seg.end)
        if a < now and not item.finished():
            b = min(b, a + item.job.duration_s - item.done_s)
            if (
                item.fixed
                and item.fixed[-1][0] == item.plan.zone
                and abs(item.fixed[-1][2] - a) < _EPS
            ):
                zone, a0, _ = item.fixed.pop()
                item.fixed.append((zone, a0, b))
            else:
                item.fixed.append((item.plan.zone, a, b))
    item.plan = None


def _plan(
    view: _View,
    live: list[_Live],
    todo: list[_Live],
    now: float,
    policy: Policy,
    sites: list[Site],
    min_saving: float,
) -> float:
    requests: list[JobRequest] = []
    reservations: list[Reservation] = []
    for item in live:
        if item in todo:
            continue
        for zone, a, b in item.fixed:
            if b > now:
                reservations.append(Reservation(zone, _dt(max(a, now)), _dt(b)))
        if item.plan is not None:
            for seg in item.plan.segments:
                reservations.append(Reservation(item.plan.zone, seg.start, seg.end))
    for item in todo:
        request, reserve = _request(item, now, policy)
        requests.append(request)
        reservations.extend(reserve)
    zones = {z for r in requests for z in r.sites}
    until = (
        max(_ts(r.deadline) for r in requests) + max(r.duration for r in requests).total_seconds()
    )
    main, back = view.forecasts(zones, now, until + view.trace.step_s)
    began = time.perf_counter()
    placed = plan_jobs(
        requests, sites, main, now=_dt(now), fallbacks=back, reservations=reservations,
        min_saving=min_saving,
    )  # fmt: skip
    spent = time.perf_counter() - began
    for item, p in zip(todo, placed, strict=True):
        item.plan = p
    return spent


def _measure(trace: Trace, items: list[_Live], plan_s: float) -> SimResult:
    segments: list[ScheduledSegment] = []
    baseline = scheduled = 0.0
    misses = 0
    for item in items:
        job = item.job
        home = job.zones[0]
        baseline += job.power_kw * trace.integral(home, job.submit_s, job.submit_s + job.duration_s)
        for zone, a, b in item.fixed:
            scheduled += job.power_kw * trace.integral(zone, a, b)
            segments.append(ScheduledSegment(job.id, zone, _dt(a), _dt(b)))
        if not item.fixed or item.fixed[-1][2] > job.deadline_s + 1e-3:
            misses += 1
    baseline_g, scheduled_g = baseline / 3600.0, scheduled / 3600.0
    pct = 100.0 * (baseline_g - scheduled_g) / baseline_g if baseline_g > 0 else 0.0
    return SimResult(segments, len(items), baseline_g, scheduled_g, pct, misses, plan_s)
