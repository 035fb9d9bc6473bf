"""`ecoq simulate` end to end: flags, files, summary table and JSON, errors."""

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cli_helpers import cli

T0 = datetime(2021, 7, 1, tzinfo=UTC)
H = timedelta(hours=1)
KEYS = ["jobs", "baseline_g", "scheduled_g", "savings_pct", "deadline_misses", "plan_seconds"]


def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    values = [300, 250, 200, 50, 40, 200, 300, 350] * 3
    trace = tmp_path / "trace.csv"
    with trace.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "DE"])
        w.writerows([[(T0 + i * H).isoformat(), v] for i, v in enumerate(values)])
    fc = tmp_path / "fc.csv"
    with fc.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["issued_at", "time", "zone", "value"])
        w.writerows(
            [[T0.isoformat(), (T0 + i * H).isoformat(), "DE", v] for i, v in enumerate(values)]
        )
    jobs = tmp_path / "jobs.csv"
    with jobs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "submit", "duration_h", "deadline", "zones", "interruptible", "power_kw"])
        for k in range(6):
            s = T0 + k * H
            w.writerow([f"j{k}", s.isoformat(), 2, (s + 12 * H).isoformat(), "DE", k % 2 == 0, 1.5])
    return trace, fc, jobs


def test_simulate_json_and_schedule(tmp_path: Path) -> None:
    trace, fc, jobs = inputs(tmp_path)
    out = tmp_path / "schedule.csv"
    args = ["simulate", "--intensity", str(trace), "--jobs", str(jobs), "--out", str(out)]
    result = cli(*args, "--forecast", str(fc), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary) == KEYS
    assert summary["jobs"] == 6 and summary["deadline_misses"] == 0
    assert summary["savings_pct"] > 50
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {f"j{k}" for k in range(6)}
    assert all(r["start"].endswith("Z") and r["zone"] == "DE" for r in rows)
    table = cli(*args, "--policy", "now", "--capacity", "2")
    assert table.exit_code == 0, table.output
    assert "savings (%)" in table.stdout and "deadline misses" in table.stdout
    noisy = cli(*args, "--forecast-error", "0.1", "--seed", "4", "--policy", "window", "--json")
    assert noisy.exit_code == 0 and json.loads(noisy.stdout)["jobs"] == 6


def test_simulate_bad_usage_exits_2(tmp_path: Path) -> None:
    trace, fc, jobs = inputs(tmp_path)
    base = [
        "simulate",
        "--intensity",
        str(trace),
        "--jobs",
        str(jobs),
        "--out",
        str(tmp_path / "o.csv"),
    ]
    both = cli(*base, "--forecast", str(fc), "--forecast-error", "0.1")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert cli(*base, "--policy", "magic").exit_code == 2
    assert cli(*base, "--capacity", "0").exit_code == 2
    missing = cli("simulate", "--intensity", str(tmp_path / "nope.csv"), "--jobs", str(jobs),
                  "--out", str(tmp_path / "o.csv"))  # fmt: skip
    assert missing.exit_code == 2 and "cannot read" in missing.stderr
    assert not (tmp_path / "o.csv").exists()
