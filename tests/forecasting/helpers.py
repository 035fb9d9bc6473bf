"""Helpers for the provider tests: recorded payloads, fake clocks, and a socket guard.

Payloads follow ../shared/docs/providers.md exactly; the WattTime forecast and the UK answers are
real recordings from tests/fixtures (see tests/fixtures/README.md).
"""

import csv
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

WT_BASE = "https://api.watttime.org"
EM_BASE = "https://api.electricitymaps.com"
UK_BASE = "https://api.carbonintensity.org.uk"

WT_USER, WT_PASSWORD, WT_TOKEN = "grid-user-7", "s3cret-Pa55!", "wt-bearer-token-0123456789"
EM_TOKEN = "em-token-abcdef987654"


class FakeTime:
    """A monotonic clock, a wall clock and a sleep that advances both instead of waiting."""

    def __init__(self, now: datetime) -> None:
        self.wall = now
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


def block_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any internet connection attempt fail loudly (respx should have answered)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a test tried to reach the network: {address}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)  # create_connection uses it too


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


# -- WattTime ----------------------------------------------------------------------------------


def wt_fixture_points() -> list[dict[str, Any]]:
    """The recorded 24 h co2_moer forecast: 288 points from 2024-05-28T14:20Z, lbs/MWh."""
    with (FIXTURES / "watttime-moer-forecast-2024-05-28.csv").open(newline="") as f:
        return [
            {"point_time": r["point_time"], "value": float(r["value"])} for r in csv.DictReader(f)
        ]


def wt_answer(
    points: list[dict[str, Any]],
    *,
    region: str = "CAISO_NORTH",
    units: str = "lbs_co2_per_mwh",
    generated_at: str | None = None,
    warnings: list[dict[str, str]] | None = None,
    historical: bool = False,
) -> dict[str, Any]:
    """A `/v3/forecast` (or `/v3/historical`) answer shaped like WattTime's."""
    meta: dict[str, Any] = {
        "data_point_period_seconds": 300,
        "region": region,
        "warnings": warnings or [],
        "signal_type": "co2_moer",
        "model": {"date": "2023-03-01"},
        "units": units,
    }
    if not historical:
        meta["generated_at_period_seconds"] = 300
        meta["generated_at"] = generated_at or (points[0]["point_time"] if points else None)
    else:
        meta["model"]["type"] = "binned_regression"
    return {"data": points, "meta": meta}


# -- Electricity Maps --------------------------------------------------------------------------


def em_point(t: datetime, value: object, *, estimated: bool = False) -> dict[str, Any]:
    return {
        "zone": "DE",
        "carbonIntensity": value,
        "datetime": t.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "updatedAt": "2024-05-28T13:32:21.002Z",
        "createdAt": "2024-05-25T06:20:31.772Z",
        "emissionFactorType": "lifecycle",
        "isEstimated": estimated,
        "estimationMethod": "TIME_SLICER_AVERAGE" if estimated else None,
    }


def em_forecast(start: datetime, values: list[object]) -> dict[str, Any]:
    """A `/v3/carbon-intensity/forecast` answer: hourly points from `start`."""
    return {
        "zone": "DE",
        "forecast": [
            {"carbonIntensity": v, "datetime": (start + timedelta(hours=i)).isoformat()}
            for i, v in enumerate(values)
        ],
        "updatedAt": "2024-05-28T14:00:00.000Z",
    }


def em_history(start: datetime, values: list[object], key: str = "history") -> dict[str, Any]:
    items = [em_point(start + timedelta(hours=i), v) for i, v in enumerate(values)]
    return {"zone": "DE", key: items} if key == "history" else {key: items}


# -- UK Carbon Intensity -----------------------------------------------------------------------


def uk_answer(name: str = "uk.json") -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def uk_points(start: datetime, values: list[object], *, actual: bool = False) -> dict[str, Any]:
    """A national answer with half-hourly `values` from `start` (`actual` = the same values)."""
    fmt = "%Y-%m-%dT%H:%MZ"
    data = []
    for i, v in enumerate(values):
        t = start + timedelta(minutes=30 * i)
        intensity: dict[str, Any] = {"forecast": v, "actual": v if actual else None}
        intensity["index"] = "moderate"
        data.append(
            {
                "from": t.strftime(fmt),
                "to": (t + timedelta(minutes=30)).strftime(fmt),
                "intensity": intensity,
            }
        )
    return {"data": data}


def all_records_text(records: Iterator[Any] | list[Any]) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in records)
