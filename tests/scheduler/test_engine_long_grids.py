"""The fast paths equal the reference engine on long grids: reservations far past a short
forecast (as when the daemon plans zone after zone on one box), few job slots, and many jobs
of whole cells, so that the capacity search runs over the unstored ends of the scored rows and
past its first few candidates (tests/scheduler/reference)."""

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.scheduler.planning import JobRequest, Reservation, plan_jobs
from ecoq.scheduler.sites import Site
from tests.scheduler.reference import engine as ref_engine
from tests.scheduler.test_engine_reference import MIN, T0, forecast


@st.composite
def long_grids(draw: st.DrawFn) -> dict[str, object]:
    zones = ["A", "B"][: draw(st.integers(1, 2))]
    step = draw(st.sampled_from([5, 15])) * MIN
    cells = draw(st.integers(6, 30))
    value = st.integers(1, 4) if draw(st.booleans()) else st.integers(1, 400)
    fc = {z: forecast(z, [float(draw(value)) * 50 for _ in range(cells)], step) for z in zones}
    fallbacks = {}
    if draw(st.booleans()):
        z = draw(st.sampled_from(zones))
        fallbacks[z] = forecast(z, [float(draw(value)) * 40 for _ in range(cells * 3)], step)
    sites = [
        Site(
            f"s{i}",
            draw(st.sampled_from(zones)),
            gpus=draw(st.one_of(st.none(), st.integers(1, 3))),
            slots=draw(st.integers(1, 3)),
            pue=draw(st.sampled_from([1.0, 1.25])),
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    names = [s.name for s in sites]
    far = cells * draw(st.integers(3, 12))  # how far past the forecast reservations reach
    reservations = []
    for _ in range(draw(st.integers(0, 25))):
        start = draw(st.integers(0, far))
        reservations.append(
            Reservation(
                draw(st.sampled_from(names)),
                T0 + start * step,
                T0 + (start + draw(st.integers(1, cells))) * step,
                gpus=draw(st.integers(0, 2)),
            )
        )
    jobs = []
    for k in range(draw(st.integers(1, 40))):
        duration = draw(st.integers(1, cells)) * step
        earliest = T0 + draw(st.integers(0, 3)) * step
        jobs.append(
            JobRequest(
                k,
                earliest,
                earliest + duration + draw(st.integers(-2, 2 * cells)) * step,
                duration,
                tuple(draw(st.lists(st.sampled_from(names), min_size=1, unique=True))),
                gpus=draw(st.integers(0, 2)),
                interruptible=draw(st.integers(0, 5)) == 0,
                max_pauses=draw(st.sampled_from([None, 1, 3])),
                run_now=draw(st.integers(0, 5)) == 0,
            )
        )
    return {
        "jobs": jobs,
        "sites": sites,
        "forecasts": fc,
        "fallbacks": fallbacks,
        "reservations": reservations,
        "min_saving": draw(st.sampled_from([0.0, 0.02])),
        "rule": draw(st.sampled_from(["interval", "interval", "trapezoid"])),
        "now": T0 + draw(st.integers(0, 2)) * step + draw(st.sampled_from([0, 0, 7])) * MIN,
    }


@settings(max_examples=150, deadline=None)
@given(long_grids())
def test_long_grids_equal_the_reference_engine(w: dict[str, object]) -> None:
    kw = {k: w[k] for k in ("fallbacks", "reservations", "min_saving", "rule")}
    got = plan_jobs(w["jobs"], w["sites"], w["forecasts"], now=w["now"], **kw)  # type: ignore[arg-type]
    want = ref_engine.place_jobs(
        list(w["jobs"]),  # type: ignore[call-overload]
        list(w["sites"]),  # type: ignore[call-overload]
        w["forecasts"],  # type: ignore[arg-type]
        now=w["now"],  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    assert got == want


def test_a_job_far_behind_many_reservations_equals_the_reference_engine() -> None:
    """One slot, a day of back-to-back reservations past a 2 h forecast: the first window with
    room lies hundreds of candidates into the row, past what the rows store."""
    step = 5 * MIN
    fc = {"A": forecast("A", [float(100 + (i % 7) * 30) for i in range(24)], step)}
    sites = [Site("s0", "A", slots=1)]
    reservations = [
        Reservation("s0", T0 + i * 2 * step, T0 + (i * 2 + 2) * step) for i in range(150)
    ]
    jobs = [JobRequest(k, T0, T0 + timedelta(hours=3), (k + 1) * step, ("s0",)) for k in range(5)]
    got = plan_jobs(jobs, sites, fc, now=T0, reservations=reservations)
    want = ref_engine.place_jobs(
        jobs, sites, fc, now=T0, fallbacks={}, reservations=reservations, min_saving=0.02,
        rule="interval",
    )  # fmt: skip
    assert got == want
    assert all(p.start >= T0 + 300 * step for p in got)
