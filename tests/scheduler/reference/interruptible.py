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
  (cell, work done, run length, pauses). Large problems are solved on merged cells.
"""

from dataclasses import dataclass
from math import ceil
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tests.scheduler.reference.scoring import TIE_REL, Floats, Ints

__all__ = [
    "SlotPlan",
    "StartState",
    "cheapest_batch",
    "cheapest_cells",
    "plan_slots",
    "segments_of",
]

StartState = Literal["new", "running", "paused"]
_STATE_BUDGET = 30_000_000  # cells × DP states kept for the backtrack


@dataclass(frozen=True)
class SlotPlan:
    """Segments as `[first, stop)` cell ranges, sorted; `cost` = Σ run + Σ idle (g/kWh·cells)."""

    segments: tuple[tuple[int, int], ...]
    cost: float

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
    return SlotPlan(segments_of(order + first), float(window[order].sum()))


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
    first = max(first, 0)
    stop = min(stop, len(run))
    if need <= 0 or stop - first < need:
        return None
    min_cells = max(1, min(min_cells, need))
    if max_pauses is not None and max_pauses >= need:
        max_pauses = None
    if max_pauses is None and min_cells == 1 and not np.any(idle[first:stop] > 0):
        return cheapest_cells(run, first, stop, need)
    width = stop - first
    pauses = 1 if max_pauses is None else max_pauses + 1
    factor = 1
    while width // factor * (min_cells // factor + 2) * (need // factor + 2) * pauses > (
        _STATE_BUDGET
    ):
        factor += 1
    if factor > 1:
        coarse = _dp(
            _merge(run[first:stop], factor),
            _merge(idle[first:stop], factor),
            ceil(need / factor),
            ceil(min_cells / factor),
            max_pauses,
            start,
        )
        if coarse is None:
            return None
        segs = tuple((first + a * factor, first + b * factor) for a, b in coarse.segments)
        return SlotPlan(segs, coarse.cost)
    fine = _dp(run[first:stop], idle[first:stop], need, min_cells, max_pauses, start)
    if fine is None:
        return None
    return SlotPlan(tuple((first + a, first + b) for a, b in fine.segments), fine.cost)


def _dp(
    run: Floats, idle: Floats, need: int, m: int, max_pauses: int | None, start: StartState
) -> SlotPlan | None:
    """The DP on a window's cells (index 0 = the window's first cell).

    States after each cell: `R[r, k, j]` running, current segment length index `r` (r + 1 cells;
    `m - 1` means ≥ m), `k` cells done, `j` pauses taken; `Q[k, j]` stopped. Not yet started
    costs nothing.
    """
    inf = np.inf
    m = min(m, need)
    unlimited = max_pauses is None
    lanes = 1 if max_pauses is None else max_pauses + 1
    r0 = np.full((m, need + 1, lanes), inf)
    q0 = np.full((need + 1, lanes), inf)
    fresh = 0.0 if start == "new" else inf
    if start == "running":
        r0[m - 1, 0, 0] = 0.0
    if start == "paused":
        q0[0, 0] = 0.0
    history: list[tuple[Floats, Floats]] = []
    r_prev, q_prev = r0, q0
    best, best_cell, best_lane = inf, -1, -1
    for i in range(len(run)):
        c, a = float(run[i]), float(idle[i])
        r = np.full_like(r_prev, inf)
        r[0, 1:, :] = q_prev[:-1, :] + c
        r[0, 1, 0] = min(r[0, 1, 0], fresh + c)
        if m == 1:
            r[0, 1:, :] = np.minimum(r[0, 1:, :], r_prev[0, :-1, :] + c)
        else:
            r[1:, 1:, :] = r_prev[:-1, :-1, :] + c
            r[m - 1, 1:, :] = np.minimum(r[m - 1, 1:, :], r_prev[m - 1, :-1, :] + c)
        q = q_prev + a
        if unlimited:
            q = np.minimum(q, r_prev[m - 1] + a)
        else:
            q[:, 1:] = np.minimum(q[:, 1:], r_prev[m - 1, :, :-1] + a)
        q[need, :] = inf
        history.append((r, q))
        r_prev, q_prev = r, q
        done = r[m - 1, need, :]
        lane = int(np.argmin(done))
        value = float(done[lane])
        if value < inf and (best == inf or value < best - TIE_REL * max(abs(best), 1.0)):
            best, best_cell, best_lane = value, i, lane
    if best_cell < 0:
        return None
    # Walk back from the best finish; the options are tried in the order that prefers fewer
    # pauses among equal costs.
    running: list[int] = []
    kind, rr, k, j = "R", m - 1, need, best_lane
    for i in range(best_cell, -1, -1):
        r_now, q_now = history[i]
        r_before, q_before = history[i - 1] if i > 0 else (r0, q0)
        c, a = float(run[i]), float(idle[i])
        if kind == "R":
            value = r_now[rr, k, j]
            running.append(i)
            options: list[tuple[str, int, int, int, float]] = []
            if rr == m - 1:
                options.append(("R", m - 1, k - 1, j, r_before[m - 1, k - 1, j]))
            if rr > 0:
                options.append(("R", rr - 1, k - 1, j, r_before[rr - 1, k - 1, j]))
            if rr == 0:
                options.append(("Q", 0, k - 1, j, q_before[k - 1, j]))
                if k == 1 and j == 0:
                    options.append(("N", 0, 0, 0, fresh))
            step = c
        else:
            value = q_now[k, j]
            options = [("Q", 0, k, j, q_before[k, j])]
            pj = j if unlimited else j - 1
            if pj >= 0:
                options.append(("R", m - 1, k, pj, r_before[m - 1, k, pj]))
            step = a
        for nk, nr, nkk, nj, before in options:
            if before + step == value:
                kind, rr, k, j = nk, nr, nkk, nj
                break
        else:  # pragma: no cover - the DP always has a matching predecessor
            raise AssertionError("interruptible plan backtrack failed")
        if kind == "N" or (i == 0 and k == 0):
            break
    return SlotPlan(segments_of(np.array(running, dtype=np.int64)), best)
