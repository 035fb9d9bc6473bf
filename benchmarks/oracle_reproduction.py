"""Reproduce the perfect-knowledge savings table of Sukprasert et al. (EuroSys 2024).

Reads ../shared/data/electricitymaps/zones-123-2022-hourly-lca.csv and
oracle-temporal-shifting-2022.csv, plans every arrival with `ecoq.scheduler.planning.plan_jobs`
(the daemon's planner: vectorised window scoring for "defer", interruptible slots for
"defer_interrupt") on a perfect forecast with min_saving 0 and unlimited free pauses, and compares
each row's % saving. Rules (../shared/data/README.md): N = 8,760 hours, arrivals t = 0 … N−J−1;
"defer" starts in [t, min(t+S, N−J)]; "defer_interrupt" runs the J cheapest hours of
[t, min(t+S+J, N)). Writes the "Oracle reproduction" section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/oracle_reproduction.py [--data ../shared/data] [--zones DE,GB]
"""

import argparse
import csv
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from ecoq.forecasting import Forecast, IntensityPoint  # noqa: E402
from ecoq.scheduler.planning import JobRequest, plan_jobs  # noqa: E402
from ecoq.scheduler.sites import Site  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZONES = ["DE", "GB", "FR", "US-CAL-CISO", "SE-SE1", "IN-WE"]
SLACKS = [24, 168, 480, 720]
T0 = datetime(2022, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
TOLERANCE = 0.05


def savings(values: np.ndarray, zone: str, job_h: int, slack_h: int) -> tuple[float, float]:
    """% saving of defer and defer_interrupt over all arrivals, planned by plan_jobs."""
    n = len(values)
    forecast = Forecast(
        zone, "average", "oracle", "perfect forecast", T0, H,
        tuple(IntensityPoint(T0 + i * H, float(v)) for i, v in enumerate(values)),
    )  # fmt: skip
    site = [Site(zone, zone)]
    arrivals = range(n - job_h)
    cum = np.concatenate(([0.0], np.cumsum(values)))
    base = np.array([(cum[t + job_h] - cum[t]) / job_h for t in arrivals])
    out = []
    for interruptible in (False, True):
        jobs = []
        for t in arrivals:
            end = (
                min(t + slack_h + job_h, n)
                if interruptible
                else min(t + slack_h, n - job_h) + job_h
            )
            jobs.append(
                JobRequest(t, T0 + t * H, T0 + end * H, job_h * H, (zone,),
                           interruptible=interruptible, pause="checkpoint")
            )  # fmt: skip
        placed = plan_jobs(jobs, site, {zone: forecast}, now=T0, min_saving=0.0)
        means = np.array([p.mean_g_per_kwh for p in placed], dtype=np.float64)
        out.append(100.0 * float((base - means).sum() / base.sum()))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--zones", default=",".join(ZONES))
    parser.add_argument("--no-write", action="store_true", help="Do not update RESULTS.md.")
    args = parser.parse_args()
    zones = args.zones.split(",")
    em = args.data / "electricitymaps"
    with (em / "zones-123-2022-hourly-lca.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    expected: dict[tuple[str, int, int], tuple[float, float]] = {}
    with (em / "oracle-temporal-shifting-2022.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            key = (r["zone"], int(r["job_h"]), int(r["slack_h"]))
            expected[key] = (float(r["defer_saving_pct"]), float(r["defer_interrupt_saving_pct"]))
    lines = [
        "| zone | job h | slack h | defer % (paper) | defer % (ecoq) | interrupt % (paper) "
        "| interrupt % (ecoq) | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    began = time.perf_counter()
    for zone in zones:
        values = np.array([float(r[zone]) for r in rows])
        for job_h in sorted({k[1] for k in expected if k[0] == zone}):
            for slack_h in SLACKS:
                if (zone, job_h, slack_h) not in expected:
                    continue
                d_ref, i_ref = expected[(zone, job_h, slack_h)]
                d, i = savings(values, zone, job_h, slack_h)
                diff = max(abs(d - d_ref), abs(i - i_ref))
                worst = max(worst, diff)
                lines.append(
                    f"| {zone} | {job_h} | {slack_h} | {d_ref:.4f} | {d:.4f} | {i_ref:.4f} "
                    f"| {i:.4f} | {diff:.4f} |"
                )
                print(lines[-1], flush=True)
    spent = time.perf_counter() - began
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    body = (
        "Command: `.venv/bin/python benchmarks/oracle_reproduction.py` (data: "
        "`../shared/data/electricitymaps`, perfect forecast, `min_saving` 0, unlimited free "
        "pauses; planned by `plan_jobs`, the daemon's planner).\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d}; {len(lines) - 2} rows in {spent:.0f} s.\n\n"
        f"**Largest per-row absolute difference: {worst:.4f} points (target ≤ {TOLERANCE}): "
        f"{verdict}.**\n\n" + "\n".join(lines)
    )
    if not args.no_write:
        write_section("## Oracle reproduction (perfect forecast, 2022)", body)
    print(f"worst diff {worst:.4f} points: {verdict} ({spent:.0f} s)")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
