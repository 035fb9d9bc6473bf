"""Crash harness: real `ecoq daemon` processes that SIGKILL themselves at named points
(`ecoq.faults`), tiny jobs that leave a mark per start, and the invariants a crash must not break.

Daemons run as children of a multiprocessing *forkserver* that has already imported ecoq: each
child is a fresh process running the real CLI (`ecoq daemon --once` or `ecoq daemon`), its own
engine, lock and executor, but it starts in ~10 ms instead of ~0.8 s of imports. That is what makes
200 kills fit in a CI minute. A SIGKILL ends it exactly as it would end `python -m ecoq daemon`
(`test_crash_daemon.py` also kills such processes, to show the two behave alike).
"""

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import pytest

from ecoq.db import open_engine
from ecoq.faults import LOG_ENV
from ecoq.meters.sampler import EnergySeries
from ecoq.scheduler.queue import Queue
from tests.conftest import make_spec

#: Imported once by the fork server, so each daemon child starts warm.
PRELOAD = [
    "ecoq.cli",
    "ecoq.cli.ops",
    "ecoq.scheduler.daemon",
    "ecoq.scheduler.reconcile",
    "ecoq.forecasting.bundled",
    "ecoq.meters",
    "ecoq.logs",
    "apscheduler.schedulers.background",
    "tests.reliability.crashkit",
    "tests.reliability.warm",
]
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
KILLED = -signal.SIGKILL

_CONTEXT: ForkServerContext | None = None


def _context() -> ForkServerContext:
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CONTEXT = ctx
    return _CONTEXT


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    """The daemon process: the test's environment, output to `log`, then the real CLI."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    from ecoq.cli import app

    app(argv, prog_name="ecoq")


class Daemons:
    """Starts daemon processes on the test's database, optionally armed with a crash point."""

    def __init__(self, tmp_path: Path, env: Mapping[str, str]) -> None:
        self.log = tmp_path / "daemon.log"
        self.fault_log = tmp_path / "faults.log"
        self.env = {**os.environ, **env, LOG_ENV: str(self.fault_log)}

    def run(
        self, *args: str, fault: str | None = None, timeout_s: float = 60, stop_after_s: float = 0
    ) -> int:
        """Run `ecoq ARGS...` in a fresh process; its exit code (-9 when it killed itself).

        With `stop_after_s`, a process still alive after that long gets SIGTERM (a long-lived
        `ecoq daemon` whose crash point was not reached)."""
        env = dict(self.env)
        if fault:
            env["ECOQ_FAULT"] = fault
        proc = _context().Process(target=_child, args=(list(args), env, str(self.log)))
        proc.start()
        if stop_after_s:
            proc.join(stop_after_s)
            if proc.is_alive():
                assert proc.pid is not None
                os.kill(proc.pid, signal.SIGTERM)
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise AssertionError(f"ecoq {' '.join(args)} (fault {fault}) hung; see {self.log}")
        assert proc.exitcode is not None
        return proc.exitcode

    def killed_at(self) -> Counter[str]:
        """How often each crash point killed a daemon (from the fault log)."""
        if not self.fault_log.exists():
            return Counter()
        lines = self.fault_log.read_text().split()
        return Counter(word.split(":")[0] for word in lines if not word.startswith("pid="))


# -- jobs ---------------------------------------------------------------------------------------
def job_command(marks: Path, sleep_s: float) -> list[str]:
    """A job that appends its run folder to `marks/<job id>` (one line per start), prints one
    line to its log, and sleeps a little."""
    script = (
        f'echo "$ECOQ_RUN_DIR" >> {marks}/"$ECOQ_JOB_ID"; echo "out $ECOQ_JOB_ID"; sleep {sleep_s}'
    )
    return ["/bin/sh", "-c", script]


def submit_jobs(queue: Queue, marks: Path, rng: random.Random, count: int) -> list[int]:
    """`count` short jobs, due now (with `planner.min_saving = 1` they never wait)."""
    ids = []
    now = datetime.now(UTC)
    for _ in range(count):
        sleep_s = rng.choice([0, 0, 0.1, 0.3, 0.6])
        spec = make_spec(now, command=job_command(marks, sleep_s), deadline_h=2, duration_h=0.02)
        job = queue.submit(spec)
        assert job.id is not None
        ids.append(job.id)
    return ids


# -- invariants ---------------------------------------------------------------------------------
def _tokens(data_dir: Path, job_id: int) -> list[tuple[Path, str | None]]:
    """(run folder, who took its start token) for every run folder of the job."""
    out = []
    for run_dir in sorted((data_dir / "jobs" / str(job_id)).glob("*")):
        token = run_dir / "start.token"
        by = None
        if token.exists():
            by = json.loads(token.read_text() or "{}").get("by")
        out.append((run_dir, by))
    return out


@dataclass
class Observer:
    """Checks the queue between daemon processes, remembering what must never change."""

    db: Path
    data_dir: Path
    marks: Path
    #: job id -> (state, exit code, finished_at) once terminal: a job ends exactly once.
    ended: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    #: run id -> {segment start: joules seen}: stored energy is never lost or shrunk.
    energy: dict[int, dict[str, float]] = field(default_factory=dict)
    checks: int = 0

    def _rows(self, sql: str) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=60)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql))
        finally:
            conn.close()

    def integrity(self) -> None:
        (result,) = self._rows("PRAGMA integrity_check")[0]
        assert result == "ok", f"integrity_check: {result}"

    def check(self, context: str = "") -> None:
        """The invariants that hold at any moment, however the last daemon died."""
        self.checks += 1
        where = f" (after {context})" if context else ""
        self.integrity()
        jobs = {r["id"]: r for r in self._rows("SELECT * FROM jobs")}
        runs: dict[int, list[sqlite3.Row]] = {}
        for r in self._rows("SELECT * FROM runs ORDER BY id"):
            runs.setdefault(r["job_id"], []).append(r)
        for job_id, job in jobs.items():
            for run in runs.get(job_id, []):
                self._check_energy(run, where)
            state = job["state"]
            outcome = (state, job["exit_code"], job["finished_at"])
            if job_id in self.ended:  # its marks and tokens were checked when it ended
                assert self.ended[job_id] == outcome, (
                    f"job {job_id} ended as {self.ended[job_id]}, now {outcome}{where}"
                )
                continue
            starts = self.starts(job_id)
            wrapper_tokens = [d for d, by in _tokens(self.data_dir, job_id) if by == "wrapper"]
            assert len(starts) <= 1, f"job {job_id} ran {len(starts)} times{where}: {starts}"
            assert len(wrapper_tokens) <= 1, f"job {job_id}: two wrappers took a token{where}"
            if state in ("running", "paused"):
                assert runs.get(job_id), f"job {job_id} is {state} without a run{where}"
            if state in TERMINAL:
                self.ended[job_id] = outcome

    def _check_energy(self, run: sqlite3.Row, where: str) -> None:
        series = (json.loads(run["energy_series"]) if run["energy_series"] else None) or {}
        segments = {s["started_at"]: s for s in series.get("segments", [])}
        seen = self.energy.setdefault(run["id"], {})
        lost = set(seen) - set(segments)
        assert not lost, f"run {run['id']} lost its energy segments {lost}{where}"
        for start, segment in segments.items():
            joules = EnergySeries.from_dict(segment).energy_j
            before = seen.get(start, 0.0)
            assert joules >= before - 1e-9, (
                f"run {run['id']} energy shrank {before} -> {joules} J{where}"
            )
            seen[start] = joules

    def starts(self, job_id: int) -> list[str]:
        """The run folders the job started in, from its own marks."""
        path = self.marks / str(job_id)
        return path.read_text().split() if path.exists() else []

    def describe_waiting(self) -> str:
        """The jobs not ended yet, their runs and the daemons' rows: why a drain did not end."""
        lines = []
        where = "state NOT IN " + _sql_list(TERMINAL)
        for job in self._rows(f"SELECT * FROM jobs WHERE {where}"):
            lines.append(f"job {dict(job)}")
            for run in self._rows(f"SELECT * FROM runs WHERE job_id = {job['id']} ORDER BY id"):
                lines.append(f"  run {dict(run)}")
            lines.append(f"  marks {self.starts(job['id'])}")
        lines += [f"daemon {dict(row)}" for row in self._rows("SELECT * FROM daemons")]
        return "\n".join(lines)

    def waiting_or_running(self) -> int:
        rows = self._rows("SELECT count(*) FROM jobs WHERE state NOT IN " + _sql_list(TERMINAL))
        return int(rows[0][0])

    def check_final(self) -> Counter[str]:
        """Every job ended once; the run that started it is the one the queue recorded, with its
        exit code, its log and its accounting; every other run never started. Returns the
        final states."""
        self.check("the drain")
        states: Counter[str] = Counter()
        for job in self._rows("SELECT * FROM jobs"):
            job_id, state = job["id"], job["state"]
            states[state] += 1
            assert state in ("succeeded", "cancelled"), (
                f"job {job_id} ended {state}: {job['reason']}"
            )
            runs = self._rows(f"SELECT * FROM runs WHERE job_id = {job_id} ORDER BY id")
            started = [r for r in runs if r["started_at"] is not None]
            starts = self.starts(job_id)
            assert len(started) == len(starts) <= 1, (job_id, [dict(r) for r in runs], starts)
            if state == "succeeded":
                assert len(started) == 1 and job["exit_code"] == 0, dict(job)
            for run in runs:
                assert run["finished_at"] is not None, f"run {run['id']} never closed"
            tokens = dict(_tokens(self.data_dir, job_id))
            started_ids = {r["id"] for r in started}
            for run in runs:
                run_dir = Path(run["run_dir"])
                if run["id"] in started_ids:
                    assert starts == [str(run_dir)], (starts, run["run_dir"])
                    assert tokens[run_dir] == "wrapper"
                    log = (run_dir / "output.log").read_text()
                    assert f"out {job_id}" in log, f"run {run['id']} lost its log: {log!r}"
                    assert run["accounting"] is not None, f"run {run['id']} never accounted"
                    series = json.loads(run["energy_series"] or "null") or {}
                    joules = [
                        EnergySeries.from_dict(s).energy_j for s in series.get("segments", [])
                    ]
                    if joules:  # the run's energy is the sum of every daemon's segment
                        assert run["energy_j"] == pytest.approx(sum(joules)), dict(run)
                else:
                    assert tokens.get(run_dir) in ("abandon", None), (run_dir, tokens)
        return states


def _sql_list(values: Sequence[str] | set[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"


def drain(daemons: Daemons, observer: Observer, timeout_s: float = 300) -> int:
    """Run clean daemon ticks until every job has ended; returns how many ticks it took."""
    limit = time.monotonic() + timeout_s
    ticks = 0
    while observer.waiting_or_running():
        assert time.monotonic() < limit, (
            f"jobs still waiting or running after the drain:\n{observer.describe_waiting()}\n"
            f"daemon log:\n{daemons.log.read_text()[-4000:]}"
        )
        assert daemons.run("daemon", "--once") == 0, daemons.log.read_text()[-3000:]
        ticks += 1
        observer.check("a clean tick")
        time.sleep(0.05)
    # A daemon killed after reaping the last job but before accounting it leaves that to the
    # next tick: one more clean tick, as the next daemon start would run.
    assert daemons.run("daemon", "--once") == 0, daemons.log.read_text()[-3000:]
    observer.check("the last clean tick")
    return ticks + 1


def open_queue(url: str) -> Queue:
    return Queue(open_engine(url))


def since(start: float) -> timedelta:
    return timedelta(seconds=time.monotonic() - start)
