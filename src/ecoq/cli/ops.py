"""Operator commands: daemon, forecast, zones, config."""

from typing import TYPE_CHECKING, Annotated

import typer

from ecoq.cli.app import (
    STATE,
    JsonOpt,
    app,
    box_gpus,
    config_app,
    errors,
    examples,
    forecast_source,
    open_queue,
    planner_sites,
    print_json,
    settings,
    shared_client,
    slurm_driver,
    utcnow,
)

if TYPE_CHECKING:
    from ecoq.scheduler.sites import Site

DAEMON_EPILOG = examples(
    "ecoq daemon                 run until SIGTERM (systemd: config/ecoq.service)",
    "ecoq daemon --once          one tick, then exit (tests, cron)",
    "ecoq daemon --until-idle    exit once no job is waiting or running",
    note="SIGTERM once: stop starting jobs and let running ones finish. Twice: terminate them.",
)


@app.command(epilog=DAEMON_EPILOG)
def daemon(
    once: Annotated[bool, typer.Option("--once", help="Run one tick and exit.")] = False,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit when nothing is waiting or running.")
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="Log lines: text (key=value) or json (one object per line); secrets are "
            "never logged.",
        ),
    ] = "text",
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus metrics on this port (e.g. 9464)."),
    ] = None,
) -> None:
    """Plan, start, pause and reap this box's jobs."""
    import logging

    from ecoq.cli.shared_box import serving, shared_box
    from ecoq.db import ensure_private
    from ecoq.logs import configure_logging
    from ecoq.scheduler.daemon import Daemon, DaemonConfig, DaemonLock, run_forever
    from ecoq.scheduler.reconcile import AccountingParams
    from ecoq.scheduler.replan import PlannerParams
    from ecoq.scheduler.retention import RetentionPolicy

    with errors():
        configure_logging(log_format, level=logging.DEBUG if STATE.verbose else logging.INFO)
        if metrics_port is not None and not 0 < metrics_port < 65536:
            from ecoq.errors import ValidationError

            raise ValidationError(f"--metrics-port {metrics_port} must be a TCP port, 1-65535")
        cfg = settings()
        ensure_private(cfg.data_dir)
        box = shared_box()  # None in personal mode; else checks root, makes the files private
        sites = planner_sites()
        own = next((s for s in sites if s.name == cfg.site_name), None)
        lock = DaemonLock(cfg.data_dir)
        lock.acquire()
        try:
            queue = open_queue()
            runner = Daemon(
                queue,
                forecast_source(),
                DaemonConfig(
                    data_dir=cfg.data_dir,
                    worker=cfg.site_name,
                    box_gpus=_own_gpus(own) if sites else box_gpus(),
                    planner=PlannerParams(
                        min_saving=cfg.planner.min_saving,
                        rule=cfg.planner.averaging,
                        fail_policy=cfg.planner.fail_policy,
                    ),
                    tick_interval_s=cfg.daemon.tick_interval_s,
                    refresh_interval_s=cfg.forecast.refresh_interval_s,
                    kill_grace_s=cfg.daemon.kill_grace_s,
                    meters=cfg.meters,
                    zone=own.zone if own else (cfg.site.zone or None),
                    max_jobs=(own.slots or 0) if own else cfg.site.max_jobs,
                    stale_after_s=cfg.daemon.stale_after_s,
                    meter_interval_s=cfg.meters.interval_s,
                    accounting=AccountingParams.from_settings(cfg.accounting),
                    idle_w_per_gpu=own.idle_w_per_gpu if own else cfg.site.idle_w_per_gpu,
                    sites=sites,
                    retention=RetentionPolicy.from_settings(cfg.retention),
                ),
                executor=box.executor(queue) if box else None,
                slurm=box.slurm_driver(queue) if box else slurm_driver(queue),
            )
            if once:
                try:
                    report = runner.tick()
                finally:
                    runner.close()
                typer.echo(
                    f"tick: planned {report.planned}, started {report.started or 'none'}, "
                    f"ended {report.reaped or 'none'}"
                )
            else:
                with serving(box, queue):  # a shared box: users' commands come in on its socket
                    run_forever(runner, until_idle=until_idle, metrics_port=metrics_port)
        finally:
            lock.release()


FORECAST_EPILOG = examples(
    "ecoq forecast --zone DE",
    "ecoq forecast --zone GB --duration 3h --deadline 12h --json",
    "ecoq forecast --zone CAISO_NORTH --provider watttime",
    "ecoq forecast --zone RG10 --provider ukgrid --hours 48",
    note="Without --provider: the forecast the planner would use (with its fallbacks). With "
    "--provider: that provider's answer only, or its error. WattTime and Electricity Maps read "
    "their credentials from ECOQ_WATTTIME_USERNAME/ECOQ_WATTTIME_PASSWORD and "
    "ECOQ_ELECTRICITYMAPS_TOKEN, or a 0600 secrets file.",
)


@app.command(epilog=FORECAST_EPILOG)
def forecast(
    zone: Annotated[str | None, typer.Option(help="Grid zone (default site.zone).")] = None,
    hours: Annotated[float, typer.Option(help="How far ahead to show.")] = 24.0,
    duration: Annotated[str | None, typer.Option(help="Job length for the best window.")] = None,
    deadline: Annotated[str | None, typer.Option(help="Finish-by for the best window.")] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            help="Ask this provider only: watttime, electricitymaps, ukgrid, file or bundled."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the forecast the planner would use, its source and age, and the best window."""
    from ecoq.cli.forecast_view import forecast_answer

    with errors():
        client = shared_client()
        if client is not None:  # a shared box: the daemon's providers, credentials and cache
            answer = client.forecast(
                zone=zone, hours=hours, duration=duration, deadline=deadline, provider=provider
            )
        else:
            answer = forecast_answer(
                zone=zone,
                hours=hours,
                duration=duration,
                deadline=deadline,
                provider=provider,
                now=utcnow(),
            )
    if json_out:
        print_json(answer.data)
        return
    for line in answer.lines:
        typer.echo(line)


@app.command(
    epilog=examples(
        "ecoq zones",
        "ecoq zones --json",
        "ecoq zones | grep -i frankfurt",
        "ecoq zones --groups",
        note="Any alias works as --zone: `--zone aws:eu-central-1` and `--zone frankfurt` both "
        "mean DE. The aliases come from config/regions.toml.",
    )
)
def zones(
    groups: Annotated[
        bool, typer.Option("--groups", help="List the zone groups for `submit --region`.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """List the bundled zones (Electricity Maps codes) with their names and aliases.

    Aliases are cloud regions (`aws:eu-central-1`) and cities located in the zone.
    """
    from ecoq.forecasting.bundled import zones as bundled_zones
    from ecoq.forecasting.regions import list_groups, list_regions

    with errors():
        if groups:
            found = list_groups()
            if json_out:
                print_json(
                    [
                        {"group": g.key, "name": g.name, "aliases": list(g.aliases),
                         "zones": list(g.zones)}
                        for g in found
                    ]
                )  # fmt: skip
                return
            for g in found:
                also = f" ({', '.join(g.aliases)})" if g.aliases else ""
                typer.echo(f"{g.key}{also}: {', '.join(g.zones)}")
            return
        known = {r.zone: r for r in list_regions()}
        names = bundled_zones()
    rows = [
        (z, known[z].name if z in known else None, list(known[z].aliases) if z in known else [])
        for z in names
    ]
    if json_out:
        print_json([{"zone": z, "name": name, "aliases": aliases} for z, name, aliases in rows])
        return
    zone_w = max(len("ZONE"), *(len(z) for z in names))
    name_w = max(len("NAME"), *(len(name or "") for _, name, _ in rows))
    typer.echo(f"{'ZONE'.ljust(zone_w)}  {'NAME'.ljust(name_w)}  ALIASES".rstrip())
    for z, name, aliases in rows:
        typer.echo(
            f"{z.ljust(zone_w)}  {(name or '').ljust(name_w)}  {', '.join(aliases)}".rstrip()
        )


@config_app.command(
    "show", epilog=examples("ecoq config show", "ecoq --config site.toml config show --json")
)
def config_show(json_out: JsonOpt = False) -> None:
    """Print every setting, its effective value and where it came from (secrets redacted)."""
    from ecoq.config import describe, redact_url, setting_value

    with errors():
        cfg = settings()
        rows = describe(cfg)
        gpus = box_gpus()
    if json_out:
        data: dict[str, dict[str, object]] = {}
        for key, _shown, source in rows:
            value = setting_value(cfg, key)  # typed, not the text's repr
            if key == "database.url":
                value = redact_url(value)
            data[key] = {"value": value, "source": source}
        print_json(data)
        return
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        typer.echo(f"{key.ljust(width)}  {value}  [{source}]")
    typer.echo(f"# GPUs on this box: {gpus}; data folder: {settings().data_dir}")


def _own_gpus(own: "Site | None") -> int:
    """GPUs this box hands out with `[[sites]]`: its entry's (detected when it gives none); 0
    when this daemon is no site (it only drives Slurm sites)."""
    if own is None:
        return 0
    return own.gpus if own.gpus is not None else box_gpus()
