"""The per-job wrapper: `python -m ecoq.scheduler.executors.wrapper RUN_DIR`.

Started (detached) by `LocalExecutor.launch`. It reads `RUN_DIR/spec.json`, takes the run's
start token (if the daemon abandoned the run first, it exits 0 without running anything),
starts the job in its own session and process group, records `started.json`, waits, kills
what is left of the job's process group once the job's main process has exited, and records
`exit.json`. When the spec names a user (`run_as`: a root daemon starting a user's job), the job
runs as that user: its groups, gid and uid are set, in that order, before it changes to its
working directory and is executed, so the directory and the program are checked with the
user's rights; its `output.log` and `marks.jsonl` belong to the user, every other record to the
wrapper. SIGHUP, SIGINT and SIGTERM do not stop the wrapper: cancels go to the job's
process group, and the wrapper stays to record the outcome.

Stdlib only, so that it starts fast; `local.py` imports the file names and helpers from here.
Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecoq.scheduler.executors.identity import Identity

SPEC_FILE = "spec.json"
TOKEN_FILE = "start.token"
STARTED_FILE = "started.json"
EXIT_FILE = "exit.json"
OUTPUT_LOG = "output.log"
WRAPPER_LOG = "wrapper.log"
#: `ecoq.track`'s records, written by the job itself (ecoq.track.MARKS_FILE; a test keeps them
#: equal). Created by the wrapper and given to the job's user when the job runs as another user.
MARKS_FILE = "marks.jsonl"
#: The umask of a job started as another user (that of a login shell; the daemon's is 077).
JOB_UMASK = 0o022
FORMAT_VERSION = 1
EXIT_ECOQ_FAILED = 125  # as `ecoq meter`: ecoq itself failed
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


def utc_now_iso() -> str:
    """Now as ISO-8601 UTC with a `Z` suffix."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(path: Path, data: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data, indent=1).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` (mode 0600) so readers see the old file, or all of the new one."""
    tmp = _write_tmp(path, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def take_token(run_dir: Path, by: str) -> bool:
    """Atomically create `RUN_DIR/start.token` naming its taker; False if it already exists.

    The token is created with its content complete (hard link of a written temporary file),
    so a reader never sees it empty; where the file system has no hard links, falls back to
    O_CREAT|O_EXCL and then writes. Raises OSError for other failures.
    """
    token = run_dir / TOKEN_FILE
    me = proc_stat(os.getpid())
    data = {
        "by": by,
        "pid": os.getpid(),
        "start_ticks": me[0] if me else None,
        "boot_id": boot_id(),
        "taken_at": utc_now_iso(),
    }
    tmp = _write_tmp(token, data)
    try:
        os.link(tmp, token)
    except FileExistsError:
        return False
    except OSError:  # no hard links here: exclusive create, then write
        try:
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(run_dir)
    return True


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks after boot, state letter) of process `pid`, or None if gone.

    The start time tells a process from a later one that reused its pid; state `Z` is a zombie
    (exited, not yet reaped).
    """
    if pid <= 0:
        return None
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the command name may hold spaces or ")"
    return int(fields[19]), fields[0].decode()  # stat fields 22 (starttime) and 3 (state)


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15; `SIG34` for signals without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def boot_id() -> str:
    """This boot's id ("" if unknown): pids and start ticks only compare within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _read_spec(run_dir: Path) -> tuple[list[str], str, dict[str, str], Identity | None]:
    spec = json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8"))
    argv, cwd, env = spec["argv"], spec["cwd"], spec["env"]
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv is not a list of strings")
    if not isinstance(cwd, str):
        raise ValueError("cwd is not a string")
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise ValueError("env is not a mapping of strings")
    run_as = spec.get("run_as")
    return argv, cwd, env, None if run_as is None else Identity.from_json(run_as)


def _record_exit(
    run_dir: Path, exit_code: int, sig: str | None = None, reason: str | None = None
) -> None:
    atomic_write_json(
        run_dir / EXIT_FILE,
        {
            "version": FORMAT_VERSION,
            "exit_code": exit_code,
            "signal": sig,
            "finished_at": utc_now_iso(),
            "reason": reason,
        },
    )


def _ignore(signum: int, frame: object) -> None:
    """A handler, not SIG_IGN: handled signals revert to default in the exec'd job."""


def _prepare_signals() -> None:
    # The job inherits the signal mask and ignored signals; give it a clean slate (SIGPIPE and
    # SIGXFSZ are restored by subprocess itself). SIGCHLD must not be ignored, or we cannot wait.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in signal.valid_signals():
        if sig in (signal.SIGPIPE, signal.SIGXFSZ):
            continue
        try:
            if signal.getsignal(sig) is signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)


def _start_failure(exc: Exception, argv: list[str], cwd: str) -> tuple[int, str]:
    filename = getattr(exc, "filename", None)
    detail = getattr(exc, "strerror", None) or str(exc)
    code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
    if filename is not None and filename == cwd and filename != argv[0]:
        return code, f"cannot change to working directory {cwd!r}: {detail}"
    return code, f"cannot execute {argv[0]!r}: {detail}"


class _SwitchFailed(Exception):
    """The job could not be given to its user (ecoq's failure, exit 125); the message says why."""


class _Forked:
    """A child started by `_spawn_as`; `wait()` returns as `Popen.wait` does (-N: signal N)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def _give_files(run_dir: Path, out_fd: int, user: Identity) -> None:
    """Hand the files the job writes (its output, its marks) to its user."""
    try:
        os.fchown(out_fd, user.uid, user.gid)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(run_dir / MARKS_FILE, flags, 0o600)
        try:
            os.fchown(fd, user.uid, user.gid)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _SwitchFailed(f"cannot give the job's files to user {user.user}: {exc}") from exc


def _become(user: Identity) -> None:
    """In the child: drop every privilege for `user`'s (groups first: only root may set them)."""
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)  # as root: real, effective and saved uid, so there is no way back
    if user.uid != 0 and (os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3):
        raise PermissionError(1, "the uid or gid did not change")


def _spawn_as(
    argv: list[str], cwd: str, env: dict[str, str], out_fd: int, user: Identity
) -> _Forked:
    """Start `argv` as `user` in a new session, as `subprocess.Popen(start_new_session=True)`
    would, but changing to `cwd` only after the switch (Popen changes directory first, as root,
    which would let a job start inside a folder its user may not enter).

    Raises OSError (its `filename` is `cwd` or the program) when the directory or the program
    fails, _SwitchFailed when the user cannot be taken on.
    """
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)  # closes on a successful exec: EOF means "ran"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        stage = "switch"
        try:
            os.setsid()
            for target, fd in ((0, null), (1, out_fd), (2, out_fd)):
                os.dup2(fd, target)  # dup2's copies are inheritable
            os.closerange(3, report_w)
            os.closerange(report_w + 1, os.sysconf("SC_OPEN_MAX"))
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; exec keeps that
                signal.signal(sig, signal.SIG_DFL)
            os.umask(JOB_UMASK)
            _become(user)
            stage = "cwd"
            os.chdir(cwd)
            stage = "exec"
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:  # the child must report and exit, whatever happened
            error = exc if isinstance(exc, OSError) else OSError(0, repr(exc))
            report = {"stage": stage, "errno": error.errno, "strerror": error.strerror}
            with contextlib.suppress(BaseException):
                os.write(report_w, json.dumps(report).encode())
        finally:
            os._exit(EXIT_ECOQ_FAILED)
    os.close(report_w)
    os.close(null)
    with os.fdopen(report_r, "rb") as fh:
        data = fh.read()
    if not data:
        return _Forked(pid)
    os.waitpid(pid, 0)
    report = json.loads(data)
    detail = report.get("strerror") or "failed"
    if report.get("stage") == "switch":
        raise _SwitchFailed(f"cannot start the job as user {user.user} (uid {user.uid}): {detail}")
    where = cwd if report.get("stage") == "cwd" else argv[0]
    raise OSError(report.get("errno") or 0, detail, where)


def run(run_dir: Path) -> int:
    """Run the job described in `run_dir` once; returns the wrapper's own exit status."""
    run_as: Identity | None = None
    try:
        argv, cwd, env, run_as = _read_spec(run_dir)
        bad_spec = None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        argv, cwd, env = [], "", {}
        bad_spec = f"cannot read {run_dir / SPEC_FILE}: {exc}"
    if not take_token(run_dir, "wrapper"):
        print(f"ecoq-wrapper: {run_dir}: start token already taken; not starting", file=sys.stderr)
        return 0
    if bad_spec is not None:
        print(f"ecoq-wrapper: {bad_spec}", file=sys.stderr)
        _record_exit(run_dir, EXIT_ECOQ_FAILED, reason=bad_spec)
        return 1
    out_fd = os.open(
        run_dir / OUTPUT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
    )
    child: subprocess.Popen[bytes] | _Forked
    try:
        if run_as is not None:
            _give_files(run_dir, out_fd, run_as)
        if not argv:
            raise FileNotFoundError(0, "empty command")
        if run_as is not None:
            child = _spawn_as(argv, cwd, env, out_fd, run_as)
        else:
            child = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: pgid == child pid
                close_fds=True,
            )
    except _SwitchFailed as exc:
        os.write(out_fd, f"ecoq: {exc}\n".encode(errors="replace"))
        _record_exit(run_dir, EXIT_ECOQ_FAILED, reason=str(exc))
        return 0
    except (OSError, ValueError) as exc:
        code, reason = _start_failure(exc, argv or [""], cwd)
        os.write(out_fd, f"ecoq: {reason}\n".encode(errors="replace"))
        _record_exit(run_dir, code, reason=reason)
        return 0
    finally:
        os.close(out_fd)
    me, job = proc_stat(os.getpid()), proc_stat(child.pid)  # job: not reaped, so present
    try:
        atomic_write_json(
            run_dir / STARTED_FILE,
            {
                "version": FORMAT_VERSION,
                "wrapper_pid": os.getpid(),
                "wrapper_start_ticks": me[0] if me else None,
                "child_pid": child.pid,
                "pgid": child.pid,
                "child_start_ticks": job[0] if job else None,
                "boot_id": boot_id(),
                "started_at": utc_now_iso(),
            },
        )
    except OSError as exc:  # unrecorded jobs must not run: stop it, then try to say why
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        _record_exit(run_dir, EXIT_ECOQ_FAILED, reason=f"cannot record the job's start: {exc}")
        return 1
    # Wait without reaping: while the job's main process is a zombie its pid (== pgid) cannot
    # be reused, so killing the rest of its group is safe.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    returncode = child.wait()
    if returncode < 0:
        _record_exit(run_dir, 128 - returncode, sig=signal_name(-returncode))
    else:
        _record_exit(run_dir, returncode)
    return 0


def main(args: list[str] | None = None) -> int:
    """Entry point; returns 0 when the run was handled (or abandoned), 1 or 2 on failure."""
    args = sys.argv[1:] if args is None else args
    if len(args) != 1:
        print("usage: python -m ecoq.scheduler.executors.wrapper RUN_DIR", file=sys.stderr)
        return 2
    _prepare_signals()
    try:
        return run(Path(args[0]))
    except OSError as exc:
        print(f"ecoq-wrapper: {args[0]}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
