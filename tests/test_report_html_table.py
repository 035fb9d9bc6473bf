"""The HTML report's tables: columns formatted a column at a time write what formatting each
cell on its own writes, and daily sums never split a job's figures."""

import html
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ecoq.db import open_engine
from ecoq.report_html import _table
from ecoq.report_text import TABLE_COLUMNS
from ecoq.reports import build_report
from ecoq.views import fast_reader
from tests.seed import at, seed_demo


def reference_cell(v: Any) -> str:
    """One cell as the per-cell writer formatted it."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(v) if isinstance(v, str) else str(v)


def reference_table(rows: Sequence[dict[str, Any]], first: str) -> str:
    head = "".join(
        f"<th>{html.escape(first if k == 'group' else t)}</th>" for k, t in TABLE_COLUMNS
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td>{reference_cell(row[k])}</td>" for k, _ in TABLE_COLUMNS)
        + f"<td>{html.escape(', '.join(f'{n} {s}' for s, n in row['status'].items()))}</td>"
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}<th>runs by status</th></tr>{body}</table>"


def row(group: Any, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {key: 0.5 for key, _ in TABLE_COLUMNS}
    base.update(group=group, signal="average", jobs=1, deadline_misses=0, status={"final": 1})
    base.update(values)
    return base


@pytest.mark.parametrize(
    "rows",
    [
        # the common case: names to keep as they are, floats under 1,000, ints
        [row("1 train"), row("2 serve", energy_kwh=999.4, status={"provisional": 2})],
        # names to escape, signals missing, big, negative and odd floats, None
        [
            row("3 <b>&'\"", signal=None, realized_kg=None, avoided_pct=-12.5),
            row("4 a&b", energy_kwh=1234567.8, mean_delay_h=-1000.0, g_per_inference=None),
            row("5 x", energy_kwh=math.nan, realized_kg=math.inf, avoided_kg=-0.0),
            row("6 y", energy_per_epoch_kwh=1e-9, status={"final": 1, "unmetered": 3}),
        ],
        # a column of mixed types, and a status to escape
        [row("7 z", jobs=2.0, status={"<odd>": 1}), row("8 w", jobs=True, signal="m&m")],
    ],
)
def test_columns_are_written_as_each_cell_would_be(rows: list[dict[str, Any]]) -> None:
    assert _table(rows, "job") == reference_table(rows, "job")


def test_an_empty_table() -> None:
    assert _table([], "job") == "<p>No finished runs in this period.</p>"


def test_daily_sums_keep_a_jobs_runs_together(db_url: str, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    ids = seed_demo(engine, tmp_path / "runs")
    engine.dispose()
    conn = sqlite3.connect(tmp_path / "ecoq.db")
    names = [r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "id"]
    columns = ", ".join(f'"{n}"' for n in names)
    values = columns.replace('"finished_at"', "'2026-11-03 10:00:00.000000'")
    # train runs again, ending the next day
    conn.execute(
        f"INSERT INTO runs ({columns}) SELECT {values} FROM runs WHERE job_id = ?", [ids["train"]]
    )
    conn.commit()
    conn.close()
    reader = fast_reader(db_url)
    assert reader is not None
    for by in ("job", "project", "user", "zone", "day"):
        plain = build_report(reader, since=at(0), until=at(48), by=by)
        daily = build_report(reader, since=at(0), until=at(48), by=by, days=True)
        assert daily.to_json() == plain.to_json(), by  # the daily sums change no other figure
        average = daily.daily["average"]
        assert [(d, round(r, 9), round(a, 9)) for d, r, a in average] == [
            (at(0).date(), 0.36, 0.6),  # train's first run
            (at(24).date(), 0.51, 0.6),  # its second run, and serve
        ]
    train = build_report(reader, since=at(0), until=at(48), by="job", days=True).rows[0]
    assert (train["group"], train["jobs"], train["runs"]) == (f"{ids['train']} train", 1, 2)
    totals = {t["signal"]: t for t in build_report(reader, since=at(0), until=at(48)).totals}
    assert totals["average"]["jobs"] == 2  # train and serve
    reader.close()
