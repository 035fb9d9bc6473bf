"""The Typer app and the helpers its commands share.

Start-up matters (`ecoq --help` must answer in about 0.1 s), so everything beyond typer is imported
inside the command that needs it; the database layer (SQLAlchemy, SQLModel, Alembic) only by
commands that write. Exit codes: 0 ok, 2 bad usage or input (nothing written), 1 other errors.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ecoq.errors import EcoqError, UsageError

if TYPE_CHECKING:
    from datetime import datetime

    from ecoq.config import Settings
    from ecoq.forecasting import ForecastProvider
    from ecoq.scheduler.forecasts import ForecastSource
    from ecoq.scheduler.queue import Queue
    from ecoq.scheduler.sites import Site
    from ecoq.scheduler.slurmdriver import SlurmDriver
    from ecoq.shared.client import Client
    from ecoq.views import JobView, Reader

app = typer.Typer(
    name="ecoq",
    help="Carbon-aware job scheduler: runs your jobs in the cleanest hours before their deadline.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
#: Ids fit a 32-bit INTEGER column (PostgreSQL's), so a huge one is refused here, not by SQL.
JobId = Annotated[int, typer.Argument(help="Job id (see `ecoq queue`).", min=0, max=2**31 - 1)]


class _State:
    config_file: Path | None = None
    verbose: bool = False
    settings: "Settings | None" = None
    sites: "tuple[Site, ...] | None" = None  # `planner_sites()`, built once per command


STATE = _State()


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file (else $ECOQ_CONFIG).")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show tracebacks.")] = False,
) -> None:
    STATE.config_file = config
    STATE.verbose = verbose
    STATE.settings = None
    STATE.sites = None
    import sys

    for stream in (sys.stdout, sys.stderr):
        # A job's argv or script name may hold bytes that are not UTF-8 (Python's surrogates):
        # print them as they came, as `ls` does, instead of failing on a strict UTF-8 terminal.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")


def settings() -> "Settings":
    if STATE.settings is None:
        from ecoq.config import load_settings

        STATE.settings = load_settings(config_file=STATE.config_file)
    return STATE.settings


def examples(*lines: str, note: str = "") -> str:
    """A command's epilog: its example command lines, one per line, then an optional note.

    The lines follow click's `\\b` marker, which keeps the formatter from re-wrapping them
    into one paragraph; the note is wrapped as usual.
    """
    head = "Example:" if len(lines) == 1 else "Examples:"
    text = head + "\n\n\b\n" + "\n".join(f"  {line}" for line in lines)
    return f"{text}\n\n{note}" if note else text


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn ecoq's errors into a message and an exit code (2 for bad input, else 1)."""
    try:
        yield
    except EcoqError as exc:
        if STATE.verbose:
            import traceback

            traceback.print_exc()
        cause = f" (caused by: {exc.__cause__})" if exc.__cause__ and STATE.verbose else ""
        fail(f"{exc}{cause}", 2 if isinstance(exc, UsageError) else 1)


def print_json(data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 (surrogates): \u-escape them
        text = json.dumps(data, indent=2)
    typer.echo(text)


def shared_client() -> "Client | None":
    """The shared daemon's client when this command goes through its socket: `shared.socket`
    is set and the caller is not root (root reads the database itself); else None."""
    import os

    path = settings().shared.socket
    if not path or os.geteuid() == 0:
        return None
    from ecoq.shared.client import Client
    from ecoq.shared.protocol import check_socket_path

    return Client(check_socket_path(path))


def _direct_only() -> None:
    """Refuse to open the database where only the shared daemon may (a user on a shared box)."""
    import os

    if settings().shared.socket and os.geteuid() != 0:
        from ecoq.errors import ConfigError

        raise ConfigError(
            f"on this shared box only the ecoq daemon ({settings().shared.socket}) reads the "
            "database, and this command needs it directly; ask an admin to run it as root"
        )


def open_queue() -> "Queue":
    from ecoq.db import open_engine
    from ecoq.scheduler.queue import Queue

    _direct_only()
    return Queue(open_engine(settings().database_url))


def open_reader() -> "Reader | None":
    """A reader on the job store without importing the ORM when the database is a current
    SQLite file; None when no database exists yet (so there are no jobs)."""
    from ecoq.views import fast_reader, sqlite_path

    _direct_only()
    url = settings().database_url
    reader = fast_reader(url)
    path = sqlite_path(url)
    if reader is not None or (path is not None and not path.exists()):
        return reader
    from ecoq.db import EngineReader, open_engine

    return EngineReader(open_engine(url))


def load_job(job_id: int) -> "JobView":
    from ecoq.errors import JobNotFound
    from ecoq.views import get_job

    client = shared_client()
    if client is not None:
        return client.get_job(job_id)
    reader = open_reader()
    job = get_job(reader, job_id) if reader is not None else None
    if job is None:
        raise JobNotFound(f"no job with id {job_id}; `ecoq queue --all` lists the jobs")
    return job


def forecast_provider(kind: str | None = None) -> "ForecastProvider":
    """The forecast provider `kind` (default `forecast.provider`), built from the settings and
    the credentials (environment or secrets file).

    Raises ConfigError: unknown kind, missing credentials, insecure secrets file, bad setting.
    """
    from ecoq.forecasting import make_provider

    cfg = settings().forecast
    return make_provider(
        kind or cfg.provider.split(",")[0].strip(),
        file=Path(cfg.file) if cfg.file else None,
        watttime=cfg.watttime,
        electricitymaps=cfg.electricitymaps,
        ukgrid=cfg.ukgrid,
    )


def forecast_source(*, provider: str | None = None) -> "ForecastSource":
    """The failover chain for `provider` (default: the `forecast.provider` chain), with the
    database's forecast cache behind it (see `ecoq.scheduler.forecasts`)."""
    from ecoq.config import provider_chain
    from ecoq.db import open_engine
    from ecoq.forecasting.bundled import BundledProvider
    from ecoq.scheduler.forecasts import ChainSettings, ForecastSource, ForecastStore

    _direct_only()  # the forecast cache is in the database
    cfg = settings().forecast
    names = [provider] if provider else provider_chain(cfg.provider)
    return ForecastSource(
        [forecast_provider(name) for name in names],
        store=ForecastStore(open_engine(settings().database_url)),
        bundled=BundledProvider(),
        settings=ChainSettings(refresh_s=cfg.refresh_interval_s, max_age_s=cfg.max_age_s),
    )


def canonical_zone(zone: str, *, provider: str | None = None) -> str:
    """The zone as the providers name it: with only the bundled profiles, resolved (case, cloud
    regions and cities, e.g. `aws:eu-central-1` → `DE`) so a typo fails before anything is
    stored; Electricity Maps takes the same codes, so an alias is resolved for it too.

    Raises:
        UnknownZone: only the bundled profiles are configured and they do not know the zone.
    """
    from ecoq.config import provider_chain

    names = [provider] if provider else provider_chain(settings().forecast.provider)
    if names == ["bundled"]:
        from ecoq.forecasting.bundled import resolve_zone

        return resolve_zone(zone)
    if "electricitymaps" in names:
        from ecoq.forecasting.regions import resolve_alias

        return resolve_alias(zone) or zone
    return zone


def box_gpus() -> int:
    configured = settings().site.gpus
    if configured >= 0:
        return configured
    from ecoq.meters.nvml import gpu_count

    return gpu_count() or 0


def planner_sites() -> "tuple[Site, ...]":
    """The `[[sites]]` as the planner sees them (zones resolved as `--zone` is; this box's GPUs
    detected when its entry gives none); empty without `[[sites]]`.

    Raises:
        UnknownZone: a site's zone is unknown to the configured providers.
    """
    from ecoq.scheduler.sites import Site

    if STATE.sites is not None:
        return STATE.sites
    cfg = settings()
    STATE.sites = tuple(
        Site(
            name=entry.name,
            zone=canonical_zone(entry.zone),
            gpus=box_gpus() if entry.gpus is None and entry.name == cfg.site_name else entry.gpus,
            slots=entry.slots,
            pue=entry.pue,
            idle_w_per_gpu=entry.idle_w_per_gpu,
            kind=entry.kind,
        )
        for entry in cfg.sites
    )
    return STATE.sites


def slurm_driver(queue: "Queue") -> "SlurmDriver | None":
    """The driver of the `[[sites]]` of kind slurm (None when there are none).

    Raises:
        ConfigError: a Slurm site's keys are wrong.
    """
    from ecoq.cli.check import slurm_sites

    cfg = settings()
    found = slurm_sites(cfg)
    if not found:
        return None
    from ecoq.scheduler.executors.slurm import SlurmExecutor
    from ecoq.scheduler.slurmdriver import SlurmDriver

    executors = {site.name: SlurmExecutor(site) for site in found}
    return SlurmDriver(queue, executors, data_dir=cfg.data_dir, worker=cfg.site_name)


def utcnow() -> "datetime":
    from datetime import UTC, datetime

    return datetime.now(UTC)
