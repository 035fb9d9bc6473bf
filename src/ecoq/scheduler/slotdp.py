"""The pause-limited slot DP of `ecoq.scheduler.interruptible`, for many windows at once.

One table serves every job that starts its window at the same cell of the same costs: a state's
cost does not depend on the job's deadline or on how much work it still has to do beyond the
state's own count, so jobs of any length and deadline read their answers from one forward pass.
Tables of different windows (sites, start cells, stretches of free cells) can be stacked.

States after each cell (as in the single-window DP this replaces): `R[r, k, j]` running, `r + 1`
cells into the current segment (`m - 1` meaning at least `m`), `k` cells done, `j` pauses taken;
`Q[k, j]` stopped. Not yet started costs nothing. The forward pass steps cell by cell, or, when
pauses cost nothing and segments have no minimum length (the usual case), by cells of work done
with all cells at once: carrying a pause on then adds nothing, so it is a running minimum over
cells. Either way every value is computed with the same additions, in the same order, as that
DP, and ties are broken the same way: a walk back from the best finish prefers carrying a
segment on to resuming after a pause to a fresh start, and carrying a pause on to starting it.
Each state records which way it was reached, so the walk takes a few array look-ups per segment.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ecoq.scheduler.scoring import TIE_REL, Floats, Ints

__all__ = ["Row", "Tables", "first_best"]

StartState = Literal["new", "running", "paused"]
_INF = np.inf


@dataclass(frozen=True)
class Row:
    """One window: costs from cell `start` of `run`/`idle` on (cells past `stop` are not used)."""

    run: Floats
    idle: Floats
    start: int
    stop: int


def first_best(values: Floats) -> int:
    """Index of the best finite value, scanning in order: a later value replaces the best only
    when it is lower by more than the relative tie tolerance (so near-ties go to the earliest).
    -1 when none is finite."""
    if values.shape[0] == 0:
        return -1
    # Only a new strict running minimum can beat the best by the tolerance; when each such
    # record beats the one before it by the tolerance, the last one is the answer.
    before = np.concatenate(([_INF], np.minimum.accumulate(values)[:-1]))
    records = np.flatnonzero(values < before)
    if records.shape[0] == 0:
        return -1
    r = values[records]
    if np.all(r[1:] < r[:-1] - TIE_REL * np.maximum(np.abs(r[:-1]), 1.0)):
        return int(records[-1])
    best, at = _INF, -1
    for i, v in zip(records.tolist(), r.tolist(), strict=True):
        if at < 0 or v < best - TIE_REL * max(abs(best), 1.0):
            best, at = v, i
    return at


class Tables:
    """The forward pass of the slot DP over several windows (`rows`) at once.

    Args:
        rows: the windows; each is filled for `stop - start` cells.
        need: the most cells of work any reader will ask for.
        lanes: pause counts kept (`max_pauses + 1`); 1 with `unlimited`.
        m: minimum segment length, cells (≥ 1).
        unlimited: pauses are not counted (one lane).
        start: `new`, `running` or `paused` (see `interruptible.plan_slots`).
        by_cell: always step cell by cell (the general way; for tests).
        keep_stopped: keep the stopped states `q` (for tests; the walk back needs only
            whether each segment began afresh, `fresh`, so they are dropped after the forward
            pass, saving almost half the memory of tables kept for reuse).
    """

    def __init__(
        self,
        rows: list[Row],
        need: int,
        lanes: int,
        m: int,
        unlimited: bool,
        start: StartState,
        *,
        by_cell: bool = False,
        keep_stopped: bool = False,
    ) -> None:
        g = len(rows)
        w = max(r.stop - r.start for r in rows)
        run = np.full((g, w), _INF)
        idle = np.full((g, w), _INF)
        for x, r in enumerate(rows):
            run[x, : r.stop - r.start] = r.run[r.start : r.stop]
            idle[x, : r.stop - r.start] = r.idle[r.start : r.stop]
        self.rows, self.m, self.unlimited, self.start = rows, m, unlimited, start
        self.need, self.lanes = need, lanes
        self.run, self.idle = run, idle
        k1 = need + 1
        # One step per cell of work when pauses are free and segments have no minimum length
        # (`_forward_by_work`), else one step per cell (`_forward`). Either way the long axis
        # is stored last, so each step works on contiguous runs; `r`, `q`, `carried` and
        # `held` below are views with one index order for both.
        free = all(not np.any(r.idle[r.start : r.stop]) for r in rows)
        self.by_work = m == 1 and free and not by_cell
        if self.by_work:
            self._rk = np.empty((k1, lanes, g, w + 1))  # work, lane, row, 1 + cell
            # The pass needs the stopped states of two levels of work at a time.
            self._qk = np.empty((k1 if keep_stopped else 2, lanes, g, w + 1))
            self._ck = np.empty((need, lanes, g, w), dtype=np.bool_)
            self._hk = np.empty((k1, lanes, g, w), dtype=np.bool_)
            self._fk = np.empty((need, lanes, g, w), dtype=np.bool_)
            self._r = self._rk.transpose(3, 2, 0, 1)[:, :, None]
            self.carried = self._ck.transpose(3, 2, 0, 1)
            self.held = self._hk.transpose(3, 2, 0, 1)
            self.fresh = self._fk.transpose(3, 2, 0, 1)
        else:
            self._rc = np.empty((w + 1, g, m, lanes, k1))  # 1 + cell, row, length, lane, work
            self._qc = np.empty((w + 1, g, lanes, k1))
            self._cc = np.empty((w, g, lanes, need), dtype=np.bool_)
            self._hc = np.empty((w, g, lanes, k1), dtype=np.bool_)
            self._r = self._rc.transpose(0, 1, 2, 4, 3)
            self.carried = self._cc.transpose(0, 1, 3, 2)
            self.held = self._hc.transpose(0, 1, 3, 2)
        # States after each cell (index order: 1 + cell, row, segment length index, work done,
        # lane); cell index 0 holds the state before the window's first cell. `carried[i, ...,
        # k - 1, j]`: the running state (length index m - 1) was reached by carrying its
        # segment on; `held[i, ..., k, j]`: the stopped state by carrying its pause on;
        # `fresh[i, ..., k - 1, j]`: the running state after `k` cells of work does not come
        # from the stopped one before it (`q + run`, compared as the walk back compares them).
        self._r[:, :, :, 0, :] = _INF  # no state has run zero cells...
        self._r[0] = _INF
        if start == "running":
            self._r[0, :, m - 1, 0, 0] = 0.0  # ...but a segment running on from before
        self.r = self._r[1:]
        self.held[..., 0] = True  # lane 0 is never paused into (with counted pauses)
        self._ends: Floats | None = None
        if self.by_work:
            self._forward_by_work()
            stopped = self._qk.transpose(3, 2, 0, 1)
        else:
            stopped = self._qc.transpose(0, 1, 3, 2)
            stopped[0] = _INF
            if start == "paused":
                stopped[0, :, 0, 0] = 0.0
            self._forward()
            began = self._qc[:-1, :, :, :-1] + self.run.T[:, :, None, None]
            self._fc = began != self._rc[1:, :, 0, :, 1:]
            self.fresh = self._fc.transpose(0, 1, 3, 2)
        if keep_stopped:
            self.q = stopped[1:]
        elif self.by_work:  # tables kept for reuse hold only what reading and walking need
            del self._qk
        else:
            del self._qc

    def _forward(self) -> None:
        """One step per cell, all states at once."""
        m, unlimited, new = self.m, self.unlimited, self.start == "new"
        run_t, idle_t = self.run.T.copy(), self.idle.T.copy()
        for i in range(run_t.shape[0]):
            rp, qp, r, q = self._rc[i], self._qc[i], self._rc[i + 1], self._qc[i + 1]
            c = run_t[i][:, None, None]
            a = idle_t[i][:, None, None]
            # Running: a new segment after a pause (or a fresh start), or carrying one on.
            head = r[:, 0, :, 1:]
            np.add(qp[:, :, :-1], c, out=head)
            if new:  # nothing is stopped before it has run: the fresh start is the only way
                head[:, 0, 0] = run_t[i]
            if m > 1:
                np.add(rp[:, :-1, :, :-1], c[:, None], out=r[:, 1:, :, 1:])
                head = r[:, m - 1, :, 1:]
            carry = rp[:, m - 1, :, :-1] + c
            np.less_equal(carry, head, out=self._cc[i])
            np.minimum(head, carry, out=head)
            # Stopped: carrying a pause on, or starting one after a long enough segment.
            np.add(qp, a, out=q)
            if unlimited:
                pause = rp[:, m - 1] + a
                np.less_equal(q, pause, out=self._hc[i])
                np.minimum(q, pause, out=q)
            else:
                pause = rp[:, m - 1, :-1, :] + a
                np.less_equal(q[:, 1:, :], pause, out=self._hc[i][:, 1:, :])
                np.minimum(q[:, 1:, :], pause, out=q[:, 1:, :])

    def _forward_by_work(self) -> None:
        """One step per cell of work done, all cells at once: for segments of any length and
        pauses that cost nothing (checkpoints, or no idle power), where carrying a pause on
        adds nothing and is a running minimum over cells. The same values as `_forward`."""
        new, unlimited = self.start == "new", self.unlimited
        c = self.run[None]  # (1, rows, cells)
        r, q = self._rk, self._qk  # (work, lane, row, 1 + cell); `q`: all or two levels
        rolling = q.shape[0] < r.shape[0]
        head, carry = np.empty(r.shape[1:3] + c.shape[2:]), np.empty(r.shape[1:3] + c.shape[2:])
        for k in range(r.shape[0]):
            qk = q[k % 2] if rolling else q[k]
            qk[:, :, 0] = _INF
            if k == 0 and self.start == "paused":
                qk[0, :, 0] = 0.0
            if k:
                np.add((q[(k - 1) % 2] if rolling else q[k - 1])[:, :, :-1], c, out=head)
                if new and k == 1:
                    stopped_first = head[0].copy()
                    head[0] = self.run
                np.add(r[k - 1, :, :, :-1], c, out=carry)
                np.less_equal(carry, head, out=self._ck[k - 1])
                np.minimum(head, carry, out=r[k, :, :, 1:])
                if new and k == 1:
                    head[0] = stopped_first
                np.not_equal(head, r[k, :, :, 1:], out=self._fk[k - 1])
            # A pause begins after a running cell (one lane up) or carries on.
            up = slice(None) if unlimited else slice(1, None)
            before = r[k, :, :, :-1] if unlimited else r[k, :-1, :, :-1]
            into = qk[up, :, 1:]
            np.minimum.accumulate(before, axis=-1, out=into)
            np.minimum(into, qk[up, :, :1], out=into)
            np.less_equal(qk[up, :, :-1], before, out=self._hk[k, up])
            if not unlimited:
                qk[0, :, 1:] = qk[0, :, :1]

    def done(self, row: int, need: int, lanes: int, stop: int) -> tuple[Floats, Ints]:
        """Cost of finishing `need` cells at each cell `row.start .. stop - 1` with at most
        `lanes - 1` pauses (the cheapest lane, fewest pauses among equals), and that lane."""
        w = stop - self.rows[row].start
        if self.by_work:
            v = self._rk[need, :lanes, row, 1 : w + 1]  # (lanes, cells), contiguous cells
            lane: Ints = v.argmin(axis=0)
            return v.min(axis=0), lane
        if self._ends is None:  # finishing states by job length, cells contiguous
            self._ends = np.ascontiguousarray(self._rc[1:, :, self.m - 1].transpose(1, 3, 2, 0))
        v = self._ends[row, need, :lanes, :w]
        lane = v.argmin(axis=0)
        return v.min(axis=0), lane

    def walk(self, row: int, cell: int, need: int, lane: int) -> tuple[tuple[int, int], ...]:
        """The segments (cells of `run`, `[first, stop)`) of the plan that finishes `need` cells
        at window cell `cell` in `lane`."""
        m, base = self.m, self.rows[row].start
        out: list[tuple[int, int]] = []
        i, k, j = cell, need, lane
        while True:  # at a running state (i, m - 1, k, j)
            # Back along the diagonal while the segment was carried on (at length ≥ m).
            steps = np.arange(min(i, k - 1) + 1)
            path = self.carried[i - steps, row, k - 1 - steps, j]
            t = int(path.argmin())
            if path[t]:  # carried on from before the window (a running job)
                out.append((base, base + i + 1))
                break
            s = i - t - (m - 1)  # then m - 1 cells of a segment shorter than m
            out.append((base + s, base + i + 1))
            k -= i - s + 1
            if self.fresh[s, row, k, j]:  # a fresh start
                break
            if s == 0:  # paused since before the window
                break
            # Back along the row while the pause was carried on.
            path = self.held[s - 1 :: -1, row, k, j]
            t = int(path.argmin())
            p = -1 if path[t] else s - 1 - t
            if p <= 0:  # paused since before the window, or right after a segment that ran
                break  # before it: no more cells here
            i = p - 1
            j = j if self.unlimited else j - 1
        out.reverse()
        return tuple(out)
