"""Interruptible slots: exact optimum against brute force, pauses, segments, idle cost."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.scheduler.interruptible import cheapest_batch, cheapest_cells, plan_slots, segments_of


def brute(
    run: list[float],
    idle: list[float],
    need: int,
    max_pauses: int | None,
    min_cells: int,
    start: str,
) -> float | None:
    """Cheapest plan by enumerating every set of `need` cells."""
    best: float | None = None
    m = min(min_cells, need)
    for cells in itertools.combinations(range(len(run)), need):
        segs = segments_of(np.array(cells))
        carry = start == "running" and segs[0][0] == 0
        pauses = len(segs) - 1 + (start == "running" and not carry)
        if max_pauses is not None and pauses > max_pauses:
            continue
        if any(b - a < m and not (k == 0 and carry) for k, (a, b) in enumerate(segs)):
            continue
        lo = 0 if start in ("running", "paused") else segs[0][0]
        gaps = [c for c in range(lo, segs[-1][1]) if c not in cells]
        cost = sum(run[c] for c in cells) + sum(idle[c] for c in gaps)
        best = cost if best is None or cost < best else best
    return best


@st.composite
def problems(draw: st.DrawFn) -> dict[str, object]:
    width = draw(st.integers(1, 9))
    run = [float(draw(st.integers(0, 30))) for _ in range(width)]
    ratio = draw(st.sampled_from([0.0, 0.0, 0.25, 1.5]))
    return {
        "run": run,
        "idle": [v * ratio for v in run],
        "need": draw(st.integers(1, width)),
        "max_pauses": draw(st.sampled_from([None, 0, 1, 2])),
        "min_cells": draw(st.integers(1, 3)),
        "start": draw(st.sampled_from(["new", "running", "paused"])),
    }


@settings(max_examples=400, deadline=None)
@given(problems())
def test_plan_slots_is_optimal(p: dict[str, object]) -> None:
    run = np.array(p["run"])
    idle = np.array(p["idle"])
    need: int = p["need"]  # type: ignore[assignment]
    got = plan_slots(
        run, idle, 0, len(run), need,
        max_pauses=p["max_pauses"], min_cells=p["min_cells"], start=p["start"],  # type: ignore[arg-type]
    )  # fmt: skip
    want = brute(
        p["run"],
        p["idle"],
        need,
        p["max_pauses"],
        p["min_cells"],
        p["start"],  # type: ignore[arg-type]
    )
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got.cost == pytest.approx(want)
    cells = [c for a, b in got.segments for c in range(a, b)]
    assert len(cells) == need and len(set(cells)) == need
    assert sum(run[c] for c in cells) <= got.cost + 1e-9
    if p["max_pauses"] is not None and p["start"] == "new":
        assert got.pauses <= p["max_pauses"]  # type: ignore[operator]


def test_idle_power_can_make_a_pause_not_worth_it() -> None:
    run = np.array([1.0, 100.0, 1.0])
    cheap = plan_slots(run, run * 0.1, 0, 3, 2)
    assert cheap is not None and cheap.segments == ((0, 1), (2, 3))
    assert cheap.cost == pytest.approx(12.0)
    costly = plan_slots(run, run * 1.0, 0, 3, 2)
    assert costly is not None and costly.pauses == 0 and costly.cost == pytest.approx(101.0)


def test_minimum_segment_and_pause_cap() -> None:
    run = np.array([0.0, 9.0, 0.0, 9.0, 0.0, 9.0, 0.0, 0.0])
    free = plan_slots(run, np.zeros(8), 0, 8, 4)
    assert free is not None and free.cost == 0.0
    capped = plan_slots(run, np.zeros(8), 0, 8, 4, max_pauses=1)
    assert capped is not None and capped.pauses <= 1 and capped.cost == pytest.approx(9.0)
    long = plan_slots(run, np.zeros(8), 0, 8, 4, min_cells=2)
    assert long is not None and all(b - a >= 2 for a, b in long.segments)
    assert plan_slots(run, np.zeros(8), 0, 3, 4) is None
    assert plan_slots(np.full(4, np.inf), np.zeros(4), 0, 4, 2) is None


def test_large_problems_use_merged_cells() -> None:
    rng = np.random.default_rng(0)
    run = rng.uniform(100, 400, 3000)
    plan = plan_slots(run, run * 0.2, 0, 3000, 900, max_pauses=30, min_cells=6)
    assert plan is not None
    assert sum(b - a for a, b in plan.segments) >= 900
    assert plan.pauses <= 30


def test_cheapest_batch_matches_single() -> None:
    rng = np.random.default_rng(1)
    run = rng.uniform(0, 100, 200)
    run[50:60] = np.inf
    firsts = np.array([0, 10, 45, 150, 190])
    stops = np.array([30, 80, 65, 200, 200])
    sums, cells = cheapest_batch(run, firsts, stops, 8)
    for k in range(5):
        one = cheapest_cells(run, int(firsts[k]), int(stops[k]), 8)
        if one is None:
            assert sums[k] == np.inf
        else:
            assert sums[k] == pytest.approx(one.cost)
            assert sorted(cells[k]) == [c for a, b in one.segments for c in range(a, b)]
