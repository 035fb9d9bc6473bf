"""Reports for one user (`uid=`): only the runs of that uid's jobs count, in every format.

Each filtered report is compared with the unfiltered report of a copy of the database that holds
only that uid's jobs: the same rows, totals, projects, daily sums, HTML and CodeCarbon lines.
"""

import csv
import io
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecoq.db import EngineReader, open_engine
from ecoq.report_codecarbon import codecarbon_rows, render_codecarbon
from ecoq.report_html import render_html
from ecoq.report_text import render_csv, render_json, render_table
from ecoq.reports import GROUPS, Report, build_report, top_jobs
from ecoq.views import SqliteReader, fast_reader
from tests.seed import at, seed_demo

#: The two users (uids unlike any number in the SQL); seed_demo's jobs are all U's at first.
U, V = 52417, 52418
#: The seeded jobs (by name) that are moved to uid V; the others stay U's.
V_JOBS = ("serve", "mjob")
NOTE_U = f"only runs of jobs submitted by uid {U} are counted"


class RecordingReader(SqliteReader):
    """The stdlib reader, keeping each statement and its parameters."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.calls.append((sql, dict(params)))
        return super().query(sql, params)

    def tuples(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        self.calls.append((sql, dict(params)))
        return super().tuples(sql, params)


@dataclass
class Dbs:
    """`both`: U's and V's jobs; `only`: a copy holding only the jobs of `uid`."""

    both: RecordingReader
    only: dict[int, SqliteReader]
    ids: dict[str, int]
    path: Path


def _keep_only(path: Path, uid: int) -> None:
    conn = sqlite3.connect(path)
    others = "SELECT id FROM jobs WHERE uid != ?"
    conn.execute(
        f"DELETE FROM run_units WHERE run_id IN (SELECT id FROM runs WHERE job_id IN ({others}))",
        [uid],
    )
    conn.execute(f"DELETE FROM runs WHERE job_id IN ({others})", [uid])
    conn.execute("DELETE FROM jobs WHERE uid != ?", [uid])
    conn.commit()
    conn.close()


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Dbs]:
    path = tmp_path / "ecoq.db"
    engine = open_engine(f"sqlite:///{path}")
    ids = seed_demo(engine, tmp_path / "runs")
    engine.dispose()
    conn = sqlite3.connect(path)
    # a second run of U's train job (another day), so U's rows add up several runs
    names = [row[1] for row in conn.execute("PRAGMA table_info(runs)") if row[1] != "id"]
    columns = ", ".join(f'"{n}"' for n in names)
    values = columns.replace('"finished_at"', "'2026-11-03 10:00:00.000000'")
    conn.execute(
        f"INSERT INTO runs ({columns}) SELECT {values} FROM runs WHERE job_id = ?", [ids["train"]]
    )
    conn.execute(
        "INSERT INTO run_units (run_id, unit, count) SELECT (SELECT MAX(id) FROM runs), unit, "
        "count FROM run_units WHERE run_id = (SELECT MIN(id) FROM runs WHERE job_id = ?)",
        [ids["train"]],
    )
    marks = ", ".join("?" for _ in V_JOBS)
    conn.execute("UPDATE jobs SET uid = ?", [U])
    conn.execute(f"UPDATE jobs SET uid = ? WHERE name IN ({marks})", [V, *V_JOBS])
    conn.commit()
    conn.close()
    only: dict[int, SqliteReader] = {}
    for uid in (U, V):
        copy = tmp_path / f"uid{uid}" / "ecoq.db"
        copy.parent.mkdir()
        shutil.copy(path, copy)
        _keep_only(copy, uid)
        reader = fast_reader(f"sqlite:///{copy}")
        assert reader is not None
        only[uid] = reader
    both = RecordingReader(path)
    yield Dbs(both, only, ids, path)
    for reader in (both, *only.values()):
        reader.close()


def build(reader: SqliteReader, by: str, uid: int | None = None, days: bool = False) -> Report:
    return build_report(reader, since=at(0), until=at(48), by=by, days=days, uid=uid)  # type: ignore[arg-type]


def without_uid_note(report: Report) -> dict[str, Any]:
    data = report.to_json()
    assert data["notes"][0] == f"only runs of jobs submitted by uid {report.uid} are counted"
    return {**data, "notes": data["notes"][1:]}


@pytest.mark.parametrize("days", [False, True])
@pytest.mark.parametrize("by", GROUPS)
def test_a_uid_report_is_the_report_of_that_uids_jobs_alone(dbs: Dbs, by: str, days: bool) -> None:
    for uid in (U, V):
        filtered = build(dbs.both, by, uid, days)
        alone = build(dbs.only[uid], by, None, days)
        assert filtered.uid == uid and alone.uid is None
        assert without_uid_note(filtered) == alone.to_json()
        assert filtered.daily == alone.daily
        assert filtered.runs == alone.runs > 0
        assert render_csv(filtered) == render_csv(alone)
        json_text = json.loads(render_json(filtered))
        assert {**json_text, "notes": json_text["notes"][1:]} == json.loads(render_json(alone))
        table = render_table(filtered)
        assert NOTE_U in table if uid == U else NOTE_U not in table


def test_rows_hold_only_the_uids_jobs_and_totals_are_their_sums(dbs: Dbs) -> None:
    ids = dbs.ids
    mine = build(dbs.both, "job", U, days=True)
    assert [r["group"] for r in mine.rows] == [f"{ids['train']} train", f"{ids['idle']} idle"]
    # train ran twice (on two days): 2 × 3 kWh, 2 × 360 g; idle is unmetered
    totals = {t["signal"]: t for t in mine.totals}
    assert set(totals) == {"average", None}
    assert (totals["average"]["jobs"], totals["average"]["runs"]) == (1, 2)
    assert totals["average"]["energy_kwh"] == pytest.approx(6.0)
    assert totals["average"]["realized_kg"] == pytest.approx(0.72)
    assert totals["average"]["status"] == {"final": 2}
    projects = {(p["group"], p["signal"]) for p in mine.projects}
    assert projects == {("vision", "average"), ("nlp", None)}
    # notes follow the filtered totals: U's runs have no provisional figures or estimates
    assert mine.notes[0] == NOTE_U
    assert not any("provisional" in n or "estimate" in n for n in mine.notes)
    assert any("1 run(s) have no emission figures" in n for n in mine.notes)
    assert list(mine.daily) == ["average"]
    assert [(d, round(r, 9), round(a, 9)) for d, r, a in mine.daily["average"]] == [
        (at(0).date(), 0.36, 0.6),
        (at(24).date(), 0.36, 0.6),
    ]
    theirs = build(dbs.both, "job", V)
    assert [r["group"] for r in theirs.rows] == [f"{ids['serve']} serve", f"{ids['mjob']} mjob"]
    assert {u["group"] for u in build(dbs.both, "user", V).rows} == {"alice", "bob"}
    assert build(dbs.both, "job", V + 1).rows == []
    assert build(dbs.both, "job", V + 1).totals == []


def test_uid_none_counts_everyone(dbs: Dbs) -> None:
    everyone = build(dbs.both, "project", None, days=True)
    assert everyone.uid is None
    assert not any("submitted by uid" in n for n in everyone.notes)
    parts = [build(dbs.both, "project", uid, days=True) for uid in (U, V)]
    assert everyone.runs == sum(p.runs for p in parts) == 5
    for total in everyone.totals:
        same = [t for p in parts for t in p.totals if t["signal"] == total["signal"]]
        for key in ("jobs", "runs", "deadline_misses"):
            assert total[key] == sum(t[key] for t in same), key
        for key in ("energy_kwh", "delay_added_h"):
            assert total[key] == pytest.approx(sum(t[key] for t in same)), key
    text, count = render_codecarbon(dbs.both, since=at(0), until=at(48))
    assert count == 5 and len(text.splitlines()) == 6


def test_the_uid_is_a_bound_parameter(dbs: Dbs) -> None:
    reader = dbs.both
    build(reader, "job", V, days=True)
    build(reader, "project", V, days=True)
    top_jobs(reader, since=at(0), until=at(48), n=3, uid=V)
    render_codecarbon(reader, since=at(0), until=at(48), uid=V)
    assert len(reader.calls) == 8  # 3 queries a report with daily sums, 1 each for the others
    for sql, params in reader.calls:
        assert "j.uid = :uid" in sql and params["uid"] == V
        assert str(V) not in sql
    reader.calls.clear()
    build(reader, "job")
    top_jobs(reader, since=at(0), until=at(48), n=3)
    for sql, params in reader.calls:
        assert "uid" not in sql and "uid" not in params


def test_top_jobs_and_codecarbon_keep_to_the_uid(dbs: Dbs) -> None:
    ids = dbs.ids
    assert top_jobs(dbs.both, since=at(0), until=at(48), n=6, uid=U) == [
        ids["train"],
        ids["idle"],
    ]
    assert set(top_jobs(dbs.both, since=at(0), until=at(48), n=6, uid=V)) == {
        ids["serve"],
        ids["mjob"],
    }
    assert top_jobs(dbs.both, since=at(0), until=at(48), n=6, uid=V + 1) == []
    for uid in (U, V):
        text, count = render_codecarbon(dbs.both, since=at(0), until=at(48), uid=uid)
        alone, alone_count = render_codecarbon(dbs.only[uid], since=at(0), until=at(48))
        assert (text, count) == (alone, alone_count)
        wanted = {ids[n] for n in V_JOBS} if uid == V else {ids["train"], ids["idle"]}
        experiments = {r["experiment_id"] for r in csv.DictReader(io.StringIO(text))}
        assert experiments == {f"ec0a0000-0000-4000-9000-{i:012x}" for i in wanted}
        rows = codecarbon_rows(dbs.both, since=at(0), until=at(48), uid=uid)
        assert len(rows) == count == (3 if uid == U else 2)
    text, count = render_codecarbon(dbs.both, since=at(0), until=at(48), uid=V + 1)
    assert count == 0 and len(text.splitlines()) == 1


def test_html_holds_only_the_uids_jobs(dbs: Dbs) -> None:
    ids = dbs.ids
    filtered = build(dbs.both, "job", V, days=True)
    page = render_html(filtered, dbs.both, now=at(48), uid=V)
    alone = render_html(build(dbs.only[V], "job", days=True), dbs.only[V], now=at(48))
    note = f'<li class="note">only runs of jobs submitted by uid {V} are counted</li>'
    assert note in page
    assert page.replace(note, "", 1) == alone
    groups = re.findall(r"<tr><td>(\d+ \w+)</td>", page)
    assert groups == [f"{ids['serve']} serve", f"{ids['mjob']} mjob"]
    captions = re.findall(r"<figcaption>job (\d+) ", page)
    assert sorted(map(int, captions)) == sorted(ids[n] for n in V_JOBS)
    # the uid defaults to the report's; another one is refused
    assert render_html(filtered, dbs.both, now=at(48), job_plots=0) == render_html(
        filtered, dbs.both, now=at(48), job_plots=0, uid=V
    )
    with pytest.raises(ValueError, match="pass the same uid"):
        render_html(filtered, dbs.both, now=at(48), uid=U)
    with pytest.raises(ValueError, match="pass the same uid"):
        render_html(build(dbs.both, "job"), dbs.both, now=at(48), uid=U)


def test_the_engine_reader_filters_the_same(dbs: Dbs) -> None:
    engine = open_engine(f"sqlite:///{dbs.path}")
    try:
        reader = EngineReader(engine)
        for by in GROUPS:
            slow = build_report(reader, since=at(0), until=at(48), by=by, days=True, uid=V)
            fast = build(dbs.both, by, V, days=True)
            assert (slow.to_json(), slow.daily) == (fast.to_json(), fast.daily)
        text, count = render_codecarbon(reader, since=at(0), until=at(48), uid=V)
        assert (text, count) == render_codecarbon(dbs.both, since=at(0), until=at(48), uid=V)
        assert top_jobs(reader, since=at(0), until=at(48), n=6, uid=U) == top_jobs(
            dbs.both, since=at(0), until=at(48), n=6, uid=U
        )
    finally:
        engine.dispose()


def test_any_database_filters_by_uid(any_db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    engine = open_engine(any_db_url)
    try:
        ids = seed_demo(engine, tmp_path / "runs")
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET uid = :u"), {"u": U})
            conn.execute(text("UPDATE jobs SET uid = :v WHERE name IN ('serve', 'mjob')"), {"v": V})
        reader = EngineReader(engine)
        for by in GROUPS:
            everyone = build_report(reader, since=at(0), until=at(48), by=by, days=True)
            parts = [
                build_report(reader, since=at(0), until=at(48), by=by, days=True, uid=uid)
                for uid in (U, V)
            ]
            assert everyone.runs == sum(p.runs for p in parts) == 4
        theirs = build_report(reader, since=at(0), until=at(48), by="job", days=True, uid=V)
        assert [r["group"] for r in theirs.rows] == [f"{ids['serve']} serve", f"{ids['mjob']} mjob"]
        assert set(theirs.daily) == {"average", "marginal"}
        assert top_jobs(reader, since=at(0), until=at(48), n=6, uid=U) == [
            ids["train"],
            ids["idle"],
        ]
        text_v, count = render_codecarbon(reader, since=at(0), until=at(48), uid=V)
        assert count == 2 and "vision" in text_v and "nlp" in text_v
    finally:
        engine.dispose()
