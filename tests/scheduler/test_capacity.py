"""Capacity over time: no site over its GPUs or job slots, spreading, earliest feasible start."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler.planning import JobRequest, Placement, Reservation, plan_jobs
from ecoq.scheduler.sites import Site

T0 = datetime(2026, 1, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)


def forecast(zone: str, values: list[float], step: timedelta = HOUR) -> Forecast:
    points = tuple(IntensityPoint(T0 + i * step, v) for i, v in enumerate(values))
    return Forecast(zone, "average", "test", "test", T0, step, points)


def job(key: int, hours: float, deadline_h: float, sites: tuple[str, ...] = ("a",), **kw: object):
    return JobRequest(key, T0, T0 + deadline_h * HOUR, hours * HOUR, sites, **kw)  # type: ignore[arg-type]


def peak_use(placed: list[Placement], jobs: list[JobRequest], site: str) -> tuple[int, int]:
    """Most GPUs and most jobs in use at once at `site` (stopped pauses hold their GPUs)."""
    by_key = {j.key: j for j in jobs}
    events: list[tuple[datetime, int, int]] = []
    for p in placed:
        if p.site != site:
            continue
        j = by_key[p.key]
        spans = [(s.start, s.end) for s in p.segments]
        if j.pause == "stop":
            spans += [(a.end, b.start) for a, b in zip(p.segments, p.segments[1:], strict=False)]
        for a, b in spans:
            if b > a:
                events += [(a, 1, j.gpus), (b, -1, -j.gpus)]
    gpus = slots = top_g = top_s = 0
    for _, ds, dg in sorted(events, key=lambda e: (e[0], e[1])):
        slots += ds
        gpus += dg
        top_g, top_s = max(top_g, gpus), max(top_s, slots)
    return top_g, top_s


def test_jobs_spread_instead_of_piling_into_one_green_hour() -> None:
    fc = {"Z": forecast("Z", [100, 100, 10, 20, 30, 100, 100, 100])}
    sites = [Site("a", "Z", gpus=1)]
    jobs = [job(k, 1, 8, gpus=1) for k in range(3)]
    placed = plan_jobs(jobs, sites, fc, now=T0, min_saving=0)
    assert sorted(p.start for p in placed) == [T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR]
    assert all(p.warning is None and not p.late for p in placed)
    assert peak_use(placed, jobs, "a") == (1, 1)
    assert "with room" in sorted(placed, key=lambda p: p.start)[-1].reason


def test_least_slack_goes_first() -> None:
    fc = {"Z": forecast("Z", [50, 10, 100, 100, 20, 100])}
    sites = [Site("a", "Z", slots=1)]
    placed = plan_jobs([job(1, 1, 6), job(2, 1, 2)], sites, fc, now=T0, min_saving=0)
    assert placed[1].start == T0 + HOUR  # the tight job gets the clean hour
    assert placed[0].start == T0 + 4 * HOUR


def test_no_room_before_the_deadline_gets_earliest_feasible_start() -> None:
    fc = {"Z": forecast("Z", [10] * 10)}
    sites = [Site("a", "Z", gpus=2)]
    busy = [Reservation("a", T0, T0 + 5 * HOUR, gpus=2)]
    [p] = plan_jobs([job(1, 1, 3, gpus=1)], sites, fc, now=T0, reservations=busy)
    assert p.start == T0 + 5 * HOUR
    assert p.late and p.warning is not None and "earliest" in p.warning
    [q] = plan_jobs([job(1, 1, 3, gpus=3)], sites, fc, now=T0)
    assert q.warning is not None and "needs 3 GPUs" in q.warning


def test_full_site_moves_the_job_to_another_site() -> None:
    fc = {"A": forecast("A", [10] * 6), "B": forecast("B", [50] * 6)}
    sites = [Site("a", "A", slots=1), Site("b", "B", slots=1)]
    busy = [Reservation("a", T0, T0 + 6 * HOUR)]
    [p] = plan_jobs([job(1, 2, 4, ("a", "b"))], sites, fc, now=T0, reservations=busy)
    assert p.site == "b" and p.start == T0 and not p.late


def test_stopped_pause_holds_gpus_checkpoint_frees_them() -> None:
    fc = {"Z": forecast("Z", [10, 500, 10, 500, 500, 500])}
    sites = [Site("a", "Z", gpus=1, idle_w_per_gpu=10)]
    stop = job(1, 2, 3, interruptible=True, gpus=1, pause="stop")
    other = job(2, 1, 6, gpus=1)
    placed = plan_jobs([stop, other], sites, fc, now=T0, min_saving=0)
    assert [(s.start, s.end) for s in placed[0].segments] == [
        (T0, T0 + HOUR), (T0 + 2 * HOUR, T0 + 3 * HOUR)
    ]  # fmt: skip
    assert placed[1].start >= T0 + 3 * HOUR  # the stopped job kept its GPU at 01:00
    ckpt = job(1, 2, 3, interruptible=True, gpus=1, pause="checkpoint")
    placed = plan_jobs([ckpt, other], sites, fc, now=T0, min_saving=0)
    assert placed[1].start == T0 + HOUR


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[JobRequest], list[Site], dict[str, Forecast]]:
    zones = ["A", "B"]
    fc = {
        z: forecast(z, [float(draw(st.integers(1, 300))) for _ in range(12)], timedelta(minutes=30))
        for z in zones
    }
    sites = [
        Site(
            f"s{i}",
            zones[i % 2],
            gpus=draw(st.one_of(st.none(), st.integers(1, 3))),
            slots=draw(st.one_of(st.none(), st.integers(1, 3))),
            idle_w_per_gpu=draw(st.sampled_from([0.0, 50.0])),
        )  # fmt: skip
        for i in range(draw(st.integers(1, 3)))
    ]
    jobs = []
    for k in range(draw(st.integers(1, 8))):
        dur = draw(st.integers(1, 8)) * 15
        allowed = draw(st.lists(st.sampled_from([s.name for s in sites]), min_size=1, unique=True))
        jobs.append(
            JobRequest(
                k, T0 + draw(st.integers(0, 4)) * 15 * timedelta(minutes=1),
                T0 + (dur + draw(st.integers(0, 240))) * timedelta(minutes=1),
                dur * timedelta(minutes=1), tuple(allowed),
                gpus=draw(st.integers(0, 2)),
                interruptible=draw(st.booleans()),
                max_pauses=draw(st.sampled_from([None, 0, 1])),
                pause=draw(st.sampled_from(["stop", "checkpoint"])),
            )
        )  # fmt: skip
    return jobs, sites, fc


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_capacity_is_never_exceeded_and_planning_is_deterministic(
    w: tuple[list[JobRequest], list[Site], dict[str, Forecast]],
) -> None:
    jobs, sites, fc = w
    placed = plan_jobs(jobs, sites, fc, now=T0, min_saving=0)
    assert placed == plan_jobs(jobs, sites, fc, now=T0, min_saving=0)
    forced = {p.key for p in placed if p.warning and "needs" in p.warning}
    ok = [p for p in placed if p.key not in forced]
    for site in sites:
        gpus, slots = peak_use(ok, jobs, site.name)
        assert site.gpus is None or gpus <= site.gpus
        assert site.slots is None or slots <= site.slots
    for p, j in zip(placed, jobs, strict=True):
        assert p.key == j.key and p.site in j.sites
        total = sum(((s.end - s.start) for s in p.segments), timedelta(0))
        assert abs(total - j.duration) < timedelta(seconds=1)
        assert p.start >= j.earliest_start
        assert p.late == (p.end > j.deadline)


def test_benchmark_shape_more_jobs_than_room() -> None:
    """The benchmark's shape (planning speed lives in benchmarks/, not in unit tests)."""
    fc = {"Z": forecast("Z", [float(100 + (i * 37) % 200) for i in range(72)])}
    sites = [Site("a", "Z", gpus=8)]
    jobs = [job(k, 1 + k % 5, 24 + k % 40, gpus=1) for k in range(300)]
    placed = plan_jobs(jobs, sites, fc, now=T0)
    assert peak_use(placed, jobs, "a")[0] <= 8
    assert any(p.warning for p in placed) and any(p.warning is None for p in placed)


def test_a_job_far_shorter_than_a_cell_still_takes_one() -> None:
    """Steps of two centuries: an interruptible hour is less than a millionth of a cell, and
    its slot search still asks for one cell (it used to ask for none, and fail on the empty
    plan)."""
    step = timedelta(days=73050)
    fc = Forecast("Z", "average", "test", "test", T0, step,
                  (IntensityPoint(T0, 1.0), IntensityPoint(T0 + step, 5.0)))  # fmt: skip
    jobs = [
        job(0, 1.0, 5.0, interruptible=True),
        job(1, 1.0, 5.0, interruptible=True, max_pauses=2),
    ]
    placed = plan_jobs(jobs, [Site("a", "Z", slots=2)], {"Z": fc}, now=T0)
    for p in placed:
        assert p.start == T0 and p.end == T0 + HOUR and not p.late
