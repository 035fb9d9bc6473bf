"""Accounting of finished runs, and their reconciliation with realized intensity values.

`account_run` computes a run's figures when it ends: from realized values already stored when
they cover it (``final``), else from the cached forecasts that covered it, else from the typical
profile (``provisional``). `reconcile`, called from the daemon's tick, fetches realized history
for provisional runs (`ForecastSource.refresh_history`) and recomputes them; a run still without
realized values `finalize_after` after its end becomes final on forecast-based figures, labelled
``final-forecast``. Formulas and statuses: `ecoq.accounting`. The daemon calls::

    account_run(engine, store, run.id, now=now, sources=names, params=params)   # a run ended
    reconcile(engine, store, source, now, params.finalize_after, params=params, worker=worker)

Every figure keeps its provenance on the run (zone, signal, provider, forecast or realized,
energy method); the job carries the sums of its runs. The PUE and embodied emissions are fixed
when a run is first accounted, so changing the configuration later does not rewrite history.
A job planned on a marginal signal is never accounted on the (average) typical profile.
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, and_, delete, or_, update
from sqlmodel import col, select

from ecoq.accounting import (
    Embodied,
    EnergyProfile,
    Intensity,
    NotCovered,
    account,
    embodied_g,
    flat_profile,
    profile_from_series,
    summarize_marks,
    window_energy,
)
from ecoq.db import session
from ecoq.errors import EcoqError
from ecoq.forecasting import ForecastProvider
from ecoq.models import Job, Run, RunUnit
from ecoq.scheduler.forecasts import ForecastSource, ForecastStore
from ecoq.scheduler.intensities import LOOKBACK, intensity_candidates

log = logging.getLogger(__name__)

MARKS_FILE = "marks.jsonl"  # ecoq.track.MARKS_FILE (not imported: that module rebinds itself)
DEFAULT_FINALIZE_AFTER = timedelta(days=7)
#: How often one provisional run is retried (realized values arrive hours after the fact).
DEFAULT_RETRY_AFTER = timedelta(hours=1)
_FIGURES = (
    "accounting_signal",
    "intensity_source",
    "intensity_kind",
    "intensity_label",
    "realized_g",
    "counterfactual_g",
    "avoided_g",
    "counterfactual_start",
)


class AccountingConfig(Protocol):
    """The ``[accounting]`` settings (`ecoq.config.AccountingSettings` is one)."""

    @property
    def pue(self) -> float: ...
    @property
    def finalize_after_s(self) -> int: ...
    @property
    def embodied_g_per_gpu_hour(self) -> float: ...
    @property
    def embodied_g_per_host_hour(self) -> float: ...


@dataclass(frozen=True)
class AccountingParams:
    """What accounting needs from the settings, resolved.

    Attributes:
        pue: facility energy / IT energy (>= 1), fixed on a run when it is first accounted.
        embodied: per-device embodied figures for SCI's M (unset: M is reported as unset).
        finalize_after: after a run's end, when forecast-based figures become final.
        retry_after: how often `reconcile` retries one provisional run.
    """

    pue: float = 1.0
    embodied: Embodied = field(default_factory=Embodied)
    finalize_after: timedelta = DEFAULT_FINALIZE_AFTER
    retry_after: timedelta = DEFAULT_RETRY_AFTER

    @classmethod
    def from_settings(cls, cfg: AccountingConfig) -> "AccountingParams":
        return cls(
            pue=cfg.pue,
            embodied=Embodied(cfg.embodied_g_per_gpu_hour, cfg.embodied_g_per_host_hour),
            finalize_after=timedelta(seconds=cfg.finalize_after_s),
        )


@dataclass
class ReconcileReport:
    """What one `reconcile` call did, by run id."""

    accounted: list[int] = field(default_factory=list)  # accounted for the first time
    final: list[int] = field(default_factory=list)  # final on realized values
    final_forecast: list[int] = field(default_factory=list)  # final on forecast-based figures
    provisional: list[int] = field(default_factory=list)  # retried, still provisional
    history_fetched: list[str] = field(default_factory=list)  # zones asked for history
    failed: list[int] = field(default_factory=list)  # could not be accounted (logged)


def ingest_marks(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records `ecoq.track` wrote to the run's ``marks.jsonl``, in file order.

    [] when the file is absent or unreadable; malformed lines are skipped with one warning.
    """
    path = Path(run_dir) / MARKS_FILE
    try:
        text = path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read %s: %s; the run's marks are ignored", path, exc)
        return []
    records: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d malformed line(s)", path, bad)
    return records


def account_run(
    engine: Engine,
    store: ForecastStore,
    run_id: int,
    *,
    now: datetime,
    sources: Sequence[str] | None = None,
    params: AccountingParams = AccountingParams(),
    zone: str | None = None,
    bundled: ForecastProvider | None = None,
) -> Run | None:
    """Compute and store the figures of a finished run, and its job's sums.

    Args:
        store: the forecast cache (forecasts and realized values).
        run_id: the run; it must have started and finished.
        now: UTC now (stored as `accounted_at`).
        sources: provider names whose cached forecasts may be used, besides the job's plan
            source (`[p.name for p in source.providers]`).
        params: PUE, embodied figures, finalize_after.
        zone: the zone the run drew power in; None: the job's (home) zone.
        bundled: the typical-profile provider (tests); None: `BundledProvider`.

    Returns:
        The updated run; None when the run never started or has not finished (nothing stored).

    Raises:
        EcoqError: no run has that id.
    """
    with session(engine) as s:
        run = s.get(Run, run_id)
        job = s.get(Job, run.job_id) if run is not None else None
    if run is None or job is None:
        raise EcoqError(f"no run with id {run_id} to account")
    if run.started_at is None or run.finished_at is None:
        return None
    marks = summarize_marks(ingest_marks(run.run_dir))
    finalize = now - run.finished_at >= params.finalize_after
    values = _figures(
        run,
        job,
        store,
        now=now,
        sources=sources or (),
        pue=params.pue,
        zone=zone or job.zone,
        bundled=bundled,
        finalize=finalize,
    )
    profile = _profile(run)
    if profile is not None and marks["windows"]:
        for window, joules in zip(marks["windows"], _window_energy(profile, marks), strict=True):
            window["energy_j"] = joules
    duration_s = (run.finished_at - run.started_at).total_seconds()
    values.update(
        marks=marks if (marks["units"] or marks["windows"]) else None,
        embodied_g=embodied_g(params.embodied, gpus=len(run.gpu_indices), duration_s=duration_s),
    )
    return _store(engine, run_id, job.id, values, units=marks["units"])


def _window_energy(profile: EnergyProfile, marks: dict[str, Any]) -> list[float | None]:
    try:
        return list(window_energy(profile, marks["windows"]))
    except ValueError:
        return [None] * len(marks["windows"])


def reconcile(
    engine: Engine,
    store: ForecastStore,
    source: ForecastSource,
    now: datetime,
    finalize_after: timedelta = DEFAULT_FINALIZE_AFTER,
    *,
    params: AccountingParams = AccountingParams(),
    worker: str | None = None,
    limit: int = 200,
) -> ReconcileReport:
    """Recompute provisional runs with realized values; finalize old ones; account any finished
    run not yet accounted (e.g. one that ended while no daemon ran).

    A provisional run is retried at most every `params.retry_after`. Realized history is fetched
    once per zone and call, over the span its due runs need, only for runs of the source's
    signal. Runs are taken oldest first, at most `limit` per call.

    Args:
        source: the daemon's forecast chain (its `refresh_history` fetches realized values).
        finalize_after: after a run's end, when forecast-based figures become final.
        worker: only runs of this daemon ("host:pid" name); None: all.
    """
    report = ReconcileReport()
    due = _due_runs(engine, now, params.retry_after, worker, limit)
    if not due:
        return report
    names = [p.name for p in getattr(source, "providers", [])]
    params = AccountingParams(params.pue, params.embodied, finalize_after, params.retry_after)
    _fetch_history(store, source, due, report)
    for run, job in due:
        assert run.id is not None
        try:
            status = _reconcile_one(engine, store, run, job, now, names, params)
        except (EcoqError, ValueError) as exc:  # one bad run must not stop the others
            log.warning("run %s not reconciled: %s", run.id, exc)
            report.failed.append(run.id)
            continue
        if status is None:
            continue
        if run.accounting is None:
            report.accounted.append(run.id)
        elif status == "final":
            report.final.append(run.id)
        elif status in ("final-forecast", "no-intensity"):
            report.final_forecast.append(run.id)
        else:
            report.provisional.append(run.id)
    return report


def _reconcile_one(
    engine: Engine,
    store: ForecastStore,
    run: Run,
    job: Job,
    now: datetime,
    names: list[str],
    params: AccountingParams,
) -> str | None:
    """Account or re-account one run; its new status (None: nothing to account)."""
    assert run.id is not None and run.finished_at is not None
    if run.accounting is None:
        updated = account_run(engine, store, run.id, now=now, sources=names, params=params)
        return None if updated is None else updated.accounting
    values = _figures(
        run,
        job,
        store,
        now=now,
        sources=names,
        pue=run.pue or params.pue,
        zone=run.intensity_zone or job.zone,
        bundled=None,
        finalize=now - run.finished_at >= params.finalize_after,
    )
    _store(engine, run.id, job.id, values)
    return str(values["accounting"])


def _due_runs(
    engine: Engine, now: datetime, retry_after: timedelta, worker: str | None, limit: int
) -> list[tuple[Run, Job]]:
    with session(engine) as s:
        query = (
            select(Run, Job)
            .join(Job, col(Job.id) == col(Run.job_id))
            .where(
                col(Run.started_at).is_not(None),
                col(Run.finished_at).is_not(None),
                or_(
                    col(Run.accounting).is_(None),
                    and_(
                        col(Run.accounting) == "provisional",
                        or_(
                            col(Run.accounted_at).is_(None),
                            col(Run.accounted_at) <= now - retry_after,
                        ),
                    ),
                ),
            )
        )
        if worker is not None:
            query = query.where(col(Run.worker) == worker)
        rows = s.exec(query.order_by(col(Run.finished_at)).limit(limit)).all()
    return [(run, job) for run, job in rows]


def _fetch_history(
    store: ForecastStore,
    source: ForecastSource,
    due: list[tuple[Run, Job]],
    report: ReconcileReport,
) -> None:
    """One `refresh_history` per zone over the span its provisional runs need, unless the store
    already covers it."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for run, job in due:
        signal = run.accounting_signal or job.plan_signal
        if run.accounting != "provisional" or signal != source.signal:
            continue
        profile = _profile(run)
        if profile is None or not profile.intervals:
            continue
        zone = run.intensity_zone or job.zone
        lo = min(profile.start, _counterfactual_start(job, profile))
        hi = profile.end
        old = spans.get(zone)
        spans[zone] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
    for zone, (lo, hi) in spans.items():
        history = store.history(zone, source.signal, lo - LOOKBACK, hi)
        if history is not None and not Intensity.from_forecast(history).uncovered(lo, hi):
            continue
        report.history_fetched.append(zone)
        source.refresh_history(zone, lo, hi)


def _profile(run: Run) -> EnergyProfile | None:
    try:
        profile = profile_from_series(run.energy_series)
    except ValueError as exc:
        log.warning("run %s: its energy series is unreadable (%s); using its total", run.id, exc)
        profile = None
    start, end = run.started_at, run.finished_at
    if (profile is None or not profile.intervals) and run.energy_j is not None and start and end:
        return flat_profile(start, end, run.energy_j)
    return profile


def _counterfactual_start(job: Job, profile: EnergyProfile) -> datetime:
    """When the job could first have run without ecoq: its submission, or --not-before when
    later; never after the run really started (a run started by hand was not delayed)."""
    earliest = max(job.submitted_at, job.not_before or job.submitted_at)
    return min(earliest, profile.start)


def _figures(
    run: Run,
    job: Job,
    store: ForecastStore,
    *,
    now: datetime,
    sources: Sequence[str],
    pue: float,
    zone: str,
    bundled: ForecastProvider | None,
    finalize: bool,
) -> dict[str, Any]:
    """The run's accounting columns (see `Run`), from the best intensity that covers it."""
    values: dict[str, Any] = dict.fromkeys(_FIGURES)
    assert run.started_at is not None and run.finished_at is not None
    earliest = max(job.submitted_at, job.not_before or job.submitted_at)
    values.update(
        accounted_at=now,
        intensity_zone=zone,
        delay_s=max(0.0, (run.started_at - earliest).total_seconds()),
        deadline_missed=run.finished_at > job.deadline,
    )
    profile = _profile(run)
    if profile is None or not profile.intervals:
        values.update(accounting="unmetered", energy_method=None, pue=None, facility_energy_j=None)
        return values
    values.update(
        energy_method=profile.method,
        estimate_energy_j=profile.estimate_j,
        cpu_energy_j=profile.by_device_j.get("cpu"),
        gpu_energy_j=profile.by_device_j.get("gpu"),
        ram_energy_j=profile.by_device_j.get("ram"),
        meter_errors=profile.meter_errors,
        pue=pue,
        facility_energy_j=profile.energy_j * pue,
    )
    cf_start = _counterfactual_start(job, profile)
    windows = [(profile.start, profile.end), (cf_start, cf_start + (profile.end - profile.start))]
    signals = list(dict.fromkeys(s for s in (run.accounting_signal, job.plan_signal) if s))
    names = list(dict.fromkeys(n for n in (job.plan_source, *sources) if n and n != "bundled"))
    candidates = intensity_candidates(
        store, zone, signals, names, windows, bundled, job.plan_signal
    )
    for intensity in candidates:
        try:
            result = account(
                profile, intensity, counterfactual_start=cf_start, pue=pue, finalized=finalize
            )
        except NotCovered:
            continue
        p = result.provenance
        values.update(
            accounting=p.status,
            accounting_signal=p.signal,
            intensity_source=p.provider,
            intensity_kind=p.intensity,
            intensity_label=p.label,
            realized_g=result.realized_g,
            counterfactual_g=result.counterfactual_g,
            avoided_g=result.avoided_g,
            counterfactual_start=result.counterfactual_start,
        )
        return values
    values["accounting"] = "no-intensity" if finalize else "provisional"
    return values


def _store(
    engine: Engine,
    run_id: int,
    job_id: int | None,
    values: dict[str, Any],
    *,
    units: dict[str, float] | None = None,
) -> Run:
    """Write the run's columns (and its marked `units` when given), then its job's sums, in one
    transaction."""
    with session(engine) as s:
        s.execute(update(Run).where(col(Run.id) == run_id).values(**values))
        if units is not None:
            s.execute(delete(RunUnit).where(col(RunUnit.run_id) == run_id))
            for unit, count in units.items():
                s.add(RunUnit(run_id=run_id, unit=unit, count=count))
        runs = s.exec(
            select(Run)
            .where(Run.job_id == job_id, col(Run.accounting).is_not(None))
            .order_by(col(Run.id))
        ).all()
        s.execute(update(Job).where(col(Job.id) == job_id).values(**_job_sums(list(runs))))
        s.commit()
        run = s.get(Run, run_id)
        assert run is not None
        s.refresh(run)
        return run


def _job_sums(runs: list[Run]) -> dict[str, Any]:
    """The job's figures: sums over its accounted runs of the latest run's signal (a job's runs
    normally share one; figures of another signal are never added in)."""
    latest = runs[-1]
    same = [r for r in runs if r.realized_g is not None]
    if latest.accounting_signal is not None:
        same = [r for r in same if r.accounting_signal == latest.accounting_signal]

    def total(name: str) -> float | None:
        figures = [getattr(r, name) for r in same]
        return sum(figures) if figures else None

    provisional = any(r.accounting == "provisional" for r in runs)
    return {
        "accounting": "provisional" if provisional else latest.accounting,
        "accounting_signal": latest.accounting_signal,
        "intensity_source": latest.intensity_source,
        "intensity_kind": latest.intensity_kind,
        "energy_method": latest.energy_method,
        "realized_g": total("realized_g"),
        "counterfactual_g": total("counterfactual_g"),
        "avoided_g": total("avoided_g"),
    }
