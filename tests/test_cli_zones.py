"""`ecoq zones` and zone aliases on the command line (`--zone aws:eu-central-1`)."""

from pathlib import Path

import pytest

from ecoq.forecasting.bundled import zones
from tests.cli_helpers import cli, cli_json, make_script


def test_zones_lists_every_bundled_zone_with_name_and_aliases() -> None:
    result = cli("zones")
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["ZONE", "NAME", "ALIASES"]
    assert [line.split()[0] for line in lines] == zones()
    de = next(line for line in lines if line.startswith("DE "))
    assert "Germany" in de and "aws:eu-central-1" in de and "Frankfurt" in de
    assert "AU-QLD" in lines  # no name or aliases known: the code alone


def test_zones_json() -> None:
    data = cli_json("zones")
    assert [row["zone"] for row in data] == zones()
    assert all(list(row) == ["zone", "name", "aliases"] for row in data)
    by_zone = {row["zone"]: row for row in data}
    assert by_zone["BE"]["name"] == "Belgium"
    assert "gcp:europe-west1" in by_zone["BE"]["aliases"]
    assert by_zone["AU-QLD"] == {"zone": "AU-QLD", "name": None, "aliases": []}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_script(tmp_path)
    return tmp_path


@pytest.mark.parametrize("alias", ["aws:eu-central-1", "frankfurt", "gcp:europe-west3"])
def test_submit_accepts_a_zone_alias(workdir: Path, alias: str) -> None:
    job = cli_json("submit", "job.sh", "--deadline", "12h", "--duration", "1h", "--zone", alias)
    assert job["zone"] == "DE"


def test_unknown_zone_suggests_aliases(workdir: Path) -> None:
    result = cli("submit", "job.sh", "--deadline", "1h", "--zone", "frankfrut")
    assert result.exit_code == 2
    assert "'frankfrut'" in result.output and "Frankfurt (DE)" in result.output
    assert "ecoq zones" in result.output


def test_forecast_accepts_a_zone_alias() -> None:
    data = cli_json("forecast", "--zone", "azure:westeurope", "--hours", "2")
    assert data["zone"] == "NL"
