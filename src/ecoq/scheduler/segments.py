"""A job's segments as stored (`Job.segments`: `[[start, end], ...]`, ISO-8601 UTC with `Z`), and
the questions the daemon asks of them. Pure; times are tz-aware UTC.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

__all__ = [
    "Span",
    "dump",
    "iso_z",
    "load",
    "next_after",
    "segment_end_at",
    "with_run",
]

Span = tuple[datetime, datetime]
#: Two segments closer than this are one (rounding of planner times).
_TOUCH = timedelta(seconds=1)


def iso_z(when: datetime) -> str:
    """ISO-8601 UTC with a `Z`."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def load(stored: Sequence[Sequence[str]] | None) -> list[Span]:
    """The stored segments as `(start, end)` pairs, sorted."""
    return sorted((_parse(a), _parse(b)) for a, b in (stored or []))


def dump(spans: Sequence[Span]) -> list[list[str]]:
    """Segments as stored."""
    return [[iso_z(a), iso_z(b)] for a, b in spans]


def segment_end_at(
    spans: Sequence[Span], now: datetime, *, min_segment: timedelta = timedelta(0)
) -> datetime | None:
    """When the segment that starts (or runs) at `now` should pause: its planned end, merged
    with segments that touch it, and never sooner than `min_segment` from now. None when no
    later segment follows it (the job then runs to its end) or no segment is left at all."""
    future = [(a, b) for a, b in spans if b > now]
    if len(future) <= 1:
        return None
    end = future[0][1]
    for a, b in future[1:]:
        if a - end > _TOUCH:
            break
        end = b
    if end >= future[-1][1]:
        return None  # the segments all touch: one run to the end
    return max(end, now + min_segment)


def next_after(spans: Sequence[Span], when: datetime) -> datetime | None:
    """The start of the first segment that begins after `when`, or None."""
    for a, _ in spans:
        if a > when + _TOUCH:
            return a
    return None


def with_run(spans: Sequence[Span], start: datetime, end: datetime) -> list[Span]:
    """The segments with the run `[start, end)` as it happened (a pause cut it at `end`, or it
    began late): planned segments it overlaps are replaced by it; earlier and later ones stay."""
    kept = [(a, b) for a, b in spans if b <= start or a >= end]
    return sorted([*kept, (start, end)])
