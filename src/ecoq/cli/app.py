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
    from ecoq.scheduler.queue import Queue
    from ecoq.scheduler.replan import ForecastSource
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
JobId = Annotated[int, typer.Argument(help="Job id (see `ecoq queue`).")]


class _State:
    config_file: Path | None = None
    verbose: bool = False
    settings: "Settings | None" = None


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


def settings() -> "Settings":
    if STATE.settings is None:
        from ecoq.config import load_settings

        STATE.settings = load_settings(config_file=STATE.config_file)
    return STATE.settings


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
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def open_queue() -> "Queue":
    from ecoq.db import open_engine
    from ecoq.scheduler.queue import Queue

    return Queue(open_engine(settings().database_url))


def open_reader() -> "Reader | None":
    """A reader on the job store without importing the ORM when the database is a current
    SQLite file; None when no database exists yet (so there are no jobs)."""
    from ecoq.views import fast_reader, sqlite_path

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

    reader = open_reader()
    job = get_job(reader, job_id) if reader is not None else None
    if job is None:
        raise JobNotFound(f"no job with id {job_id}; `ecoq queue --all` lists the jobs")
    return job


def forecast_source() -> "ForecastSource":
    from ecoq.forecasting import make_provider
    from ecoq.forecasting.bundled import BundledProvider
    from ecoq.scheduler.replan import ForecastSource

    cfg = settings().forecast
    provider = make_provider(cfg.provider, file=Path(cfg.file) if cfg.file else None)
    fallback = None if cfg.provider == "bundled" else BundledProvider()
    return ForecastSource(provider, fallback)


def box_gpus() -> int:
    configured = settings().site.gpus
    if configured >= 0:
        return configured
    from ecoq.meters.nvml import gpu_count

    return gpu_count() or 0


def utcnow() -> "datetime":
    from datetime import UTC, datetime

    return datetime.now(UTC)
