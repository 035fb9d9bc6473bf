"""The text formats of `ecoq report`: a fixed-width table, CSV and JSON, from a `Report`.

Each writer works a column or a row at a time with C-level helpers (`operator.itemgetter`,
`str.format`, the csv writer, json's C encoder), so each renders a by-job report of 100,000
rows in under a second.
"""

import csv
import io
import json
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from ecoq.reports import Report
from ecoq.views import iso

__all__ = ["CSV_COLUMNS", "TABLE_COLUMNS", "render_csv", "render_json", "render_table"]

TABLE_COLUMNS = (
    ("group", "group"),
    ("signal", "signal"),
    ("jobs", "jobs"),
    ("energy_kwh", "kWh"),
    ("realized_kg", "kgCO2e"),
    ("avoided_kg", "avoided kg"),
    ("avoided_pct", "avoided %"),
    ("mean_delay_h", "delay h/job"),
    ("deadline_misses", "late"),
    ("energy_per_epoch_kwh", "kWh/epoch"),
    ("g_per_inference", "g/inference"),
)


def _status_text(row: Mapping[str, Any]) -> str:
    parts = [f"{n} {s}" for s, n in row["status"].items()]
    kinds = "/".join(row["intensity"]) or "-"
    return f"{', '.join(parts)}; intensity {kinds}"


def render_table(report: Report) -> str:
    """The plain-text report: per-group rows, totals per signal, per-project figures, notes."""
    lines = [
        f"ecoq report {iso(report.since)} to {iso(report.until)}, by {report.by}",
        "",
    ]
    lines += _table(report.rows, report.by)
    lines += ["", "totals (each signal apart):"]
    lines += _table(report.totals, "total")
    for total in report.totals:
        lines.append(f"  {total['signal'] or 'no figures'}: {_status_text(total)}")
        sci = ", ".join(f"{g:.3g} g/{u}" for u, g in total["sci_g_per_unit"].items())
        if sci:
            lines.append(f"  SCI (O+M)/R: {sci}")
    if report.by != "project":
        lines += ["", "carbon per project:"]
        lines += _table(report.projects, "project")
    if report.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in report.notes]
    return "\n".join(lines)


def _cells(values: list[Any]) -> list[str]:
    # one expression, no call per cell: a by-job table formats a million cells
    return [
        "-"
        if v is None
        else ((f"{v:.3g}" if -1000 < v < 1000 else f"{v:.0f}") if type(v) is float else str(v))
        for v in values
    ]


def _table(rows: list[dict[str, Any]], first: str) -> list[str]:
    """A fixed-width table, built column by column (100,000 rows take a fraction of a second)."""
    if not rows:
        return ["  (no finished runs in this period)"]
    header = [first if key == "group" else title for key, title in TABLE_COLUMNS]
    columns = [list(map(str, map(itemgetter("group"), rows)))]
    columns += [_cells(list(map(itemgetter(key), rows))) for key, _ in TABLE_COLUMNS[1:]]
    widths = [max(len(h), *map(len, c)) for h, c in zip(header, columns, strict=True)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    template = "  " + "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    out.extend(map(template.format, *columns))
    return out


CSV_COLUMNS = (
    "group",
    "signal",
    "jobs",
    "runs",
    "energy_kwh",
    "estimate_energy_kwh",
    "facility_energy_kwh",
    "realized_kg",
    "counterfactual_kg",
    "avoided_kg",
    "avoided_pct",
    "embodied_kg",
    "delay_added_h",
    "deadline_misses",
    "provisional_runs",
    "energy_per_epoch_kwh",
    "g_per_inference",
)


def render_csv(report: Report) -> str:
    """One line per group and signal, then one ``TOTAL`` line per signal."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # writes None as an empty field
    writer.writerow((report.by, *CSV_COLUMNS[1:]))
    i = CSV_COLUMNS.index("provisional_runs")
    before, after = itemgetter(*CSV_COLUMNS[1:i]), itemgetter(*CSV_COLUMNS[i + 1 :])
    for rows, group in ((report.rows, None), (report.totals, "TOTAL")):
        writer.writerows(
            (group or r["group"], *before(r), r["status"].get("provisional", 0), *after(r))
            for r in rows
        )
    return out.getvalue()


#: Above this many row objects, JSON puts each row on one line (see `render_json`).
JSON_ROWS_PER_LINE = 1000


def render_json(report: Report) -> str:
    """The ``--format json`` text of `Report.to_json`, indented by two spaces.

    Past `JSON_ROWS_PER_LINE` row objects (in ``totals``, ``rows`` and ``projects``), each row
    object is written on one line: the standard library indents in pure Python, about three
    times slower than its C encoder, so 100,000 indented rows would take seconds on their own.
    Both layouts hold the same values.
    """
    data = report.to_json()
    if len(report.rows) + len(report.totals) + len(report.projects) <= JSON_ROWS_PER_LINE:
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    row = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
    chunks = ["{"]  # joined once: a by-job report's JSON is some 60 MB
    for key, value in data.items():
        chunks.append(f"\n  {json.dumps(key)}: ")
        if key in ("totals", "rows", "projects") and value:
            chunks += ("[\n    ", ",\n    ".join(map(row, value)), "\n  ]")
        else:
            chunks.append(json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  "))
        chunks.append(",")
    chunks[-1] = "\n}\n"
    return "".join(chunks)
