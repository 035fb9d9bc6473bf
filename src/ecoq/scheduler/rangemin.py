"""Range minima for `ecoq.scheduler.scoring.Candidates.best`, vectorised over many queries:
a sparse table (`RangeMin`) for queries with many different first indices, running minima
(`RunningMin`) for queries that share few (jobs planned from "now"). Both are exact."""

import numpy as np
import numpy.typing as npt

__all__ = ["RangeMin", "RunningMin"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


class RangeMin:
    """Sparse table over a 1-D array: range minima and first-index-below queries, vectorised."""

    def __init__(self, values: Floats, max_range: int | None = None) -> None:
        """Build over `values`; queries never span more than `max_range` values (default all)."""
        n = max(1, values.shape[0])
        top = max(1, min(n, max_range or n)).bit_length()
        table = np.empty((top, n + 1))
        table[:, n + 1 - (1 << (top - 1)) :] = np.inf
        table[0, : values.shape[0]] = values
        table[0, values.shape[0] :] = np.inf
        for k in range(1, top):
            half = 1 << (k - 1)
            np.minimum(
                table[k - 1, : n + 1 - half], table[k - 1, half:], out=table[k, : n + 1 - half]
            )
        self.values = table[0]
        self.table = table
        self.size = n

    def min(self, lo: Ints, hi: Ints) -> Floats:
        """Minimum of `values[lo..hi]` (inclusive); `inf` where `lo > hi`."""
        length = np.maximum(hi - lo + 1, 1)
        k = np.floor(np.log2(length)).astype(np.int64)
        safe_lo = np.clip(lo, 0, self.size)
        a = self.table[k, safe_lo]
        b = self.table[k, np.clip(hi - (1 << k) + 1, 0, self.size)]
        return np.where(lo <= hi, np.minimum(a, b), np.inf)

    def first_at_most(self, lo: Ints, hi: Ints, threshold: Floats) -> Ints:
        """First index in `[lo, hi]` whose value is ≤ `threshold`; -1 where there is none."""
        pos = lo.copy()
        for k in range(self.table.shape[0] - 1, -1, -1):
            span = 1 << k
            skip = (pos + span - 1 <= hi) & (self.table[k, np.clip(pos, 0, self.size)] > threshold)
            pos = np.where(skip, pos + span, pos)
        ok = (pos <= hi) & (self.values[np.clip(pos, 0, self.size)] <= threshold)
        return np.where(ok, pos, -1)


class RunningMin:
    """Range minima over `values[lo .. lo + span]` for queries that share few `lo`s: the
    running minimum from each distinct `lo` (`firsts`; `pair` maps each query to its own), as
    far as the longest query reaches."""

    def __init__(self, values: Floats, firsts: Ints, pair: Ints, span: Ints) -> None:
        width = max(1, int(span.max()) + 1) if len(span) else 1
        at = firsts[:, None] + np.arange(width)
        # Past its row a run reads the next row's values, but no query reaches that far.
        runs = np.where(at < len(values), values[np.minimum(at, len(values) - 1)], np.inf)
        self.mins = np.minimum.accumulate(runs, axis=1)
        self.pair, self.span, self.width = pair, span, width

    def min(self) -> Floats:
        """Each query's minimum (`inf` where its range is empty)."""
        at = np.clip(self.span, 0, self.width - 1)
        out: Floats = np.where(self.span >= 0, self.mins[self.pair, at], np.inf)
        return out

    def first_at_most(self, threshold: Floats, lo: Ints) -> Ints:
        """Each query's first index whose value is ≤ `threshold`; -1 where there is none."""
        a = np.zeros_like(self.span)
        b = np.maximum(self.span, -1) + 1  # search [a, b); the running minima only fall
        while np.any(live := a < b):
            mid = (a + b) // 2
            ok = self.mins[self.pair, np.minimum(mid, self.width - 1)] <= threshold
            b = np.where(live & ok, mid, b)
            a = np.where(live & ~ok, mid + 1, a)
        at = np.minimum(a, self.width - 1)
        found = (a <= self.span) & (self.mins[self.pair, at] <= threshold)
        out: Ints = np.where(found, lo + a, -1)
        return out
