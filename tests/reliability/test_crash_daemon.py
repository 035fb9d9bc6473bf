"""Crash safety: SIGKILL the daemon 200 times at points of its tick, restart it, and check that
no job runs twice, every job ends exactly once, no run loses its energy, log or accounting, and
the database stays intact (see `crashkit` for the invariants and how the daemons run)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecoq.errors import EcoqError
from ecoq.faults import POINTS
from ecoq.states import JobState
from tests.reliability.crashkit import (
    KILLED,
    Daemons,
    Observer,
    drain,
    open_queue,
    submit_jobs,
)

#: (crash point, highest count, weight). Counts stay within what one tick reaches, so most
#: armed daemons die; one that does not simply ran a clean tick.
PLAN = [
    ("db-begin", 30, 6),
    ("db-commit", 10, 5),
    ("claim-before", 3, 2),
    ("claim-after", 3, 3),
    ("launch-spec", 3, 2),
    ("launch-after", 3, 3),
    ("finish-txn", 3, 2),
    ("finish-after", 3, 2),
    ("update-run", 4, 2),
    ("transition", 2, 1),
    ("plans-txn", 1, 1),
]
#: The points a long-lived `ecoq daemon` always reaches (its heartbeat alone begins transactions).
LONG_LIVED = [("db-begin", 30), ("db-commit", 10)]
KILLS = int(os.environ.get("ECOQ_CRASH_KILLS", "200"))
SEED = int(os.environ.get("ECOQ_CRASH_SEED", "8"))
DAEMON_ENV = {
    "ECOQ_PLANNER__MIN_SAVING": "1",  # every job runs now: the suite is about crashes
    "ECOQ_DAEMON__TICK_INTERVAL_S": "0.2",
    "ECOQ_DAEMON__KILL_GRACE_S": "1",
}


def _setup(tmp_path: Path, root: Path) -> tuple[Daemons, Observer, str]:
    marks = root / "marks"
    marks.mkdir()
    url = os.environ["ECOQ_DATABASE_URL"]
    observer = Observer(db=root / "ecoq.db", data_dir=root / "data", marks=marks)
    return Daemons(tmp_path, DAEMON_ENV), observer, url


@pytest.mark.slow
def test_200_sigkills_lose_nothing_and_run_nothing_twice(tmp_path: Path, fast_dir: Path) -> None:
    rng = random.Random(SEED)
    daemons, observer, url = _setup(tmp_path, fast_dir)
    queue = open_queue(url)
    began = time.monotonic()
    kills = runs = external = cancels = 0
    follow_up = False
    while kills < KILLS:
        if observer.waiting_or_running() < 4:
            submit_jobs(queue, observer.marks, rng, 3)
        if rng.random() < 0.06:  # a user cancels a job, whatever state it is in
            jobs = [j for j in queue.jobs(_active_states()) if j.id is not None]
            if jobs:
                try:
                    queue.cancel(rng.choice(jobs).id or 0)
                    cancels += 1
                except EcoqError:
                    pass  # it ended meanwhile
        runs += 1
        roll = rng.random()
        if follow_up and roll < 0.5:
            # The last daemon died between claim and launch: the next one requeues the job (close
            # the run, then move the job back); kill it between or after those two writes.
            context = rng.choice(["update-run:1", "transition:1"])
            code = daemons.run("daemon", "--once", fault=context)
        elif roll < 0.05:
            # An external SIGKILL at an arbitrary moment of a long-lived daemon's life.
            code = _kill_after(daemons, rng.uniform(0.05, 1.2))
            external += code == KILLED
            context = "an external SIGKILL"
        elif roll < 0.17:
            point, most = rng.choice(LONG_LIVED)
            context = f"{point}:{rng.randint(2, most)}"
            code = daemons.run("daemon", fault=context, stop_after_s=8)
        else:
            point, most, _ = rng.choices(PLAN, weights=[w for *_, w in PLAN])[0]
            context = f"{point}:{rng.randint(1, most)}"
            code = daemons.run("daemon", "--once", fault=context)
        assert code in (0, KILLED), f"{context}: exit {code}\n{daemons.log.read_text()[-3000:]}"
        kills += code == KILLED
        follow_up = code == KILLED and context.split(":")[0] in ("claim-after", "launch-spec")
        observer.check(context)
    ticks = drain(daemons, observer)
    states = observer.check_final()
    took = time.monotonic() - began
    by_point = daemons.killed_at()
    print(
        f"\n{kills} kills ({external} external) in {runs} daemon runs, {ticks} drain ticks, "
        f"{took:.0f} s; jobs {dict(states)}; {cancels} cancels; kills by point {dict(by_point)}"
    )
    # Every crash point placed outside the daemon module killed a daemon at least once.
    assert sum(by_point.values()) + external == kills
    for point, *_ in PLAN:
        assert by_point[point] >= 1, f"{point} never killed a daemon: {dict(by_point)}"
    assert states["succeeded"] >= 100


def _active_states() -> list[JobState]:
    return [JobState.PENDING, JobState.PLANNED, JobState.RUNNING]


def _kill_after(daemons: Daemons, delay_s: float) -> int:
    """Start a long-lived daemon and SIGKILL it from outside after `delay_s`."""
    from tests.reliability.crashkit import _child, _context

    proc = _context().Process(target=_child, args=(["daemon"], dict(daemons.env), str(daemons.log)))
    proc.start()
    proc.join(delay_s)
    if proc.is_alive():
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode is not None
    return proc.exitcode


@pytest.mark.slow
def test_sigkilled_python_m_ecoq_daemon_processes(tmp_path: Path, fast_dir: Path) -> None:
    """The same invariants with plain `python -m ecoq daemon` processes, armed and killed from
    outside (a fresh interpreter each time, as systemd would restart it)."""
    rng = random.Random(SEED + 1)
    daemons, observer, url = _setup(tmp_path, fast_dir)
    queue = open_queue(url)
    submit_jobs(queue, observer.marks, rng, 12)
    env = {**os.environ, **DAEMON_ENV}
    kills = 0
    for i in range(8):
        cmd = [sys.executable, "-m", "ecoq", "daemon"]
        armed = dict(env, ECOQ_FAULT=rng.choice(["claim-after:1", "launch-after:2", "db-commit:9"]))
        with open(daemons.log, "ab") as log:
            proc = subprocess.Popen(
                cmd, env=armed if i % 2 == 0 else env, stdout=subprocess.DEVNULL, stderr=log
            )
        try:
            code = proc.wait(timeout=rng.uniform(0.8, 2.5))
        except subprocess.TimeoutExpired:
            proc.kill()  # the external kill, or an armed daemon whose point was not reached
            code = proc.wait(timeout=10)
        assert code == KILLED, f"run {i}: exit {code}\n{daemons.log.read_text()[-2000:]}"
        kills += 1
        observer.check(f"python -m ecoq daemon kill {i}")
        if i == 3:
            submit_jobs(queue, observer.marks, rng, 6)
    drain(daemons, observer)
    states = observer.check_final()
    assert kills == 8 and states["succeeded"] == 18


def test_every_crash_point_is_documented() -> None:
    for point, *_ in PLAN:
        assert point in POINTS
    for point, _ in LONG_LIVED:
        assert point in POINTS
