"""The Slurm executor: ecoq decides when (and on which cluster), Slurm runs the job.

Life of a job on a Slurm site (the daemon's side is in the lead's `daemon.py`):

- **plan time**: `submit(spec, start=T)` runs ``sbatch --hold --begin=T``: the job waits in
  Slurm's queue, held, so it cannot start without ecoq, and Slurm already knows its start.
- **re-plan**: `move(run_dir, T2)` runs ``scontrol update JobId=N StartTime=T2`` (a held job
  stays held). A start at or before now is sent as ``now``, never as a past time, which Slurm
  would silently take as "now" anyway (``--begin`` likewise).
- **due time**: `release(run_dir)` runs ``scontrol release N``; Slurm starts the job as soon as
  it is eligible and a node is free (seconds with ``sched_interval=2``).
- **cancel**: `cancel(run_dir)` runs ``scancel N`` (pending or running; Slurm sends SIGCONT and
  SIGTERM, then SIGKILL after the cluster's ``KillWait``).
- **reap**: `job(run_dir)` reads state, exit code and times from ``scontrol show job -o``, and
  from ``sacct`` once the controller has forgotten the job (``MinJobAge``); `status()` gives the
  same as a `RunStatus`; `energy_j()` reads ``ConsumedEnergyRaw`` from sacct (None when the
  cluster gathers no energy: then the job's own meters, else an estimate, apply).

`SlurmExecutor` also satisfies the `Executor` protocol (`launch` submits released), so the
daemon's claim-then-launch path works unchanged; `wrapper_pid` is 0 for Slurm runs (no local
process). The job script runs the argv list exactly (each argument `shlex.quote`d, then
``exec``), in the job's directory, with the job's environment passed to ``sbatch
--export-file`` (NUL-separated, so any value survives; never on a command line); stdout and
stderr go to ``output.log`` in the run directory, which must be on a file system the compute
nodes share. On a shared box (`RunAs` policy) a root daemon submits each job as its
submitter (``sbatch --uid --gid``; Slurm adds the user's groups), never as root unless the
policy allows root's jobs; scontrol, scancel, squeue and sacct still run as root, which may act
on every user's job. Every command runs with ``TZ=UTC0`` (Slurm prints and parses local times) and a
timeout; failures raise `ExecutorError` naming the command, its exit status and its stderr.
"""

from __future__ import annotations

import json
import os
import signal as sigmod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ecoq.errors import ExecutorError
from ecoq.scheduler.executors import Executor, Launched, LaunchSpec, RunStatus
from ecoq.scheduler.executors.identity import Identity, RunAs, make_traversable, resolve
from ecoq.scheduler.executors.slurm_parse import (
    SACCT_FIELDS,
    SacctRecord,
    SlurmJob,
    parse_sacct,
    parse_scontrol,
    parse_squeue_json,
)
from ecoq.scheduler.executors.slurm_site import (
    CommandResult,
    Runner,
    SlurmSite,
    command_failed,
    job_environment,
    job_script,
    run_command,
)
from ecoq.scheduler.executors.slurm_submit import (
    ENV_FILE,
    OUTPUT_FILE,
    SCRIPT_FILE,
    give_to,
    sbatch_argv,
    slurm_time,
    write_private,
)
from ecoq.scheduler.executors.wrapper import atomic_write_json

RECORD_FILE = "slurm.json"  #: the Slurm job id and how it was submitted


@dataclass(frozen=True)
class Submitted:
    """A job handed to Slurm: its id, whether it is held, the start sent (None: as soon as
    eligible) and when it was submitted (UTC)."""

    job_id: int
    held: bool
    begin: datetime | None
    submitted_at: datetime


@dataclass
class SlurmExecutor:
    """Submits, moves, releases, cancels and reads jobs on one Slurm site.

    Args:
        site: the cluster and its options.
        runner: runs a command (default `run_command`; tests pass recorded outputs).
        clock: the current UTC time (decides whether a start is still in the future).
        env: the daemon's environment, for ``PATH`` and ``SLURM_CONF`` (default os.environ).
        min_lead_s: a start less than this many seconds ahead is sent as ``now``.
        run_as: the shared-box policy (`ecoq.scheduler.executors.identity.RunAs`): every job
            is submitted as its submitter (``sbatch --uid --gid``), never as root unless the
            policy allows root's jobs. None (personal mode): as the daemon's user, as always.
        euid: the daemon's effective uid (tests pass one).
    """

    site: SlurmSite
    runner: Runner = run_command
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    env: Mapping[str, str] | None = None
    min_lead_s: float = 1.0
    run_as: RunAs | None = None
    euid: Callable[[], int] = os.geteuid

    def submitter(self, job_id: int, uid: int | None, gid: int | None = None) -> Identity | None:
        """Whom job `job_id`, submitted by `uid`, is handed to Slurm as; None: as the daemon's
        own user (personal mode, or root's job where the policy allows it).

        Raises:
            ExecutorError: on a shared box (`run_as`): the job has no owner, its owner is root
                and root's jobs are not allowed, the daemon is not root, or the owner has no
                account (any more). The job must then fail; it is never submitted as root.
        """
        if self.run_as is None:
            return None
        return resolve(job_id, uid, gid, self.run_as, euid=self.euid())

    # -- commands --------------------------------------------------------------------------
    def command_env(self) -> dict[str, str]:
        """The environment of every Slurm command: PATH, ``TZ=UTC0``, ``LC_ALL=C`` and
        ``SLURM_CONF`` (the site's, else the daemon's); nothing else of the daemon's."""
        base = os.environ if self.env is None else self.env
        env = {"PATH": base.get("PATH") or "/usr/local/bin:/usr/bin:/bin", "TZ": "UTC0"}
        env["LC_ALL"] = "C"
        conf = self.site.slurm_conf or base.get("SLURM_CONF", "")
        if conf:
            env["SLURM_CONF"] = conf
        return env

    def run(self, *argv: str, what: str = "", check: bool = True) -> CommandResult:
        """Run one Slurm command for this site; with `check`, a non-zero exit raises
        `ExecutorError` (naming `what`, the command, its status and stderr)."""
        result = self.runner(list(argv), env=self.command_env(), timeout_s=self.site.timeout_s)
        if check and result.returncode != 0:
            raise command_failed(result, what)
        return result

    # -- plan time ---------------------------------------------------------------------------
    def submit(
        self, spec: LaunchSpec, *, start: datetime | None = None, gpus: int = 0, hold: bool = True
    ) -> Submitted:
        """Write the run directory (script, environment file) and ``sbatch`` the job.

        With `hold` (plan time) the job waits, held, until `release()`; `start` in the future
        is sent as ``--begin`` so Slurm knows the planned start too. Without `hold` the job
        starts by itself at `start` (or at once). The run directory gets `RECORD_FILE` with the
        Slurm job id; if that cannot be written, the job is cancelled again.

        On a shared box (`run_as`) the job is submitted as its submitter (`submitter()`):
        ``sbatch --uid --gid``, the run directory and its parents up to the policy's data
        folder made traversable (0711, not listable), and `OUTPUT_FILE` and `MARKS_FILE`
        created for the user (0600), as the local executor arranges a run; every other file
        stays root's (sbatch reads the script and the environment file as root).

        Raises:
            ExecutorError: a bad spec, a job that may not run as its submitter (`submitter()`;
                nothing is written then), a run directory that already holds a run, an I/O
                error, or sbatch failing (its exit status and stderr are in the message).
        """
        label = f"job {spec.job_id} (run {spec.run_id})"
        run_dir = spec.run_dir.absolute()
        script = job_script(spec)
        env = job_environment(spec.env, gpus)
        if gpus < 0:
            raise ExecutorError(f"{label}: gpus {gpus} is negative")
        user = self.submitter(spec.job_id, spec.uid, spec.gid)  # refused: nothing is written
        try:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if (run_dir / RECORD_FILE).exists() or (run_dir / SCRIPT_FILE).exists():
                raise ExecutorError(f"{label}: {run_dir} already holds a run; use a fresh one")
            write_private(run_dir / SCRIPT_FILE, script.encode(), 0o700)  # sbatch reads it
            blob = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
            write_private(run_dir / ENV_FILE, blob, 0o600)
            if user is not None:  # the job, as its user, reaches its own files by name only
                make_traversable(run_dir, self.run_as.data_dir if self.run_as else None)
                give_to(run_dir, user)
        except OSError as exc:
            raise ExecutorError(f"{label}: cannot write {run_dir}: {exc}") from exc
        now = self.clock()
        begin = start if start is not None and self._ahead(start, now) else None
        name = f"ecoq-{spec.job_id}-{spec.run_id}-{run_dir.name}"
        argv = sbatch_argv(
            self.site, name=name, run_dir=run_dir, cwd=spec.cwd, hold=hold, begin=begin,
            gpus=gpus, user=user,
        )  # fmt: skip
        record: dict[str, object] = {
            "version": 1,
            "job_id": None,  # until sbatch answers: `job_id()` then finds the job by name
            "name": name,
            "site": self.site.name,
            "cluster": self.site.cluster,
            "held": hold,
            "begin": begin.isoformat() if begin else None,
            "submitted_at": now.isoformat(),
        }
        try:
            self._record(run_dir, record)
        except OSError as exc:
            raise ExecutorError(f"{label}: cannot write {run_dir / RECORD_FILE}: {exc}") from exc
        result = self.run(*argv, check=False)  # a timeout raises, keeping the record
        if result.returncode != 0:
            (run_dir / RECORD_FILE).unlink(missing_ok=True)  # sbatch refused: no job exists
            raise command_failed(result, f"{label}: sbatch")
        try:
            job_id = int(result.stdout.strip().split(";")[0])
        except ValueError:
            raise ExecutorError(
                f"{label}: sbatch printed {result.stdout.strip()!r}, not a job id"
            ) from None
        submitted = Submitted(job_id, hold, begin, now)
        (run_dir / ENV_FILE).unlink(missing_ok=True)  # sbatch has read it; keep no copy
        try:
            self._record(run_dir, {**record, "job_id": job_id})
        except OSError as exc:
            self.run("scancel", str(job_id), check=False)
            raise ExecutorError(
                f"{label}: cannot record Slurm job {job_id} in {run_dir}: {exc}; the job was "
                "cancelled again"
            ) from exc
        return submitted

    def _ahead(self, start: datetime, now: datetime) -> bool:
        return (start - now).total_seconds() >= self.min_lead_s

    # -- re-plan and due time ------------------------------------------------------------------
    def move(self, run_dir: Path, start: datetime) -> None:
        """Set a pending job's start (``scontrol update JobId=N StartTime=...``); a held job
        stays held. A start less than `min_lead_s` ahead (or past) is sent as ``now``.

        Raises:
            ExecutorError: the job already started ("no longer pending": a started job is
                never moved) or is unknown, or scontrol failed.
        """
        job_id = self.job_id(run_dir)
        ahead = self._ahead(start, self.clock())
        when = slurm_time(start) if ahead else "now"
        self.run(
            "scontrol", "update", f"JobId={job_id}", f"StartTime={when}",
            what=f"moving Slurm job {job_id} to {when}",
        )  # fmt: skip
        record = self.record(run_dir)
        if record is not None:
            self._record(run_dir, {**record, "begin": start.isoformat() if ahead else None})

    def record(self, run_dir: Path) -> dict[str, object] | None:
        """The submission record of `run_dir` (`RECORD_FILE`: job id, name, site, held, the
        start last sent as ``begin``); None if nothing was submitted from it.

        Raises:
            ExecutorError: the record is corrupt.
        """
        path = run_dir / RECORD_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ExecutorError(f"corrupt Slurm record {path}: {exc}; inspect it") from exc
        if not isinstance(data, dict):
            raise ExecutorError(f"corrupt Slurm record {path}: not an object; inspect it")
        return data

    def release(self, run_dir: Path, *, now: bool = False) -> None:
        """Let a held job start (``scontrol release N``): at its start time, or at once with
        `now` (its start is first set to ``now``, for "run now" requests). Releasing a job
        that is no longer held is a no-op.

        Raises:
            ExecutorError: the job is unknown to Slurm, or scontrol failed.
        """
        job_id = self.job_id(run_dir)
        if now:
            self.move(run_dir, self.clock())
        self.run("scontrol", "release", str(job_id), what=f"releasing Slurm job {job_id}")

    def hold(self, run_dir: Path) -> None:
        """Hold a pending job again (``scontrol hold N``), e.g. for `ecoq hold`.

        Raises:
            ExecutorError: the job already started or is unknown, or scontrol failed.
        """
        job_id = self.job_id(run_dir)
        self.run("scontrol", "hold", str(job_id), what=f"holding Slurm job {job_id}")

    # -- cancel ------------------------------------------------------------------------------
    def cancel(self, run_dir: Path) -> None:
        """Cancel the job, pending or running (``scancel N``); a job that already ended is
        left as it is. Slurm sends SIGCONT and SIGTERM, then SIGKILL after ``KillWait``.

        Raises:
            ExecutorError: scancel failed.
        """
        job_id = self.job_id(run_dir)
        self.run("scancel", str(job_id), what=f"cancelling Slurm job {job_id}")

    # -- reading -----------------------------------------------------------------------------
    def job(self, run_dir: Path) -> SlurmJob | None:
        """The job as Slurm reports it: ``scontrol show job -o``, or ``sacct`` once the
        controller has forgotten it; None when neither knows it (no accounting, and finished
        longer than ``MinJobAge`` ago).

        Raises:
            ExecutorError: a command failed for another reason, or printed something unreadable.
        """
        job_id = self.job_id(run_dir)
        result = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if result.returncode == 0:
            jobs = [j for j in parse_scontrol(result.stdout) if j.job_id == job_id]
            if jobs:
                return jobs[0]
        elif "Invalid job id" not in result.stderr:
            raise command_failed(result, f"reading Slurm job {job_id}")
        record = self.accounting(job_id)
        return record.job if record is not None else None

    def accounting(self, job_id: int) -> SacctRecord | None:
        """``sacct``'s record of `job_id` (a `SacctRecord`), or None when accounting is off
        (no slurmdbd) or has no such job.

        Raises:
            ExecutorError: sacct printed something unreadable.
        """
        result = self.run(
            "sacct", "-j", str(job_id), "--noheader", "--parsable2", f"--format={SACCT_FIELDS}",
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            return None  # "Slurm accounting storage is disabled", or slurmdbd is down
        return parse_sacct(result.stdout, job_id)

    def poll(self, job_ids: Sequence[int]) -> dict[int, SlurmJob]:
        """Many jobs in one ``squeue --json --states=all`` call (22.05 ignores ``--jobs``, so
        the result is filtered here); jobs the controller has forgotten are absent.

        Raises:
            ExecutorError: squeue failed or printed something unreadable.
        """
        if not job_ids:
            return {}
        ids = ",".join(str(i) for i in job_ids)
        result = self.run("squeue", "--json", "--states=all", f"--jobs={ids}", check=False)
        if result.returncode != 0 and "Invalid job id" in result.stderr:
            # Newer squeue refuses a list naming a forgotten job: list this user's jobs instead
            # (every user's on a shared box, where the jobs are the submitters', not root's).
            mine = [] if self.run_as is not None else ["--me"]
            result = self.run("squeue", "--json", "--states=all", *mine, check=False)
        if result.returncode != 0:
            raise command_failed(result, "squeue")
        wanted = set(job_ids)
        return {j.job_id: j for j in parse_squeue_json(result.stdout) if j.job_id in wanted}

    def energy_j(self, run_dir: Path) -> float | None:
        """Joules the job consumed by Slurm's account (``sacct`` ConsumedEnergyRaw); None when
        the cluster gathers no energy or keeps no accounting: use the job's meters, else an
        estimate, and label it so."""
        record = self.accounting(self.job_id(run_dir))
        return None if record is None else record.energy_j

    def job_id(self, run_dir: Path) -> int:
        """The Slurm job id recorded in `run_dir` (see `recorded_id`).

        Raises:
            ExecutorError: nothing was submitted from `run_dir`, or the record is corrupt.
        """
        job_id = self.recorded_id(run_dir)
        if job_id is None:
            raise ExecutorError(f"no Slurm job was submitted from {run_dir}")
        return job_id

    def recorded_id(self, run_dir: Path) -> int | None:
        """The Slurm job id recorded in `run_dir`, None if nothing was submitted from it. A
        record written just before ``sbatch`` (the daemon died before it learnt the id) is
        completed by finding the job by its name; None if Slurm has no job of that name.

        Raises:
            ExecutorError: the record is corrupt, or squeue failed.
        """
        path = run_dir / RECORD_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            job_id, name = data.get("job_id"), data.get("name")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            raise ExecutorError(f"corrupt Slurm record {path}: {exc}; inspect it") from exc
        if isinstance(job_id, int):
            return job_id
        found = self._find_by_name(str(name))
        if found is not None:
            self._record(run_dir, {**data, "job_id": found})
        return found

    def _find_by_name(self, name: str) -> int | None:
        result = self.run("squeue", "--json", "--states=all", f"--name={name}", what="squeue")
        ids = [j.job_id for j in parse_squeue_json(result.stdout) if j.name == name]
        return max(ids) if ids else None

    def _record(self, run_dir: Path, data: Mapping[str, object]) -> None:
        atomic_write_json(run_dir / RECORD_FILE, dict(data))

    # -- the Executor protocol ---------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Launched:
        """Submit released, to start at once (the daemon's claim-then-launch path). The GPU
        count is the number of entries in the spec's ``CUDA_VISIBLE_DEVICES``.

        Raises:
            ExecutorError: as `submit`.
        """
        visible = spec.env.get("CUDA_VISIBLE_DEVICES", "")
        gpus = len([g for g in visible.split(",") if g.strip()])
        submitted = self.submit(spec, start=None, gpus=gpus, hold=False)
        return Launched(wrapper_pid=0, started_at=submitted.submitted_at)

    def status(self, run_dir: Path) -> RunStatus:
        """The run as a `RunStatus`: pending in Slurm (held or not) is ``starting``; running
        or suspended is ``running`` (`pid` None); ended is ``exited`` with the exit code
        (128+S for a signal; None when Slurm ended it, e.g. TIMEOUT, with `reason`); a job
        that never got a node (cancelled while pending) is ``not-started``; a job Slurm has
        forgotten is ``vanished``.

        Raises:
            ExecutorError: a Slurm command failed, or a state ecoq does not know.
        """
        job_id = self.recorded_id(run_dir)
        if job_id is None:
            return RunStatus("not-started", reason="nothing was submitted to Slurm from here")
        job = self.job(run_dir)
        if job is None:
            return RunStatus(
                "vanished",
                reason=f"Slurm no longer knows job {job_id} (finished jobs are kept MinJobAge "
                "seconds, and there is no accounting record); its outcome is unknown",
            )
        state = job.ecoq_state
        if state == "planned":
            why = "held until ecoq releases it" if job.held else f"waiting: {job.reason or '-'}"
            return RunStatus("starting", reason=f"pending in Slurm as job {job_id} ({why})")
        if state in ("running", "paused"):
            reason = "suspended in Slurm" if state == "paused" else None
            return RunStatus("running", started_at=job.started_at, reason=reason)
        if not job.ran:
            return RunStatus(
                "not-started", reason=f"Slurm job {job_id} was {job.state.lower()} before it ran"
            )
        reason = None
        if state != "succeeded":
            reason = f"Slurm job {job_id} ended {job.state}" + (
                f" ({job.reason})" if job.reason else ""
            )
        return RunStatus(
            "exited",
            exit_code=job.ecoq_exit_code,
            finished_at=job.ended_at,
            started_at=job.started_at,
            reason=reason,
        )

    def signal(self, run_dir: Path, sig: sigmod.Signals | int) -> bool:
        """Send `sig` to all of the running job's processes (``scancel --signal=SIG --full``).
        Returns False if the job is not running (pending, ended or unknown).

        Raises:
            ExecutorError: scancel failed although the job still runs.
        """
        job = self.job(run_dir)
        if job is None or job.ecoq_state not in ("running", "paused"):
            return False
        name = sigmod.Signals(sig).name.removeprefix("SIG")
        result = self.run("scancel", f"--signal={name}", "--full", str(job.job_id), check=False)
        if result.returncode == 0:
            return True
        again = self.job(run_dir)
        if again is None or again.ecoq_state not in ("running", "paused"):
            return False
        raise command_failed(result, f"signalling Slurm job {job.job_id}")

    def terminate(self, run_dir: Path, grace_s: float = 0.0) -> None:
        """Cancel the job (``scancel``); `grace_s` is not used: Slurm sends SIGTERM, then
        SIGKILL after the cluster's ``KillWait``. Returns at once."""
        if self.recorded_id(run_dir) is not None:
            self.cancel(run_dir)

    def abandon(self, run_dir: Path) -> bool:
        """Make sure the run never starts: cancel it if it is still pending. Returns True if it
        never ran (or nothing was submitted), False if it started (follow it with `status`).

        Raises:
            ExecutorError: a Slurm command failed.
        """
        if self.recorded_id(run_dir) is None:
            return True
        job = self.job(run_dir)
        if job is None:
            return False  # forgotten: whether it ran is unknown, so it must not be re-run
        if job.ecoq_state == "planned":
            # Hold first: a held job cannot start, so the cancel below cannot hit a job that
            # started in between (scontrol hold on a started job changes nothing).
            self.run("scontrol", "hold", str(job.job_id), check=False)
            job = self.job(run_dir)
            if job is not None and job.ecoq_state == "planned":
                self.cancel(run_dir)
                return True
        return job is not None and not job.ran and job.finished


if TYPE_CHECKING:
    _satisfies_protocol: Executor = SlurmExecutor(SlurmSite("x"))


__all__ = [
    "ENV_FILE",
    "OUTPUT_FILE",
    "RECORD_FILE",
    "SCRIPT_FILE",
    "CommandResult",
    "Runner",
    "SlurmExecutor",
    "SlurmJob",
    "SlurmSite",
    "Submitted",
    "run_command",
    "sbatch_argv",
]
