"""Plots for reports and `ecoq show --plot`: PNG bytes drawn with matplotlib's Agg backend.

matplotlib is an optional extra (``pip install 'ecoq[plot]'``), imported on first use; figures
are built with `matplotlib.figure.Figure` (no pyplot, so no global state). The data for a job's
plot is read with plain SQL through a `ecoq.views.Reader`.
"""

import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ecoq.errors import EcoqError
from ecoq.reports import time_param
from ecoq.views import Reader, get_job

__all__ = ["PlotUnavailable", "WindowPlot", "daily_png", "window_plot", "window_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MARGIN = timedelta(hours=1)


class PlotUnavailable(EcoqError):
    """Plots need matplotlib: pip install 'ecoq[plot]'."""


def _figure(width_in: float, height_in: float) -> Any:
    """A new matplotlib Figure. Raises PlotUnavailable when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable(
            "plots need matplotlib, which is not installed: pip install 'ecoq[plot]'"
        ) from exc
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    # fixed margins: a constrained layout costs as much again as drawing the plot
    fig.subplots_adjust(left=0.085, right=0.98, top=0.9, bottom=0.2)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@dataclass(frozen=True)
class WindowPlot:
    """What a job's forecast-and-window plot shows (times UTC, intensities g/kWh).

    Attributes:
        forecast, realized: (step start, value) pairs; each value holds for its step.
        chosen: the window the job ran in (or is planned for).
        run_now: the window it would have run in without ecoq (from submission).
    """

    title: str
    signal: str | None
    forecast_label: str | None
    forecast: list[tuple[datetime, float]]
    forecast_step: timedelta
    realized: list[tuple[datetime, float]]
    realized_step: timedelta
    chosen: tuple[datetime, datetime] | None
    run_now: tuple[datetime, datetime] | None
    deadline: datetime | None
    span: tuple[datetime, datetime]


def _steps(points: list[tuple[datetime, float]], step: timedelta) -> tuple[list[Any], list[Any]]:
    xs = [t for t, _ in points] + [points[-1][0] + step]
    ys = [v for _, v in points] + [points[-1][1]]
    return xs, ys


def window_png(plot: WindowPlot) -> bytes:
    """The forecast line, the realized line, the chosen window shaded and the "run now" window
    outlined, as PNG bytes. Raises PlotUnavailable without matplotlib."""
    fig = _figure(8.0, 3.2)
    ax = fig.add_subplot()
    if plot.forecast:
        xs, ys = _steps(plot.forecast, plot.forecast_step)
        ax.plot(
            xs,
            ys,
            drawstyle="steps-post",
            color="#1f77b4",
            lw=1.6,
            label=f"forecast ({plot.forecast_label})" if plot.forecast_label else "forecast",
        )
    if plot.realized:
        xs, ys = _steps(plot.realized, plot.realized_step)
        ax.plot(xs, ys, drawstyle="steps-post", color="#444444", lw=1.2, ls="-.", label="realized")
    if plot.chosen:
        ax.axvspan(*plot.chosen, color="#2ca02c", alpha=0.25, label="chosen window")
    if plot.run_now:
        ax.axvspan(
            *plot.run_now,
            fill=False,
            edgecolor="#d62728",
            lw=1.5,
            ls="--",
            label='"run now" window',
        )
    if plot.deadline:
        ax.axvline(plot.deadline, color="#7f7f7f", lw=1, ls=":", label="deadline")
    ax.set_xlim(*plot.span)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"gCO2e/kWh ({plot.signal or 'no'} signal)")
    ax.set_xlabel("UTC")
    ax.set_title(plot.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.autofmt_xdate(bottom=0.22)
    return _png(fig)


def daily_png(days: list[tuple[date, float, float]], signal: str) -> bytes:
    """Bars per day: realized and avoided kg CO2e (avoided below zero when a run emitted more
    than it would have without ecoq). Raises PlotUnavailable without matplotlib."""
    fig = _figure(8.0, 3.0)
    ax = fig.add_subplot()
    xs = list(range(len(days)))
    ax.bar(
        [x - 0.2 for x in xs],
        [d[1] for d in days],
        width=0.4,
        color="#8c564b",
        label="realized kgCO2e",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [d[2] for d in days],
        width=0.4,
        color="#2ca02c",
        label="avoided kgCO2e",
    )
    every = max(1, len(days) // 12)
    ax.set_xticks(xs[::every], [d[0].strftime("%d %b") for d in days][::every], fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("kgCO2e")
    ax.set_title(f"Daily realized vs avoided emissions ({signal} signal)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _points(raw: Any, lo: datetime, hi: datetime, step: timedelta) -> list[tuple[datetime, float]]:
    points = json.loads(raw) if isinstance(raw, str) else raw
    out = []
    for p in points:
        t = datetime.fromtimestamp(float(p[0]), UTC)
        if t + step > lo and t < hi and p[1] is not None:
            out.append((t, float(p[1])))
    return out


_FORECAST_SQL = """
SELECT source, signal, label, issued_at, step_s, points FROM forecasts
WHERE zone = :zone AND realized = :no AND source = :source AND "end" > :lo AND start < :hi
{extra}
ORDER BY issued_at DESC, id DESC LIMIT 1
"""
_REALIZED_SQL = """
SELECT step_s, points FROM forecasts
WHERE zone = :zone AND realized = :yes AND signal = :signal AND "end" > :lo AND start < :hi
ORDER BY fetched_at, id
"""
_RUN_SQL = """
SELECT started_at, finished_at, counterfactual_start, accounting, realized_g, avoided_g,
       accounting_signal, intensity_source, intensity_kind
FROM runs WHERE job_id = :id AND started_at IS NOT NULL ORDER BY id DESC LIMIT 1
"""


def window_plot(reader: Reader, job_id: int) -> WindowPlot:
    """The data of a job's forecast-and-window plot: the forecast its plan used (the stored issue,
    else the newest stored forecast of its source, else the typical profile), the stored realized
    values of its signal, the window it ran in (or its planned one) and the window it would have
    run in from its submission.

    Raises:
        EcoqError: no job has that id.
    """
    job = get_job(reader, job_id)
    if job is None:
        raise EcoqError(f"no job with id {job_id}; `ecoq queue --all` lists the jobs")
    runs = reader.query(_RUN_SQL, {"id": job_id})
    run = runs[0] if runs else None
    earliest = max(job.submitted_at, job.not_before or job.submitted_at)
    chosen: tuple[datetime, datetime] | None = None
    length = timedelta(seconds=job.duration_s)
    if run is not None and _time(run["started_at"]):
        start = _time(run["started_at"])
        end = _time(run["finished_at"]) or start
        assert start is not None and end is not None
        chosen, length = (start, end), max(end - start, timedelta(seconds=1))
        earliest = _time(run["counterfactual_start"]) or min(earliest, start)
    elif job.planned_start is not None:
        chosen = (job.planned_start, job.planned_start + length)
    run_now = (earliest, earliest + length)
    ends = [job.deadline, run_now[1]] + ([chosen[1]] if chosen else [])
    lo, hi = min(job.submitted_at, earliest) - _MARGIN, max(ends) + _MARGIN
    issued = reader.query("SELECT forecast_issued_at FROM jobs WHERE id = :id", {"id": job_id})
    forecast, step, label = _forecast(reader, job, _time(issued[0]["forecast_issued_at"]), lo, hi)
    signal = run["accounting_signal"] if run and run["accounting_signal"] else job.plan_signal
    realized, realized_step = _realized(reader, job.zone, signal, lo, hi)
    title = f"job {job.id} {job.name!r} in {job.zone}"
    if run is not None and run["realized_g"] is not None:
        title += (
            f": {run['realized_g']:.0f} g realized, {run['avoided_g']:.0f} g avoided "
            f"({run['accounting']}, {run['intensity_kind']} {signal})"
        )
    return WindowPlot(
        title=title,
        signal=signal,
        forecast_label=label,
        forecast=forecast,
        forecast_step=step,
        realized=realized,
        realized_step=realized_step,
        chosen=chosen,
        run_now=run_now,
        deadline=job.deadline,
        span=(lo, hi),
    )


def _forecast(
    reader: Reader, job: Any, issued: datetime | None, lo: datetime, hi: datetime
) -> tuple[list[tuple[datetime, float]], timedelta, str | None]:
    base = {
        "zone": job.zone,
        "no": False,
        "lo": time_param(reader, lo),
        "hi": time_param(reader, hi),
    }
    if job.plan_source and job.plan_source != "bundled":
        rows: list[dict[str, Any]] = []
        if issued is not None:
            rows = reader.query(
                _FORECAST_SQL.format(extra="AND issued_at = :issued"),
                {**base, "source": job.plan_source, "issued": time_param(reader, issued)},
            )
        if not rows:
            rows = reader.query(_FORECAST_SQL.format(extra=""), {**base, "source": job.plan_source})
        if rows:
            step = timedelta(seconds=int(rows[0]["step_s"]))
            return _points(rows[0]["points"], lo, hi, step), step, rows[0]["label"]
    if job.plan_signal in (None, "average"):
        from ecoq.errors import ForecastUnavailable, UnknownZone
        from ecoq.forecasting.bundled import BundledProvider

        try:
            typical = BundledProvider().forecast(job.zone, lo, hi)
        except (ForecastUnavailable, UnknownZone):
            pass
        else:
            points = [(p.start, p.g_per_kwh) for p in typical.points]
            return points, typical.step, typical.label
    return [], timedelta(hours=1), None


def _realized(
    reader: Reader, zone: str, signal: str | None, lo: datetime, hi: datetime
) -> tuple[list[tuple[datetime, float]], timedelta]:
    if signal is None:
        return [], timedelta(hours=1)
    params = {
        "zone": zone,
        "yes": True,
        "signal": signal,
        "lo": time_param(reader, lo),
        "hi": time_param(reader, hi),
    }
    merged: dict[datetime, float] = {}
    steps = []
    for row in reader.query(_REALIZED_SQL, params):  # oldest fetch first; newer values win
        step = timedelta(seconds=int(row["step_s"]))
        steps.append(step)
        merged.update(_points(row["points"], lo, hi, step))
    return sorted(merged.items()), min(steps, default=timedelta(hours=1))
