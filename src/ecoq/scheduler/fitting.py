"""The contiguous capacity search of `ecoq.scheduler.engine`: for one job, the cleanest window
that still fits a site by the deadline (`_site_best`), or else the earliest window that fits at
all (`_site_first`); `fit_contiguous` tries the job's sites.

A site's candidate windows are the job's scored row (`scoring.Candidates`: every start where an
edge meets a cell boundary, in time order) plus its earliest and latest starts. The cells each
candidate covers are worked out once per row (`RowCells`). For one row, site, GPU count and first
candidate (jobs planned from "now" share it), the running minimum of the fitting candidates'
means (`Prefix`), as far as the latest start of any job that shares it, answers every job's
search with a look-up and a binary search. It is computed again only once a cell at the site has
filled up; until then an outdated one is a lower bound, enough to pass over a site that cannot
win. The earliest fitting candidate (`_first_fit`) is searched for from the earliest start on,
a few candidates first, and an outdated answer is where the search picks up again: a candidate
that did not fit never will. The results equal those of scoring every candidate afresh
(`_generic`, which also serves the cases the fast path leaves out), tie rules included: among
windows within the relative tie tolerance of the cleanest, the earliest wins.

Times are epoch seconds (floats), as in `capacity`.
"""

from dataclasses import dataclass
from math import ceil, floor, isfinite

import numpy as np

from ecoq.scheduler.capacity import Choice, Context, ZoneGrid, cells_ok, weights_of
from ecoq.scheduler.scoring import TIE_REL, Bools, Candidates, Floats, Ints, window_means

__all__ = ["Prefix", "RowCells", "fit_bounds", "fit_contiguous"]

_EPS = 1e-6
_INF = float("inf")
_PREFIXES = 4096  # `Prefix`es kept (each about ten bytes per candidate it covers)
_FIRST_STEP = 64  # candidates `_first_fit` looks at first
_Option = tuple[float, float, int, int]  # (mean, start, list order, site) or (start, mean, ...)


@dataclass(frozen=True)
class RowCells:
    """The cells `[c0, c1)` each candidate window of a zone's `Candidates` covers.

    Attributes:
        shift: per row, the window's length in cells when its candidates are exactly the cells
            `0, 1, 2, ...` (then `c0` is the index in the row and `c1 = c0 + shift`), else -1.
        c0, c1: per flat candidate (as `Candidates.starts`); None when every row has a shift.
    """

    shift: list[int]
    c0: Ints | None
    c1: Ints | None

    @classmethod
    def build(cls, cands: Candidates, tick: float) -> "RowCells":
        fast = _knot_shifts(cands, tick)
        if fast is not None:
            return cls(fast, None, None)
        # Rows go on past their stored candidates only on grids where they are plain.
        assert np.array_equal(cands.row_len, cands.row_end)
        width = cands.width
        durations = np.repeat(cands.durations_s, width)
        c0 = np.floor(cands.starts / tick + _EPS).astype(np.int64)
        c1 = np.ceil((cands.starts + durations) / tick - _EPS).astype(np.int64)
        cells = np.arange(width)
        a, b = c0.reshape(-1, width), c1.reshape(-1, width)
        used = cells[None, :] < cands.row_len[:, None]
        length = b[:, 0] - a[:, 0]
        plain = ((a == cells) & (b == cells + length[:, None]) | ~used).all(axis=1)
        shift = np.where(plain & (cands.row_len > 0), length, -1)
        if np.all(shift >= 0):
            return cls(shift.tolist(), None, None)
        return cls(shift.tolist(), c0, c1)


def _knot_shifts(cands: Candidates, tick: float) -> list[int] | None:
    """`RowCells.shift` without working out every candidate's cells, when every row is the
    cell boundaries and its windows end on them (`Candidates.shifts`): candidate `i` of a row
    `m` cells long covers `[K[i], C[i + m])`, with `K` and `C` the cells `build` computes for a
    boundary as a start and as an end. None when some row is not plain."""
    if len(cands.shifts) == 0 or int(cands.shifts.min()) < 0:
        return None
    n = cands.curve.n
    knots = np.arange(n + 1, dtype=np.float64) * cands.curve.tick_s
    k0 = np.floor(knots / tick + _EPS).astype(np.int64)
    c1 = np.ceil(knots / tick - _EPS).astype(np.int64)
    index = np.arange(n + 1)
    bad = np.flatnonzero(k0 != index)
    plain_starts = int(bad[0]) if len(bad) else n + 1  # rows up to this long start plainly
    # A row's ends are plain when `C[j] - j` is the same over `j` in `[m, m + size)`.
    drift = c1 - index
    change = np.flatnonzero(np.diff(drift)) + 1
    out: list[int] = []
    for m, size in zip(cands.shifts.tolist(), cands.row_end.tolist(), strict=True):
        if size == 0:
            out.append(-1)
            continue
        after = int(np.searchsorted(change, m, side="right"))
        run_end = int(change[after]) if after < len(change) else n + 1
        if size > plain_starts or m + size > n + 1 or run_end < m + size:
            return None
        out.append(int(c1[m] - k0[0]))
    return out


@dataclass(frozen=True)
class Prefix:
    """A row's fitting candidates from one first index on, at one site, for one GPU count, as
    far as any job that starts its search there looks (`fit_bounds`'s reach).

    Attributes:
        version: `Usage.version` when computed; capacity only fills up while planning, so an
            outdated one is still a lower bound.
        neg: the running minimum of the fitting candidates' means × PUE (`inf` before the
            first), negated (so ascending, for searching).
    """

    version: tuple[int, int]
    neg: Floats

    def best(self, i: int) -> float:
        """The cleanest fitting candidate's mean among the first `i + 1`."""
        return -float(self.neg[i])

    def first_at_most(self, threshold: float) -> int:
        """The first candidate whose mean is at most `threshold` (one must be)."""
        return int(self.neg.searchsorted(-threshold, side="left"))


def _row_cells(zone: ZoneGrid, profile: tuple[float, ...], cands: Candidates) -> RowCells:
    got = zone.cells.get(profile)
    if got is None:
        got = zone.cells[profile] = RowCells.build(cands, zone.curve.tick_s)
    return got


def _fitting(blocked: Ints, cells: RowCells, row: int, width: int, lo: int, hi: int) -> Bools:
    """Whether each candidate `lo:hi` (flat, within row `row`) fits (see `Usage.fits`)."""
    k = cells.shift[row]
    if k >= 0:  # the candidates are the cells themselves: shifted slices
        a = lo - row * width
        ok: Bools = blocked[a + k : a + k + hi - lo] == blocked[a : a + hi - lo]
        return ok
    assert cells.c0 is not None and cells.c1 is not None
    c1 = np.minimum(cells.c1[lo:hi], len(blocked) - 1)
    ok = blocked[c1] == blocked[cells.c0[lo:hi]]
    return ok


def _prefix(ctx: Context, j: int, si: int, row: int, lo: int, version: tuple[int, int]) -> Prefix:
    """The `Prefix` of job `j`'s row at site `si` from flat candidate `lo` (cached)."""
    job, usage = ctx.jobs[j], ctx.usage[si]
    key = (si, job.gpus, job.profile, row, lo)
    got = ctx.prefix.get(key)
    if got is not None and got.version == version:
        return got
    site = ctx.sites[si]
    zone = ctx.zones[site.zone]
    cands = zone.cands[job.profile]
    cells = _row_cells(zone, job.profile, cands)
    hi = _bounds(ctx, site.zone, j)[3]
    ok = _fitting(usage.blocked(job.gpus), cells, row, cands.width, lo, hi)
    means = np.where(ok, cands.scores[lo:hi], np.inf)
    if site.pue != 1.0:
        means *= site.pue
    neg = np.negative(np.minimum.accumulate(means, out=means), out=means)
    if key not in ctx.prefix and len(ctx.prefix) >= _PREFIXES:
        del ctx.prefix[next(iter(ctx.prefix))]  # bounded memory: forget the oldest
    got = ctx.prefix[key] = Prefix(version, neg)
    return got


def _first_fit(ctx: Context, j: int, si: int, row: int, lo: int, hi: int) -> int:
    """How many of the row's candidates `lo:hi` (flat, to the row's end) come before the first
    that fits at site `si`; -1 if none does (cached).

    Capacity only fills up while planning, so a candidate that did not fit never will: an
    outdated answer is where the search picks up again. The search looks at a few candidates
    first, then twice as many each time, so a fit near the earliest start costs little."""
    job, usage = ctx.jobs[j], ctx.usage[si]
    key = (si, job.gpus, job.profile, row, lo)
    version = usage.version(job.gpus)
    got = ctx.first_fit.get(key)
    at = 0
    if got is not None:
        if got[0] == version or got[1] < 0:
            return got[1]
        at = got[1]
    zone = ctx.zone_of(si)
    cands = zone.cands[job.profile]
    cells = _row_cells(zone, job.profile, cands)
    blocked = usage.blocked(job.gpus)
    found, step = -1, _FIRST_STEP
    while lo + at < hi:
        stop = min(hi, lo + at + step)
        ok = _fitting(blocked, cells, row, cands.width, lo + at, stop)
        if ok.any():
            found = at + int(ok.argmax())
            break
        at, step = stop - lo, 2 * step
    ctx.first_fit[key] = (version, found)
    return found


def _fits(blocked: Ints, tick: float, s: float, d: float) -> bool:
    """Whether the window `[s, s + d)` (seconds into the grid) fits (see `Usage.fits`)."""
    c0 = floor(s / tick + _EPS)
    c1 = ceil((s + d) / tick - _EPS)
    n = len(blocked) - 1
    return bool(blocked[min(c1, n)] == blocked[min(max(c0, 0), n)])


def fit_bounds(ctx: Context, zone: str, cands: Candidates, idx: Ints, rows: Ints) -> None:
    """Record, for jobs `idx` (their rows `rows` of `cands`), what `_site_best` and
    `_site_first` would search for first: the row's candidates after the earliest start and
    before the latest (flat `lo:hi`), whether the fast path applies (see `_site_best`), and
    how far the jobs whose search starts at the same `lo` look (the `Prefix` they share).
    Computed for all jobs at once, with the same arithmetic as one at a time."""
    n = len(ctx.jobs)
    lo_all, hi_all, plain_all, reach_all = ctx.fit_bounds.setdefault(
        zone,
        (
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.bool_),
            np.zeros(n, np.int64),
        ),
    )
    origin = ctx.zones[zone].origin_s
    e, latest = ctx.e[idx], ctx.dl[idx] - ctx.dur[idx]
    base = rows * cands.stride - origin
    lo = np.searchsorted(cands.keys, base + e, side="right")
    hi = np.searchsorted(cands.keys, base + latest, side="left")
    se, sl, limit = e - origin, np.maximum(e, latest) - origin, latest + _EPS
    inside = hi > lo
    first = cands.starts[np.where(inside, lo, 0)]
    last = cands.starts[np.where(inside, hi - 1, 0)]
    plain = ~inside | ((se <= first) & (last < sl) & (sl <= limit - origin))
    lo_all[idx], hi_all[idx], plain_all[idx] = lo, hi, plain
    firsts, pair = np.unique(lo, return_inverse=True)
    reach = np.zeros(len(firsts), np.int64)
    np.maximum.at(reach, pair, hi)
    reach_all[idx] = np.maximum(reach[pair], lo)


def _site_best(ctx: Context, j: int, si: int, order: int, top: float) -> _Option | None:
    """The cleanest window at one site that fits by the deadline: (mean, start, order, site).

    None also when it cannot beat `top` (the best found so far) by more than the tie
    tolerance, as far as an outdated `Prefix` shows (then it would not be chosen anyway)."""
    job, site, usage = ctx.jobs[j], ctx.sites[si], ctx.usage[si]
    if not usage.ever_fits(job.gpus):
        return None
    zone = ctx.zones[site.zone]
    d = ctx.durl[j]
    cands, row = zone.cands.get(job.profile), zone.rows.get((job.profile, d))
    known = ctx.ends.get(site.zone)
    if cands is None or row is None or known is None:
        return _generic(ctx, j, si, order, want_best=True)
    e, latest, origin = ctx.el[j], ctx.dll[j] - d, zone.origin_s
    se, sl, limit = e - origin, max(e, latest) - origin, latest + _EPS
    lo, hi, plain, _ = _bounds(ctx, site.zone, j)
    # The row's candidates lie strictly between the earliest and the latest start (the key
    # search), and so before the deadline; where rounding could say otherwise, take the
    # general path.
    if not plain:
        return _generic(ctx, j, si, order, want_best=True)
    starts = cands.starts
    me, ml = known[j].tolist()
    me, ml = me * site.pue, ml * site.pue
    inner, prefix = _INF, None
    if hi > lo:
        version = usage.version(job.gpus)
        prefix = ctx.prefix.get((si, job.gpus, job.profile, row, lo))
        if prefix is not None and prefix.version != version:
            bound = min(me, ml, prefix.best(hi - lo - 1))
            if bound > top + TIE_REL * max(abs(top), 1.0):
                return None
            prefix = None
        if prefix is None:
            prefix = _prefix(ctx, j, si, row, lo, version)
        inner = prefix.best(hi - lo - 1)
    # An end window matters only if it could be the cleanest or tie with it.
    near = inner + TIE_REL * max(abs(inner), 1.0) if isfinite(inner) else _INF
    blocked, tick = usage.blocked(job.gpus), zone.curve.tick_s
    ok_e = me <= near and se + origin <= limit and _fits(blocked, tick, se, d)
    ok_l = ml <= near and sl + origin <= limit and _fits(blocked, tick, sl, d)
    low = min(me if ok_e else _INF, ml if ok_l else _INF, inner)
    if not isfinite(low):
        return None
    threshold = low + TIE_REL * max(abs(low), 1.0)
    if ok_e and me <= threshold:  # in time order: the earliest start, the row, the latest
        s = se
    elif prefix is not None and inner <= threshold:
        s = float(starts[lo + prefix.first_at_most(threshold)])
    else:
        s = sl
    return (low, s + origin, order, si)


def _bounds(ctx: Context, zone: str, j: int) -> tuple[int, int, bool, int]:
    """Job `j`'s `fit_bounds` in `zone`: lo, hi, fast path, reach (as Python values, converted
    once per zone)."""
    got = ctx.fit_lists.get(zone)
    if got is None:
        lo, hi, plain, reach = ctx.fit_bounds[zone]
        got = ctx.fit_lists[zone] = (lo.tolist(), hi.tolist(), plain.tolist(), reach.tolist())
    return got[0][j], got[1][j], got[2][j], got[3][j]


def _site_first(ctx: Context, j: int, si: int, order: int) -> _Option | None:
    """The earliest window at one site that fits at all: (start, mean, order, site)."""
    job, site, usage = ctx.jobs[j], ctx.sites[si], ctx.usage[si]
    if not usage.ever_fits(job.gpus):
        return None
    zone = ctx.zones[site.zone]
    d = ctx.durl[j]
    cands, row = zone.cands.get(job.profile), zone.rows.get((job.profile, d))
    known = ctx.ends.get(site.zone)
    if cands is None or row is None or known is None:
        return _generic(ctx, j, si, order, want_best=False)
    e, latest, origin, tick = ctx.el[j], ctx.dll[j] - d, zone.origin_s, zone.curve.tick_s
    beyond = max(zone.curve.span_s, usage.free_after(job.gpus) * tick)
    ends = [e - origin, max(e, latest) - origin, max(e, origin + beyond) - origin]
    means = [x * site.pue for x in (*known[j].tolist(), _INF)]
    lo = _bounds(ctx, site.zone, j)[0]
    # Flat positions past the stored candidates stand for the row's unstored ones.
    hi = row * cands.width + int(cands.row_end[row])
    starts = cands.row_starts(row, lo - row * cands.width) if hi > lo else np.zeros(0)
    # (position among the row's candidates, start, tie order) sorts as a stable time sort.
    picks: list[tuple[int, float, int]] = []
    if hi > lo:
        first = _first_fit(ctx, j, si, row, lo, hi)
        if first >= 0:
            picks.append((first, float(starts[first]), 3))
            stored = lo + first < row * cands.width + int(cands.row_len[row])
            means.append(float(cands.scores[lo + first]) * site.pue if stored else _INF)
    blocked = usage.blocked(job.gpus)
    for x, s in enumerate(ends):
        if _fits(blocked, tick, s, d):
            picks.append((_position(starts, s), s, x))
    if not picks:
        return None
    _, s, x = min(picks)
    return (s + origin, means[x], order, si)


def _position(starts: Floats, s: float) -> int:
    """How many of the (ascending) `starts` come before `s`."""
    if len(starts) == 0 or s <= starts[0]:
        return 0
    if s > starts[-1]:
        return len(starts)
    return int(starts.searchsorted(s, side="left"))


def _generic(ctx: Context, j: int, si: int, order: int, want_best: bool) -> _Option | None:
    """`_site_best` (`want_best`) or `_site_first` by scoring every candidate afresh: for what
    the fast paths leave out (no scored row or end means, rounding at the row's ends)."""
    job = ctx.jobs[j]
    e, d = ctx.el[j], ctx.durl[j]
    latest = ctx.dll[j] - d
    zone, usage = ctx.zone_of(si), ctx.usage[si]
    if not usage.ever_fits(job.gpus):
        return None
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
            s = np.concatenate((s, cands.starts[lo:hi]))
            m = np.concatenate((m, cands.scores[lo:hi]))
        else:  # to the row's end, stored or not
            s = np.concatenate((s, cands.row_starts(r, lo - r * cands.width)))
            m = np.concatenate((m, cands.row_scores(r, lo - r * cands.width)))
        by_time = np.argsort(s, kind="stable")
        s, m = s[by_time], m[by_time]
    m = m * ctx.sites[si].pue
    tick = zone.curve.tick_s
    c0 = np.floor(s / tick + _EPS).astype(np.int64)
    c1 = np.ceil((s + d) / tick - _EPS).astype(np.int64)
    blocked = usage.blocked(job.gpus)
    n = len(blocked) - 1
    ok = blocked[np.minimum(c1, n)] == blocked[np.minimum(np.maximum(c0, 0), n)]
    if want_best:
        mm = np.where(ok & (s + origin <= latest + _EPS), m, np.inf)
        low = float(mm.min())
        if not isfinite(low):
            return None
        i = int(np.flatnonzero(mm <= low + TIE_REL * max(abs(low), 1.0))[0])
        return (low, float(s[i] + origin), order, si)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[0])
    return (float(s[i] + origin), float(m[i]), order, si)


def fit_contiguous(ctx: Context, j: int, asap: bool, full: int = -1) -> tuple[Choice | None, bool]:
    """The best window that fits capacity by the deadline (or, with `asap` or when none does,
    the earliest that fits). Returns the choice and whether it meets the deadline. `full`: a
    site whose cleanest window is known not to fit.

    Sites are tried from the lowest unconstrained mean (a lower bound) up, and the search stops
    once a fitting window beats every remaining bound."""
    job = ctx.jobs[j]
    d = ctx.durl[j]
    listed = [(ctx.site_index[name], order) for order, name in enumerate(job.sites)]
    if not asap:
        lower, lower_start = ctx.lower[j].tolist(), ctx.lower_start[j].tolist()
        found: list[_Option] = []
        top = _INF
        for bound, order, si in sorted([(lower[si], order, si) for si, order in listed]):
            if found and bound > top + TIE_REL * max(abs(top), 1.0):
                break
            start = lower_start[si]
            fits = (
                si != full
                and isfinite(bound)
                and cells_ok(ctx, j, Choice(si, [(start, start + d)], bound, []))
            )
            option = (bound, start, order, si) if fits else _site_best(ctx, j, si, order, top)
            if option is not None:
                found.append(option)
                top = min(top, option[0])
        if found:
            tol = TIE_REL * max(abs(top), 1.0)
            mean, t0, _, si = min((o for o in found if o[0] <= top + tol), key=lambda o: o[1:3])
            return Choice(si, [(t0, t0 + d)], mean, []), True
    anytime = [f for si, order in listed if (f := _site_first(ctx, j, si, order))]
    if not anytime:
        return None, False
    t0, mean, _, si = min(anytime)
    return Choice(si, [(t0, t0 + d)], mean, []), t0 <= ctx.dll[j] - d + _EPS
