"""Commands on jobs: submit, queue, show, cancel, hold, release, start, wait, logs."""

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ecoq.cli.app import (
    JobId,
    JsonOpt,
    app,
    box_gpus,
    canonical_zone,
    errors,
    examples,
    forecast_source,
    load_job,
    open_queue,
    open_reader,
    planner_sites,
    print_json,
    settings,
    shared_client,
    utcnow,
)

if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any

    from ecoq.scheduler.queue import JobSpec, Queue
    from ecoq.shared.client import Client

SUBMIT_EPILOG = examples(
    "ecoq submit train.sh --deadline 12h --duration 2h --zone DE",
    "ecoq submit train.py --deadline 2026-12-01T08:00Z --gpus 2 -- --lr 3e-4 --epochs 10",
    "ecoq submit sweep.sh --deadline 1d --duration 6h --zone DE --interruptible --max-pauses 3",
    "ecoq submit train.py --deadline 2d --duration 8h --zone DE --zone FR --interruptible "
    "--min-segment 1h --checkpoint-signal SIGUSR1 --resume 'python3 train.py --resume'",
    note="The deadline is when the job must FINISH (a span after now, or an ISO time with an "
    "offset). Arguments for the script go after it; put `--` before any that start with a dash. "
    "An interruptible job may be paused between its cleanest segments: by SIGSTOP (its GPUs stay "
    "held), or with --checkpoint-signal the job saves its state and exits, and --resume runs "
    "later.",
)


@app.command(epilog=SUBMIT_EPILOG)
def submit(
    script: Annotated[str, typer.Argument(metavar="SCRIPT", help="Script or command to run.")],
    args: Annotated[
        list[str] | None, typer.Argument(metavar="ARGS", help="Arguments for the script.")
    ] = None,
    deadline: Annotated[
        str, typer.Option(help="Finish by: a span (12h, 90m, 1d) or an ISO time with offset.")
    ] = ...,  # type: ignore[assignment]
    duration: Annotated[
        str | None, typer.Option(help="Expected run time (default: learned, else config).")
    ] = None,
    not_before: Annotated[str | None, typer.Option(help="Do not start before this.")] = None,
    zone: Annotated[
        list[str] | None,
        typer.Option(
            help="Grid zone, e.g. DE (default site.zone). Repeat for more allowed zones; the "
            "first is the home zone."
        ),
    ] = None,
    region: Annotated[
        list[str] | None,
        typer.Option(
            help="A zone group whose zones are all allowed (europe/eu, usa/us, north-america, "
            "americas, asia-pacific, asia, oceania, africa); with [[sites]], the planner picks "
            "the site. Repeatable; after any --zone."
        ),
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs the job needs.")] = 0,
    name: Annotated[str | None, typer.Option(help="A name (default: the script's).")] = None,
    project: Annotated[str | None, typer.Option(help="Project to account the job to.")] = None,
    drop_if_late: Annotated[
        bool,
        typer.Option("--drop-if-late", help="Expire instead of running late if it cannot start."),
    ] = False,
    interruptible: Annotated[
        bool,
        typer.Option("--interruptible", help="May be paused between its cleanest segments."),
    ] = False,
    max_pauses: Annotated[
        int | None, typer.Option(help="Pause it at most this often (default: no limit).")
    ] = None,
    min_segment: Annotated[
        str | None, typer.Option(help="Shortest segment worth running, e.g. 30m.")
    ] = None,
    checkpoint_signal: Annotated[
        str | None,
        typer.Option(help="Signal that makes the job save its state and exit (SIGUSR1)."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(metavar="CMD", help="Command that resumes it after a checkpoint."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Queue a job to run in the cleanest window that still meets its deadline."""
    import getpass

    from ecoq.config import job_environment
    from ecoq.parsing import parse_duration, parse_when, resolve_script
    from ecoq.scheduler.jobspec import JobSpec, parse_signal

    with errors():
        cfg = settings()
        now = utcnow()
        cwd = Path.cwd()
        resolved = resolve_script(script, cwd)
        argv = resolved.argv + list(args or [])
        deadline_at = parse_when(deadline, now, flag="--deadline")
        not_before_at = parse_when(not_before, now, flag="--not-before") if not_before else None
        zones = _allowed_zones(list(zone or []), list(region or []))
        if duration is not None:
            span, span_source = parse_duration(duration), "user"
        else:
            span, span_source = timedelta(seconds=cfg.planner.default_duration_s), "default"
        spec = JobSpec(
            command=argv,
            cwd=str(cwd),
            env=job_environment(os.environ),
            user=getpass.getuser(),
            uid=os.getuid(),
            zone=zones[0],
            deadline=deadline_at,
            duration=span,
            duration_source=span_source,
            # a file name's non-UTF-8 bytes (surrogates) cannot be stored as text: shown as �
            name=name
            or Path(resolved.path).name.encode(errors="surrogateescape").decode(errors="replace"),
            project=project,
            gpus=gpus,
            not_before=not_before_at,
            drop_if_late=drop_if_late,
            zones=tuple(zones),
            interruptible=interruptible,
            max_pauses=max_pauses,
            min_segment=parse_duration(min_segment, flag="--min-segment")
            if min_segment
            else timedelta(0),
            checkpoint_signal=parse_signal(checkpoint_signal) if checkpoint_signal else None,
            resume_command=_resume_argv(resume, cwd) if resume is not None else None,
        )
        client = shared_client()
        if client is not None:  # a shared box: its daemon stores the job, to run as this user
            from ecoq.shared.protocol import SubmitRequest

            view = client.submit(SubmitRequest.from_spec(spec, duration_given=duration is not None))
        else:
            from ecoq.cli.submission import store_job

            view = store_job(spec, now)
    if json_out:
        print_json(view.to_json())
    else:
        from ecoq.render import submit_line

        typer.echo(submit_line(view, now))


def _allowed_zones(zones: list[str], regions: list[str]) -> list[str]:
    """`--zone` values (resolved), then the zones of each `--region` group (else `site.zone`),
    without repeats; the first is the home zone. With `[[sites]]`, a group adds only the zones
    some site serves. Raises ValidationError, UnknownZone."""
    from ecoq.errors import ValidationError
    from ecoq.forecasting.regions import list_groups, resolve_group

    cfg = settings()
    allowed = [canonical_zone(z) for z in zones]
    served = {s.zone for s in planner_sites()} if cfg.sites else None
    for name in regions:
        group = resolve_group(name)
        if group is None:
            known = ", ".join(g.key for g in list_groups())
            raise ValidationError(f"--region {name!r} is not a zone group; use one of {known}")
        if not allowed and cfg.site.zone in group.zones:
            allowed.append(cfg.site.zone)  # this box's zone stays the home zone
        found = [z for z in group.zones if served is None or z in served]
        if not found:
            raise ValidationError(
                f"--region {name!r}: no site serves any of its zones; add a [[sites]] entry "
                "there or pass --zone"
            )
        allowed += found
    if not allowed and cfg.site.zone:
        allowed = [canonical_zone(cfg.site.zone)]
    if not allowed:
        raise ValidationError(
            "no zone given; pass --zone (e.g. --zone DE; `ecoq zones` lists them), --region, "
            "or set site.zone in the config"
        )
    return list(dict.fromkeys(allowed))


def _most_gpus() -> int:
    """The most GPUs one job may ask for: this box's, or with `[[sites]]` the largest site's
    (a site without a GPU count has no limit)."""
    sites = planner_sites()
    if not sites:
        return box_gpus()
    counts = [s.gpus for s in sites]
    return 1 << 20 if any(c is None for c in counts) else max(c or 0 for c in counts)


def _resume_argv(command: str, cwd: Path) -> list[str]:
    """`--resume 'python3 train.py --resume'` as an argv list (shell words, never a shell), its
    program resolved as SCRIPT is. Raises ValidationError."""
    import shlex

    from ecoq.errors import ValidationError
    from ecoq.parsing import resolve_script

    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValidationError(f"--resume {command!r} is not a command line: {exc}") from None
    if not words:
        raise ValidationError("--resume is empty; give the command that resumes the job")
    try:
        return resolve_script(words[0], cwd).argv + words[1:]
    except ValidationError as exc:
        raise ValidationError(f"--resume: {exc}") from None


def _preview_plan(queue: "Queue", spec: "JobSpec", now: "datetime") -> "dict[str, Any]":
    """The plan the daemon would make for the new job now (the same `plan_jobs`, with the
    capacity that running and planned jobs hold). Raises UnknownZone."""
    from ecoq.scheduler.replan import LocalSite, PlannerParams, plan_batch, split
    from ecoq.scheduler.sites import SiteMap

    cfg = settings()
    since = now - timedelta(seconds=cfg.daemon.stale_after_s)
    sites = planner_sites()
    site: LocalSite | SiteMap
    if sites:
        live = queue.live_daemon_names(since)
        # No daemon runs yet: every site is usable (the first daemon re-plans every job).
        site = (
            SiteMap.seen_from(cfg.site_name, sites, live) if live else SiteMap(cfg.site_name, sites)
        )
    else:
        site = LocalSite(
            name=cfg.site_name,
            zone=cfg.site.zone or None,
            gpus=box_gpus(),
            max_jobs=cfg.site.max_jobs,
            idle_w_per_gpu=cfg.site.idle_w_per_gpu,
            daemons=max(1, queue.live_daemons(since)),
        )
    params = PlannerParams(
        min_saving=cfg.planner.min_saving,
        rule=cfg.planner.averaging,
        fail_policy=cfg.planner.fail_policy,
    )
    holding = split(queue.planning_jobs(), site, all_waiting=False)[1] if site.limited else []
    draft = queue.new_job(spec)
    [(_, fields)] = plan_batch([draft], holding, forecast_source(), now, params, site, strict=True)
    return fields


def _with_duration(spec: "JobSpec", span: timedelta, source: str) -> "JobSpec":
    from dataclasses import replace

    return replace(spec, duration=span, duration_source=source)


@app.command("queue", epilog=examples("ecoq queue", "ecoq queue --all --json"))
def queue_cmd(
    all_jobs: Annotated[bool, typer.Option("--all", help="Include finished jobs.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List waiting and running jobs (all jobs with --all)."""
    from ecoq.views import list_jobs

    with errors():
        client = shared_client()
        if client is not None:  # a shared box: the caller's own jobs (an admin's: everyone's)
            jobs = client.list_jobs(include_finished=all_jobs)
        else:
            reader = open_reader()
            jobs = list_jobs(reader, include_finished=all_jobs) if reader is not None else []
    if json_out:
        print_json([j.to_json() for j in jobs])
        return
    if not jobs:
        typer.echo("no jobs" if all_jobs else "no waiting or running jobs (--all shows finished)")
        return
    from ecoq.render import QUEUE_HEADER, queue_row

    now = utcnow()
    rows = [QUEUE_HEADER, *(queue_row(j, now) for j in jobs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(QUEUE_HEADER))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@app.command(epilog=examples("ecoq show 7", "ecoq show 7 --json", "ecoq show 7 --plot job7.png"))
def show(
    job_id: JobId,
    json_out: JsonOpt = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Also draw its forecast, chosen and run-now windows into this PNG."),
    ] = None,
) -> None:
    """Show one job, explain its plan, and give its emissions with their provenance."""
    from ecoq.cli.report import accounting_lines, write_job_plot
    from ecoq.render import show_lines

    with errors():
        client = shared_client()
        if client is not None:  # a shared box: only the caller's own jobs (or an admin's)
            job, accounting = client.show(job_id)
            if plot is not None:
                write_job_plot(job_id, plot)  # the daemon draws it; written here, as the caller
        else:
            job = load_job(job_id)
            if plot is not None:
                write_job_plot(job_id, plot)
            accounting = accounting_lines(job_id) if not json_out else []
    if json_out:
        print_json(job.to_json())
        return
    for label, value in [*show_lines(job, utcnow()), *accounting]:
        typer.echo(f"{label:>13}: {value}")
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def _request(action: str, job_id: int) -> None:
    with errors():
        client = shared_client()
        if client is not None:  # a shared box: the daemon checks the job is the caller's
            outcome = client.request(action, job_id)
        else:
            load_job(job_id)  # an unknown id is refused without creating a database
            queue = open_queue()
            outcome = getattr(queue, action)(job_id)
    verbs = {
        "cancelled": f"job {job_id} cancelled",
        "held": f"job {job_id} held: it will not start until `ecoq release {job_id}`",
        "released": f"job {job_id} released: it will be planned again",
        "requested": f"job {job_id}: {action.replace('_', ' ')} requested; "
        "the daemon carries it out at its next tick",
    }
    typer.echo(verbs.get(outcome, f"job {job_id}: {outcome}"))


@app.command(epilog=examples("ecoq cancel 7"))
def cancel(job_id: JobId) -> None:
    """Cancel a job. A running job gets SIGTERM (its process group), then SIGKILL after
    daemon.kill_grace_s."""
    _request("cancel", job_id)


@app.command(epilog=examples("ecoq hold 7"))
def hold(job_id: JobId) -> None:
    """Keep a waiting job from starting; pause (SIGSTOP) a running one."""
    _request("hold", job_id)


@app.command(epilog=examples("ecoq release 7"))
def release(job_id: JobId) -> None:
    """Undo `hold`: plan a held job again, or resume (SIGCONT) a paused one."""
    _request("release", job_id)


@app.command(epilog=examples("ecoq start 7"))
def start(job_id: JobId) -> None:
    """Run a waiting job now, ignoring carbon (the daemon starts it at its next tick)."""
    _request("run_now", job_id)


@app.command(epilog=examples("ecoq wait 7", "ecoq wait 7 --timeout 3600 && echo done"))
def wait(
    job_id: JobId,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 124).")
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between checks.")] = 1.0,
) -> None:
    """Block until the job ends; exit with its exit code (1 if it ended without one)."""
    from ecoq.states import TERMINAL

    started = time.monotonic()
    with errors():
        if not 0 < poll <= 3600 or (timeout is not None and not timeout >= 0):  # NaN too
            from ecoq.errors import ValidationError

            raise ValidationError(
                f"--poll {poll:g} --timeout {timeout}: give --poll in seconds, more than 0 and "
                "at most 3600, and --timeout in seconds, 0 or more"
            )
        while True:
            job = load_job(job_id)
            if job.state in TERMINAL:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                typer.echo(f"job {job_id} still {job.state} after {timeout:g} s", err=True)
                raise typer.Exit(124)
            time.sleep(poll)
    typer.echo(f"job {job_id} {job.state}" + (f" (exit {job.exit_code})" if job.exit_code else ""))
    if job.state == "succeeded":
        raise typer.Exit(0)
    raise typer.Exit(job.exit_code if job.exit_code else 1)


@app.command(epilog=examples("ecoq logs 7", "ecoq logs 7 --follow"))
def logs(
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until it ends.")
    ] = False,
) -> None:
    """Print the job's output (stdout and stderr of its latest run)."""
    from ecoq.states import TERMINAL
    from ecoq.views import latest_run_dir

    with errors():
        client = shared_client()
        if client is not None:  # a shared box: the daemon reads the caller's own job's output
            _shared_logs(client, job_id, follow)
            return
        job = load_job(job_id)
        reader = open_reader()
        run_dir = latest_run_dir(reader, job_id) if reader is not None else None
        if run_dir is None and not follow:
            typer.echo(f"job {job_id} is {job.state} and has no output yet", err=True)
            return
        offset = 0
        while True:
            if run_dir is None:
                run_dir = latest_run_dir(reader, job_id) if reader is not None else None
            if run_dir is not None:
                offset = _print_from(run_dir / "output.log", offset)
            if not follow or job.state in TERMINAL:
                if follow and run_dir is not None:
                    _print_from(run_dir / "output.log", offset)
                return
            time.sleep(0.5)
            job = load_job(job_id)


def _shared_logs(client: "Client", job_id: int, follow: bool) -> None:
    """`ecoq logs` through the shared daemon, a chunk a call (raises what the client raises)."""
    import sys

    from ecoq.shared.protocol import LOG_CHUNK_BYTES
    from ecoq.states import TERMINAL

    offset = 0
    while True:
        chunk = client.logs(job_id, offset)
        if not chunk.has_run and not follow:
            typer.echo(f"job {job_id} is {chunk.state} and has no output yet", err=True)
            return
        sys.stdout.buffer.write(chunk.data)
        sys.stdout.flush()
        offset = chunk.offset
        if len(chunk.data) == LOG_CHUNK_BYTES:
            continue  # a full chunk: more may be waiting
        if not follow or chunk.state in TERMINAL:  # the state was read before the output
            return
        time.sleep(0.5)


def _print_from(path: Path, offset: int) -> int:
    import sys

    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return offset + len(data)
