"""Estimates: the TDP table, configured watts, CPU-time and RSS integration."""

from pathlib import Path

from ecoq.meters.estimate import (
    FALLBACK_W_PER_CPU,
    TDP_TABLE,
    EstimateCpuMeter,
    EstimateRamMeter,
    cpu_model,
    watts_per_cpu,
)
from ecoq.meters.process import ProcessTree
from tests.meters.fakes import FakeClock

XEON = "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz"


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: {XEON}\n")
    assert cpu_model(cpuinfo) == XEON
    assert cpu_model(tmp_path / "missing") == ""


def test_watts_from_table_configuration_or_fallback() -> None:
    assert watts_per_cpu(XEON) == (125 / 32, f"{XEON}: TDP 125 W / 32 threads")
    assert watts_per_cpu("AMD EPYC 7763 64-Core Processor")[0] == 280 / 128
    assert watts_per_cpu(XEON, cpu_watts=64, logical_cpus=16) == (
        4.0,
        "meters.cpu_watts 64 W / 16 CPUs",
    )
    w, source = watts_per_cpu("AMD EPYC")  # what VMs often show
    assert w == FALLBACK_W_PER_CPU
    assert source == f"AMD EPYC not in the TDP table: {FALLBACK_W_PER_CPU:g} W per CPU"
    assert watts_per_cpu("")[1].startswith("unknown CPU not in the TDP table")


def test_fallback_is_the_median_of_the_table() -> None:
    per_thread = sorted(tdp / n for _, tdp, n in TDP_TABLE)
    assert len(per_thread) % 2 == 1
    assert round(per_thread[len(per_thread) // 2], 2) == FALLBACK_W_PER_CPU


def test_cpu_estimate_is_watts_times_cpu_seconds() -> None:
    readings = iter([10.0, 12.0, 15.0, 15.0])
    meter = EstimateCpuMeter(4.0, lambda: next(readings), "fake")
    assert meter.description.method == "estimate"
    assert [meter.energy_j() for _ in range(4)] == [0.0, 8.0, 20.0, 20.0]


def test_cpu_estimate_for_a_process_and_for_the_machine() -> None:
    tree = ProcessTree(123)
    meter = EstimateCpuMeter.for_process(tree, cpu_watts=8.0)
    assert meter.description.device == "cpu"
    assert meter.description.detail.endswith("× CPU time of process 123 and its children")
    machine = EstimateCpuMeter.for_process(None)
    assert machine.description.detail.endswith("× busy CPU time of the machine")
    assert machine.energy_j() == 0.0


def test_ram_estimate_integrates_resident_memory() -> None:
    clock = FakeClock(100.0)
    rss = iter([1 * 2**30, 3 * 2**30, 3 * 2**30, 0])
    meter = EstimateRamMeter(0.5, lambda: next(rss), "fake", clock=clock)
    assert meter.description.device == "ram"
    assert meter.energy_j() == 0.0
    clock.t = 110.0
    assert meter.energy_j() == 10.0  # 0.5 W/GB × 2 GB mean × 10 s
    clock.t = 114.0
    assert meter.energy_j() == 16.0  # + 0.5 × 3 × 4
    clock.t = 116.0
    assert meter.energy_j() == 17.5  # + 0.5 × 1.5 × 2


def test_ram_estimate_for_the_machine() -> None:
    meter = EstimateRamMeter.for_process(None, w_per_gb=0.375)
    assert meter.description.detail == "0.375 W/GB × memory used on the machine"
    assert meter.energy_j() == 0.0
    assert meter.energy_j() >= 0.0
