"""Capacity over time, and the plan pieces the placing engine (`ecoq.scheduler.engine`) shares.

`Usage` counts the GPUs and jobs each site has in use in every cell of its zone's grid. The fit
functions find, for one job, the cleanest window (or interruptible slots) that still fits a
site's capacity by the deadline, or else the earliest start that fits. A stopped (SIGSTOP) pause
keeps its GPUs and job slot busy; a checkpoint pause frees them.

Times are epoch seconds (floats) here; each zone's grid converts them to its own seconds.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from math import ceil, floor

import numpy as np

from ecoq.scheduler.planning import JobRequest
from ecoq.scheduler.sites import Site
from tests.scheduler.reference.interruptible import SlotPlan, plan_slots
from tests.scheduler.reference.scoring import (
    TIE_REL,
    Bools,
    Candidates,
    Curve,
    Floats,
    Ints,
    window_means,
)

__all__ = [
    "Choice",
    "Context",
    "Usage",
    "ZoneGrid",
    "better",
    "cells_ok",
    "dt",
    "fit_contiguous",
    "fit_slots",
    "slot_inputs",
    "slots_choice",
    "take",
    "ts",
    "weights_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPS = 1e-6


def ts(t: datetime) -> float:
    return (t - _EPOCH) / timedelta(seconds=1)


def dt(s: float) -> datetime:
    return _EPOCH + timedelta(microseconds=round(s * 1e6))


class Usage:
    """GPUs and jobs in use in each cell of one site's grid; cells past the grid are free."""

    def __init__(self, site: Site, n: int) -> None:
        self.site = site
        self.gpus = np.zeros(n, dtype=np.int64)
        self.jobs = np.zeros(n, dtype=np.int64)
        self._blocked: dict[int, Ints] = {}

    def add(self, c0: int, c1: int, gpus: int, slots: int = 1) -> None:
        """Take `gpus` and `slots` over cells `[c0, c1)` (growing past the grid if need be)."""
        if c1 > len(self.gpus):
            grow = max(c1, 2 * len(self.gpus)) - len(self.gpus)
            self.gpus = np.concatenate((self.gpus, np.zeros(grow, dtype=np.int64)))
            self.jobs = np.concatenate((self.jobs, np.zeros(grow, dtype=np.int64)))
        self.gpus[max(c0, 0) : max(c1, 0)] += gpus
        self.jobs[max(c0, 0) : max(c1, 0)] += slots
        self._blocked.clear()

    def free(self, gpus: int) -> Bools:
        """Cells where one more job with `gpus` GPUs fits."""
        ok = np.ones(len(self.gpus), dtype=np.bool_)
        if self.site.gpus is not None:
            ok &= self.gpus + gpus <= self.site.gpus
        if self.site.slots is not None:
            ok &= self.jobs + 1 <= self.site.slots
        return ok

    def blocked(self, gpus: int) -> Ints:
        """Prefix counts of cells where a job with `gpus` GPUs does not fit (`n + 1` values)."""
        if gpus not in self._blocked:
            self._blocked[gpus] = np.concatenate(([0], np.cumsum(~self.free(gpus))))
        return self._blocked[gpus]

    def free_after(self, gpus: int) -> int:
        """The cell after the last one where a job with `gpus` GPUs does not fit (0 if none)."""
        busy = np.flatnonzero(~self.free(gpus))
        return int(busy[-1]) + 1 if len(busy) else 0

    def fits(self, c0: int, c1: int, gpus: int) -> bool:
        """Whether a job with `gpus` GPUs fits over cells `[c0, c1)`."""
        b = self.blocked(gpus)
        n = len(b) - 1
        return bool(b[min(max(c1, 0), n)] == b[min(max(c0, 0), n)])

    def ever_fits(self, gpus: int) -> bool:
        """Whether the site could run such a job at all."""
        return (self.site.gpus is None or gpus <= self.site.gpus) and (
            self.site.slots is None or self.site.slots >= 1
        )


@dataclass
class ZoneGrid:
    """A zone's curve, its cell costs and its scored candidate rows (by profile and length)."""

    curve: Curve
    costs: Floats
    cands: dict[tuple[float, ...], Candidates] = field(default_factory=dict)
    rows: dict[tuple[tuple[float, ...], float], int] = field(default_factory=dict)
    origin_s: float = 0.0

    def __post_init__(self) -> None:
        self.origin_s = ts(self.curve.origin)

    def sec(self, epoch_s: float) -> float:
        """Epoch seconds as seconds on this grid."""
        return epoch_s - self.origin_s

    def cell_range(self, start_s: float, end_s: float) -> tuple[int, int]:
        tick = self.curve.tick_s
        return floor(self.sec(start_s) / tick + _EPS), ceil(self.sec(end_s) / tick - _EPS)


@dataclass
class Choice:
    site: int
    segments: list[tuple[float, float]]  # epoch seconds
    mean: float  # effective g/kWh (× PUE, + idle), inf when not covered
    hold: list[tuple[float, float]]  # stopped gaps that keep GPUs and slot


def weights_of(profile: tuple[float, ...]) -> Floats:
    w: Floats = np.array(profile or (1.0,), dtype=np.float64)
    return w / float(w.sum())


@dataclass
class Context:
    jobs: list[JobRequest]
    sites: list[Site]
    zones: dict[str, ZoneGrid]
    usage: list[Usage]
    e: Floats
    dl: Floats
    dur: Floats
    min_saving: float
    site_index: dict[str, int]
    ends: dict[str, Floats] = field(default_factory=dict)  # zone → job × (first, last) means
    lower: Floats = field(default_factory=lambda: np.zeros((0, 0)))  # job × site best mean
    lower_start: Floats = field(default_factory=lambda: np.zeros((0, 0)))  # and its start

    def zone_of(self, si: int) -> ZoneGrid:
        return self.zones[self.sites[si].zone]


def slot_inputs(
    ctx: Context, j: int, si: int, free: Bools | None = None
) -> tuple[Floats, Floats, int, int, int, int] | None:
    job, site, zone = ctx.jobs[j], ctx.sites[si], ctx.zone_of(si)
    if not zone.curve.covered.any():
        return None
    tick = zone.curve.tick_s
    run = zone.costs * site.pue
    ratio = 0.0
    if job.pause == "stop":
        ratio = job.gpus * site.idle_w_per_gpu / 1000.0 / job.power_kw
    idle = run * ratio if ratio > 0 else np.zeros_like(run)
    if free is not None:
        free = free[: len(run)]  # usage may have grown past the grid
        run = np.where(free, run, np.inf)
        if job.pause == "stop":
            idle = np.where(free, idle, np.inf)
    first = ceil(zone.sec(float(ctx.e[j])) / tick - _EPS)
    stop = floor(zone.sec(float(ctx.dl[j])) / tick + _EPS)
    need = ceil(float(ctx.dur[j]) / tick - _EPS)
    min_cells = max(1, ceil(job.min_segment / timedelta(seconds=tick) - _EPS))
    return run, idle, first, stop, need, min_cells


def slots_choice(ctx: Context, j: int, si: int, plan: SlotPlan) -> Choice:
    zone = ctx.zone_of(si)
    origin, tick = zone.origin_s, zone.curve.tick_s
    left = float(ctx.dur[j])
    segs: list[tuple[float, float]] = []
    for a, b in plan.segments:
        s0 = origin + a * tick
        length = min((b - a) * tick, left)
        segs.append((s0, s0 + length))
        left -= length
    need = ceil(float(ctx.dur[j]) / tick - _EPS)
    hold: list[tuple[float, float]] = []
    if ctx.jobs[j].pause == "stop":
        hold = [(segs[i][1], segs[i + 1][0]) for i in range(len(segs) - 1)]
    return Choice(si, segs, plan.cost / need, hold)


_Option = tuple[float, float, int, int]  # (mean, start, list order, site) or (start, mean, ...)


def _site_fit(
    ctx: Context, j: int, si: int, order: int, want_best: bool
) -> tuple[_Option | None, _Option | None]:
    """At one site: the best window that fits by the deadline (mean, start, order, site) and the
    earliest window that fits at all (start, mean, order, site)."""
    job = ctx.jobs[j]
    e, latest, d = float(ctx.e[j]), float(ctx.dl[j] - ctx.dur[j]), float(ctx.dur[j])
    zone, usage = ctx.zone_of(si), ctx.usage[si]
    if not usage.ever_fits(job.gpus):
        return None, None
    origin = zone.origin_s
    beyond = max(zone.curve.span_s, usage.free_after(job.gpus) * zone.curve.tick_s)
    s = np.array([e, max(e, latest), max(e, origin + beyond)]) - origin
    known = ctx.ends.get(ctx.sites[si].zone)
    if known is None:
        m = window_means(zone.curve, s, np.full(3, d), weights_of(job.profile))
    else:
        m = np.array([known[j, 0], known[j, 1], np.inf])
    cands = zone.cands.get(job.profile)
    r = zone.rows.get((job.profile, d))
    if cands is not None and r is not None:
        base = r * cands.stride - origin
        lo = int(np.searchsorted(cands.keys, base + e, side="right"))
        if want_best:
            hi = int(np.searchsorted(cands.keys, base + latest, side="left"))
        else:
            hi = r * cands.width + int(cands.row_len[r])
        s = np.concatenate((s, cands.starts[lo:hi]))
        m = np.concatenate((m, cands.scores[lo:hi]))
        by_time = np.argsort(s, kind="stable")
        s, m = s[by_time], m[by_time]
    m = m * ctx.sites[si].pue
    tick = zone.curve.tick_s
    c0 = np.floor(s / tick + _EPS).astype(np.int64)
    c1 = np.ceil((s + d) / tick - _EPS).astype(np.int64)
    blocked = usage.blocked(job.gpus)
    n = len(blocked) - 1
    ok = blocked[np.minimum(c1, n)] == blocked[np.minimum(np.maximum(c0, 0), n)]
    best: _Option | None = None
    good = ok & (s + origin <= latest + _EPS)
    if want_best and good.any():
        mm = np.where(good, m, np.inf)
        low = float(mm.min())
        if np.isfinite(low):
            i = int(np.flatnonzero(mm <= low + TIE_REL * max(abs(low), 1.0))[0])
            best = (low, float(s[i] + origin), order, si)
    first: _Option | None = None
    if not want_best and ok.any():
        i = int(np.flatnonzero(ok)[0])
        first = (float(s[i] + origin), float(m[i]), order, si)
    return best, first


def fit_contiguous(ctx: Context, j: int, asap: bool) -> tuple[Choice | None, bool]:
    """The best window that fits capacity by the deadline (or, with `asap` or when none does,
    the earliest that fits). Returns the choice and whether it meets the deadline.

    Sites are tried from the lowest unconstrained mean (a lower bound) up, and the search stops
    once a fitting window beats every remaining bound."""
    job = ctx.jobs[j]
    d = float(ctx.dur[j])
    listed = [(ctx.site_index[name], order) for order, name in enumerate(job.sites)]
    if not asap:
        listed.sort(key=lambda x: (float(ctx.lower[j, x[0]]), x[1]))
        found: list[_Option] = []
        for si, order in listed:
            bound = float(ctx.lower[j, si])
            if found:
                top = min(o[0] for o in found)
                if bound > top + TIE_REL * max(abs(top), 1.0):
                    break
            start = float(ctx.lower_start[j, si])
            quick = Choice(si, [(start, start + d)], bound, [])
            if np.isfinite(bound) and cells_ok(ctx, j, quick):
                found.append((bound, start, order, si))
                continue
            best, _ = _site_fit(ctx, j, si, order, want_best=True)
            if best is not None:
                found.append(best)
        if found:
            low = min(o[0] for o in found)
            tol = TIE_REL * max(abs(low), 1.0)
            mean, t0, _, si = min((o for o in found if o[0] <= low + tol), key=lambda o: o[1:3])
            return Choice(si, [(t0, t0 + d)], mean, []), True
    anytime = [f for si, order in listed if (f := _site_fit(ctx, j, si, order, False)[1])]
    if not anytime:
        return None, False
    t0, mean, _, si = min(anytime)
    return Choice(si, [(t0, t0 + d)], mean, []), t0 <= float(ctx.dl[j]) - d + _EPS


def cells_ok(ctx: Context, j: int, choice: Choice) -> bool:
    zone, usage = ctx.zone_of(choice.site), ctx.usage[choice.site]
    if not usage.site.limited:
        return True
    gpus = ctx.jobs[j].gpus
    for a, b in choice.segments + choice.hold:
        c0, c1 = zone.cell_range(a, b)
        if not usage.fits(c0, c1, gpus):
            return False
    return True


def take(ctx: Context, j: int, choice: Choice) -> None:
    zone, usage = ctx.zone_of(choice.site), ctx.usage[choice.site]
    if not usage.site.limited:
        return
    for a, b in choice.segments + choice.hold:
        c0, c1 = zone.cell_range(a, b)
        usage.add(c0, c1, ctx.jobs[j].gpus)


def fit_slots(ctx: Context, j: int) -> Choice | None:
    """The best slot plan that fits capacity by the deadline, over the job's sites."""
    best: Choice | None = None
    for name in ctx.jobs[j].sites:
        si = ctx.site_index[name]
        inputs = slot_inputs(ctx, j, si, ctx.usage[si].free(ctx.jobs[j].gpus))
        if inputs is None:
            continue
        run, idle, first, stop, need, min_cells = inputs
        job = ctx.jobs[j]
        plan = plan_slots(
            run, idle, first, stop, need,
            max_pauses=job.max_pauses, min_cells=min_cells, start=job.state,
        )  # fmt: skip
        if plan is not None:
            choice = slots_choice(ctx, j, si, plan)
            if best is None or choice.mean < best.mean - TIE_REL * max(abs(best.mean), 1.0):
                best = choice
    return best


def better(a: Choice | None, b: Choice | None) -> Choice | None:
    """`b` when it is cleaner than `a` by more than the tie tolerance, else `a`."""
    if b is None or not np.isfinite(b.mean):
        return a
    if a is None or not np.isfinite(a.mean):
        return b
    return b if b.mean < a.mean - TIE_REL * max(abs(a.mean), 1.0) else a
