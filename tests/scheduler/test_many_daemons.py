"""Many daemons on one PostgreSQL database (issue 7): every job runs exactly once, each site's
capacity holds, and a daemon killed mid-run is noticed and its jobs reconciled."""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.scheduler.daemons import DaemonRegistry
from ecoq.scheduler.queue import Queue
from ecoq.states import TERMINAL, JobState
from tests.conftest import FakeClock, make_spec

pytestmark = pytest.mark.pg
S = JobState
MAX_JOBS = 3


def _daemon(url: str, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        ECOQ_DATABASE_URL=url,
        ECOQ_PATHS__DATA_DIR=str(tmp_path / name),
        ECOQ_SITE__NAME=name,
        ECOQ_SITE__MAX_JOBS=str(MAX_JOBS),
        ECOQ_SITE__GPUS="0",
        ECOQ_PLANNER__MIN_SAVING="1",  # run every job now: the test is about claiming
        ECOQ_DAEMON__TICK_INTERVAL_S="0.2",
        ECOQ_DAEMON__STALE_AFTER_S="5",
        ECOQ_METERS__RAPL="false",
        ECOQ_METERS__NVML="false",
    )
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ecoq", "daemon"], env=env, stdout=log, stderr=log
        )


def _wait(done: object, timeout_s: float) -> None:
    limit = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        if time.monotonic() > limit:
            raise AssertionError("not reached before the timeout")
        time.sleep(0.2)


@pytest.mark.slow
def test_three_daemons_500_jobs_one_killed(pg_url: str, tmp_path: Path) -> None:
    engine = open_engine(pg_url)
    queue = Queue(engine)
    marks = tmp_path / "marks"
    marks.mkdir()
    now = datetime.now(UTC)
    script = (
        f'echo "$(date +%s.%N) start" >> {marks}/$ECOQ_JOB_ID; sleep 0.1; '
        f'echo "$(date +%s.%N) end" >> {marks}/$ECOQ_JOB_ID'
    )
    ids = [
        queue.submit(
            make_spec(now, command=["/bin/sh", "-c", script], deadline_h=2, duration_h=0.01)
        ).id
        for _ in range(int(os.environ.get("N", "500")))
    ]
    daemons = {name: _daemon(pg_url, tmp_path, name) for name in ("a", "b", "c")}
    try:
        _wait(lambda: len(queue.active("c")) > 0 and len(list(marks.iterdir())) > 100, 300)
        daemons["c"].kill()  # mid-run, with jobs of its own running
        daemons["c"].wait(10)
        lost = {job.id for job, _ in queue.active("c")}
        assert lost
        try:
            _wait(lambda: all(queue.get(i or 0).state in TERMINAL for i in ids), 400)
        except AssertionError:
            stuck = [(i, queue.get(i or 0)) for i in ids if queue.get(i or 0).state not in TERMINAL]
            raise AssertionError(
                f"not ended: {[(i, j.state, j.worker) for i, j in stuck[:10]]}; lost {lost}"
            ) from None
    finally:
        for proc in daemons.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in daemons.values():
            proc.wait(60)

    jobs = {i: queue.get(i or 0) for i in ids}
    # Each job started exactly once (one start line in its marker file); a job the killed
    # daemon had claimed may not have started at all, and then it has no marker.
    for i in ids:
        marker = marks / str(i)
        lines = marker.read_text().split("\n") if marker.exists() else []
        starts = sum(" start" in line for line in lines)
        assert starts == 1 or (i in lost and starts == 0), f"job {i} started {starts} times"
    # The killed daemon's running jobs were reconciled by another daemon, with the reason.
    for i in lost:
        job = jobs[i]
        assert job.state == S.FAILED and "stopped heartbeating" in (job.reason or "")
        assert "reconciled by" in (job.reason or "")
    others = [(i, j.state, j.worker, j.reason) for i, j in jobs.items() if i not in lost]
    assert [o for o in others if o[1] != S.SUCCEEDED] == []
    # No site ever ran more than MAX_JOBS at once (from the jobs' own start and end times).
    for site in ("a", "b", "c"):
        events = []
        for i, job in jobs.items():
            if job.worker != site or i in lost or not (marks / str(i)).exists():
                continue
            start, end = (
                float(line.split()[0]) for line in (marks / str(i)).read_text().split("\n")[:2]
            )
            events += [(start, 1), (end, -1)]
        running = peak = 0
        for _, delta in sorted(events):
            running += delta
            peak = max(peak, running)
        assert peak <= MAX_JOBS, f"site {site} ran {peak} jobs at once"
    assert {j.worker for j in jobs.values()} == {"a", "b", "c"}
    engine.dispose()


def test_heartbeat_and_stale_reconciliation(any_db_url: str, clock: FakeClock) -> None:
    engine = open_engine(any_db_url)
    queue = Queue(engine, clock=clock)
    registry = DaemonRegistry(queue)
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    assert queue.claim(queue.get(job.id), worker="lost", host="h", run_dir="/x", gpus=[])
    registry.heartbeat("lost", host="h", pid=1, zone="DE")
    registry.heartbeat("me", host="h", pid=2, zone="DE")
    clock.advance(seconds=200)
    assert registry.reconcile_stale("me", timedelta(seconds=300)) == []
    clock.advance(seconds=200)
    registry.heartbeat("me", host="h", pid=2, zone="DE")
    assert registry.reconcile_stale("me", timedelta(seconds=300)) == [job.id]
    assert registry.reconcile_stale("other", timedelta(seconds=300)) == []  # only once
    got = queue.get(job.id)
    assert got.state == S.FAILED and "stopped heartbeating" in (got.reason or "")
    # A daemon that stopped cleanly is never lost.
    registry.heartbeat("clean", host="h", pid=3, zone=None)
    registry.stopped("clean")
    clock.advance(days=1)
    assert registry.reconcile_stale("me", timedelta(seconds=300)) == []
    engine.dispose()


def test_one_planner_at_a_time(any_db_url: str) -> None:
    engine = open_engine(any_db_url)
    registry = DaemonRegistry(Queue(engine))
    with registry.planning_lock() as first:
        assert first
        with registry.planning_lock() as second:
            assert second == (engine.dialect.name != "postgresql")
    with registry.planning_lock() as again:
        assert again
    engine.dispose()
