"""Rows for `ecoq report`: totals, per-group and per-project figures of finished runs.

Reads finished runs through a `ecoq.views.Reader` (no ORM; two queries, grouped in SQL, or per
run by job), then rolls the groups up in Python over tuples (a by-job report of 100,000 runs
has 100,000 groups to roll up into totals and projects). Rules:

- Marginal and average figures are never added together: every row and every total is per
  signal, and runs without figures (unmetered, no intensity) form their own energy-only rows.
- Every row says how its figures stand: runs per status (provisional, final, final-forecast…),
  forecast or realized intensity, and how much of the energy is an estimate.
- The standard figures: energy per training epoch (runs that marked ``epoch`` with
  `ecoq.track`), carbon per inference (runs that marked ``inference``), total carbon per
  project, and SCI per job and per marked unit ((O + M) / R; M is reported unset when no
  embodied figures are configured).

The table, CSV and JSON text is `ecoq.report_text`, the HTML report `ecoq.report_html` (its plots
`ecoq.plots`, matplotlib imported lazily), and CodeCarbon's ``emissions.csv``
`ecoq.report_codecarbon`.
"""

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
#: Each run's figures as (name, SQL); a group's are their sums, after its job count.
_FIGURES = (
    ("runs", "1"),
    ("energy_j", "r.energy_j"),
    ("estimate_j", "r.estimate_energy_j"),
    ("facility_j", "COALESCE(r.facility_energy_j, r.energy_j)"),
    ("realized_g", "r.realized_g"),
    ("counterfactual_g", "r.counterfactual_g"),
    ("embodied_g", "r.embodied_g"),
    ("embodied_n", "CASE WHEN r.embodied_g IS NULL THEN 0 ELSE 1 END"),
    ("delay_s", "r.delay_s"),
    ("misses", "CASE WHEN r.deadline_missed THEN 1 ELSE 0 END"),
    ("st_unaccounted", "CASE WHEN r.accounting IS NULL THEN 1 ELSE 0 END"),
    *(
        (f"st_{i}", f"CASE WHEN r.accounting = '{s}' THEN 1 ELSE 0 END")
        for i, s in enumerate(_STATUSES)
    ),
    *(
        (
            f"kind_{i}",
            f"CASE WHEN r.realized_g IS NOT NULL AND r.intensity_kind = '{k}' THEN 1 ELSE 0 END",
        )
        for i, k in enumerate(_KINDS)
    ),
)
_NUMS = ("jobs", *(name for name, _ in _FIGURES))
#: A group's sums (``{jobs}`` counts its jobs), and one run's figures.
_SUMS = "{jobs} AS jobs, " + ", ".join(f"SUM({sql}) AS {name}" for name, sql in _FIGURES)
_RUN_FIGURES = "1 AS jobs, " + ", ".join(f"{sql} AS {name}" for name, sql in _FIGURES)
#: The status counts in `_NUMS` order ("unaccounted": not accounted yet).
_STATUS_NAMES = ("unaccounted", *_STATUSES)
#: (index in `_NUMS`, name) of the status and intensity-kind counts.
_STATUS_AT = tuple((_NUMS.index("st_unaccounted") + i, s) for i, s in enumerate(_STATUS_NAMES))
_KIND_AT = tuple((_NUMS.index("kind_0") + i, k) for i, k in enumerate(_KINDS))
#: A marked unit's figures per run, likewise.
_UNIT_FIGURES = (
    ("n", "u.count"),
    ("energy_j", "r.energy_j"),
    ("realized_g", "r.realized_g"),
    ("embodied_g", "COALESCE(r.embodied_g, 0)"),
)
_UNIT_SUMS = "u.unit AS unit, " + ", ".join(f"SUM({sql}) AS {n}" for n, sql in _UNIT_FIGURES)
_UNIT_RUN = "u.unit AS unit, " + ", ".join(f"{sql} AS {n}" for n, sql in _UNIT_FIGURES)


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


#: A group's sums in `_NUMS` order (None or 0 where there was nothing to add), and its marked
#: units: unit -> [count, energy_j, realized_g, embodied_g].
_Group = tuple[tuple[Any, ...], dict[str, list[float]]]


def _row(
    group: str, signal: str | None, sums: tuple[Any, ...], marked: dict[str, list[float]]
) -> dict[str, Any]:
    """The JSON row of one group and signal: energy in kWh, emissions in kg CO2e, delays in
    hours."""
    (jobs_f, runs, energy, estimate, facility, realized, cf, embodied, embodied_n, delay,
     misses) = [v or 0.0 for v in sums[:11]]  # fmt: skip
    figures = signal is not None
    jobs = int(jobs_f) or 1
    avoided = cf - realized
    units = {u: a for u, a in sorted(marked.items()) if a[0] > 0} if marked else {}
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
        "status": {s: int(sums[i]) for i, s in _STATUS_AT if sums[i]},
        "intensity": {k: int(sums[i]) for i, k in _KIND_AT if sums[i]},
        "units": {u: a[0] for u, a in units.items()},
        "energy_per_epoch_kwh": epoch[1] / epoch[0] / J_PER_KWH if epoch else None,
        "g_per_inference": inference[2] / inference[0] if inference and figures else None,
        "sci_g_per_unit": sci,
    }


def _order(item: tuple[tuple[Any, ...], _Group]) -> tuple[list[Any], str]:
    # groups without a name (jobs without a project) sort first, rows without figures last
    key = item[0]
    return ["" if k is None else k for k in key[:-1]], key[-1] or "~"


def _rows(
    groups: dict[tuple[Any, ...], _Group], name: Any = lambda key: str(key[0] or "-")
) -> list[dict[str, Any]]:
    """Rows of `groups` keyed by (group..., signal), sorted by group then signal (groups without
    a name, such as jobs without a project, show as "-")."""
    return [_row(name(key), key[-1], *group) for key, group in sorted(groups.items(), key=_order)]


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
    """Aggregate the runs that finished in `[since, until)` (two queries), and roll the groups
    up into per-project rows and per-signal totals. With `days`, also the daily sums.

    Job counts are exact by job, project and user; by zone or day a job whose runs fall in
    two groups counts in each (a job normally has one run).

    Raises:
        ValueError: `by` is not one of `GROUPS`.
    """
    if by not in GROUPS:
        raise ValueError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
    params = {"since": time_param(reader, since), "until": time_param(reader, until)}
    base = _fetch(reader, by, _dialect(reader), params, days)
    totals = _accumulate(base, ("g_signal",))
    projects = _accumulate(base, ("g_project", "g_signal")) if by != "project" else None
    per_day = _accumulate(base, ("g_day", "g_signal")) if days else {}
    group_rows = _job_rows(base) if by == "job" and not days else None
    if group_rows is None:
        name = (lambda k: f"{k[0]} {k[1]}") if by == "job" else (lambda k: str(k[0] or "-"))
        group_rows = _rows(_accumulate(base, ("g_key", "g_label", "g_signal")), name)
    daily: dict[str, list[tuple[date, float, float]]] = {}
    for row in _rows(per_day):
        if row["signal"] is not None:
            day = date.fromisoformat(row["group"])
            daily.setdefault(row["signal"], []).append((day, row["realized_kg"], row["avoided_kg"]))
    total_rows = _rows(totals, lambda k: "total")
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


#: The first columns of both queries of `_fetch`, in order; the sums (`_NUMS`) follow them,
#: or the unit and its sums (`_UNIT_SUMS`).
_HEAD = ("g_key", "g_label", "g_project", "g_day", "g_signal")
_N = len(_HEAD)


@dataclass(frozen=True)
class _Fetched:
    """The rows of `_fetch`'s two queries (as tuples), with their sums sliced off once for
    every rollup."""

    sums: list[tuple[Any, ...]]
    values: list[tuple[Any, ...]]  # each row of `sums` without its head: `_NUMS`
    units: list[tuple[Any, ...]]
    unit_values: list[tuple[Any, ...]]  # each row of `units` after the unit: n, energy_j, ...


def _tuples(reader: Reader, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    if isinstance(reader, SqliteReader):
        return reader.tuples(sql, params)  # a by-job report reads 100,000 rows: no dicts
    return [tuple(r.values()) for r in reader.query(sql, params)]


def _fetch(
    reader: Reader, by: str, dialect: str, params: Mapping[str, Any], days: bool
) -> _Fetched:
    """The sums per group (and project, and day when `days`) and signal, and the marked units
    per group, signal and unit."""
    head, group = _group_sql(by, dialect, days)
    runs = f"runs r JOIN jobs j ON j.id = r.job_id WHERE {_WHERE}"
    units = "run_units u JOIN runs r ON r.id = u.run_id JOIN jobs j ON j.id = r.job_id"
    units += f" WHERE {_WHERE}"
    if by == "job":
        # A group per job: over 100,000 jobs, SQLite's grouping and its 30 aggregates per group
        # cost more than reading each run and adding up here the few jobs with several runs
        # (in the order SQL would).
        sums = _merged(
            _tuples(
                reader, f"SELECT {head}, {_RUN_FIGURES} FROM {runs} ORDER BY r.job_id, r.id", params
            ),
            _N,
            one_job=True,
        )
        marked = _merged(
            _tuples(
                reader,
                f"SELECT {head}, {_UNIT_RUN} FROM {units} ORDER BY r.job_id, r.id, u.id",
                params,
            ),
            _N + 1,
        )
    else:
        sums_sql = _SUMS.format(jobs="COUNT(DISTINCT r.job_id)")
        sums = _tuples(reader, f"SELECT {head}, {sums_sql} FROM {runs} GROUP BY {group}", params)
        marked = _tuples(
            reader, f"SELECT {head}, {_UNIT_SUMS} FROM {units} GROUP BY {group}, u.unit", params
        )
    return _Fetched(sums, [r[_N:] for r in sums], marked, [r[_N + 1 :] for r in marked])


def _job_rows(base: _Fetched) -> list[dict[str, Any]] | None:
    """The by-job rows straight from the fetched runs when each job has one row (one signal):
    `_fetch` reads them in job order, so there is nothing to roll up or sort. None otherwise."""
    if len(dict.fromkeys(map(itemgetter(0), base.sums))) < len(base.sums):
        return None
    marked: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    for r, values in zip(base.units, base.unit_values, strict=True):
        marked.setdefault(r[:_N], {})[r[_N]] = [v or 0.0 for v in values]
    return [
        _row(f"{r[0]} {r[1]}", r[4], values, marked.get(r[:_N]) or {})
        for r, values in zip(base.sums, base.values, strict=True)
    ]


def _partition(keys: list[Any], items: list[Any]) -> dict[Any, list[Any]]:
    """`items` grouped by their `keys`, in order."""
    parts: dict[Any, list[Any]] = {}
    for key, item in zip(keys, items, strict=True):
        found = parts.get(key)
        if found is None:
            parts[key] = [item]
        else:
            found.append(item)
    return parts


def _merged(
    rows: list[tuple[Any, ...]], width: int, one_job: bool = False
) -> list[tuple[Any, ...]]:
    """Per-run `rows` summed per value of their first `width` columns, as SQL's ``GROUP BY``
    would (``one_job``: the first sum is the job count, 1)."""
    head = itemgetter(slice(0, width))
    if len(dict.fromkeys(map(head, rows))) == len(rows):
        return rows  # the usual case: one run per job (and signal, and day)
    parts = _partition(list(map(head, rows)), rows)
    merged = []
    for key, group in parts.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        sums = _sum([r[width:] for r in group])
        merged.append((*key, *((1, *sums[1:]) if one_job else sums)))
    return merged


def _keys(rows: list[tuple[Any, ...]], names: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Each row's values of the head columns `names`, as a tuple."""
    if len(names) == 1:
        i = _HEAD.index(names[0])
        return [(r[i],) for r in rows]
    return list(map(itemgetter(*map(_HEAD.index, names)), rows))


def _accumulate(base: _Fetched, names: tuple[str, ...]) -> dict[tuple[Any, ...], _Group]:
    """The fetched sums and marked units summed per value of the head columns `names` (the
    last one the signal). A by-job report rolls 100,000 groups up three times: rows stay
    tuples, and sums are taken column by column with C-level helpers."""
    groups: dict[tuple[Any, ...], _Group] = {
        key: (rows[0] if len(rows) == 1 else _sum(rows), {})
        for key, rows in _partition(_keys(base.sums, names), base.values).items()
    }
    unit_keys = list(zip(_keys(base.units, names), map(itemgetter(_N), base.units), strict=True))
    for (key, unit), rows in _partition(unit_keys, base.unit_values).items():
        group = groups.get(key)
        if group is None:
            continue
        if len(rows) == 1:
            group[1][unit] = [v or 0.0 for v in rows[0]]
        else:
            group[1][unit] = [float(sum(filter(None, c))) for c in zip(*rows, strict=True)]
    return groups


def _sum(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(sum(filter(None, column)) for column in zip(*rows, strict=True))


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
