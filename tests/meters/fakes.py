"""Fakes for meter tests: a powercap sysfs tree in a folder, an NVML module, simple meters."""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ecoq.errors import MeterUnavailable
from ecoq.meters import MeterDescription

RANGE_UJ = 262_143_328_850  # a common max_energy_range_uj


def write_zone(
    root: Path,
    folder: str,
    name: str,
    energy_uj: int = 0,
    *,
    range_uj: int = RANGE_UJ,
    max_power_uw: int | None = None,
    power_limit_uw: int | None = None,
) -> Path:
    """One powercap zone folder (`intel-rapl:0`, `intel-rapl:0:1`, ...) with its files."""
    zone = root / folder
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    if max_power_uw is not None:
        (zone / "constraint_0_max_power_uw").write_text(f"{max_power_uw}\n")
    if power_limit_uw is not None:
        (zone / "constraint_1_power_limit_uw").write_text(f"{power_limit_uw}\n")
    return zone


def set_energy(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


def laptop_tree(root: Path) -> dict[str, Path]:
    """Two packages with core/uncore/dram sub-zones, psys, an MMIO duplicate and the control
    type folder, as a real machine lays them out (flattened, as /sys/class/powercap is)."""
    (root / "intel-rapl").mkdir(parents=True)  # the control type: no energy files
    return {
        "pkg0": write_zone(root, "intel-rapl:0", "package-0", 1_000_000, max_power_uw=125_000_000),
        "core0": write_zone(root, "intel-rapl:0:0", "core", 500_000),
        "uncore0": write_zone(root, "intel-rapl:0:1", "uncore", 100_000),
        "dram0": write_zone(root, "intel-rapl:0:2", "dram", 200_000),
        "pkg1": write_zone(root, "intel-rapl:1", "package-1", 3_000_000, max_power_uw=125_000_000),
        "dram1": write_zone(root, "intel-rapl:1:0", "dram", 300_000),
        "psys": write_zone(root, "intel-rapl:2", "psys", 9_000_000),
        "mmio": write_zone(root, "intel-rapl-mmio:0", "package-0", 7_000_000),
    }


class FakeNVMLError(Exception):
    """As pynvml's NVMLError: an error code in `value`, NVML's text as str()."""

    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value
        self.text = text

    def __str__(self) -> str:
        return self.text


NOT_SUPPORTED = 3


@dataclass
class FakeGpu:
    name: str = "NVIDIA A100-SXM4-40GB"
    uuid: str = "GPU-aaaa"
    energy_mj: int | None = 0  # None: no energy counter (pre-Volta)
    power_mw: int | None = 100_000  # None: no power reading either
    mig: int | None = None  # None: not MIG capable; 0 disabled; 1 enabled
    error: str | None = None  # every call on the device fails with this text


@dataclass
class FakeNvml:
    """A stand-in for the `pynvml` module: the calls NvmlMeter uses, on `gpus`."""

    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    init_error: str | None = None
    inits: int = 0
    shutdowns: int = 0
    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_DEVICE_MIG_ENABLE = 1

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError(9, self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(2, "Invalid Argument")
        return self.gpus[index]

    def _check(self, gpu: FakeGpu) -> None:
        if gpu.error:
            raise FakeNVMLError(15, gpu.error)

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        self._check(gpu)
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        self._check(gpu)
        return gpu.uuid

    def nvmlDeviceGetMigMode(self, gpu: FakeGpu) -> list[int]:
        self._check(gpu)
        if gpu.mig is None:
            raise FakeNVMLError(NOT_SUPPORTED, "Not Supported")
        return [gpu.mig, gpu.mig]

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        self._check(gpu)
        if gpu.energy_mj is None:
            raise FakeNVMLError(NOT_SUPPORTED, "Not Supported")
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._check(gpu)
        if gpu.power_mw is None:
            raise FakeNVMLError(NOT_SUPPORTED, "Not Supported")
        return gpu.power_mw


class FakeClock:
    """Monotonic seconds, set by the test."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class ListMeter:
    """A meter that returns the given readings in turn (then the last); an exception in the
    list is raised instead."""

    def __init__(
        self,
        values: list[float | Exception],
        device: str = "cpu",
        max_interval_s: float = float("inf"),
    ) -> None:
        self.values = list(values)
        self.description = MeterDescription(device, "counter", "fake")
        self.max_interval_s = max_interval_s
        self.closed = 0
        self.reads = 0

    def energy_j(self) -> float:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        if isinstance(value, Exception):
            raise value
        return value

    def close(self) -> None:
        self.closed += 1


def unavailable(text: str = "gone") -> MeterUnavailable:
    return MeterUnavailable(text)


def as_unprivileged(fn: Callable[[], str]) -> str:
    """Run `fn` where permissions apply: here when not root, else in a forked child that
    became `nobody` (root reads any file). Returns what `fn` returned."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, fn().encode())
        except BaseException as exc:
            os.write(w, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()
