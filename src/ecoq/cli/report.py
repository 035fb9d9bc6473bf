"""`ecoq report`, and the plot and accounting lines of `ecoq show`.

Reads through the fast reader (plain SQL); matplotlib is imported only for HTML and plots. On a
shared box a user's report and plots are made by the daemon (`shared_report`, `job_png`) and
only written here.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ecoq.cli.app import JsonOpt, app, errors, examples, open_reader, shared_client, utcnow

if TYPE_CHECKING:
    from ecoq.reports import GroupBy, Report
    from ecoq.views import Reader

REPORT_EPILOG = examples(
    "ecoq report                                   last 30 days, by project",
    "ecoq report --since 7d --by day",
    "ecoq report --since 2026-11-01T00:00Z --until 2026-12-01T00:00Z --format csv",
    "ecoq report --format html --out report.html   one file, plots embedded",
    "ecoq report --codecarbon --out emissions.csv  CodeCarbon's columns, one line per run",
    note="Runs are counted by when they finished. Marginal and average figures are shown apart, "
    "never added. Figures stay provisional until realized intensity values arrive (or "
    "accounting.finalize_after_s passes: final-forecast). HTML needs `pip install 'ecoq[plot]'`.",
)


def _since(text: str, now: datetime, flag: str) -> datetime:
    """A span before `now` (`30d`) or an ISO-8601 time with an offset."""
    import re

    from ecoq.parsing import parse_duration, parse_time

    raw = text.strip()
    if re.fullmatch(r"(\d+(\.\d+)?[smhdw])+", raw.lower()):
        return now - parse_duration(raw, flag=flag)
    return parse_time(raw, flag=flag)


@app.command(epilog=REPORT_EPILOG)
def report(
    since: Annotated[
        str, typer.Option(help="Start: a span before now (30d, 12h) or an ISO time.")
    ] = "30d",
    until: Annotated[
        str | None, typer.Option(help="End (exclusive): a span before now or an ISO time.")
    ] = None,
    by: Annotated[str, typer.Option(help="Group by job, project, user, zone or day.")] = "project",
    fmt: Annotated[
        str, typer.Option("--format", help="table, csv, json or html (self-contained file).")
    ] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    codecarbon: Annotated[
        bool,
        typer.Option("--codecarbon", help="CSV in CodeCarbon's emissions.csv columns, per run."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Energy and emissions of finished runs: realized, avoided, delay added, deadline misses,
    energy per epoch, carbon per inference and SCI, with their provenance.

    On a shared box a user's report counts their own jobs; an admin's, everyone's."""
    from ecoq.errors import ValidationError

    with errors():
        if json_out:
            fmt = "json"
        client = shared_client()
        if client is not None:  # a shared box: the daemon reads the database (own jobs only)
            text, runs = client.report(
                since=since, until=until, by=by, fmt=fmt, codecarbon=codecarbon
            )
        else:
            now = utcnow()
            query = report_query(since, until, by, fmt, codecarbon, now)
            text, runs = render_report(query, open_reader(), now=now)
        if out is None:
            typer.echo(text, nl=not text.endswith("\n"))
            return
        try:  # written here, as the caller, also on a shared box
            out.write_text(text, encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise ValidationError(f"cannot write --out {out}: {exc.strerror}") from exc
    typer.echo(f"wrote {out} ({runs} runs)")


@dataclass(frozen=True)
class ReportQuery:
    """`ecoq report`'s checked flags: runs finished in `[since, until)`."""

    since: datetime
    until: datetime
    by: "GroupBy"
    fmt: str
    codecarbon: bool


def report_query(
    since: str, until: str | None, by: str, fmt: str, codecarbon: bool, now: datetime
) -> ReportQuery:
    """Check `ecoq report`'s flags (as typed; `fmt` is "json" for `--json`), as the command and
    the shared daemon both do. Raises ValidationError naming the flag."""
    from ecoq.errors import ValidationError
    from ecoq.reports import FORMATS, GROUPS

    start = _since(since, now, "--since")
    end = _since(until, now, "--until") if until else now
    if by not in GROUPS:
        raise ValidationError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
    if fmt not in FORMATS:
        raise ValidationError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if codecarbon and fmt not in ("table", "csv"):
        raise ValidationError(f"--codecarbon writes CSV; drop --format {fmt}")
    if end <= start:
        raise ValidationError(f"--until ({until}) must be after --since ({since})")
    return ReportQuery(start, end, by, fmt, codecarbon)


def render_report(
    query: ReportQuery, reader: "Reader | None", *, now: datetime, uid: int | None = None
) -> tuple[str, int]:
    """The report's text and how many runs it covers; `uid` not None: only that user's jobs
    count (a shared daemon's answer to a user). Raises PlotUnavailable (HTML without
    matplotlib), DatabaseError."""
    from ecoq.reports import Report, build_report

    with _collector_paused():
        if query.codecarbon:
            from ecoq.report_codecarbon import render_codecarbon

            return render_codecarbon(reader, since=query.since, until=query.until, uid=uid)
        result = (
            build_report(
                reader,
                since=query.since,
                until=query.until,
                by=query.by,
                days=query.fmt == "html",
                uid=uid,
            )
            if reader is not None
            else Report(query.since, query.until, query.by, [], [], [], [], uid=uid)
        )
        return _render(result, query.fmt, reader, now), result.runs


def shared_report(
    reader: "Reader | None",
    *,
    uid: int | None,
    since: str,
    until: str | None,
    by: str,
    format: str,  # the protocol's field name
    codecarbon: bool,
) -> tuple[str, int]:
    """The shared daemon's `report`: the flags a user typed, checked and rendered here as
    `ecoq report` would, over that user's jobs (`uid`; None: everyone's)."""
    now = utcnow()
    query = report_query(since, until, by, format, codecarbon, now)
    return render_report(query, reader, now=now, uid=uid)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector. A by-job report builds hundreds of thousands of row
    dicts that all live until it is printed: collections keep walking them and free nothing
    (about a second of a 100,000-row report)."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _render(result: "Report", fmt: str, reader: "Reader | None", now: datetime) -> str:
    from ecoq.report_text import render_csv, render_json, render_table

    if fmt == "csv":
        return render_csv(result)
    if fmt == "json":
        return render_json(result)
    if fmt == "html":
        from ecoq.report_html import render_html

        return render_html(result, reader, now=now)
    return render_table(result)


def write_job_plot(job_id: int, path: Path) -> None:
    """Draw job `job_id`'s forecast-and-window plot into the PNG file `path` (on a shared box
    the daemon draws it, for the job's owner or an admin; the file is written here, as the
    caller).

    Raises:
        JobNotFound: no such job (or, on a shared box, not the caller's).
        PlotUnavailable: matplotlib is missing. ValidationError: the file cannot be written.
    """
    from ecoq.errors import JobNotFound, ValidationError

    client = shared_client()
    if client is not None:
        png = client.job_plot(job_id)
    else:
        reader = open_reader()
        if reader is None:
            raise JobNotFound(f"no job with id {job_id}; `ecoq queue --all` lists the jobs")
        png = job_png(reader, job_id)
    try:
        path.write_bytes(png)
    except OSError as exc:
        raise ValidationError(f"cannot write --plot {path}: {exc.strerror}") from exc


def job_png(reader: "Reader", job_id: int) -> bytes:
    """Job `job_id`'s forecast-and-window plot as PNG. Raises PlotUnavailable."""
    from ecoq.plots import window_plot, window_png

    return window_png(window_plot(reader, job_id))


def accounting_lines(job_id: int) -> list[tuple[str, str]]:
    """(label, value) rows for `ecoq show`: each accounted run's figures and provenance."""
    reader = open_reader()
    if reader is None:
        return []
    rows = reader.query(
        "SELECT id, accounting, energy_j, energy_method, estimate_energy_j, pue, realized_g, "
        "counterfactual_g, avoided_g, embodied_g, accounting_signal, intensity_source, "
        "intensity_kind, intensity_label FROM runs "
        "WHERE job_id = :id AND accounting IS NOT NULL ORDER BY id",
        {"id": job_id},
    )
    lines = []
    for r in rows:
        energy = "unmetered"
        if r["energy_j"] is not None:
            energy = f"{r['energy_j'] / 3.6e6:.4g} kWh ({r['energy_method']} energy)"
        lines.append(("energy", energy))
        if r["realized_g"] is not None:
            pct = ""
            if r["counterfactual_g"]:
                pct = f", {100 * r['avoided_g'] / r['counterfactual_g']:.0f} %"
            lines.append(
                (
                    "emissions",
                    f"{r['realized_g']:.4g} g realized, {r['avoided_g']:.4g} g avoided{pct} "
                    f"(vs {r['counterfactual_g']:.4g} g running at submission), PUE {r['pue']}",
                )
            )
            lines.append(
                (
                    "accounting",
                    f"{r['accounting']}: {r['accounting_signal']} {r['intensity_kind']} "
                    f"intensity from {r['intensity_source']} ({r['intensity_label']})",
                )
            )
        else:
            lines.append(("accounting", f"{r['accounting']}: no emission figures"))
        if r["embodied_g"] is not None:
            lines.append(("embodied", f"{r['embodied_g']:.4g} g (SCI's M)"))
    return lines
