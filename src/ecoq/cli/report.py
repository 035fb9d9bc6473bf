"""`ecoq report`, and the plot and accounting lines of `ecoq show`.

Reads through the fast reader (plain SQL); matplotlib is imported only for HTML and plots.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ecoq.cli.app import JsonOpt, app, errors, examples, open_reader, utcnow

if TYPE_CHECKING:
    from ecoq.reports import Report
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
    energy per epoch, carbon per inference and SCI, with their provenance."""
    from ecoq.errors import ValidationError

    with errors():
        from ecoq.reports import FORMATS, GROUPS, Report, build_report

        now = utcnow()
        start = _since(since, now, "--since")
        end = _since(until, now, "--until") if until else now
        if json_out:
            fmt = "json"
        if by not in GROUPS:
            raise ValidationError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
        if fmt not in FORMATS:
            raise ValidationError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
        if codecarbon and fmt not in ("table", "csv"):
            raise ValidationError(f"--codecarbon writes CSV; drop --format {fmt}")
        if end <= start:
            raise ValidationError(f"--until ({until}) must be after --since ({since})")
        reader = open_reader()
        with _collector_paused():
            if codecarbon:
                from ecoq.report_codecarbon import render_codecarbon

                text, runs = render_codecarbon(reader, since=start, until=end)
            else:
                result = (
                    build_report(reader, since=start, until=end, by=by, days=fmt == "html")
                    if reader is not None
                    else Report(start, end, by, [], [], [], [])
                )
                text, runs = _render(result, fmt, reader, now), result.runs
        if out is None:
            typer.echo(text, nl=not text.endswith("\n"))
            return
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValidationError(f"cannot write --out {out}: {exc.strerror}") from exc
    typer.echo(f"wrote {out} ({runs} runs)")


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
    """Draw job `job_id`'s forecast-and-window plot into the PNG file `path`.

    Raises:
        JobNotFound: no such job. PlotUnavailable: matplotlib is missing.
        ValidationError: the file cannot be written.
    """
    from ecoq.errors import JobNotFound, ValidationError
    from ecoq.plots import window_plot, window_png

    reader = open_reader()
    if reader is None:
        raise JobNotFound(f"no job with id {job_id}; `ecoq queue --all` lists the jobs")
    png = window_png(window_plot(reader, job_id))
    try:
        path.write_bytes(png)
    except OSError as exc:
        raise ValidationError(f"cannot write --plot {path}: {exc.strerror}") from exc


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
