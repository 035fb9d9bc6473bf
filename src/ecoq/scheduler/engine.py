"""The engine behind `ecoq.scheduler.planning.plan_jobs`: score, choose, then fit capacity.

1. Score (vectorised, per zone): every job's cleanest contiguous window at every allowed site
   (`scoring.Candidates`, jobs grouped by length), and for interruptible jobs the cleanest slots
   (`interruptible`; many unlimited-pause jobs at once by `cheapest_batch`, the others with DP
   tables shared by the jobs that start at the same cell).
2. Choose per job: the lowest intensity × PUE over sites (ties: earlier start, then the order the
   job lists its sites), interruptible slots when they beat the best window; "run now" when the
   saving against starting now at home is below `min_saving`.
3. Fit capacity, in order of least slack: keep the choice when the site has room for it over
   time (GPUs and job slots per cell), else take the best plan that fits (`fitting`, and
   `capacity.fit_slots` for interruptible jobs), else the earliest feasible start, with a
   warning. A stopped (SIGSTOP) pause keeps its GPUs and slot busy.

Times are epoch seconds (floats) here; each zone's grid converts them to its own seconds.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from math import isfinite

import numpy as np

from ecoq.forecasting import Forecast
from ecoq.scheduler.capacity import (
    Choice,
    Context,
    Usage,
    ZoneGrid,
    better,
    cells_ok,
    dt,
    fit_slots,
    slot_problem,
    slots_choice,
    take,
    ts,
    weights_of,
)
from ecoq.scheduler.fitting import fit_bounds, fit_contiguous
from ecoq.scheduler.interruptible import SlotPlan, cheapest_batch, plan_slots_many, segments_of
from ecoq.scheduler.planning import JobRequest, Placement, Reservation, Rule, Segment
from ecoq.scheduler.scoring import (
    TIE_REL,
    Bools,
    Candidates,
    Floats,
    Ints,
    build_curve,
    empty_curve,
)
from ecoq.scheduler.sites import Site

__all__ = ["place_jobs"]

_EPS = 1e-6


def _build_zones(
    ctx_jobs: list[JobRequest],
    sites: list[Site],
    site_index: dict[str, int],
    forecasts: Mapping[str, Forecast],
    fallbacks: Mapping[str, Forecast],
    start: datetime,
    end: datetime,
    rule: Rule,
) -> dict[str, ZoneGrid]:
    zones: dict[str, ZoneGrid] = {}
    for zone in sorted({sites[site_index[n]].zone for j in ctx_jobs for n in j.sites}):
        f, fb = forecasts.get(zone), fallbacks.get(zone)
        if f is None and fb is None:
            curve = empty_curve(start, end)
        else:
            curve = build_curve(f, fallback=fb, start=start, end=end, rule=rule)
        zones[zone] = ZoneGrid(curve, curve.cell_costs())
    return zones


def _score_contiguous(ctx: Context, allowed: Bools) -> tuple[Floats, Floats, Floats, Ints]:
    """Per job × zone-site: best start (epoch s), mean × PUE, now mean × PUE, candidates."""
    nj, ns = len(ctx.jobs), len(ctx.sites)
    start = np.full((nj, ns), np.nan)
    mean = np.full((nj, ns), np.inf)
    now = np.full((nj, ns), np.inf)
    count = np.zeros((nj, ns), dtype=np.int64)
    latest = ctx.dl - ctx.dur
    profiles = sorted({job.profile for job in ctx.jobs})
    pid_of = {p: i for i, p in enumerate(profiles)}
    profile_ids = np.array([pid_of[job.profile] for job in ctx.jobs], dtype=np.int64)
    for zname, zone in ctx.zones.items():
        zsites = [i for i, s in enumerate(ctx.sites) if s.zone == zname]
        members = np.flatnonzero(allowed[:, zsites].any(axis=1))
        origin = zone.origin_s
        for pid, profile in enumerate(profiles):
            idx = members[profile_ids[members] == pid]
            if len(idx) == 0:
                continue
            durs, rows = np.unique(ctx.dur[idx], return_inverse=True)
            # Searches start from a job's earliest start, or up to its latest.
            until = float(np.maximum(ctx.e[idx], latest[idx]).max()) - origin
            cands = Candidates.build(zone.curve, durs, weights_of(profile), until_s=until)
            zone.cands[profile] = cands
            for r, d in enumerate(durs):
                zone.rows[(profile, float(d))] = r
            s, m, n0, c, first_m, last_m = cands.best(
                rows, ctx.e[idx] - origin, latest[idx] - origin
            )
            cands.release()  # the capacity phase only needs the scored rows
            ctx.ends.setdefault(zname, np.full((len(ctx.jobs), 2), np.inf))[idx] = np.stack(
                (first_m, last_m), axis=1
            )
            fit_bounds(ctx, zname, cands, idx, rows)
            for si in zsites:
                pue = ctx.sites[si].pue
                ok = allowed[idx, si]
                sel = idx[ok]
                start[sel, si] = s[ok] + origin
                mean[sel, si] = m[ok] * pue
                now[sel, si] = n0[ok] * pue
                count[sel, si] = c[ok]
    return start, mean, now, count


def _interruptible(ctx: Context, todo: list[tuple[int, int]]) -> dict[tuple[int, int], Choice]:
    """Slot plans for (job, site) pairs without capacity; unlimited free pauses in batches,
    the others with shared DP tables (`plan_slots_many`)."""
    out: dict[tuple[int, int], Choice] = {}
    batches: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    asked: list[tuple[int, int]] = []
    problems = []
    for j, si in todo:
        p = slot_problem(ctx, j, si)
        if p is None:
            continue
        if p.max_pauses is None and p.min_cells == 1 and not _any_idle(ctx, p.idle):
            batches.setdefault((si, p.need), []).append((j, p.first, p.stop, p.need))
            continue
        asked.append((j, si))
        problems.append(p)
    for (j, si), plan in zip(asked, plan_slots_many(problems), strict=True):
        ctx.free_slots[(j, si)] = plan
        if plan is not None:
            out[(j, si)] = slots_choice(ctx, j, si, plan)
    for (si, need), items in batches.items():
        zone = ctx.zone_of(si)
        run = zone.costs * ctx.sites[si].pue
        firsts = np.array([max(0, f) for _, f, _, _ in items], dtype=np.int64)
        stops = np.array([min(s, len(run)) for _, _, s, _ in items], dtype=np.int64)
        sums, cells = cheapest_batch(run, firsts, np.maximum(stops, firsts), need)
        for row, (j, _, _, _) in enumerate(items):
            ctx.free_slots[(j, si)] = None
            if np.isfinite(sums[row]):
                # Not `clear`: ties may be broken otherwise than `plan_slots` breaks them.
                plan = SlotPlan(segments_of(cells[row]), float(sums[row]), clear=False)
                ctx.free_slots[(j, si)] = plan
                out[(j, si)] = slots_choice(ctx, j, si, plan)
    return out


def _any_idle(ctx: Context, idle: Floats) -> bool:
    key = id(idle)
    if key not in ctx.idle_any:
        ctx.idle_any[key] = bool(np.any(idle > 0))
    return ctx.idle_any[key]


def build_context(
    jobs: list[JobRequest],
    sites: list[Site],
    forecasts: Mapping[str, Forecast],
    *,
    now: datetime,
    fallbacks: Mapping[str, Forecast],
    reservations: list[Reservation],
    min_saving: float,
    rule: Rule,
) -> Context:
    """Steps 1 and 2's scoring for `place_jobs` (non-empty `jobs`): grids, capacity taken by
    `reservations`, and every job's cleanest window at every allowed site."""
    site_index = {s.name: i for i, s in enumerate(sites)}
    now_s = ts(now)
    second = timedelta(seconds=1)
    e = np.array([max(ts(j.earliest_start), now_s) for j in jobs])
    dl = np.array([ts(j.deadline) for j in jobs])
    dur = np.array([j.duration / second for j in jobs])
    horizon = max(float(dl.max()), float((e + dur).max()), *(ts(r.end) for r in reservations))
    end = dt(horizon + float(dur.max()) + 3600.0)
    zones = _build_zones(jobs, sites, site_index, forecasts, fallbacks, dt(now_s), end, rule)
    usage = [Usage(s, zones[s.zone].curve.n) if s.zone in zones else Usage(s, 0) for s in sites]
    ctx = Context(jobs, sites, zones, usage, e, dl, dur, min_saving, site_index)
    held: dict[int, list[Reservation]] = {}
    for r in reservations:
        held.setdefault(site_index[r.site], []).append(r)
    for si, taken in held.items():
        if sites[si].zone in zones:
            c0, c1 = zones[sites[si].zone].cell_ranges(
                np.array([ts(r.start) for r in taken]), np.array([ts(r.end) for r in taken])
            )
            gpus = np.array([r.gpus for r in taken], dtype=np.int64)
            usage[si].add_many(c0, c1, gpus, np.array([r.slots for r in taken], dtype=np.int64))
    counts = np.array([len(job.sites) for job in jobs], dtype=np.int64)
    pj = np.repeat(np.arange(len(jobs)), counts)
    ps = np.array([site_index[n] for job in jobs for n in job.sites], dtype=np.int64)
    po = np.arange(len(ps)) - np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.full((len(jobs), len(sites)), len(sites))
    rank[pj, ps] = po
    start, mean, now_m, count = _score_contiguous(ctx, rank < len(sites))
    ctx.lower, ctx.lower_start, ctx.now_mean, ctx.count, ctx.rank = mean, start, now_m, count, rank
    return ctx


def place_jobs(
    jobs: list[JobRequest],
    sites: list[Site],
    forecasts: Mapping[str, Forecast],
    *,
    now: datetime,
    fallbacks: Mapping[str, Forecast],
    reservations: list[Reservation],
    min_saving: float,
    rule: Rule,
) -> list[Placement]:
    """See `ecoq.scheduler.planning.plan_jobs` (which validates the arguments)."""
    if not jobs:
        return []
    ctx = build_context(
        jobs, sites, forecasts, now=now, fallbacks=fallbacks, reservations=reservations,
        min_saving=min_saving, rule=rule,
    )  # fmt: skip
    site_index, e, dl, dur = ctx.site_index, ctx.e, ctx.dl, ctx.dur
    start, mean, now_m, count, rank = ctx.lower_start, ctx.lower, ctx.now_mean, ctx.count, ctx.rank
    best = mean.min(axis=1)
    tol = TIE_REL * np.maximum(np.abs(np.where(np.isfinite(best), best, 0.0)), 1.0)
    near = mean <= (best + tol)[:, None]
    first = np.where(near, start, np.inf).min(axis=1)
    pick_key = np.where(near & (start <= (first + _EPS)[:, None]), rank, len(sites) + 1)
    pick = pick_key.argmin(axis=1)
    todo = [
        (j, site_index[n]) for j, job in enumerate(jobs) if job.interruptible for n in job.sites
    ]
    slots = _interruptible(ctx, todo)
    slack = dl - dur - e
    order = np.lexsort((np.arange(len(jobs)), dl, slack)).tolist()  # least slack first
    home = [site_index[job.sites[0]] for job in jobs]
    rows = np.arange(len(jobs))
    now_home = now_m[rows, home]
    # Python floats for the per-job loop: the same values, without numpy's scalar overhead.
    best_l, pick_l, start_l = best.tolist(), pick.tolist(), start.tolist()
    now_l = now_home.tolist()
    decided: list[_Decision | None] = [None] * len(jobs)
    for j in order:
        job = jobs[j]
        si = pick_l[j]
        plan: Choice | None = None
        if isfinite(best_l[j]):
            s0 = start_l[j][si]
            plan = Choice(si, [(s0, s0 + ctx.durl[j])], best_l[j], [])
        for name in job.sites if job.interruptible else ():
            plan = better(plan, slots.get((j, site_index[name])))
        decided[j] = _decide(ctx, j, home[j], plan, now_l[j])
    chosen = np.array([d.choice.site if d else 0 for d in decided], dtype=np.int64)
    other = mean.copy()
    other[rows, chosen] = np.inf
    k2 = other.argmin(axis=1)
    m2_l, k2_l, cnt_l = other[rows, k2].tolist(), k2.tolist(), count.sum(axis=1).tolist()
    names, zones_of = [s.name for s in sites], [s.zone for s in sites]
    times: dict[float, datetime] = {}  # plans share many start and end times

    def at(s: float) -> datetime:
        t = times.get(s)
        if t is None:
            t = times[s] = dt(s)
        return t

    out: list[Placement] = []
    for j, d in enumerate(decided):
        assert d is not None
        c = d.choice
        mean_j = float(c.mean) if isfinite(c.mean) else None
        runner = isfinite(m2_l[j])
        out.append(
            Placement(
                key=jobs[j].key,
                site=names[c.site],
                zone=zones_of[c.site],
                segments=tuple([Segment(at(a), at(b)) for a, b in c.segments]),
                mean_g_per_kwh=mean_j,
                now_g_per_kwh=now_l[j] if isfinite(now_l[j]) else None,
                saving_fraction=d.saving if mean_j is not None else 0.0,
                candidates=cnt_l[j] + (1 if len(c.segments) > 1 else 0),
                late=c.segments[-1][1] > ctx.dll[j] + _EPS,
                reason=d.reason,
                warning=d.warning,
                runner_up_site=names[k2_l[j]] if runner else None,
                runner_up_start=at(start_l[j][k2_l[j]]) if runner else None,
                runner_up_g_per_kwh=m2_l[j] if runner else None,
            )
        )
    return out


@dataclass
class _Decision:
    choice: Choice
    reason: str
    warning: str | None
    saving: float


def _decide(ctx: Context, j: int, home: int, plan: Choice | None, now_eff: float) -> _Decision:
    """Choose between the plan and starting now, fit capacity, and explain."""
    job = ctx.jobs[j]
    e, d = ctx.el[j], ctx.durl[j]
    latest = ctx.dll[j] - d
    asap = ""
    saving = 0.0
    if job.run_now:
        asap = "run now requested"
    elif latest < e - _EPS:
        asap = "cannot finish by the deadline: start as early as possible"
    elif not isfinite(now_eff):
        asap = "forecast does not cover the window starting now: run now"
    elif plan is None:
        asap = "forecast does not cover a full window: run now"
    elif plan.site == home and len(plan.segments) == 1 and plan.segments[0][0] <= e + _EPS:
        asap = "now is the cleanest window"
    else:
        saving = (now_eff - plan.mean) / now_eff if now_eff > 0 else 0.0
        threshold = ctx.min_saving if job.min_saving is None else job.min_saving
        if saving < threshold or saving <= TIE_REL:
            asap = f"saving {saving * 100:.1f} % below min_saving {threshold * 100:g} %: run now"
            saving = 0.0
    warning = None
    choice: Choice | None
    if asap:
        choice = Choice(home, [(e, e + d)], now_eff, [])
        reason = asap
        if not cells_ok(ctx, j, choice):
            choice, _ = fit_contiguous(ctx, j, asap=True)
            warning = "no capacity now: starts at the earliest time a site has room"
    else:
        assert plan is not None
        choice = plan
        where = f" at {ctx.sites[plan.site].name}" if len(job.sites) > 1 else ""
        reason = f"cleanest {'slots' if len(plan.segments) > 1 else 'window'}{where}"
        if not cells_ok(ctx, j, plan):
            # When the plan is the site's cleanest window itself, that one is known not to fit.
            s0 = float(ctx.lower_start[j, plan.site])
            full = plan.site if plan.segments == [(s0, s0 + d)] and not plan.hold else -1
            choice, in_time = fit_contiguous(ctx, j, asap=False, full=full)
            if job.interruptible:
                choice = better(choice, fit_slots(ctx, j))
                in_time = in_time or (choice is not None and len(choice.segments) > 1)
            kind = "slots" if choice and len(choice.segments) > 1 else "window"
            reason = f"cleanest {kind} with room"
            if not in_time:
                warning = "no site has room before the deadline: starts at the earliest free time"
            saving = 0.0
            if choice is not None and isfinite(choice.mean) and now_eff > 0:
                saving = max(0.0, (now_eff - choice.mean) / now_eff)
    if choice is None:  # the job needs more GPUs than any of its sites has
        choice = Choice(home, [(e, e + d)], now_eff, [])
        warning = f"needs {job.gpus} GPUs, more than any of its sites has: placed at its home site"
    else:
        take(ctx, j, choice)
    return _Decision(choice, reason, warning, saving)
