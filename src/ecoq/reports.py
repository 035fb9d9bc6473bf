"""Rows for `ecoq report`: totals, per-group and per-project figures of finished runs.

Reads finished runs through a `ecoq.views.Reader` (no ORM; the SQL is `ecoq.report_sql`: two
queries, grouped in SQL, or per run by job, and one more for the daily sums), then rolls the
groups up in Python over tuples (a by-job report of 100,000 runs has 100,000 groups to roll up
into totals and projects). A report for one user (``uid``) filters its runs in SQL. Rules:

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
from datetime import date, datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any, Literal

from ecoq.report_sql import (
    COUNTS_AT,
    HEAD,
    KINDS,
    RUN_FIGURES,
    SIGNAL,
    SIGNAL_AT,
    STATUS_NAMES,
    SUMS,
    UNIT_RUN,
    UNIT_SUMS,
    WIDTH,
    day_sql,
    dialect_of,
    group_sql,
    run_filter,
    tuples,
)
from ecoq.report_sql import time_param as time_param  # ecoq.plots imports it from here
from ecoq.views import Reader, iso

GroupBy = Literal["job", "project", "user", "zone", "day"]
GROUPS: tuple[GroupBy, ...] = ("job", "project", "user", "zone", "day")
FORMATS = ("table", "csv", "json", "html")
J_PER_KWH = 3.6e6
#: Units of work with a standard figure: energy per epoch, carbon per inference.
EPOCH, INFERENCE = "epoch", "inference"

#: A group's sums in `NUMS` order (None or 0 where there was nothing to add), and its marked
#: units: unit -> [count, energy_j, realized_g, embodied_g].
_Group = tuple[tuple[Any, ...], dict[str, list[float]]]


def _row(
    group: str, signal: str | None, sums: tuple[Any, ...], marked: dict[str, list[float]]
) -> dict[str, Any]:
    """The JSON row of one group and signal: energy in kWh, emissions in kg CO2e, delays in
    hours."""
    # a by-job report makes 100,000 rows: plain statements, no comprehension (a call each)
    jobs_f, runs, energy, estimate, facility, realized, cf, embodied, embodied_n, delay, misses = (
        sums[:11]
    )
    realized, cf, embodied = realized or 0.0, cf or 0.0, embodied or 0.0
    delay = delay or 0.0
    figures = signal is not None
    jobs = int(jobs_f or 0.0) or 1
    avoided = cf - realized
    sci: dict[str, float] = {"job": (realized + embodied) / jobs} if figures else {}
    if not marked:
        units: dict[str, list[float]] = {}
        counts: dict[str, float] = {}
    elif len(marked) == 1:  # a by-job row: one unit, nothing to sort
        ((unit, a),) = marked.items()
        units, counts = ({unit: a}, {unit: a[0]}) if a[0] > 0 else ({}, {})
    else:
        units = {u: a for u, a in sorted(marked.items()) if a[0] > 0}
        counts = {u: a[0] for u, a in units.items()}
    if figures:
        for u, a in units.items():
            sci[u] = (a[2] + a[3]) / a[0]
    epoch, inference = units.get(EPOCH), units.get(INFERENCE)
    status, intensity = _counts(sums[COUNTS_AT])
    return {
        "group": group,
        "signal": signal,
        "jobs": int(jobs_f or 0.0),
        "runs": int(runs or 0.0),
        "energy_kwh": (energy or 0.0) / J_PER_KWH,
        "estimate_energy_kwh": (estimate or 0.0) / J_PER_KWH,
        "facility_energy_kwh": (facility or 0.0) / J_PER_KWH,
        "realized_kg": realized / 1000 if figures else None,
        "counterfactual_kg": cf / 1000 if figures else None,
        "avoided_kg": avoided / 1000 if figures else None,
        "avoided_pct": 100.0 * avoided / cf if figures and cf > 0 else None,
        "embodied_kg": embodied / 1000 if (embodied_n or 0) > 0 else None,
        "delay_added_h": delay / 3600,
        "mean_delay_h": delay / 3600 / jobs,
        "deadline_misses": int(misses or 0.0),
        "status": status.copy(),
        "intensity": intensity.copy(),
        "units": counts,
        "energy_per_epoch_kwh": epoch[1] / epoch[0] / J_PER_KWH if epoch else None,
        "g_per_inference": inference[2] / inference[0] if inference and figures else None,
        "sci_g_per_unit": sci,
    }


@lru_cache(maxsize=1024)  # rows of one run (by job) have a few combinations
def _counts(counts: tuple[Any, ...]) -> tuple[dict[str, int], dict[str, int]]:
    """The runs per status and per intensity kind (those with any) from a group's counts
    (`COUNTS_AT`); shared: copy before handing them out."""
    n = len(STATUS_NAMES)
    return (
        {s: int(c) for s, c in zip(STATUS_NAMES, counts[:n], strict=True) if c},
        {k: int(c) for k, c in zip(KINDS, counts[n:], strict=True) if c},
    )


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
    signal; `daily` (realized and avoided kg per day, per signal) when asked for. `uid`: the
    report counts only the runs of that user's jobs (None: everyone's)."""

    since: datetime
    until: datetime
    by: GroupBy
    rows: list[dict[str, Any]]
    totals: list[dict[str, Any]]
    projects: list[dict[str, Any]]
    notes: list[str]
    daily: dict[str, list[tuple[date, float, float]]] = field(default_factory=dict)
    uid: int | None = None

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
    uid: int | None = None,
) -> Report:
    """Aggregate the runs that finished in `[since, until)` (two queries), and roll the groups
    up into per-project rows and per-signal totals. With `days`, also the daily sums (one more
    query: they never split a group, so a job whose runs end on two days counts once). With
    `uid`, only the runs of jobs whose ``jobs.uid`` is `uid` count, in every figure (filtered
    in SQL).

    Job counts are exact by job, project and user; by zone or day a job whose runs fall in
    two groups counts in each (a job normally has one run).

    Raises:
        ValueError: `by` is not one of `GROUPS`.
    """
    if by not in GROUPS:
        raise ValueError(f"--by {by!r} is not one of {', '.join(GROUPS)}")
    where, params = run_filter(reader, since=since, until=until, uid=uid)
    base, per_day = _fetch(reader, by, dialect_of(reader), where, params, days)
    totals = _accumulate(base, ("g_signal",))
    projects = _accumulate(base, ("g_project", "g_signal")) if by != "project" else None
    group_rows = _job_rows(base) if by == "job" else None
    if group_rows is None:
        name = (lambda k: f"{k[0]} {k[1]}") if by == "job" else (lambda k: str(k[0] or "-"))
        group_rows = _rows(_accumulate(base, ("g_key", "g_label", "g_signal")), name)
    total_rows = _rows(totals, lambda k: "total")
    return Report(
        since=since,
        until=until,
        by=by,
        rows=group_rows,
        totals=total_rows,
        projects=_rows(projects) if projects is not None else group_rows,
        notes=_notes(total_rows, uid),
        daily=_daily(per_day),
        uid=uid,
    )


#: Realized and counterfactual g summed per (day, signal).
_PerDay = dict[tuple[Any, ...], tuple[Any, ...]]


@dataclass(frozen=True)
class _Fetched:
    """The rows of `_fetch`'s two queries (as tuples), with their sums sliced off once for
    every rollup."""

    sums: list[tuple[Any, ...]]
    values: list[tuple[Any, ...]]  # each row of `sums` without its head: `NUMS`
    units: list[tuple[Any, ...]]
    unit_values: list[tuple[Any, ...]]  # each row of `units` after the unit: n, energy_j, ...


def _fetch(
    reader: Reader, by: str, dialect: str, where: str, params: Mapping[str, Any], days: bool
) -> tuple[_Fetched, _PerDay]:
    """The sums per group (and project) and signal, and the marked units per group, signal and
    unit, of the runs `where` (`run_filter`) selects; with `days`, the daily sums too."""
    head = group_sql(by, dialect)
    runs = f"runs r JOIN jobs j ON j.id = r.job_id WHERE {where}"
    units = "run_units u JOIN runs r ON r.id = u.run_id JOIN jobs j ON j.id = r.job_id"
    units += f" WHERE {where}"
    if by == "job":
        # A group per job: over 100,000 jobs, SQLite's grouping and its 30 aggregates per group
        # cost more than reading each run and adding up here the few jobs with several runs
        # (in the order SQL would).
        sql = f"SELECT {head}, {RUN_FIGURES} FROM {runs} ORDER BY r.job_id, r.id"
        sums = _merged(tuples(reader, sql, params), WIDTH, one_job=True)
        sql = f"SELECT {head}, {UNIT_RUN} FROM {units} ORDER BY r.job_id, r.id, u.id"
        marked = _merged(tuples(reader, sql, params), WIDTH + 1)
    else:
        group = "1, 2, 3, 4, 5"
        sums_sql = SUMS.format(jobs="COUNT(DISTINCT r.job_id)")
        sums = tuples(reader, f"SELECT {head}, {sums_sql} FROM {runs} GROUP BY {group}", params)
        marked = tuples(
            reader, f"SELECT {head}, {UNIT_SUMS} FROM {units} GROUP BY {group}, u.unit", params
        )
    per_day: _PerDay = {}
    if days:
        # the day and signal are the run's: jobs are joined only to filter by uid
        daily_runs = runs if "uid" in params else f"runs r WHERE {where}"
        sql = (
            f"SELECT {day_sql(dialect)} AS g_day, {SIGNAL} AS g_signal, "
            "SUM(r.realized_g) AS realized_g, SUM(r.counterfactual_g) AS counterfactual_g "
            f"FROM {daily_runs} GROUP BY 1, 2"
        )
        per_day = {r[:2]: r[2:] for r in tuples(reader, sql, params)}
    values, unit_values = [r[WIDTH:] for r in sums], [r[WIDTH + 1 :] for r in marked]
    return _Fetched(sums, values, marked, unit_values), per_day


def _daily(per_day: _PerDay) -> dict[str, list[tuple[date, float, float]]]:
    """Realized and avoided kg per day, oldest first, per signal (runs with figures only)."""
    daily: dict[str, list[tuple[date, float, float]]] = {}
    for (day, signal), (realized_g, counterfactual_g) in sorted(
        per_day.items(), key=lambda item: (item[0][0], item[0][1] or "~")
    ):
        if signal is not None:
            realized, avoided = realized_g or 0.0, (counterfactual_g or 0.0) - (realized_g or 0.0)
            daily.setdefault(signal, []).append(
                (date.fromisoformat(day), realized / 1000, avoided / 1000)
            )
    return daily


def _job_rows(base: _Fetched) -> list[dict[str, Any]] | None:
    """The by-job rows straight from the fetched runs when each job has one row (one signal):
    `_fetch` reads them in job order, so there is nothing to roll up or sort. None otherwise."""
    if len(dict.fromkeys(map(itemgetter(0), base.sums))) < len(base.sums):
        return None
    # one row (so one signal) per job: a job's marked units are its row's
    marked: dict[Any, dict[str, list[float]]] = {}
    for r, (n, energy, realized, embodied) in zip(base.units, base.unit_values, strict=True):
        figures = [n or 0.0, energy or 0.0, realized or 0.0, embodied or 0.0]  # `UNIT_FIGURES`
        marked.setdefault(r[0], {})[r[WIDTH]] = figures
    return [
        _row(f"{r[0]} {r[1]}", r[SIGNAL_AT], values, marked.get(r[0]) or {})
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
    if len(set(map(itemgetter(0), rows))) == len(rows):
        return rows  # the usual case: one run per job (a job id is the first column)
    head = itemgetter(slice(0, width))
    if len(dict.fromkeys(map(head, rows))) == len(rows):
        return rows
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
        i = HEAD.index(names[0])
        return [(r[i],) for r in rows]
    return list(map(itemgetter(*map(HEAD.index, names)), rows))


def _accumulate(base: _Fetched, names: tuple[str, ...]) -> dict[tuple[Any, ...], _Group]:
    """The fetched sums and marked units summed per value of the head columns `names` (the
    last one the signal). A by-job report rolls 100,000 groups up twice (totals, projects):
    rows stay tuples, and sums are taken column by column with C-level helpers."""
    groups: dict[tuple[Any, ...], _Group] = {
        key: (rows[0] if len(rows) == 1 else _sum(rows), {})
        for key, rows in _partition(_keys(base.sums, names), base.values).items()
    }
    unit_keys = list(zip(_keys(base.units, names), map(itemgetter(WIDTH), base.units), strict=True))
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


def top_jobs(
    reader: Reader, *, since: datetime, until: datetime, n: int, uid: int | None = None
) -> list[int]:
    """Ids of the (at most `n`) jobs whose runs in `[since, until)` used the most energy (with
    `uid`, only jobs whose ``jobs.uid`` is `uid`)."""
    where, params = run_filter(reader, since=since, until=until, uid=uid)
    params["n"] = 4 * n
    # the jobs table is joined only to filter by uid: without, the query reads runs alone
    runs = "runs r" if uid is None else "runs r JOIN jobs j ON j.id = r.job_id"
    rows = reader.query(
        f"SELECT r.job_id FROM {runs} WHERE {where} "
        "ORDER BY COALESCE(r.energy_j, 0) DESC, r.job_id LIMIT :n",
        params,
    )
    return list(dict.fromkeys(int(r["job_id"]) for r in rows))[:n]


def _notes(totals: list[dict[str, Any]], uid: int | None = None) -> list[str]:
    notes = [] if uid is None else [f"only runs of jobs submitted by uid {uid} are counted"]
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
