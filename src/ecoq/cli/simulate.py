"""`ecoq simulate`: backtest the planner on a real intensity trace (docs/design.md contract)."""

from pathlib import Path
from typing import Annotated

import typer

from ecoq.cli.app import JsonOpt, app, errors, examples, print_json

SIMULATE_EPILOG = examples(
    "ecoq simulate --intensity trace.csv --jobs jobs.csv --out schedule.csv",
    "ecoq simulate --intensity trace.csv --forecast forecasts.csv --jobs jobs.csv "
    "--out s.csv --policy window",
    "ecoq simulate --intensity trace.csv --forecast-error 0.1 --seed 7 --jobs jobs.csv "
    "--out s.csv --capacity 4 --json",
    note="TRACE.csv: time plus one column per zone (gCO2eq/kWh). FORECASTS.csv: "
    "issued_at,time,zone,value. JOBS.csv: id,submit,duration_h,deadline,zones,interruptible,"
    "power_kw[,max_pauses]; zones separated by '|'. SCHEDULE.csv gets one row per executed "
    "segment. Policies: now (baseline), window (best window once, at submission), ecoq "
    "(re-planning, zones, interruptible slots, capacity), oracle (ecoq with a perfect forecast).",
)

_LABELS = {
    "jobs": "jobs",
    "baseline_g": "baseline (g CO2eq)",
    "scheduled_g": "scheduled (g CO2eq)",
    "savings_pct": "savings (%)",
    "deadline_misses": "deadline misses",
    "plan_seconds": "planning time (s)",
}


class _Progress:
    """A progress line on stderr, shown only once a run has taken more than a second."""

    def __init__(self) -> None:
        import sys
        import time

        self.clock = time.monotonic
        self.began = self.clock()
        self.last = 0.0
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.began < 1.0 or (now - self.last < 0.5 and done < total):
            return
        self.last = now
        pct = 100 * done / max(total, 1)
        line = f"simulating: {done}/{total} events ({pct:.0f} %), {now - self.began:.0f} s"
        if self.tty:
            typer.echo(f"\r{line}", err=True, nl=False)
            self.shown = True
        elif done == total or int(pct) % 10 == 0:
            typer.echo(line, err=True)

    def close(self) -> None:
        if self.shown:
            typer.echo("", err=True)


@app.command(epilog=SIMULATE_EPILOG)
def simulate(
    intensity: Annotated[
        Path, typer.Option("--intensity", help="TRACE.csv: the true intensity per zone.")
    ],
    jobs: Annotated[Path, typer.Option("--jobs", help="JOBS.csv: the jobs to replay.")],
    out: Annotated[Path, typer.Option("--out", help="SCHEDULE.csv to write.")],
    forecast: Annotated[
        Path | None, typer.Option("--forecast", help="FORECASTS.csv with issue times.")
    ] = None,
    forecast_error: Annotated[
        float | None,
        typer.Option("--forecast-error", help="Noise sd as a fraction of the truth (0.05)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --forecast-error.")] = 0,
    policy: Annotated[str, typer.Option("--policy", help="now, window, ecoq or oracle.")] = "ecoq",
    capacity: Annotated[
        int | None, typer.Option("--capacity", help="Jobs at once per zone (default unlimited).")
    ] = None,
    min_saving: Annotated[
        float, typer.Option("--min-saving", help="Run now below this saving (fraction).")
    ] = 0.02,
    json_out: JsonOpt = False,
) -> None:
    """Replay jobs on a real intensity trace and report what a policy saves."""
    from ecoq.errors import ValidationError
    from ecoq.scheduler.simdata import read_forecasts, read_jobs, read_trace, write_schedule
    from ecoq.scheduler.simulate import POLICIES
    from ecoq.scheduler.simulate import simulate as run_simulation

    with errors():
        if forecast is not None and forecast_error is not None:
            raise ValidationError("give --forecast or --forecast-error, not both")
        if policy not in POLICIES:
            raise ValidationError(f"--policy {policy!r} is unknown; use one of {POLICIES}")
        if capacity is not None and capacity < 1:
            raise ValidationError(f"--capacity {capacity} must be at least 1")
        if not 0.0 <= min_saving <= 1.0:
            raise ValidationError(f"--min-saving {min_saving} must be a fraction from 0 to 1")
        if forecast_error is not None and not 0.0 <= forecast_error <= 10.0:
            raise ValidationError(
                f"--forecast-error {forecast_error} must be a fraction from 0 to 10, e.g. 0.05"
            )
        if seed < 0:
            raise ValidationError(f"--seed {seed} must be 0 or more")
        trace = read_trace(intensity)
        job_list = read_jobs(jobs)  # the simulation checks their deadlines against the trace
        log = read_forecasts(forecast, trace) if forecast is not None else None
        progress = _Progress()
        try:
            result = run_simulation(
                trace,
                job_list,
                policy=policy,
                forecasts=log,
                forecast_error=forecast_error,
                seed=seed,
                capacity=capacity,
                min_saving=min_saving,
                progress=progress,
            )
        finally:
            progress.close()
        write_schedule(out, result.segments)
    summary = result.summary()
    if json_out:
        print_json(summary)
        return
    typer.echo(f"policy {policy}: {len(result.segments)} segments written to {out}")
    for key, label in _LABELS.items():
        value = summary[key]
        text = (
            f"{value:,.1f}"
            if key.endswith("_g")
            else f"{value:.2f}"
            if isinstance(value, float)
            else str(value)
        )
        typer.echo(f"  {label:<22}{text:>16}")
