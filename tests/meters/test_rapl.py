"""RaplMeter on fake powercap trees: packages only, wraps, the sampling rule, permission errors."""

import shutil
import tempfile
from pathlib import Path

import pytest

from ecoq.errors import MeterUnavailable
from ecoq.meters.rapl import (
    DEFAULT_MAX_POWER_W,
    SAFETY,
    RaplMeter,
    find_packages,
    safe_interval_s,
)
from ecoq.meters.sampler import Sampler
from tests.meters.fakes import (
    RANGE_UJ,
    FakeClock,
    as_unprivileged,
    laptop_tree,
    set_energy,
    write_zone,
)


def test_reads_packages_only_and_sums_them(tmp_path: Path) -> None:
    zones = laptop_tree(tmp_path)
    packages = find_packages(tmp_path)
    assert [(z.path.name, z.name) for z in packages] == [
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:1", "package-1"),
    ]
    meter = RaplMeter(packages)
    assert meter.description.device == "cpu"
    assert meter.description.method == "counter"
    assert meter.description.detail == "RAPL package-0, package-1"
    assert meter.energy_j() == 0.0
    set_energy(zones["pkg0"], 1_000_000 + 1_500_000)
    set_energy(zones["pkg1"], 3_000_000 + 2_000_000)
    # sub-zones, psys and the MMIO copy of package-0 would all count twice: they are not read
    for name in ("core0", "uncore0", "dram0", "dram1", "psys", "mmio"):
        set_energy(zones[name], 999_000_000)
    assert meter.energy_j() == 3.5
    set_energy(zones["pkg1"], 5_250_000)
    assert meter.energy_j() == 3.75


def test_amd_and_mmio_only_machines(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 10)
    write_zone(tmp_path, "amd-rapl:0", "package-0", 20)  # preferred over the MMIO copy
    write_zone(tmp_path, "amd-rapl:1", "package-1", 30)
    assert [z.path.name for z in find_packages(tmp_path)] == ["amd-rapl:0", "amd-rapl:1"]


def test_one_wrap_between_reads_is_corrected(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "intel-rapl:0", "package-0", 9_000_000, range_uj=10_000_000)
    meter = RaplMeter.from_root(tmp_path)
    set_energy(zone, 500_000)  # 9 J -> wrapped at 10 J -> 0.5 J: 1.5 J used
    assert meter.energy_j() == 1.5
    set_energy(zone, 2_500_000)
    assert meter.energy_j() == 3.5
    set_energy(zone, 2_500_000)
    assert meter.energy_j() == 3.5  # no change, no wrap


def test_safe_interval_from_range_and_max_power(tmp_path: Path) -> None:
    assert safe_interval_s(1_000_000_000, 100.0) == SAFETY * 1000 / 100
    assert safe_interval_s(1_000_000_000, None) == SAFETY * 1000 / DEFAULT_MAX_POWER_W
    assert safe_interval_s(1_000_000_000, 0.0) == SAFETY * 1000 / DEFAULT_MAX_POWER_W
    write_zone(tmp_path, "intel-rapl:0", "package-0", range_uj=RANGE_UJ, max_power_uw=125_000_000)
    write_zone(
        tmp_path, "intel-rapl:1", "package-1", range_uj=1_000_000_000, power_limit_uw=200_000_000
    )
    zones = find_packages(tmp_path)
    assert [z.max_power_w for z in zones] == [125.0, 200.0]
    meter = RaplMeter(zones)
    assert meter.max_interval_s == SAFETY * 1000 / 200  # the smaller of the two packages


def test_sampling_rule_avoids_two_wraps(tmp_path: Path) -> None:
    """A 1000 J counter at its 100 W maximum wraps every 10 s. Sampled every 60 s it would
    lose whole ranges; the sampler reads every 5 s instead and gets every joule."""
    range_uj, power_w = 1_000_000_000, 100
    zone = write_zone(
        tmp_path, "intel-rapl:0", "package-0", 0, range_uj=range_uj, max_power_uw=power_w * 10**6
    )

    def hardware(t_s: float) -> None:  # the counter at time t, at full power
        set_energy(zone, int(power_w * t_s * 10**6) % range_uj)

    naive = RaplMeter.from_root(tmp_path)
    hardware(60)
    assert naive.energy_j() == 0.0  # 6000 J is 6 whole ranges: indistinguishable from none

    hardware(0)
    clock = FakeClock()
    sampler = Sampler([RaplMeter.from_root(tmp_path)], interval_s=60, monotonic=clock, thread=False)
    assert sampler.interval_s == 5.0
    sampler.start()
    while clock.t < 60:
        clock.t += sampler.interval_s
        hardware(clock.t)
        sampler.sample()
    series = sampler.stop()
    assert series.energy_j == 6000.0
    assert list(series.t_s) == [5.0 * i for i in range(13)] + [60.0]


def test_missing_root_says_how_to_go_on(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL counters.*meters.rapl = false"):
        find_packages(tmp_path / "nope")
    (tmp_path / "intel-rapl").mkdir()
    write_zone(tmp_path, "intel-rapl:0:0", "core")
    with pytest.raises(MeterUnavailable, match="no RAPL package zone"):
        find_packages(tmp_path)


def test_malformed_counter(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "intel-rapl:0", "package-0")
    (zone / "energy_uj").write_text("lots\n")
    with pytest.raises(MeterUnavailable, match="'lots', not an integer"):
        find_packages(tmp_path)


def test_unreadable_energy_gives_the_fix() -> None:
    # outside pytest's private tmp folder, so that an unprivileged reader can reach the files
    root = Path(tempfile.mkdtemp(prefix="ecoq-rapl-"))
    try:
        root.chmod(0o755)
        zone = write_zone(root, "intel-rapl:0", "package-0", 5)
        for item in (zone, *zone.iterdir()):
            item.chmod(0o755 if item.is_dir() else 0o444)
        (zone / "energy_uj").chmod(0o400 if zone.stat().st_uid == 0 else 0o000)

        def attempt() -> str:
            try:
                find_packages(root)
            except MeterUnavailable as exc:
                return str(exc)
            return "no error"

        message = as_unprivileged(attempt)
    finally:
        shutil.rmtree(root)
    assert message.startswith(f"cannot read {zone / 'energy_uj'}: permission denied")
    assert "run ecoq as root" in message
    assert "udev rule" in message and 'SUBSYSTEM=="powercap"' in message
    assert "meters.rapl = false" in message


def test_counter_that_becomes_unreadable(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "intel-rapl:0", "package-0", 5)
    meter = RaplMeter.from_root(tmp_path)
    (zone / "energy_uj").unlink()
    with pytest.raises(MeterUnavailable, match="cannot read .*energy_uj"):
        meter.energy_j()
