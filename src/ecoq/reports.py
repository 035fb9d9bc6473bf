"""Rows for `ecoq report`: totals and per-group figures, as a table, CSV, JSON or CodeCarbon CSV.

Aggregates finished runs in SQL through a `ecoq.views.Reader` (no ORM; two grouped queries,
whatever the number of runs: a report of 100,000 runs renders in about a second), then rolls the
groups up in Python. Rules:

- Marginal and average figures are never added together: every row and every total is per
  signal, and runs without figures (unmetered, no intensity) form their own energy-only rows.
- Every row says how its figures stand: runs per status (provisional, final, final-forecast…),
  forecast or realized intensity, and how much of the energy is an estimate.
- The standard figures: energy per training epoch (runs that marked ``epoch`` with
  `ecoq.track`), carbon per inference (runs that marked ``inference``), total carbon per
  project, and SCI per job and per marked unit ((O + M) / R; M is reported unset when no
  embodied figures are configured).

The HTML report is `ecoq.report_html`, its plots `ecoq.plots` (matplotlib, imported lazily), and
CodeCarbon's ``emissions.csv`` `ecoq.report_codecarbon`.
"""

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import itemgetter
from typing import Any, Literal

from ecoq.views import Reader, SqliteReader, iso

GroupBy = Literal["job", "project", "user", "zone", "day"]
GROUPS: tuple[GroupBy, ...] = ("job", "project", "user", "zone", "day")
FORMATS = ("table", "csv", "json", "html")
J_PER_KWH = 3.6e6
#: Units of work with a standard figure: energy per epoch, carbon per inference.
EPOCH, INFERENCE = "epoch", "inference"

_STATUSES = ("provisional", "final", "final-forecast", "unmetered", "no-intensity")
_KINDS = ("forecast", "realized")
#: A run's signal in reports: only runs with figures have one.
_SIGNAL = "CASE WHEN r.realized_g IS NOT NULL THEN r.accounting_signal END"
_WHERE = (
    "r.started_at IS NOT NULL AND r.finished_at IS NOT NULL "
    "AND r.finished_at >= :since AND r.finished_at < :until"
)
_SUMS = (
    "{jobs} AS jobs, COUNT(*) AS runs, SUM(r.energy_j) AS energy_j, "
    "SUM(r.estimate_energy_j) AS estimate_j, "
    "SUM(COALESCE(r.facility_energy_j, r.energy_j)) AS facility_j, "
    "SUM(r.realized_g) AS realized_g, SUM(r.counterfactual_g) AS counterfactual_g, "
    "SUM(r.embodied_g) AS embodied_g, COUNT(r.embodied_g) AS embodied_n, "
    "SUM(r.delay_s) AS delay_s, SUM(CASE WHEN r.deadline_missed THEN 1 ELSE 0 END) AS misses, "
    "SUM(CASE WHEN r.accounting IS NULL THEN 1 ELSE 0 END) AS st_unaccounted, "
    + ", ".join(
        f"SUM(CASE WHEN r.accounting = '{s}' THEN 1 ELSE 0 END) AS st_{i}"
        for i, s in enumerate(_STATUSES)
    )
    + ", "
    + ", ".join(
        f"SUM(CASE WHEN r.realized_g IS NOT NULL AND r.intensity_kind = '{k}' THEN 1 ELSE 0 END)"
        f" AS kind_{i}"
        for i, k in enumerate(_KINDS)
    )
)
_NUMS = (
    "jobs",
    "runs",
    "energy_j",
    "estimate_j",
    "facility_j",
    "realized_g",
    "counterfactual_g",
    "embodied_g",
    "embodied_n",
    "delay_s",
    "misses",
    "st_unaccounted",
    *(f"st_{i}" for i in range(len(_STATUSES))),
    *(f"kind_{i}" for i in range(len(_KINDS))),
)
#: The status counts in `_NUMS` order ("unaccounted": not accounted yet).
_STATUS_NAMES = ("unaccounted", *_STATUSES)
_UNIT_SUMS = (
    "u.unit AS unit, SUM(u.count) AS n, SUM(r.energy_j) AS energy_j, "
    "SUM(r.realized_g) AS realized_g, SUM(COALESCE(r.embodied_g, 0)) AS embodied_g"
)


def _dialect(reader: Reader) -> str:
    if isinstance(reader, SqliteReader):
        return "sqlite"
    engine = getattr(reader, "_engine", None)  # ecoq.db.EngineReader
    return str(getattr(getattr(engine, "dialect", None), "name", ""))


def time_param(reader: Reader, when: datetime) -> Any:
    """`when` as a query parameter: SQLite stores UTC times as ``YYYY-MM-DD HH:MM:SS.ffffff``
    text (compared as strings), other databases take the datetime."""
    if _dialect(reader) == "sqlite":
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return when.astimezone(UTC)


def _group_sql(by: str, dialect: str, days: bool) -> tuple[str, str]:
    """The SELECT and GROUP BY head for grouping by `by` (and the project, and the day when
    `days`), and the signal."""
    day = (
        "substr(r.finished_at, 1, 10)"
        if dialect == "sqlite"
        else "to_char(r.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    )
    key, label = {
        "job": ("r.job_id", "j.name"),
        "project": ("j.project", "NULL"),
        "user": ('j."user"', "NULL"),
        "zone": ("COALESCE(r.intensity_zone, j.zone)", "NULL"),
        "day": (day, "NULL"),
        "total": ("'total'", "NULL"),
    }[by]
    head = (
        f"{key} AS g_key, {label} AS g_label, j.project AS g_project, "
        f"{day if days else 'NULL'} AS g_day, {_SIGNAL} AS g_signal"
    )
    return head, "1, 2, 3, 4, 5"


class _Acc:
    """Sums for one row of the report (a group and a signal), and its marked units."""

    __slots__ = ("v", "units")

    def __init__(self, sums: Mapping[str, Any]) -> None:
        self.v = sums
        self.units: dict[str, list[float]] = {}  # unit -> [count, energy_j, realized_g, M g]

    def row(self, group: str, signal: str | None) -> dict[str, Any]:
        """The JSON row: energy in kWh, emissions in kg CO2e, delays in hours."""
        v = self.v
        (jobs_f, runs, energy, estimate, facility, realized, cf, embodied, embodied_n, delay,
         misses, *counts) = [v[name] or 0.0 for name in _NUMS]  # fmt: skip
        statuses, kinds = counts[: len(_STATUS_NAMES)], counts[len(_STATUS_NAMES) :]
        figures = signal is not None
        jobs = int(jobs_f) or 1
        avoided = cf - realized
        units = {u: a for u, a in sorted(self.units.items()) if a[0] > 0} if self.units else {}
        sci: dict[str, float] = {}
        if figures:
            sci["job"] = (realized + embodied) / jobs
            for u, a in units.items():
                sci[u] = (a[2] + a[3]) / a[0]
        epoch, inference = units.get(EPOCH), units.get(INFERENCE)
        return {
            "group": group,
            "signal": signal,
            "jobs": int(jobs_f),
            "runs": int(runs),
            "energy_kwh": energy / J_PER_KWH,
            "estimate_energy_kwh": estimate / J_PER_KWH,
            "facility_energy_kwh": facility / J_PER_KWH,
            "realized_kg": realized / 1000 if figures else None,
            "counterfactual_kg": cf / 1000 if figures else None,
            "avoided_kg": avoided / 1000 if figures else None,
            "avoided_pct": 100.0 * avoided / cf if figures and cf > 0 else None,
            "embodied_kg": embodied / 1000 if embodied_n > 0 else None,
            "delay_added_h": delay / 3600,
            "mean_delay_h": delay / 3600 / jobs,
            "deadline_misses": int(misses),
            "status": {s: int(n) for s, n in zip(_STATUS_NAMES, statuses, strict=True) if n},
            "intensity": {k: int(n) for k, n in zip(_KINDS, kinds, strict=True) if n},
            "units": {u: a[0] for u, a in units.items()},
            "energy_per_epoch_kwh": epoch[1] / epoch[0] / J_PER_KWH if epoch else None,
            "g_per_inference": inference[2] / inference[0] if inference and figures else None,
            "sci_g_per_unit": sci,
        }


def _signal_order(signal: str | None) -> str:
    return signal or "~"  # rows without figures last


def _rows(
    accs: dict[tuple[Any, ...], _Acc], name: Any = lambda key: str(key[0] or "-")
) -> list[dict[str, Any]]:
    """Rows of `accs` keyed by (group..., signal), sorted by group then signal (groups without
    a name, such as jobs without a project, show as "-" and sort first)."""
    items = sorted(
        accs.items(),
        key=lambda kv: (
            tuple("" if k is None else k for k in kv[0][:-1]),
            _signal_order(kv[0][-1]),
        ),
    )
    return [acc.row(name(key), key[-1]) for key, acc in items]


@dataclass
class Report:
    """A report over `[since, until)`: per-group rows, totals and per-project rows, each per
    signal; `daily` (realized and avoided kg per day, per signal) when asked for."""

    since: datetime
    until: datetime
    by: GroupBy
    rows: list[dict[str, Any]]
    totals: list[dict[str, Any]]
    projects: list[dict[str, Any]]
    notes: list[str]
    daily: dict[str, list[tuple[date, float, float]]] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        """How many runs the report covers."""
        return sum(int(t["runs"]) for t in self.totals)

    def to_json(self) -> dict[str, Any]:
        """The ``--format json`` object (times ISO-8601 UTC with ``Z``)."""
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "by": self.by,
            "totals": self.totals,
            "rows": self.rows,
            "projects": self.projects,
            "notes": self.notes,
        }


def build_report(
    reader: Reader,
    *,
    since: datetime,
    until: datetime,
    by: GroupBy = "project",
    days: bool = False,
) -> Report:
    """Aggregate the runs that finished in `[since, until)` in SQL (two grouped queries), and
    roll the groups up into per-project rows and per-signal totals. With `days`, also the
    daily sums.

    Job counts are exact by job, project and user; by zone or day a job whose runs fall in
    two groups counts in each (a job normally has one run).

    Raises:
        ValueError: `by` is not one of `GROUPS`.
    """
    if by not in GROUPS:
        raise ValueError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
    params = {"since": time_param(reader, since), "until": time_param(reader, until)}
    base = _fetch(reader, by, _dialect(reader), params, days)
    rows = _accumulate(*base, lambda r: (r["g_key"], r["g_label"], r["g_signal"]))
    totals = _accumulate(*base, lambda r: ("total", r["g_signal"]))
    projects = None
    if by != "project":
        projects = _accumulate(*base, lambda r: (r["g_project"], r["g_signal"]))
    daily: dict[str, list[tuple[date, float, float]]] = {}
    if days:
        per_day = _accumulate(*base, lambda r: (r["g_day"], r["g_signal"]))
        for row in _rows(per_day):
            if row["signal"] is not None:
                day = date.fromisoformat(row["group"])
                daily.setdefault(row["signal"], []).append(
                    (day, row["realized_kg"], row["avoided_kg"])
                )
    name = (lambda k: f"{k[0]} {k[1]}") if by == "job" else (lambda k: str(k[0] or "-"))
    total_rows = _rows(totals)
    group_rows = _rows(rows, name)
    return Report(
        since=since,
        until=until,
        by=by,
        rows=group_rows,
        totals=total_rows,
        projects=_rows(projects) if projects is not None else group_rows,
        notes=_notes(total_rows),
        daily=daily,
    )


def _fetch(
    reader: Reader, by: str, dialect: str, params: Mapping[str, Any], days: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The sums per group (and project, and day when `days`) and signal, and the marked units
    per group, signal and unit."""
    head, group = _group_sql(by, dialect, days)
    # grouped by job, each group is one job: no need to count distinct ids
    sums_sql = _SUMS.format(jobs="1" if by == "job" else "COUNT(DISTINCT r.job_id)")
    sums = reader.query(
        f"SELECT {head}, {sums_sql} FROM runs r JOIN jobs j ON j.id = r.job_id "
        f"WHERE {_WHERE} GROUP BY {group}",
        params,
    )
    units = reader.query(
        f"SELECT {head}, {_UNIT_SUMS} FROM run_units u JOIN runs r ON r.id = u.run_id "
        f"JOIN jobs j ON j.id = r.job_id WHERE {_WHERE} GROUP BY {group}, u.unit",
        params,
    )
    return sums, units


_VALUES = itemgetter(*_NUMS)
_UNIT_VALUES = itemgetter("n", "energy_j", "realized_g", "embodied_g")


def _accumulate(
    sums: list[dict[str, Any]],
    units: list[dict[str, Any]],
    key: Any,
) -> dict[tuple[Any, ...], _Acc]:
    """`sums` and `units` rows summed by `key(row)` (a tuple ending with the signal)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in sums:
        groups.setdefault(key(r), []).append(r)
    accs = {k: _Acc(rows[0] if len(rows) == 1 else _sum(rows)) for k, rows in groups.items()}
    per_unit: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in units:
        per_unit.setdefault((*key(r), r["unit"]), []).append(r)
    for (*k, unit), rows in per_unit.items():
        found = accs.get(tuple(k))
        if found is None:
            continue
        if len(rows) == 1:
            found.units[unit] = [v or 0.0 for v in _UNIT_VALUES(rows[0])]
        else:
            columns = zip(*map(_UNIT_VALUES, rows), strict=True)
            found.units[unit] = [float(sum(filter(None, c))) for c in columns]
    return accs


def _sum(rows: list[dict[str, Any]]) -> dict[str, Any]:
    # transposed with C-level helpers: a by-job report sums 100,000 rows per rollup
    columns = zip(*map(_VALUES, rows), strict=True)
    return {name: sum(filter(None, c)) for name, c in zip(_NUMS, columns, strict=True)}


def top_jobs(reader: Reader, *, since: datetime, until: datetime, n: int) -> list[int]:
    """Ids of the (at most `n`) jobs whose runs in `[since, until)` used the most energy."""
    params = {"since": time_param(reader, since), "until": time_param(reader, until), "n": 4 * n}
    rows = reader.query(
        f"SELECT r.job_id FROM runs r WHERE {_WHERE} "
        "ORDER BY COALESCE(r.energy_j, 0) DESC, r.job_id LIMIT :n",
        params,
    )
    return list(dict.fromkeys(int(r["job_id"]) for r in rows))[:n]


def _notes(totals: list[dict[str, Any]]) -> list[str]:
    notes = []
    signals = sorted({t["signal"] for t in totals if t["signal"]})
    if len(signals) > 1:
        notes.append(
            "marginal and average figures are shown apart and never added: they answer "
            "different questions (marginal: the effect of shifting; average: the inventory)"
        )
    for total in totals:
        provisional = total["status"].get("provisional", 0)
        if provisional:
            notes.append(
                f"{provisional} run(s) of the {total['signal'] or 'unaccounted'} figures are "
                "provisional (forecast intensity; realized values may still change them)"
            )
        if total["estimate_energy_kwh"] > 0:
            notes.append(
                f"{total['estimate_energy_kwh']:.3g} kWh of {total['energy_kwh']:.3g} kWh "
                f"({total['signal'] or 'no figures'}) is an estimate, not metered"
            )
    without = sum(t["runs"] for t in totals if t["signal"] is None)
    if without:
        notes.append(f"{without} run(s) have no emission figures (unmetered or no intensity)")
    unaccounted = sum(t["status"].get("unaccounted", 0) for t in totals)
    if unaccounted:
        notes.append(f"{unaccounted} run(s) are not accounted yet (the daemon accounts them)")
    if totals and not any(t["embodied_kg"] is not None for t in totals):
        notes.append(
            "SCI's embodied emissions M are unset (counted as 0): set "
            "accounting.embodied_g_per_gpu_hour / embodied_g_per_host_hour"
        )
    return notes


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if type(value) is float:
        return f"{value:.3g}" if -1000 < value < 1000 else f"{value:.0f}"
    return str(value)


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


def _table(rows: list[dict[str, Any]], first: str) -> list[str]:
    header = [first if key == "group" else title for key, title in TABLE_COLUMNS]
    keys = [key for key, _ in TABLE_COLUMNS[1:]]
    body = [[str(r["group"]), *[_fmt(r[key]) for key in keys]] for r in rows]
    if not body:
        return ["  (no finished runs in this period)"]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    template = "  " + "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    out.extend(template.format(*b) for b in body)
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
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((report.by, *CSV_COLUMNS[1:]))
    for row in [*report.rows, *({**t, "group": "TOTAL"} for t in report.totals)]:
        values = {**row, "provisional_runs": row["status"].get("provisional", 0)}
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return out.getvalue()
