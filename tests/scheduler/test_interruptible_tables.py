"""The shared slot DP tables: both forward passes agree, sharing and caching change nothing."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.scheduler.interruptible import SlotCache, SlotProblem, plan_slots, plan_slots_many
from ecoq.scheduler.scoring import TIE_REL
from ecoq.scheduler.slotdp import Row, Tables, first_best


def costs(draw: st.DrawFn, width: int) -> np.ndarray:
    values = st.integers(0, 5) if draw(st.booleans()) else st.integers(0, 900)
    run = np.array([float(draw(values)) for _ in range(width)])
    run[draw(st.lists(st.integers(0, width - 1), max_size=width // 4))] = np.inf
    return run


@st.composite
def table_inputs(draw: st.DrawFn) -> dict[str, object]:
    width = draw(st.integers(1, 40))
    run = costs(draw, width)
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, width - 1))
        rows.append(Row(run, np.zeros(width), start, draw(st.integers(start + 1, width))))
    return {
        "rows": rows,
        "need": draw(st.integers(1, 12)),
        "lanes": draw(st.integers(1, 4)),
        "unlimited": draw(st.booleans()),
        "start": draw(st.sampled_from(["new", "running", "paused"])),
    }


@settings(max_examples=300, deadline=None)
@given(table_inputs())
def test_stepping_by_work_fills_the_same_tables_as_stepping_by_cell(t: dict[str, object]) -> None:
    lanes = 1 if t["unlimited"] else t["lanes"]
    args = (t["rows"], t["need"], lanes, 1, t["unlimited"], t["start"])
    fast = Tables(*args, keep_stopped=True)  # type: ignore[arg-type]
    slow = Tables(*args, by_cell=True, keep_stopped=True)  # type: ignore[arg-type]
    assert fast.by_work and not slow.by_work
    for g, row in enumerate(t["rows"]):  # type: ignore[attr-defined]
        w = row.stop - row.start  # cells past a row's own are padding
        for name in ("r", "q", "carried", "held", "fresh"):
            a, b = getattr(fast, name)[:w, g], getattr(slow, name)[:w, g]
            finite = np.isfinite(fast.q[:w, g]) if name == "held" else slice(None)
            if name == "carried":
                finite = np.isfinite(fast.r[:w, g, 0, 1:])
            assert np.array_equal(a[finite], b[finite]), name


@st.composite
def shared_problems(draw: st.DrawFn) -> list[SlotProblem]:
    width = draw(st.integers(2, 48))
    run = costs(draw, width)
    idles = [np.zeros(width), run * 0.05, np.where(np.isfinite(run), 0.0, np.inf)]
    out = []
    for _ in range(draw(st.integers(1, 8))):
        first = draw(st.sampled_from([0, 0, 1, width // 2]))
        out.append(
            SlotProblem(
                run,
                draw(st.sampled_from(idles)),
                first,
                draw(st.integers(first, width)),
                draw(st.integers(1, max(1, width // 2))),
                draw(st.sampled_from([None, 0, 1, 3])),
                draw(st.sampled_from([1, 1, 2])),
                draw(st.sampled_from(["new", "new", "running", "paused"])),
            )
        )
    return out


def alone(p: SlotProblem) -> object:
    return plan_slots(
        p.run, p.idle, p.first, p.stop, p.need,
        max_pauses=p.max_pauses, min_cells=p.min_cells, start=p.start,
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(shared_problems())
def test_shared_and_cached_tables_give_each_problem_its_own_plan(ps: list[SlotProblem]) -> None:
    want = [alone(p) for p in ps]
    assert plan_slots_many(ps) == want
    cache = SlotCache()  # later problems reuse (or outgrow) the tables of earlier ones
    assert [plan_slots_many([p], [cache])[0] for p in ps] == want
    assert [plan_slots_many([p], [cache])[0] for p in reversed(ps)] == want[::-1]


@st.composite
def filling_problems(draw: st.DrawFn) -> list[SlotProblem]:
    """One site's problems as its capacity fills up: cells become unusable (`inf`) between
    problems, so the costs a kept table was filled with hold only in part."""
    width = draw(st.integers(2, 60))
    run = costs(draw, width)
    ratio = draw(st.sampled_from([0.0, 0.0, 0.05]))
    stopped = draw(st.sampled_from([True, True, False]))  # cannot hold GPUs in a full cell
    out = []
    for _ in range(draw(st.integers(1, 10))):
        run = run.copy()
        run[draw(st.lists(st.integers(0, width - 1), max_size=3))] = np.inf
        idle = run * ratio if ratio > 0 else np.zeros(width)
        if stopped:
            idle = np.where(np.isfinite(run), idle, np.inf)
        first = draw(st.sampled_from([0, 0, 0, 1, width // 2]))  # mostly "now": shared
        out.append(
            SlotProblem(
                run,
                idle,
                first,
                draw(st.sampled_from([width, width, width - 1, width // 2])),
                draw(st.integers(1, max(1, width // 2))),
                draw(st.sampled_from([None, 0, 1, 3])),
                draw(st.sampled_from([1, 1, 2])),
                draw(st.sampled_from(["new", "new", "running", "paused"])),
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(filling_problems())
def test_tables_kept_as_capacity_fills_give_each_problem_its_own_plan(
    ps: list[SlotProblem],
) -> None:
    cache = SlotCache()
    assert [plan_slots_many([p], [cache])[0] for p in ps] == [alone(p) for p in ps]


def scan(values: list[float]) -> int:
    """The sequential rule `first_best` must follow."""
    best, at = np.inf, -1
    for i, v in enumerate(values):
        if v < np.inf and (best == np.inf or v < best - TIE_REL * max(abs(best), 1.0)):
            best, at = v, i
    return at


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([np.inf, 100.0, 100.0 * (1 - 0.6e-9), 100.0 * (1 - 1.2e-9), 0.5]),
            st.floats(-5, 500),
        ),
        max_size=30,
    )
)
def test_first_best_follows_the_sequential_tie_rule(values: list[float]) -> None:
    assert first_best(np.array(values, dtype=np.float64)) == scan(values)
