"""`ecoq meter`: runs the command, reports energy by device and method, passes its exit code
through, and exits 125 when ecoq itself fails (bad usage included)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ecoq.cli import app
from tests.meters.fakes import laptop_tree


@pytest.fixture(autouse=True)
def no_real_counters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests see no RAPL tree and no GPU unless they build one."""
    monkeypatch.setenv("ECOQ_METERS__POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    monkeypatch.setenv("ECOQ_METERS__NVML", "false")


def meter(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["meter", *args], env=env)


def meter_json(*args: str) -> dict[str, Any]:
    result = meter("--json", *args)
    data: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert data["exit_code"] == result.exit_code
    return data


def test_exit_code_and_report_on_stderr() -> None:
    result = meter("--", "sh", "-c", "exit 3")
    assert result.exit_code == 3
    assert result.stdout == ""
    report = result.stderr
    assert "ecoq meter: `sh -c 'exit 3'` exited with 3 after" in report
    assert "cpu" in report and "ram" in report and "estimate" in report and "total" in report
    assert "note: rapl:" in report and "does not exist" in report
    assert "note: nvml: off (meters.nvml = false)" in report
    assert "note: no zone (--zone or site.zone), so no emissions" in report


def test_json_report() -> None:
    data = meter_json("--interval", "0.05", "--", sys.executable, "-c", "sum(range(10**6))")
    assert data["exit_code"] == 0
    assert data["command"][1:] == ["-c", "sum(range(10**6))"]
    assert data["interval_s"] == 0.05
    assert [(d["device"], d["method"]) for d in data["devices"]] == [
        ("cpu", "estimate"),
        ("ram", "estimate"),
    ]
    assert data["energy_j"] == sum(d["energy_j"] for d in data["devices"])
    assert data["devices"][0]["energy_j"] > 0
    assert data["started_at"].endswith("Z") and data["finished_at"].endswith("Z")
    assert data["duration_s"] > 0
    assert data["zone"] is None and data["emissions_g"] is None


def test_emissions_at_the_zones_intensity_now(monkeypatch: pytest.MonkeyPatch) -> None:
    data = meter_json("--zone", "DE", "--", "true")
    assert data["zone"] == "DE"
    assert data["g_per_kwh"] > 0
    assert data["signal"] == "average" and data["intensity_source"] == "typical profile"
    assert data["emissions_g"] == data["energy_j"] / 3.6e6 * data["g_per_kwh"]
    monkeypatch.setenv("ECOQ_SITE__ZONE", "FR")
    assert meter_json("--", "true")["zone"] == "FR"
    assert "gCO2eq at" in meter("--zone", "DE", "--", "true").stderr


def test_rapl_counter_when_readable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    laptop_tree(tmp_path / "powercap")
    monkeypatch.setenv("ECOQ_METERS__POWERCAP_ROOT", str(tmp_path / "powercap"))
    data = meter_json("--", "true")
    cpu = data["devices"][0]
    assert (cpu["device"], cpu["method"]) == ("cpu", "counter")
    assert cpu["detail"].startswith("RAPL package-0, package-1; share of busy CPU time")


@pytest.mark.parametrize(
    "args",
    [
        ["--interval", "abc", "--", "touch", "ran"],
        ["--interval", "0", "--", "touch", "ran"],
        ["--bogus", "--", "touch", "ran"],
        ["--zone", "Atlantis", "--", "touch", "ran"],
        [],
    ],
)
def test_ecoq_failures_exit_125_without_running(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = meter(*args)
    assert result.exit_code == 125, result.output
    assert not (tmp_path / "ran").exists()


def test_bad_configuration_exits_125(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOQ_METERS__INTERVAL_S", "-1")
    result = meter("--", "true")
    assert result.exit_code == 125
    assert "meters.interval_s" in result.stderr


def test_command_that_cannot_start() -> None:
    result = meter("--", "/no/such/command")
    assert result.exit_code == 127
    assert "cannot run '/no/such/command'" in result.stderr


def test_killed_by_a_signal_is_128_plus_n() -> None:
    assert meter("--", "sh", "-c", "kill -TERM $$").exit_code == 128 + 15


def test_options_after_the_command_belong_to_it() -> None:
    data = meter_json("--", "sh", "-c", "exit 4", "--json")
    assert data["command"] == ["sh", "-c", "exit 4", "--json"]
    assert data["exit_code"] == 4


def test_listed_in_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "meter" in result.stdout
    result = meter("--help")
    assert result.exit_code == 0
    assert "125" in result.stdout


def test_real_process_output_comes_first_then_one_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ecoq", "meter", "--json", "--", "sh", "-c", "echo hello; exit 2"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    first, last = out.stdout.splitlines()
    assert first == "hello"
    assert json.loads(last)["exit_code"] == 2
