"""Many daemons on one database: heartbeats, the reconciliation of a daemon that went silent,
and the lock that lets one daemon at a time re-plan.

Each daemon (one per site, named by `site.name`) records a heartbeat every tick. A daemon whose
heartbeat is older than `daemon.stale_after_s`, and that did not stop cleanly, is lost: the first
other daemon to notice (a compare-and-set on its row) fails its running jobs with a reason. It
cannot see another box's processes, so the outcome is reported as unknown, never guessed.
"""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text, update
from sqlmodel import col, select

from ecoq.db import session
from ecoq.models import DaemonRow, Job
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState

S = JobState


class DaemonRegistry:
    """Daemons' heartbeats, and the reconciliation of a daemon that went silent."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def heartbeat(self, name: str, *, host: str, pid: int, zone: str | None) -> None:
        """Record that daemon `name` is alive now (and not stopped)."""
        now = self.queue.clock()
        values = {"host": host, "pid": pid, "zone": zone, "heartbeat_at": now, "stopped_at": None}
        with session(self.queue.engine) as s:
            result = s.execute(
                update(DaemonRow).where(col(DaemonRow.name) == name).values(**values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                s.add(DaemonRow(name=name, started_at=now, **values))  # type: ignore[arg-type]
            s.commit()

    def stopped(self, name: str) -> None:
        """Record a clean stop: a stopped daemon is never reconciled as lost."""
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
        with a reason that says so; returns their ids. Jobs for which `adopt` says yes (they
        run on a Slurm cluster this daemon also drives, so Slurm still knows how they fare) are
        taken over by `me` instead.
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
            seen = row.heartbeat_at.isoformat() if row else "?"
            reason = (
                f"its daemon {name} stopped heartbeating (last seen {seen}, stale after "
                f"{int(stale_after.total_seconds())} s); reconciled by {me}: outcome unknown"
            )
            for job, run in self.queue.active(name):
                if adopt is not None and adopt(job):
                    assert job.id is not None
                    self.queue.adopt(job.id, name, me)
                    continue
                if self.queue.finish(
                    job, run, S.FAILED, exit_code=None, finished_at=now, reason=reason
                ):
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
