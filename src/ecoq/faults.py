"""Named crash points for the fault-injection tests (`tests/reliability`).

`fault("claim-after")` does nothing unless the environment variable `ECOQ_FAULT` names that
point; then the n-th time this process reaches it, the process SIGKILLs itself: no `finally`, no
`atexit`, no flush, exactly as when the machine's OOM killer or an operator's `kill -9` strikes.

    ECOQ_FAULT="claim-after"              # die the first time a claim has committed
    ECOQ_FAULT="db-commit:7"              # die just before this process's 7th commit
    ECOQ_FAULT="db-begin:3,finish-txn:2"  # whichever comes first

Each name is one of `POINTS`; a name that is not is an error (a typo would make a test pass
vacuously). Counts are per process. With `ECOQ_FAULT_LOG` set to a file, the point and count
are appended to it just before the kill, so a test knows where the process died.

Neither variable is a setting (they have no ``__``), so `ecoq config` ignores them, and jobs never
see them: a job's environment is captured at submission.
"""

import os
import signal

__all__ = ["ENV", "LOG_ENV", "POINTS", "armed", "fault"]

ENV = "ECOQ_FAULT"
LOG_ENV = "ECOQ_FAULT_LOG"

#: Every crash point, and where it is.
POINTS: dict[str, str] = {
    "db-begin": "a database transaction begins (so: between two transactions)",
    "db-commit": "a database transaction is about to commit (it is lost)",
    "migrate-statement": "a schema migration statement has run (inside the upgrade)",
    "claim-before": "Queue.claim, before its transaction",
    "claim-after": "Queue.claim committed: the job is running, its wrapper not yet launched",
    "launch-spec": "LocalExecutor.launch wrote spec.json, before spawning the wrapper",
    "launch-after": "the wrapper was spawned, before the daemon records its pid",
    "finish-txn": "Queue.finish updated the job, before the run and the commit",
    "finish-after": "Queue.finish committed, before accounting",
    "update-run": "Queue.update_run committed (start, wrapper pid, requeue, energy, SIGTERM)",
    "transition": "a compare-and-set state change committed (requeue, pause, resume)",
    "plans-txn": "Queue.set_plans wrote the plans, before the commit",
}

_hits: dict[str, int] = {}
_pid = 0


def _parse(spec: str) -> dict[str, int]:
    """`"a:2,b"` → `{"a": 2, "b": 1}`. Raises ValueError for an unknown point or a bad count."""
    wanted: dict[str, int] = {}
    for part in spec.split(","):
        name, _, count = part.strip().partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r}; known: {', '.join(POINTS)}")
        n = int(count) if count else 1
        if n < 1:
            raise ValueError(f"{ENV}: count {count!r} for {name!r} must be >= 1")
        wanted[name] = n
    return wanted


def armed(point: str) -> bool:
    """Whether `ECOQ_FAULT` names `point` (to install a hook only when a test wants it)."""
    spec = os.environ.get(ENV)
    return bool(spec) and point in _parse(spec or "")


def fault(point: str) -> None:
    """A crash point: SIGKILL this process the n-th time it gets here, if `ECOQ_FAULT` says so.

    Raises ValueError when `ECOQ_FAULT` is malformed.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    global _pid
    if _pid != os.getpid():  # a forked child counts afresh
        _pid = os.getpid()
        _hits.clear()
    wanted = _parse(spec).get(point)
    if wanted is None:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] != wanted:
        return
    log = os.environ.get(LOG_ENV)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{point}:{wanted} pid={_pid}\n".encode())
        finally:
            os.close(fd)
    os.kill(_pid, signal.SIGKILL)
    os._exit(137)  # not reached: SIGKILL cannot be caught
