"""Savings under real day-ahead forecast error (DACF: CISO, PJM, ERCO, July–December 2021).

For each region: TRACE.csv = the actual hourly intensity, FORECASTS.csv = the DACF day-ahead
forecast, each day's 24 values issued at 00:00 UTC the day before. One job per hour, 1–8 h long,
deadline 6–24 h after submission (at least its length), seeded. Each policy is replayed by
`ecoq.scheduler.simulate` (the code behind `ecoq simulate`): `now`, `window` (best window once at
submission, on the forecast), `ecoq` (re-planned at every submission and forecast issue, on the
forecast) and `oracle` (perfect forecast). Writes the "Forecast error (DACF)" section of
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/forecast_error_savings.py [--data ../shared/data] [--seed 1]
"""

import argparse
import csv
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from ecoq.scheduler.simdata import read_forecasts, read_jobs, read_trace  # noqa: E402
from ecoq.scheduler.simulate import POLICIES, simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ["CISO", "PJM", "ERCO"]


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def write_inputs(source: Path, region: str, out: Path, seed: int) -> int:
    """Write trace.csv, forecasts.csv and jobs.csv for one region; returns the job count."""
    with source.open(newline="") as f:
        rows = list(csv.DictReader(f))
    times = [datetime.fromisoformat(r["UTC time"]).replace(tzinfo=UTC) for r in rows]
    with (out / "trace.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", region])
        for t, r in zip(times, rows, strict=True):
            w.writerow([_iso(t), r["carbon_intensity"]])
    with (out / "forecasts.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["issued_at", "time", "zone", "value"])
        for t, r in zip(times, rows, strict=True):
            day = t.replace(hour=0, minute=0, second=0)
            w.writerow(
                [_iso(day - timedelta(days=1)), _iso(t), region, r["carbon_from_src_forecasts"]]
            )
    rng = random.Random(seed)
    last = times[-1] + timedelta(hours=1)
    count = 0
    with (out / "jobs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "submit", "duration_h", "deadline", "zones", "interruptible", "power_kw"])
        for t in times:
            duration = rng.randint(1, 8)
            deadline = t + timedelta(hours=max(duration, rng.randint(6, 24)))
            if deadline > last:
                continue
            w.writerow([f"{region}-{count}", _iso(t), duration, _iso(deadline), region, "false", 1])
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--regions", default=",".join(REGIONS))
    parser.add_argument("--no-write", action="store_true", help="Do not update RESULTS.md.")
    args = parser.parse_args()
    lines = [
        "| region | jobs | now % | window % (forecast) | ecoq % (forecast) | oracle % "
        "| ecoq / oracle | ecoq interruptible % (forecast) | oracle interruptible % "
        "| deadline misses (all six runs) | ecoq plan s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    misses_total = 0
    began = time.perf_counter()
    for region in args.regions.split(","):
        source = args.data / "dacf" / region / f"{region}_carbon_from_src_prod_forecasts_direct.csv"
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            n = write_inputs(source, region, d, args.seed)
            trace = read_trace(d / "trace.csv")
            log = read_forecasts(d / "forecasts.csv", trace)
            jobs = read_jobs(d / "jobs.csv")
        res = {p: simulate(trace, jobs, policy=p, forecasts=log, min_saving=0.02) for p in POLICIES}
        split = [replace(j, interruptible=True, max_pauses=2) for j in jobs]
        res["split"] = simulate(trace, split, policy="ecoq", forecasts=log, min_saving=0.02)
        res["split-oracle"] = simulate(trace, split, policy="oracle", min_saving=0.02)
        misses = [res[p].deadline_misses for p in res]
        misses_total += sum(misses)
        ratio = (
            res["ecoq"].savings_pct / res["oracle"].savings_pct if res["oracle"].savings_pct else 0
        )
        lines.append(
            f"| {region} | {n} | {res['now'].savings_pct:.2f} | {res['window'].savings_pct:.2f} "
            f"| {res['ecoq'].savings_pct:.2f} | {res['oracle'].savings_pct:.2f} | {ratio:.2f} "
            f"| {res['split'].savings_pct:.2f} | {res['split-oracle'].savings_pct:.2f} "
            f"| {'/'.join(map(str, misses))} | {res['ecoq'].plan_seconds:.1f} |"
        )
        print(lines[-1], flush=True)
    spent = time.perf_counter() - began
    body = (
        "Command: `.venv/bin/python benchmarks/forecast_error_savings.py --seed "
        f"{args.seed}` (data: `../shared/data/dacf`, direct emission factors; DACF day-ahead "
        "forecast, each day's values issued at 00:00 UTC the day before; beyond the newest "
        "forecast the planner uses daily persistence of observed values). One job per hour, "
        "1–8 h, deadline 6–24 h after submission, min_saving 2 %, unlimited capacity. Savings are "
        "measured on the actual intensity against running each job at submission. "
        "The interruptible columns replay the same jobs allowed up to 2 pauses (checkpoint "
        "pauses, 1-hour slots). With one forecast issue a day that already covers every "
        "deadline, re-planning learns nothing new, so `ecoq` equals `window` on contiguous jobs "
        "here; its gains come from relocation, interruptible slots, capacity and forecasts "
        "that improve as the hour nears.\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d} in {spent:.0f} s. Deadline misses in all: "
        f"{misses_total} (must be 0).\n\n" + "\n".join(lines)
    )
    if not args.no_write:
        write_section("## Forecast error (DACF day-ahead forecasts, 2021)", body)
    sys.exit(0 if misses_total == 0 else 1)


if __name__ == "__main__":
    main()
