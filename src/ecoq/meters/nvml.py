"""NVIDIA GPUs through NVML (the `nvidia-ml-py` package, extra `ecoq[nvidia]`), imported lazily.

`NvmlMeter` reads ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded) where the
GPU has that counter (Volta and newer). Older GPUs fall back to ``nvmlDeviceGetPowerUsage`` (mW)
sampled by a background thread and integrated with the trapezoid rule. Every NVML error becomes
one `MeterUnavailable` carrying NVML's own text. MIG instances cannot be metered: NVML reports
energy for whole GPUs only.

NVML numbers GPUs in PCI bus order; the daemon sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that the
indices in a job's ``CUDA_VISIBLE_DEVICES`` mean the same GPUs to CUDA and to NVML.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ecoq.errors import MeterUnavailable
from ecoq.meters import MeterDescription

_FIX = "check the driver with `nvidia-smi`, or set meters.nvml = false"
_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
_MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE


def _nvml() -> ModuleType | None:
    try:
        import pynvml  # provided by nvidia-ml-py (the official binding), not the `pynvml` shim
    except ImportError:
        return None
    return pynvml  # type: ignore[no-any-return]


def gpu_count() -> int | None:
    """How many GPUs NVML sees, or None when NVML is not installed or cannot initialise."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError (no driver, no GPU): treat as "no NVML"
        return None
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):  # a half-initialised library
            nvml.nvmlShutdown()


def load_nvml(module: Any = None) -> Any:
    """The ``pynvml`` module (or the stand-in `module`).

    Raises:
        MeterUnavailable: nvidia-ml-py is not installed.
    """
    if module is not None:
        return module
    nvml = _nvml()
    if nvml is None:
        if not Path("/proc/driver/nvidia").exists():
            raise MeterUnavailable("no NVIDIA driver on this machine (no /proc/driver/nvidia)")
        raise MeterUnavailable(
            "nvidia-ml-py is not installed; install it with `pip install 'ecoq[nvidia]'`, "
            "or set meters.nvml = false"
        )
    return nvml


def _is_not_supported(nvml: Any, exc: BaseException) -> bool:
    code = getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED)
    return getattr(exc, "value", None) == code


def _call(nvml: Any, where: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, with an NVML error turned into one `MeterUnavailable` with NVML's text."""
    try:
        return fn(*args)
    except nvml.NVMLError as exc:
        raise MeterUnavailable(f"NVML failed on {where}: {exc}; {_FIX}") from exc


def _init(nvml: Any) -> None:
    try:
        nvml.nvmlInit()  # reference counted by NVML: each nvmlInit needs one nvmlShutdown
    except nvml.NVMLError as exc:
        raise MeterUnavailable(f"NVML could not start: {exc}; {_FIX}") from exc


def _mig_message(what: str) -> str:
    return (
        f"{what}: NVML reports energy for whole GPUs only, not for one MIG instance, so this "
        "job's GPU energy cannot be metered; give the job whole GPUs with MIG disabled "
        "(`nvidia-smi -i N -mig 0`), or set meters.nvml = false"
    )


def resolve_gpus(visible: Sequence[str] | None, nvml: Any) -> list[int]:
    """NVML indices of the GPUs a job may use (NVML must be initialised).

    Args:
        visible: `CUDA_VISIBLE_DEVICES` entries: indices, ``GPU-`` UUIDs or unique UUID prefixes
            (as CUDA accepts them); None = every GPU. As CUDA does, the list ends at the first
            entry that names no GPU (``-1`` hides all GPUs).

    Raises:
        MeterUnavailable: an entry names a MIG instance, or NVML fails.
    """
    count = int(_call(nvml, "nvmlDeviceGetCount", nvml.nvmlDeviceGetCount))
    if visible is None:
        return list(range(count))
    uuids: list[str] | None = None
    indices: list[int] = []
    for entry in visible:
        if entry.startswith("MIG-"):
            raise MeterUnavailable(_mig_message(f"CUDA_VISIBLE_DEVICES names MIG instance {entry}"))
        if entry.isdigit():
            index = int(entry)
        else:
            if uuids is None:
                uuids = [_uuid(nvml, i) for i in range(count)]
            matches = [i for i, u in enumerate(uuids) if u.startswith(entry)]
            index = matches[0] if len(matches) == 1 and entry.startswith("GPU-") else count
        if index >= count or index in indices:
            break
        indices.append(index)
    return indices


def _uuid(nvml: Any, index: int) -> str:
    handle = _call(nvml, f"GPU {index}", nvml.nvmlDeviceGetHandleByIndex, index)
    uuid = _call(nvml, f"GPU {index}", nvml.nvmlDeviceGetUUID, handle)
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


def open_gpus(
    visible: Sequence[str] | None, *, nvml: Any = None, power_interval_s: float = 0.1
) -> list["NvmlMeter"]:
    """One `NvmlMeter` per GPU in `visible` (see `resolve_gpus`); [] when there are none.

    Raises:
        MeterUnavailable: nvidia-ml-py is missing, NVML fails, or a GPU is a MIG instance or
            can report neither energy nor power. Meters already opened are closed.
    """
    module = load_nvml(nvml)
    _init(module)
    try:
        indices = resolve_gpus(visible, module)
    finally:
        with contextlib.suppress(Exception):
            module.nvmlShutdown()
    meters: list[NvmlMeter] = []
    try:
        for index in indices:
            meters.append(NvmlMeter(index, nvml=module, power_interval_s=power_interval_s))
    except BaseException:
        for meter in meters:
            meter.close()
        raise
    return meters


class NvmlMeter:
    """One GPU's energy in joules: NVML's counter, else integrated power samples.

    Args:
        index: the GPU's NVML index.
        nvml: the ``pynvml`` module or a stand-in; None = import nvidia-ml-py.
        power_interval_s: seconds between power samples when there is no energy counter.
        clock: monotonic seconds (tests pass a fake).
        thread: sample power in a background thread; False: only when `energy_j` is called.
        counter: use the energy counter where the GPU has one; False: integrate power even
            then (to compare the two, as benchmarks/gpu_check.py does).

    Raises:
        MeterUnavailable: NVML is missing or fails, the GPU is in MIG mode, or it reports
            neither energy nor power.
    """

    max_interval_s = float("inf")

    def __init__(
        self,
        index: int,
        *,
        nvml: Any = None,
        power_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        thread: bool = True,
        counter: bool = True,
    ) -> None:
        self.index = index
        self._nvml = load_nvml(nvml)
        self._clock = clock
        self._where = f"GPU {index}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: MeterUnavailable | None = None
        self._closed = False
        _init(self._nvml)
        try:
            self._open(power_interval_s, thread, counter)
        except BaseException:
            self.close()
            raise

    def _open(self, power_interval_s: float, thread: bool, counter: bool) -> None:
        nvml = self._nvml
        self._handle = self._get(nvml.nvmlDeviceGetHandleByIndex, self.index)
        name = self._get(nvml.nvmlDeviceGetName, self._handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        self._where = f"GPU {self.index} ({name})"
        self._check_mig()
        self._origin_mj: float | None = None
        try:
            if counter:
                self._origin_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except nvml.NVMLError as exc:
            if not _is_not_supported(nvml, exc):
                raise MeterUnavailable(f"NVML failed on {self._where}: {exc}; {_FIX}") from exc
        device = f"gpu:{self.index}"
        if self._origin_mj is not None:
            detail = f"{name}: NVML total energy counter"
            self.description = MeterDescription(device, "counter", detail)
            return
        self._energy_j = 0.0
        self._last: tuple[float, float] | None = None
        try:
            self._sample()
        except MeterUnavailable as exc:
            raise MeterUnavailable(
                f"{self._where} has neither an energy counter nor a power reading ({exc})"
            ) from exc
        detail = (
            f"{name}: {'no energy counter; ' if counter else ''}NVML power sampled every "
            f"{power_interval_s:g} s, trapezoid rule"
        )
        self.description = MeterDescription(device, "power-integration", detail)
        if thread:
            self._thread = threading.Thread(
                target=self._run, args=(power_interval_s,), name=f"ecoq-nvml-{self.index}"
            )
            self._thread.daemon = True
            self._thread.start()

    def _get(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _call(self._nvml, self._where, fn, *args)

    def _check_mig(self) -> None:
        nvml = self._nvml
        try:
            current = nvml.nvmlDeviceGetMigMode(self._handle)[0]
        except (AttributeError, nvml.NVMLError):
            return  # not MIG capable (NOT_SUPPORTED), or a binding without MIG
        if current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", _MIG_ENABLED):
            raise MeterUnavailable(_mig_message(f"{self._where} is in MIG mode"))

    def _sample(self) -> None:
        power_w = float(self._get(self._nvml.nvmlDeviceGetPowerUsage, self._handle)) / 1000
        now = self._clock()
        with self._lock:
            if self._last is not None:
                t0, p0 = self._last
                self._energy_j += max(0.0, now - t0) * (p0 + power_w) / 2
            self._last = (now, power_w)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self._sample()
            except MeterUnavailable as exc:
                self._error = exc
                return

    def energy_j(self) -> float:
        """Joules since the meter was opened.

        Raises:
            MeterUnavailable: NVML failed (now, or in the sampling thread), or the meter is
                closed.
        """
        if self._closed:
            raise MeterUnavailable(f"the meter of {self._where} is closed")
        if self._origin_mj is not None:
            mj = float(self._get(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle))
            return max(0.0, mj - self._origin_mj) / 1000
        if self._error is not None:
            raise self._error
        self._sample()
        with self._lock:
            return self._energy_j

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()
