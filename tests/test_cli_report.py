"""`ecoq report` and `ecoq show --plot` through the real CLI, on a database seeded through the
models."""

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.plots import PNG_SIGNATURE
from ecoq.report_codecarbon import CODECARBON_COLUMNS
from tests.cli_helpers import cli
from tests.seed import seed_demo

PERIOD = ("--since", "2026-11-01T00:00Z", "--until", "2026-11-04T00:00Z")


@pytest.fixture
def ids(tmp_path: Path) -> dict[str, int]:
    engine = open_engine(os.environ["ECOQ_DATABASE_URL"])
    ids = seed_demo(engine, tmp_path / "runs")
    engine.dispose()
    return ids


def test_table_is_the_default(ids: dict[str, int]) -> None:
    result = cli("report", *PERIOD)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "ecoq report 2026-11-01T00:00:00Z to 2026-11-04T00:00:00Z, by project" in out
    assert "vision" in out and "nlp" in out and "totals (each signal apart):" in out
    assert "average" in out and "marginal" in out


def test_json_totals(ids: dict[str, int]) -> None:
    for args in (("--format", "json"), ("--json",)):
        result = cli("report", *PERIOD, "--by", "job", *args)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        totals = {t["signal"]: t for t in data["totals"]}
        assert totals["average"]["realized_kg"] == pytest.approx(0.51)
        assert totals["marginal"]["avoided_kg"] == pytest.approx(0.2)
        assert data["by"] == "job" and len(data["rows"]) == 4
        assert data["since"] == "2026-11-01T00:00:00Z"


def test_csv_by_day(ids: dict[str, int]) -> None:
    result = cli("report", *PERIOD, "--by", "day", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["day"] for r in rows} == {"2026-11-02", "2026-11-03", "TOTAL"}


def test_codecarbon_and_html_files(ids: dict[str, int], tmp_path: Path) -> None:
    target = tmp_path / "emissions.csv"
    result = cli("report", *PERIOD, "--codecarbon", "--out", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {target} (4 runs)"
    header = target.read_text().splitlines()[0]
    assert tuple(header.split(",")) == CODECARBON_COLUMNS
    page = tmp_path / "report.html"
    result = cli("report", *PERIOD, "--format", "html", "--out", str(page))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("data:image/png;base64,") == 6


def test_by_job_in_each_format_leaves_the_garbage_collector_on(ids: dict[str, int]) -> None:
    import gc

    assert gc.isenabled()
    outputs = {}
    for fmt in ("table", "csv", "json"):
        result = cli("report", *PERIOD, "--by", "job", "--format", fmt)
        assert result.exit_code == 0, result.output
        assert gc.isenabled()  # paused while the report is built, back on after
        outputs[fmt] = result.stdout
    assert f"{ids['train']} train" in outputs["table"]
    assert f"{ids['mjob']} mjob,marginal,1,1," in outputs["csv"]
    rows = json.loads(outputs["json"])["rows"]
    assert [r["group"] for r in rows][:2] == [f"{ids['train']} train", f"{ids['serve']} serve"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--by", "team"), "--by 'team' is not one of job, project, user, zone, day"),
        (("--format", "xml"), "--format 'xml' is not one of"),
        (("--codecarbon", "--format", "json"), "--codecarbon writes CSV"),
        (("--since", "yesterday"), "--since 'yesterday' is not an ISO-8601 time"),
        (("--since", "1d", "--until", "2d"), "must be after --since"),
    ],
)
def test_bad_input_exits_2(args: tuple[str, ...], message: str) -> None:
    result = cli("report", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_no_database_gives_an_empty_report() -> None:
    result = cli("report", "--since", "7d")
    assert result.exit_code == 0, result.output
    assert "no finished runs" in result.stdout


def test_show_plot_writes_a_png_and_shows_the_figures(ids: dict[str, int], tmp_path: Path) -> None:
    png = tmp_path / "job.png"
    result = cli("show", str(ids["train"]), "--plot", str(png))
    assert result.exit_code == 0, result.output
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    assert f"plot written to {png}" in result.stdout
    assert "360 g realized, 600 g avoided, 62 %" in result.stdout
    assert "final: average realized intensity from file" in result.stdout
    assert "3 kWh (measured energy)" in result.stdout
    serve = cli("show", str(ids["serve"]))
    assert "0.5 kWh (estimate energy)" in serve.stdout
    assert "provisional: average forecast intensity" in serve.stdout


def test_show_plot_of_an_unknown_job_exits_2(ids: dict[str, int], tmp_path: Path) -> None:
    result = cli("show", "999", "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "no job with id 999" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_plots_without_matplotlib_name_the_extra(
    ids: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    result = cli("show", str(ids["train"]), "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == 1
    assert "pip install 'ecoq[plot]'" in result.stderr
    result = cli("report", *PERIOD, "--format", "html")
    assert result.exit_code == 1 and "pip install 'ecoq[plot]'" in result.stderr


def test_help_has_examples() -> None:
    result = cli("report", "--help")
    assert result.exit_code == 0
    assert "ecoq report --format html --out report.html" in result.stdout
    assert "--codecarbon" in result.stdout
