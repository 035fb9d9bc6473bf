"""ecoq.reports and ecoq.report_html on a real SQLite file seeded through the models."""

import base64
import csv
import io
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.plots import PNG_SIGNATURE, window_plot, window_png
from ecoq.report_codecarbon import CODECARBON_COLUMNS, render_codecarbon
from ecoq.report_html import render_html
from ecoq.report_text import (
    JSON_ROWS_PER_LINE,
    TABLE_COLUMNS,
    render_csv,
    render_json,
    render_table,
)
from ecoq.reports import GROUPS, Report, build_report
from ecoq.views import SqliteReader, fast_reader
from tests.seed import at, seed_demo


@pytest.fixture
def seeded(db_url: str, tmp_path: Path) -> Iterator[tuple[SqliteReader, dict[str, int]]]:
    engine = open_engine(db_url)
    ids = seed_demo(engine, tmp_path / "runs")
    engine.dispose()
    reader = fast_reader(db_url)
    assert reader is not None  # the stdlib read path, as the CLI uses
    yield reader, ids
    reader.close()


def report(reader: SqliteReader, by: str = "project", days: bool = False) -> Report:
    return build_report(reader, since=at(0), until=at(48), by=by, days=days)  # type: ignore[arg-type]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    return width, height


def test_totals_keep_signals_apart_with_hand_computed_figures(
    seeded: tuple[SqliteReader, dict[str, int]],
) -> None:
    totals = {t["signal"]: t for t in report(seeded[0]).totals}
    assert set(totals) == {"average", "marginal", None}
    avg = totals["average"]
    # train: 360 g realized, 960 g at submission; serve: 150 g, 150 g
    assert avg["jobs"] == 2 and avg["energy_kwh"] == pytest.approx(3.5)
    assert avg["realized_kg"] == pytest.approx(0.51)
    assert avg["counterfactual_kg"] == pytest.approx(1.11)
    assert avg["avoided_kg"] == pytest.approx(0.6)
    assert avg["avoided_pct"] == pytest.approx(100 * 0.6 / 1.11)
    assert avg["estimate_energy_kwh"] == pytest.approx(0.5)
    assert avg["status"] == {"final": 1, "provisional": 1}
    assert avg["intensity"] == {"forecast": 1, "realized": 1}
    assert avg["delay_added_h"] == pytest.approx(4.0) and avg["deadline_misses"] == 1
    assert avg["energy_per_epoch_kwh"] == pytest.approx(0.3)
    assert avg["g_per_inference"] == pytest.approx(0.15)
    assert avg["sci_g_per_unit"] == {
        "job": pytest.approx(255.0),
        "epoch": pytest.approx(36.0),
        "inference": pytest.approx(0.15),
    }
    marginal = totals["marginal"]
    assert (marginal["realized_kg"], marginal["avoided_kg"]) == (
        pytest.approx(0.8),
        pytest.approx(0.2),
    )
    assert marginal["delay_added_h"] == pytest.approx(2.0)
    unmetered = totals[None]
    assert unmetered["runs"] == 1 and unmetered["realized_kg"] is None
    assert unmetered["status"] == {"unmetered": 1}
    daily = report(seeded[0], days=True).daily
    assert daily["average"] == [
        (at(0).date(), pytest.approx(0.36), pytest.approx(0.6)),
        (at(24).date(), pytest.approx(0.15), pytest.approx(0.0)),
    ]
    assert daily["marginal"] == [(at(0).date(), pytest.approx(0.8), pytest.approx(0.2))]


def test_groups_are_split_by_signal(seeded: tuple[SqliteReader, dict[str, int]]) -> None:
    rows = {(r["group"], r["signal"]): r for r in report(seeded[0]).rows}
    assert set(rows) == {
        ("nlp", "average"),
        ("nlp", None),
        ("vision", "average"),
        ("vision", "marginal"),
    }
    assert rows[("vision", "average")]["realized_kg"] == pytest.approx(0.36)
    assert rows[("vision", "marginal")]["realized_kg"] == pytest.approx(0.8)
    by_day = {(r["group"], r["signal"]) for r in report(seeded[0], "day").rows}
    assert ("2026-11-02", "average") in by_day and ("2026-11-03", "average") in by_day
    by_job = [r["group"] for r in report(seeded[0], "job").rows]
    ids = seeded[1]
    assert by_job == [
        f"{ids['train']} train",
        f"{ids['serve']} serve",
        f"{ids['mjob']} mjob",
        f"{ids['idle']} idle",
    ]
    assert [r["group"] for r in report(seeded[0], "zone").rows] == ["CAISO_NORTH", "DE", "DE"]
    assert {r["group"] for r in report(seeded[0], "user").rows} == {"alice", "bob"}


def test_table_and_csv(seeded: tuple[SqliteReader, dict[str, int]]) -> None:
    rep = report(seeded[0], "zone")
    table = render_table(rep)
    assert "totals (each signal apart):" in table and "carbon per project:" in table
    assert "marginal and average figures are shown apart" in table
    assert "SCI's embodied emissions M are unset" in table
    assert "is an estimate, not metered" in table
    rows = list(csv.DictReader(io.StringIO(render_csv(rep))))
    totals = [r for r in rows if r["zone"] == "TOTAL"]
    assert {r["signal"] for r in totals} == {"average", "marginal", ""}
    assert float(next(r for r in totals if r["signal"] == "average")["realized_kg"]) == (
        pytest.approx(0.51)
    )


def test_codecarbon_csv_has_its_columns(seeded: tuple[SqliteReader, dict[str, int]]) -> None:
    text, count = render_codecarbon(seeded[0], since=at(0), until=at(48))
    assert count == 4
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0].keys()) == CODECARBON_COLUMNS
    train = next(r for r in rows if float(r["gpu_energy"] or 0) > 2)
    assert float(train["emissions"]) == pytest.approx(0.36)  # kg
    assert float(train["duration"]) == pytest.approx(3 * 3600)
    assert float(train["gpu_power"]) == pytest.approx(1000.0)  # 3 kWh over 3 h
    assert float(train["energy_consumed"]) == pytest.approx(3.0)
    assert train["region"] == "DE" and train["project_name"] == "vision"
    assert train["timestamp"] == "2026-11-02T15:00:00"
    unmetered = [r for r in rows if r["emissions"] == ""]
    assert len(unmetered) == 1


def test_html_report_is_self_contained_with_real_plots(
    seeded: tuple[SqliteReader, dict[str, int]], tmp_path: Path
) -> None:
    reader = seeded[0]
    page = render_html(report(reader, days=True), reader, now=at(48))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page and "<link" not in page and "<script" not in page
    assert not re.search(r'src="(?!data:)', page)  # every image is embedded
    for text in (
        "average signal",
        "marginal signal",
        "Daily realized vs avoided",
        "Forecast and window of the largest jobs",
        "Carbon per project",
        "vision",
        "nlp",
        "SCI: (E × I + M) per unit",
        "unset (0)",
        "provisional",
    ):
        assert text in page, text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # daily bars for each signal, and one plot per job (four jobs)
    assert len(images) == 2 + 4
    for i, data in enumerate(images):
        png = base64.b64decode(data)
        width, height = png_size(png)
        assert width >= 600 and height >= 250
        assert len(png) > 10_000
        (tmp_path / f"plot{i}.png").write_bytes(png)


def test_window_plot_data_and_png(seeded: tuple[SqliteReader, dict[str, int]]) -> None:
    reader, ids = seeded
    plot = window_plot(reader, ids["train"])
    assert plot.chosen == (at(12), at(15))
    assert plot.run_now == (at(8), at(11))
    assert plot.forecast_label == "file forecast" and len(plot.forecast) >= 20
    assert plot.realized and plot.realized[0][1] in (120.0, 320.0)
    assert "360 g realized, 600 g avoided (final, realized average)" in plot.title
    width, height = png_size(window_png(plot))
    assert (width, height) == (800, 320)
    marginal = window_plot(reader, ids["mjob"])
    assert marginal.signal == "marginal" and marginal.realized == []
    assert {v for _, v in marginal.forecast} == {400.0, 500.0}


def test_an_empty_period(seeded: tuple[SqliteReader, dict[str, int]]) -> None:
    rep = build_report(seeded[0], since=at(100), until=at(200), days=True)
    assert rep.rows == [] and rep.totals == [] and rep.runs == 0
    assert "no finished runs" in render_table(rep)
    assert "No finished runs" in render_html(rep, seeded[0], now=at(200))


def test_reports_read_the_same_through_any_database(any_db_url: str, tmp_path: Path) -> None:
    from ecoq.db import EngineReader

    engine = open_engine(any_db_url)
    seed_demo(engine, tmp_path / "runs")
    reader = EngineReader(engine)
    rep = build_report(reader, since=at(0), until=at(48), by="day", days=True)
    totals = {t["signal"]: t for t in rep.totals}
    assert totals["average"]["realized_kg"] == pytest.approx(0.51)
    assert totals["average"]["deadline_misses"] == 1
    assert totals["average"]["energy_per_epoch_kwh"] == pytest.approx(0.3)
    assert [r["group"] for r in rep.rows if r["signal"] == "average"] == [
        "2026-11-02",
        "2026-11-03",
    ]
    assert rep.daily["marginal"] == [(at(0).date(), pytest.approx(0.8), pytest.approx(0.2))]
    text, count = render_codecarbon(reader, since=at(0), until=at(48))
    assert count == 4 and "2026-11-02T15:00:00,vision" in text
    plot = window_plot(reader, seed_ids(engine)["train"])
    assert plot.chosen == (at(12), at(15)) and plot.realized
    engine.dispose()


def seed_ids(engine: object) -> dict[str, int]:
    from sqlmodel import select

    from ecoq.db import session
    from ecoq.models import Job

    with session(engine) as s:  # type: ignore[arg-type]
        return {j.name: j.id or 0 for j in s.exec(select(Job)).all()}


def copy_jobs(path: Path, copies: int) -> None:
    """Add `copies` copies of every job in the SQLite file `path`, with its runs and marked
    units (ids shifted by multiples of 1000), so a by-job report has many rows."""
    import sqlite3

    conn = sqlite3.connect(path)
    for table, shifted in (
        ("jobs", {"id": "id + :d"}),
        ("runs", {"id": "id + :d", "job_id": "job_id + :d"}),
        ("run_units", {"id": "id + :d", "run_id": "run_id + :d"}),
    ):
        names = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        columns = ", ".join(f'"{n}"' for n in names)
        values = ", ".join(shifted.get(n, f'"{n}"') for n in names)
        for i in range(1, copies + 1):
            conn.execute(
                f"INSERT INTO {table} ({columns}) SELECT {values} FROM {table} WHERE id < 1000",
                {"d": 1000 * i},
            )
    conn.commit()
    conn.close()


def table_cells(value: object) -> str:
    """One cell as the per-row table writer formatted it before the columnar one."""
    if value is None:
        return "-"
    if type(value) is float:
        return f"{value:.3g}" if -1000 < value < 1000 else f"{value:.0f}"
    return str(value)


def test_a_large_report_renders_the_same_rows_and_values(db_url: str, tmp_path: Path) -> None:
    engine = open_engine(db_url)
    ids = seed_demo(engine, tmp_path / "runs")
    engine.dispose()
    assert max(ids.values()) < 1000  # copy_jobs shifts ids by thousands
    reader = fast_reader(db_url)
    assert reader is not None
    small = report(reader, "job")
    copy_jobs(tmp_path / "ecoq.db", 300)
    large = report(reader, "job")
    reader.close()
    assert len(large.rows) == 301 * len(small.rows) > JSON_ROWS_PER_LINE
    by_group = {(r["group"], r["signal"]): r for r in large.rows}
    for copy in (0, 1, 300):  # every copy's rows hold the original's values
        for row in small.rows:
            job_id, name = row["group"].split(" ", 1)
            shifted = by_group[(f"{int(job_id) + 1000 * copy} {name}", row["signal"])]
            assert {**shifted, "group": row["group"]} == row
    assert large.runs == 301 * small.runs

    # table: fixed width, the same cells in the same order as the per-row writer
    lines = render_table(large).splitlines()
    start = lines.index("") + 1
    body = lines[start + 1 : start + 1 + len(large.rows)]
    assert len({len(line) for line in lines[start : start + 1 + len(large.rows)]}) == 1
    for line, row in zip(body, large.rows, strict=True):
        expected = [table_cells(row[key]) for key, _ in TABLE_COLUMNS]
        assert re.split(r"\s{2,}", line.strip()) == expected

    # CSV: every value round-trips
    parsed = list(csv.DictReader(io.StringIO(render_csv(large))))
    assert len(parsed) == len(large.rows) + len(large.totals)
    for line_values, row in zip(parsed[: len(large.rows)], large.rows, strict=True):
        assert line_values["job"] == row["group"]
        assert line_values["provisional_runs"] == str(row["status"].get("provisional", 0))
        for key in ("energy_kwh", "realized_kg", "avoided_pct", "g_per_inference"):
            assert line_values[key] == ("" if row[key] is None else repr(row[key]))

    # JSON: one row object per line past the threshold, the same data as indented JSON
    text = render_json(large)
    assert json.loads(text) == json.loads(json.dumps(large.to_json(), indent=2))
    row_lines = [line for line in text.splitlines() if line.startswith('    {"group": ')]
    assert len(row_lines) == len(large.rows) + len(large.totals) + len(large.projects)
    assert json.loads(row_lines[len(large.totals)].rstrip(",")) == large.rows[0]
    assert render_json(small) == json.dumps(small.to_json(), indent=2, ensure_ascii=False) + "\n"


def test_the_stdlib_and_engine_readers_give_the_same_reports(
    seeded: tuple[SqliteReader, dict[str, int]], db_url: str
) -> None:
    from ecoq.db import EngineReader

    engine = open_engine(db_url)
    for by in GROUPS:
        fast = build_report(seeded[0], since=at(0), until=at(48), by=by, days=True)
        slow = build_report(EngineReader(engine), since=at(0), until=at(48), by=by, days=True)
        assert (fast.to_json(), fast.daily) == (slow.to_json(), slow.daily)
    engine.dispose()


def test_by_job_adds_up_the_runs_of_a_job(db_url: str, tmp_path: Path) -> None:
    import sqlite3

    engine = open_engine(db_url)
    ids = seed_demo(engine, tmp_path / "runs")
    engine.dispose()
    conn = sqlite3.connect(tmp_path / "ecoq.db")
    names = [row[1] for row in conn.execute("PRAGMA table_info(runs)") if row[1] != "id"]
    columns = ", ".join(f'"{n}"' for n in names)
    # train runs twice on the same signal; mjob's second run has average figures
    for job, signal in ((ids["train"], "accounting_signal"), (ids["mjob"], "'average'")):
        values = columns.replace('"accounting_signal"', f"{signal} AS accounting_signal")
        conn.execute(
            f"INSERT INTO runs ({columns}) SELECT {values} FROM runs WHERE job_id = ?", [job]
        )
        conn.execute(
            "INSERT INTO run_units (run_id, unit, count) SELECT (SELECT MAX(id) FROM runs), "
            "unit, count FROM run_units WHERE run_id = (SELECT MIN(id) FROM runs WHERE job_id = ?)",
            [job],
        )
    conn.commit()
    conn.close()
    reader = fast_reader(db_url)
    assert reader is not None
    by_job = report(reader, "job")
    by_project = report(reader, "project")
    reader.close()
    rows = {(r["group"], r["signal"]): r for r in by_job.rows}
    train = rows[(f"{ids['train']} train", "average")]
    assert (train["jobs"], train["runs"], train["units"]) == (1, 2, {"epoch": 20})
    assert train["energy_kwh"] == pytest.approx(6.0) and train["realized_kg"] == pytest.approx(0.72)
    assert train["energy_per_epoch_kwh"] == pytest.approx(0.3)
    for signal in ("average", "marginal"):
        mjob = rows[(f"{ids['mjob']} mjob", signal)]
        assert (mjob["jobs"], mjob["runs"], mjob["realized_kg"]) == (1, 1, pytest.approx(0.8))
    # the per-run path (by job) and SQL's grouping (by project) give the same totals
    for a, b in zip(by_job.totals, by_project.totals, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == (pytest.approx(value) if isinstance(value, float | dict) else value), (
                key
            )
