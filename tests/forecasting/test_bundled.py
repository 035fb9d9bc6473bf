import csv
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ecoq.errors import ConfigError, UnknownZone, UsageError
from ecoq.forecasting import make_provider
from ecoq.forecasting.bundled import BundledProvider, hour_of_week, resolve_zone, zones
from ecoq.forecasting.files import FileProvider

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared/data/electricitymaps/zones-123-2022-hourly-lca.csv"
DATA = REPO / "src/ecoq/forecasting/data/typical_week_2022.csv"


def test_zones_are_the_123_electricity_maps_zones() -> None:
    names = zones()
    assert len(names) == 123
    assert names == sorted(names)
    assert {"DE", "GB", "FR", "US-CAL-CISO", "NO-NO1"} <= set(names)
    assert BundledProvider().zones() == names


def test_hour_of_week_starts_monday_midnight_utc() -> None:
    assert hour_of_week(datetime(2024, 1, 1, 0, 30, tzinfo=UTC)) == 0  # a Monday
    assert hour_of_week(datetime(2024, 1, 7, 23, 59, tzinfo=UTC)) == 167
    berlin = datetime(2024, 1, 1, 1, 30, tzinfo=ZoneInfo("Europe/Berlin"))  # 00:30 UTC
    assert hour_of_week(berlin) == 0


@pytest.mark.skipif(not SOURCE.exists(), reason="shared source data not available")
def test_profile_matches_hand_computation_from_source() -> None:
    # DE, Wednesday 12:00-13:00 UTC (hour of week 2*24+12 = 60): mean of all such 2022 hours.
    with SOURCE.open(newline="") as f:
        reader = csv.DictReader(f)
        values = [
            float(row["DE"])
            for row in reader
            if (t := datetime.fromisoformat(row["datetime_utc"])).weekday() == 2 and t.hour == 12
        ]
    assert len(values) == 52
    expected = sum(values) / len(values)
    start = datetime(2024, 5, 1, 12, 20, tzinfo=UTC)  # a Wednesday
    forecast = BundledProvider().forecast("DE", start, start + timedelta(minutes=10))
    assert forecast.points[0].start == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert forecast.points[0].g_per_kwh == pytest.approx(expected, abs=0.05)


@pytest.mark.skipif(not SOURCE.exists(), reason="shared source data not available")
def test_generator_is_deterministic_and_matches_bundled_file(tmp_path: Path) -> None:
    out = tmp_path / "profiles.csv"
    subprocess.run(
        [sys.executable, str(REPO / "tools/make_typical_profiles.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == DATA.read_bytes()


def test_forecast_shape_and_metadata() -> None:
    start = datetime(2024, 3, 10, 22, 45, tzinfo=UTC)  # Sunday 22:45: wraps into Monday
    end = start + timedelta(hours=3)
    forecast = BundledProvider().forecast("de", start, end)
    assert forecast.zone == "DE"
    assert (forecast.signal, forecast.source, forecast.label) == (
        "average",
        "bundled",
        "typical profile",
    )
    assert forecast.issued_at == start
    assert forecast.step == timedelta(hours=1)
    assert forecast.points[0].start == datetime(2024, 3, 10, 22, tzinfo=UTC)
    assert len(forecast.points) == 4  # 22:00, 23:00, 00:00, 01:00 cover [22:45, 01:45)
    assert forecast.end >= end
    assert all(p.start.tzinfo is not None for p in forecast.points)
    # The profile repeats weekly: Monday 00:00 is hour 0, Sunday 23:00 hour 167.
    monday = datetime(2024, 3, 4, tzinfo=UTC)
    week = BundledProvider().forecast("DE", monday, monday + timedelta(days=7))
    assert forecast.points[2].g_per_kwh == week.points[0].g_per_kwh
    assert forecast.points[1].g_per_kwh == week.points[167].g_per_kwh


def test_forecast_of_any_length_repeats_the_week() -> None:
    start = datetime(2025, 1, 6, tzinfo=UTC)  # Monday
    forecast = BundledProvider().forecast("FR", start, start + timedelta(days=21))
    assert len(forecast.points) == 21 * 24
    values = [p.g_per_kwh for p in forecast.points]
    assert values[:168] == values[168:336] == values[336:]
    assert all(math.isfinite(v) and v >= 0 for v in values)


def test_value_at_follows_interval_rule() -> None:
    start = datetime(2025, 1, 6, 5, tzinfo=UTC)
    forecast = BundledProvider().forecast("ES", start, start + timedelta(hours=2))
    assert forecast.value_at(start + timedelta(minutes=59)) == forecast.points[0].g_per_kwh
    assert forecast.value_at(start + timedelta(hours=1)) == forecast.points[1].g_per_kwh


def test_resolve_zone_accepts_case_insensitive_exact_match() -> None:
    assert resolve_zone("DE") == "DE"
    assert resolve_zone("de") == "DE"
    assert resolve_zone("us-cal-ciso") == "US-CAL-CISO"


def test_unknown_zone_lists_close_matches_and_the_fix() -> None:
    with pytest.raises(UnknownZone) as info:
        BundledProvider().forecast(
            "US-CAL-CIS", datetime(2025, 1, 1, tzinfo=UTC), datetime.now(UTC)
        )
    message = str(info.value)
    assert "'US-CAL-CIS'" in message
    assert "US-CAL-CISO" in message
    assert "ecoq zones" in message
    assert isinstance(info.value, UsageError)


def test_unknown_zone_without_close_matches() -> None:
    with pytest.raises(UnknownZone, match="'Atlantis'.*ecoq zones"):
        resolve_zone("Atlantis")


def test_make_provider() -> None:
    assert isinstance(make_provider("bundled"), BundledProvider)
    provider = make_provider("file", file=Path("/tmp/x.csv"))
    assert isinstance(provider, FileProvider)
    assert provider.name == "file"
    with pytest.raises(ConfigError, match="forecast.file"):
        make_provider("file")
    with pytest.raises(ConfigError, match="'wattime'.*'bundled', 'file', 'watttime'"):
        make_provider("wattime")


def test_import_is_cheap() -> None:
    code = (
        "import sys, ecoq.forecasting, ecoq.forecasting.bundled, ecoq.forecasting.files, "
        "ecoq.forecasting.secrets, ecoq.forecasting.validation; "
        "heavy = {'pandas', 'numpy', 'httpx'} & set(sys.modules); "
        "assert not heavy, heavy; "
        "from ecoq.forecasting import bundled; "
        "assert bundled._profiles.cache_info().currsize == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
