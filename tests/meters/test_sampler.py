"""Sampler and EnergySeries: origin, intervals, failures, the final read, the thread."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from ecoq.meters import MeterDescription
from ecoq.meters.sampler import EnergySeries, Sampler
from tests.meters.fakes import FakeClock, ListMeter, unavailable

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def make(meters: list[ListMeter], interval_s: float = 5.0) -> tuple[Sampler, FakeClock]:
    clock = FakeClock(1000.0)
    sampler = Sampler(
        meters, interval_s=interval_s, clock=lambda: T0, monotonic=clock, thread=False
    )
    return sampler, clock


def test_samples_are_cumulative_joules_since_the_first() -> None:
    gpu = ListMeter([500.0, 600.0, 800.0, 800.5], device="gpu:0")
    cpu = ListMeter([10.0, 15.0, 20.0, 30.0])
    sampler, clock = make([gpu, cpu])
    sampler.start()
    clock.t += 5
    assert sampler.sample() == (100.0, 5.0)
    clock.t += 5
    sampler.sample()
    clock.t += 2.5
    series = sampler.stop()
    assert list(series.t_s) == [0.0, 5.0, 10.0, 12.5]
    assert [list(c) for c in series.columns] == [[0, 100, 300, 300.5], [0, 5, 10, 20]]
    assert series.energy_j == 320.5
    assert [(r.device, r.energy_j) for r in series.readings()] == [("gpu:0", 300.5), ("cpu", 20)]
    assert series.started_at == T0
    assert series.ended_at == T0 + timedelta(seconds=12.5)
    assert series.duration_s == 12.5
    assert list(series.intervals()) == [
        (T0, T0 + timedelta(seconds=5), (100.0, 5.0)),
        (T0 + timedelta(seconds=5), T0 + timedelta(seconds=10), (200.0, 5.0)),
        (T0 + timedelta(seconds=10), T0 + timedelta(seconds=12.5), (0.5, 10.0)),
    ]
    assert gpu.closed == cpu.closed == 1
    assert sampler.stop() is series  # idempotent
    assert gpu.closed == 1


def test_interval_is_capped_by_the_meters() -> None:
    assert make([ListMeter([0.0], max_interval_s=2.0)], interval_s=5)[0].interval_s == 2.0
    assert make([ListMeter([0.0])], interval_s=5)[0].interval_s == 5.0
    with pytest.raises(ValueError, match="positive"):
        Sampler([], interval_s=0)
    with pytest.raises(ValueError, match="positive"):
        Sampler([], interval_s=float("nan"))


def test_a_failing_meter_stays_flat_and_is_reported() -> None:
    gpu = ListMeter([0.0, 10.0, unavailable("NVML failed on GPU 0: GPU is lost"), 99.0], "gpu:0")
    cpu = ListMeter([0.0, 1.0, 2.0, 3.0])
    sampler, clock = make([gpu, cpu])
    sampler.start()
    sampler.sample()
    sampler.sample()
    series = sampler.stop()
    assert [list(c) for c in series.columns] == [[0, 10, 10, 99], [0, 1, 2, 3]]
    assert series.errors == {"gpu:0": "NVML failed on GPU 0: GPU is lost"}


def test_start_failure_closes_the_meters() -> None:
    good, bad = ListMeter([0.0]), ListMeter([unavailable()])
    sampler, _ = make([good, bad])
    with pytest.raises(Exception, match="gone"):
        sampler.start()
    assert good.closed == bad.closed == 1


def test_series_before_start_and_double_start() -> None:
    sampler, _ = make([ListMeter([0.0])])
    with pytest.raises(RuntimeError, match="not been started"):
        sampler.sample()
    sampler.start()
    with pytest.raises(RuntimeError, match="already started"):
        sampler.start()


def test_compact_dict_round_trip() -> None:
    series = EnergySeries(
        [MeterDescription("gpu:0", "counter", "A100"), MeterDescription("ram", "estimate")], T0
    )
    series.append(0.0, [0.0, 0.0])
    series.append(5.0004, [123.45678, 0.1])
    series.errors["ram"] = "oops"
    data = series.to_dict()
    assert data == {
        "started_at": "2026-11-30T10:00:00Z",
        "meters": [
            {"device": "gpu:0", "method": "counter", "detail": "A100"},
            {"device": "ram", "method": "estimate", "detail": ""},
        ],
        "t_s": [0.0, 5.0],
        "energy_j": [[0.0, 123.457], [0.0, 0.1]],
        "errors": {"ram": "oops"},
    }
    again = EnergySeries.from_dict(data)
    assert again.to_dict() == data
    assert again.descriptions == series.descriptions
    with pytest.raises(ValueError, match="malformed"):
        EnergySeries.from_dict({"meters": []})
    with pytest.raises(ValueError, match="naive"):
        EnergySeries([], datetime(2026, 1, 1))


def test_background_thread_samples_until_stopped() -> None:
    meter = ListMeter([float(i) for i in range(10_000)])
    sampler = Sampler([meter], interval_s=0.01).start()
    deadline = time.monotonic() + 30
    while len(sampler.series.t_s) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    series = sampler.stop()
    count = len(series.t_s)
    assert count >= 5  # the origin, at least three from the thread, the final read
    assert list(series.columns[0]) == sorted(series.columns[0])
    time.sleep(0.05)
    assert len(series.t_s) == count  # nothing after stop


def test_an_unexpected_error_in_one_meter_does_not_stop_the_others() -> None:
    broken = ListMeter([0.0, ZeroDivisionError("bug")], device="ram")
    cpu = ListMeter([0.0, 4.0])
    sampler, _ = make([broken, cpu])
    sampler.start()
    series = sampler.stop()
    assert [list(c) for c in series.columns] == [[0, 0], [0, 4]]
    assert series.errors == {"ram": "ZeroDivisionError('bug')"}
