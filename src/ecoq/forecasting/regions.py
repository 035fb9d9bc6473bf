"""Aliases for zones: cloud regions (`aws:eu-central-1`) and cities (`Frankfurt`) -> zone codes.

The map is `data/regions.toml` inside the package (its operator-facing copy is
config/regions.toml; a test keeps them identical). Zone codes are Electricity Maps codes, as the
bundled profiles use. The file is read on first use, not at import.

Lookups ignore case, accents and repeated spaces: `Zurich`, `zürich` and `ZÜRICH` are the same
alias. Cloud regions are written `<cloud>:<region>`; a bare region name (`eu-central-1`) also works
when exactly one zone lists it.
"""

import difflib
import functools
import unicodedata
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from ecoq.errors import ConfigError

__all__ = [
    "CLOUDS",
    "Region",
    "ZoneGroup",
    "close_aliases",
    "list_groups",
    "list_regions",
    "load_groups",
    "load_regions",
    "resolve_alias",
    "resolve_group",
]

CLOUDS = ("aws", "azure", "gcp")
DATA_FILE = "regions.toml"
_KEYS = {"name", "cities", *CLOUDS}


class Region(NamedTuple):
    """One zone of the map: its code, a readable name, and its aliases.

    `aliases` holds the cloud regions as `<cloud>:<region>` (in `CLOUDS` order), then the cities,
    as written in the file.
    """

    zone: str
    name: str
    aliases: tuple[str, ...]


class ZoneGroup(NamedTuple):
    """A named set of zones (`ecoq submit --region europe`): its key, readable name, other
    names, and its zones in file order."""

    key: str
    name: str
    aliases: tuple[str, ...]
    zones: tuple[str, ...]


def fold(text: str) -> str:
    """The lookup key of `text`: no accents, case-folded, single spaces, no spaces around `:`."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = " ".join(plain.casefold().split())
    return ":".join(part.strip() for part in words.split(":"))


def load_regions(path: Path | None = None) -> tuple[Region, ...]:
    """Read and check a regions file (default: the one in the package), sorted by zone.

    Raises:
        ConfigError: the file cannot be read or parsed, a table has an unknown key or a value of
            the wrong type, or one alias names two zones. The message names the file and the fix.
    """
    return _load(path)[0]


def load_groups(path: Path | None = None) -> tuple[ZoneGroup, ...]:
    """The zone groups (``[groups.<key>]``) of a regions file, in file order.

    Raises:
        ConfigError: as `load_regions`; also a group naming a zone the file does not list, or
            a group name or alias used twice.
    """
    return _load(path)[1]


def _load(path: Path | None) -> tuple[tuple[Region, ...], tuple[ZoneGroup, ...]]:
    import tomllib

    where = str(path) if path is not None else f"ecoq's bundled {DATA_FILE}"
    try:
        if path is None:
            text = (
                resources.files("ecoq.forecasting").joinpath("data", DATA_FILE).read_text("utf-8")
            )
        else:
            text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"regions file {where} cannot be read ({exc}); fix or restore it"
        ) from exc
    zones = data.get("zones")
    if not isinstance(zones, dict) or not set(data) <= {"zones", "groups"}:
        raise ConfigError(
            f"regions file {where} must hold only [zones.<CODE>] and [groups.<NAME>] tables"
        )
    regions = [_region(where, code, table) for code, table in sorted(zones.items())]
    _index(where, regions)  # checks that every alias names one zone
    groups = data.get("groups", {})
    if not isinstance(groups, dict):
        raise ConfigError(f"regions file {where}: groups must hold [groups.<NAME>] tables")
    known = {r.zone for r in regions}
    found = tuple(_group(where, key, table, known) for key, table in groups.items())
    names = [fold(n) for g in found for n in (g.key, *g.aliases)]
    if len(set(names)) != len(names):
        raise ConfigError(f"regions file {where}: a group name or alias is used twice")
    return tuple(regions), found


def _group(where: str, key: str, table: object, known: set[str]) -> ZoneGroup:
    at = f"regions file {where}: groups.{key}"
    if not isinstance(table, dict) or not set(table) <= {"name", "aliases", "zones"}:
        raise ConfigError(f"{at} must be a table with name, aliases and zones")
    name, aliases, zones = table.get("name", key), table.get("aliases", []), table.get("zones")
    lists = (aliases, zones)
    if not isinstance(name, str) or not all(
        isinstance(v, list) and all(isinstance(x, str) and x for x in v) for v in lists
    ):
        raise ConfigError(f"{at}: name must be a string, aliases and zones lists of strings")
    assert isinstance(zones, list) and isinstance(aliases, list)
    unknown = [z for z in zones if z not in known]
    if not zones or unknown:
        raise ConfigError(f"{at}: zones must list known zones (unknown: {unknown or 'none'})")
    return ZoneGroup(key, name, tuple(aliases), tuple(zones))


def _region(where: str, code: str, table: object) -> Region:
    if not isinstance(table, dict):
        raise ConfigError(f"regions file {where}: zones.{code} must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(
            f"regions file {where}: zones.{code} has unknown key(s) {', '.join(sorted(unknown))}; "
            f"use {', '.join(sorted(_KEYS))}"
        )
    name = table.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"regions file {where}: zones.{code}.name must be a string")
    aliases: list[str] = []
    for key in (*CLOUDS, "cities"):
        values = table.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(
                f"regions file {where}: zones.{code}.{key} must be a list of non-empty strings"
            )
        aliases += [f"{key}:{v}" if key in CLOUDS else v for v in values]
    return Region(zone=code, name=name, aliases=tuple(aliases))


def _index(where: str, regions: list[Region]) -> dict[str, str]:
    """Folded alias -> zone code, for zone codes, `<cloud>:<region>`s, cities and bare regions.

    Raises:
        ConfigError: an alias (or a zone code) names two zones.
    """
    index: dict[str, str] = {}
    bare: dict[str, set[str]] = {}
    for region in regions:
        for alias in (region.zone, *region.aliases):
            key = fold(alias)
            if index.get(key, region.zone) != region.zone:
                raise ConfigError(
                    f"regions file {where}: {alias!r} names both {index[key]} and {region.zone}; "
                    "keep it in one zone"
                )
            index[key] = region.zone
            cloud, sep, name = key.partition(":")
            if sep and cloud in CLOUDS:
                bare.setdefault(name, set()).add(region.zone)
    for name, zones in bare.items():
        if len(zones) == 1 and name not in index:
            index[name] = next(iter(zones))
    return index


@functools.cache
def _bundled() -> tuple[tuple[Region, ...], dict[str, str]]:
    regions = load_regions()
    return regions, _index(DATA_FILE, list(regions))


@functools.cache
def _bundled_groups() -> dict[str, ZoneGroup]:
    return {fold(n): g for g in load_groups() for n in (g.key, *g.aliases)}


def list_groups() -> list[ZoneGroup]:
    """The bundled zone groups, in file order.

    Raises:
        ConfigError: the bundled file is broken (reinstall ecoq).
    """
    return list(dict.fromkeys(_bundled_groups().values()))


def resolve_group(name: str) -> ZoneGroup | None:
    """The zone group called `name` (its key or an alias, any case: `eu`, `Europe`); else None.

    Raises:
        ConfigError: the bundled file is broken (reinstall ecoq).
    """
    return _bundled_groups().get(fold(name))


def list_regions() -> list[Region]:
    """Every zone of the bundled map with its name and aliases, sorted by zone code.

    Raises:
        ConfigError: the bundled file is broken (reinstall ecoq).
    """
    return list(_bundled()[0])


def resolve_alias(name: str) -> str | None:
    """The zone code for a zone code, `<cloud>:<region>`, bare cloud region or city; else None.

    `resolve_alias("aws:eu-central-1") == resolve_alias("frankfurt") == "DE"`.

    Raises:
        ConfigError: the bundled file is broken (reinstall ecoq).
    """
    return _bundled()[1].get(fold(name))


def close_aliases(name: str, n: int = 3) -> list[tuple[str, str]]:
    """Up to `n` `(alias, zone)` pairs whose alias is spelled like `name`, best first.

    Raises:
        ConfigError: the bundled file is broken (reinstall ecoq).
    """
    regions, _ = _bundled()
    shown = {fold(a): (a, r.zone) for r in regions for a in r.aliases}
    return [shown[k] for k in difflib.get_close_matches(fold(name), list(shown), n=n, cutoff=0.75)]
