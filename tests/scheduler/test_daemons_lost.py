"""A daemon reconciled as lost comes back: two `Daemon`s on one SQLite file (a fake clock makes
one of them silent), real job processes. The returning daemon records how its runs really ended,
never revives a job that moved on, and never acts on a claim made before it went silent."""

import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select, update

from ecoq.db import open_engine, session
from ecoq.meters import Detection, MeterDefaults
from ecoq.models import Job, Run
from ecoq.render import queue_row, show_lines
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.daemons import DaemonRegistry
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.lost import LostRuns, lost_reason
from ecoq.scheduler.metering import RunMeters
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState
from ecoq.views import JobView
from tests.conftest import FakeClock, make_spec
from tests.scheduler.test_daemon import CountingMeter, FlatProvider, sh

S = JobState
STALE_S = 300.0


@pytest.fixture
def lclock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


_DAEMONS: list[Daemon] = []


@pytest.fixture
def q(db_url: str, lclock: FakeClock) -> Iterator[Queue]:
    """A queue on a fake clock; after the test, every job process is killed and every wrapper
    the daemons started is waited for."""
    queue = Queue(open_engine(db_url), clock=lclock)
    yield queue
    executor = LocalExecutor()
    with session(queue.engine) as s:
        run_dirs = [Path(run.run_dir) for run in s.exec(select(Run))]
    for run_dir in run_dirs:
        executor.signal(run_dir, signal.SIGKILL)
    for d in _DAEMONS:
        if d.meters is not None:
            d.meters.stop_all()
        assert isinstance(d.executor, LocalExecutor)
        d.executor.reap(10)
    _DAEMONS.clear()
    queue.engine.dispose()


def daemon(q: Queue, tmp_path: Path, name: str, *, metered: bool = False) -> Daemon:
    cfg = DaemonConfig(
        data_dir=tmp_path / name, worker=name, box_gpus=0, kill_grace_s=0.5, stale_after_s=STALE_S
    )
    d = Daemon(q, ForecastSource(FlatProvider()), cfg)
    _DAEMONS.append(d)
    if metered:
        d.config.meters = MeterDefaults()
        d.meters = RunMeters(
            MeterDefaults(),
            interval_s=0.05,
            detect=lambda **_: Detection((CountingMeter("cpu"),), ()),
        )
    return d


def wait(done: Callable[[], bool], timeout_s: float = 20) -> None:
    limit = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > limit:
            raise AssertionError("condition not reached before the timeout")
        time.sleep(0.05)


def tick_until(d: Daemon, done: Callable[[], bool], timeout_s: float = 20) -> None:
    limit = time.monotonic() + timeout_s
    while True:
        d.tick()
        if done():
            return
        if time.monotonic() > limit:
            raise AssertionError("condition not reached before the timeout")
        time.sleep(0.05)


def submit(q: Queue, lclock: FakeClock, command: list[str]) -> int:
    job = q.submit(make_spec(lclock(), command=command, deadline_h=4, duration_h=0.01))
    assert job.id is not None
    return job.id


def waits_for(flag: Path, code: int = 0) -> list[str]:
    return sh(f"while [ ! -e {flag} ]; do sleep 0.05; done; exit {code}")


def run_of(q: Queue, job_id: int) -> Run:
    run = q.latest_run(job_id)
    assert run is not None
    return run


def exited(run: Run) -> Callable[[], bool]:
    return lambda: (Path(run.run_dir) / "exit.json").exists()


def stale_claim(q: Queue, lclock: FakeClock, tmp_path: Path, worker: str) -> tuple[int, Run]:
    """A job `worker` claimed just before it went silent, and never launched."""
    job_id = submit(q, lclock, ["/bin/true"])
    q.set_plan(job_id, planned_start=lclock())
    run = q.claim(
        q.get(job_id),
        worker=worker,
        host="h",
        run_dir=str(tmp_path / worker / "jobs" / str(job_id) / "claimed"),
        gpus=[],
    )
    assert run is not None
    return job_id, run


def test_a_returning_daemon_records_how_its_lost_runs_really_ended(
    q: Queue, lclock: FakeClock, tmp_path: Path
) -> None:
    a = daemon(q, tmp_path, "box-a", metered=True)
    b = daemon(q, tmp_path, "box-b")
    b.heartbeat()
    go_ok, go_bad, go_on = tmp_path / "ok", tmp_path / "bad", tmp_path / "on"
    ok = submit(q, lclock, waits_for(go_ok))
    bad = submit(q, lclock, waits_for(go_bad, 3))
    on = submit(q, lclock, waits_for(go_on))
    assert sorted(a.tick().started) == [ok, bad, on]
    tick_until(a, lambda: all(run_of(q, i).pid for i in (ok, bad, on)))
    never, never_run = stale_claim(q, lclock, tmp_path, "box-a")
    # box-a falls silent; two of its jobs end meanwhile (their wrappers record it).
    go_ok.touch()
    go_bad.touch()
    wait(exited(run_of(q, ok)))
    wait(exited(run_of(q, bad)))
    lclock.advance(seconds=STALE_S + 1)
    assert sorted(b.tick().lost) == [ok, bad, on, never]
    for i in (ok, bad, on, never):
        job, run = q.get(i), run_of(q, i)
        assert job.state == S.FAILED and job.exit_code is None
        assert "outcome unknown" in (job.reason or "") and run.reason == job.reason
    reconciled_at = lclock()

    # box-a comes back.
    report = a.tick()
    assert sorted(report.reaped) == [ok, bad] and report.requeued == [never]
    executor = LocalExecutor()
    for i, state, code in ((ok, S.SUCCEEDED, 0), (bad, S.FAILED, 3)):
        job, run = q.get(i), run_of(q, i)
        truth = executor.status(Path(run.run_dir))
        assert job.state == state and job.exit_code == run.exit_code == code
        assert run.finished_at == job.finished_at == truth.finished_at
        assert run.finished_at is not None and run.finished_at < reconciled_at
        assert "after it came back" in (run.reason or "") and job.reason == run.reason
        assert run.energy_j is not None and run.energy_j > 0 and job.energy_j == run.energy_j
        assert run.energy_series is not None and run.started_at == truth.started_at
        assert run.accounting is not None  # accounted with the truth by this tick
    # The job still running is box-a's again; it ends as any other.
    revived, revived_run = q.get(on), run_of(q, on)
    assert revived.state == S.RUNNING and revived.worker == "box-a" and revived.reason is None
    assert revived_run.finished_at is None and revived_run.reason is None
    # The claim box-a never launched is never acted on: its token is taken, the job requeued
    # (then planned and started afresh, with a new run).
    assert executor.status(Path(never_run.run_dir)).state == "not-started"
    with session(q.engine) as s:
        old = s.get(Run, never_run.id)
        assert old is not None and (old.reason or "").startswith("never started")
    assert q.get(never).state in (S.PENDING, S.PLANNED, S.RUNNING, S.SUCCEEDED)
    go_on.touch()
    tick_until(a, lambda: q.get(on).state == S.SUCCEEDED)
    tick_until(a, lambda: q.get(never).state == S.SUCCEEDED)
    assert run_of(q, on).exit_code == 0 and (run_of(q, on).energy_j or 0) > 0
    assert run_of(q, never).id != never_run.id and run_of(q, never).exit_code == 0
    # Nothing is left to settle, and box-b never touched any of it again.
    assert LostRuns(q.engine).find("box-a") == []
    assert b.tick().lost == []


def test_a_restarted_daemon_records_the_runs_that_ended_while_it_was_lost(
    q: Queue, lclock: FakeClock, tmp_path: Path
) -> None:
    """The box rebooted or its daemon was restarted: a new process, the same name."""
    first = daemon(q, tmp_path, "box-a")
    b = daemon(q, tmp_path, "box-b")
    b.heartbeat()
    job_id = submit(q, lclock, sh("exit 7"))
    assert first.tick().started == [job_id]
    wait(exited(run_of(q, job_id)))  # the first daemon dies before it reaps the job
    lclock.advance(seconds=STALE_S + 1)
    assert b.tick().lost == [job_id]
    again = daemon(q, tmp_path, "box-a")
    assert again.tick().reaped == [job_id]
    job, run = q.get(job_id), run_of(q, job_id)
    assert job.state == S.FAILED and job.exit_code == run.exit_code == 7
    assert (job.reason or "").startswith("exited with status 7; recorded by box-a")
    assert again.tick().reaped == [] and LostRuns(q.engine).find("box-a") == []


def test_a_job_that_moved_on_keeps_its_state_and_only_the_run_gets_the_truth(
    q: Queue, lclock: FakeClock, tmp_path: Path
) -> None:
    a = daemon(q, tmp_path, "box-a")
    b = daemon(q, tmp_path, "box-b")
    b.heartbeat()
    go_done, go_still = tmp_path / "done", tmp_path / "still"
    done = submit(q, lclock, waits_for(go_done, 5))
    still = submit(q, lclock, waits_for(go_still))
    assert sorted(a.tick().started) == [done, still]
    tick_until(a, lambda: all(run_of(q, i).pid for i in (done, still)))
    cancelled, cancelled_run = stale_claim(q, lclock, tmp_path, "box-a")
    go_done.touch()
    wait(exited(run_of(q, done)))
    lclock.advance(seconds=STALE_S + 1)
    assert sorted(b.tick().lost) == [done, still, cancelled]
    lost_runs = {i: run_of(q, i) for i in (done, still, cancelled)}
    # Meanwhile `done` and `still` were retried and started on box-b (a new run each), and
    # `cancelled` ended cancelled: what a retry or an operator could do to a failed job.
    with session(q.engine) as s:
        for i in (done, still):
            elsewhere = str(tmp_path / "box-b" / "jobs" / str(i) / "retry")
            s.add(
                Run(
                    job_id=i,
                    worker="box-b",
                    host="h",
                    run_dir=elsewhere,
                    gpu_indices=[],
                    claimed_at=lclock(),
                )
            )
            s.execute(update(Job).where(col(Job.id) == i).values(state="running", worker="box-b"))
        s.execute(update(Job).where(col(Job.id) == cancelled).values(state="cancelled"))
        s.commit()
    before = {i: q.get(i) for i in (done, still, cancelled)}

    report = a.tick()
    assert report.reaped == [] and report.requeued == [] and report.started == []
    for i in (done, still, cancelled):
        job = q.get(i)
        assert (job.state, job.worker, job.reason) == (
            before[i].state,
            before[i].worker,
            before[i].reason,
        )
    with session(q.engine) as s:
        settled = s.get(Run, lost_runs[done].id)
        assert settled is not None and settled.exit_code == 5
        assert "after it came back" in (settled.reason or "")
        abandoned = s.get(Run, cancelled_run.id)
        assert abandoned is not None and (abandoned.reason or "").startswith("never started")
        watched = s.get(Run, lost_runs[still].id)
        assert watched is not None and watched.reason == lost_runs[still].reason
    # The run whose process still runs is followed until it ends, then recorded.
    go_still.touch()
    wait(exited(lost_runs[still]))
    a.tick()
    with session(q.engine) as s:
        watched = s.get(Run, lost_runs[still].id)
        assert watched is not None and watched.exit_code == 0
    assert q.get(still).state == S.RUNNING and q.get(still).worker == "box-b"
    assert LostRuns(q.engine).find("box-a") == []


def test_a_daemon_reconciled_as_lost_claims_nothing_until_it_heartbeats(
    any_db_url: str, tmp_path: Path
) -> None:
    lclock = FakeClock(datetime(2026, 11, 30, 10, 0, tzinfo=UTC))
    q = Queue(open_engine(any_db_url), clock=lclock)
    registry = DaemonRegistry(q)
    registry.heartbeat("box-a", host="h", pid=1, zone=None)
    registry.heartbeat("box-b", host="h", pid=2, zone=None)
    job_id, run = stale_claim(q, lclock, tmp_path, "box-a")
    assert run.id is not None
    assert q.claim_holds(job_id, run.id, "box-a")
    assert not registry.returned("box-a")
    lclock.advance(seconds=STALE_S + 1)
    registry.heartbeat("box-b", host="h", pid=2, zone=None)
    assert registry.reconcile_stale("box-b", timedelta(seconds=STALE_S)) == [job_id]
    # A launch that stalled after its claim must not go ahead now.
    assert not q.claim_holds(job_id, run.id, "box-a")
    # What box-a read before it went silent is stale: no claim until its next heartbeat.
    other = submit(q, lclock, ["/bin/true"])
    q.set_plan(other, planned_start=lclock())
    assert q.claim(q.get(other), worker="box-a", host="h", run_dir="/x", gpus=[]) is None
    registry.heartbeat("box-a", host="h", pid=1, zone=None)
    assert registry.returned("box-a") and not registry.returned("box-a")
    assert q.claim(q.get(other), worker="box-a", host="h", run_dir="/x", gpus=[]) is not None
    q.engine.dispose()


def test_a_reconciler_leaves_the_jobs_of_a_daemon_that_came_back_meanwhile(
    any_db_url: str, tmp_path: Path
) -> None:
    """The reconciler stops the lost daemon's row, then fails its jobs one by one; a heartbeat
    in between takes the rest back."""
    lclock = FakeClock(datetime(2026, 11, 30, 10, 0, tzinfo=UTC))
    q = Queue(open_engine(any_db_url), clock=lclock)
    registry = DaemonRegistry(q)
    registry.heartbeat("box-a", host="h", pid=1, zone=None)
    first, first_run = stale_claim(q, lclock, tmp_path, "box-a")
    second, second_run = stale_claim(q, lclock, tmp_path, "box-a")
    lclock.advance(seconds=STALE_S + 1)
    now = lclock()
    registry.stopped("box-a")  # as the reconciler's compare-and-set on the row does, at `now`
    lost = LostRuns(q.engine, lclock)
    reason = lost_reason("box-a", None, timedelta(seconds=STALE_S), "box-b")
    assert lost.fail(q.get(first), first_run, lost="box-a", reconciled_at=now, reason=reason)
    lclock.advance(seconds=1)
    registry.heartbeat("box-a", host="h", pid=1, zone=None)  # box-a is back
    assert not lost.fail(q.get(second), second_run, lost="box-a", reconciled_at=now, reason=reason)
    assert q.get(first).state == S.FAILED and q.get(second).state == S.RUNNING
    assert [run.id for _, run in lost.find("box-a")] == [first_run.id]
    q.engine.dispose()


class StallingQueue(Queue):
    """A queue whose `claim` runs `stall` after the claim is made: the daemon that claimed
    falls silent between its claim and its launch."""

    stall: Callable[[], None] = staticmethod(lambda: None)

    def claim(self, job: Job, **kw: object) -> Run | None:  # type: ignore[override]
        run = super().claim(job, **kw)  # type: ignore[arg-type]
        if run is not None:
            self.stall()
        return run


def test_a_daemon_that_stalls_between_claim_and_launch_does_not_launch(
    db_url: str, lclock: FakeClock, tmp_path: Path
) -> None:
    stalling = StallingQueue(open_engine(db_url), clock=lclock)
    q = Queue(stalling.engine, clock=lclock)
    a = Daemon(
        stalling,
        ForecastSource(FlatProvider()),
        DaemonConfig(data_dir=tmp_path / "a", worker="box-a", box_gpus=0, stale_after_s=STALE_S),
    )
    b = daemon(q, tmp_path, "box-b")
    _DAEMONS.append(a)
    a.heartbeat()
    job_id = submit(q, lclock, ["/bin/true"])
    lost: list[int] = []

    def silent_then_reconciled() -> None:
        lclock.advance(seconds=STALE_S + 1)
        b.heartbeat()
        lost.extend(b.tick().lost)

    stalling.stall = silent_then_reconciled
    report = a.tick()
    assert lost == [job_id] and report.started == []
    run = run_of(q, job_id)
    assert a.executor.status(Path(run.run_dir)).state == "not-started"
    stalling.stall = lambda: None
    # box-a's next ticks: the claim is settled as never started, the job runs once afresh.
    tick_until(a, lambda: q.get(job_id).state == S.SUCCEEDED)
    runs = [r for r in _runs(q, job_id) if r.started_at is not None]
    assert len(runs) == 1 and runs[0].id != run.id


def _runs(q: Queue, job_id: int) -> list[Run]:
    with session(q.engine) as s:
        return list(s.exec(select(Run).where(col(Run.job_id) == job_id).order_by(col(Run.id))))


@pytest.mark.parametrize("request_", ["cancel", "hold"])
def test_a_request_made_before_a_daemon_was_lost_survives_it(
    q: Queue, lclock: FakeClock, tmp_path: Path, request_: str
) -> None:
    """The user cancels (or holds) a job box-a claimed but never launched; box-a goes silent
    and box-b fails the job as lost. When box-a comes back and finds the claim never started,
    the job is cancelled (or held), as asked: not put back to run."""
    a = daemon(q, tmp_path, "box-a")
    b = daemon(q, tmp_path, "box-b")
    a.heartbeat()
    b.heartbeat()
    job_id, _ = stale_claim(q, lclock, tmp_path, "box-a")
    assert getattr(q, request_)(job_id) == "requested"
    lclock.advance(seconds=STALE_S + 1)
    assert b.tick().lost == [job_id]
    failed = q.get(job_id)
    assert failed.state == S.FAILED and failed.request == request_  # kept for box-a
    view = JobView.from_model(failed)  # what `ecoq queue` and `ecoq show` say of it
    assert "requested" not in " ".join(queue_row(view, lclock()))
    assert ("request", f"{request_} (carried out if its lost daemon comes back)") in show_lines(
        view, lclock()
    )
    report = a.tick()
    job = q.get(job_id)
    assert job.request is None
    if request_ == "cancel":
        assert report.reaped == [job_id] and report.requeued == []
        assert job.state == S.CANCELLED and job.reason == "cancelled by user before it started"
    else:
        assert report.requeued == [job_id] and report.started == []
        assert job.state == S.PENDING and job.held
