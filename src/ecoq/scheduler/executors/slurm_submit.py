"""The files and the ``sbatch`` command of one Slurm submission, apart from the executor that
runs it (`ecoq.scheduler.executors.slurm`): the run folder's file names, the time format Slurm
reads, and, for a root daemon on a shared box, the output files made for the job's user."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ecoq.scheduler.executors.identity import Identity
from ecoq.scheduler.executors.slurm_site import SlurmSite
from ecoq.scheduler.executors.wrapper import MARKS_FILE

__all__ = [
    "ENV_FILE",
    "OUTPUT_FILE",
    "SCRIPT_FILE",
    "give_to",
    "sbatch_argv",
    "slurm_time",
    "write_private",
]

SCRIPT_FILE = "job.sh"  #: the batch script (sbatch stores its own copy)
#: the job's environment, NUL-separated, for ``sbatch --export-file`` (removed once read)
ENV_FILE = "job.env"
OUTPUT_FILE = "output.log"


def slurm_time(t: datetime) -> str:
    """`t` as Slurm reads it under TZ=UTC0, rounded *up* to the second (never earlier)."""
    t = t.astimezone(UTC)
    if t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def write_private(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.chmod(mode)


def give_to(run_dir: Path, user: Identity) -> None:
    """Create the files the job writes (`OUTPUT_FILE`, `MARKS_FILE`) owned by its user, 0600:
    Slurm opens the output as the job's user, who may not create files in the root-owned run
    folder. Raises OSError (also for a link in their place)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    for name in (OUTPUT_FILE, MARKS_FILE):
        fd = os.open(run_dir / name, flags, 0o600)
        try:
            os.fchown(fd, user.uid, user.gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def sbatch_argv(
    site: SlurmSite,
    *,
    name: str,
    run_dir: Path,
    cwd: str,
    hold: bool,
    begin: datetime | None,
    gpus: int,
    user: Identity | None = None,
) -> list[str]:
    """The ``sbatch`` command for a job whose script and environment file are in `run_dir`.

    `user` (a root daemon on a shared box) submits the job as that user: ``--uid`` and
    ``--gid`` (numeric, so no second look-up can differ); Slurm itself gives the job that
    user's supplementary groups from the group database, as the local executor does. None:
    the job runs as whoever runs sbatch.
    """
    output = str(run_dir / OUTPUT_FILE).replace("%", "%%")  # % starts a filename pattern
    argv = [
        "sbatch", "--parsable", "--no-requeue", f"--job-name={name}",
        f"--export-file={run_dir / ENV_FILE}", f"--chdir={cwd}", f"--output={output}",
        "--open-mode=append",
    ]  # fmt: skip
    if user is not None:
        argv += [f"--uid={user.uid}", f"--gid={user.gid}"]
    if hold:
        argv.append("--hold")
    if begin is not None:
        argv.append(f"--begin={slurm_time(begin)}")
    if site.partition:
        argv.append(f"--partition={site.partition}")
    if site.account:
        argv.append(f"--account={site.account}")
    if gpus > 0:
        argv.append(f"--gres={site.gres}:{gpus}")
    return [*argv, *site.sbatch_args, str(run_dir / SCRIPT_FILE)]
