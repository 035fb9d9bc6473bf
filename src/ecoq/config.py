"""Settings: defaults < TOML file < ``ECOQ_<SECTION>__<KEY>`` environment < CLI overrides.

`load_settings` is called once at the CLI edge and its `Settings` passed down. Only the standard
library is imported (``tomllib`` only when a file is read) so the CLI starts fast. Credentials never
live here: see `CREDENTIAL_ENV_VARS`.
"""

import dataclasses
import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, cast, get_args, get_origin

from ecoq.errors import ConfigError
from ecoq.site_config import SiteConfig, parse_sites

#: Credential variables: read from the environment (or a secrets file) only, and stripped from the
#: environment of every job ecoq starts.
CREDENTIAL_ENV_VARS: frozenset[str] = frozenset(
    {"ECOQ_WATTTIME_USERNAME", "ECOQ_WATTTIME_PASSWORD", "ECOQ_ELECTRICITYMAPS_TOKEN"}
)
#: ``ECOQ_*`` variables that are not ``ECOQ_<SECTION>__<KEY>`` settings, never reported as unknown:
#: the credentials, the config file, the alias of ECOQ_DATABASE__URL, the id set in each job's
#: environment, the 0600 credentials file, and the test suite's PostgreSQL.
KNOWN_ENV_VARS: frozenset[str] = CREDENTIAL_ENV_VARS | {
    *("ECOQ_CONFIG", "ECOQ_DATABASE_URL", "ECOQ_JOB_ID", "ECOQ_SECRETS_FILE", "ECOQ_TEST_PG_URL")
}

Averaging = Literal["interval", "trapezoid"]
FailPolicy = Literal["now", "latest"]
ProviderName = Literal["bundled", "file", "watttime", "electricitymaps", "ukgrid"]
WattTimeSignal = Literal["co2_moer", "co2_aoer"]
EmissionFactor = Literal["lifecycle", "direct"]

_URL_PASSWORD = re.compile(r"^([\w+.-]+://[^:/@?#]*):.*@")  # greedy: over-redact, never leak
#: libpq also takes the password as a query parameter: ``postgresql://u@h/db?password=...``
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pass|pwd)=)[^&#]*", re.IGNORECASE)


def job_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A job's environment from its submitter's `environ`: without ecoq's credential variables,
    and without ecoq's database URL when it holds a password (a job that runs ecoq itself can
    take the password from ``~/.pgpass``)."""
    return {
        k: v
        for k, v in environ.items()
        if k not in CREDENTIAL_ENV_VARS and not (k in _DATABASE_ENV_VARS and redact_url(v) != v)
    }


_DATABASE_ENV_VARS = frozenset({"ECOQ_DATABASE_URL", "ECOQ_DATABASE__URL"})


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by ``***`` (``postgresql://user:***@host/db``,
    ``...?password=***``)."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", url))


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  #: any SQLAlchemy URL; "" = sqlite file ``<data_dir>/ecoq.db``

    def __repr__(self) -> str:  # never leak the password into logs or tracebacks
        return f"DatabaseSettings(url={redact_url(self.url)!r})"


@dataclass(frozen=True)
class PathsSettings:
    data_dir: str = ""  #: "" = ``$XDG_DATA_HOME/ecoq`` or ``~/.local/share/ecoq``


@dataclass(frozen=True)
class SiteSettings:
    name: str = ""  #: "" = the host name
    zone: str = ""  #: default zone for jobs; "" = none, jobs must pass --zone
    gpus: int = -1  #: -1 = detect with NVML (0 when NVML is missing); >= 0 = this many
    max_jobs: int = 0  #: most jobs running at once on this site; 0 = no limit beyond GPUs
    pue: float = 1.0  #: this site's PUE (>= 1) for planning across sites
    idle_w_per_gpu: float = 50.0  #: watts a stopped (SIGSTOP) job's GPU still draws


@dataclass(frozen=True)
class PlannerSettings:
    min_saving: float = 0.02  #: fraction 0..1; a job runs now when the saving is smaller
    default_duration_s: int = 3600  #: seconds; used when a job gives no --duration
    averaging: Averaging = "interval"  #: how forecast values are averaged over a window
    fail_policy: FailPolicy = "now"  #: with no forecast at all: start now, or at latest start


@dataclass(frozen=True)
class WattTimeSettings:
    base_url: str = "https://api.watttime.org"  #: the API root, without /v3
    timeout_s: float = 10.0  #: seconds per connect and per read
    signal_type: WattTimeSignal = "co2_moer"  #: co2_moer = marginal; co2_aoer = average


@dataclass(frozen=True)
class ElectricityMapsSettings:
    base_url: str = "https://api.electricitymaps.com"  #: the API root, without /v3
    timeout_s: float = 10.0  #: seconds per connect and per read
    emission_factor: EmissionFactor = "lifecycle"  #: emissionFactorType: lifecycle or direct


@dataclass(frozen=True)
class UKGridSettings:
    base_url: str = "https://api.carbonintensity.org.uk"  #: the API root
    timeout_s: float = 10.0  #: seconds per connect and per read


@dataclass(frozen=True)
class ForecastSettings:
    #: the zone's providers in order, comma-separated, all of one signal type
    provider: str = "bundled"
    file: str = ""  #: forecast file for provider "file"
    max_age_s: int = 21600  #: seconds after which a cached forecast is stale
    refresh_interval_s: int = 1800  #: seconds between forecast refreshes in the daemon
    #: nested tables [forecast.watttime], [forecast.electricitymaps], [forecast.ukgrid]
    watttime: WattTimeSettings = field(default_factory=WattTimeSettings)
    electricitymaps: ElectricityMapsSettings = field(default_factory=ElectricityMapsSettings)
    ukgrid: UKGridSettings = field(default_factory=UKGridSettings)


@dataclass(frozen=True)
class DaemonSettings:
    tick_interval_s: float = 5.0  #: seconds between daemon ticks
    kill_grace_s: float = 30.0  #: seconds from SIGTERM to SIGKILL (cancelled jobs, cold stop)
    stale_after_s: float = 300.0  #: another daemon silent this long is lost (many boxes)


@dataclass(frozen=True)
class MetersSettings:
    """``[meters]``; the defaults equal `ecoq.meters.MeterDefaults` (a test keeps them so)."""

    rapl: bool = True  #: read RAPL CPU counters when readable (false: CPU estimate)
    nvml: bool = True  #: meter the job's NVIDIA GPUs through NVML
    powercap_root: str = "/sys/class/powercap"  #: where RAPL's powercap tree is
    interval_s: float = 5.0  #: seconds between samples of a running job
    cpu_watts: float = 0.0  #: CPU watts at full load for the estimate; 0 = from the TDP table
    ram_w_per_gb: float = 0.375  #: W per GB of resident memory for the estimate; 0 = no RAM
    nvml_power_interval_s: float = 0.1  #: seconds between power samples (GPUs without counter)


@dataclass(frozen=True)
class AccountingSettings:
    """``[accounting]``: how runs' emissions are computed (`ecoq.accounting`)."""

    pue: float = 1.0  #: facility energy / IT energy (>= 1), applied to every run's energy
    finalize_after_s: int = 604800  #: seconds after a run's end when forecast figures are final
    embodied_g_per_gpu_hour: float = 0.0  #: SCI's M per GPU a run holds, g/hour; 0 = unset
    embodied_g_per_host_hour: float = 0.0  #: SCI's M, the host's share per run, g/hour; 0 = unset


@dataclass(frozen=True)
class SharedSettings:
    """``[shared]``: a shared box, where a root daemon serves every user (docs/shared-box.md)."""

    #: the daemon's Unix socket; "" = personal mode (no socket). Set: `ecoq daemon` (as root)
    #: listens there, and users' ecoq commands go through it
    socket: str = ""
    #: who may see and change every user's jobs: user names, uids and @groups, comma-separated
    admins: str = ""
    allow_root_jobs: bool = False  #: whether jobs submitted by root may run (as root)


@dataclass(frozen=True)
class RetentionSettings:
    """``[retention]``: how long the daemon keeps what grows (`ecoq.scheduler.retention`)."""

    forecasts_days: int = 30  #: days a stored forecast is kept after its span ends; 0 = forever
    realized_days: int = 90  #: days realized intensity values are kept; 0 = forever, else >= 64
    samples_days: int = 30  #: days a finished run keeps its energy series as sampled; 0 = forever
    samples_step_s: int = 300  #: seconds between the samples kept after samples_days
    run_logs_days: int = 90  #: days a finished job keeps its run folders (output); 0 = forever
    jobs_days: int = 0  #: days finished jobs (and their runs) are kept; 0 = forever


#: Section name -> its dataclass; the fields of each are the section's keys, in documented order.
SECTIONS: Mapping[str, type[Any]] = {
    "database": DatabaseSettings,
    "paths": PathsSettings,
    "site": SiteSettings,
    "planner": PlannerSettings,
    "forecast": ForecastSettings,
    "daemon": DaemonSettings,
    "meters": MetersSettings,
    "accounting": AccountingSettings,
    "shared": SharedSettings,
    "retention": RetentionSettings,
}


@dataclass(frozen=True)
class Settings:
    """Effective settings. Build with `load_settings`; ``Settings()`` is all defaults."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    paths: PathsSettings = field(default_factory=PathsSettings)
    site: SiteSettings = field(default_factory=SiteSettings)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    meters: MetersSettings = field(default_factory=MetersSettings)
    accounting: AccountingSettings = field(default_factory=AccountingSettings)
    shared: SharedSettings = field(default_factory=SharedSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    #: the ``[[sites]]`` of the config file (`ecoq.site_config`); empty: this box alone
    sites: tuple[SiteConfig, ...] = ()
    #: "section.key" -> "default" | "file <path>:<line>" | "env ECOQ_X" | "cli <flag or key>"
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)
    config_file: Path | None = None  #: the TOML file read, if any
    #: data dir used when paths.data_dir is "" (from the environment given to load_settings);
    #: None = computed from os.environ.
    fallback_data_dir: Path | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        """The data directory: ``paths.data_dir`` with ``~`` expanded, else the XDG default."""
        if self.paths.data_dir:
            return Path(os.path.expanduser(self.paths.data_dir))
        return self.fallback_data_dir or default_data_dir(os.environ)

    @property
    def database_url(self) -> str:
        """``database.url``, or ``sqlite:///<data_dir>/ecoq.db`` when empty. May hold a password."""
        return self.database.url or f"sqlite:///{self.data_dir / 'ecoq.db'}"

    @property
    def site_name(self) -> str:
        """``site.name``, or this machine's host name when empty."""
        import socket  # only needed here

        return self.site.name or socket.gethostname()


@dataclass(frozen=True)
class _Key:
    dotted: str  # "section.key" or "section.table.key"
    section: str  # the table holding the key: "section" or "section.table"
    name: str
    type: type[Any]  # int, float, bool or str
    default: Any
    choices: tuple[str, ...]  # for Literal fields


def _is_table(typ: object) -> bool:
    """Whether a field's type is a nested table (a settings dataclass), like forecast.watttime."""
    return isinstance(typ, type) and dataclasses.is_dataclass(typ)


def _table_keys(section: str, cls: type[Any], keys: dict[str, _Key]) -> None:
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}"
        if _is_table(f.type):
            _table_keys(dotted, cast(type[Any], f.type), keys)
            continue
        literal = get_origin(f.type) is Literal
        typ = str if literal else cast(type[Any], f.type)
        choices = get_args(f.type) if literal else ()
        keys[dotted] = _Key(dotted, section, f.name, typ, f.default, choices)


@functools.cache
def _schema() -> dict[str, _Key]:
    keys: dict[str, _Key] = {}
    for section, cls in SECTIONS.items():
        _table_keys(section, cls, keys)
    return keys


def all_keys() -> list[str]:
    """Every setting as a dotted key (``planner.min_saving``, ``forecast.watttime.base_url``)."""
    return list(_schema())


def setting_value(settings: "Settings", key: str) -> Any:
    """The value of dotted `key` in `settings`."""
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


#: The most GPUs or jobs a site may count: more is no real machine, and the daemon loops over them
_MAX_COUNT = 1_000_000
#: Range checks: "section.key" -> (predicate, what is expected).
_LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "site.gpus": (
        lambda v: -1 <= v <= _MAX_COUNT,
        f"an integer >= -1 and at most {_MAX_COUNT:,} (-1 = detect, 0 or more = that many GPUs)",
    ),
    "planner.min_saving": (lambda v: 0 <= v <= 1, "a fraction between 0 and 1 (0.02 = 2 %)"),
    "planner.default_duration_s": (lambda v: v > 0, "a number of seconds > 0"),
    "forecast.max_age_s": (lambda v: v > 0, "a number of seconds > 0"),
    "forecast.refresh_interval_s": (lambda v: v > 0, "a number of seconds > 0"),
    "forecast.watttime.timeout_s": (lambda v: v > 0, "a number of seconds > 0"),
    "forecast.electricitymaps.timeout_s": (lambda v: v > 0, "a number of seconds > 0"),
    "forecast.ukgrid.timeout_s": (lambda v: v > 0, "a number of seconds > 0"),
    "daemon.tick_interval_s": (lambda v: v > 0, "a number of seconds > 0"),
    "daemon.kill_grace_s": (lambda v: v >= 0, "a number of seconds >= 0"),
    "daemon.stale_after_s": (lambda v: v > 0, "a number of seconds > 0"),
    "site.max_jobs": (
        lambda v: 0 <= v <= _MAX_COUNT,
        f"an integer >= 0 and at most {_MAX_COUNT:,} (0 = no limit beyond the GPUs)",
    ),
    "site.pue": (lambda v: v >= 1, "a number >= 1 (1.0 = no facility overhead)"),
    "site.idle_w_per_gpu": (lambda v: v >= 0, "a number of watts >= 0"),
    "meters.interval_s": (lambda v: v > 0, "a number of seconds > 0"),
    "meters.cpu_watts": (lambda v: v >= 0, "a number of watts >= 0 (0 = from the TDP table)"),
    "meters.ram_w_per_gb": (lambda v: v >= 0, "a number of W per GB >= 0 (0 = no RAM estimate)"),
    "meters.nvml_power_interval_s": (lambda v: v > 0, "a number of seconds > 0"),
    "accounting.pue": (lambda v: v >= 1, "a number >= 1 (1.0 = no facility overhead)"),
    "accounting.finalize_after_s": (lambda v: v >= 0, "a number of seconds >= 0"),
    "accounting.embodied_g_per_gpu_hour": (lambda v: v >= 0, "grams per hour >= 0 (0 = unset)"),
    "accounting.embodied_g_per_host_hour": (lambda v: v >= 0, "grams per hour >= 0 (0 = unset)"),
    "retention.forecasts_days": (lambda v: v >= 0, "a number of days >= 0 (0 = keep forever)"),
    "retention.realized_days": (
        lambda v: v == 0 or v >= 64,
        "0 (keep forever) or a number of days >= 64 (the fallback forecaster reads 63 days)",
    ),
    "retention.samples_days": (lambda v: v >= 0, "a number of days >= 0 (0 = keep forever)"),
    "retention.samples_step_s": (lambda v: v > 0, "a number of seconds > 0"),
    "retention.run_logs_days": (lambda v: v >= 0, "a number of days >= 0 (0 = keep forever)"),
    "retention.jobs_days": (lambda v: v >= 0, "a number of days >= 0 (0 = keep forever)"),
}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}
#: The most any ``*_s`` setting may be: more overflows Python's timedelta and sleep.
_MAX_SECONDS = 3660 * 86400


def env_var_name(key: str) -> str:
    """The environment variable for ``"section.key"``: ``ECOQ_SECTION__KEY`` (nested tables add
    a part: ``forecast.watttime.base_url`` -> ``ECOQ_FORECAST__WATTTIME__BASE_URL``)."""
    return "ECOQ_" + "__".join(part.upper() for part in key.split("."))


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var, "")  # the XDG spec says to ignore relative values
    return Path(value) if os.path.isabs(value) else _home(env) / fallback


def user_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/ecoq/ecoq.toml``, or ``~/.config/ecoq/ecoq.toml`` (may not exist)."""
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "ecoq" / "ecoq.toml"


def default_data_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/ecoq``, or ``~/.local/share/ecoq`` (may not exist)."""
    return _xdg(env, "XDG_DATA_HOME", ".local/share") / "ecoq"


def _expand_home(path: str, env: Mapping[str, str]) -> str:
    if path == "~" or path.startswith("~/"):
        return str(_home(env)) + path[1:]
    return os.path.expanduser(path)  # ~user, or unchanged


def _show(key: str, value: object) -> str:
    return repr(redact_url(value) if key == "database.url" and isinstance(value, str) else value)


def _suggest(name: str, candidates: list[str]) -> str:
    """``"did you mean X? "`` for the candidates close to `name` (ignoring case), else ``""``."""
    lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(lower[c] for c in close)}? " if close else ""


@dataclass(frozen=True)
class _Origin:
    """Where a value came from: its `source` string and how to tell the user to fix it."""

    source: str
    where: str  # "/etc/ecoq.toml:12", "environment variable ECOQ_X", "--min-saving"
    fix: str  # "edit /etc/ecoq.toml line 12"
    coerce: bool = True  # strings are parsed (env, CLI); TOML values have real types


_Layer = dict[str, tuple[object, _Origin]]  # "section.key" -> (raw value, where it came from)


def _check(key: _Key, value: object, origin: _Origin) -> object:
    """Return `value` converted to `key`'s type and validated.

    Strings are coerced when `origin.coerce`: int, float, bool ("true"/"false"/"1"/"0"), str.

    Raises:
        ConfigError: wrong type, not finite, not a valid choice or out of range.
    """

    def fail(problem: str, expected: str) -> NoReturn:
        raise ConfigError(
            f"{origin.where}: {key.dotted} = {_show(key.dotted, value)} {problem}; "
            f"expected {expected}. Fix: {origin.fix}."
        )

    expected = _TYPE_NAMES[key.type]
    if isinstance(value, os.PathLike) and key.type is str:
        value = os.fspath(value)
    converted: object = value
    if isinstance(value, str) and key.type is not str and origin.coerce:
        text = value.strip().lower()
        bools = {"true": True, "1": True, "false": False, "0": False}
        try:
            converted = bools[text] if key.type is bool else key.type(text)
        except (KeyError, ValueError):
            hint = ' ("true", "false", "1" or "0")' if key.type is bool else ""
            fail("cannot be read as " + expected, expected + hint)
    elif key.type is float and isinstance(value, int | float) and not isinstance(value, bool):
        converted = float(value)
    elif not isinstance(value, key.type) or (key.type is int and isinstance(value, bool)):
        names = {**_TYPE_NAMES, float: "a float", dict: "a table", list: "an array"}
        fail(f"is {names.get(type(value), type(value).__name__)}", expected)
    if isinstance(converted, float) and not math.isfinite(converted):
        fail("is not finite", expected)
    if key.choices and converted not in key.choices:
        fail("is not a valid choice", "one of " + ", ".join(map(repr, key.choices)))
    limit = _LIMITS.get(key.dotted)
    if limit is not None and not limit[0](cast(float, converted)):
        fail("is out of range", limit[1])
    if key.dotted.endswith("_s") and cast(float, converted) > _MAX_SECONDS:
        fail("is out of range", f"at most {_MAX_SECONDS:,} seconds (10 years)")
    if key.type is int and abs(cast(int, converted)) > 2**31 - 1:  # SQL INTEGER, C int
        fail("is out of range", "an integer of at most 2,147,483,647")
    if isinstance(converted, str) and "\x00" in converted:  # no path or URL may hold one
        fail("holds a NUL character", expected + " without NUL characters")
    return converted


def _key_lines(text: str) -> dict[str, int]:
    """Map each dotted key path and table header in TOML `text` to its first line (1-based)."""
    lines: dict[str, int] = {}
    table: list[str] = []
    part = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
    path = rf"{part}(?:\s*\.\s*{part})*"
    header = re.compile(rf"^\s*\[\[?\s*({path})\s*\]")  # [table] or [[array of tables]]
    assign = re.compile(rf"^\s*({path})\s*=")

    def key(raw: str) -> str:
        if raw.startswith('"'):  # a basic string: its escapes (\u001f, \") mean characters
            try:
                return str(json.loads(raw))
            except ValueError:  # TOML's \UXXXXXXXX, unknown to JSON: near enough
                pass
        return raw.strip("\"'")

    def split(dotted: str) -> list[str]:
        return [key(p.strip()) for p in re.findall(part, dotted)]

    # TOML ends lines with \n only; splitlines() would also split at \x85, \u2028, \x0c...
    for number, line in enumerate(text.split("\n"), start=1):
        if m := header.match(line):
            table = split(m.group(1))
            lines.setdefault(".".join(table), number)
        elif m := assign.match(line):
            lines.setdefault(".".join(table + split(m.group(1))), number)
    return lines


def _find_file(config_file: Path | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The config file to read and what named it. Raises ConfigError if a named one is missing."""
    if config_file is not None:
        path, given_by = Path(_expand_home(str(config_file), env)), "--config"
        fix = "correct the path given to --config"
    elif env.get("ECOQ_CONFIG"):
        path, given_by = Path(_expand_home(env["ECOQ_CONFIG"], env)), "ECOQ_CONFIG"
        fix = "correct ECOQ_CONFIG or unset it"
    else:
        path = user_config_path(env)
        return (path, "the user config file") if path.exists() else (None, "")
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system
        msg = f"config file {path} (from {given_by}): {exc.strerror}. Fix: {fix}."
        raise ConfigError(msg) from None
    if not exists:
        raise ConfigError(f"config file {path} (from {given_by}) does not exist. Fix: {fix}.")
    return path, given_by


def _file_values(path: Path, given_by: str, errors: list[str], sites: list[SiteConfig]) -> _Layer:
    """Read the TOML file at `path`; its ``[[sites]]`` go to `sites`. Raises ConfigError when
    it is unreadable or malformed."""
    schema = _schema()
    import tomllib  # only when a file is actually read

    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a BOM some editors write
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read config file {path} (from {given_by}): {exc}. "
            "Fix: make it a readable UTF-8 TOML file, or point to another one."
        ) from exc
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # Recursion: arrays nested deep
        raise ConfigError(
            f"{path}: invalid TOML: {exc}. Fix the syntax there "
            "(see config/ecoq.example.toml for every key)."
        ) from exc
    lines: dict[str, int] = _key_lines(text)
    values: _Layer = {}

    def origin(dotted: str) -> _Origin:
        # A key of an inline table (`planner = {min_saving = 2}`) has no line: its table's.
        parts = dotted.split(".")
        found = (lines.get(".".join(parts[:n])) for n in range(len(parts), 0, -1))
        line = next((n for n in found if n), None)
        at = f"{path}:{line}" if line else str(path)
        fix = f"edit {path}" + (f" line {line}" if line else "")
        return _Origin(f"file {at}", at, fix, coerce=False)

    for section, table in data.items():
        if section == "sites":
            sites.extend(parse_sites(table, str(path), text, errors))
            continue
        if section not in SECTIONS or not isinstance(table, dict):
            o = origin(section)
            homes = [f"[{k.section}] {k.name}" for k in schema.values() if k.name == section]
            hint = f"did you mean {' or '.join(homes)}? " if homes else ""
            if section in SECTIONS:  # `[[planner]]` or `planner = 1`
                hint = f"[{section}] must be one table, not an array of tables or a value; "
            hint = hint or _suggest(section, list(SECTIONS))
            errors.append(
                f"{o.where}: {section!r} is not a section; {hint}sections are tables "
                f"[{'], ['.join(SECTIONS)}] holding keys. Fix: {o.fix}."
            )
            continue
        _table_values(section, table, schema, origin, values, errors)
    return values


def _table_values(
    section: str,
    table: dict[str, Any],
    schema: dict[str, _Key],
    origin: Callable[[str], "_Origin"],
    values: _Layer,
    errors: list[str],
) -> None:
    """Collect the keys of TOML `table` ([section], or a nested [section.table]) into `values`."""
    tables = {k.section for k in schema.values()}
    for name, value in table.items():
        dotted = f"{section}.{name}"
        o = origin(dotted)
        if dotted in schema:
            values[dotted] = (value, o)
        elif dotted in tables and isinstance(value, dict):
            _table_values(dotted, value, schema, origin, values, errors)
        elif dotted in tables:
            errors.append(
                f"{o.where}: {dotted} must be a table [{dotted}] holding keys. Fix: {o.fix}."
            )
        else:
            valid = ", ".join(k.name for k in schema.values() if k.section == section)
            nested = sorted(t for t in tables if t.rpartition(".")[0] == section)
            also = f"; tables {', '.join(f'[{t}]' for t in nested)}" if nested else ""
            errors.append(
                f"{o.where}: unknown key {name!r} in [{section}]; "
                f"{_suggest(dotted, list(schema))}valid keys are {valid}{also}. Fix: {o.fix}."
            )


def _env_values(env: Mapping[str, str], errors: list[str]) -> _Layer:
    schema = _schema()
    values: _Layer = {}

    def origin(var: str) -> _Origin:
        return _Origin(f"env {var}", f"environment variable {var}", f"change or unset {var}")

    if "ECOQ_DATABASE_URL" in env:
        values["database.url"] = (env["ECOQ_DATABASE_URL"], origin("ECOQ_DATABASE_URL"))
    names = {env_var_name(k): k for k in schema}
    for var in sorted(env):
        if not var.startswith("ECOQ_") or var in KNOWN_ENV_VARS or "__" not in var:
            continue  # other ecoq variables without "__" are not settings
        key = names.get(var.upper())
        if key is None:
            errors.append(
                f"environment variable {var} is not a setting; "
                f"{_suggest(var, list(names))}"
                f"settings are ECOQ_<SECTION>__<KEY> for the keys in config/ecoq.example.toml. "
                f"Fix: rename or unset {var}."
            )
            continue
        values[key] = (env[var], origin(var))  # ECOQ_DATABASE__URL overrides the alias
    return values


def _cli_values(
    overrides: Mapping[str, object], flags: Mapping[str, str], errors: list[str]
) -> _Layer:
    schema = _schema()
    values: _Layer = {}
    for dotted, value in overrides.items():
        if value is None:
            continue  # an option that was not given
        flag = flags.get(dotted, dotted)
        if dotted not in schema:
            errors.append(
                f"{flag}: unknown setting {dotted!r}; {_suggest(dotted, list(schema))}"
                "settings are named section.key. Fix: use a key from config/ecoq.example.toml."
            )
            continue
        where = flag if dotted in flags else "command-line override"
        values[dotted] = (value, _Origin(f"cli {flag}", where, f"change {flag}"))
    return values


#: The signal each provider gives (WattTime's depends on its signal type).
_AVERAGE = {"bundled", "file", "electricitymaps", "ukgrid"}


def provider_chain(value: str) -> list[str]:
    """`forecast.provider` as the list of provider names it holds, in order."""
    return [name.strip() for name in value.split(",") if name.strip()]


def _check_provider_chain(values: Mapping[str, object], origin: "_Origin | None") -> list[str]:
    at = f"{origin.where}: " if origin else ""
    fix = origin.fix if origin else "set forecast.provider"
    value = str(values["forecast.provider"])
    names = provider_chain(value)
    valid = get_args(ProviderName)
    bad = [n for n in names if n not in valid]
    if not names or bad:
        what = f"unknown provider {bad[0]!r}" if bad else "no provider"
        return [
            f"{at}forecast.provider = {value!r}: {what}; give one or more of "
            f"{', '.join(valid)}, comma-separated, in failover order. Fix: {fix}."
        ]
    if len(set(names)) != len(names):
        return [f"{at}forecast.provider = {value!r} names a provider twice. Fix: {fix}."]
    moer = values.get("forecast.watttime.signal_type", "co2_moer") == "co2_moer"
    signals = {n: ("marginal" if n == "watttime" and moer else "average") for n in names}
    if len(set(signals.values())) > 1:
        mix = ", ".join(f"{n} is {sig}" for n, sig in signals.items())
        return [
            f"{at}forecast.provider = {value!r} mixes signal types ({mix}); a zone's "
            f"failover chain must stay within one signal type. Fix: {fix}."
        ]
    return []


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    override_flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings: defaults < TOML file < environment < CLI `overrides`.

    Args:
        config_file: the ``--config`` file; it must exist. None: ``$ECOQ_CONFIG`` (must exist),
            else the user config file if it exists, else no file.
        env: the environment (default ``os.environ``); also gives HOME and the XDG directories.
        overrides: ``"section.key" -> value`` from CLI flags; a value is typed already or a
            string to coerce; None means "flag not given" and is skipped.
        override_flags: ``"section.key" -> "--flag"``, to name the flag in sources and errors.

    Raises:
        ConfigError: a named file is missing, unreadable or malformed; or any value (file, env
            var, flag) is unknown, of the wrong type, out of range or not a valid choice. All
            problems are reported together, one per line, each naming where it came from.
    """
    env = os.environ if env is None else env
    schema = _schema()
    errors: list[str] = []
    sites: list[SiteConfig] = []
    path, given_by = _find_file(config_file, env)
    layers = [
        _file_values(path, given_by, errors, sites) if path else {},
        _env_values(env, errors),
        _cli_values(overrides or {}, override_flags or {}, errors),
    ]
    values: dict[str, object] = {k: key.default for k, key in schema.items()}
    sources = dict.fromkeys(schema, "default")
    origins: dict[str, _Origin] = {}
    for layer in layers:
        for dotted, (raw, origin) in layer.items():
            try:
                values[dotted] = _check(schema[dotted], raw, origin)
            except ConfigError as exc:
                errors.append(str(exc))
                continue
            sources[dotted], origins[dotted] = origin.source, origin
    errors += _check_provider_chain(values, origins.get("forecast.provider"))
    if "file" in provider_chain(str(values["forecast.provider"])) and not values["forecast.file"]:
        o = origins.get("forecast.provider")
        errors.append(
            f"{o.where + ': ' if o else ''}forecast.provider = 'file' needs forecast.file, "
            "the path of the forecast file. Fix: set forecast.file (ECOQ_FORECAST__FILE) "
            "or choose provider 'bundled'."
        )
    for dotted in (k for k in schema if k.endswith(".base_url")):
        url = str(values[dotted]).strip().rstrip("/")
        o = origins.get(dotted)
        at = f"{o.where}: " if o else ""
        fix = o.fix if o else f"set {dotted}"
        if not url.startswith(("https://", "http://")) or not url.isprintable() or " " in url:
            errors.append(f"{at}{dotted} = {url!r} is not an http(s) URL. Fix: {fix}.")
        elif url.endswith("/v3"):
            errors.append(
                f"{at}{dotted} = {url!r} ends in /v3; give the API root without it "
                f"({url[:-3]!r}). Fix: {fix}."
            )
    if errors:
        head = "invalid configuration:\n  " if len(errors) > 1 else ""
        raise ConfigError(head + "\n  ".join(errors))
    for dotted in ("paths.data_dir", "forecast.file"):
        values[dotted] = _expand_home(str(values[dotted]), env)
    sections = {name: _build(name, cls, values) for name, cls in SECTIONS.items()}
    fallback = default_data_dir(env)
    return Settings(
        **sections,
        sites=tuple(sites),
        sources=sources,
        config_file=path,
        fallback_data_dir=fallback,
    )


def _build(section: str, cls: type[Any], values: Mapping[str, object]) -> Any:
    """An instance of the settings dataclass `cls` for table `section`, nested tables included."""
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}"
        kwargs[f.name] = (
            _build(dotted, cast(type[Any], f.type), values) if _is_table(f.type) else values[dotted]
        )
    return cls(**kwargs)


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """Rows ``(key, shown value, source)`` for every key, for ``ecoq config show``.

    Passwords in URLs are redacted; empty values that mean a default show what they resolve to.
    """
    meaning: dict[str, Callable[[], str]] = {
        "database.url": lambda: redact_url(settings.database_url),
        "paths.data_dir": lambda: str(settings.data_dir),
        "site.name": lambda: settings.site_name,
        "site.gpus": lambda: "detect",
    }
    rows = []
    for dotted, key in _schema().items():
        value = setting_value(settings, dotted)
        shown = _show(dotted, value)
        if value == key.default and dotted in meaning:
            shown += f" ({meaning[dotted]()})"
        rows.append((dotted, shown, settings.sources.get(dotted, "default")))
    return rows
