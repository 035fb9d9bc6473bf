"""A full daemon tick with 10,000 jobs in the database (SQLite file).

Seeds 10,000 pending jobs (5 min – 12 h long, 0–48 h of slack, a third with a GPU, one in ten
interruptible with at most 3 pauses), then times `Daemon.tick()` on a copy of that database:
reap, requests, expiry, one `plan_jobs` call over every waiting job (forecast fetched once, 72 h
at 5-minute steps, the typical profile beyond), writing 10,000 plans, and dispatch on a box with
8 GPUs and 16 job slots. The executor is a stub that launches nothing, so the tick's own cost is
measured, not process start-up. Also times the phases of the re-plan, a forced re-plan of the
planned jobs, and the next tick (nothing new to plan); cases without a capacity limit and with
contiguous jobs only are timed too. Writes the "Daemon tick with 10,000 jobs" section of
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/tick_speed.py [--jobs 10000] [--runs 3]
"""

import argparse
import os
import platform
import shutil
import signal as sigmod
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from ecoq.db import open_engine, session  # noqa: E402
from ecoq.forecasting import Forecast, IntensityPoint  # noqa: E402
from ecoq.forecasting.bundled import BundledProvider  # noqa: E402
from ecoq.models import Job  # noqa: E402
from ecoq.scheduler import replan  # noqa: E402
from ecoq.scheduler.daemon import Daemon, DaemonConfig  # noqa: E402
from ecoq.scheduler.executors import Launched, LaunchSpec, RunStatus  # noqa: E402
from ecoq.scheduler.forecasts import ForecastSource  # noqa: E402
from ecoq.scheduler.planning import plan_jobs  # noqa: E402
from ecoq.scheduler.queue import Queue  # noqa: E402
from ecoq.scheduler.replan import plan_batch, split  # noqa: E402
from ecoq.states import JobState  # noqa: E402

NOW = datetime(2026, 1, 5, 9, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)


class FiveMinuteProvider:
    """72 h of 5-minute values (a daily cycle with noise), as live providers give them."""

    name = "bench"

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        t = np.arange(72 * 12)
        values = 300 + 120 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 15, len(t))
        first = NOW.replace(minute=0)
        self.points = tuple(
            IntensityPoint(first + i * STEP, float(max(v, 1.0))) for i, v in enumerate(values)
        )

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        return Forecast(zone, "average", "bench", "5-minute test forecast", NOW, STEP, self.points)


class StubExecutor:
    """Launches nothing; every launched run reports itself running."""

    def launch(self, spec: LaunchSpec) -> Launched:
        return Launched(wrapper_pid=os.getpid(), started_at=datetime.now(UTC))

    def status(self, run_dir: Path) -> RunStatus:
        return RunStatus("running", pid=os.getpid(), started_at=NOW)

    def signal(self, run_dir: Path, sig: sigmod.Signals | int) -> bool:
        return True

    def terminate(self, run_dir: Path, grace_s: float = 0.0) -> None:
        return None

    def abandon(self, run_dir: Path) -> bool:
        return True


def seed(path: Path, n: int, every: int = 10) -> None:
    """`n` pending jobs; every `every`-th is interruptible (0: none)."""
    rng = np.random.default_rng(1)
    engine = open_engine(f"sqlite:///{path}")
    rows = []
    for i in range(n):
        minutes = int(rng.integers(1, 145)) * 5
        slack = timedelta(minutes=int(rng.integers(0, 48 * 12)) * 5)
        interruptible = every > 0 and i % every == 0
        rows.append(
            Job(
                name=f"job{i}",
                user="bench",
                uid=1000,
                command=["/bin/true", str(i)],
                cwd="/tmp",
                env={"PATH": "/usr/bin:/bin"},
                zone="DE",
                gpus=1 if i % 3 == 0 else 0,
                submitted_at=NOW,
                deadline=NOW + timedelta(minutes=minutes) + slack,
                duration_s=minutes * 60,
                duration_source="user",
                state=JobState.PENDING,
                updated_at=NOW,
                interruptible=interruptible,
                max_pauses=3 if interruptible else None,
            )
        )
    with session(engine) as s:
        s.add_all(rows)
        s.commit()
    engine.dispose()


def make_daemon(path: Path, data: Path, *, limited: bool = True) -> Daemon:
    """A daemon on box1 (8 GPUs and 16 job slots, or no limits) with the stub executor."""
    queue = Queue(open_engine(f"sqlite:///{path}"), clock=lambda: NOW)
    source = ForecastSource(FiveMinuteProvider(), bundled=BundledProvider(), clock=lambda: NOW)
    gpus, slots = (8, 16) if limited else (0, 0)
    cfg = DaemonConfig(data_dir=data, worker="box1", box_gpus=gpus, max_jobs=slots, zone="DE")
    return Daemon(queue, source, cfg, executor=StubExecutor())


def measure(n: int, runs: int, every: int, tmp: Path, *, limited: bool) -> dict[str, float]:
    """Median timings of the ticks (and the re-plan's phases) over `runs` fresh copies."""
    seeded = tmp / f"seeded-{every}.db"
    if not seeded.exists():
        seed(seeded, n, every)
    full, quiet, forced, phases = [], [], [], []
    started = planned = 0
    for run in range(runs):
        db = tmp / f"run{every}-{limited}-{run}.db"
        shutil.copy(seeded, db)
        daemon = make_daemon(db, tmp / f"data{every}-{limited}-{run}", limited=limited)
        began = time.perf_counter()
        report = daemon.tick()  # the first tick plans every job
        full.append(time.perf_counter() - began)
        started, planned = len(report.started), report.planned
        daemon.tick()  # records the started runs' pids
        began = time.perf_counter()
        daemon.tick()
        quiet.append(time.perf_counter() - began)
        daemon.request_replan()
        began = time.perf_counter()
        daemon.tick()
        forced.append(time.perf_counter() - began)
        phases.append(_phases(daemon))
        daemon.queue.engine.dispose()
    return {
        "full": statistics.median(full),
        "quiet": statistics.median(quiet),
        "forced": statistics.median(forced),
        "load": statistics.median(p[0] for p in phases),
        "plan": statistics.median(p[1] for p in phases),
        "write": statistics.median(p[2] for p in phases),
        "plan_jobs": statistics.median(p[3] for p in phases),
        "started": started,
        "planned": planned,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="ecoq-tick-"))
    try:
        cases = {
            "contiguous, no capacity limit": measure(args.jobs, args.runs, 0, tmp, limited=False),
            "contiguous, 8 GPUs / 16 slots": measure(args.jobs, args.runs, 0, tmp, limited=True),
            "1 in 10 interruptible (≤ 3 pauses), 8 GPUs / 16 slots": measure(
                args.jobs, args.runs, 10, tmp, limited=True
            ),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = "\n".join(
        f"| {name} | {m['full']:.2f} s | {m['forced']:.2f} s | {m['quiet'] * 1000:.0f} ms | "
        f"{m['load']:.2f} s | {m['plan']:.2f} s | {m['plan_jobs']:.2f} s | {m['write']:.2f} s |"
        for name, m in cases.items()
    )
    first = next(iter(cases.values()))
    body = f"""Command: `.venv/bin/python benchmarks/tick_speed.py --runs {args.runs}`; Python
{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs (load average
{load_before:.1f} before, {os.getloadavg()[0]:.1f} after: other work shared the machine); median
of {args.runs} runs, each on a fresh copy of the database.

Workload: a SQLite file holding {args.jobs:,} pending jobs (5 min – 12 h long, 0–48 h slack, a
third with 1 GPU), one box (no capacity limit, or 8 GPUs and 16 job slots, so that most jobs
cannot fit before their deadline: the capacity search's worst case), a 72 h forecast at 5-minute
steps (the typical profile beyond), and a stub executor that starts no processes. The first tick
plans all {first["planned"]:,} jobs in one `plan_jobs` call, writes the plans and starts the due
ones (at most 100 are looked at per tick, or as many as there are free slots); a forced re-plan
(forecast refresh) plans the waiting ones again; the next tick has nothing new to plan (without
a capacity limit it starts up to 100 more due jobs, a claim transaction each).

| case | first tick | forced re-plan tick | next tick | load | `plan_batch` | `plan_jobs` | write |
|---|---|---|---|---|---|---|---|
{rows}

Load: one query for every waiting and active job. `plan_batch`: turning the rows into requests,
`plan_jobs` and the runner-ups `ecoq show` explains (a second, capacity-free `plan_jobs` call),
and turning the placements into row fields; the `plan_jobs` column is the time inside those two
calls (the planner itself, in memory; nan if `replan` no longer calls it by that name).
Write: one transaction, executemany, compare-and-set per row. Fixed before this measurement:
`Queue.active` loaded each job's latest run with its own query (N+1), `expire_overdue` loaded
every waiting job each tick, and plans were written one transaction per job. The planner's
capacity search and pause-limited slot search were made faster since the previous measurement
(first tick 3.9, 5.8 and 19.3 s, `plan_batch` 1.8, 4.3 and 20.7 s for the three cases, same
command, 2026-11-29): running minima of the fitting windows, kept per site
until a cell there fills up, instead of scoring every candidate for every job; one slot-DP table
shared by every job that starts at the same cell, stepped by cells of work when pauses are free;
and plans without capacity reused when they still fit (see `ecoq.scheduler.fitting`,
`interruptible`, `slotdp`). What is left outside `plan_jobs` is the `plan_batch` glue
(`replan.py`) and the database. A capacity-triggered re-plan (a job ended on a limited site) waits
for 5× the last re-plan's duration, so a long queue never spends more than about a sixth of the
daemon's time re-planning.
"""
    print(body)
    if not args.no_write:
        write_section(f"## Daemon tick with {args.jobs:,} jobs", body)


def _phases(daemon: Daemon) -> tuple[float, float, float, float]:
    queue, now = daemon.queue, NOW
    site = daemon._site(now)
    began = time.perf_counter()
    jobs = queue.planning_jobs()
    todo, holding = split(jobs, site, all_waiting=True)
    load = time.perf_counter() - began
    inside: list[float] = []  # the planner's own share of `plan_batch`

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return plan_jobs(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - began)

    replan.plan_jobs = timed  # type: ignore[attr-defined]
    try:
        began = time.perf_counter()
        out = plan_batch(todo, holding, daemon.source, now, daemon.config.planner, site)
        plan = time.perf_counter() - began
    finally:
        replan.plan_jobs = plan_jobs  # type: ignore[attr-defined]
    began = time.perf_counter()
    queue.set_plans([(j.id, j.state, f) for j, f in out if j.id is not None])
    write = time.perf_counter() - began
    return load, plan, write, sum(inside) if inside else float("nan")  # nan: not seen


if __name__ == "__main__":
    main()
