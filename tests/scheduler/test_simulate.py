"""The simulator: replay, forecast issues, policies, capacity, emissions on the true trace."""

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ecoq.errors import ValidationError
from ecoq.scheduler.simdata import (
    MAX_STEPS_PAST_END,
    SimJob,
    Trace,
    read_forecasts,
    read_jobs,
    read_trace,
    write_schedule,
)
from ecoq.scheduler.simulate import simulate

T0 = datetime(2021, 7, 1, tzinfo=UTC)
H = timedelta(hours=1)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def trace_file(tmp_path: Path, a: list[float], b: list[float] | None = None) -> Path:
    b = b or [300.0] * len(a)
    rows = [
        [(T0 + i * H).isoformat().replace("+00:00", ""), x, y]
        for i, (x, y) in enumerate(zip(a, b, strict=True))
    ]
    return write(tmp_path / "trace.csv", ["time", "A", "B"], rows)


def jobs_file(tmp_path: Path, rows: list[list[object]]) -> Path:
    header = [
        "id",
        "submit",
        "duration_h",
        "deadline",
        "zones",
        "interruptible",
        "power_kw",
        "max_pauses",
    ]
    return write(tmp_path / "jobs.csv", header, rows)


def test_policies_on_a_known_trace(tmp_path: Path) -> None:
    trace = read_trace(trace_file(tmp_path, [100, 100, 100, 10, 100, 20, 100, 100]))
    jobs = read_jobs(jobs_file(tmp_path, [["j", iso(T0), 2, iso(T0 + 8 * H), "A", "true", 2, ""]]))
    now = simulate(trace, jobs, policy="now")
    assert now.baseline_g == pytest.approx(2 * 200) and now.savings_pct == 0
    window = simulate(trace, jobs, policy="window")
    assert [(s.start, s.end) for s in window.segments] == [(T0 + 2 * H, T0 + 4 * H)]  # a tie
    assert window.scheduled_g == pytest.approx(2 * 110)
    oracle = simulate(trace, jobs, policy="oracle")
    assert [(s.start, s.end) for s in oracle.segments] == [
        (T0 + 3 * H, T0 + 4 * H), (T0 + 5 * H, T0 + 6 * H)
    ]  # fmt: skip
    assert oracle.scheduled_g == pytest.approx(2 * 30)
    assert oracle.savings_pct == pytest.approx(85.0)
    assert oracle.deadline_misses == 0 and oracle.jobs == 1 and oracle.plan_seconds >= 0


def test_relocation_to_the_cleaner_zone(tmp_path: Path) -> None:
    trace = read_trace(trace_file(tmp_path, [300] * 6, [50] * 6))
    jobs = read_jobs(jobs_file(tmp_path, [["j", iso(T0), 1, iso(T0 + 2 * H), "A|B", "no", "", ""]]))
    assert simulate(trace, jobs, policy="ecoq").segments[0].zone == "B"
    assert simulate(trace, jobs, policy="window").segments[0].zone == "A"  # home zone only


def test_planner_sees_only_forecasts_issued_so_far(tmp_path: Path) -> None:
    truth = [100.0] * 12
    truth[9] = 10.0
    trace_path = trace_file(tmp_path, truth)
    wrong = [[iso(T0 - H), iso(T0 + i * H), "A", 10.0 if i == 2 else 100.0] for i in range(12)]
    fixed = [[iso(T0 + H), iso(T0 + i * H), "A", 10.0 if i == 9 else 100.0] for i in range(12)]
    fc_path = write(tmp_path / "fc.csv", ["issued_at", "time", "zone", "value"], wrong + fixed)
    trace = read_trace(trace_path)
    log = read_forecasts(fc_path, trace)
    jobs = read_jobs(jobs_file(tmp_path, [["j", iso(T0), 1, iso(T0 + 12 * H), "A", "0", 1, ""]]))
    window = simulate(trace, jobs, policy="window", forecasts=log)
    assert window.segments[0].start == T0 + 2 * H  # decided on the first (wrong) forecast
    ecoq = simulate(trace, jobs, policy="ecoq", forecasts=log)
    assert ecoq.segments[0].start == T0 + 9 * H  # re-planned when the better forecast came
    assert ecoq.scheduled_g < window.scheduled_g


def test_capacity_is_respected_and_no_deadline_is_missed(tmp_path: Path) -> None:
    trace = read_trace(trace_file(tmp_path, [100, 100, 10, 10, 100, 100, 100, 100]))
    rows = [[f"j{k}", iso(T0), 1, iso(T0 + 6 * H), "A", "false", 1, ""] for k in range(4)]
    jobs = read_jobs(jobs_file(tmp_path, rows))
    result = simulate(trace, jobs, policy="ecoq", capacity=1)
    spans = sorted((s.start, s.end) for s in result.segments)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert result.deadline_misses == 0
    write_schedule(tmp_path / "out.csv", result.segments)
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == "id,zone,start,end"


def test_forecast_error_is_seeded(tmp_path: Path) -> None:
    values = [float(100 + (i * 53) % 200) for i in range(48)]
    trace = read_trace(trace_file(tmp_path, values))
    rows = [
        [f"j{k}", iso(T0 + k * H), 3, iso(T0 + (k + 15) * H), "A", "false", 1, ""]
        for k in range(20)
    ]
    jobs = read_jobs(jobs_file(tmp_path, rows))
    a = simulate(trace, jobs, policy="ecoq", forecast_error=0.3, seed=3)
    b = simulate(trace, jobs, policy="ecoq", forecast_error=0.3, seed=3)
    oracle = simulate(trace, jobs, policy="oracle", forecast_error=0.3, seed=3)
    assert a.segments == b.segments
    assert oracle.scheduled_g <= a.scheduled_g + 1e-6
    assert a.deadline_misses == oracle.deadline_misses == 0


def test_bad_inputs(tmp_path: Path) -> None:
    trace = read_trace(trace_file(tmp_path, [1, 2, 3]))
    jobs = read_jobs(jobs_file(tmp_path, [["j", iso(T0), 1, iso(T0 + 2 * H), "XX", "no", 1, ""]]))
    with pytest.raises(ValidationError, match="'XX' is not a column"):
        simulate(trace, jobs)
    with pytest.raises(ValidationError, match="policy"):
        simulate(trace, [], policy="best")  # type: ignore[arg-type]
    bad = jobs_file(tmp_path, [["j", "yesterday", 1, iso(T0), "A", "no", 1, ""]])
    with pytest.raises(ValidationError, match="line 2: 'yesterday' is not an ISO-8601 time"):
        read_jobs(bad)
    with pytest.raises(ValidationError, match="missing column"):
        read_trace(write(tmp_path / "t.csv", ["when", "A"], [[1, 2]]))
    fc = write(
        tmp_path / "f.csv",
        ["issued_at", "time", "zone", "value"],
        [[iso(T0), iso(T0 + 30 * timedelta(minutes=1)), "A", 1]],
    )
    with pytest.raises(ValidationError, match="not a time of the trace"):
        read_forecasts(fc, trace)


@pytest.mark.parametrize("policy", ["now", "window", "ecoq", "oracle"])
def test_library_refuses_deadlines_far_past_the_trace(policy: str) -> None:
    """`simulate` itself checks the horizon (not only `ecoq simulate`): without the check, a
    deadline 10 years past a 5-minute trace made the planner extend the trace step by step."""
    step_s = 300.0
    start_s = (T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    times = np.array([start_s + i * step_s for i in range(12)])
    trace = Trace(times=times, zones={"A": np.full(12, 100.0)}, step_s=step_s)
    end_s = trace.end_s
    far = SimJob("far", start_s, 3600.0, end_s + (MAX_STEPS_PAST_END + 1) * step_s, ("A",))
    near = SimJob("near", start_s, 3600.0, end_s + MAX_STEPS_PAST_END * step_s, ("A",))
    with pytest.raises(ValidationError) as info:
        simulate(trace, [near, far], policy=policy)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"job far: its deadline is {MAX_STEPS_PAST_END + 1:,} trace steps past the end of the "
        f"intensity trace (at most {MAX_STEPS_PAST_END:,}); extend the trace or give the job an "
        "earlier deadline"
    )
