"""What a Slurm site is, and the pieces of a submission that need no cluster.

- `SlurmSite`: a site of kind ``slurm`` (cluster, partition, account, GRES, extra sbatch
  options, which ``slurm.conf``), built from a config table by `SlurmSite.from_table`;
- `run_command`, the real `Runner` of Slurm commands (tests inject recorded outputs instead),
  and `command_failed`, the one error for a failed command;
- `job_script` and `job_environment`: the batch script that runs a job's argv exactly, and the
  environment handed to ``sbatch --export-file``.
"""

from __future__ import annotations

import math
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ecoq.errors import ConfigError, ExecutorError
from ecoq.scheduler.executors import LaunchSpec

#: Options ecoq sets itself; `SlurmSite.sbatch_args` may not repeat them.
RESERVED_OPTIONS = (
    "--begin", "-b", "--hold", "-H", "--export", "--export-file", "--output", "-o", "--error",
    "-e", "--chdir", "-D", "--wrap", "--requeue", "--no-requeue", "--parsable", "--job-name",
    "-J", "--open-mode", "--gres", "--uid", "--gid",
)  # fmt: skip
#: The keys a ``[[sites]]`` entry of kind ``slurm`` may carry besides the site model's own.
SLURM_SITE_KEYS = (
    "cluster", "partition", "account", "gres", "sbatch_args", "slurm_conf", "timeout_s",
)  # fmt: skip
#: Job environment variables Slurm sets itself (a submitter's stale ones must not win).
SLURM_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")


@dataclass(frozen=True)
class CommandResult:
    """How one Slurm command ended; `stdout` and `stderr` are text."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs one command; `run_command` is the real one, tests inject recorded outputs."""

    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float
    ) -> CommandResult: ...


def run_command(argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float) -> CommandResult:
    """Run `argv` (no shell) with exactly `env`, stdin from /dev/null, for at most `timeout_s`.

    Raises:
        ExecutorError: the program is missing or cannot run, or it outlived `timeout_s` (it is
            killed); the message names the command. A non-zero exit is returned, not raised.
    """
    shown = shlex.join(argv)
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ExecutorError(
            f"`{shown}` did not finish within {timeout_s:g} s; is slurmctld reachable "
            "(`sinfo`)? Raise the site's timeout_s if the controller is just slow"
        ) from exc
    except OSError as exc:
        raise ExecutorError(
            f"cannot run `{shown}`: {exc.strerror or exc}; install the Slurm client commands "
            "(Debian: slurm-client) or put them on PATH"
        ) from exc
    return CommandResult(tuple(argv), done.returncode, done.stdout, done.stderr)


def command_failed(result: CommandResult, what: str = "") -> ExecutorError:
    """The error for a failed command: what failed, the command, its exit status, its stderr."""
    stderr = result.stderr.strip() or "(no output on stderr)"
    head = f"{what}: " if what else ""
    return ExecutorError(
        f"{head}`{shlex.join(result.argv)}` failed with exit status {result.returncode}: "
        f"{stderr[-500:]}"
    )


@dataclass(frozen=True)
class SlurmSite:
    """A site of kind ``slurm``: where and how ecoq submits jobs to one Slurm cluster.

    Attributes:
        name: the ecoq site name.
        cluster: the cluster's ``ClusterName``; `ecoq config check` verifies that the commands
            reach it. "" = not checked.
        partition: ``--partition``; "" = the cluster's default partition.
        account: ``--account``; "" = the user's default account.
        gres: the GRES a job's GPUs are asked as: a job with N GPUs gets ``--gres=<gres>:N``
            (``gpu``, or ``gpu:a100`` for a type).
        sbatch_args: more ``sbatch`` options, one per item (``--time=1-00:00:00``,
            ``--mem=16G``, ``--qos=low``); not the options ecoq sets (`RESERVED_OPTIONS`).
        slurm_conf: ``SLURM_CONF`` for every command (one box can reach several clusters);
            "" = inherit the daemon's ``SLURM_CONF``, else Slurm's default.
        timeout_s: seconds each Slurm command may take.

    Raises:
        ConfigError: an empty name, a timeout that is not > 0, or a reserved sbatch option.
    """

    name: str
    cluster: str = ""
    partition: str = ""
    account: str = ""
    gres: str = "gpu"
    sbatch_args: tuple[str, ...] = ()
    slurm_conf: str = ""
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a Slurm site needs a name")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"Slurm site {self.name!r}: timeout_s {self.timeout_s} must be > 0")
        for arg in self.sbatch_args:
            if not isinstance(arg, str):
                raise ConfigError(f"Slurm site {self.name!r}: sbatch_args must be strings")
            option = arg.split("=", 1)[0]
            if option in RESERVED_OPTIONS or option.startswith("--export"):
                raise ConfigError(
                    f"Slurm site {self.name!r}: sbatch_args may not set {option} (ecoq sets "
                    f"it); remove {arg!r}"
                )

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, object]) -> SlurmSite:
        """Build from a config table (``[[sites]]`` entry with ``kind = "slurm"``); keys are the
        attribute names; ``kind``, ``zone`` and the capacity keys belong to the site model and
        are ignored here.

        Raises:
            ConfigError: an unknown key, or a value of the wrong type (the message names it).
        """
        known = {"cluster", "partition", "account", "gres", "slurm_conf"}  # the string keys
        ignored = {"name", "kind", "zone", "gpus", "slots", "pue", "idle_w_per_gpu"}
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            where = f"Slurm site {name!r}: {key} = {value!r}"
            if key in known:
                if not isinstance(value, str):
                    raise ConfigError(f"{where} must be a string")
                kwargs[key] = value
            elif key == "sbatch_args":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(a, str) for a in value
                ):
                    raise ConfigError(f'{where} must be a list of strings, e.g. ["--mem=8G"]')
                kwargs[key] = tuple(value)
            elif key == "timeout_s":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where} must be a number of seconds")
                kwargs[key] = float(value)
            elif key not in ignored:
                valid = ", ".join(SLURM_SITE_KEYS)
                raise ConfigError(f"Slurm site {name!r}: unknown key {key!r}; valid: {valid}")
        return cls(name=name, **kwargs)


def job_script(spec: LaunchSpec) -> str:
    """The batch script for `spec`: enter the job's directory, then ``exec`` its argv, every
    argument single-quoted by `shlex.quote` (no expansion of any kind). Exit status 126 when the
    directory cannot be entered; the shell's 126/127 when the command cannot be run.

    Raises:
        ExecutorError: an empty argv, a non-string argument, or an argv[0] starting with ``-``
            (``exec`` would read it as an option; give a path such as ``./-name``).
    """
    label = f"job {spec.job_id} (run {spec.run_id})"
    if not spec.argv or not all(isinstance(a, str) and "\0" not in a for a in spec.argv):
        raise ExecutorError(f"{label}: argv must be a non-empty list of strings, got {spec.argv!r}")
    if spec.argv[0].startswith("-"):
        raise ExecutorError(f"{label}: argv[0] {spec.argv[0]!r} starts with '-'; use ./ before it")
    cwd = shlex.quote(spec.cwd)
    return (
        "#!/bin/sh\n"
        f"# ecoq job {int(spec.job_id)}, run {int(spec.run_id)}: generated; runs the job's argv.\n"
        f'cd -- {cwd} || {{ echo "ecoq: cannot enter the job directory" {cwd} >&2; exit 126; }}\n'
        f"exec {shlex.join(spec.argv)}\n"
    )


def job_environment(env: Mapping[str, str], gpus: int) -> dict[str, str]:
    """The environment the job gets: `env` without the variables Slurm sets (``SLURM_*``,
    ``SBATCH_*``, ...), and without ``CUDA_VISIBLE_DEVICES`` when the job has GPUs (Slurm
    sets it for the GRES it gives); a job without GPUs gets ``CUDA_VISIBLE_DEVICES=""``.

    Raises:
        ExecutorError: a name that is empty or holds ``=`` or NUL, or a value holding NUL.
    """
    out: dict[str, str] = {}
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ExecutorError(f"environment variable {name!r} cannot be passed to Slurm")
        if not name.startswith(SLURM_ENV_PREFIXES):
            out[name] = value
    if gpus > 0:
        out.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        out["CUDA_VISIBLE_DEVICES"] = ""
    return out


__all__ = [
    "RESERVED_OPTIONS",
    "SLURM_ENV_PREFIXES",
    "SLURM_SITE_KEYS",
    "CommandResult",
    "Runner",
    "SlurmSite",
    "command_failed",
    "job_environment",
    "job_script",
    "run_command",
]
