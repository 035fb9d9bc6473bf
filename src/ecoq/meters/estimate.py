"""Estimates where no counter is readable (VMs, containers, laptops without RAPL access).

Every number from here is labelled ``estimate``.

- **CPU**: watts per logical CPU × CPU seconds used. The watts come from ``meters.cpu_watts``
  (the CPU's power at full load; divided by the number of logical CPUs) or else from `TDP_TABLE`:
  the model's TDP divided by its hardware threads. An unknown model (VMs often hide it) gets the
  median of the table's per-thread figures, `FALLBACK_W_PER_CPU`. Idle power is not included: a
  job is charged only for the CPU time it used, so the estimate runs low on a mostly idle box.
- **RAM**: ``meters.ram_w_per_gb`` (default 0.375 W per GB, i.e. 3 W per 8 GB as CodeCarbon uses;
  the Green Algorithms calculator uses 0.3725) × resident memory (RSS) in GB, integrated over
  time with the trapezoid rule between reads. A GB here is 2^30 bytes, as memory is sold.
"""

import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ecoq.meters import MeterDescription

if TYPE_CHECKING:
    from ecoq.meters.process import ProcessTree

#: (regular expression on /proc/cpuinfo's "model name", TDP in W, hardware threads), from the
#: vendors' specification pages.
TDP_TABLE: tuple[tuple[str, float, int], ...] = (
    (r"Xeon\(R\) Gold 6130\b", 125, 32),
    (r"Xeon\(R\) Gold 6248\b", 150, 40),
    (r"Xeon\(R\) Silver 4214\b", 85, 24),
    (r"Xeon\(R\) Platinum 8280\b", 205, 56),
    (r"Xeon\(R\) Platinum 8380\b", 270, 80),
    (r"Xeon\(R\) Platinum 8480\+", 350, 112),
    (r"Xeon\(R\) CPU E5-2680 v4\b", 120, 28),
    (r"Xeon\(R\) CPU E5-2690 v4\b", 135, 28),
    (r"EPYC 7543\b", 225, 64),
    (r"EPYC 7742\b", 225, 128),
    (r"EPYC 7763\b", 280, 128),
    (r"EPYC 9654\b", 360, 192),
    (r"Core\(TM\) i7-8700\b", 65, 12),
    (r"Core\(TM\) i9-9900K\b", 95, 16),
    (r"Core\(TM\) i7-1165G7\b", 28, 8),
    (r"Ryzen 7 5800X\b", 105, 16),
    (r"Ryzen 9 5950X\b", 105, 32),
)
#: W per logical CPU for a model not in the table: the median of the table's TDP / threads.
FALLBACK_W_PER_CPU = round(statistics.median(tdp / n for _, tdp, n in TDP_TABLE), 2)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from /proc/cpuinfo, or "" when it is not there."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else ""


def watts_per_cpu(
    model: str, *, cpu_watts: float = 0.0, logical_cpus: int = 0
) -> tuple[float, str]:
    """Watts per logical CPU at full load, and where the figure came from (for the label).

    Args:
        model: the CPU model name (`cpu_model`).
        cpu_watts: the configured full-load CPU power in W; 0 = from `TDP_TABLE`.
        logical_cpus: CPUs `cpu_watts` is spread over; 0 = ``os.cpu_count()``.
    """
    if cpu_watts > 0:
        n = logical_cpus or os.cpu_count() or 1
        return cpu_watts / n, f"meters.cpu_watts {cpu_watts:g} W / {n} CPUs"
    for pattern, tdp_w, threads in TDP_TABLE:
        if re.search(pattern, model):
            return tdp_w / threads, f"{model}: TDP {tdp_w:g} W / {threads} threads"
    shown = model or "unknown CPU"
    return FALLBACK_W_PER_CPU, f"{shown} not in the TDP table: {FALLBACK_W_PER_CPU:g} W per CPU"


class EstimateCpuMeter:
    """CPU energy, J = watts per logical CPU × CPU seconds of `cpu_s` since the first read."""

    max_interval_s = float("inf")

    def __init__(self, w_per_cpu: float, cpu_s: Callable[[], float], detail: str) -> None:
        self.w_per_cpu = w_per_cpu
        self._cpu_s = cpu_s
        self._origin_s: float | None = None
        self.description = MeterDescription("cpu", "estimate", detail)

    @classmethod
    def for_process(
        cls, tree: "ProcessTree | None", *, cpu_watts: float = 0.0
    ) -> "EstimateCpuMeter":
        """The estimate for a process tree's CPU time, or the machine's busy time (None)."""
        from ecoq.meters.process import machine_busy_cpu_s

        w, source = watts_per_cpu(cpu_model(), cpu_watts=cpu_watts)
        if tree is None:
            return cls(w, machine_busy_cpu_s, f"{source} × busy CPU time of the machine")
        who = f"process {tree.pid}" if tree.pid is not None else "the metered process"
        return cls(w, tree.cpu_s, f"{source} × CPU time of {who} and its children")

    def energy_j(self) -> float:
        """Estimated joules since the first read."""
        cpu_s = self._cpu_s()
        if self._origin_s is None:
            self._origin_s = cpu_s
        return self.w_per_cpu * max(0.0, cpu_s - self._origin_s)

    def close(self) -> None:
        """Nothing to release."""


class EstimateRamMeter:
    """RAM energy, J = `w_per_gb` × resident GB, integrated between reads (trapezoid rule)."""

    max_interval_s = float("inf")

    def __init__(
        self,
        w_per_gb: float,
        rss_bytes: Callable[[], int],
        detail: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.w_per_gb = w_per_gb
        self._rss_bytes = rss_bytes
        self._clock = clock
        self._last: tuple[float, float] | None = None  # (time s, GB)
        self._energy_j = 0.0
        self.description = MeterDescription("ram", "estimate", detail)

    @classmethod
    def for_process(cls, tree: "ProcessTree | None", *, w_per_gb: float) -> "EstimateRamMeter":
        """The estimate for a process tree's RSS, or the machine's used memory (None)."""
        if tree is None:
            import psutil  # type: ignore[import-untyped]

            def used() -> int:
                return int(psutil.virtual_memory().used)

            return cls(w_per_gb, used, f"{w_per_gb:g} W/GB × memory used on the machine")
        who = f"process {tree.pid}" if tree.pid is not None else "the metered process"
        detail = f"{w_per_gb:g} W/GB × resident memory of {who} and its children"
        return cls(w_per_gb, tree.rss_bytes, detail)

    def energy_j(self) -> float:
        """Estimated joules since the first read."""
        now, gb = self._clock(), self._rss_bytes() / 2**30
        if self._last is not None:
            t0, gb0 = self._last
            self._energy_j += self.w_per_gb * (gb0 + gb) / 2 * max(0.0, now - t0)
        self._last = (now, gb)
        return self._energy_j

    def close(self) -> None:
        """Nothing to release."""
