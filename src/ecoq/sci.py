"""SCI (Software Carbon Intensity, Green Software Foundation): (O + M) per R. Pure.

O is a run's operational emissions (E × PUE × I, from `ecoq.accounting`), M its embodied
emissions from configured per-device figures (zero, and reported as unset, when none are
configured), R the functional unit: the job, or a unit the job marked with `ecoq.track` (epoch,
inference), read from its ``marks.jsonl`` by `summarize_marks`.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Embodied", "Sci", "embodied_g", "sci", "sci_per_unit", "summarize_marks"]


@dataclass(frozen=True)
class Embodied:
    """Configured embodied emissions, grams CO2e per hour a device is reserved.

    Each figure is the device's total embodied emissions over its expected life in hours
    (SCI's TE × TiR / EL): 1,500 kgCO2e over 5 years is about 34 g per hour.

    Attributes:
        g_per_gpu_hour: per GPU a run holds.
        g_per_host_hour: the share of the host (CPUs, memory, disks, chassis) charged to each run
            for its wall time: the host's figure divided by the jobs it usually runs at once.
    """

    g_per_gpu_hour: float = 0.0
    g_per_host_hour: float = 0.0

    @property
    def is_set(self) -> bool:
        """Whether any figure is configured (else M is zero and reported as unset)."""
        return self.g_per_gpu_hour > 0 or self.g_per_host_hour > 0


def embodied_g(embodied: Embodied, *, gpus: int, duration_s: float) -> float | None:
    """SCI's M for a run that held `gpus` GPUs for `duration_s` seconds, grams; None when no
    figure is configured (report it as zero and unset)."""
    if not embodied.is_set:
        return None
    hours = max(duration_s, 0.0) / 3600.0
    return hours * (embodied.g_per_host_hour + gpus * embodied.g_per_gpu_hour)


@dataclass(frozen=True)
class Sci:
    """SCI = (O + M) / R for one functional unit.

    Attributes:
        operational_g: O = E × PUE × I, grams.
        embodied_g: M, grams (0.0 when unset).
        embodied_set: whether M comes from configured figures.
        unit: the functional unit (``job``, ``epoch``, ``inference``...).
        units: R, how many units.
        signal: the intensity signal of O.
    """

    operational_g: float
    embodied_g: float
    embodied_set: bool
    unit: str
    units: float
    signal: str | None

    @property
    def g_per_unit(self) -> float:
        """(O + M) / R, grams CO2e per unit."""
        return (self.operational_g + self.embodied_g) / self.units


def sci(
    operational_g: float,
    embodied: float | None,
    *,
    units: float = 1.0,
    unit: str = "job",
    signal: str | None = None,
) -> Sci:
    """SCI of `units` functional units; `embodied` None means M is unset (counted as zero).

    Raises:
        ValueError: `units` is not a positive finite number.
    """
    if not (math.isfinite(units) and units > 0):
        raise ValueError(f"the functional unit count R = {units!r} must be a positive number")
    return Sci(
        operational_g=operational_g,
        embodied_g=embodied or 0.0,
        embodied_set=embodied is not None,
        unit=unit,
        units=units,
        signal=signal,
    )


def sci_per_unit(
    operational_g: float,
    embodied: float | None,
    units: Mapping[str, float],
    *,
    signal: str | None = None,
) -> dict[str, Sci]:
    """SCI per job and per each unit the run marked (``{"job": …, "epoch": …}``); units with a
    count of zero or less are left out."""
    out = {"job": sci(operational_g, embodied, signal=signal)}
    for unit, count in units.items():
        if count > 0:
            out[unit] = sci(operational_g, embodied, units=count, unit=unit, signal=signal)
    return out


def _positive(n: Any) -> bool:
    return isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) and n > 0


def summarize_marks(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What a run's ``marks.jsonl`` records (`ecoq.track`) add up to.

    Returns ``{"units": {unit: count}, "windows": [{"name", "label", "start", "end"}],
    "trackers": [names]}``; records that are not well-formed are skipped.
    """
    units: dict[str, float] = {}
    windows: list[dict[str, str]] = []
    trackers: list[str] = []
    for record in records:
        kind = record.get("kind")
        name = record.get("name")
        if isinstance(name, str) and name not in trackers:
            trackers.append(name)
        if kind == "mark":
            unit, n = record.get("unit"), record.get("n")
            if isinstance(unit, str) and _positive(n):
                units[unit] = units.get(unit, 0.0) + float(n)  # type: ignore[arg-type]
        elif kind == "window":
            label, start, end = record.get("label"), record.get("start"), record.get("t")
            if isinstance(label, str) and isinstance(start, str) and isinstance(end, str):
                windows.append({"name": str(name), "label": label, "start": start, "end": end})
    return {"units": units, "windows": windows, "trackers": trackers}
