"""Many daemons on one database: heartbeats, the reconciliation of a daemon that went silent,
and the lock that lets one daemon at a time re-plan.

Each daemon (one per site, named by `site.name`) records a heartbeat every tick. A daemon whose
heartbeat is older than `daemon.stale_after_s`, and that did not stop cleanly, is lost: the first
other daemon to notice (a compare-and-set on its row) fails its running jobs with a reason. It
cannot see another box's processes, so the outcome is reported as unknown, never guessed.

A lost daemon may come back. Its heartbeat then finds its row stopped, and `returned` tells its
reap to record what really happened to the runs that were failed as lost
(`ecoq.scheduler.lost`); until that heartbeat it claims nothing (`DaemonSide.claim`).
"""

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.models import DaemonRow, Job
from ecoq.scheduler.lost import LostRuns, lost_reason
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState

log = logging.getLogger(__name__)
S = JobState


class DaemonRegistry:
    """Daemons' heartbeats, and the reconciliation of a daemon that went silent."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._beaten: set[str] = set()  # names this registry has heartbeat for
        self._returned: set[str] = set()  # ... and found stopped: see `returned`

    def heartbeat(self, name: str, *, host: str, pid: int, zone: str | None) -> None:
        """Record that daemon `name` is alive now (and not stopped).

        A row found stopped (a clean stop before this start, or another daemon reconciled
        `name` as lost) is noted for `returned`. Thread-safe.
        """
        now = self.queue.clock()
        values = {"host": host, "pid": pid, "zone": zone, "heartbeat_at": now, "stopped_at": None}
        named = col(DaemonRow.name) == name
        with session(self.queue.engine) as s:
            live = s.execute(
                update(DaemonRow).where(named, col(DaemonRow.stopped_at).is_(None)).values(**values)
            )
            stopped = False
            if live.rowcount == 0:  # type: ignore[attr-defined]
                again = s.execute(update(DaemonRow).where(named).values(**values))
                stopped = again.rowcount == 1  # type: ignore[attr-defined]
                if not stopped:
                    s.add(DaemonRow(name=name, started_at=now, **values))  # type: ignore[arg-type]
            s.commit()
        with self._lock:
            if stopped:
                self._returned.add(name)
                if name in self._beaten:
                    log.warning(
                        "daemon %s was reconciled as lost by another daemon while it was "
                        "silent; recording what really happened to its runs",
                        name,
                    )
            self._beaten.add(name)

    def returned(self, name: str) -> bool:
        """Whether daemon `name` found its row stopped at a heartbeat since the last call (it
        may have been reconciled as lost: its reap looks for runs failed as lost). Clears it."""
        with self._lock:
            found = name in self._returned
            self._returned.discard(name)
        return found

    def watch_lost(self, name: str) -> None:
        """Have `returned(name)` say yes again (a lost run is still running: look again)."""
        with self._lock:
            self._returned.add(name)

    def stopped(self, name: str) -> None:
        """Record a clean stop: a stopped daemon is never reconciled as lost."""
        with self._lock:
            self._beaten.discard(name)  # a heartbeat after this is a start, not a return
        with session(self.queue.engine) as s:
            s.execute(
                update(DaemonRow)
                .where(col(DaemonRow.name) == name)
                .values(stopped_at=self.queue.clock())
            )
            s.commit()

    def reconcile_stale(
        self,
        me: str,
        stale_after: timedelta,
        *,
        adopt: Callable[[Job], bool] | None = None,
    ) -> list[int]:
        """Fail the active jobs of every other daemon silent for longer than `stale_after`.

        Only one daemon wins each reconciliation (a compare-and-set on the daemon's row). The
        silent daemon's processes cannot be seen from here, so its running jobs end `failed`
        with a reason that says so (`ecoq.scheduler.lost.lost_reason`), each only while that
        daemon is still silent; returns their ids. Jobs for which `adopt` says yes (they run on
        a Slurm cluster this daemon also drives, so Slurm still knows how they fare) are taken
        over by `me` instead. If the silent daemon comes back, it records what really happened
        (`Reaping._reap_lost`).
        """
        now = self.queue.clock()
        cutoff = now - stale_after
        with session(self.queue.engine) as s:
            names = s.exec(
                select(DaemonRow.name).where(
                    col(DaemonRow.name) != me,
                    col(DaemonRow.stopped_at).is_(None),
                    col(DaemonRow.heartbeat_at) < cutoff,
                )
            ).all()
        failed: list[int] = []
        lost_runs = LostRuns(self.queue.engine, self.queue.clock)
        for name in names:
            with session(self.queue.engine) as s:
                won = s.execute(
                    update(DaemonRow)
                    .where(
                        col(DaemonRow.name) == name,
                        col(DaemonRow.stopped_at).is_(None),
                        col(DaemonRow.heartbeat_at) < cutoff,
                    )
                    .values(stopped_at=now)
                )
                s.commit()
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                row = s.get(DaemonRow, name)
            reason = lost_reason(name, row.heartbeat_at if row else None, stale_after, me)
            for job, run in self.queue.active(name):
                if adopt is not None and adopt(job):
                    assert job.id is not None
                    self.queue.adopt(job.id, name, me)
                    continue
                # Only while `name` is still lost: if it came back meanwhile, its jobs are its.
                if lost_runs.fail(job, run, lost=name, reconciled_at=now, reason=reason):
                    assert job.id is not None
                    failed.append(job.id)
        return failed

    def planning_lock(self) -> "PlanningLock":
        return PlanningLock(self.queue.engine)


class PlanningLock:
    """One planner at a time across daemons: a PostgreSQL advisory lock, held while
    re-planning (`with lock as acquired:`; False: another daemon plans, skip this time).
    On SQLite (one box) it is always acquired."""

    KEY = 0x65636F71  # "ecoq"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Any = None

    def __enter__(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        self._conn = self.engine.connect()
        got = self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.KEY})
        acquired = bool(got.scalar())
        self._conn.commit()
        if not acquired:
            self._conn.close()
            self._conn = None
        return acquired

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.KEY})
            self._conn.commit()
            self._conn.close()
            self._conn = None
