"""Planning across `[[sites]]`: one `plan_jobs` call picks each job's site and time together.

`ecoq.scheduler.replan` plans this box alone when no sites are configured; with a `SiteMap` it
calls `plan_sites` here instead:

- **Allowed sites.** A job may run at the usable sites in its zones (`--zone DE --zone FR`,
  `--region europe`), home zone first. A job that already ran (a paused or checkpointed job)
  stays at its site. Interruptible jobs are paused by ecoq daemons, so they are split only at
  daemon sites; at a Slurm site they run contiguously.
- **Capacity.** Each site's GPUs and slots, held by the jobs running there and by the waiting
  jobs that keep their plan; every site is planned in the same call, so jobs spread over sites
  and hours instead of piling onto one green hour.
- **Forecasts** are fetched once per zone in use. A zone without any forecast is used only by
  jobs with nowhere else to go, which then start per `planner.fail_policy`.
- The chosen site is stored in `jobs.site`: its daemon (or the daemons driving its Slurm
  cluster) starts the job.
"""

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ecoq.errors import UnknownZone, ValidationError
from ecoq.forecasting import Forecast
from ecoq.models import Job
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.planning import JobRequest, Placement, Reservation, plan_jobs
from ecoq.scheduler.replan import (
    PlannerParams,
    _asap,
    _fields,
    _forecasts,
    _no_forecast,
    _request,
    _started,
    _unplanned,
    _with_runner_ups,
    reservations,
)
from ecoq.scheduler.sites import SiteMap
from ecoq.states import JobState

__all__ = ["plan_sites", "split_sites"]

S = JobState


def split_sites(
    jobs: Sequence[Job], sites: SiteMap, *, all_waiting: bool
) -> tuple[list[Job], list[Job]]:
    """The jobs to plan now and those that hold capacity meanwhile (`replan.split` for a
    `SiteMap`: every site's jobs, since one planner at a time plans them all)."""
    todo: list[Job] = []
    holding: list[Job] = []
    for job in jobs:
        plannable = not job.held and not job.run_now and job.request is None
        replannable = all_waiting and (
            job.state == S.PLANNED or (job.state == S.PAUSED and job.planned_start is not None)
        )
        if plannable and (job.state == S.PENDING or replannable):
            todo.append(job)
        else:
            holding.append(job)
    return todo, holding


def _zones(job: Job) -> list[str]:
    return list(job.zones or [job.zone])


def _allowed(job: Job, sites: SiteMap) -> list[str]:
    """The sites `job` may be planned at, home first (empty: none serves its zones)."""
    if _started(job) and sites.get(job.site) is not None:
        return [str(job.site)]  # a job that ran stays where its state is
    found = sites.in_zones(_zones(job))
    if job.interruptible:
        daemons = [s for s in found if s.kind != "slurm"]
        found = daemons or found
    return [s.name for s in found]


def plan_sites(
    todo: Sequence[Job],
    holding: Sequence[Job],
    source: ForecastSource,
    now: datetime,
    params: PlannerParams,
    sites: SiteMap,
    *,
    strict: bool = False,
) -> list[tuple[Job, dict[str, Any]]]:
    """Plan `todo` over every usable site in one `plan_jobs` call, with the capacity `holding`
    jobs take where they run or are planned. Returns `(job, column values)` for each job that
    gets a plan (every key of `replan.PLAN_KEYS`, `site` included).

    Raises:
        ValidationError: with `strict` (`ecoq submit`), when no site serves the job's zones.
        UnknownZone: with `strict`, when the forecast source does not know a site's zone.
    """
    taken = _taken(holding, sites, now)
    allowed = {i: _allowed(job, sites) for i, job in enumerate(todo)}
    out: list[tuple[Job, dict[str, Any]]] = []
    for i, names in allowed.items():
        if not names:
            job = todo[i]
            where = ", ".join(f"{s.name} ({s.zone})" for s in sites.usable()) or "none"
            message = (
                f"no usable site serves zone(s) {', '.join(_zones(job))}; sites: {where}. "
                "Fix: pass --zone for a site's zone, or add a [[sites]] entry there"
            )
            if strict:
                raise ValidationError(message)
            if job.planned_start is None:
                out.append(
                    (
                        job,
                        {**_unplanned(job, now, f"cannot plan: {message}", job.zone), "site": None},
                    )
                )
    todo_ok = [i for i, names in allowed.items() if names]
    if not todo_ok:
        return out
    requests = {i: _request(i, todo[i], now, allowed[i][0], params) for i in todo_ok}
    end = max(max(r.deadline, r.earliest_start + r.duration) for r in requests.values())
    zones = sorted({sites_zone for i in todo_ok for sites_zone in _site_zones(sites, allowed[i])})
    forecasts: dict[str, Forecast] = {}
    fallbacks: dict[str, Forecast] = {}
    trouble: dict[str, str] = {}
    for zone in zones:
        try:
            forecast, fallback = _forecasts(source, zone, now, end + timedelta(hours=1))
        except UnknownZone as exc:
            if strict:
                raise
            trouble[zone] = f"cannot plan in {zone}: {exc}"
            continue
        if forecast is None:
            trouble[zone] = f"no forecast for {zone}: start per fail_policy={params.fail_policy}"
            continue
        forecasts[zone] = forecast
        if fallback is not None:
            fallbacks[zone] = fallback
    notes: dict[int, str] = {}
    asked: dict[int, JobRequest] = {}  # before `_no_forecast` moves the start (plan_asap)
    for i in todo_ok:
        names = allowed[i]
        scored = [n for n in names if _zone_of(sites, n) in forecasts]
        request = replace(requests[i], sites=tuple(scored or names))
        if todo[i].interruptible and all(_kind(sites, n) == "slurm" for n in request.sites):
            request = replace(request, interruptible=False)
        asked[i] = request
        if not scored:
            request = _no_forecast(request, params)
            notes[i] = trouble.get(_zone_of(sites, names[0]), "no forecast")
        requests[i] = request
    ordered = [requests[i] for i in todo_ok]
    placed = plan_jobs(
        ordered,
        list(sites.sites),
        forecasts,
        now=now,
        fallbacks=fallbacks,
        reservations=taken,
        min_saving=params.min_saving,
        rule=params.rule,
    )
    placed = _runner_ups(ordered, placed, sites, forecasts, fallbacks, now)
    for i, request, p in zip(todo_ok, ordered, placed, strict=True):
        job = todo[i]
        threshold = params.min_saving if request.min_saving is None else request.min_saving
        fields = _fields(job, p, forecasts.get(p.zone), now, notes.get(i, ""), threshold)
        fields["plan_asap"] = _asap(asked[i], p)
        fields["site"] = p.site
        fields["plan_runner_up_zone"] = (
            _zone_of(sites, p.runner_up_site) if p.runner_up_site else None
        )
        if p.site != request.sites[0] and i not in notes:
            home = _zone_of(sites, request.sites[0])
            fields["plan_reason"] = (
                f"{fields['plan_reason']}; relocated from {home} to {p.zone} ({p.site})"
            )
        out.append((job, fields))
    return out


def _taken(holding: Sequence[Job], sites: SiteMap, now: datetime) -> list[Reservation]:
    """The capacity `holding` jobs take, at the site each runs or is planned at."""
    by_site: dict[str, list[Job]] = {}
    for job in holding:
        name = job.site if sites.get(job.site) is not None else None
        if name is None and job.worker is not None and sites.get(job.worker) is not None:
            name = job.worker  # claimed before it had a site (or without [[sites]])
        if name is not None:
            by_site.setdefault(name, []).append(job)
    out: list[Reservation] = []
    for name, jobs in sorted(by_site.items()):
        out += reservations(jobs, name, now)
    return out


def _zone_of(sites: SiteMap, name: str | None) -> str:
    site = sites.get(name)
    return site.zone if site is not None else ""


def _kind(sites: SiteMap, name: str) -> str:
    site = sites.get(name)
    return site.kind if site is not None else ""


def _site_zones(sites: SiteMap, names: Sequence[str]) -> set[str]:
    return {_zone_of(sites, n) for n in names}


def _runner_ups(
    requests: Sequence[JobRequest],
    placed: Sequence[Placement],
    sites: SiteMap,
    forecasts: dict[str, Forecast],
    fallbacks: dict[str, Forecast],
    now: datetime,
) -> list[Placement]:
    """`replan._with_runner_ups` per chosen site (the planner names a runner-up at another
    site itself when there is one)."""
    out = list(placed)
    by_site: dict[str, list[int]] = {}
    for k, p in enumerate(placed):
        if p.zone in forecasts:
            by_site.setdefault(p.site, []).append(k)
    for name, members in sorted(by_site.items()):
        site = sites.get(name)
        assert site is not None
        found = _with_runner_ups(
            [requests[k] for k in members],
            [placed[k] for k in members],
            site,
            forecasts[site.zone],
            fallbacks.get(site.zone),
            now,
        )
        for k, p in zip(members, found, strict=True):
            out[k] = p
    return out
