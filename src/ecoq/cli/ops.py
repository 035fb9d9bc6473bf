"""Operator commands: daemon, forecast, zones, config."""

from typing import Annotated

import typer

from ecoq.cli.app import (
    STATE,
    JsonOpt,
    app,
    box_gpus,
    config_app,
    errors,
    forecast_source,
    open_queue,
    print_json,
    settings,
    utcnow,
)

DAEMON_EPILOG = """Examples:

  ecoq daemon                 run until SIGTERM (systemd: config/ecoq.service)

  ecoq daemon --once          one tick, then exit (tests, cron)

  ecoq daemon --until-idle    exit once no job is waiting or running

SIGTERM once: stop starting jobs and let running ones finish. Twice: terminate them."""


@app.command(epilog=DAEMON_EPILOG)
def daemon(
    once: Annotated[bool, typer.Option("--once", help="Run one tick and exit.")] = False,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit when nothing is waiting or running.")
    ] = False,
) -> None:
    """Plan, start, pause and reap this box's jobs."""
    import logging

    from ecoq.db import ensure_private
    from ecoq.scheduler.daemon import Daemon, DaemonConfig, DaemonLock, run_forever
    from ecoq.scheduler.replan import PlannerParams

    logging.basicConfig(
        level=logging.DEBUG if STATE.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    with errors():
        cfg = settings()
        ensure_private(cfg.data_dir)
        lock = DaemonLock(cfg.data_dir)
        lock.acquire()
        try:
            runner = Daemon(
                open_queue(),
                forecast_source(),
                DaemonConfig(
                    data_dir=cfg.data_dir,
                    worker=cfg.site_name,
                    box_gpus=box_gpus(),
                    planner=PlannerParams(
                        min_saving=cfg.planner.min_saving,
                        rule=cfg.planner.averaging,
                        fail_policy=cfg.planner.fail_policy,
                    ),
                    tick_interval_s=cfg.daemon.tick_interval_s,
                    refresh_interval_s=cfg.forecast.refresh_interval_s,
                    kill_grace_s=cfg.daemon.kill_grace_s,
                ),
            )
            if once:
                report = runner.tick()
                typer.echo(
                    f"tick: planned {report.planned}, started {report.started or 'none'}, "
                    f"ended {report.reaped or 'none'}"
                )
            else:
                run_forever(runner, until_idle=until_idle)
        finally:
            lock.release()


FORECAST_EPILOG = """Examples:

  ecoq forecast --zone DE

  ecoq forecast --zone GB --duration 3h --deadline 12h --json"""


@app.command(epilog=FORECAST_EPILOG)
def forecast(
    zone: Annotated[str | None, typer.Option(help="Grid zone (default site.zone).")] = None,
    hours: Annotated[float, typer.Option(help="How far ahead to show.")] = 24.0,
    duration: Annotated[str | None, typer.Option(help="Job length for the best window.")] = None,
    deadline: Annotated[str | None, typer.Option(help="Finish-by for the best window.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the forecast the planner would use, its source and age, and the best window."""
    from datetime import timedelta

    from ecoq.errors import ValidationError
    from ecoq.parsing import parse_duration, parse_when
    from ecoq.scheduler.planning import plan_window
    from ecoq.views import iso

    with errors():
        cfg = settings()
        now = utcnow()
        zone_name = zone or cfg.site.zone
        if not zone_name:
            raise ValidationError("no zone given; pass --zone, e.g. --zone DE (`ecoq zones`)")
        if hours <= 0 or hours > 24 * 31:
            raise ValidationError(f"--hours {hours:g} must be between 0 and 744")
        if cfg.forecast.provider == "bundled":
            from ecoq.forecasting.bundled import resolve_zone

            zone_name = resolve_zone(zone_name)
        span = parse_duration(duration) if duration else None
        until = parse_when(deadline, now, flag="--deadline") if deadline else None
        if (span is None) != (until is None):
            raise ValidationError("give both --duration and --deadline to find the best window")
        end = max(now + timedelta(hours=hours), until or now)
        fc = forecast_source().forecast(zone_name, now, end)
        if fc is None:
            from ecoq.errors import ForecastUnavailable

            raise ForecastUnavailable(f"no forecast for zone {zone_name} from any source")
        best = None
        if span is not None and until is not None:
            best = plan_window(
                fc,
                earliest_start=now,
                latest_start=until - span,
                duration=span,
                min_saving=cfg.planner.min_saving,
                rule=cfg.planner.averaging,
            )
    shown = [p for p in fc.points if p.start < now + timedelta(hours=hours)]
    age_s = max(0.0, (now - fc.issued_at).total_seconds())
    if json_out:
        data: dict[str, object] = {
            "zone": fc.zone,
            "source": fc.source,
            "label": fc.label,
            "signal": fc.signal,
            "issued_at": iso(fc.issued_at),
            "age_s": round(age_s),
            "step_s": int(fc.step.total_seconds()),
            "points": [{"time": iso(p.start), "g_per_kwh": p.g_per_kwh} for p in shown],
        }
        if best is not None:
            data["best_window"] = {
                "start": iso(best.start),
                "mean_g_per_kwh": best.mean_g_per_kwh,
                "now_g_per_kwh": best.now_g_per_kwh,
                "saving_pct": 100 * best.saving_fraction,
                "reason": best.reason,
            }
        print_json(data)
        return
    typer.echo(
        f"zone {fc.zone}: {fc.label} ({fc.source}), {fc.signal} signal, gCO2eq/kWh, "
        f"issued {iso(fc.issued_at)} ({age_s / 60:.0f} min ago)"
    )
    for p in shown:
        bar = "#" * max(1, round(p.g_per_kwh / 20))
        typer.echo(f"  {p.start:%a %H:%M}Z  {p.g_per_kwh:7.1f}  {bar}")
    if best is not None:
        typer.echo(
            f"best window: start {iso(best.start)}, {best.mean_g_per_kwh:.0f} g/kWh vs "
            f"{best.now_g_per_kwh:.0f} now ({100 * best.saving_fraction:.1f} % less): "
            f"{best.reason}"
        )


@app.command(epilog="Example:\n\n  ecoq zones --json")
def zones(json_out: JsonOpt = False) -> None:
    """List the zones of the bundled typical profiles (Electricity Maps zone codes)."""
    from ecoq.forecasting.bundled import zones as bundled_zones

    names = bundled_zones()
    if json_out:
        print_json(names)
    else:
        typer.echo("\n".join(names))


@config_app.command("show", epilog="Example:\n\n  ecoq --config site.toml config show")
def config_show(json_out: JsonOpt = False) -> None:
    """Print every setting, its effective value and where it came from (secrets redacted)."""
    from ecoq.config import describe

    with errors():
        rows = describe(settings())
        gpus = box_gpus()
    if json_out:
        print_json({k: {"value": v, "source": src} for k, v, src in rows})
        return
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        typer.echo(f"{key.ljust(width)}  {value}  [{source}]")
    typer.echo(f"# GPUs on this box: {gpus}; data folder: {settings().data_dir}")
