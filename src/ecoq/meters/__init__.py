"""Energy meters: the `Meter` protocol, what each number means, and `detect_meters`.

A meter gives a monotonically increasing energy in joules since an arbitrary origin; a run's
energy is the difference of two readings. Each meter says how its number was obtained:

- ``counter``: a hardware energy counter (NVML's total-energy counter, RAPL ``energy_uj``);
- ``power-integration``: power sampled in a background thread and integrated (trapezoid rule),
  for GPUs without an energy counter;
- ``estimate``: no counter was readable; a model (TDP table × CPU time, a W/GB figure × RSS).

CPU meters are attributed to a process tree: a job is charged the package energy times its share
of the machine's busy CPU time over each interval, never the whole machine (see `process`). GPU
meters measure the job's whole GPUs, idle power included (a paused job's GPUs still draw it).

`detect_meters` follows zeus's rule: meters asked for by name fail loudly with the fix; auto-
detection skips what is missing and says why, once per process. This package imports only
`ecoq.errors` from ecoq (never the scheduler or the database); psutil and nvidia-ml-py are
imported on first use.
"""

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from ecoq.errors import MeterUnavailable, ValidationError

if TYPE_CHECKING:
    from ecoq.meters.process import ProcessTree

__all__ = [
    "METER_NAMES",
    "Detection",
    "EnergyReading",
    "Meter",
    "MeterDefaults",
    "MeterDescription",
    "MeterSettings",
    "Method",
    "detect_meters",
]

Method = Literal["counter", "power-integration", "estimate"]
#: Names accepted by `detect_meters(names=...)`.
METER_NAMES = ("nvml", "rapl", "estimate")

log = logging.getLogger(__name__)
_said: set[str] = set()  # skip reasons already logged by this process


@dataclass(frozen=True)
class MeterDescription:
    """What a meter measures and how.

    Attributes:
        device: ``gpu:0`` (NVML index), ``cpu`` (all packages) or ``ram``.
        method: ``counter``, ``power-integration`` or ``estimate``.
        detail: for people: the source, model and attribution (``RAPL package-0; share of CPU
            time of process 42 and its children``).
    """

    device: str
    method: Method
    detail: str = ""


@dataclass(frozen=True)
class EnergyReading:
    """The energy one meter measured over a span, in joules."""

    description: MeterDescription
    energy_j: float

    @property
    def device(self) -> str:
        return self.description.device

    @property
    def method(self) -> Method:
        return self.description.method


class Meter(Protocol):
    """An energy meter. `max_interval_s` is how far apart reads may be (inf: any)."""

    description: MeterDescription
    max_interval_s: float

    def energy_j(self) -> float:
        """Energy since an arbitrary origin, in joules; never decreases.

        Raises:
            MeterUnavailable: the device can no longer be read; the message says why.
        """
        ...

    def close(self) -> None:
        """Stop any background thread and release the device. Idempotent."""
        ...


class MeterSettings(Protocol):
    """The ``[meters]`` settings `detect_meters` uses; `ecoq.config.MetersSettings` is one."""

    @property
    def rapl(self) -> bool: ...
    @property
    def nvml(self) -> bool: ...
    @property
    def powercap_root(self) -> str: ...
    @property
    def cpu_watts(self) -> float: ...
    @property
    def ram_w_per_gb(self) -> float: ...
    @property
    def nvml_power_interval_s(self) -> float: ...


@dataclass(frozen=True)
class MeterDefaults:
    """The defaults of the ``[meters]`` settings (config/ecoq.example.toml documents them)."""

    rapl: bool = True
    nvml: bool = True
    powercap_root: str = "/sys/class/powercap"
    interval_s: float = 5.0  #: seconds between samples of a running job
    cpu_watts: float = 0.0  #: CPU watts at full load for the estimate; 0 = from the TDP table
    ram_w_per_gb: float = 0.375  #: W per GB of resident memory for the estimate; 0 = no RAM
    nvml_power_interval_s: float = 0.1  #: seconds between power samples without a counter


@dataclass(frozen=True)
class Detection:
    """The meters `detect_meters` opened, and why each one it looked for is missing."""

    meters: tuple[Meter, ...]
    skipped: tuple[str, ...] = ()

    def close(self) -> None:
        for meter in self.meters:
            meter.close()


def detect_meters(
    names: Iterable[str] | None = None,
    *,
    settings: MeterSettings | None = None,
    gpus: Sequence[str] | None = None,
    process: "int | ProcessTree | None" = None,
    env: Mapping[str, str] | None = None,
    nvml_module: object | None = None,
) -> Detection:
    """Open the meters for a job (or this machine).

    Args:
        names: meters to open, from `METER_NAMES`; each must work or this raises. None:
            auto-detect (NVML if ``meters.nvml``; RAPL if ``meters.rapl``, else or when
            unreadable the CPU estimate; the RAM estimate unless ``ram_w_per_gb`` is 0), skipping
            what is missing with one log line per reason and process.
        settings: the ``[meters]`` settings; None = `MeterDefaults`.
        gpus: the job's GPUs as `CUDA_VISIBLE_DEVICES` entries (indices or ``GPU-`` UUIDs); []
            for none. None: ``CUDA_VISIBLE_DEVICES`` from `env`, or every GPU when unset.
        process: the pid (or `ProcessTree`, possibly attached later) whose tree CPU energy and
            memory are attributed to; None = the whole machine.
        env: the environment to read ``CUDA_VISIBLE_DEVICES`` from (default ``os.environ``).
        nvml_module: a stand-in for the ``pynvml`` module (tests).

    Raises:
        ValidationError: an unknown name in `names`.
        MeterUnavailable: a meter named in `names` cannot be opened; the message gives the fix.
    """
    cfg: MeterSettings = settings or MeterDefaults()
    wanted = None if names is None else list(dict.fromkeys(names))
    for name in wanted or ():
        if name not in METER_NAMES:
            raise ValidationError(f"unknown meter {name!r}; meters are {', '.join(METER_NAMES)}")
    explicit = wanted is not None
    chosen = set(wanted or ())
    meters: list[Meter] = []
    skipped: list[str] = []

    def use(name: str, enabled: bool) -> bool:
        if explicit:
            return name in chosen
        if not enabled:
            _skip(skipped, f"{name}: off (meters.{name} = false)")
        return enabled

    def unavailable(name: str, exc: MeterUnavailable) -> None:
        if explicit:
            raise exc
        _skip(skipped, f"{name}: {exc}")

    from ecoq.meters.estimate import EstimateCpuMeter, EstimateRamMeter
    from ecoq.meters.process import AttributedMeter, ProcessTree

    tree = ProcessTree(process) if isinstance(process, int) else process
    try:
        visible = _visible_gpus(gpus, os.environ if env is None else env)
        if visible == []:
            if "nvml" in chosen:
                raise MeterUnavailable("meter nvml was asked for, but the job has no GPUs")
        elif use("nvml", cfg.nvml):
            from ecoq.meters.nvml import open_gpus

            try:
                interval = cfg.nvml_power_interval_s
                meters += open_gpus(visible, nvml=nvml_module, power_interval_s=interval)
            except MeterUnavailable as exc:
                unavailable("nvml", exc)
        cpu: Meter | None = None
        if use("rapl", cfg.rapl):
            from ecoq.meters.rapl import RaplMeter

            try:
                rapl = RaplMeter.from_root(Path(cfg.powercap_root))
            except MeterUnavailable as exc:
                unavailable("rapl", exc)
            else:
                cpu = rapl if tree is None else AttributedMeter(rapl, tree)
        estimate = "estimate" in chosen or not explicit
        if cpu is None and estimate:
            cpu = EstimateCpuMeter.for_process(tree, cpu_watts=cfg.cpu_watts)
        if cpu is not None:
            meters.append(cpu)
        if estimate and cfg.ram_w_per_gb > 0:
            meters.append(EstimateRamMeter.for_process(tree, w_per_gb=cfg.ram_w_per_gb))
    except BaseException:
        for meter in meters:
            meter.close()
        raise
    return Detection(tuple(meters), tuple(skipped))


def _visible_gpus(gpus: Sequence[str] | None, env: Mapping[str, str]) -> list[str] | None:
    """The job's GPU entries, [] for none, None for every GPU (CUDA_VISIBLE_DEVICES unset)."""
    if gpus is not None:
        return [g.strip() for g in gpus if g.strip()]
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [g.strip() for g in value.split(",") if g.strip()]


def _skip(skipped: list[str], reason: str) -> None:
    skipped.append(reason)
    if reason not in _said:
        _said.add(reason)
        log.info("meter skipped: %s", reason)
