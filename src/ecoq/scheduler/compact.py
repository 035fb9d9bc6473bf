"""Compaction of stored series: runs' energy series thinned out, replaced realized points dropped.

`thin_series` keeps one sample per step of a finished run's energy series, losing no joule.

`compact_realized`: the daemon fetches realized history again and again over overlapping
spans (2 days every 6 hours, `Daemon._refresh_history`), and every fetch is stored whole, so
each 5-minute value is stored about eight times. Readers merge the fetches with the newest fetch
winning where two have a value for the same time (`ForecastStore.history`, the plots), so a
point that a newer fetch of the same zone and signal also has is never read. Dropping those
points is lossless for every reader; a fetch left with no point is deleted. Fetches are
compacted once a day old (newer fetches overlap them by then), each once
(`ForecastRecord.compacted_at`). Both are called by
`ecoq.scheduler.retention` within its budget.
"""

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.models import ForecastRecord

__all__ = ["SETTLED", "compact_realized", "drop_replaced", "thin_series"]

#: A realized fetch is compacted once it is this old.
SETTLED = timedelta(days=1)

Points = list[list[float | None]]


def drop_replaced(fetches: list[tuple[int, Points]], todo: set[int]) -> dict[int, Points]:
    """For each fetch in `todo`, its points whose time no later fetch has.

    Args:
        fetches: (id, points) of one zone and signal, oldest fetch first; every fetch later
            than a `todo` one that overlaps it must be there.
        todo: the ids to compact.
    """
    seen: set[float] = set()
    out: dict[int, Points] = {}
    for fetch_id, points in reversed(fetches):
        if fetch_id in todo:
            out[fetch_id] = [p for p in points if float(p[0] or 0) not in seen]
        seen.update(float(p[0] or 0) for p in points)
    return out


def compact_realized(
    engine: Engine, now: datetime, left: Callable[[], bool], *, batch: int = 50
) -> tuple[int, int]:
    """Compact realized fetches at least `SETTLED` old, `batch` at a time while `left()`.

    Returns (fetches that lost points, fetches deleted).
    """
    trimmed = deleted = 0
    while left():
        with session(engine) as s:
            todo = s.exec(
                select(
                    ForecastRecord.id,
                    ForecastRecord.zone,
                    ForecastRecord.signal,
                    ForecastRecord.start,
                )
                .where(
                    col(ForecastRecord.realized) == True,  # noqa: E712 (an indexed comparison)
                    col(ForecastRecord.compacted_at).is_(None),
                    col(ForecastRecord.fetched_at) < now - SETTLED,
                )
                .order_by(col(ForecastRecord.id))
                .limit(batch)
            ).all()
        groups: dict[tuple[str, str], list[int]] = {}
        for fetch_id, zone, signal, _ in todo:
            assert fetch_id is not None
            groups.setdefault((zone, signal), []).append(fetch_id)
        for (zone, signal), ids in groups.items():
            t, d = _compact_group(engine, zone, signal, ids, now)
            trimmed, deleted = trimmed + t, deleted + d
        if len(todo) < batch:
            break
    return trimmed, deleted


def _compact_group(
    engine: Engine, zone: str, signal: str, ids: list[int], now: datetime
) -> tuple[int, int]:
    with session(engine) as s:
        mine = s.exec(
            select(ForecastRecord.start, ForecastRecord.end, ForecastRecord.fetched_at).where(
                col(ForecastRecord.id).in_(ids)
            )
        ).all()
        lo = min(r[0] for r in mine)
        hi = max(r[1] for r in mine)
        since = min(r[2] for r in mine)
        rows = s.exec(
            select(ForecastRecord.id, ForecastRecord.points)
            .where(
                col(ForecastRecord.realized) == True,  # noqa: E712
                col(ForecastRecord.zone) == zone,
                col(ForecastRecord.signal) == signal,
                col(ForecastRecord.end) > lo,
                col(ForecastRecord.start) < hi,
                col(ForecastRecord.fetched_at) >= since,
            )
            .order_by(col(ForecastRecord.fetched_at), col(ForecastRecord.id))
        ).all()
        fetches = [(int(i or 0), list(p)) for i, p in rows]
        kept = drop_replaced(fetches, set(ids))
        before = dict(fetches)
        empty = [i for i, p in kept.items() if not p]
        changed: list[dict[str, Any]] = [
            {"fid": i, "pts": p, "at": now} for i, p in kept.items() if 0 < len(p) < len(before[i])
        ]
        same = [{"fid": i, "at": now} for i, p in kept.items() if len(p) == len(before[i]) > 0]
        if empty:
            s.execute(delete(ForecastRecord).where(col(ForecastRecord.id).in_(empty)))
        one = update(ForecastRecord).where(col(ForecastRecord.id) == bindparam("fid"))
        if changed:
            stmt = one.values(points=bindparam("pts"), compacted_at=bindparam("at"))
            s.connection().execute(stmt, changed)
        if same:
            s.connection().execute(one.values(compacted_at=bindparam("at")), same)
        s.commit()
    return len(changed), len(empty)


def thin_series(series: Mapping[str, Any], step_s: float) -> dict[str, Any]:
    """A run's `energy_series` (``{"segments": [EnergySeries.to_dict(), ...]}``) with at most
    one sample per `step_s` seconds in each segment: the first, then each sample at least
    `step_s` after the last one kept, and always the last. Cumulative values are kept as they
    were, so every meter's total (and every sum of intervals) is unchanged; each interval's
    energy is the sum of the intervals it replaces. Segments are marked ``thinned_to_s``."""
    segments = []
    for segment in series.get("segments", []):
        t_s = list(segment.get("t_s", []))
        keep: list[int] = []
        for i, t in enumerate(t_s):
            if not keep or i == len(t_s) - 1 or float(t) - float(t_s[keep[-1]]) >= step_s:
                keep.append(i)
        columns = [[column[i] for i in keep] for column in segment.get("energy_j", [])]
        segments.append(
            {**segment, "t_s": [t_s[i] for i in keep], "energy_j": columns, "thinned_to_s": step_s}
        )
    return {**series, "segments": segments}
