"""Capacity over time, and the plan pieces the placing engine (`ecoq.scheduler.engine`) shares.

`Usage` counts the GPUs and jobs each site has in use in every cell of its zone's grid, and keeps
where a job of each GPU count still fits (capacity only fills up while planning, so these are
updated, never recomputed). `fit_slots` finds, for one job, the cleanest interruptible slots that
still fit by the deadline (the contiguous search is `ecoq.scheduler.fitting`). A stopped
(SIGSTOP) pause keeps its GPUs and job slot busy; a checkpoint pause frees them.

Times are epoch seconds (floats) here; each zone's grid converts them to its own seconds.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count as counter
from math import ceil, floor
from typing import TYPE_CHECKING

import numpy as np

from ecoq.scheduler.interruptible import SlotCache, SlotPlan, SlotProblem, plan_slots_many
from ecoq.scheduler.planning import JobRequest
from ecoq.scheduler.scoring import TIE_REL, Bools, Candidates, Curve, Floats, Ints
from ecoq.scheduler.sites import Site

if TYPE_CHECKING:
    from ecoq.scheduler.fitting import Prefix, RowCells

__all__ = [
    "Choice",
    "Context",
    "Usage",
    "ZoneGrid",
    "better",
    "cells_ok",
    "dt",
    "fit_slots",
    "pause_ratio",
    "slot_problem",
    "slots_choice",
    "take",
    "ts",
    "weights_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPS = 1e-6
_CACHED_STATES = 13_000_000  # slot DP states kept between jobs (about 11 bytes each)


_SECOND = timedelta(seconds=1)


def ts(t: datetime) -> float:
    return (t - _EPOCH) / _SECOND


def dt(s: float) -> datetime:
    return _EPOCH + timedelta(microseconds=round(s * 1e6))


class Usage:
    """GPUs and jobs in use in each cell of one site's grid; cells past the grid are free.

    What fits where is cached per GPU count and kept up to date by `add` (cells only ever fill
    up while planning), with a change count per GPU count (`version`)."""

    def __init__(self, site: Site, n: int) -> None:
        self.site = site
        self.gpus = np.zeros(n, dtype=np.int64)
        self.jobs = np.zeros(n, dtype=np.int64)
        self._free: dict[int, Bools] = {}
        self._blocked: dict[int, Ints] = {}
        self._after: dict[int, int] = {}
        self._changes: dict[int, int] = {}
        self._grown = 0

    def version(self, gpus: int) -> tuple[int, int]:
        """Changes so far to where a job with `gpus` GPUs fits (equal: nothing changed)."""
        return self._grown, self._changes.get(gpus, 0)

    def add(self, c0: int, c1: int, gpus: int, slots: int = 1) -> None:
        """Take `gpus` and `slots` over cells `[c0, c1)` (growing past the grid if need be)."""
        if c1 > len(self.gpus):
            grow = max(c1, 2 * len(self.gpus)) - len(self.gpus)
            self.gpus = np.concatenate((self.gpus, np.zeros(grow, dtype=np.int64)))
            self.jobs = np.concatenate((self.jobs, np.zeros(grow, dtype=np.int64)))
            self._free.clear()
            self._blocked.clear()
            self._after.clear()
            self._grown += 1
        a, b = max(c0, 0), max(c1, 0)
        if b <= a:
            return
        if gpus:
            self.gpus[a:b] += gpus
        if slots:
            self.jobs[a:b] += slots
        if not self._free:
            return
        # A count that did not grow fills no cell up: where it is over the limit, the cell
        # was full already.
        cap_g = self.site.gpus if gpus else None
        cap_j = self.site.slots if slots else None
        used_g = self.gpus[a:b]
        top_g = int(used_g.max()) if cap_g is not None else 0
        no_slot = None
        if cap_j is not None:
            used_j = self.jobs[a:b]
            if int(used_j.max()) >= cap_j:
                no_slot = used_j >= cap_j
        for g, free in self._free.items():
            cannot = no_slot
            if cap_g is not None and top_g + g > cap_g:
                no_gpus = used_g > cap_g - g
                cannot = no_gpus if no_slot is None else no_gpus | no_slot
            if cannot is None:
                continue  # every cell taken still has room for one more such job
            full = free[a:b] & cannot  # cells that just filled up
            if not full.any():
                continue
            free[a:b] &= ~full
            self._changes[g] = self._changes.get(g, 0) + 1
            cells = np.flatnonzero(full)
            nxt = self._blocked.get(g)
            if nxt is not None:
                _block(nxt, a, b, a + cells)
            if g in self._after:
                self._after[g] = max(self._after[g], a + int(cells[-1]) + 1)

    def add_many(self, c0: Ints, c1: Ints, gpus: Ints, slots: Ints) -> None:
        """`add` each range in turn (the same counts, size and versions afterwards): at once
        while no cache is kept (reservations, before planning starts), else one by one."""
        if self._free:
            for args in zip(c0.tolist(), c1.tolist(), gpus.tolist(), slots.tolist(), strict=True):
                self.add(*args)
            return
        n = len(self.gpus)
        for end in c1.tolist():  # grown as `add` grows it, one range after another
            if end > n:
                n = max(end, 2 * n)
                self._grown += 1
        a, b = np.maximum(c0, 0), np.maximum(c1, 0)
        keep = b > a
        a, b = a[keep], b[keep]

        def counted(counts: Ints, taken: Ints) -> Ints:
            step = np.zeros(n + 1, dtype=np.int64)
            np.add.at(step, a, taken)
            np.add.at(step, b, -taken)
            out = np.concatenate((counts, np.zeros(n - len(counts), dtype=np.int64)))
            out += np.cumsum(step[:n])
            return out

        self.gpus = counted(self.gpus, gpus[keep])
        self.jobs = counted(self.jobs, slots[keep])

    def _fits(self, gpus: int, cells: slice) -> Bools:
        ok = np.ones(len(self.gpus[cells]), dtype=np.bool_)
        if self.site.gpus is not None:
            ok &= self.gpus[cells] + gpus <= self.site.gpus
        if self.site.slots is not None:
            ok &= self.jobs[cells] + 1 <= self.site.slots
        return ok

    def free(self, gpus: int) -> Bools:
        """Cells where one more job with `gpus` GPUs fits (a cached array: do not modify it)."""
        if gpus not in self._free:
            self._free[gpus] = self._fits(gpus, slice(None))
        return self._free[gpus]

    def blocked(self, gpus: int) -> Ints:
        """For each cell boundary `0..n`, the first cell at or after it where a job with `gpus`
        GPUs does not fit (`n` if none): the job fits over cells `[c0, c1)` exactly when the
        values at `c0` and `c1` are equal (a cached array: do not modify it).

        Unlike prefix counts, this changes only just before and among cells that fill up,
        so `add` keeps it up to date without rewriting the rest of the grid."""
        if gpus not in self._blocked:
            free = self.free(gpus)
            n = len(free)
            at = np.where(free, n, np.arange(n))
            nxt = np.empty(n + 1, dtype=np.int64)
            nxt[n] = n
            np.minimum.accumulate(at[::-1], out=nxt[n - 1 :: -1] if n else nxt[:0])
            self._blocked[gpus] = nxt
        return self._blocked[gpus]

    def free_after(self, gpus: int) -> int:
        """The cell after the last one where a job with `gpus` GPUs does not fit (0 if none)."""
        if gpus not in self._after:
            busy = np.flatnonzero(~self.free(gpus))
            self._after[gpus] = int(busy[-1]) + 1 if len(busy) else 0
        return self._after[gpus]

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


def _block(nxt: Ints, a: int, b: int, cells: Ints) -> None:
    """Update `Usage.blocked`'s array `nxt` for `cells` (sorted, within `[a, b)`) that no longer
    fit: boundaries before the first of them whose next blocked cell came later now meet it
    (they end a run of equal values, `nxt` being sorted), and those among them meet the next."""
    first, last = int(cells[0]), int(cells[-1])
    since = int(np.searchsorted(nxt[:first], first, side="right"))
    nxt[since:first] = first
    if last - first + 1 == len(cells):  # one run of cells: each is its own next
        nxt[first : last + 1] = cells
        return
    ahead = np.full(b - first, len(nxt) - 1, dtype=np.int64)
    ahead[cells - first] = cells
    np.minimum.accumulate(ahead[::-1], out=ahead[::-1])
    np.minimum(nxt[first:b], ahead, out=nxt[first:b])


@dataclass
class ZoneGrid:
    """A zone's curve, its cell costs and its scored candidate rows (by profile and length)."""

    curve: Curve
    costs: Floats
    cands: dict[tuple[float, ...], Candidates] = field(default_factory=dict)
    rows: dict[tuple[tuple[float, ...], float], int] = field(default_factory=dict)
    cells: "dict[tuple[float, ...], RowCells]" = field(default_factory=dict)
    origin_s: float = 0.0
    covered: bool = False  # whether any cell is forecast

    def __post_init__(self) -> None:
        self.origin_s = ts(self.curve.origin)
        self.covered = bool(self.curve.covered.any())

    def sec(self, epoch_s: float) -> float:
        """Epoch seconds as seconds on this grid."""
        return epoch_s - self.origin_s

    def cell_range(self, start_s: float, end_s: float) -> tuple[int, int]:
        tick = self.curve.tick_s
        return floor(self.sec(start_s) / tick + _EPS), ceil(self.sec(end_s) / tick - _EPS)

    def cell_ranges(self, start_s: Floats, end_s: Floats) -> tuple[Ints, Ints]:
        """`cell_range` of many ranges (the same arithmetic)."""
        tick = self.curve.tick_s
        c0 = np.floor((start_s - self.origin_s) / tick + _EPS).astype(np.int64)
        c1 = np.ceil((end_s - self.origin_s) / tick - _EPS).astype(np.int64)
        return c0, c1


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
    #: zone → per job: `fitting`'s row bounds (lo, hi), whether its fast path applies, and
    #: how far the jobs that share its `lo` look
    fit_bounds: dict[str, tuple[Ints, Ints, Bools, Ints]] = field(default_factory=dict)
    fit_lists: dict[str, tuple[list[int], list[int], list[bool], list[int]]] = field(
        default_factory=dict
    )
    lower: Floats = field(default_factory=lambda: np.zeros((0, 0)))  # job × site best mean
    lower_start: Floats = field(default_factory=lambda: np.zeros((0, 0)))  # and its start
    now_mean: Floats = field(default_factory=lambda: np.zeros((0, 0)))  # job × site, start now
    count: Ints = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))  # candidates
    rank: Ints = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))  # site order
    runs: dict[tuple[int, float], tuple[Floats, Floats]] = field(default_factory=dict)
    #: `fitting`'s running minima of fitting windows, by (site, GPUs, profile, row, first).
    prefix: "dict[tuple[int, int, tuple[float, ...], int, int], Prefix]" = field(
        default_factory=dict
    )
    #: `fitting`'s first fitting candidate, by the same keys: (usage version, position)
    first_fit: dict[tuple[int, int, tuple[float, ...], int, int], tuple[tuple[int, int], int]] = (
        field(default_factory=dict)
    )
    idle_any: dict[int, bool] = field(default_factory=dict)  # id(idle) → any idle cost
    #: (job, site) → its slot plan without capacity (None: none), for interruptible jobs
    free_slots: dict[tuple[int, int], SlotPlan | None] = field(default_factory=dict)
    #: (site, pause cost ratio, stopped, GPUs) → site version, run and idle with free cells
    masked: dict[tuple[int, float, bool, int], tuple[tuple[int, int], Floats, Floats]] = field(
        default_factory=dict
    )
    #: (site, pause cost ratio, stopped) → slot DP tables, kept as capacity fills up (a table
    #: serves a later problem only over the same costs: see `plan_slots_many`)
    _tables: dict[tuple[int, float, bool], SlotCache] = field(default_factory=dict)
    _clock: Iterator[int] = field(default_factory=counter)  # shared by the caches, for LRU

    def __post_init__(self) -> None:
        # Python floats for the per-job loop (the same values; numpy scalars are slow there).
        self.el: list[float] = self.e.tolist()
        self.dll: list[float] = self.dl.tolist()
        self.durl: list[float] = self.dur.tolist()

    def slot_tables(self, key: tuple[int, float, bool]) -> SlotCache:
        """The slot DP cache for a site's pause costs. While the caches hold too many states,
        the table used least recently (in any of them) goes."""
        cache = self._tables.get(key)
        if cache is None:
            cache = self._tables[key] = SlotCache(self._clock)
        while sum(c.states() for c in self._tables.values()) > _CACHED_STATES:
            used = [(u, c) for c in self._tables.values() if (u := c.last_used()) is not None]
            (_, tables), owner = min(used, key=lambda found: found[0][0])
            owner.forget(tables)
        return cache

    def zone_of(self, si: int) -> ZoneGrid:
        return self.zones[self.sites[si].zone]


def slot_problem(ctx: Context, j: int, si: int, free: Bools | None = None) -> SlotProblem | None:
    """Job `j`'s slot problem at site `si` (None when no forecast covers the site's zone), with
    only the cells in `free` (`usage.free(job.gpus)`, as it is now) usable. Jobs with the same
    pause costs at a site get the same `run`/`idle` arrays (until a cell there fills up), so
    `plan_slots_many` can share their DP tables."""
    job, site, zone = ctx.jobs[j], ctx.sites[si], ctx.zone_of(si)
    if not zone.covered:
        return None
    tick = zone.curve.tick_s
    ratio = pause_ratio(ctx, j, si)
    if (si, ratio) not in ctx.runs:
        run = zone.costs * site.pue
        ctx.runs[(si, ratio)] = (run, run * ratio if ratio > 0 else np.zeros_like(run))
    run, idle = ctx.runs[(si, ratio)]
    if free is not None:
        usage = ctx.usage[si]
        key = (si, ratio, job.pause == "stop", job.gpus)
        masked = ctx.masked.get(key)
        if masked is None or masked[0] != usage.version(job.gpus):
            usable = free[: len(run)]  # usage may have grown past the grid
            stopped = np.where(usable, idle, np.inf) if job.pause == "stop" else idle
            masked = (usage.version(job.gpus), np.where(usable, run, np.inf), stopped)
            ctx.masked[key] = masked
        run, idle = masked[1], masked[2]
    first = ceil(zone.sec(ctx.el[j]) / tick - _EPS)
    stop = floor(zone.sec(ctx.dll[j]) / tick + _EPS)
    need = _cells(ctx.durl[j], tick)
    min_cells = max(1, ceil(job.min_segment / timedelta(seconds=tick) - _EPS))
    return SlotProblem(run, idle, first, stop, need, job.max_pauses, min_cells, job.state)


def _cells(duration_s: float, tick: float) -> int:
    """Cells a run of `duration_s` takes: at least one, however short it is against the grid
    (a job shorter than a millionth of a cell would otherwise need none)."""
    return max(1, ceil(duration_s / tick - _EPS))


def pause_ratio(ctx: Context, j: int, si: int) -> float:
    """A stopped pause's idle cost per cell, relative to running (0 for a checkpoint)."""
    job = ctx.jobs[j]
    if job.pause != "stop":
        return 0.0
    return job.gpus * ctx.sites[si].idle_w_per_gpu / 1000.0 / job.power_kw


def slots_choice(ctx: Context, j: int, si: int, plan: SlotPlan) -> Choice:
    zone = ctx.zone_of(si)
    origin, tick = zone.origin_s, zone.curve.tick_s
    left = ctx.durl[j]
    segs: list[tuple[float, float]] = []
    for a, b in plan.segments:
        s0 = origin + a * tick
        length = min((b - a) * tick, left)
        segs.append((s0, s0 + length))
        left -= length
    need = _cells(ctx.durl[j], tick)
    hold: list[tuple[float, float]] = []
    if ctx.jobs[j].pause == "stop":
        hold = [(segs[i][1], segs[i + 1][0]) for i in range(len(segs) - 1)]
    return Choice(si, segs, plan.cost / need, hold)


def cells_ok(ctx: Context, j: int, choice: Choice) -> bool:
    """Whether the choice's segments (and held pauses) fit its site's capacity now."""
    usage = ctx.usage[choice.site]
    if usage.site.gpus is None and usage.site.slots is None:
        return True
    zone = ctx.zones[usage.site.zone]
    blocked = usage.blocked(ctx.jobs[j].gpus)
    n = len(blocked) - 1
    origin, tick = zone.origin_s, zone.curve.tick_s
    for a, b in choice.segments + choice.hold if choice.hold else choice.segments:
        # As `ZoneGrid.cell_range` and `Usage.fits` compute them.
        c0, c1 = floor((a - origin) / tick + _EPS), ceil((b - origin) / tick - _EPS)
        c0 = 0 if c0 < 0 else n if c0 > n else c0
        c1 = 0 if c1 < 0 else n if c1 > n else c1
        if blocked[c1] != blocked[c0]:
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
    """The best slot plan that fits capacity by the deadline, over the job's sites (in their
    order; a later site's plan must be cleaner by more than the tie tolerance).

    The plan without capacity (`free_slots`, when known) bounds each site's: a site whose
    bound is no better than the best so far is not searched (its plan could not replace it),
    and a `clear` plan whose cells (and stopped time) are all still free is the answer as it
    is. Otherwise the DP runs on the free cells, with tables kept for later jobs at the site
    (a table serves them while the cells it covers keep their costs)."""
    gpus = ctx.jobs[j].gpus
    best: Choice | None = None
    for name in ctx.jobs[j].sites:
        si = ctx.site_index[name]
        known = (j, si) in ctx.free_slots
        free = ctx.free_slots.get((j, si))
        if known and free is None:  # no plan even without capacity
            continue
        bound = slots_choice(ctx, j, si, free).mean if free is not None else -np.inf
        if best is not None and bound >= best.mean:  # could not replace the best
            continue
        usage = ctx.usage[si]
        p = slot_problem(ctx, j, si, usage.free(gpus))
        if p is None:
            continue
        plan = free if free is not None and free.clear and _still_free(p, free) else None
        if plan is None:
            key = (si, pause_ratio(ctx, j, si), ctx.jobs[j].pause == "stop")
            cache = ctx.slot_tables(key)
            [plan] = plan_slots_many([p], [cache])
            if plan is None:
                continue
        choice = slots_choice(ctx, j, si, plan)
        if best is None or choice.mean < best.mean - TIE_REL * max(abs(best.mean), 1.0):
            best = choice
    return best


def _still_free(p: SlotProblem, plan: SlotPlan) -> bool:
    """Whether every cell `plan` runs in, and every cell it is stopped in (between segments, or
    from the window's start for a job already running or paused), is as cheap in `p` (only
    free cells usable) as without capacity: then it costs the same."""
    start = max(p.first, 0) if p.start != "new" else plan.segments[0][0]
    for a, b in plan.segments:
        if not (np.isfinite(p.idle[start:a]).all() and np.isfinite(p.run[a:b]).all()):
            return False
        start = b
    return True


def better(a: Choice | None, b: Choice | None) -> Choice | None:
    """`b` when it is cleaner than `a` by more than the tie tolerance, else `a`."""
    if b is None or not np.isfinite(b.mean):
        return a
    if a is None or not np.isfinite(a.mean):
        return b
    return b if b.mean < a.mean - TIE_REL * max(abs(a.mean), 1.0) else a
