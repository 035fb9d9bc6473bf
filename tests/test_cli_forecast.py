"""`ecoq forecast --provider P`: each provider through the real CLI, the APIs mocked with respx."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.cli_helpers import cli, cli_json
from tests.forecasting.helpers import (
    EM_BASE,
    EM_TOKEN,
    UK_BASE,
    WT_BASE,
    WT_PASSWORD,
    WT_TOKEN,
    WT_USER,
    block_sockets,
    em_forecast,
    em_history,
    uk_points,
    wt_answer,
)

WT_ENV = {"ECOQ_WATTTIME_USERNAME": WT_USER, "ECOQ_WATTTIME_PASSWORD": WT_PASSWORD}
EM_ENV = {"ECOQ_ELECTRICITYMAPS_TOKEN": EM_TOKEN}


@pytest.fixture(autouse=True)
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    block_sockets(monkeypatch)
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def floor(t: datetime, minutes: int) -> datetime:
    return t.replace(minute=t.minute - t.minute % minutes, second=0, microsecond=0)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_ukgrid_json(router: respx.MockRouter) -> None:
    start = floor(datetime.now(UTC), 30)
    route = router.get(url__regex=rf"^{UK_BASE}/intensity/[0-9T:-]+Z/fw48h$").respond(
        json=uk_points(start, [200 + i for i in range(96)])
    )
    data = cli_json("forecast", "--zone", "GB", "--provider", "ukgrid", "--hours", "2")
    assert route.call_count == 1
    assert (data["zone"], data["source"], data["signal"], data["emission_factor"]) == (
        "GB", "ukgrid", "average", "direct",
    )  # fmt: skip
    assert data["label"] == "UK Carbon Intensity national forecast"
    assert 0 <= data["age_s"] < 60 and data["step_s"] == 1800
    assert [p["g_per_kwh"] for p in data["points"]][:2] == [200, 201]
    assert parse(data["points"][0]["time"]) == start
    assert 4 <= len(data["points"]) <= 5 and data["gaps"] == []


def test_ukgrid_text_for_a_postcode_through_a_configured_mirror(router: respx.MockRouter) -> None:
    start = floor(datetime.now(UTC), 30)
    series = uk_points(start, [134, 140, 150])["data"]
    region = {"regionid": 13, "dnoregion": "UKPN London", "shortname": "London"}
    answer = {"data": {**region, "postcode": "SW1A", "data": series}}
    route = router.get(
        url__regex=r"^http://mirror\.test:8080/ci/regional/intensity/.+/fw48h/postcode/SW1A$"
    ).respond(json=answer)
    env = {"ECOQ_FORECAST__UKGRID__BASE_URL": "http://mirror.test:8080/ci"}
    result = cli("forecast", "--zone", "SW1A 1AA", "--provider", "ukgrid", "--hours", "1", env=env)
    assert result.exit_code == 0, result.output
    assert route.call_count == 1
    first = result.stdout.splitlines()[0]
    assert first.startswith("zone SW1A: UK Carbon Intensity postcode SW1A forecast (ukgrid), ")
    assert "average signal (direct), gCO2eq/kWh" in first and "min ago" in first
    assert "134.0" in result.stdout


def test_watttime(router: respx.MockRouter) -> None:
    start = floor(datetime.now(UTC), 5)
    pts = [
        {"point_time": (start + timedelta(minutes=5 * i)).isoformat(), "value": 1000.0}
        for i in range(288)
    ]
    router.get(f"{WT_BASE}/login").respond(json={"token": WT_TOKEN})
    route = router.get(f"{WT_BASE}/v3/forecast").respond(json=wt_answer(pts))
    data = cli_json("forecast", "--zone", "CAISO_NORTH", "--provider", "watttime", env=WT_ENV)
    assert route.calls.last.request.headers["authorization"] == f"Bearer {WT_TOKEN}"
    assert (data["source"], data["signal"], data["model"]) == ("watttime", "marginal", "2023-03-01")
    assert data["points"][0]["g_per_kwh"] == pytest.approx(453.59237)
    assert len(data["points"]) == 288
    text = cli("forecast", "--zone", "CAISO_NORTH", "--provider", "watttime", env=WT_ENV)
    assert text.exit_code == 0
    assert text.stdout.startswith(
        "zone CAISO_NORTH: WattTime co2_moer forecast (watttime), marginal signal, gCO2eq/kWh"
    )
    for secret in (WT_USER, WT_PASSWORD, WT_TOKEN):
        assert secret not in text.output


def test_electricitymaps_forecast_with_estimates(router: respx.MockRouter) -> None:
    start = floor(datetime.now(UTC), 60)
    answer = em_forecast(start, [300, 310, 320])
    answer["forecast"][1]["isEstimated"] = True
    route = router.get(f"{EM_BASE}/v3/carbon-intensity/forecast").respond(json=answer)
    data = cli_json(
        "forecast", "--zone", "DE", "--provider", "electricitymaps", "--hours", "2", env=EM_ENV
    )
    assert route.calls.last.request.headers["auth-token"] == EM_TOKEN
    assert (data["source"], data["signal"], data["emission_factor"]) == (
        "electricitymaps", "average", "lifecycle",
    )  # fmt: skip
    assert [p["estimated"] for p in data["points"]][:2] == [None, True]
    text = cli(
        "forecast", "--zone", "DE", "--provider", "electricitymaps", "--hours", "2", env=EM_ENV
    )
    assert "(estimated)" in text.stdout


def test_electricitymaps_free_account_says_so(router: respx.MockRouter) -> None:
    hour = floor(datetime.now(UTC), 60)
    router.get(f"{EM_BASE}/v3/carbon-intensity/forecast").respond(
        401, json={"error": "Endpoint not available"}
    )
    router.get(f"{EM_BASE}/v3/carbon-intensity/history").respond(
        json=em_history(hour - timedelta(hours=24), [float(200 + h) for h in range(25)])
    )
    result = cli("forecast", "--zone", "DE", "--provider", "electricitymaps", env=EM_ENV)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "zone DE: electricitymaps history + fallback forecaster (electricitymaps), average signal"
    )


def test_bundled_and_file_providers(tmp_path: Path) -> None:
    data = cli_json("forecast", "--zone", "de", "--provider", "bundled", "--hours", "2")
    assert (data["zone"], data["source"], data["emission_factor"]) == ("DE", "bundled", "lifecycle")
    now = floor(datetime.now(UTC), 60)
    path = tmp_path / "f.json"
    path.write_text(json.dumps([
        {"time": (now + timedelta(hours=h)).isoformat(), "value": 100 + h} for h in range(4)
    ]))  # fmt: skip
    env = {"ECOQ_FORECAST__FILE": str(path)}
    data = cli_json("forecast", "--zone", "X", "--provider", "file", "--hours", "2", env=env)
    assert data["source"] == "file" and data["points"][0]["g_per_kwh"] == 100


@pytest.mark.parametrize(
    ("args", "env", "code", "fragment"),
    [
        (["--provider", "watttime"], {}, 2, "ECOQ_WATTTIME_USERNAME and ECOQ_WATTTIME_PASSWORD"),
        (["--provider", "electricitymaps"], {}, 2, "ECOQ_ELECTRICITYMAPS_TOKEN"),
        (["--provider", "wattime"], {}, 2, "unknown forecast provider 'wattime'"),
        (["--provider", "file"], {}, 2, "forecast.file"),
        (["--provider", "ukgrid", "--zone", "Atlantis"], {}, 2, "not a UK zone"),
    ],
)
def test_provider_usage_errors(
    args: list[str], env: dict[str, str], code: int, fragment: str
) -> None:
    zone = [] if "--zone" in args else ["--zone", "CAISO_NORTH"]
    result = cli("forecast", *zone, *args, env=env)
    assert result.exit_code == code, result.output
    assert fragment in result.stderr


def test_insecure_secrets_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(f'[electricitymaps]\ntoken = "{EM_TOKEN}"\n')
    path.chmod(0o644)
    result = cli("forecast", "--zone", "DE", "--provider", "electricitymaps",
                 env={"ECOQ_SECRETS_FILE": str(path)})  # fmt: skip
    assert result.exit_code == 2
    assert f"chmod 600 {path}" in result.stderr and EM_TOKEN not in result.output


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, json={"error": "no such region"}),
        httpx.ConnectError("connection refused"),
        httpx.Response(200, content=b"<html>"),
    ],
)
def test_provider_faults_exit_1_naming_provider_zone_and_cause(
    router: respx.MockRouter, answer: Any
) -> None:
    router.get(f"{WT_BASE}/login").respond(json={"token": WT_TOKEN})
    router.get(f"{WT_BASE}/v3/forecast").mock(side_effect=[answer])
    result = cli("forecast", "--zone", "CAISO_NORTH", "--provider", "watttime", env=WT_ENV)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: watttime forecast for zone 'CAISO_NORTH' unavailable: ")
    assert WT_TOKEN not in result.output and WT_PASSWORD not in result.output
