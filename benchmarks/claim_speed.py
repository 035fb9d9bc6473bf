"""Claim throughput and dispatch latency of `ecoq daemon`: SQLite, and 1 and 3 daemons on one
PostgreSQL (issue 7).

Run: `python benchmarks/claim_speed.py [--rounds 2] [--backlog 150] [--spread 60]` from the
repository root with the venv's Python. PostgreSQL comes from `tests/services/postgres.sh` (a
throwaway server on a free port, stopped at the end); `--configs sqlite` skips it.

Each configuration gets a fresh database, seeded directly through `Queue` with short jobs whose
command records its own start (`date +%s.%N >> MARKS/$ECOQ_JOB_ID`), and its daemons run as real
`python -m ecoq daemon` processes (separate data folders and site names, no GPUs, RAPL and NVML
off, `site.max_jobs` and `daemon.tick_interval_s` as given). Every job is planned with `run_now`
set: the daemon's first tick re-plans every waiting job (`replan(all_waiting=True)`), which would
move a plain planned job to "now" (or, under `min_saving`, to a cleaner hour); `run_now` jobs keep
their plan, and they are dispatched like any other planned job (`Queue.due` → `claim` → launch).
Jobs are first planned a day ahead; once the daemons heartbeat, one `Queue.set_plans`
transaction moves the planned starts of one phase:

- **backlog**: `--backlog` jobs all due at once. Throughput = jobs started / (last start − first
  start), from the jobs' own start times.
- **spread**: `--spread` jobs with planned starts spread evenly over `--spread-s` seconds, the
  first a few ticks ahead. Latency = job process start − its stored `planned_start`.

Each round runs both phases on the same daemons; throughput is the median over rounds, latency
percentiles are over every spread job of every round. CPU time per started job is split into the
daemons' own, their children's (the ecoq wrapper and the job, reaped by the daemon) and the
PostgreSQL server's. Prints a table and writes the "Claim throughput and dispatch latency"
section of benchmarks/RESULTS.md.
"""

import argparse
import contextlib
import os
import platform
import resource
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from sqlalchemy import create_engine, func, text
from sqlalchemy.engine import make_url
from sqlmodel import col, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from ecoq.db import open_engine, session  # noqa: E402
from ecoq.models import Job  # noqa: E402
from ecoq.scheduler.queue import JobSpec, Queue  # noqa: E402
from ecoq.states import TERMINAL, JobState  # noqa: E402

SECTION = "## Claim throughput and dispatch latency"
ROOT = Path(__file__).resolve().parent.parent
S = JobState
CONFIGS = {"sqlite": ("sqlite", 1), "pg1": ("postgresql", 1), "pg3": ("postgresql", 3)}


@dataclass
class Phase:
    """One phase's measurements."""

    kind: str
    jobs: int
    started: int = 0
    duplicates: int = 0
    not_succeeded: int = 0
    timed_out: bool = False
    throughput: float | None = None
    first_delay_s: float | None = None
    drain_s: float | None = None
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    load1: float = 0.0


@dataclass
class Result:
    name: str
    backend: str
    daemons: int
    phases: list[Phase] = field(default_factory=list)
    per_daemon: dict[str, int] = field(default_factory=dict)
    moved: int = 0
    startup_s: float = 0.0


# -- helpers ---------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, linear interpolation."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spec(marks: Path, now: datetime) -> JobSpec:
    script = f"date +%s.%N >> {shlex.quote(str(marks))}/$ECOQ_JOB_ID"
    return JobSpec(
        command=["/bin/sh", "-c", script],
        cwd=str(marks),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        user="bench",
        uid=os.getuid(),
        zone="DE",
        deadline=now + timedelta(days=3),
        duration=timedelta(seconds=1),
        duration_source="user",
        name="claim-bench",
    )


def seed(queue: Queue, marks: Path, n: int, far: datetime) -> list[int]:
    """`n` jobs, stored in one transaction, then planned at `far` with `run_now` set."""
    now = datetime.now(UTC)
    jobs = [queue.new_job(spec(marks, now)) for _ in range(n)]
    with session(queue.engine) as s:
        s.add_all(jobs)
        s.commit()
    ids = [j.id for j in jobs if j.id is not None]
    assert len(ids) == n
    plans = [(i, S.PENDING, {"planned_start": far, "run_now": True}) for i in ids]
    queue.set_plans(plans)
    return ids


def plan_at(queue: Queue, starts: dict[int, datetime]) -> None:
    queue.set_plans([(i, S.PLANNED, {"planned_start": t}) for i, t in starts.items()])


def starts_of(marks: Path, ids: list[int]) -> tuple[dict[int, float], int]:
    """Each job's recorded start (its first line) and how many jobs started more than once."""
    out: dict[int, float] = {}
    dup = 0
    for i in ids:
        try:
            lines = (marks / str(i)).read_text().split()
        except FileNotFoundError:
            continue
        if lines:
            out[i] = float(lines[0])
            dup += len(lines) > 1
    return out, dup


def count_terminal(queue: Queue, ids: list[int]) -> tuple[int, int]:
    """(terminal, succeeded) among `ids`."""
    with session(queue.engine) as s:
        rows = s.exec(
            select(Job.state, func.count())
            .where(col(Job.id).in_(ids), col(Job.state).in_([str(x) for x in TERMINAL]))
            .group_by(Job.state)
        ).all()
    done = sum(n for _, n in rows)
    ok = sum(n for st, n in rows if st == str(S.SUCCEEDED))
    return done, ok


def wait_done(queue: Queue, marks: Path, ids: list[int], timeout_s: float) -> tuple[int, bool]:
    """Wait until every job has ended; returns (succeeded, timed out). Polls the marks folder
    (cheap) until every job started, then the database."""
    limit = time.monotonic() + timeout_s
    want = {str(i) for i in ids}
    while time.monotonic() < limit:
        if want <= set(os.listdir(marks)):
            break
        time.sleep(0.25)
    while time.monotonic() < limit:
        done, ok = count_terminal(queue, ids)
        if done == len(ids):
            return ok, False
        time.sleep(0.5)
    return count_terminal(queue, ids)[1], True


class Cpu:
    """CPU seconds of the daemons (own, and reaped children: wrappers and jobs) and of the
    PostgreSQL server (postmaster, its live children, and the exited ones it reaped)."""

    def __init__(self, daemons: list[subprocess.Popen[bytes]], postmaster: int | None) -> None:
        self.daemons = [psutil.Process(p.pid) for p in daemons]
        self.pg = psutil.Process(postmaster) if postmaster else None

    def sample(self) -> dict[str, float]:
        own = children = pg = 0.0
        for proc in self.daemons:
            t = proc.cpu_times()
            own += t.user + t.system
            children += t.children_user + t.children_system
        if self.pg is not None:
            t = self.pg.cpu_times()
            pg = t.user + t.system + t.children_user + t.children_system
            for child in self.pg.children():
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    pg += c.user + c.system
        return {"daemon": own, "wrapper+job": children, "postgres": pg}


def start_daemons(
    url: str, work: Path, count: int, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECOQ_")}
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    procs = []
    for k in range(count):
        name = f"d{k}"
        env = dict(
            base,
            XDG_CONFIG_HOME=str(work / "config"),
            ECOQ_DATABASE_URL=url,
            ECOQ_PATHS__DATA_DIR=str(work / name),
            ECOQ_SITE__NAME=name,
            ECOQ_SITE__MAX_JOBS=str(args.max_jobs),
            ECOQ_SITE__GPUS="0",
            ECOQ_PLANNER__MIN_SAVING="1",
            ECOQ_DAEMON__TICK_INTERVAL_S=str(args.tick),
            ECOQ_METERS__RAPL="false",
            ECOQ_METERS__NVML="false",
        )
        with open(work / f"{name}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ecoq", "daemon"],
                    env=env,
                    stdout=log,
                    stderr=log,
                    cwd=work,
                )
            )
    return procs


def stop_daemons(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- one configuration -----------------------------------------------------------------------
def run_config(
    name: str, url: str, work: Path, postmaster: int | None, args: argparse.Namespace
) -> Result:
    backend, count = CONFIGS[name]
    result = Result(name, backend, count)
    work.mkdir(parents=True)
    marks = work / "marks"
    marks.mkdir()
    engine = open_engine(url)
    queue = Queue(engine)
    far = datetime.now(UTC) + timedelta(days=1)
    rounds = [
        (seed(queue, marks, args.backlog, far), seed(queue, marks, args.spread, far))
        for _ in range(args.rounds)
    ]
    intended: dict[int, datetime] = {}
    began = time.monotonic()
    procs = start_daemons(url, work, count, args)
    try:
        limit = time.monotonic() + 60
        while queue.live_daemons(datetime.now(UTC) - timedelta(seconds=30)) < count:
            if time.monotonic() > limit or any(p.poll() is not None for p in procs):
                raise SystemExit(f"{name}: the daemons did not start; see {work}/d*.log")
            time.sleep(0.1)
        result.startup_s = time.monotonic() - began
        time.sleep(2 * args.tick)  # the first tick (a full re-plan) is over
        cpu = Cpu(procs, postmaster)
        for backlog, spread in rounds:
            # Backlog: everything due now.
            before = cpu.sample()
            due = datetime.now(UTC)
            plan_at(queue, dict.fromkeys(backlog, due))
            intended.update(dict.fromkeys(backlog, due))
            phase = Phase("backlog", len(backlog))
            ok, phase.timed_out = wait_done(queue, marks, backlog, 60 + len(backlog))
            starts, phase.duplicates = starts_of(marks, backlog)
            phase.started, phase.not_succeeded = len(starts), len(backlog) - ok
            phase.cpu = {k: v - before[k] for k, v in cpu.sample().items()}
            phase.load1 = os.getloadavg()[0]
            if len(starts) > 1:
                first, last = min(starts.values()), max(starts.values())
                phase.throughput = len(starts) / (last - first)
                phase.first_delay_s = first - due.timestamp()
                phase.drain_s = last - due.timestamp()
            result.phases.append(phase)
            # Spread: one job every spread_s / n seconds, the first a few ticks ahead.
            before = cpu.sample()
            t0 = datetime.now(UTC) + timedelta(seconds=max(2.0, 3 * args.tick))
            step = timedelta(seconds=args.spread_s / len(spread))
            plan = {i: t0 + k * step for k, i in enumerate(spread)}
            plan_at(queue, plan)
            intended.update(plan)
            phase = Phase("spread", len(spread))
            ok, phase.timed_out = wait_done(queue, marks, spread, args.spread_s + 60 + len(spread))
            starts, phase.duplicates = starts_of(marks, spread)
            phase.started, phase.not_succeeded = len(starts), len(spread) - ok
            phase.cpu = {k: v - before[k] for k, v in cpu.sample().items()}
            phase.load1 = os.getloadavg()[0]
            phase.latencies = [starts[i] - plan[i].timestamp() for i in starts]
            result.phases.append(phase)
    finally:
        stop_daemons(procs)
    all_ids = [i for b, s in rounds for i in (*b, *s)]
    with session(engine) as s:
        rows = s.exec(
            select(Job.id, Job.worker, Job.planned_start).where(col(Job.id).in_(all_ids))
        ).all()
    for job_id, worker, planned in rows:
        result.per_daemon[worker or "-"] = result.per_daemon.get(worker or "-", 0) + 1
        stored = planned if planned.tzinfo else planned.replace(tzinfo=UTC)
        if abs((stored - intended[job_id]).total_seconds()) > 1e-3:
            result.moved += 1
    engine.dispose()
    return result


def pg_database(server_url: str, name: str) -> str:
    """A fresh database `name` on the server; its URL."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def pg_version(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        version = str(conn.execute(text("SHOW server_version")).scalar())
    engine.dispose()
    return version.split()[0]


def startup_cpu_ms(code: str, runs: int = 15) -> float:
    """Median CPU time (user + system, ms) of `python -c CODE` in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)  # warm the caches
    times = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        times.append(1000 * spent)
    return statistics.median(times)


# -- report ----------------------------------------------------------------------------------
def med(values: list[float | None], fmt: str) -> str:
    """The median of the values that are there, formatted; "-" when none is."""
    there = [v for v in values if v is not None]
    return fmt.format(statistics.median(there)) if there else "-"


def summarise(r: Result, args: argparse.Namespace) -> dict[str, str]:
    backlog = [p for p in r.phases if p.kind == "backlog"]
    spread = [p for p in r.phases if p.kind == "spread"]
    tput = [p.throughput for p in backlog if p.throughput is not None]
    lat = [x for p in spread for x in p.latencies]
    started = sum(p.started for p in backlog)
    cpu = {
        k: sum(p.cpu.get(k, 0.0) for p in backlog) for k in ("daemon", "wrapper+job", "postgres")
    }
    per_job = {k: 1000 * v / started if started else float("nan") for k, v in cpu.items()}
    trouble = sum(p.duplicates for p in r.phases), sum(p.not_succeeded for p in r.phases)
    timeouts = sum(p.timed_out for p in r.phases)
    bound = r.daemons * args.max_jobs / args.tick
    return {
        "backend": "SQLite" if r.backend == "sqlite" else "PostgreSQL",
        "daemons": str(r.daemons),
        "throughput": (
            f"{statistics.median(tput):.1f}"
            + (f" ({min(tput):.1f}–{max(tput):.1f})" if len(tput) > 1 else "")
            if tput
            else "-"
        ),
        "first": med([p.first_delay_s for p in backlog], "{:.2f} s"),
        "drain": med([p.drain_s for p in backlog], "{:.1f} s"),
        "p50": f"{1000 * pct(lat, 0.5):.0f} ms" if lat else "-",
        "p99": f"{1000 * pct(lat, 0.99):.0f} ms" if lat else "-",
        "max": f"{1000 * max(lat):.0f} ms" if lat else "-",
        "n_lat": str(len(lat)),
        "cpu": " / ".join(
            f"{per_job[k]:.0f}" if r.backend != "sqlite" or k != "postgres" else "-"
            for k in ("daemon", "wrapper+job", "postgres")
        ),
        "bound": f"{bound:.0f}",
        "per_daemon": ", ".join(f"{k} {v}" for k, v in sorted(r.per_daemon.items())),
        "checks": f"{trouble[0]} / {trouble[1]} / {r.moved}"
        + (f"; {timeouts} timed out" if timeouts else ""),
        "load": "–".join(
            f"{x:.1f}" for x in (min(p.load1 for p in r.phases), max(p.load1 for p in r.phases))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="backlog + spread rounds per config")
    parser.add_argument("--backlog", type=int, default=150, help="jobs due at once per round")
    parser.add_argument("--spread", type=int, default=60, help="jobs spread over --spread-s")
    parser.add_argument("--spread-s", type=float, default=20.0)
    parser.add_argument("--tick", type=float, default=1.0, help="daemon.tick_interval_s")
    parser.add_argument("--max-jobs", type=int, default=64, help="site.max_jobs per daemon")
    parser.add_argument("--configs", default="sqlite,pg1,pg3", help="of sqlite, pg1, pg3")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it: logs")
    args = parser.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; use {', '.join(CONFIGS)}")

    began = time.monotonic()
    load_before = os.getloadavg()
    bare_ms = startup_cpu_ms("pass")
    wrapper_ms = startup_cpu_ms("import ecoq.scheduler.executors.wrapper")
    results: list[Result] = []
    pg_ver = None
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep.resolve()
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ecoq-claim-")))
        pgdir = work / "pg"
        server = postmaster = None
        try:
            if any(CONFIGS[c][0] == "postgresql" for c in names):
                server = subprocess.run(
                    ["bash", str(ROOT / "tests/services/postgres.sh"), "start", str(pgdir)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                postmaster = int((pgdir / "data/postmaster.pid").read_text().split()[0])
                pg_ver = pg_version(server)
            for name in names:
                if CONFIGS[name][0] == "sqlite":
                    url = f"sqlite:///{work}/{name}/ecoq.db"
                    res = run_config(name, url, work / name, None, args)
                else:
                    assert server is not None
                    url = pg_database(server, f"claim_{name}")
                    res = run_config(name, url, work / name, postmaster, args)
                results.append(res)
                print(f"{name}: done ({time.monotonic() - began:.0f} s)", file=sys.stderr)
        finally:
            if server is not None:
                subprocess.run(
                    ["bash", str(ROOT / "tests/services/postgres.sh"), "stop", str(pgdir)],
                    check=False,
                )
    took = time.monotonic() - began
    load_after = os.getloadavg()

    rows = [summarise(r, args) for r in results]
    cmd = "python benchmarks/claim_speed.py " + " ".join(
        [
            f"--rounds {args.rounds}",
            f"--backlog {args.backlog}",
            f"--spread {args.spread}",
            f"--spread-s {args.spread_s:g}",
            f"--tick {args.tick:g}",
            f"--max-jobs {args.max_jobs}",
            f"--configs {','.join(names)}",
        ]
    )
    lines = [
        f"Command: `{cmd}` (PostgreSQL from `tests/services/postgres.sh`: a throwaway local "
        "server, fsync off).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}"
        + (f", PostgreSQL {pg_ver}" if pg_ver else "")
        + f", measured {time.strftime('%Y-%m-%d')} in {took:.0f} s. Shared machine: 1-minute "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (per config in the "
        "table); the daemons, the PostgreSQL server, the wrappers and the jobs all share these "
        "cores, so 3 daemons here measure contention on one queue, not 3 boxes' capacity.",
        f"Daemons: `python -m ecoq daemon`, `daemon.tick_interval_s = {args.tick:g}`, "
        f"`site.max_jobs = {args.max_jobs}` per daemon, `site.gpus = 0`, RAPL and NVML off "
        "(estimate meters), `planner.min_saving = 1`. Jobs: `/bin/sh -c 'date +%s.%N >> "
        "MARKS/$ECOQ_JOB_ID'`, each started under ecoq's wrapper (`python -m "
        "ecoq.scheduler.executors.wrapper`); the start is the time the job itself recorded.",
        f"Backlog: {args.backlog} jobs due at once, {args.rounds} rounds; throughput = jobs "
        "started / (last start − first start), median (min–max) over rounds; first start and "
        "drain are from the moment they became due. Spread: "
        f"{args.spread} jobs with planned starts spread evenly over {args.spread_s:g} s "
        f"({args.spread / args.spread_s:.1f} jobs/s), {args.rounds} rounds; latency = job start − "
        "its stored `planned_start`, percentiles over every spread job. The daemon wakes at the "
        "next planned start (APScheduler date job, re-armed after each tick), so the tick "
        "interval bounds latency only when a wake is missed.",
        "",
        "| backend | daemons | backlog jobs/s | first start | drain | latency p50 | p99 | max "
        "| CPU ms/job: daemon / wrapper+job / postgres | max_jobs/tick bound, jobs/s "
        "| jobs per daemon | duplicate / not succeeded / plans moved | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['daemons']} | {r['throughput']} | {r['first']} | "
            f"{r['drain']} | {r['p50']} | {r['p99']} | {r['max']} | {r['cpu']} | {r['bound']} | "
            f"{r['per_daemon']} | {r['checks']} | {r['load']} |"
        )
    lines += [
        "",
        "CPU ms/job: CPU time during the backlog phases over the jobs started in them; "
        "wrapper+job is what the daemons' reaped children used (the ecoq wrapper, `sh`, `date`). "
        "The bound is what `site.max_jobs` allows when every start waits for a reap at the next "
        "tick: daemons × max_jobs / tick interval. Checks: jobs that started twice, jobs that did "
        "not succeed, and jobs whose stored `planned_start` differs from the one seeded (all "
        "must be 0).",
        f"Start-up of the wrapper's interpreter alone (`import ecoq.scheduler.executors.wrapper`, "
        f"median of 15): {wrapper_ms:.0f} ms CPU, against {bare_ms:.0f} ms for `python -c pass`.",
    ]
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    if not args.no_write:
        write_section(SECTION, text_out)


if __name__ == "__main__":
    main()
