"""The contiguous capacity search's fast paths equal scoring every candidate afresh, and the
usage caches `add` keeps up to date equal computing them again."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.scheduler import fitting
from ecoq.scheduler.capacity import Usage, fit_slots
from ecoq.scheduler.engine import _interruptible, build_context
from ecoq.scheduler.scoring import TIE_REL
from ecoq.scheduler.sites import Site
from tests.scheduler.test_engine_reference import workloads


@settings(max_examples=150, deadline=None)
@given(workloads(), st.data())
def test_site_searches_equal_scoring_every_candidate(
    w: dict[str, object], data: st.DataObject
) -> None:
    ctx = build_context(
        list(w["jobs"]), list(w["sites"]), w["forecasts"], now=w["now"],  # type: ignore[call-overload]
        fallbacks=w["fallbacks"], reservations=list(w["reservations"]),  # type: ignore[call-overload]
        min_saving=0.0, rule=w["rule"],  # type: ignore[arg-type]
    )  # fmt: skip
    for j, job in enumerate(ctx.jobs):
        for order, name in enumerate(job.sites):
            si = ctx.site_index[name]
            usage = ctx.usage[si]
            for _ in range(data.draw(st.integers(0, 3))):  # capacity fills up as we go
                c0 = data.draw(st.integers(0, max(0, len(usage.gpus) - 1)))
                usage.add(c0, c0 + data.draw(st.integers(1, 6)), data.draw(st.integers(0, 2)))
            want = fitting._generic(ctx, j, si, order, want_best=True)
            assert fitting._site_best(ctx, j, si, order, math.inf) == want
            top = data.draw(st.sampled_from([math.inf, 0.0, 150.0, want[0] if want else 1.0]))
            got = fitting._site_best(ctx, j, si, order, top)
            if got is None and want is not None:  # skipped: it could not have beaten `top`
                assert want[0] > top + TIE_REL * max(abs(top), 1.0)
            else:
                assert got == want
            assert fitting._site_first(ctx, j, si, order) == fitting._generic(
                ctx, j, si, order, want_best=False
            )


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.integers(0, 4)),
    st.one_of(st.none(), st.integers(0, 3)),
    st.lists(st.tuples(st.integers(-3, 40), st.integers(-3, 60), st.integers(0, 3)), max_size=12),
    st.lists(st.integers(0, 5), min_size=1, max_size=3),
)
def test_usage_keeps_its_caches_up_to_date(
    gpus: int | None, slots: int | None, adds: list[tuple[int, int, int]], sizes: list[int]
) -> None:
    usage = Usage(Site("s", "Z", gpus=gpus, slots=slots), 30)
    sizes = sorted(set(sizes))
    versions = {g: usage.version(g) for g in sizes}
    for c0, c1, g in adds:
        before = {s: usage.free(s).copy() for s in sizes}
        for s in sizes:  # fill the caches
            usage.blocked(s), usage.free_after(s)
        usage.add(c0, c1, g)
        fresh = Usage(usage.site, len(usage.gpus))
        fresh.gpus[:], fresh.jobs[:] = usage.gpus, usage.jobs
        for s in sizes:
            assert np.array_equal(usage.free(s), fresh.free(s))
            assert np.array_equal(usage.blocked(s), fresh.blocked(s))
            assert usage.free_after(s) == fresh.free_after(s)
            changed = len(before[s]) != len(usage.free(s)) or not np.array_equal(
                before[s], usage.free(s)
            )
            assert not changed or usage.version(s) != versions[s]  # a change is seen
            versions[s] = usage.version(s)


@settings(max_examples=200, deadline=None)
@given(workloads(busy=True), st.data())
def test_slot_search_shortcuts_equal_solving_afresh(
    w: dict[str, object], data: st.DataObject
) -> None:
    """`fit_slots` skips sites by the plans found without capacity, or reuses those plans;
    the answer must be what solving every site on its free cells gives."""
    jobs = list(w["jobs"])  # type: ignore[call-overload]
    ctx = build_context(
        jobs, list(w["sites"]), w["forecasts"], now=w["now"],  # type: ignore[call-overload]
        fallbacks=w["fallbacks"], reservations=list(w["reservations"]),  # type: ignore[call-overload]
        min_saving=0.0, rule=w["rule"],  # type: ignore[arg-type]
    )  # fmt: skip
    todo = [(j, ctx.site_index[n]) for j, job in enumerate(jobs) for n in job.sites]
    _interruptible(ctx, todo)  # the plans without capacity
    for j in range(len(jobs)):
        for usage in ctx.usage:  # capacity fills up as we go
            for _ in range(data.draw(st.integers(0, 2))):
                c0 = data.draw(st.integers(0, max(0, len(usage.gpus) - 1)))
                usage.add(c0, c0 + data.draw(st.integers(1, 4)), data.draw(st.integers(0, 2)))
        got = fit_slots(ctx, j)
        known, ctx.free_slots = ctx.free_slots, {}
        want = fit_slots(ctx, j)
        ctx.free_slots = known
        assert got == want
