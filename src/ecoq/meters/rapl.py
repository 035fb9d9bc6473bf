"""CPU package energy from RAPL, read straight from the powercap sysfs tree.

Layout (``/sys/class/powercap``, the root is configurable for tests and containers): each
top-level zone ``intel-rapl:N`` (also used by the kernel for AMD Zen's RAPL, and
``intel-rapl-mmio:N``) holds ``name``, ``energy_uj`` and ``max_energy_range_uj``. Only package
zones (``name`` = ``package-N``) are read. Sub-zones (``intel-rapl:N:M``: core, uncore, dram) are
skipped: core and uncore are parts of the package and would count twice, and DRAM is left to
the RAM estimate so that every machine reports RAM the same way. ``psys`` (the whole platform,
packages included) and an MMIO zone repeating an MSR package's name are skipped for the same
reason.

``energy_uj`` wraps to 0 after ``max_energy_range_uj``. A read after one wrap is corrected; two
wraps between reads cannot be told from one, so reads must be at most `safe_interval_s` apart.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ecoq.errors import MeterUnavailable
from ecoq.meters import MeterDescription

#: Assumed package power when the zone states no limit: above what any package draws.
DEFAULT_MAX_POWER_W = 1000.0
#: Fraction of the time to one full wrap at maximum power that reads may be apart.
SAFETY = 0.5

_ZONE = re.compile(r"^(?P<type>[\w-]*rapl[\w-]*):(?P<n>\d+)$")
_LIMIT = re.compile(r"^constraint_\d+_(max_power|power_limit)_uw$")


def _fix(path: Path) -> str:
    return (
        f"cannot read {path}: permission denied. Since Linux 5.10 the RAPL energy counters are "
        "readable by root only (CVE-2020-8694). Fix: run ecoq as root; or let users read them "
        'with a udev rule such as ACTION=="add", SUBSYSTEM=="powercap", '
        'RUN+="/bin/chmod a+r /sys%p/energy_uj" in /etc/udev/rules.d/90-ecoq-rapl.rules, '
        "then `udevadm trigger --subsystem-match=powercap --action=add` (this lets local users "
        "observe the power side channel again); or set meters.rapl = false "
        "(ECOQ_METERS__RAPL=false) to use the estimate"
    )


def _read_int(path: Path) -> int:
    """The integer in a sysfs file.

    Raises:
        MeterUnavailable: unreadable (a permission error names the fix) or not an integer.
    """
    try:
        text = path.read_text()
    except PermissionError as exc:
        raise MeterUnavailable(_fix(path)) from exc
    except OSError as exc:
        raise MeterUnavailable(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return int(text.strip())
    except ValueError as exc:
        raise MeterUnavailable(f"{path} holds {text.strip()!r}, not an integer") from exc


def safe_interval_s(range_uj: int, max_power_w: float | None) -> float:
    """Longest time between reads, in seconds, that lets at most one wrap happen.

    At `max_power_w` the counter runs through its range in ``range_uj / 1e6 / max_power_w`` s;
    reads `SAFETY` times that apart leave room for bursts above the stated limit.
    """
    power_w = max_power_w if max_power_w and max_power_w > 0 else DEFAULT_MAX_POWER_W
    return SAFETY * range_uj / 1e6 / power_w


@dataclass(frozen=True)
class RaplZone:
    """One package domain: its folder, ``name``, counter range (µJ) and max power (W or None)."""

    path: Path
    name: str
    range_uj: int
    max_power_w: float | None

    @property
    def safe_interval_s(self) -> float:
        return safe_interval_s(self.range_uj, self.max_power_w)


def _max_power_w(path: Path) -> float | None:
    """The largest stated power limit of a zone, W (``constraint_*_{max_power,power_limit}_uw``)."""
    best = 0
    for item in path.iterdir():
        if _LIMIT.match(item.name):
            try:
                best = max(best, int(item.read_text().strip()))
            except (OSError, ValueError):
                continue  # limits are optional and some are root-only
    return best / 1e6 if best > 0 else None


def find_packages(root: Path) -> list[RaplZone]:
    """The package zones under the powercap `root`, sub-zones and duplicates left out.

    Raises:
        MeterUnavailable: `root` is missing, holds no package zone, or a package's energy
            counter is unreadable (the message gives the fix).
    """
    if not root.is_dir():
        raise MeterUnavailable(
            f"{root} does not exist, so this machine exposes no RAPL counters (a VM, a container "
            "or a CPU without RAPL); in a container, mount the host's powercap folder and set "
            "meters.powercap_root; or set meters.rapl = false to use the estimate"
        )
    zones: list[tuple[bool, tuple[str, int], str, Path]] = []
    for entry in root.iterdir():
        m = _ZONE.match(entry.name)
        if m is None:
            continue  # a control type folder ("intel-rapl") or a sub-zone ("intel-rapl:0:1")
        try:
            name = (entry / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith("package"):
            zones.append(("mmio" in m["type"], (m["type"], int(m["n"])), name, entry))
    packages: list[RaplZone] = []
    names: set[str] = set()
    for _mmio, _order, name, path in sorted(zones):
        if name in names:
            continue  # intel-rapl-mmio:0 repeats intel-rapl:0
        names.add(name)
        range_uj = _read_int(path / "max_energy_range_uj")
        if range_uj <= 0:
            raise MeterUnavailable(f"{path / 'max_energy_range_uj'} is {range_uj}; expected > 0")
        _read_int(path / "energy_uj")  # fail now, with the fix, rather than at the first sample
        packages.append(RaplZone(path, name, range_uj, _max_power_w(path)))
    if not packages:
        raise MeterUnavailable(
            f"no RAPL package zone under {root} (looked for */name = package-N); "
            "set meters.rapl = false to use the estimate"
        )
    return packages


class RaplMeter:
    """Energy of all CPU packages together, in joules, from RAPL counters, wraps corrected.

    Read it at least every `max_interval_s` seconds (the smallest package's
    `safe_interval_s`): two wraps between reads would lose a whole counter range.
    """

    def __init__(self, zones: Sequence[RaplZone]) -> None:
        if not zones:
            raise MeterUnavailable("RaplMeter needs at least one package zone")
        self.zones = tuple(zones)
        self.max_interval_s = min(z.safe_interval_s for z in self.zones)
        names = ", ".join(z.name for z in self.zones)
        self.description = MeterDescription("cpu", "counter", f"RAPL {names}")
        self._last_uj = [_read_int(z.path / "energy_uj") for z in self.zones]
        self._total_uj = 0

    @classmethod
    def from_root(cls, root: Path) -> "RaplMeter":
        """A meter on every package zone under the powercap `root` (see `find_packages`)."""
        return cls(find_packages(root))

    def energy_j(self) -> float:
        """Joules since the meter was created.

        Raises:
            MeterUnavailable: a counter became unreadable.
        """
        for i, zone in enumerate(self.zones):
            raw_uj = _read_int(zone.path / "energy_uj")
            delta_uj = raw_uj - self._last_uj[i]
            if delta_uj < 0:
                delta_uj += zone.range_uj  # the counter wrapped once since the last read
            self._total_uj += delta_uj
            self._last_uj[i] = raw_uj
        return self._total_uj / 1e6

    def close(self) -> None:
        """Nothing to release."""
