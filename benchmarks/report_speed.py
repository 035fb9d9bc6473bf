"""Report speed: `ecoq report` over 100,000 stored runs, end to end (a real `ecoq` process).

Run: `python benchmarks/report_speed.py [--runs 100000] [--repeat 3]` from the repository root
with the venv's Python. It creates a SQLite database at the current schema, fills it with
`--runs` finished and accounted jobs (one run each, over 30 days, three projects, two zones, both
signals, marked epochs and inferences, hourly forecasts and realized values) using executemany,
then times each report format as a subprocess (median of `--repeat`, after one warm-up) and
writes the "Report speed" section of benchmarks/RESULTS.md. Target (issue 6): under 5 s.
"""

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

SECTION = "## Report speed"
TARGET_S = 5.0
START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 30
PERIOD = ["--since", "2026-10-01T00:00Z", "--until", "2026-11-01T00:00Z"]


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores UTC times in SQLite


def seed(path: Path, n: int) -> None:
    """Fill a database at the current schema with `n` accounted jobs and runs."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ecoq.db import open_engine; open_engine(sys.argv[1])",
            f"sqlite:///{path}",
        ],
        check=True,
    )
    rng = random.Random(6)
    jobs: list[dict[str, object]] = []
    runs: list[dict[str, object]] = []
    units: list[tuple[int, str, float]] = []
    for i in range(1, n + 1):
        submitted = START + timedelta(seconds=rng.uniform(0, (DAYS - 1) * 86400))
        delay = timedelta(hours=rng.choice([0, 0, 1, 3, 6]))
        started = submitted + delay
        hours = rng.uniform(0.2, 4)
        finished = started + timedelta(hours=hours)
        deadline = submitted + timedelta(hours=hours + rng.choice([2, 6, 12, 24]))
        energy = hours * rng.uniform(200, 1500) * 3600
        marginal = i % 5 == 0
        source = "watttime" if marginal else "electricitymaps"
        realized = energy / 3.6e6 * rng.uniform(100, 400)
        counterfactual = realized * rng.uniform(1.0, 1.4)
        final = finished < START + timedelta(days=DAYS - 7)
        figures = {
            "energy_j": energy,
            "realized_g": realized,
            "counterfactual_g": counterfactual,
            "avoided_g": counterfactual - realized,
            "accounting": "final" if final else "provisional",
            "accounting_signal": "marginal" if marginal else "average",
            "intensity_source": source,
            "intensity_kind": "realized" if final else "forecast",
            "energy_method": "measured",
        }
        times = {"started_at": ts(started), "finished_at": ts(finished)}
        jobs.append(
            {
                "id": i,
                "name": f"job{i}",
                "project": ("vision", "nlp", "speech")[i % 3],
                "user": f"user{i % 7}",
                "uid": 1000,
                "command": '["python", "train.py"]',
                "cwd": "/home",
                "env": "{}",
                "zone": "CAISO_NORTH" if marginal else "DE",
                "gpus": 1,
                "submitted_at": ts(submitted),
                "deadline": ts(deadline),
                "duration_s": int(hours * 3600),
                "duration_source": "user",
                "drop_if_late": 0,
                "state": "succeeded",
                "late": 0,
                "held": 0,
                "run_now": 0,
                "planned_start": ts(started),
                "plan_signal": figures["accounting_signal"],
                "plan_source": source,
                "plan_label": source,
                "forecast_issued_at": ts(START),
                "worker": "box:1",
                "exit_code": 0,
                "updated_at": ts(finished),
                **times,
                **figures,
            }
        )
        runs.append(
            {
                "id": i,
                "job_id": i,
                "worker": "box:1",
                "host": "box",
                "run_dir": f"/data/jobs/{i}/r",
                "gpu_indices": "[0]",
                "claimed_at": ts(started),
                "exit_code": 0,
                "accounted_at": ts(finished),
                "intensity_zone": jobs[-1]["zone"],
                "intensity_label": f"{source} {figures['intensity_kind']}",
                "estimate_energy_j": 0.0,
                "cpu_energy_j": energy * 0.2,
                "gpu_energy_j": energy * 0.8,
                "meter_errors": 0,
                "pue": 1.0,
                "facility_energy_j": energy,
                "counterfactual_start": ts(submitted),
                "delay_s": delay.total_seconds(),
                "deadline_missed": finished > deadline,
                **times,
                **figures,
            }
        )
        units.append((i, "epoch", rng.randint(1, 20)) if i % 2 else (i, "inference", 1000))
    conn = sqlite3.connect(path)
    for table, rows in (("jobs", jobs), ("runs", runs)):
        names = list(rows[0])
        columns = ", ".join(f'"{c}"' for c in names)
        marks = ", ".join(f":{c}" for c in names)
        conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    conn.executemany("INSERT INTO run_units (run_id, unit, count) VALUES (?, ?, ?)", units)
    forecasts = []
    for zone, source, signal in (
        ("DE", "electricitymaps", "average"),
        ("CAISO_NORTH", "watttime", "marginal"),
    ):
        for realized in (0, 1):
            points = [
                [(START + timedelta(hours=h)).timestamp(), 200 + 100 * ((h % 24) < 8), None]
                for h in range((DAYS + 2) * 24)
            ]
            end = START + timedelta(hours=(DAYS + 2) * 24)
            forecasts.append(
                (
                    zone,
                    source,
                    signal,
                    f"{source} {'realized' if realized else 'forecast'}",
                    realized,
                    ts(START),
                    ts(START),
                    3600,
                    ts(START),
                    ts(end),
                    json.dumps(points),
                )
            )
    conn.executemany(
        "INSERT INTO forecasts (zone, source, signal, label, realized, issued_at, fetched_at, "
        'step_s, start, "end", points) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        forecasts,
    )
    conn.commit()
    conn.close()


def timed(argv: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of `argv`, seconds."""
    subprocess.run(argv, env=env, check=True, capture_output=True)  # warm-up
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    ecoq = str(Path(sys.executable).with_name("ecoq"))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ecoq.db"
        t0 = time.perf_counter()
        seed(db, args.runs)
        seed_s = time.perf_counter() - t0
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOQ_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            ECOQ_PATHS__DATA_DIR=tmp,
            ECOQ_DATABASE_URL=f"sqlite:///{db}",
            XDG_CONFIG_HOME=f"{tmp}/config",
        )
        out = f"{tmp}/out"
        cases = [
            ("table, by project", ["report", *PERIOD]),
            (f"table, by job ({args.runs:,} rows)", ["report", *PERIOD, "--by", "job"]),
            ("json, by job", ["report", *PERIOD, "--by", "job", "--json"]),
            ("csv, by job", ["report", *PERIOD, "--by", "job", "--format", "csv"]),
            ("json, by day", ["report", *PERIOD, "--by", "day", "--json"]),
            ("csv, by user", ["report", *PERIOD, "--by", "user", "--format", "csv"]),
            ("CodeCarbon csv", ["report", *PERIOD, "--codecarbon", "--out", out + ".csv"]),
            ("html with 8 plots", ["report", *PERIOD, "--format", "html", "--out", out + ".html"]),
            (
                "html, by job",
                ["report", *PERIOD, "--by", "job", "--format", "html", "--out", out + ".html"],
            ),
        ]
        load_before = os.getloadavg()[0]
        rows = [(label, timed([ecoq, *argv], env, args.repeat)) for label, argv in cases]
        load_after = os.getloadavg()[0]
    lines = [
        f"Command: `python benchmarks/report_speed.py --runs {args.runs} --repeat {args.repeat}` "
        f"(each report a real `ecoq report` process, median of {args.repeat} after one warm-up; "
        f"seeding {args.runs:,} jobs and runs with executemany took {seed_s:.1f} s).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, measured {time.strftime('%Y-%m-%d')} (load average "
        f"{load_before:.1f} before, {load_after:.1f} after).",
        "",
        f"| `ecoq report` over {args.runs:,} runs | wall time | CPU time | target | ok |",
        "|---|---|---|---|---|",
    ]
    for label, (wall, cpu) in rows:
        ok = "yes" if wall < TARGET_S else ("yes (CPU)" if cpu < TARGET_S else "NO")
        lines.append(f"| {label} | {wall:.2f} s | {cpu:.2f} s | < {TARGET_S:.0f} s | {ok} |")
    walls = {label: wall for label, (wall, _) in rows}
    plots_s = walls["html with 8 plots"] - walls["table, by project"]
    lines += [
        "",
        "CPU time is the process's user + system time: on a shared machine the wall time also "
        "holds the time other processes had the CPU. `--by job` prints one line per job "
        f"({args.runs:,} lines; JSON puts each row object on one line past 1,000 rows) and "
        "reads each run, adding up in Python the few jobs with several runs; the default and "
        "the other groupings sum in SQL to a few rows, and HTML adds one grouped query for its "
        f"daily sums. `html, by job` adds a {args.runs:,}-row table to the same 8 plots "
        f"(importing matplotlib and drawing them: the {plots_s:.1f} s between `html with 8 "
        "plots` and `table, by project`).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
