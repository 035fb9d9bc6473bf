"""The SQL of `ecoq report` (`ecoq.reports`): which runs a report counts, each run's figures
and their sums, and the group heads, for SQLite and PostgreSQL alike.

Every value reaches SQL as a bound parameter (``:since``, ``:until``, ``:uid``); only the fixed
fragments below are formatted into the statements.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ecoq.views import Reader, SqliteReader

STATUSES = ("provisional", "final", "final-forecast", "unmetered", "no-intensity")
KINDS = ("forecast", "realized")
#: A run's signal in reports: only runs with figures have one.
SIGNAL = "CASE WHEN r.realized_g IS NOT NULL THEN r.accounting_signal END"
WHERE = (
    "r.started_at IS NOT NULL AND r.finished_at IS NOT NULL "
    "AND r.finished_at >= :since AND r.finished_at < :until"
)
#: Added to `WHERE` (and ``:uid`` to the parameters) to count only one user's jobs.
UID_FILTER = " AND j.uid = :uid"
#: Each run's figures as (name, SQL); a group's are their sums, after its job count.
FIGURES = (
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
        for i, s in enumerate(STATUSES)
    ),
    *(
        (
            f"kind_{i}",
            f"CASE WHEN r.realized_g IS NOT NULL AND r.intensity_kind = '{k}' THEN 1 ELSE 0 END",
        )
        for i, k in enumerate(KINDS)
    ),
)
NUMS = ("jobs", *(name for name, _ in FIGURES))
#: A group's sums (``{jobs}`` counts its jobs), and one run's figures.
SUMS = "{jobs} AS jobs, " + ", ".join(f"SUM({sql}) AS {name}" for name, sql in FIGURES)
RUN_FIGURES = "1 AS jobs, " + ", ".join(f"{sql} AS {name}" for name, sql in FIGURES)
#: The status counts in `NUMS` order ("unaccounted": not accounted yet).
STATUS_NAMES = ("unaccounted", *STATUSES)
#: Where the status counts, then the intensity-kind counts, sit in `NUMS`.
COUNTS_AT = slice(NUMS.index("st_unaccounted"), NUMS.index(f"kind_{len(KINDS) - 1}") + 1)
#: A marked unit's figures per run, likewise.
UNIT_FIGURES = (
    ("n", "u.count"),
    ("energy_j", "r.energy_j"),
    ("realized_g", "r.realized_g"),
    ("embodied_g", "COALESCE(r.embodied_g, 0)"),
)
UNIT_SUMS = "u.unit AS unit, " + ", ".join(f"SUM({sql}) AS {n}" for n, sql in UNIT_FIGURES)
UNIT_RUN = "u.unit AS unit, " + ", ".join(f"{sql} AS {n}" for n, sql in UNIT_FIGURES)


def dialect_of(reader: Reader) -> str:
    if isinstance(reader, SqliteReader):
        return "sqlite"
    engine = getattr(reader, "_engine", None)  # ecoq.db.EngineReader
    return str(getattr(getattr(engine, "dialect", None), "name", ""))


def time_param(reader: Reader, when: datetime) -> Any:
    """`when` as a query parameter: SQLite stores UTC times as ``YYYY-MM-DD HH:MM:SS.ffffff``
    text (compared as strings), other databases take the datetime."""
    if dialect_of(reader) == "sqlite":
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return when.astimezone(UTC)


def run_filter(
    reader: Reader, *, since: datetime, until: datetime, uid: int | None = None
) -> tuple[str, dict[str, Any]]:
    """The WHERE condition on ``runs r`` joined to ``jobs j`` that selects the runs finished in
    `[since, until)` (and, when `uid` is not None, only runs of jobs whose ``jobs.uid`` is
    `uid`), with its bound parameters ``:since``, ``:until`` and ``:uid``."""
    params: dict[str, Any] = {
        "since": time_param(reader, since),
        "until": time_param(reader, until),
    }
    if uid is None:
        return WHERE, params
    params["uid"] = int(uid)
    return WHERE + UID_FILTER, params


def day_sql(dialect: str) -> str:
    """A run's day (UTC, ``YYYY-MM-DD``) in SQL."""
    if dialect == "sqlite":
        return "substr(r.finished_at, 1, 10)"
    return "to_char(r.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def group_sql(by: str, dialect: str) -> str:
    """The SELECT head (`HEAD`) for grouping by `by`: its key and label, the project, no day
    (the daily sums are taken apart) and the signal."""
    day = day_sql(dialect)
    key, label = {
        "job": ("r.job_id", "j.name"),
        "project": ("j.project", "NULL"),
        "user": ('j."user"', "NULL"),
        "zone": ("COALESCE(r.intensity_zone, j.zone)", "NULL"),
        "day": (day, "NULL"),
        "total": ("'total'", "NULL"),
    }[by]
    return (
        f"{key} AS g_key, {label} AS g_label, j.project AS g_project, "
        f"NULL AS g_day, {SIGNAL} AS g_signal"
    )


#: The first columns of the grouped and per-run queries (`group_sql`), in order; the sums
#: (`NUMS`) follow them, or the unit and its sums (`UNIT_SUMS`). ``g_day`` is always NULL: the
#: daily sums are a query of their own, so that a job whose runs end on two days counts once.
HEAD = ("g_key", "g_label", "g_project", "g_day", "g_signal")
WIDTH = len(HEAD)
SIGNAL_AT = HEAD.index("g_signal")


def tuples(reader: Reader, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """`reader`'s rows of `sql` as tuples, in column order."""
    if isinstance(reader, SqliteReader):
        return reader.tuples(sql, params)  # a by-job report reads 100,000 rows: no dicts
    return [tuple(r.values()) for r in reader.query(sql, params)]
