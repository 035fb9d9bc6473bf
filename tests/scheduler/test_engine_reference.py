"""The fast paths place jobs exactly as the reference engine did (tests/scheduler/reference).

Random workloads over several zones and sites with capacity limits, reservations, power
profiles, fallbacks and interruptible jobs of every kind; the placements (sites, segments,
means, reasons, warnings, runner-ups) must be equal, not just close.
"""

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler import interruptible
from ecoq.scheduler.planning import JobRequest, Reservation, plan_jobs
from ecoq.scheduler.sites import Site
from tests.scheduler.reference import engine as ref_engine
from tests.scheduler.reference import interruptible as ref_interruptible

T0 = datetime(2026, 1, 5, tzinfo=UTC)
MIN = timedelta(minutes=1)


def forecast(zone: str, values: list[float], step: timedelta, start: datetime = T0) -> Forecast:
    points = tuple(IntensityPoint(start + i * step, v) for i, v in enumerate(values))
    return Forecast(zone, "average", "test", "test", start, step, points)


@st.composite
def workloads(draw: st.DrawFn, busy: bool = False) -> dict[str, object]:
    """Random plans to make; `busy`: interruptible jobs on sites with little room."""
    zones = ["A", "B", "C"][: draw(st.integers(1, 3))]
    step = draw(st.sampled_from([15, 30, 60])) * MIN
    cells = draw(st.integers(4, 40))
    smooth = draw(st.booleans())  # few distinct values: many exact ties
    value = st.integers(1, 4) if smooth else st.integers(1, 400)
    fc = {z: forecast(z, [float(draw(value)) * 50 for _ in range(cells)], step) for z in zones}
    fallbacks = {}
    if draw(st.booleans()):
        z = draw(st.sampled_from(zones))
        fallbacks[z] = forecast(z, [float(draw(value)) * 40 for _ in range(cells * 2)], step)
    sites = [
        Site(
            f"s{i}",
            draw(st.sampled_from(zones)),
            gpus=draw(st.one_of(st.none(), st.integers(0, 4))),
            slots=draw(st.integers(1, 2) if busy else st.one_of(st.none(), st.integers(1, 4))),
            pue=draw(st.sampled_from([1.0, 1.0, 1.25, 1.5])),
            idle_w_per_gpu=draw(st.sampled_from([0.0, 0.0, 50.0, 400.0])),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    names = [s.name for s in sites]
    span = cells * step
    jobs = []
    for k in range(draw(st.integers(1, 30))):
        unit = draw(st.sampled_from([5, 15, 60])) * MIN
        duration = draw(st.integers(1, max(1, span // unit // 2))) * unit
        earliest = T0 + draw(st.integers(-2, cells)) * step / draw(st.sampled_from([1, 3]))
        deadline = earliest + duration + draw(st.integers(-2, cells)) * step
        jobs.append(
            JobRequest(
                k,
                earliest,
                deadline,
                duration,
                tuple(draw(st.lists(st.sampled_from(names), min_size=1, unique=True))),
                gpus=draw(st.integers(0, 2)),
                power_kw=draw(st.sampled_from([0.5, 1.0, 2.0])),
                profile=draw(st.sampled_from([(), (), (1.0, 3.0), (2.0, 1.0, 1.0)])),
                interruptible=busy or draw(st.booleans()),
                max_pauses=draw(st.sampled_from([None, 0, 1, 2, 3, 50])),
                min_segment=draw(st.sampled_from([0, 0, 15, 45])) * MIN,
                pause=draw(st.sampled_from(["stop", "checkpoint"])),
                state=draw(st.sampled_from(["new", "new", "running", "paused"])),
                run_now=draw(st.booleans()) and draw(st.booleans()),
                min_saving=draw(st.sampled_from([None, None, 0.0, 0.05])),
            )
        )
    reservations = [
        Reservation(
            draw(st.sampled_from(names)),
            T0 + draw(st.integers(0, cells)) * step,
            T0 + draw(st.integers(0, 2 * cells)) * step,
            gpus=draw(st.integers(0, 2)),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "jobs": jobs,
        "sites": sites,
        "forecasts": fc,
        "fallbacks": fallbacks,
        "reservations": [r for r in reservations if r.end > r.start],
        "min_saving": draw(st.sampled_from([0.0, 0.02])),
        "rule": draw(st.sampled_from(["interval", "interval", "trapezoid"])),
        "now": T0 + draw(st.integers(0, 3)) * step,
    }


@settings(max_examples=300, deadline=None)
@given(st.booleans().flatmap(lambda busy: workloads(busy)))
def test_plan_jobs_equals_the_reference_engine(w: dict[str, object]) -> None:
    args = (w["jobs"], w["sites"], w["forecasts"])
    kw = {k: w[k] for k in ("fallbacks", "reservations", "min_saving", "rule")}
    got = plan_jobs(*args, now=w["now"], **kw)  # type: ignore[arg-type]
    want = ref_engine.place_jobs(
        list(w["jobs"]),  # type: ignore[call-overload]
        list(w["sites"]),  # type: ignore[call-overload]
        w["forecasts"],  # type: ignore[arg-type]
        now=w["now"],  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    assert got == want


def same(a: object, b: object) -> bool:
    """Equal slot plans (the two modules' `SlotPlan` classes differ), or both None."""
    if a is None or b is None:
        return a is b
    return (a.segments, a.cost) == (b.segments, b.cost)  # type: ignore[attr-defined]


@st.composite
def slot_problems(draw: st.DrawFn) -> dict[str, object]:
    width = draw(st.integers(1, 60))  # brute force cannot check these; the reference can
    values = st.integers(0, 6) if draw(st.booleans()) else st.integers(0, 1000)
    run = np.array([float(draw(values)) for _ in range(width)])
    blocked = draw(st.lists(st.integers(0, width - 1), max_size=width // 3))
    run[blocked] = np.inf
    ratio = draw(st.sampled_from([0.0, 0.0, 0.05, 0.5, 2.0]))
    idle = run * ratio if ratio > 0 else np.zeros(width)
    if draw(st.booleans()):
        idle[blocked] = np.inf
    first = draw(st.integers(-2, width))
    return {
        "run": run,
        "idle": idle,
        "first": first,
        "stop": draw(st.integers(first, width + 2)),
        "need": draw(st.integers(1, max(1, width // 2))),
        "max_pauses": draw(st.sampled_from([None, 0, 1, 2, 3, 7])),
        "min_cells": draw(st.integers(1, 5)),
        "start": draw(st.sampled_from(["new", "running", "paused"])),
    }


@settings(max_examples=500, deadline=None)
@given(slot_problems())
def test_plan_slots_equals_the_reference(p: dict[str, object]) -> None:
    args = (p["run"], p["idle"], p["first"], p["stop"], p["need"])
    kw = {k: p[k] for k in ("max_pauses", "min_cells", "start")}
    got = interruptible.plan_slots(*args, **kw)  # type: ignore[arg-type]
    want = ref_interruptible.plan_slots(*args, **kw)  # type: ignore[arg-type]
    assert same(got, want)


def test_large_slot_problem_equals_the_reference() -> None:
    rng = np.random.default_rng(3)
    run = 300 + 120 * np.sin(np.arange(900) / 288 * 2 * np.pi) + rng.normal(0, 15, 900)
    for need, pauses, ratio in ((144, 3, 0.0), (60, 2, 0.05), (200, None, 0.05), (30, 0, 0.0)):
        args = (run, run * ratio, 7, 880, need)
        got = interruptible.plan_slots(*args, max_pauses=pauses)
        assert got is not None
        assert same(got, ref_interruptible.plan_slots(*args, max_pauses=pauses))
    run = rng.uniform(100, 400, 3000)  # past the state budget: solved on merged cells
    args = (run, run * 0.2, 0, 3000, 900)
    kw = {"max_pauses": 30, "min_cells": 6}
    assert same(interruptible.plan_slots(*args, **kw), ref_interruptible.plan_slots(*args, **kw))
