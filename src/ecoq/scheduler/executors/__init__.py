"""Executors run a job's command somewhere and report, from durable records, how it went.

This package's `__init__` stays stdlib-only and light: the local executor's wrapper process
(`python -m ecoq.scheduler.executors.wrapper`) imports it on every job start. Import the
implementations from their modules (`ecoq.scheduler.executors.local.LocalExecutor`).
"""

from __future__ import annotations

import signal as sigmod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

RunState = Literal["not-started", "starting", "running", "exited", "vanished"]


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for one run of one job.

    `argv` is executed directly (never through a shell); `env` is the job's complete environment
    (nothing is inherited from the daemon); `run_dir` is this run's private directory, which
    holds the run's records and its `output.log`, and must be fresh (one run per directory).

    `uid` is the user the job runs as: its submitter (`Job.uid`). A daemon running as root
    starts the job as that user, with the user's primary group (or `gid`) and supplementary
    groups; None, or the daemon's own uid, runs it as the daemon's user. On a shared box the
    executor's `RunAs` policy makes the switch mandatory (`ecoq.scheduler.executors.identity`).
    """

    job_id: int
    run_id: int
    argv: list[str]
    cwd: str
    env: dict[str, str] = field(repr=False)  # may be large; kept out of log lines
    run_dir: Path
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Launched:
    """A launch that was handed to a wrapper process; `started_at` is when it was spawned (UTC)."""

    wrapper_pid: int
    started_at: datetime


@dataclass(frozen=True)
class RunStatus:
    """What the run's records and process liveness say now.

    - `not-started`: nothing was launched in the run directory, the launch was abandoned, or
      the wrapper exited before it took the start token (`reason` says which); the job never
      ran and may be requeued once `abandon()` returns True.
    - `starting`: launched, but the job's start is not recorded yet (transient; if it lasts,
      the wrapper failed before starting the job: `abandon()` is safe).
    - `running`: the job's process (or its wrapper) is alive; `reason` is set while the job
      is stopped (SIGSTOP).
    - `exited`: the wrapper recorded the exit: `exit_code` (128+N when killed by signal N;
      126/127 when the command could not be started, 125 when ecoq itself failed, with
      `reason`) and `finished_at`.
    - `vanished`: wrapper and job are gone without an exit record (e.g. both SIGKILLed, or
      the machine rebooted); the outcome is unknown.

    `started_at` and `pid` (the job's main process, also its process group id) are set once
    the start is recorded.
    """

    state: RunState
    exit_code: int | None = None
    finished_at: datetime | None = None
    started_at: datetime | None = None
    pid: int | None = None
    reason: str | None = None


class Executor(Protocol):
    """Runs jobs and learns, even after a daemon restart, how they ended.

    A job must never start twice: a restarted daemon calls `abandon()` on runs that are not
    known to have started, and requeues a run only when that returns True.
    """

    def launch(self, spec: LaunchSpec) -> Launched:
        """Start `spec` without waiting for it; raises ExecutorError if it cannot be handed off."""
        ...

    def status(self, run_dir: Path) -> RunStatus:
        """Report the run's state from its records; never changes anything."""
        ...

    def signal(self, run_dir: Path, sig: sigmod.Signals | int) -> bool:
        """Send `sig` to the job's processes; False if they are already gone."""
        ...

    def terminate(self, run_dir: Path, grace_s: float = 0.0) -> None:
        """Ask the job to stop (SIGTERM); see the implementation for `grace_s`."""
        ...

    def abandon(self, run_dir: Path) -> bool:
        """Make sure a not-yet-started run never starts; False if it already started."""
        ...


__all__ = ["Executor", "LaunchSpec", "Launched", "RunState", "RunStatus"]
