"""`ecoq config check`: is this box ready to run ecoq? One row per check, OK, FAIL or SKIP.

It checks the configuration, the database (reachable, schema revision against this ecoq's),
each forecast provider of the chain (one cheap call within the provider's own timeout, no
retries), the energy meters, and each Slurm site (``sinfo``, and its ``ClusterName``). Nothing
is written: a database that does not exist yet is not created. Every FAIL comes with its fix;
the command exits 1 when any check fails. The checks are plain functions over their inputs, so
tests pass fakes (an httpx transport, a Slurm runner) instead of patching.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from ecoq.cli.app import STATE, JsonOpt, config_app, examples, forecast_provider, print_json
from ecoq.errors import EcoqError

if TYPE_CHECKING:
    from ecoq.config import Settings
    from ecoq.forecasting import ForecastProvider
    from ecoq.scheduler.executors.slurm import SlurmSite
    from ecoq.scheduler.executors.slurm_site import Runner

Status = Literal["OK", "FAIL", "SKIP"]
#: The zone each provider is asked for when `site.zone` is empty.
PROBE_ZONES = {"bundled": "DE", "electricitymaps": "DE", "ukgrid": "GB", "watttime": "CAISO_NORTH"}


@dataclass(frozen=True)
class Check:
    """One row: what was checked, the verdict, what was found, and (for FAIL) the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _fail(name: str, exc: BaseException, fix: str) -> Check:
    return Check(name, "FAIL", str(exc), fix)


# -- configuration and database -----------------------------------------------------------------
def check_config(load: Callable[[], Settings]) -> tuple[Check, Settings | None]:
    """Load the settings with `load`; a ConfigError is a FAIL whose message names the fix."""
    try:
        cfg = load()
    except EcoqError as exc:
        return _fail("config", exc, "correct the value the message names"), None
    where = str(cfg.config_file) if cfg.config_file else "defaults and environment (no file)"
    return Check("config", "OK", where), cfg


def _writable_dir(path: Path) -> bool:
    """Whether `path`, or the nearest folder above it that exists, is writable."""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return False


def _probe_engine(url: str) -> Any:
    """An engine that gives up connecting after 10 s (a dead host must not hang the check)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from ecoq.db import make_engine

    if make_url(url).get_backend_name() == "postgresql":
        return create_engine(url, connect_args={"connect_timeout": 10})
    return make_engine(url)


def check_database(url: str) -> list[Check]:
    """Rows ``database`` (reachable, writable) and ``migrations`` (schema revision vs this
    ecoq's `HEAD`). A SQLite file that does not exist yet is not created."""
    from ecoq.config import redact_url
    from ecoq.migrations import HEAD
    from ecoq.views import sqlite_path

    shown = redact_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        if not _writable_dir(path.parent):
            return [
                Check(
                    "database",
                    "FAIL",
                    f"{path.parent} cannot be created or written",
                    "set paths.data_dir or database.url to a writable place",
                ),
                Check("migrations", "SKIP", "no database"),
            ]
        return [
            Check("database", "OK", f"{shown} (created on first use)"),
            Check("migrations", "OK", f"a new database starts at revision {HEAD}"),
        ]
    if path is not None and not os.access(path, os.R_OK | os.W_OK):
        fix = f"give this user read and write access to {path} (and its -wal and -shm files)"
        return [
            Check("database", "FAIL", f"{path} is not readable and writable", fix),
            Check("migrations", "SKIP", "no database"),
        ]
    try:
        from ecoq.db import current_revision

        engine = _probe_engine(url)
        try:
            revision = current_revision(engine)
        finally:
            engine.dispose()
    except Exception as exc:  # any driver or URL error is this check's finding
        fix = (
            "check database.url (ECOQ_DATABASE_URL), that the server runs and accepts this "
            "user (~/.pgpass), and for PostgreSQL that `ecoq[postgres]` is installed"
        )
        return [
            Check("database", "FAIL", f"cannot reach {shown}: {type(exc).__name__}: {exc}", fix),
            Check("migrations", "SKIP", "no database"),
        ]
    rows = [Check("database", "OK", f"{shown} reachable")]
    versions = Path(__file__).parents[1] / "migrations" / "versions"
    known = {p.name.split("_", 1)[0] for p in versions.glob("*.py")}
    if revision == HEAD:
        rows.append(Check("migrations", "OK", f"at revision {HEAD} (this ecoq's newest)"))
    elif revision is None:
        rows.append(Check("migrations", "OK", f"empty database: created at {HEAD} on first use"))
    elif revision in known:
        rows.append(
            Check("migrations", "OK", f"at revision {revision}: upgraded to {HEAD} on first use")
        )
    else:
        rows.append(
            Check(
                "migrations",
                "FAIL",
                f"at revision {revision!r}, newer than this ecoq knows ({HEAD})",
                "upgrade ecoq on this box to the version the other boxes run",
            )
        )
    return rows


# -- forecast providers ---------------------------------------------------------------------------
def _no_retries(provider: object) -> None:
    """One attempt, bounded by the provider's own timeout: no backoff, no Retry-After waits."""
    from ecoq.forecasting.http import ApiClient, RetryPolicy

    api = getattr(provider, "api", None)
    if isinstance(api, ApiClient):
        api.retry = RetryPolicy(retries=0, backoff_s=0.0, max_wait_s=0.0)


def _provider_fix(exc: Exception) -> str:
    from ecoq.errors import ConfigError, UnknownZone
    from ecoq.forecasting import ProviderUnavailable

    if isinstance(exc, ConfigError):
        return "set what the message names (credentials: environment or a 0600 secrets file)"
    if isinstance(exc, UnknownZone):
        return "set site.zone to a zone this provider knows (see the message)"
    if isinstance(exc, ProviderUnavailable) and exc.status in (401, 403):
        return "check the credentials, and that the account may use this endpoint"
    return "check the network (a proxy?) and the provider's base_url and timeout_s"


def check_providers(
    cfg: Settings,
    make: Callable[[str], ForecastProvider],
    now: datetime | None = None,
) -> list[Check]:
    """One row per provider of ``forecast.provider``: build it (credentials), then one cheap
    call for the site's zone (else a zone the provider surely knows): Electricity Maps
    ``/latest``, the others a one-hour forecast."""
    from ecoq.config import provider_chain

    now = now or datetime.now(UTC)
    rows = []
    for name in provider_chain(cfg.forecast.provider):
        label = f"provider {name}"
        zone = cfg.site.zone or PROBE_ZONES.get(name, "")
        if not zone:
            rows.append(Check(label, "SKIP", "no site.zone to ask for", "set site.zone"))
            continue
        try:
            provider = make(name)
        except EcoqError as exc:
            rows.append(_fail(label, exc, _provider_fix(exc)))
            continue
        _no_retries(provider)
        try:
            latest = getattr(provider, "latest", None)
            if callable(latest):
                fc = latest(zone)
            else:
                fc = provider.forecast(zone, now, now + timedelta(hours=1))
            value = fc.points[0].g_per_kwh if fc.points else None
            shown = f"{value:.0f} g/kWh" if value is not None else "no points"
            rows.append(Check(label, "OK", f"zone {zone}: {shown} ({fc.label})"))
        except EcoqError as exc:
            rows.append(_fail(label, exc, _provider_fix(exc)))
        finally:
            close = getattr(provider, "close", None)
            if callable(close):
                close()
    return rows


# -- meters ---------------------------------------------------------------------------------------
def check_meters(cfg: Settings) -> list[Check]:
    """Rows for NVML (GPUs) and RAPL (CPU): OK when readable; SKIP when switched off or absent
    from this machine (the estimate is used, and labelled); FAIL when present but unusable, or
    when GPUs are configured (`site.gpus` > 0) but cannot be metered."""
    from ecoq.errors import MeterUnavailable
    from ecoq.meters import detect_meters

    rows: list[Check] = []
    for name, enabled in (("nvml", cfg.meters.nvml), ("rapl", cfg.meters.rapl)):
        label = f"meter {name}"
        if not enabled:
            rows.append(Check(label, "SKIP", f"off (meters.{name} = false); estimated instead"))
            continue
        try:
            found = detect_meters([name], settings=cfg.meters, env={})
        except MeterUnavailable as exc:
            absent = (name == "nvml" and "no NVIDIA driver" in str(exc) and cfg.site.gpus <= 0) or (
                name == "rapl" and not Path(cfg.meters.powercap_root).exists()
            )
            if absent:
                rows.append(Check(label, "SKIP", f"{exc}"))
            else:
                rows.append(_fail(label, exc, f"see the message, or set meters.{name} = false"))
            continue
        try:
            details = ", ".join(m.description.detail or m.description.device for m in found.meters)
        finally:
            found.close()
        rows.append(Check(label, "OK", details or "no devices"))
    rows.append(Check("meter estimate", "OK", "CPU and RAM estimates where no counter exists"))
    return rows


# -- Slurm ----------------------------------------------------------------------------------------
def slurm_sites(cfg: object) -> list[SlurmSite]:
    """The Slurm sites in the settings' ``sites`` (entries of kind ``slurm``; mappings or
    dataclasses with a ``name``); none when the settings have no sites.

    Raises:
        ConfigError: a Slurm site entry with a bad value.
    """
    from ecoq.scheduler.executors.slurm_site import SLURM_SITE_KEYS, SlurmSite

    out = []
    for entry in getattr(cfg, "sites", None) or ():
        if isinstance(entry, Mapping):
            table = dict(entry)
        elif dataclasses.is_dataclass(entry) and not isinstance(entry, type):
            table = dataclasses.asdict(entry)
        else:
            continue
        nested = table.pop("slurm", None)  # a `SiteConfig` keeps its Slurm keys apart
        if isinstance(nested, Mapping):
            table.update(nested)
        if table.get("kind") == "slurm":
            keys = {k: v for k, v in table.items() if k in SLURM_SITE_KEYS and v is not None}
            out.append(SlurmSite.from_table(str(table.get("name", "")), keys))
    return out


def check_slurm(sites: Iterable[SlurmSite], runner: Runner | None = None) -> list[Check]:
    """One row per Slurm site: ``sinfo`` answers within the site's timeout, its partition
    exists and is up, and ``ClusterName`` is the configured cluster."""
    from ecoq.scheduler.executors.slurm import SlurmExecutor

    rows = []
    for site in sites:
        label = f"slurm {site.name}"
        ex = SlurmExecutor(site) if runner is None else SlurmExecutor(site, runner=runner)
        fix = "check that slurmctld runs, SLURM_CONF (slurm_conf) and munge on this box"
        try:
            info = ex.run("sinfo", "-h", "-o", "%R|%a|%D|%T", what="sinfo")
            cluster = ""
            if site.cluster:
                conf = ex.run("scontrol", "show", "config", what="scontrol show config")
                for line in conf.stdout.splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "ClusterName":
                        cluster = value.strip()
        except EcoqError as exc:
            rows.append(_fail(label, exc, fix))
            continue
        parts: dict[str, set[str]] = {}
        for line in info.stdout.splitlines():
            fields = line.split("|")
            if len(fields) == 4:
                parts.setdefault(fields[0], set()).add(fields[1])
        if site.cluster and cluster != site.cluster:
            detail = f"the commands reach cluster {cluster!r}, not {site.cluster!r}"
            rows.append(Check(label, "FAIL", detail, "set the site's slurm_conf to its cluster"))
        elif site.partition and site.partition not in parts:
            detail = f"no partition {site.partition!r}; the cluster has {', '.join(sorted(parts))}"
            rows.append(Check(label, "FAIL", detail, "set the site's partition to one of those"))
        elif site.partition and "up" not in parts[site.partition]:
            state = ",".join(sorted(parts[site.partition]))
            detail = f"partition {site.partition!r} is {state}"
            rows.append(Check(label, "FAIL", detail, "ask the cluster's admins to bring it up"))
        else:
            where = f"cluster {cluster or '?'}" + (
                f", partition {site.partition}" if site.partition else ""
            )
            rows.append(Check(label, "OK", f"{where}: {len(parts)} partition(s) answer"))
    return rows


# -- the command ----------------------------------------------------------------------------------
def run_checks(
    load: Callable[[], Settings],
    make_provider: Callable[[str], ForecastProvider],
    *,
    runner: Runner | None = None,
    sites: Callable[[Settings], list[SlurmSite]] = slurm_sites,
) -> list[Check]:
    """Every check in order; after a failed configuration the others are SKIPped."""
    first, cfg = check_config(load)
    if cfg is None:
        later = ("database", "migrations", "providers", "meters", "slurm")
        return [first, *(Check(n, "SKIP", "the configuration is invalid") for n in later)]
    rows = [first, *check_database(cfg.database_url), *check_providers(cfg, make_provider)]
    rows += check_meters(cfg)
    try:
        configured = sites(cfg)
    except EcoqError as exc:
        return [*rows, _fail("slurm", exc, "correct the Slurm site in the configuration")]
    if not configured:
        return [*rows, Check("slurm", "SKIP", "no Slurm sites configured")]
    return rows + check_slurm(configured, runner)


def _load() -> Settings:
    from ecoq.config import load_settings

    STATE.settings = load_settings(config_file=STATE.config_file)
    return STATE.settings


@config_app.command(
    "check",
    epilog=examples(
        "ecoq config check",
        "ecoq --config /etc/ecoq/ecoq.toml config check --json",
        note="Exit status 1 when any check fails. Nothing is written, not even a new database.",
    ),
)
def config_check(json_out: JsonOpt = False) -> None:
    """Check the configuration, database, providers, meters and Slurm sites, with fixes."""
    rows = run_checks(_load, forecast_provider)
    failed = [r for r in rows if r.status == "FAIL"]
    if json_out:
        print_json([dataclasses.asdict(r) for r in rows])
    else:
        width = max(len(r.name) for r in rows)
        typer.echo(f"{'CHECK'.ljust(width)}  STATUS  DETAIL")
        for r in rows:
            typer.echo(f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.detail}")
        for r in failed:
            typer.echo(f"fix {r.name}: {r.fix}")
        typer.echo(f"{len(failed)} failed" if failed else "all checks passed")
    if failed:
        raise typer.Exit(1)
