"""Segment bookkeeping (`ecoq.scheduler.segments`) and checkpoint signal names."""

from datetime import UTC, datetime, timedelta

import pytest

from ecoq.errors import ValidationError
from ecoq.scheduler import segments as segs
from ecoq.scheduler.jobspec import parse_signal

T = datetime(2026, 11, 30, 10, tzinfo=UTC)
H = timedelta(hours=1)


def test_round_trip_is_iso_utc_with_z() -> None:
    spans = [(T, T + H), (T + 2 * H, T + 3 * H)]
    stored = segs.dump(spans)
    assert stored[0] == ["2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z"]
    assert segs.load(stored) == spans
    assert segs.load(None) == []


def test_segment_end_pauses_only_before_a_later_segment() -> None:
    spans = [(T, T + H), (T + 2 * H, T + 3 * H)]
    assert segs.segment_end_at(spans, T) == T + H
    assert segs.segment_end_at(spans, T + 2 * H) is None  # the last one runs to its end
    assert segs.segment_end_at([(T, T + H)], T) is None
    touching = [(T, T + H), (T + H, T + 2 * H), (T + 3 * H, T + 4 * H)]
    assert segs.segment_end_at(touching, T) == T + 2 * H  # merged
    assert segs.segment_end_at([(T, T + H), (T + H, T + 2 * H)], T) is None
    late = T + timedelta(minutes=50)  # a late start still runs min_segment
    half = timedelta(minutes=30)
    assert segs.segment_end_at(spans, late, min_segment=half) == late + half


def test_next_after_and_with_run() -> None:
    spans = [(T, T + H), (T + 2 * H, T + 3 * H)]
    assert segs.next_after(spans, T + H) == T + 2 * H
    assert segs.next_after(spans, T + 2 * H) is None
    ran = segs.with_run(spans, T + timedelta(minutes=5), T + timedelta(minutes=50))
    assert ran == [(T + timedelta(minutes=5), T + timedelta(minutes=50)), spans[1]]


@pytest.mark.parametrize("given", ["SIGUSR1", "usr1", "USR1", "10", " sigusr1 "])
def test_signal_names(given: str) -> None:
    assert parse_signal(given) == "SIGUSR1"


@pytest.mark.parametrize(
    ("given", "fragment"),
    [("SIGFOO", "is not a signal"), ("KILL", "cannot be caught"), ("19", "cannot be caught")],
)
def test_bad_signal_names(given: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        parse_signal(given)
