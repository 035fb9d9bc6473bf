"""Glue between the planner and the queue: one `plan_jobs` call over the jobs that wait.

`ecoq submit` (a preview of the decision, stored with the job) and the daemon's tick both plan
through `plan_batch`, which calls the same `ecoq.scheduler.planning.plan_jobs` as `ecoq simulate`:
what is simulated is what runs.

- **Site.** This box is one site (`LocalSite`): its zone (`site.zone`, else each job's home
  zone), its GPUs and `site.max_jobs` as capacity. Several daemons sharing a database each
  count as a site like this one (the dispatchers enforce real capacity). A job that allows
  zones without a site here is planned on this box, and its reason says so.
- **Capacity held.** Running and paused jobs, and waiting jobs that keep their plan, are
  reservations: a stopped (SIGSTOP) job keeps its GPUs until its last segment ends.
- **Forecasts.** Fetched once per zone per re-plan, from the failover chain
  (`ecoq.scheduler.forecasts.ForecastSource`) over the widest window needed, with the bundled
  typical profile as fallback beyond the horizon of an average-signal forecast. With no
  forecast at all, jobs start per `planner.fail_policy`: a deadline is never missed because a
  forecast was missing.
- **Drift.** A job that already decided to wait (or ran a segment) is re-planned with
  `min_saving = 0`; re-deciding "run now or wait" against every later "now" would let it drift
  to worse hours.
- **Started segments never move.** Only the remaining work of a paused (or checkpointed) job is
  re-planned; a running job keeps its plan.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting import Forecast
from ecoq.models import Job
from ecoq.scheduler import segments as segs
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.planning import JobRequest, Placement, Reservation, Rule, plan_jobs
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.sites import Site, SiteMap
from ecoq.states import JobState

__all__ = ["PLAN_KEYS", "LocalSite", "PlannerParams", "plan_batch", "replan"]

log = logging.getLogger(__name__)
S = JobState
#: The shortest remaining work a job is planned for (an overrunning job still needs a slot).
_MIN_LEFT = timedelta(seconds=60)
#: How long the capacity of a job the user paused is taken to stay held.
_USER_HOLD = timedelta(hours=1)


@dataclass(frozen=True)
class PlannerParams:
    """The `[planner]` settings the planner needs."""

    min_saving: float = 0.02
    rule: Rule = "interval"
    fail_policy: Literal["now", "latest"] = "now"


@dataclass(frozen=True)
class LocalSite:
    """This box as the planner sees it.

    Attributes:
        name: the site (worker) name.
        zone: its grid zone; None: each job is planned in its home zone.
        gpus: GPUs it has (0: no GPU limit, since no job can get one here).
        max_jobs: jobs it may run at once (0: no limit beyond the GPUs).
        idle_w_per_gpu: watts a stopped (SIGSTOP) job's GPU still draws; weighs pauses.
        daemons: live daemons sharing the database: capacity is counted this many times, and
            every daemon's running jobs hold it.
    """

    name: str
    zone: str | None = None
    gpus: int = 0
    max_jobs: int = 0
    idle_w_per_gpu: float = 50.0
    daemons: int = 1

    @property
    def limited(self) -> bool:
        """Whether capacity limits the plan (GPUs or job slots)."""
        return self.gpus > 0 or self.max_jobs > 0

    def site(self, zone: str) -> Site:
        """The planner's `Site` in `zone`."""
        n = max(1, self.daemons)
        return Site(
            name=self.name,
            zone=zone,
            gpus=self.gpus * n if self.gpus > 0 else None,
            slots=self.max_jobs * n if self.max_jobs > 0 else None,
            idle_w_per_gpu=self.idle_w_per_gpu,
        )


#: The columns every plan writes (`Queue.set_plans` needs the same keys on every row).
PLAN_KEYS = (
    "planned_start",
    "plan_g_per_kwh",
    "now_g_per_kwh",
    "plan_signal",
    "plan_source",
    "plan_label",
    "plan_reason",
    "forecast_issued_at",
    "segments",
    "plan_zone",
    "plan_candidates",
    "plan_runner_up_start",
    "plan_runner_up_g_per_kwh",
    "plan_runner_up_zone",
    "plan_saving",
    "plan_min_saving",
    "plan_asap",
    "site",
)


def remaining(job: Job) -> timedelta:
    """Work the job still has to do (its duration less the work done; at least a minute)."""
    return max(timedelta(seconds=job.duration_s - job.work_done_s), _MIN_LEFT)


def _started(job: Job) -> bool:
    return job.state == S.PAUSED or job.pauses > 0 or job.work_done_s > 0


def _earliest(job: Job, now: datetime) -> datetime:
    if job.state == S.PAUSED:
        return now
    return max(now, job.not_before or now)


def _request(key: int, job: Job, now: datetime, site: str, params: PlannerParams) -> JobRequest:
    waited = (job.plan_saving or 0.0) > 0 or _started(job)
    left = None if job.max_pauses is None else max(0, job.max_pauses - job.pauses)
    return JobRequest(
        key=key,
        earliest_start=_earliest(job, now),
        deadline=job.deadline,
        duration=remaining(job),
        sites=(site,),
        gpus=job.gpus,
        interruptible=job.interruptible,
        max_pauses=left,
        min_segment=timedelta(seconds=job.min_segment_s),
        pause="checkpoint" if job.checkpoint_signal else "stop",
        state="paused" if job.state == S.PAUSED else "new",
        min_saving=0.0 if waited else None,
    )


def reservations(jobs: Sequence[Job], site: str, now: datetime) -> list[Reservation]:
    """The capacity that `jobs` (active, or waiting with a plan they keep) hold at `site`."""
    out: list[Reservation] = []

    def hold(job: Job, a: datetime, b: datetime) -> None:
        if b > now and b > a:
            out.append(Reservation(site, max(a, now), b, gpus=job.gpus))

    for job in jobs:
        spans = [(a, b) for a, b in segs.load(job.segments) if b > now]
        stop = job.checkpoint_signal is None
        if job.state == S.RUNNING:
            began = job.segment_started_at or job.started_at or now
            end = job.segment_end or began + remaining(job)
            hold(job, now, max(end, now + _MIN_LEFT))
            later = [(a, b) for a, b in spans if a >= end]
            if later and stop:
                hold(job, end, later[-1][1])
            for a, b in later if not stop else ():
                hold(job, a, b)
        elif job.state == S.PAUSED:
            if job.held or not spans:
                hold(job, now, now + max(_USER_HOLD, remaining(job)))
            else:
                hold(job, now, spans[-1][1])
        elif job.state == S.PLANNED and not job.held and job.planned_start is not None:
            if job.run_now or not spans:
                hold(job, job.planned_start, job.planned_start + remaining(job))
            elif stop:
                hold(job, spans[0][0], spans[-1][1])
            else:
                for a, b in spans:
                    hold(job, a, b)
    return out


def _forecasts(
    source: ForecastSource, zone: str, now: datetime, end: datetime
) -> tuple[Forecast | None, Forecast | None]:
    """The zone's forecast (None: no step of the chain has one) and the fallback beyond its
    horizon. Raises UnknownZone."""
    forecast = source.forecast(zone, now, end)
    if forecast is None or source.bundled is None or forecast.source == "bundled":
        return forecast, None
    try:
        return forecast, source.bundled.forecast(zone, now, end)
    except (ForecastUnavailable, UnknownZone):
        return forecast, None


def plan_batch(
    todo: Sequence[Job],
    holding: Sequence[Job],
    source: ForecastSource,
    now: datetime,
    params: PlannerParams,
    site: "LocalSite | SiteMap",
    *,
    strict: bool = False,
) -> list[tuple[Job, dict[str, Any]]]:
    """Plan `todo` in one go, with the capacity `holding` jobs already take. With a `SiteMap`
    (`[[sites]]`), `ecoq.scheduler.siteplan.plan_sites` picks site and time together.

    Returns `(job, column values)` for each job that gets a plan (every key of `PLAN_KEYS`); a
    job whose zone became unknown and that already has a plan keeps it (it is left out). Jobs
    are grouped by the zone they are planned in and the groups planned one after another on
    this box's capacity.

    Raises:
        UnknownZone: with `strict` (`ecoq submit`), when the forecast source does not know a
            zone; otherwise such jobs start now, and their reason says why.
    """
    if isinstance(site, SiteMap):
        from ecoq.scheduler.siteplan import plan_sites

        return plan_sites(todo, holding, source, now, params, site, strict=strict)
    taken = reservations(holding, site.name, now)
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(todo):
        groups.setdefault(site.zone or job.zone, []).append(i)
    out: list[tuple[Job, dict[str, Any]]] = []
    for zone, members in sorted(groups.items()):
        jobs = [todo[i] for i in members]
        requests = [_request(i, todo[i], now, site.name, params) for i in members]
        end = max(max(r.deadline, r.earliest_start + r.duration) for r in requests)
        try:
            forecast, fallback = _forecasts(source, zone, now, end + timedelta(hours=1))
        except UnknownZone as exc:
            if strict:
                raise
            for job in jobs:
                if job.planned_start is None:
                    out.append((job, _unplanned(job, now, f"cannot plan: {exc}", zone)))
            continue
        note = ""
        asked = list(requests)  # before `_no_forecast` moves the earliest start (plan_asap)
        if forecast is None:
            requests = [_no_forecast(r, params) for r in requests]
            note = f"no forecast for {zone}: start per fail_policy={params.fail_policy}"
        placed = plan_jobs(
            requests,
            [site.site(zone)],
            {zone: forecast} if forecast is not None else {},
            now=now,
            fallbacks={zone: fallback} if fallback is not None else {},
            reservations=taken,
            min_saving=params.min_saving,
            rule=params.rule,
        )
        if forecast is not None:
            placed = _with_runner_ups(requests, placed, site.site(zone), forecast, fallback, now)
        for job, request, original, p in zip(jobs, requests, asked, placed, strict=True):
            threshold = params.min_saving if request.min_saving is None else request.min_saving
            fields = _fields(job, p, forecast, now, note, threshold)
            fields["plan_asap"] = _asap(original, p)
            fields["site"] = None  # any daemon sharing the database may start it
            out.append((job, fields))
            taken.extend(_held_by(job, p, site.name))
    return out


def _with_runner_ups(
    requests: Sequence[JobRequest],
    placed: Sequence[Placement],
    site: Site,
    forecast: Forecast,
    fallback: Forecast | None,
    now: datetime,
) -> list[Placement]:
    """Fill in the runner-up that `ecoq show` explains where the planner names none (it names
    the best window at another site): for a plan in slots, the cleanest contiguous window; for
    a window, the cleanest one that does not overlap it (before or after). One more vectorised
    `plan_jobs` call, capacity aside."""
    alts: list[JobRequest] = []
    owner: list[int] = []
    for i, (r, p) in enumerate(zip(requests, placed, strict=True)):
        if p.runner_up_start is not None or p.mean_g_per_kwh is None:
            continue
        options = []
        if len(p.segments) > 1:
            options.append(replace(r, interruptible=False))
        else:
            if p.start - r.earliest_start >= r.duration:
                options.append(replace(r, deadline=p.start, interruptible=False))
            if r.deadline - p.end >= r.duration:
                options.append(replace(r, earliest_start=p.end, interruptible=False))
        for option in options:
            alts.append(replace(option, key=len(alts), min_saving=0.0, run_now=False))
            owner.append(i)
    if not alts:
        return list(placed)
    free = Site(name=site.name, zone=site.zone, pue=site.pue)
    found = plan_jobs(
        alts,
        [free],
        {site.zone: forecast},
        now=now,
        fallbacks={site.zone: fallback} if fallback is not None else {},
        min_saving=0.0,
    )
    best: dict[int, Placement] = {}
    for i, alt in zip(owner, found, strict=True):
        mean = alt.mean_g_per_kwh
        if mean is not None and not alt.late:
            held = best.get(i)
            if held is None or mean < (held.mean_g_per_kwh or float("inf")):
                best[i] = alt
    out = list(placed)
    for i, alt in best.items():
        out[i] = replace(
            out[i],
            runner_up_site=alt.site,
            runner_up_start=alt.start,
            runner_up_g_per_kwh=alt.mean_g_per_kwh,
        )
    return out


def _asap(request: JobRequest, p: Placement) -> bool:
    """Whether the plan starts the job as early as it can: at its earliest start, or later only
    because there was no room earlier (then the dispatcher may start it once there is)."""
    if (p.warning or "").startswith("no capacity now"):
        return True
    return len(p.segments) == 1 and p.start - request.earliest_start < timedelta(seconds=1)


def _no_forecast(request: JobRequest, params: PlannerParams) -> JobRequest:
    earliest = request.earliest_start
    if params.fail_policy == "latest":
        earliest = max(earliest, request.deadline - request.duration)
    return replace(request, earliest_start=earliest, run_now=True)


def _held_by(job: Job, p: Placement, site: str) -> list[Reservation]:
    if job.checkpoint_signal is None:
        return [Reservation(site, p.start, p.end, gpus=job.gpus)]
    return [Reservation(site, s.start, s.end, gpus=job.gpus) for s in p.segments]


def _reason(job: Job, p: Placement, zone: str) -> str:
    reason = p.reason + (f"; warning: {p.warning}" if p.warning else "")
    allowed = job.zones or [job.zone]
    others = [z for z in allowed if z != zone]
    if others:
        where = "allowed" if zone in allowed else "asked for"
        reason += f"; {', '.join(others)} {where} but no site there: planned on {p.site} ({zone})"
    return reason


def _done(job: Job, now: datetime) -> list[segs.Span]:
    """Segments the job already ran (kept as they were)."""
    if not _started(job):
        return []
    return [(a, b) for a, b in segs.load(job.segments) if a < now]


def _fields(
    job: Job,
    p: Placement,
    forecast: Forecast | None,
    now: datetime,
    note: str,
    threshold: float,
) -> dict[str, Any]:
    spans = [*_done(job, now), *((s.start, s.end) for s in p.segments)]
    reason = _reason(job, p, p.zone)
    if note:
        reason = note + (f"; warning: {p.warning}" if p.warning else "")
    return {
        "planned_start": p.start,
        "plan_g_per_kwh": p.mean_g_per_kwh,
        "now_g_per_kwh": p.now_g_per_kwh,
        "plan_signal": forecast.signal if forecast else None,
        "plan_source": forecast.source if forecast else None,
        "plan_label": forecast.label if forecast else "no forecast",
        "plan_reason": reason,
        "forecast_issued_at": forecast.issued_at if forecast else None,
        "segments": segs.dump(spans),
        "plan_zone": p.zone,
        "plan_candidates": p.candidates,
        "plan_runner_up_start": p.runner_up_start,
        "plan_runner_up_g_per_kwh": p.runner_up_g_per_kwh,
        "plan_runner_up_zone": p.zone if p.runner_up_site else None,
        "plan_saving": p.saving_fraction,
        "plan_min_saving": threshold,
    }


def _unplanned(job: Job, now: datetime, reason: str, zone: str) -> dict[str, Any]:
    start = _earliest(job, now)
    fields: dict[str, Any] = dict.fromkeys(PLAN_KEYS)
    fields.update(
        planned_start=start,
        plan_label="no forecast",
        plan_reason=reason,
        segments=segs.dump([(start, start + remaining(job))]),
        plan_zone=zone,
        plan_saving=0.0,
        plan_asap=True,
    )
    return fields


def split(
    jobs: Sequence[Job], site: "LocalSite | SiteMap", *, all_waiting: bool
) -> tuple[list[Job], list[Job]]:
    """The jobs to plan now, and those that hold capacity meanwhile.

    Planned: pending jobs; with `all_waiting` also planned ones and this daemon's jobs in a
    planned pause. Held and run-now jobs keep their plan; a job for another site is left out
    (with a `SiteMap`, every site's jobs are planned together).
    """
    if isinstance(site, SiteMap):
        from ecoq.scheduler.siteplan import split_sites

        return split_sites(jobs, site, all_waiting=all_waiting)
    todo: list[Job] = []
    holding: list[Job] = []
    for job in jobs:
        if job.site not in (None, site.name):
            continue
        if job.state in (S.RUNNING, S.PAUSED) and site.daemons <= 1 and job.worker != site.name:
            continue  # another daemon's (a lost one's): not this box's capacity
        plannable = not job.held and not job.run_now and job.request is None
        replannable = all_waiting and (
            job.state == S.PLANNED
            or (job.state == S.PAUSED and job.worker == site.name and job.planned_start is not None)
        )
        if plannable and (job.state == S.PENDING or replannable):
            todo.append(job)
        else:
            holding.append(job)
    return todo, holding


def replan(
    queue: Queue,
    source: ForecastSource,
    now: datetime,
    params: PlannerParams,
    site: "LocalSite | SiteMap",
    *,
    all_waiting: bool,
) -> int:
    """Plan pending jobs (and re-plan every waiting one, and the remaining work of jobs in a
    planned pause, when `all_waiting`) in one `plan_jobs` call. Returns how many got a plan.

    Held jobs and jobs started by hand (`ecoq start`) keep their plan.
    """
    if not all_waiting and not queue.has_pending():
        return 0
    todo, holding = split(queue.planning_jobs(), site, all_waiting=all_waiting)
    if not todo:
        return 0
    planned = plan_batch(todo, holding, source, now, params, site)
    rows = [(job.id, job.state, fields) for job, fields in planned if job.id is not None]
    # Planning may take seconds: a job a user changed meanwhile keeps the user's change.
    return queue.set_plans(rows, seen={job.id: job.updated_at for job in todo if job.id})
