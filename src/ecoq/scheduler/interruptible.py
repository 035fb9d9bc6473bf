"""Interruptible jobs: the cleanest cells before the deadline, in few enough, long enough pieces.

Works on one curve's cells (`ecoq.scheduler.scoring.Curve`): `run[i]` is the cost of running in
cell `i` (intensity × PUE, g/kWh; `inf` where the job may not run: no forecast, no capacity) and
`idle[i]` the cost of being stopped in cell `i` between two segments (the idle power of a
SIGSTOPped job's GPUs relative to its running power × intensity; 0 for checkpoint pauses, which
free the GPUs; `inf` where a stopped job could not hold its GPUs). Costs are per cell, so a plan's
mean intensity is `cost / need`.

- `cheapest_cells`: unlimited free pauses and no minimum segment: the `need` cheapest cells.
  `cheapest_batch` does the same for many jobs at once (the oracle reproduction's
  "defer_interrupt").
- `plan_slots`: the exact optimum with at most `max_pauses` pauses, every segment at least
  `min_cells` long, and idle cost in the gaps, by dynamic programming over
  (cell, work done, run length, pauses) (`ecoq.scheduler.slotdp`). Large problems are solved on
  merged cells. A plan lies within one stretch of passable cells (finite run or idle cost), so
  only stretches with room for the work are solved.
- `plan_slots_many`: the same for many problems, sharing one DP table among the problems that
  start at the same cell of the same costs (the daemon plans every job from "now"), and keeping
  tables between calls for the caller (`capacity.fit_slots`): a kept table serves a later
  problem whose window starts at the same cell, as far as the costs are still the same there
  (capacity filling up elsewhere changes nothing in it).
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from math import ceil
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ecoq.scheduler.scoring import TIE_REL, Floats, Ints
from ecoq.scheduler.slotdp import Row, Tables, first_best

__all__ = [
    "SlotPlan",
    "SlotProblem",
    "StartState",
    "cheapest_batch",
    "cheapest_cells",
    "plan_slots",
    "plan_slots_many",
    "segments_of",
]

StartState = Literal["new", "running", "paused"]
_STATE_BUDGET = 30_000_000  # cells × DP states kept for the backtrack
_BATCH_STATES = 3_000_000  # cells × DP states of windows solved together
_BATCH_ROWS = 256  # and at most this many windows
_CACHED_TABLES = 32  # tables `plan_slots_many` keeps in one cache


@dataclass(frozen=True)
class SlotPlan:
    """Segments as `[first, stop)` cell ranges, sorted; `cost` = Σ run + Σ idle (g/kWh·cells).

    `clear` (DP plans only): no other finish comes within twice the tie tolerance of this
    plan's cost. Then, with costs raised only on cells the plan does not use (capacity filling
    up elsewhere), the same call returns this very plan again: its cost is still the least,
    no other finish comes near it, and the DP's choices along it do not change."""

    segments: tuple[tuple[int, int], ...]
    cost: float
    clear: bool = field(default=True, compare=False)

    @property
    def pauses(self) -> int:
        """Pauses between the segments."""
        return max(0, len(self.segments) - 1)


def segments_of(cells: Ints) -> tuple[tuple[int, int], ...]:
    """Sorted `[first, stop)` runs of consecutive cell indices."""
    cells = np.sort(cells)
    breaks = np.flatnonzero(np.diff(cells) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(cells)]))
    return tuple((int(cells[a]), int(cells[b - 1]) + 1) for a, b in zip(starts, ends, strict=True))


def cheapest_cells(run: Floats, first: int, stop: int, need: int) -> SlotPlan | None:
    """The `need` cheapest cells of `[first, stop)`, earliest first among equals.

    Returns None when fewer than `need` cells there have a finite cost.
    """
    first = max(first, 0)
    window = run[first:stop]
    if need <= 0 or len(window) < need:
        return None
    order = np.argsort(window, kind="stable")[:need]
    if not np.isfinite(window[order[-1]]):
        return None
    # Not `clear`: with idle costs raised, `plan_slots` may take the DP, which breaks ties
    # otherwise.
    return SlotPlan(segments_of(order + first), float(window[order].sum()), clear=False)


def cheapest_batch(run: Floats, firsts: Ints, stops: Ints, need: int) -> tuple[Floats, Ints]:
    """`cheapest_cells` for many windows at once.

    Returns the summed cost of each window's `need` cheapest cells (`inf` when it has fewer
    than `need` finite cells) and their cell indices (rows unsorted).
    """
    width = int(max(1, (stops - firsts).max(initial=1)))
    padded = np.concatenate((run, np.full(width, np.inf)))
    views = sliding_window_view(padded, width)[np.clip(firsts, 0, len(run))]
    mask = np.arange(width)[None, :] >= (stops - firsts)[:, None]
    views = np.where(mask, np.inf, views)
    k = min(need, width)
    idx = np.argpartition(views, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(views, idx, axis=1)
    sums = picked.sum(axis=1) if k == need else np.full(len(firsts), np.inf)
    return sums, idx + firsts[:, None]


def _merge(costs: Floats, factor: int) -> Floats:
    n = len(costs) // factor * factor
    merged: Floats = costs[:n].reshape(-1, factor).sum(axis=1)
    return merged


@dataclass(frozen=True)
class SlotProblem:
    """One `plan_slots` call's arguments (see there); problems that share `run` and `idle`
    arrays (the same objects) and their first cell share one DP table in `plan_slots_many`."""

    run: Floats
    idle: Floats
    first: int
    stop: int
    need: int
    max_pauses: int | None = None
    min_cells: int = 1
    start: StartState = "new"


def plan_slots(
    run: Floats,
    idle: Floats,
    first: int,
    stop: int,
    need: int,
    *,
    max_pauses: int | None = None,
    min_cells: int = 1,
    start: StartState = "new",
) -> SlotPlan | None:
    """The cheapest way to run `need` cells within `[first, stop)`.

    Args:
        run, idle: per-cell costs (see the module doc); `inf` forbids.
        first, stop: the window, cells; the job finishes by `stop`.
        need: cells of work left.
        max_pauses: pauses still allowed (None: unlimited).
        min_cells: every new segment's minimum length (capped at `need`).
        start: `new` (not started: waiting costs nothing), `running` (a segment is running at
            `first`; carrying on is not a pause), `paused` (stopped at `first`, its pause
            already counted: idle costs until it resumes).

    Returns None when no plan fits.
    """
    problem = SlotProblem(run, idle, first, stop, need, max_pauses, min_cells, start)
    return plan_slots_many([problem])[0]


class SlotCache:
    """DP table rows kept between `plan_slots_many` calls, by the window's first cell, minimum
    segment, unlimited pauses and start state: each serves later windows that start there
    over the same costs (see `_cached`). Caches made with one `clock` share it, so the table
    used least recently among them can be found (`last_used`) and forgotten (`forget`)."""

    def __init__(self, clock: Iterator[int] | None = None) -> None:
        self.rows: dict[tuple[int, int, bool, StartState], list[tuple[Tables, int]]] = {}
        self.used: dict[int, tuple[int, Tables]] = {}  # id(tables) → (clock, tables)
        self._clock = clock if clock is not None else count()
        self._states = 0

    def touch(self, tables: Tables) -> None:
        """Mark `tables` as just used."""
        if id(tables) not in self.used:
            self._states += tables.r.size
        self.used[id(tables)] = (next(self._clock), tables)

    def states(self) -> int:
        """DP states held (each about 11 bytes)."""
        return self._states

    def last_used(self) -> tuple[int, Tables] | None:
        """The table used least recently, and when."""
        return min(self.used.values(), key=lambda u: u[0], default=None)

    def forget(self, tables: Tables) -> None:
        """Drop `tables` and every row it holds."""
        del self.used[id(tables)]
        self._states -= tables.r.size
        for key in list(self.rows):
            self.rows[key] = [entry for entry in self.rows[key] if entry[0] is not tables]
            if not self.rows[key]:
                del self.rows[key]


def plan_slots_many(
    problems: list[SlotProblem], caches: list[SlotCache | None] | None = None
) -> list[SlotPlan | None]:
    """`plan_slots` for each problem (same answers), sharing the DP's work between them.

    With `caches` (one per problem, or None), a problem's DP tables are kept in its cache and
    reused by later calls whose windows start at the same cell with the same costs up to
    where they stop (the costs elsewhere may have changed: a table's values up to a cell
    depend only on the costs up to it); tables are then built a little larger than asked, to
    serve longer jobs and later deadlines too."""
    out: list[SlotPlan | None] = [None] * len(problems)
    groups: dict[tuple[int, bool, StartState], list[tuple[int, list[Row], int, int, int]]] = {}
    for x, p in enumerate(problems):
        first, stop, need = max(p.first, 0), min(p.stop, len(p.run)), p.need
        if need <= 0 or stop - first < need:
            continue
        m = max(1, min(p.min_cells, need))
        pauses = None if p.max_pauses is not None and p.max_pauses >= need else p.max_pauses
        if pauses is None and m == 1 and not np.any(p.idle[first:stop] > 0):
            out[x] = cheapest_cells(p.run, first, stop, need)
            continue
        width, lanes = stop - first, 1 if pauses is None else pauses + 1
        factor = 1
        while width // factor * (m // factor + 2) * (need // factor + 2) * lanes > _STATE_BUDGET:
            factor += 1
        if factor > 1:
            out[x] = _coarse(p, first, stop, need, m, pauses, factor)
            continue
        windows = _windows(p.run, p.idle, first, stop, need, p.start)
        cache = caches[x] if caches is not None else None
        if cache is not None:
            out[x] = _cached(cache, p, windows, stop, need, lanes, m, pauses is None)
        elif windows:
            groups.setdefault((m, pauses is None, p.start), []).append(
                (x, windows, stop, need, lanes)
            )
    for (m, unlimited, start), items in groups.items():
        _share(items, m, unlimited, start, out)
    return out


def _share(
    items: list[tuple[int, list[Row], int, int, int]],
    m: int,
    unlimited: bool,
    start: StartState,
    out: list[SlotPlan | None],
) -> None:
    """Solve problems (index, windows, stop, need, lanes) of one kind into `out`: one table row
    per distinct window, filled once for every problem that reads it, rows stacked into tables
    of bounded size, each freed once its last reader is done."""
    index: dict[tuple[int, int, int], int] = {}
    rows: list[Row] = []
    dims: list[tuple[int, int]] = []  # most work and lanes asked of each row
    readers: list[tuple[int, list[int], list[int], int, int]] = []
    for x, windows, _, need, lanes in items:
        mine = []
        for w in windows:
            key = (id(w.run), id(w.idle), w.start)
            if key not in index:
                index[key] = len(rows)
                rows.append(w)
                dims.append((need, lanes))
            r = index[key]
            if rows[r].stop < w.stop:
                rows[r] = w
            dims[r] = (max(dims[r][0], need), max(dims[r][1], lanes))
            mine.append(r)
        readers.append((x, mine, [w.stop for w in windows], need, lanes))
    readers.sort(key=lambda reader: reader[1][0])  # readers of a row next to each other
    order = list(dict.fromkeys(r for reader in readers for r in reader[1]))
    left = Counter(r for reader in readers for r in reader[1])
    built: dict[int, tuple[Tables, int]] = {}
    done = 0  # rows of `order` filled so far
    for x, mine, stops, need, lanes in readers:
        while any(r not in built for r in mine):
            batch = _batch(rows, dims, order, done, m)
            tables = Tables([rows[r] for r in batch[0]], *batch[1], m, unlimited, start)
            built.update((r, (tables, i)) for i, r in enumerate(batch[0]))
            done += len(batch[0])
        out[x] = _read([(*built[r], at) for r, at in zip(mine, stops, strict=True)], need, lanes)
        for r in mine:
            left[r] -= 1
            if not left[r]:
                del built[r]


def _batch(
    rows: list[Row], dims: list[tuple[int, int]], order: list[int], done: int, m: int
) -> tuple[list[int], tuple[int, int]]:
    """The next rows of `order` after `done` (at least one) whose stacked states stay within
    the budget, and the work and lanes their table needs."""
    batch: list[int] = []
    width = need = lanes = 0
    for r in order[done : done + _BATCH_ROWS]:
        row = rows[r]
        w, k, n = max(width, row.stop - row.start), max(need, dims[r][0]), max(lanes, dims[r][1])
        if batch and (len(batch) + 1) * w * m * (k + 1) * n > _BATCH_STATES:
            break
        batch.append(r)
        width, need, lanes = w, k, n
    return batch, (need, lanes)


def _cached(
    cache: SlotCache,
    p: SlotProblem,
    windows: list[Row],
    stop: int,
    need: int,
    lanes: int,
    m: int,
    unlimited: bool,
) -> SlotPlan | None:
    """One problem's plan from tables in `cache`: those it lacks built together; one rebuilt
    larger (its stretch to the end, up to twice the work) when this problem outgrows it."""
    keys = [(w.start, m, unlimited, p.start) for w in windows]
    rows: list[Row | None] = []
    parts: list[tuple[Tables, int, int] | None] = []
    grow = (need, lanes)
    for key, w in zip(keys, windows, strict=True):
        got, outgrown = _match(cache.rows.get(key, []), w, need, lanes)
        parts.append(None if got is None else (*got, w.stop))
        if got is not None:
            cache.touch(got[0])
            rows.append(None)  # usable as it is
        elif outgrown is None:
            rows.append(w)
        else:
            longer = _windows(p.run, p.idle, max(p.first, 0), stop, need, p.start, extend=True)
            rows.append(next(x for x in longer if x.start == w.start))
            more = min(2 * outgrown.need, rows[-1].stop - rows[-1].start)  # type: ignore[union-attr]
            grow = (max(grow[0], more), max(grow[1], outgrown.lanes))
    new = [w for w in rows if w is not None]
    if new:
        built = Tables(new, *grow, m, unlimited, p.start)
        cache.touch(built)
        at = iter(range(len(new)))
        for x, (key, w, row_new) in enumerate(zip(keys, windows, rows, strict=True)):
            if row_new is not None:
                entry = (built, next(at))
                parts[x] = (*entry, w.stop)
                cache.rows.setdefault(key, []).append(entry)
        while len(cache.used) > _CACHED_TABLES:  # bounded memory: forget the oldest
            oldest = cache.last_used()
            assert oldest is not None
            cache.forget(oldest[1])
    return _read([part for part in parts if part is not None], need, lanes)


def _match(
    entries: list[tuple[Tables, int]], w: Row, need: int, lanes: int
) -> tuple[tuple[Tables, int] | None, Tables | None]:
    """A cached row (newest first) with `w`'s costs from its start to where both stop: one
    that serves `w` as it is (as long, as much work, as many pauses), else the tables of one
    that `w` outgrows (None, None: no row has these costs)."""
    outgrown = None
    for tables, i in reversed(entries):
        row = tables.rows[i]
        span = min(row.stop, w.stop) - w.start
        costs = w.run[w.start : w.start + span], w.idle[w.start : w.start + span]
        if not (
            np.array_equal(tables.run[i, :span], costs[0])
            and np.array_equal(tables.idle[i, :span], costs[1])
        ):
            continue
        if row.stop >= w.stop and tables.need >= need and tables.lanes >= lanes:
            return (tables, i), None
        if outgrown is None:
            outgrown = tables
    return None, outgrown


def _windows(
    run: Floats,
    idle: Floats,
    first: int,
    stop: int,
    need: int,
    start: StartState,
    extend: bool = False,
) -> list[Row]:
    """The stretches of `[first, stop)` a plan can lie in, trimmed to cells it can run in
    (with `extend`, each runs on past `stop` to the end of its stretch, for reuse).

    A plan's cells and pauses are all passable (finite run or idle cost), so it lies in one
    stretch of passable cells with at least `need` runnable cells; a job already running or
    paused carries on from `first`, so only the stretch that starts there counts."""
    end = len(run) if extend else stop
    inside = stop - first
    can_run = np.isfinite(run[first:end])
    count = np.concatenate(([0], np.cumsum(can_run)))
    if count[inside] < need:
        return []
    passable = can_run | np.isfinite(idle[first:end])
    if passable.all():
        spans = [(0, end - first)]
    else:
        edges = np.flatnonzero(np.diff(np.concatenate(([0], passable.view(np.int8), [0]))))
        spans = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
    rows: list[Row] = []
    for a, b in spans:
        if a >= inside:
            break
        if start != "new":
            if a == 0 and count[min(b, inside)] >= need:
                rows.append(Row(run, idle, first, first + b))
            break
        if count[min(b, inside)] - count[a] < need:
            continue
        cells = np.flatnonzero(can_run[a:b])  # a new job starts and ends in a runnable cell
        rows.append(Row(run, idle, first + a + int(cells[0]), first + a + int(cells[-1]) + 1))
    return rows


def _read(parts: list[tuple[Tables, int, int]], need: int, lanes: int) -> SlotPlan | None:
    """One problem's plan from its rows of tables (table, row, the cell its window stops at),
    in time order."""
    if not parts:
        return None
    done = [t.done(r, need, lanes, stop) for t, r, stop in parts]
    values = np.concatenate([v for v, _ in done])
    at = first_best(values)
    if at < 0:
        return None
    cost = float(values[at])
    clear = np.count_nonzero(values <= cost + 2 * TIE_REL * max(abs(cost), 1.0)) == 1
    for (tables, r, _), (v, lane) in zip(parts, done, strict=True):
        if at < len(v):
            return SlotPlan(tables.walk(r, at, need, int(lane[at])), cost, bool(clear))
        at -= len(v)
    raise AssertionError("unreachable")  # pragma: no cover


def _coarse(
    p: SlotProblem, first: int, stop: int, need: int, m: int, pauses: int | None, factor: int
) -> SlotPlan | None:
    """Large problems, solved on cells merged `factor` at a time (an approximation)."""
    run = _merge(p.run[first:stop], factor)
    idle = _merge(p.idle[first:stop], factor)
    coarse_need = ceil(need / factor)
    tables = Tables(
        [Row(run, idle, 0, len(run))],
        coarse_need,
        1 if pauses is None else pauses + 1,
        min(ceil(m / factor), coarse_need),
        pauses is None,
        p.start,
    )
    plan = _read([(tables, 0, len(run))], coarse_need, 1 if pauses is None else pauses + 1)
    if plan is None:
        return None
    segs = tuple((first + a * factor, first + b * factor) for a, b in plan.segments)
    return SlotPlan(segs, plan.cost, plan.clear)
