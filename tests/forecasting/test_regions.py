"""The zone alias map: cloud regions and cities -> Electricity Maps zone codes."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from ecoq.errors import ConfigError
from ecoq.forecasting import regions
from ecoq.forecasting.bundled import resolve_zone, zones
from ecoq.forecasting.regions import close_aliases, list_regions, load_regions, resolve_alias

REPO = Path(__file__).resolve().parents[2]
OPERATOR_COPY = REPO / "config/regions.toml"
PACKAGED = REPO / "src/ecoq/forecasting/data/regions.toml"
ZONE_GROUPS = REPO.parent / "shared/data/electricitymaps/zone-groups-and-clouds.csv"


def test_operator_copy_is_identical_to_the_packaged_file() -> None:
    assert OPERATOR_COPY.read_bytes() == PACKAGED.read_bytes(), (
        "config/regions.toml and src/ecoq/forecasting/data/regions.toml differ; edit both"
    )


@pytest.mark.parametrize(
    ("alias", "zone"),
    [
        ("aws:eu-central-1", "DE"),
        ("AWS:EU-Central-1", "DE"),
        ("aws : eu-central-1", "DE"),
        ("eu-central-1", "DE"),  # bare region name: only one zone lists it
        ("frankfurt", "DE"),
        ("  Frankfurt ", "DE"),
        ("gcp:europe-west1", "BE"),
        ("azure:westeurope", "NL"),
        ("westeurope", "NL"),
        ("Zurich", "CH"),
        ("ZÜRICH", "CH"),
        ("sao  paulo", "BR-CS"),
        ("gcp:us-central1", "US-MIDW-MISO"),
        ("aws:us-east-1", "US-MIDA-PJM"),
        ("azure:southcentralus", "US-TEX-ERCO"),
        ("de", "DE"),  # zone codes themselves
        ("us-cal-ciso", "US-CAL-CISO"),
    ],
)
def test_resolve_alias(alias: str, zone: str) -> None:
    assert resolve_alias(alias) == zone
    assert resolve_zone(alias) == zone


@pytest.mark.parametrize("name", ["atlantis", "aws:eu-central-9", "", "aws:", "gcp:us-west1"])
def test_unknown_aliases_resolve_to_none(name: str) -> None:
    assert resolve_alias(name) is None


def test_list_regions_rows() -> None:
    rows = list_regions()
    assert [r.zone for r in rows] == sorted(r.zone for r in rows)
    assert set(r.zone for r in rows) <= set(zones())  # every zone has a bundled profile
    de = next(r for r in rows if r.zone == "DE")
    assert de.name == "Germany"
    assert de.aliases[:3] == ("aws:eu-central-1", "azure:germanywestcentral", "azure:germanynorth")
    assert "Frankfurt" in de.aliases
    for row in rows:
        assert row.name
        for alias in row.aliases:  # every alias leads back to its own zone
            assert resolve_alias(alias) == row.zone, alias


@pytest.mark.skipif(not ZONE_GROUPS.exists(), reason="shared data not available")
def test_map_covers_exactly_the_zones_of_the_zone_groups_file() -> None:
    with ZONE_GROUPS.open(encoding="utf-8-sig", newline="") as f:
        codes = {row["zone_code"] for row in csv.DictReader(f) if row["zone_code"]}
    assert {r.zone for r in list_regions()} == codes


def test_close_aliases_suggest_spellings() -> None:
    assert close_aliases("frankfrut") == [("Frankfurt", "DE")]
    assert ("aws:eu-central-1", "DE") in close_aliases("aws:eu-centrl-1")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "regions.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[zones.DE]\ncities = ["Basel"]\n[zones.CH]\ncities = ["basel"]\n',
            "names both CH and DE",
        ),
        ('[zones.DE]\ncities = ["DE-city"]\n[zones.FR]\ncities = ["de"]\n', "names both DE and FR"),
        ('[zones.DE]\nalibaba = ["x"]\n', "unknown key.*alibaba"),
        ('[zones.DE]\naws = "eu-central-1"\n', "zones.DE.aws must be a list"),
        ("[zones.DE]\nname = 3\n", "zones.DE.name must be a string"),
        ("[zones.DE\n", "cannot be read"),
        ("zones = 1\n", r"only \[zones.<CODE>\] and \[groups"),
        ("[regions.DE]\n", r"only \[zones.<CODE>\] and \[groups"),
    ],
)
def test_bad_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_regions(_write(tmp_path, text))


def test_a_bare_region_name_shared_by_two_zones_is_not_an_alias(tmp_path: Path) -> None:
    path = _write(tmp_path, '[zones.A]\naws = ["north-1"]\n[zones.B]\ngcp = ["north-1"]\n')
    index = regions._index(str(path), list(load_regions(path)))
    assert index["aws:north-1"] == "A" and index["gcp:north-1"] == "B"
    assert "north-1" not in index


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.toml cannot be read"):
        load_regions(tmp_path / "missing.toml")


def test_forecasting_modules_import_only_the_stdlib() -> None:
    code = (
        "import sys; import ecoq.forecasting.regions, ecoq.forecasting.fallback; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'pandas', 'sqlalchemy', 'sqlmodel', 'httpx', 'tomllib') "
        "or m.startswith(('ecoq.scheduler', 'ecoq.db', 'ecoq.cli'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_zone_groups_resolve_by_key_or_alias_in_any_case() -> None:
    europe = regions.resolve_group("EU")
    assert europe is not None and europe.key == "europe"
    assert regions.resolve_group("Europe") == europe
    assert {"DE", "FR", "GB", "SE-SE1"} <= set(europe.zones)
    assert "US-CAL-CISO" not in europe.zones
    assert regions.resolve_group("atlantis") is None
    known = {r.zone for r in load_regions()}
    for group in regions.list_groups():
        assert group.zones and set(group.zones) <= known


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[zones.DE]\n[groups.eu]\nzones = ["XX"]\n', r"unknown: \['XX'\]"),
        ("[zones.DE]\n[groups.eu]\nzones = []\n", "must list known zones"),
        ('[zones.DE]\n[groups.eu]\nzones = ["DE"]\ncolour = 1\n', "must be a table with"),
        (
            (
                '[zones.DE]\n[groups.eu]\nzones = ["DE"]\n'
                '[groups.b]\naliases = ["EU"]\nzones = ["DE"]\n'
            ),
            "used twice",
        ),
    ],
)
def test_bad_groups_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        regions.load_groups(_write(tmp_path, text))
