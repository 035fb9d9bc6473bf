"""The HTML report: one self-contained file (inline CSS, plots embedded as base64 PNG).

It holds the totals per signal with their provenance, daily realized vs avoided bars, a
forecast-and-window plot for the jobs that used the most energy, the per-group and per-project
tables and the notes. Marginal and average figures stay in separate tables and plots.
"""

import base64
import html
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from ecoq.plots import daily_png, window_plot, window_png
from ecoq.report_text import TABLE_COLUMNS
from ecoq.reports import Report, top_jobs
from ecoq.views import Reader, iso

__all__ = ["render_html"]

#: How many jobs get a forecast-and-window plot (those that used the most energy).
JOB_PLOTS = 6

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666}.cards{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.7em 1em;min-width:14em}
.card b{font-size:1.3em}.signal{font-weight:600;text-transform:uppercase;font-size:.8em;
color:#555}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:.5em 0}
th,td{border-bottom:1px solid #eee;padding:.25em .5em;text-align:right}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
th{background:#f6f6f6}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#7a4b00}figure{margin:1em 0}figcaption{font-size:12px;color:#555}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(v: Any) -> str:
    """One cell: floats to 3 significant digits (whole numbers from 1,000), None as "-"."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(v) if isinstance(v, str) else str(v)


def _column(values: list[Any]) -> tuple[str, list[Any]]:
    """A column as (format spec, values) for the row template: a by-job report has a million
    cells, so the common columns go to `str.format` as they are, and only the others are
    formatted here (`_cell`) first."""
    types = set(map(type, values))
    if types == {float} and all(map((1000.0).__gt__, map(abs, values))):
        return ":.3g", values  # what `_cell` writes for each
    if types == {float, type(None)}:  # e.g. kWh per epoch: None for rows without epochs
        return "", [
            "-" if v is None else (f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}") for v in values
        ]
    if types == {int}:
        return "", values
    if types <= {str, type(None)}:
        # names rarely hold a character to escape: look at the whole column at once
        text = "".join(filter(None, values))
        if html.escape(text) == text:
            return "", values if types == {str} else ["-" if v is None else v for v in values]
    return "", list(map(_cell, values))


def _status_cells(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each row's runs by status ("3 final, 1 provisional"): rows share a few combinations."""
    keys = [tuple(s.items()) for s in map(itemgetter("status"), rows)]
    text = {k: html.escape(", ".join(f"{n} {s}" for s, n in k)) for k in dict.fromkeys(keys)}
    return list(map(text.__getitem__, keys))


def _table(rows: Sequence[dict[str, Any]], first: str) -> str:
    if not rows:
        return "<p>No finished runs in this period.</p>"
    head = "".join(
        f"<th>{html.escape(first if k == 'group' else t)}</th>" for k, t in TABLE_COLUMNS
    )
    head += "<th>runs by status</th>"
    columns = [_column(list(map(itemgetter(key), rows))) for key, _ in TABLE_COLUMNS]
    template = "".join(f"<td>{{{spec}}}</td>" for spec, _ in columns)
    template = f"<tr>{template}<td>{{}}</td></tr>"
    body = "".join(map(template.format, *(cells for _, cells in columns), _status_cells(rows)))
    return f"<table><tr>{head}</tr>{body}</table>"


def _cards(report: Report) -> str:
    cards = []
    for t in report.totals:
        if t["signal"] is None:
            text = f"{t['runs']} run(s) without emission figures, {t['energy_kwh']:.3g} kWh"
            cards.append(
                f'<div class="card"><span class="signal">no figures</span><br>{text}</div>'
            )
            continue
        pct = f" ({t['avoided_pct']:.1f} %)" if t["avoided_pct"] is not None else ""
        kinds = ", ".join(f"{n} {k}" for k, n in t["intensity"].items())
        cards.append(
            f'<div class="card"><span class="signal">{html.escape(t["signal"])} signal</span><br>'
            f"<b>{t['realized_kg']:.3g} kgCO2e</b> realized<br>"
            f"{t['avoided_kg']:.3g} kgCO2e avoided{pct}<br>"
            f"{t['jobs']} jobs, {t['energy_kwh']:.3g} kWh, "
            f"{t['deadline_misses']} deadline miss(es)<br>"
            f"<small>intensity: {html.escape(kinds or '-')}</small></div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def render_html(
    report: Report,
    reader: Reader | None,
    *,
    now: datetime,
    job_plots: int = JOB_PLOTS,
    uid: int | None = None,
) -> str:
    """The whole report as one HTML document (build `report` with ``days=True`` for the daily
    bars).

    Args:
        reader: reads the forecasts behind the job plots; None: no job plots.
        now: UTC time the report was made.
        job_plots: how many jobs (most energy first) get a forecast-and-window plot.
        uid: plot only jobs whose ``jobs.uid`` is `uid`; None: `report.uid` (the uid the
            report was built for, None for everyone's jobs).

    Raises:
        PlotUnavailable: matplotlib is missing (``pip install 'ecoq[plot]'``).
        ValueError: `uid` is not the uid `report` was built for.
    """
    if uid is None:
        uid = report.uid
    elif uid != report.uid:
        raise ValueError(
            f"uid={uid} but the report was built for uid={report.uid}: pass the same uid to "
            "build_report and render_html"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>ecoq report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ecoq emissions report</h1>",
        f'<p class="meta">Runs finished from {iso(report.since)} to {iso(report.until)}, '
        f"by {html.escape(report.by)}. Generated {iso(now)}. Realized = energy × PUE × the "
        "zone's intensity per metered interval; avoided = the same run started at submission "
        "(the &ldquo;run now&rdquo; window) minus realized, with the same provider and signal."
        "</p>",
        "<h2>Totals</h2>",
        _cards(report),
    ]
    if report.notes:
        items = "".join(f'<li class="note">{html.escape(n)}</li>' for n in report.notes)
        parts.append(f"<ul>{items}</ul>")
    if report.daily:
        parts.append("<h2>Daily realized vs avoided</h2>")
        for signal, days in sorted(report.daily.items()):
            parts.append(_img(daily_png(days, signal), f"daily emissions, {signal} signal"))
    jobs: list[int] = []
    if reader is not None and report.totals:
        jobs = top_jobs(reader, since=report.since, until=report.until, n=job_plots, uid=uid)
    if jobs and reader is not None:
        parts.append("<h2>Forecast and window of the largest jobs</h2>")
        parts.append(
            "<p>Blue: the forecast the plan used; grey dash-dot: realized values; green: the "
            "window the job ran in; red dashed outline: the window it would have run in without "
            "ecoq.</p>"
        )
        for job_id in jobs:
            plot = window_plot(reader, job_id)
            caption = html.escape(plot.title)
            parts.append(
                f"<figure>{_img(window_png(plot), plot.title)}"
                f"<figcaption>{caption}</figcaption></figure>"
            )
    parts += [
        f"<h2>By {html.escape(report.by)}</h2>",
        _table(report.rows, report.by),
        "<h2>Carbon per project</h2>",
        _table(report.projects, "project"),
        "<h2>Totals by signal</h2>",
        _table(report.totals, "total"),
        _sci(report),
        "</body></html>",
    ]
    return "\n".join(parts)


def _sci(report: Report) -> str:
    rows = []
    for t in report.totals:
        for unit, g in t["sci_g_per_unit"].items():
            m = "set" if t["embodied_kg"] is not None else "unset (0)"
            rows.append(
                f"<tr><td>{html.escape(t['signal'] or '-')}</td><td>{html.escape(unit)}</td>"
                f"<td>{g:.4g}</td><td>{m}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h2>SCI: (E × I + M) per unit</h2><table><tr><th>signal</th><th>unit</th>"
        f"<th>gCO2e per unit</th><th>M</th></tr>{''.join(rows)}</table>"
    )
