"""The local executor: each job runs on this machine under its own ecoq wrapper process.

A run lives in its own directory (mode 0700), which holds everything a restarted daemon needs:

- `spec.json`     written by `launch()` before the wrapper is spawned (what to run);
- `launch.json`   written by `launch()` once the wrapper is spawned: its pid and start time, so a
                  wrapper that died before it took the start token is told from a slow one;
- `start.token`   taken exactly once, by the wrapper (it will start the job) or by `abandon()`
                  (nobody will): the guard against starting a job twice;
- `started.json`  written by the wrapper once the job's process exists;
- `exit.json`     written by the wrapper when the job's main process has exited;
- `output.log`    the job's stdout and stderr (appended); `wrapper.log` the wrapper's own.

Every JSON record is written atomically (temporary file, fsync, rename). `status()` only reads
these files and checks whether the recorded processes are alive, comparing each pid with the
start time (and boot id) recorded with it, so a reused pid is never mistaken for the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal as sigmod
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecoq.errors import ExecutorError
from ecoq.faults import fault
from ecoq.scheduler.executors import Executor, Launched, LaunchSpec, RunState, RunStatus
from ecoq.scheduler.executors.identity import Identity, RunAs, make_traversable, resolve
from ecoq.scheduler.executors.wrapper import (
    EXIT_FILE,
    FORMAT_VERSION,
    SPEC_FILE,
    STARTED_FILE,
    TOKEN_FILE,
    WRAPPER_LOG,
    atomic_write_json,
    boot_id,
    proc_stat,
    take_token,
    utc_now_iso,
)

WRAPPER_MODULE = "ecoq.scheduler.executors.wrapper"
LAUNCH_FILE = "launch.json"
_POLL_S = 0.05


def write_spec(spec: LaunchSpec, run_as: Identity | None = None) -> None:
    """Create `spec.run_dir` (0700, parents too) and write `spec.json` atomically.

    `run_as` is the user the wrapper starts the job as (None: the wrapper's own user).

    Raises ExecutorError if the spec is malformed or the directory already holds a run
    (a run directory is never reused: that could start a job twice), OSError on I/O failure.
    """
    label = f"job {spec.job_id} (run {spec.run_id})"
    if not spec.argv or not all(isinstance(arg, str) for arg in spec.argv):
        raise ExecutorError(f"{label}: argv must be a non-empty list of strings, got {spec.argv!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec.env.items()):
        raise ExecutorError(f"{label}: env must map strings to strings")
    run_dir = spec.run_dir
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    for name in (SPEC_FILE, TOKEN_FILE):
        if (run_dir / name).exists():
            raise ExecutorError(
                f"{label}: {run_dir} already holds a run ({name} exists); "
                "give each run a fresh directory"
            )
    atomic_write_json(
        run_dir / SPEC_FILE,
        {
            "version": FORMAT_VERSION,
            "job_id": spec.job_id,
            "run_id": spec.run_id,
            "argv": list(spec.argv),
            "cwd": spec.cwd,
            "env": dict(spec.env),
            "created_at": utc_now_iso(),
            **({"run_as": run_as.to_json()} if run_as is not None else {}),
        },
    )


def _read_json(path: Path, *, tolerant: bool = False) -> dict[str, Any] | None:
    """The JSON object in `path`, None if absent (or unreadable, when `tolerant`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if tolerant:
            return None
        raise ExecutorError(f"corrupt run record {path}: {exc}; inspect or remove it") from exc
    if not isinstance(data, dict):
        if tolerant:
            return None
        raise ExecutorError(f"corrupt run record {path}: not a JSON object")
    return data


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def _proc_state(pid: Any, start_ticks: Any, boot: Any) -> str | None:
    """State letter of the process recorded as (pid, start ticks, boot id), None if it is gone."""
    if not isinstance(pid, int) or not isinstance(start_ticks, int):
        return None
    if boot and boot != boot_id():
        return None
    current = proc_stat(pid)
    if current is None or current[0] != start_ticks:
        return None
    return current[1]


def _record_launch(run_dir: Path, pid: int) -> None:
    """Write `launch.json`: the wrapper's pid with its start time. Best effort: the wrapper runs
    whatever happens here, and without the record `status()` says "starting" until the
    wrapper takes its token (the daemon then checks the pid it stored)."""
    stat = proc_stat(pid)  # our unreaped child: readable even if it exited already
    if stat is None:
        return
    record = {"wrapper_pid": pid, "wrapper_start_ticks": stat[0], "boot_id": boot_id()}
    with contextlib.suppress(OSError):
        atomic_write_json(run_dir / LAUNCH_FILE, record)


def _alive(pid: Any, start_ticks: Any, boot: Any) -> bool:
    state = _proc_state(pid, start_ticks, boot)
    return state is not None and state not in ("Z", "X")


class LocalExecutor:
    """Runs jobs on this machine, each under `python -m ecoq.scheduler.executors.wrapper`.

    `python` is the interpreter that runs the wrapper (it must be able to import ecoq).
    `run_as` is the shared-box policy: every job runs as its submitter, never as root (see
    `ecoq.scheduler.executors.identity`); without it a root daemon still starts a job as the
    `uid` its spec names. Linux only. Not thread-safe; one daemon owns a run directory.
    """

    def __init__(self, python: str = sys.executable, *, run_as: RunAs | None = None) -> None:
        self.python = python
        self.run_as = run_as
        self._wrappers: list[subprocess.Popen[bytes]] = []

    def launch(self, spec: LaunchSpec) -> Launched:
        """Write the spec, spawn the wrapper detached from this process, and return at once.

        The wrapper runs in its own session with stdin from /dev/null and its output in
        `wrapper.log`, so neither killing this process (even SIGKILL, or its whole process
        group) nor closing its terminal affects the wrapper or the job. Raises ExecutorError
        naming the job and the OS error if the spec cannot be written or the wrapper cannot
        be spawned (then the run is abandoned: it will never start), or the job may not run as
        its user (shared box: no owner, root, or an unknown uid; nothing is written then).
        """
        self.reap()
        spec = replace(spec, run_dir=spec.run_dir.absolute())
        label = f"job {spec.job_id} (run {spec.run_id})"
        identity = resolve(spec.job_id, spec.uid, spec.gid, self.run_as, euid=os.geteuid())
        try:
            write_spec(spec, identity)
            if identity is not None:
                make_traversable(spec.run_dir, self.run_as.data_dir if self.run_as else None)
        except OSError as exc:
            raise ExecutorError(f"{label}: cannot write {spec.run_dir / SPEC_FILE}: {exc}") from exc
        fault("launch-spec")
        try:
            log_fd = os.open(
                spec.run_dir / WRAPPER_LOG,
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            try:
                wrapper = subprocess.Popen(
                    [self.python, "-m", WRAPPER_MODULE, str(spec.run_dir)],
                    cwd=spec.run_dir,  # not the daemon's cwd, which `-m` puts on sys.path
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(log_fd)
        except OSError as exc:
            with contextlib.suppress(ExecutorError):
                self.abandon(spec.run_dir)
            raise ExecutorError(
                f"{label}: cannot start the wrapper {self.python!r}: {exc}; check that this "
                "Python can import ecoq"
            ) from exc
        self._wrappers.append(wrapper)
        _record_launch(spec.run_dir, wrapper.pid)
        fault("launch-after")
        return Launched(wrapper_pid=wrapper.pid, started_at=datetime.now(UTC))

    def status(self, run_dir: Path) -> RunStatus:
        """The run's state from its files and process liveness (see RunStatus); read-only.

        Raises ExecutorError if a record is corrupt.
        """
        self.reap()
        exited = self._exited(run_dir)
        if exited is not None:
            return exited
        started = _read_json(run_dir / STARTED_FILE)
        if started is not None:
            return self._started_status(run_dir, started)
        token = _read_json(run_dir / TOKEN_FILE, tolerant=True)
        if token is not None:
            if token.get("by") == "abandon":
                return RunStatus("not-started", reason="abandoned before the job started")
            if _alive(token.get("pid"), token.get("start_ticks"), token.get("boot_id")):
                return RunStatus("starting", reason="the wrapper is starting the job")
            # The wrapper is gone: whatever it wrote is on disk now.
            if (run_dir / STARTED_FILE).exists() or (run_dir / EXIT_FILE).exists():
                return self.status(run_dir)
            return RunStatus(
                "vanished",
                reason=f"wrapper {token.get('pid')} died after taking the start token and before "
                f"recording the job's start (whether the job ran is unknown); see {WRAPPER_LOG}",
            )
        if (run_dir / TOKEN_FILE).exists():
            return RunStatus("starting", reason="the start token is being taken")
        if (run_dir / SPEC_FILE).exists():
            launch = _read_json(run_dir / LAUNCH_FILE, tolerant=True)
            if launch is not None and not _alive(
                launch.get("wrapper_pid"), launch.get("wrapper_start_ticks"), launch.get("boot_id")
            ):
                if (run_dir / TOKEN_FILE).exists():  # it took the token, then exited
                    return self.status(run_dir)
                return RunStatus(
                    "not-started",
                    reason="the wrapper exited before it took the start token; the job never "
                    f"started (see {WRAPPER_LOG})",
                )
            return RunStatus(
                "starting",
                reason="waiting for the wrapper to take the start token; if this lasts, "
                f"abandon() the run and see {WRAPPER_LOG}",
            )
        return RunStatus("not-started", reason="nothing was launched in this directory")

    def _exited(self, run_dir: Path) -> RunStatus | None:
        record = _read_json(run_dir / EXIT_FILE)
        if record is None:
            return None
        started = _read_json(run_dir / STARTED_FILE) or {}
        reason = record.get("reason")
        if reason is None and record.get("signal"):
            reason = f"killed by {record['signal']}"
        exit_code = record.get("exit_code")
        return RunStatus(
            "exited",
            exit_code=exit_code if isinstance(exit_code, int) else None,
            finished_at=_time(record.get("finished_at")),
            started_at=_time(started.get("started_at")),
            pid=started.get("child_pid"),
            reason=reason,
        )

    def _started_status(self, run_dir: Path, started: dict[str, Any]) -> RunStatus:
        boot = started.get("boot_id")
        child = _proc_state(started.get("child_pid"), started.get("child_start_ticks"), boot)
        wrapper_alive = _alive(started.get("wrapper_pid"), started.get("wrapper_start_ticks"), boot)
        started_at, pid = _time(started.get("started_at")), started.get("child_pid")
        if (child is not None and child not in ("Z", "X")) or wrapper_alive:
            reason = "stopped" if child in ("T", "t") else None
            return RunStatus("running", started_at=started_at, pid=pid, reason=reason)
        exited = self._exited(run_dir)  # both gone: nothing can write any more
        if exited is not None:
            return exited
        return RunStatus(
            "vanished",
            started_at=started_at,
            pid=pid,
            reason="wrapper and job are gone without recording an exit status",
        )

    def signal(self, run_dir: Path, sig: sigmod.Signals | int) -> bool:
        """Send `sig` to the job's whole process group (the job and its descendants).

        Returns True if the job's main process was alive and signalled; False if the job has
        not started yet (for a run still "starting", `abandon()` it or retry once it is
        running) or its main process is gone (any of its leftovers still in the group are
        signalled all the same). Raises ExecutorError if the group may not be signalled
        (another user's job).
        """
        self.reap()
        if (run_dir / EXIT_FILE).exists():
            return False
        started = _read_json(run_dir / STARTED_FILE)
        if started is None:
            return False
        pgid = started.get("pgid")
        # A zombie main process still holds its pid, hence its group id: signalling is safe.
        child = _proc_state(
            started.get("child_pid"), started.get("child_start_ticks"), started.get("boot_id")
        )
        if child is None or not isinstance(pgid, int) or pgid <= 1:
            return False
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise ExecutorError(f"cannot signal process group {pgid} of {run_dir}: {exc}") from exc
        return child not in ("Z", "X")

    def terminate(self, run_dir: Path, grace_s: float = 0.0) -> None:
        """Send SIGTERM, then SIGCONT (so a paused job can act on it), to the job's group.

        With `grace_s` 0 (the default) it returns at once: the caller checks `status()` later
        and sends SIGKILL through `signal()` if the job outlives its grace period. With
        `grace_s` > 0 it blocks up to that long for the job to exit, then SIGKILLs the group
        (and returns without waiting for the exit to be recorded).
        """
        if not self.signal(run_dir, sigmod.SIGTERM):
            return
        self.signal(run_dir, sigmod.SIGCONT)
        if grace_s <= 0:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.status(run_dir).state != "running":
                return
            time.sleep(_POLL_S)
        self.signal(run_dir, sigmod.SIGKILL)

    def abandon(self, run_dir: Path) -> bool:
        """Take the run's start token so that a late wrapper never starts the job.

        Returns True if the run is (now or already) abandoned: the job never started and may
        be requeued. Returns False if the wrapper took the token first: the job is starting,
        running or done; follow it with `status()`. Raises ExecutorError on I/O failure.
        """
        try:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if take_token(run_dir, "abandon"):
                return True
        except OSError as exc:
            raise ExecutorError(f"cannot abandon the run in {run_dir}: {exc}") from exc
        token = _read_json(run_dir / TOKEN_FILE, tolerant=True)
        return token is not None and token.get("by") == "abandon"

    def reap(self, timeout_s: float = 0.0) -> int:
        """Collect exited wrapper processes spawned by this executor (every method does so).

        Waits up to `timeout_s` for all of them (e.g. at shutdown); returns how many are
        still running. Jobs are unaffected either way.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._wrappers = [w for w in self._wrappers if w.poll() is None]
            if not self._wrappers or time.monotonic() >= deadline:
                return len(self._wrappers)
            time.sleep(_POLL_S)


if TYPE_CHECKING:
    _satisfies_protocol: Executor = LocalExecutor()


__all__ = ["LaunchSpec", "Launched", "LocalExecutor", "RunState", "RunStatus", "write_spec"]
