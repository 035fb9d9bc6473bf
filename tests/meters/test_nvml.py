"""NvmlMeter with a fake NVML module: counter, power integration, errors, MIG, visible GPUs."""

import threading
import time

import pytest

from ecoq.errors import MeterUnavailable
from ecoq.meters.nvml import NvmlMeter, gpu_count, open_gpus, resolve_gpus
from tests.meters.fakes import FakeClock, FakeGpu, FakeNvml, FakeNVMLError


def test_energy_counter_deltas_in_joules() -> None:
    gpu = FakeGpu(energy_mj=1_000_000)
    nvml = FakeNvml([gpu])
    meter = NvmlMeter(0, nvml=nvml)
    assert meter.description.device == "gpu:0"
    assert meter.description.method == "counter"
    assert "NVIDIA A100-SXM4-40GB" in meter.description.detail
    assert meter.energy_j() == 0.0
    gpu.energy_mj = 1_250_500
    assert meter.energy_j() == 250.5
    gpu.energy_mj = 2_000_000
    assert meter.energy_j() == 1000.0
    meter.close()
    meter.close()
    assert (nvml.inits, nvml.shutdowns) == (1, 1)
    with pytest.raises(MeterUnavailable, match="closed"):
        meter.energy_j()


def test_without_counter_power_is_integrated_with_the_trapezoid_rule() -> None:
    gpu = FakeGpu(energy_mj=None, power_mw=100_000)
    clock = FakeClock(10.0)
    meter = NvmlMeter(0, nvml=FakeNvml([gpu]), clock=clock, thread=False, power_interval_s=0.5)
    assert meter.description.method == "power-integration"
    assert "every 0.5 s, trapezoid rule" in meter.description.detail
    gpu.power_mw, clock.t = 200_000, 11.0
    assert meter.energy_j() == 150.0  # (100 + 200) / 2 W × 1 s
    clock.t = 13.0
    assert meter.energy_j() == 550.0  # + 200 W × 2 s
    gpu.power_mw, clock.t = 0, 13.5
    assert meter.energy_j() == 600.0  # + (200 + 0) / 2 W × 0.5 s
    meter.close()


class CountingNvml(FakeNvml):
    power_reads = 0

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self.power_reads += 1
        return super().nvmlDeviceGetPowerUsage(gpu)


def test_power_integration_can_be_chosen_over_the_counter() -> None:
    gpu = FakeGpu(energy_mj=1000, power_mw=300_000)
    clock = FakeClock()
    meter = NvmlMeter(0, nvml=FakeNvml([gpu]), clock=clock, thread=False, counter=False)
    assert meter.description.method == "power-integration"
    gpu.energy_mj, clock.t = 999_999, 2.0
    assert meter.energy_j() == 600.0
    meter.close()


def test_power_is_sampled_in_a_background_thread() -> None:
    nvml = CountingNvml([FakeGpu(energy_mj=None, power_mw=50_000)])
    meter = NvmlMeter(0, nvml=nvml, power_interval_s=0.001)
    deadline = time.monotonic() + 30
    while nvml.power_reads < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert nvml.power_reads >= 5  # sampled without energy_j being called
    assert meter.energy_j() > 0
    meter.close()
    assert not any(t.name == "ecoq-nvml-0" for t in threading.enumerate())


def test_error_in_the_sampling_thread_is_raised_at_the_next_read() -> None:
    gpu = FakeGpu(energy_mj=None)
    meter = NvmlMeter(0, nvml=FakeNvml([gpu]), power_interval_s=0.001)
    gpu.error = "GPU is lost"
    deadline = time.monotonic() + 30
    while meter._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(MeterUnavailable, match="GPU is lost"):
        meter.energy_j()
    meter.close()


def test_neither_counter_nor_power() -> None:
    nvml = FakeNvml([FakeGpu(name="Old GPU", energy_mj=None, power_mw=None)])
    with pytest.raises(MeterUnavailable, match=r"GPU 0 \(Old GPU\) has neither an energy counter"):
        NvmlMeter(0, nvml=nvml)
    assert nvml.inits == nvml.shutdowns == 1


def test_nvml_errors_become_one_error_with_nvmls_text() -> None:
    nvml = FakeNvml(init_error="Driver Not Loaded")
    with pytest.raises(MeterUnavailable, match="NVML could not start: Driver Not Loaded") as info:
        open_gpus(None, nvml=nvml)
    assert isinstance(info.value.__cause__, FakeNVMLError)
    assert "nvidia-smi" in str(info.value) and "meters.nvml = false" in str(info.value)

    gpu = FakeGpu(energy_mj=5)
    nvml = FakeNvml([gpu])
    meter = NvmlMeter(0, nvml=nvml)
    gpu.error = "GPU is lost"
    with pytest.raises(MeterUnavailable, match=r"NVML failed on GPU 0 \(.*\): GPU is lost"):
        meter.energy_j()
    meter.close()

    with pytest.raises(MeterUnavailable, match="Unknown Error"):
        NvmlMeter(0, nvml=FakeNvml([FakeGpu(error="Unknown Error")]))


def test_counter_error_other_than_not_supported_is_not_a_fallback() -> None:
    class Flaky(FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
            raise FakeNVMLError(999, "Insufficient Permissions")

    with pytest.raises(MeterUnavailable, match="Insufficient Permissions"):
        NvmlMeter(0, nvml=Flaky())


def test_mig_is_refused_with_a_clear_message() -> None:
    nvml = FakeNvml([FakeGpu(mig=1)])
    with pytest.raises(MeterUnavailable, match="GPU 0 .* is in MIG mode: NVML reports energy"):
        NvmlMeter(0, nvml=nvml)
    assert nvml.inits == nvml.shutdowns
    assert NvmlMeter(0, nvml=FakeNvml([FakeGpu(mig=0)])).description.method == "counter"
    with pytest.raises(MeterUnavailable, match="names MIG instance MIG-1234.*whole GPUs"):
        open_gpus(["MIG-1234"], nvml=FakeNvml())


def four_gpus() -> FakeNvml:
    return FakeNvml([FakeGpu(uuid=f"GPU-{c}{c}{c}{c}-{i}") for i, c in enumerate("abcd")])


@pytest.mark.parametrize(
    ("visible", "indices"),
    [
        (None, [0, 1, 2, 3]),
        ([], []),
        (["2"], [2]),
        (["3", "1"], [3, 1]),
        (["GPU-bbbb-1", "GPU-dddd-3"], [1, 3]),
        (["GPU-cc"], [2]),  # a unique prefix, as CUDA accepts
        (["GPU-"], []),  # ambiguous: CUDA stops there
        (["-1"], []),  # the usual way to hide every GPU
        (["0", "-1", "1"], [0]),  # the list ends at the first invalid entry
        (["1", "7", "2"], [1]),
        (["1", "1"], [1]),
    ],
)
def test_cuda_visible_devices(visible: list[str] | None, indices: list[int]) -> None:
    assert resolve_gpus(visible, four_gpus()) == indices


def test_open_gpus_one_meter_per_visible_gpu() -> None:
    nvml = four_gpus()
    meters = open_gpus(["GPU-dddd-3", "1"], nvml=nvml)
    assert [m.description.device for m in meters] == ["gpu:3", "gpu:1"]
    for meter in meters:
        meter.close()
    assert nvml.inits == nvml.shutdowns == 3


def test_open_gpus_closes_what_it_opened_on_failure() -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(mig=1)])
    with pytest.raises(MeterUnavailable, match="MIG"):
        open_gpus(None, nvml=nvml)
    assert nvml.inits == nvml.shutdowns


@pytest.mark.gpu
def test_real_gpu_counter_increases() -> None:
    if not gpu_count():
        pytest.skip("no NVIDIA GPU with nvidia-ml-py here")
    meter = open_gpus(["0"])[0]
    first = meter.energy_j()
    time.sleep(1)
    assert meter.energy_j() > first
    meter.close()
