"""NVIDIA GPUs through NVML (the `nvidia-ml-py` package, extra `ecoq[nvidia]`), imported lazily."""

import contextlib
from types import ModuleType


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
