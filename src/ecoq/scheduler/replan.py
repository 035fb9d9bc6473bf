"""Glue between the pure planner and the queue: which forecast, which window, stored how.

`plan_fields` is what both `ecoq submit` and the daemon call, so a job is planned the same way
wherever it is planned. The forecast comes from the failover chain (`ecoq.scheduler.forecasts`);
when it has none, the job starts at once (or at its latest start, per `planner.fail_policy`): a
deadline is never missed because a forecast was missing.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ecoq.errors import UnknownZone
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.planning import Rule, plan_window
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannerParams:
    """The `[planner]` settings the planner needs."""

    min_saving: float = 0.02
    rule: Rule = "interval"
    fail_policy: Literal["now", "latest"] = "now"


def plan_fields(
    source: ForecastSource,
    *,
    zone: str,
    now: datetime,
    not_before: datetime | None,
    deadline: datetime,
    duration: timedelta,
    params: PlannerParams,
) -> dict[str, Any]:
    """The plan of one job as `Job` column values (planned_start, figures, provenance).

    Raises UnknownZone (bad input: the job should not be stored).
    """
    earliest = max(now, not_before or now)
    latest = deadline - duration
    forecast = source.forecast(zone, earliest, max(latest, earliest) + duration)
    if forecast is None:
        start = latest if params.fail_policy == "latest" and latest > earliest else earliest
        return {
            "planned_start": start,
            "plan_g_per_kwh": None,
            "now_g_per_kwh": None,
            "plan_signal": None,
            "plan_source": None,
            "plan_label": "no forecast",
            "plan_reason": f"no forecast for {zone}: start per fail_policy={params.fail_policy}",
            "forecast_issued_at": None,
        }
    plan = plan_window(
        forecast,
        earliest_start=earliest,
        latest_start=latest,
        duration=duration,
        min_saving=params.min_saving,
        rule=params.rule,
    )
    return {
        "planned_start": plan.start,
        "plan_g_per_kwh": plan.mean_g_per_kwh,
        "now_g_per_kwh": plan.now_g_per_kwh,
        "plan_signal": plan.signal,
        "plan_source": plan.source,
        "plan_label": plan.label,
        "plan_reason": plan.reason,
        "forecast_issued_at": forecast.issued_at,
    }


def replan(
    queue: Queue, source: ForecastSource, now: datetime, params: PlannerParams, *, all_waiting: bool
) -> int:
    """Plan pending jobs (and re-plan planned ones when `all_waiting`). Returns how many.

    Held jobs and jobs started by hand (`ecoq start`) keep their plan. A job whose zone became
    unknown keeps its old plan, or starts now if it has none, and the reason says so.
    """
    states = [JobState.PENDING, JobState.PLANNED] if all_waiting else [JobState.PENDING]
    count = 0
    for job in queue.jobs(states):
        if job.held or job.run_now:
            continue
        assert job.id is not None
        try:
            fields = plan_fields(
                source,
                zone=job.zone,
                now=now,
                not_before=job.not_before,
                deadline=job.deadline,
                duration=timedelta(seconds=job.duration_s),
                params=params,
            )
        except UnknownZone as exc:
            if job.planned_start is not None:
                continue
            fields = {"planned_start": now, "plan_reason": f"cannot plan: {exc}"}
        if queue.set_plan(job.id, **fields):
            count += 1
    return count
