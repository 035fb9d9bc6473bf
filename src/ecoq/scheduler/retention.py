"""Retention: what the daemon deletes or thins out so the database and data folder stay bounded.

One pass (`Retention.run`), in this order, each part in small batches (one short transaction
each) so that a tick never stalls and other writers (``ecoq submit``) only wait a moment:

1. **Forecasts** (`ForecastRecord`, not realized) whose span ended more than
   `retention.forecasts_days` ago are deleted.
2. **Realized values** whose span ended more than `retention.realized_days` ago (at least 64:
   the fallback forecaster reads 63 days) are deleted.
3. **Realized values** a newer fetch replaced are dropped (`ecoq.scheduler.compact`:
   lossless, the stored series are otherwise about eight times the data).
4. **Energy series** of runs that ended more than `retention.samples_days` ago and whose
   accounting is final are thinned to one sample per `retention.samples_step_s`
   (`ecoq.scheduler.compact.thin_series`). Cumulative values are kept, so the run's energy,
   per meter, per device kind and per method, is unchanged, and so are the figures stored on
   the run and its job (energy, emissions, SCI, marked windows).
5. **Run folders** (``<data_dir>/jobs/<id>/``: ``output.log``, the wrapper's records) of jobs
   that ended more than `retention.run_logs_days` ago and whose runs are all accounted (the
   accounting reads ``marks.jsonl`` there) are deleted. Only this daemon's data folder.
6. **Jobs** (with their runs) that ended more than `retention.jobs_days` ago, every run final,
   are deleted (off by default).

Never pruned: intensity values that accounting may still read. Every stored forecast or realized
series overlapping a *needed span* is kept, whatever its age: the run span and the "run now"
(counterfactual) span of every run not yet final (running, unaccounted or provisional: it is
retried until `accounting.finalize_after_s`), and the counterfactual span of every unfinished
job (its duration, doubled for overruns), each from `LOOKBACK` earlier. Nothing of an unfinished
job is pruned. A day count of 0 keeps that kind of data forever.

The daemon calls `Retention.step(now)` from its tick: a pass at most every hour, spending at most
`budget_s` per tick, continued at the next tick when cut short. On PostgreSQL one daemon at a
time prunes the database (an advisory lock); each daemon prunes its own data folder.
"""

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, and_, bindparam, delete, func, not_, or_, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from ecoq.db import session
from ecoq.models import ForecastRecord, Job, Run, RunUnit
from ecoq.scheduler.compact import compact_realized, thin_series
from ecoq.scheduler.daemons import PlanningLock
from ecoq.scheduler.intensities import LOOKBACK
from ecoq.states import TERMINAL

__all__ = [
    "FINAL",
    "Retention",
    "RetentionPolicy",
    "RetentionReport",
    "merge_spans",
]

log = logging.getLogger(__name__)

#: Accounting statuses that never change again (`ecoq.accounting.STATUSES`).
FINAL = ("final", "final-forecast", "unmetered", "no-intensity")
#: The fallback forecaster's history (`ecoq.scheduler.forecasts.FALLBACK_HISTORY`) plus a day.
MIN_REALIZED = timedelta(days=64)
#: Needed spans beyond this many are merged across their smallest gaps (protecting more).
MAX_SPANS = 200

Span = tuple[datetime, datetime]


class RetentionConfig(Protocol):
    """The ``[retention]`` settings (`ecoq.config.RetentionSettings` is one)."""

    @property
    def forecasts_days(self) -> int: ...
    @property
    def realized_days(self) -> int: ...
    @property
    def samples_days(self) -> int: ...
    @property
    def samples_step_s(self) -> int: ...
    @property
    def run_logs_days(self) -> int: ...
    @property
    def jobs_days(self) -> int: ...


def _days(n: float) -> timedelta | None:
    return timedelta(days=n) if n > 0 else None


@dataclass(frozen=True)
class RetentionPolicy:
    """What is kept, resolved from the settings. None: keep forever.

    Attributes:
        forecasts, realized, samples, run_logs, jobs: how long after its end each kind is kept
            (`realized` is never less than `MIN_REALIZED`).
        samples_step_s: seconds between the samples kept in a thinned energy series.
        every: how often the daemon starts a pass.
        budget_s: the most seconds one `step` spends (a pass cut short continues next tick).
        batch: rows per transaction (forecast rows; 4× for jobs, ¼ for energy series).
    """

    forecasts: timedelta | None = timedelta(days=30)
    realized: timedelta | None = timedelta(days=90)
    samples: timedelta | None = timedelta(days=30)
    samples_step_s: float = 300.0
    run_logs: timedelta | None = timedelta(days=90)
    jobs: timedelta | None = None
    every: timedelta = timedelta(hours=1)
    budget_s: float = 1.0
    batch: int = 200

    @classmethod
    def from_settings(cls, cfg: RetentionConfig) -> "RetentionPolicy":
        realized = _days(cfg.realized_days)
        return cls(
            forecasts=_days(cfg.forecasts_days),
            realized=None if realized is None else max(realized, MIN_REALIZED),
            samples=_days(cfg.samples_days),
            samples_step_s=float(cfg.samples_step_s),
            run_logs=_days(cfg.run_logs_days),
            jobs=_days(cfg.jobs_days),
        )


@dataclass
class RetentionReport:
    """What one pass did. `done` is False when the budget ran out first."""

    forecasts: int = 0
    realized: int = 0
    compacted: int = 0  # realized fetches that lost replaced points
    runs_thinned: int = 0
    folders: int = 0
    jobs: int = 0
    spans: int = 0  # needed spans kept whatever their age
    done: bool = True
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            self.forecasts
            + self.realized
            + self.compacted
            + self.runs_thinned
            + self.folders
            + self.jobs
        )


# -- pure parts ------------------------------------------------------------------------------
def merge_spans(spans: Iterable[Span], limit: int = MAX_SPANS) -> list[Span]:
    """`spans` sorted and merged where they overlap or touch; beyond `limit`, the spans across
    the smallest gaps are merged too (the union only grows)."""
    merged: list[Span] = []
    for lo, hi in sorted(s for s in spans if s[1] > s[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    while len(merged) > limit:
        gaps = sorted(range(len(merged) - 1), key=lambda i: merged[i + 1][0] - merged[i][1])
        join = set(gaps[: len(merged) - limit])
        out: list[Span] = []
        for i, span in enumerate(merged):
            if i - 1 in join:
                out[-1] = (out[-1][0], span[1])
            else:
                out.append(span)
        merged = out
    return merged


def needed_spans(
    runs: Iterable[tuple[datetime, datetime | None, datetime, datetime | None]],
    jobs: Iterable[tuple[datetime, datetime | None, int, datetime | None]],
    now: datetime,
) -> list[Span]:
    """Where accounting may still read intensity values (see the module docstring).

    Args:
        runs: per run not yet final: (started or claimed, finished or None, the job's
            submission, its --not-before).
        jobs: per unfinished job: (submission, --not-before, duration_s, first started or None).
    """
    spans: list[Span] = []
    for start, end, submitted, not_before in runs:
        stop = end or now
        cf = min(max(submitted, not_before or submitted), start)
        spans += [(start - LOOKBACK, stop), (cf - LOOKBACK, cf + (stop - start))]
    for submitted, not_before, duration_s, started in jobs:
        cf = max(submitted, not_before or submitted)
        if started is not None:
            cf = min(cf, started)
        ran = (now - started) if started is not None else timedelta(0)
        length = max(timedelta(seconds=2 * duration_s), ran) + LOOKBACK
        spans.append((cf - LOOKBACK, cf + length))
    return merge_spans(spans)


# -- the passes ------------------------------------------------------------------------------
class _PruneLock(PlanningLock):
    """One daemon at a time prunes a PostgreSQL database (always acquired on SQLite)."""

    KEY = 0x65636F72


class _Budget:
    def __init__(self, seconds: float | None) -> None:
        self.until = None if seconds is None else time.monotonic() + seconds

    def left(self) -> bool:
        return self.until is None or time.monotonic() < self.until


class Retention:
    """Prunes one database (and this daemon's data folder) by `policy`.

    Args:
        engine: the database.
        policy: what to keep.
        data_dir: this daemon's data folder (run folders under ``jobs/``); None: no folders.
    """

    def __init__(
        self, engine: Engine, policy: RetentionPolicy, *, data_dir: Path | None = None
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.data_dir = data_dir
        self._next_at: datetime | None = None

    def step(self, now: datetime) -> RetentionReport | None:
        """The daemon's hook: a pass when one is due (every `policy.every`, or to continue one
        the budget cut short), spending at most `policy.budget_s`. Never raises: a failure is
        logged and retried at the next pass. None when no pass was due."""
        if self._next_at is not None and now < self._next_at:
            return None
        try:
            report = self.run(now, budget_s=self.policy.budget_s)
        except Exception:  # retention must never stop the scheduling
            log.exception("retention pass failed; retried in %s", self.policy.every)
            self._next_at = now + self.policy.every
            return None
        self._next_at = now if not report.done else now + self.policy.every
        if report.total:
            log.info(
                "retention: deleted %d forecasts, %d realized series, %d run folders, %d jobs; "
                "compacted %d realized series; thinned %d runs' samples (%.2f s%s)",
                report.forecasts,
                report.realized,
                report.folders,
                report.jobs,
                report.compacted,
                report.runs_thinned,
                report.seconds,
                "" if report.done else ", continues next tick",
            )
        return report

    def run(self, now: datetime, *, budget_s: float | None = None) -> RetentionReport:
        """One pass (all of it when `budget_s` is None). Raises what the database raises."""
        began = time.monotonic()
        budget = _Budget(budget_s)
        report = RetentionReport()
        p = self.policy
        with _PruneLock(self.engine) as mine:
            if mine:
                spans = self._needed(now) if p.forecasts or p.realized else []
                report.spans = len(spans)
                if p.forecasts:
                    report.forecasts = self._intensity(False, now - p.forecasts, spans, budget)
                if p.realized:
                    cutoff = now - max(p.realized, MIN_REALIZED)
                    report.realized = self._intensity(True, cutoff, spans, budget)
                report.compacted, emptied = compact_realized(self.engine, now, budget.left)
                report.realized += emptied
                if p.samples:
                    report.runs_thinned = self._samples(now - p.samples, now, budget)
                if p.jobs:
                    report.jobs = self._jobs(now - p.jobs, budget, report)
        if p.run_logs and self.data_dir is not None:
            report.folders = self._folders(now - p.run_logs, budget, report)
        report.done = budget.left()
        report.seconds = time.monotonic() - began
        return report

    def _needed(self, now: datetime) -> list[Span]:
        oldest = min(d for d in (self.policy.forecasts, self.policy.realized) if d is not None)
        with session(self.engine) as s:
            began = func.coalesce(col(Run.started_at), col(Run.claimed_at))
            runs = s.exec(
                select(began, Run.finished_at, Job.submitted_at, Job.not_before)
                .join(Job, col(Job.id) == col(Run.job_id))
                .where(_not_final())
            ).all()
            jobs = s.exec(
                select(Job.submitted_at, Job.not_before, Job.duration_s, Job.started_at).where(
                    col(Job.state).not_in([str(x) for x in TERMINAL]),
                    col(Job.submitted_at) < now - oldest + LOOKBACK,
                )
            ).all()
        return needed_spans(runs, jobs, now)

    def _intensity(
        self, realized: bool, cutoff: datetime, spans: list[Span], budget: _Budget
    ) -> int:
        """Delete stored forecasts (or realized series) that ended before `cutoff` and overlap
        no needed span; returns how many."""
        keep = [
            not_(and_(col(ForecastRecord.end) > lo, col(ForecastRecord.start) < hi))
            for lo, hi in spans
            if lo < cutoff
        ]
        where: list[ColumnElement[bool]] = [
            col(ForecastRecord.realized) == realized,
            col(ForecastRecord.end) < cutoff,
            *keep,
        ]
        deleted = 0
        while budget.left():
            with session(self.engine) as s:
                ids = s.exec(select(ForecastRecord.id).where(*where).limit(self.policy.batch)).all()
                if ids:
                    s.execute(delete(ForecastRecord).where(col(ForecastRecord.id).in_(ids)))
                s.commit()
            deleted += len(ids)
            if len(ids) < self.policy.batch:
                break
        return deleted

    def _samples(self, cutoff: datetime, now: datetime, budget: _Budget) -> int:
        """Thin the energy series of final runs that ended before `cutoff`; returns how many
        runs had a series to thin. Runs that never started are only marked."""
        thinned, after = 0, 0
        batch = max(1, self.policy.batch // 4)
        while budget.left():
            with session(self.engine) as s:
                rows = s.exec(
                    select(Run.id, Run.energy_series)
                    .where(
                        col(Run.samples_pruned_at).is_(None),
                        col(Run.finished_at) < cutoff,
                        col(Run.id) > after,
                        or_(col(Run.accounting).in_(FINAL), col(Run.started_at).is_(None)),
                    )
                    .order_by(col(Run.id))
                    .limit(batch)
                ).all()
                values = []
                for run_id, series in rows:
                    assert run_id is not None
                    new = thin_series(series, self.policy.samples_step_s) if series else series
                    values.append({"rid": run_id, "series": new, "at": now})
                    thinned += bool(series)
                if values:
                    stmt = (
                        update(Run)
                        .where(
                            col(Run.id) == bindparam("rid"), col(Run.samples_pruned_at).is_(None)
                        )
                        .values(
                            energy_series=bindparam("series"), samples_pruned_at=bindparam("at")
                        )
                    )
                    s.connection().execute(stmt, values)
                s.commit()
            if len(rows) < batch:
                break
            after = max(int(r[0] or 0) for r in rows)
        return thinned

    def _folders(self, cutoff: datetime, budget: _Budget, report: RetentionReport) -> int:
        """Delete this data folder's job folders of jobs ended before `cutoff` whose runs are
        all accounted; returns how many."""
        assert self.data_dir is not None
        root = self.data_dir / "jobs"
        try:
            names = sorted(int(e.name) for e in os.scandir(root) if e.name.isdigit())
        except FileNotFoundError:
            return 0
        deleted = 0
        for i in range(0, len(names), 500):
            if not budget.left():
                break
            chunk = names[i : i + 500]
            for job_id in self._settled(chunk, cutoff, final_only=False):
                if not budget.left():
                    break
                deleted += self._remove(root / str(job_id), report)
        return deleted

    def _settled(self, job_ids: list[int], cutoff: datetime, *, final_only: bool) -> list[int]:
        """Of `job_ids`, the jobs that ended before `cutoff` and whose runs are all accounted
        (`final_only`: all final), sorted."""
        with session(self.engine) as s:
            ended = set(
                s.exec(
                    select(Job.id).where(
                        col(Job.id).in_(job_ids),
                        col(Job.state).in_([str(x) for x in TERMINAL]),
                        _ended_before(cutoff),
                    )
                ).all()
            )
            busy = set(
                s.exec(
                    select(Run.job_id).where(
                        col(Run.job_id).in_(list(ended)), _not_final(provisional=final_only)
                    )
                ).all()
            )
        return sorted(int(i) for i in ended - busy if i is not None)

    def _remove(self, path: Path, report: RetentionReport) -> int:
        if path.is_symlink() or not path.is_dir():
            return 0  # ecoq makes real folders; anything else is not ours to follow
        try:
            shutil.rmtree(path)
        except OSError as exc:
            if len(report.errors) < 10:
                report.errors.append(f"{path}: {exc}")
            log.warning("retention could not delete %s: %s", path, exc)
            return 0
        return 1

    def _jobs(self, cutoff: datetime, budget: _Budget, report: RetentionReport) -> int:
        """Delete jobs (runs, marked units and this data folder's run folders) that ended
        before `cutoff` with every run final; returns how many."""
        deleted, after = 0, 0
        batch = self.policy.batch * 4
        while budget.left():
            with session(self.engine) as s:
                found = s.exec(
                    select(Job.id)
                    .where(
                        col(Job.state).in_([str(x) for x in TERMINAL]),
                        _ended_before(cutoff),
                        col(Job.id) > after,
                    )
                    .order_by(col(Job.id))
                    .limit(batch)
                ).all()
            candidates = [int(i) for i in found if i is not None]
            ids = self._settled(candidates, cutoff, final_only=True) if candidates else []
            for job_id in ids if self.data_dir is not None else []:
                self._remove(self.data_dir / "jobs" / str(job_id), report)  # type: ignore[operator]
            if ids:
                with session(self.engine) as s:
                    runs = select(Run.id).where(col(Run.job_id).in_(ids))
                    s.execute(delete(RunUnit).where(col(RunUnit.run_id).in_(runs)))
                    s.execute(delete(Run).where(col(Run.job_id).in_(ids)))
                    s.execute(delete(Job).where(col(Job.id).in_(ids)))
                    s.commit()
            deleted += len(ids)
            if len(candidates) < batch:
                break
            after = candidates[-1]
        return deleted


def _not_final(*, provisional: bool = True) -> ColumnElement[bool]:
    """Runs whose accounting may still change: unfinished, or started and not yet accounted (or
    provisional, unless `provisional` is False). A run that never started has nothing to
    account."""
    pending: list[ColumnElement[bool]] = [col(Run.accounting).is_(None)]
    if provisional:
        pending.append(col(Run.accounting) == "provisional")
    return or_(
        col(Run.finished_at).is_(None),
        and_(col(Run.started_at).is_not(None), or_(*pending)),
    )


def _ended_before(cutoff: datetime) -> ColumnElement[bool]:
    return or_(
        col(Job.finished_at) < cutoff,
        and_(col(Job.finished_at).is_(None), col(Job.updated_at) < cutoff),
    )
