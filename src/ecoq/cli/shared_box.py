"""`ecoq daemon` on a shared box (`shared.socket` set): the checks, the private files, the
executor that starts each job as its submitter, and the socket server (docs/shared-box.md)."""

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecoq.cli.app import forecast_source, open_reader, settings, utcnow

if TYPE_CHECKING:
    from ecoq.scheduler.executors.identity import RunAs
    from ecoq.scheduler.executors.local import LocalExecutor
    from ecoq.scheduler.forecasts import ForecastSource
    from ecoq.scheduler.queue import Queue
    from ecoq.scheduler.slurmdriver import SlurmDriver
    from ecoq.shared.access import Admins
    from ecoq.shared.server import SharedServer

#: The shared daemon's umask: its database, logs and records are root's alone.
DAEMON_UMASK = 0o077


@dataclass(frozen=True)
class SharedBox:
    """What a shared daemon needs beyond a personal one."""

    socket: Path
    admins: "Admins"
    allow_root_jobs: bool
    data_dir: Path

    def run_as(self, queue: "Queue") -> "RunAs":
        """The policy every executor applies: a job runs as its submitter, never as root
        unless `shared.allow_root_jobs`; folders from the data folder down are traversable."""
        from ecoq.scheduler.executors.identity import RunAs

        def owner_uid(job_id: int) -> int:
            return queue.get(job_id).uid

        return RunAs(owner_uid=owner_uid, allow_root=self.allow_root_jobs, data_dir=self.data_dir)

    def executor(self, queue: "Queue") -> "LocalExecutor":
        """The local executor that starts every job as its submitter (never as root)."""
        from ecoq.scheduler.executors.local import LocalExecutor

        return LocalExecutor(run_as=self.run_as(queue))

    def slurm_driver(self, queue: "Queue") -> "SlurmDriver | None":
        """The daemon's Slurm sites (`ecoq.cli.app.slurm_driver`; None when there are none),
        submitting every job as its submitter (``sbatch --uid --gid``), never as root unless
        `shared.allow_root_jobs`.

        Raises:
            ConfigError: a Slurm site's keys are wrong.
        """
        from ecoq.cli.app import slurm_driver
        from ecoq.scheduler.slurmdriver import SlurmDriver

        driver = slurm_driver(queue)
        if driver is None:
            return None
        return SlurmDriver(
            queue,
            driver.executors,
            data_dir=driver.data_dir,
            worker=driver.worker,
            run_as=self.run_as(queue),
        )

    def server(self, queue: "Queue") -> "SharedServer":
        """The socket server (not started) in front of `queue`."""
        from ecoq.cli.report import accounting_lines, job_png, shared_report
        from ecoq.cli.submission import submit_for
        from ecoq.shared.backend import Backend
        from ecoq.shared.server import SharedServer

        backend = Backend(
            queue,
            reader=open_reader,
            submit_fn=submit_for,
            accounting=accounting_lines,
            allow_root_jobs=self.allow_root_jobs,
            report=shared_report,
            forecast=UserForecasts(),
            plot=job_png,
        )
        return SharedServer(self.socket, backend, self.admins)


def shared_box() -> SharedBox | None:
    """None in personal mode. On a shared box: check that this is root and the settings make
    sense, then make the daemon's files private (umask 077, database 0600, data folder 0711:
    users may pass through it to their own jobs' output, never list or read it).

    Raises:
        ConfigError: not root, a bad `shared.socket`, or `shared.admins` names an unknown user
            or group.
    """
    cfg = settings()
    if not cfg.shared.socket:
        return None
    from ecoq.errors import ConfigError
    from ecoq.shared.access import Admins
    from ecoq.shared.protocol import check_socket_path
    from ecoq.views import sqlite_path

    socket = check_socket_path(cfg.shared.socket)
    if os.geteuid() != 0:
        raise ConfigError(
            f"shared.socket is set ({socket}), so this daemon serves every user and must run "
            "as root (config/ecoq.service); unset shared.socket for a personal daemon"
        )
    admins = Admins(cfg.shared.admins)
    os.umask(DAEMON_UMASK)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    os.chown(cfg.data_dir, 0, 0)
    os.chmod(cfg.data_dir, 0o711)
    database = sqlite_path(cfg.database_url)
    if database is not None:
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o600)
    return SharedBox(socket, admins, cfg.shared.allow_root_jobs, cfg.data_dir)


@contextlib.contextmanager
def serving(box: SharedBox | None, queue: "Queue") -> Iterator[None]:
    """Serve users on the box's socket meanwhile (nothing in personal mode)."""
    if box is None:
        yield
        return
    with box.server(queue):
        yield


class UserForecasts:
    """Users' `ecoq forecast` on a shared box, answered as root's `ecoq forecast` would be: a
    fresh failover chain of the daemon's providers (its credentials stay in the daemon) on the
    forecast cache in its database, closed after each question. One question at a time, so
    that when the cache is stale one request refreshes it and the next ones read it, instead of
    each asking the provider."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, **args: Any) -> dict[str, Any]:
        """`ForecastAnswer.to_result()` for the checked `forecast` arguments. Raises what `ecoq
        forecast` raises."""
        from ecoq.cli.forecast_view import forecast_answer

        built: list[ForecastSource] = []

        def chain() -> "ForecastSource":
            built.append(forecast_source())
            return built[-1]

        with self._lock:
            try:
                return forecast_answer(now=utcnow(), source=chain, **args).to_result()
            finally:
                for source in built:
                    _close_chain(source)


def _close_chain(source: "ForecastSource") -> None:
    """Close the providers' HTTP connections and the cache's engine (a pool on PostgreSQL)."""
    for provider in [*source.providers, source.bundled]:
        close = getattr(provider, "close", None)
        if close is not None:
            close()
    if source.store is not None:
        source.store.engine.dispose()
