"""`ecoq daemon` on a shared box (`shared.socket` set): the checks, the private files, the
executor that starts each job as its submitter, and the socket server (docs/shared-box.md)."""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ecoq.cli.app import open_reader, settings

if TYPE_CHECKING:
    from ecoq.scheduler.executors.local import LocalExecutor
    from ecoq.scheduler.queue import Queue
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

    def executor(self, queue: "Queue") -> "LocalExecutor":
        """The local executor that starts every job as its submitter (never as root)."""
        from ecoq.scheduler.executors.identity import RunAs
        from ecoq.scheduler.executors.local import LocalExecutor

        def owner_uid(job_id: int) -> int:
            return queue.get(job_id).uid

        policy = RunAs(owner_uid=owner_uid, allow_root=self.allow_root_jobs, data_dir=self.data_dir)
        return LocalExecutor(run_as=policy)

    def server(self, queue: "Queue") -> "SharedServer":
        """The socket server (not started) in front of `queue`."""
        from ecoq.cli.report import accounting_lines
        from ecoq.cli.submission import submit_for
        from ecoq.shared.backend import Backend
        from ecoq.shared.server import SharedServer

        backend = Backend(
            queue,
            reader=open_reader,
            submit_fn=submit_for,
            accounting=accounting_lines,
            allow_root_jobs=self.allow_root_jobs,
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
    slurm = [site.name for site in cfg.sites if site.kind == "slurm"]
    if slurm:  # sbatch from a root daemon would run the job as root
        raise ConfigError(
            f"[[sites]] {', '.join(slurm)} of kind slurm cannot be used on a shared box yet: "
            "the Slurm executor does not submit as the job's user; remove them or unset "
            "shared.socket"
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
