"""A claim that never started goes back to the queue, and what its user asked meanwhile is
carried out: a cancel is never left on a waiting job (where no daemon would act on it, so the job
waited forever: found by the 200-SIGKILL crash suite in CI), a hold becomes the held flag.

The daemon tells a wrapper that will never take its start token from one about to: a zombie
wrapper (orphaned by a daemon that exited, under an init that does not reap) is gone, an abandoned
run is abandoned whoever holds the wrapper's pid, and a wrapper's launch record (pid and start
time) tells a wrapper that died before its token from a live process that reused its pid.
"""

import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from ecoq.models import Job, Run
from ecoq.scheduler.executors.local import LAUNCH_FILE
from ecoq.scheduler.executors.wrapper import SPEC_FILE, TOKEN_FILE, proc_stat
from ecoq.scheduler.queue import Queue
from ecoq.states import JobState
from tests.conftest import FakeClock, make_spec
from tests.scheduler.test_daemon import _utcnow, make_daemon, rq, sh, submit, tick_until

__all__ = ["rq"]  # the fixture, shared with test_daemon

S = JobState


def _claimed(queue: Queue) -> tuple[int, Run]:
    job = queue.submit(make_spec(queue.clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=queue.clock())
    run = queue.claim(queue.get(job.id), worker="w", host="h", run_dir="/x", gpus=[])
    assert run is not None
    return job.id, run


# -- Queue.requeue --------------------------------------------------------------------------------
def test_requeue_puts_the_job_back_to_wait(queue: Queue, clock: FakeClock) -> None:
    job_id, _ = _claimed(queue)
    assert queue.requeue(job_id, clock()) == S.PENDING
    job = queue.get(job_id)
    assert (job.state, job.worker, job.started_at, job.planned_start) == (
        S.PENDING,
        None,
        None,
        None,
    )
    assert job.segment_started_at is None and job.request is None and not job.held
    assert queue.requeue(job_id, clock()) is None  # no longer running


def test_a_cancel_asked_while_it_was_claimed_ends_it_cancelled(
    queue: Queue, clock: FakeClock
) -> None:
    job_id, _ = _claimed(queue)
    assert queue.cancel(job_id) == "requested"  # it is running, as far as the user can tell
    clock.advance(seconds=5)
    assert queue.requeue(job_id, clock()) == S.CANCELLED
    job = queue.get(job_id)
    assert job.state == S.CANCELLED and job.request is None
    assert job.finished_at == clock() and job.reason == "cancelled by user before it started"
    assert job.work_done_s == 0


def test_a_hold_asked_while_it_was_claimed_holds_it(queue: Queue, clock: FakeClock) -> None:
    job_id, _ = _claimed(queue)
    assert queue.hold(job_id) == "requested"
    assert queue.requeue(job_id, clock()) == S.PENDING
    job = queue.get(job_id)
    assert job.held and job.request is None
    assert queue.release(job_id) == "released"


def test_a_resumed_job_keeps_its_first_start(queue: Queue, clock: FakeClock) -> None:
    job_id, _ = _claimed(queue)
    first = queue.get(job_id).started_at
    queue._cas(job_id, [S.RUNNING], pauses=1)  # as if it had paused once for a checkpoint
    clock.advance(hours=1)
    assert queue.requeue(job_id, clock()) == S.PENDING
    assert queue.get(job_id).started_at == first


def test_a_checkpoint_exit_never_swallows_a_cancel(queue: Queue, clock: FakeClock) -> None:
    job_id, run = _claimed(queue)
    assert queue.mark_checkpoint(queue.get(job_id), clock())
    stale = queue.get(job_id)  # what the daemon read before the user's cancel
    assert queue.cancel(job_id) == "requested"
    back = clock() + timedelta(hours=2)
    kw = {"exit_code": 0, "finished_at": clock(), "reason": "checkpointed", "segments": []}
    assert not queue.checkpointed(stale, run, next_start=back, **kw)  # type: ignore[arg-type]
    job = queue.get(job_id)
    assert job.state == S.RUNNING and job.request == "cancel"  # the next reap cancels it


# -- the daemon's reap ----------------------------------------------------------------------------
def _claim_in(rq: Queue, job_id: int, run_dir: Path, wrapper_pid: int | None = None) -> Run:
    rq.set_plan(job_id, planned_start=_utcnow())
    run = rq.claim(rq.get(job_id), worker="box1", host="h", run_dir=str(run_dir), gpus=[])
    assert run is not None and run.id is not None
    if wrapper_pid is not None:
        rq.update_run(run.id, wrapper_pid=wrapper_pid)
    return run


def test_a_cancelled_claim_that_never_started_is_cancelled_not_requeued(
    rq: Queue, tmp_path: Path
) -> None:
    """The CI failure: a daemon died between claim and launch, the user cancelled the job
    (running, to them), and the next daemon requeued it with the cancel still on it."""
    daemon = make_daemon(rq, tmp_path)
    marker = tmp_path / "ran"
    job_id = submit(rq, sh(f"echo x >> {marker}"))
    _claim_in(rq, job_id, tmp_path / "data" / "jobs" / str(job_id) / "lost")
    assert rq.cancel(job_id) == "requested"
    report = daemon.tick()
    assert report.reaped == [job_id] and report.requeued == [] and report.started == []
    job = rq.get(job_id)
    assert job.state == S.CANCELLED and job.reason == "cancelled by user before it started"
    assert not marker.exists()


def _zombie() -> int:
    """The pid of a child that exited and was not waited for (state Z until reaped)."""
    child = subprocess.Popen(["/bin/true"])
    path = Path(f"/proc/{child.pid}/stat")
    while path.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        pass
    zombie = child.pid
    child.returncode = 0  # the test reaps it at the end, not Popen's finaliser
    return zombie


def _launched_spec(run_dir: Path) -> None:
    """A run folder as `LocalExecutor.launch` leaves it before the wrapper takes the token."""
    run_dir.mkdir(parents=True)
    (run_dir / SPEC_FILE).write_text("{}")


def test_a_zombie_wrapper_is_gone(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    marker = tmp_path / "ran"
    job_id = submit(rq, sh(f"echo x >> {marker}"))
    run_dir = tmp_path / "data" / "jobs" / str(job_id) / "zombie"
    _launched_spec(run_dir)
    zombie = _zombie()
    try:
        _claim_in(rq, job_id, run_dir, wrapper_pid=zombie)
        report = daemon.tick()  # the wrapper died before it took the token: requeued, restarted
        assert report.requeued == [job_id]
        assert json.loads((run_dir / TOKEN_FILE).read_text())["by"] == "abandon"
        tick_until(daemon, lambda: rq.get(job_id).state == S.SUCCEEDED)
        assert marker.read_text() == "x\n"
    finally:
        os.waitpid(zombie, 0)


def test_an_abandoned_run_is_requeued_whoever_holds_the_wrapper_pid(
    rq: Queue, tmp_path: Path
) -> None:
    """The stored wrapper pid is held by a live process (a reused pid: here, this test's own),
    yet the run can never start: its token was already taken by an abandon (a daemon died
    between the abandon and the requeue)."""
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, ["/bin/true"])
    run_dir = tmp_path / "data" / "jobs" / str(job_id) / "abandoned"
    _launched_spec(run_dir)
    _claim_in(rq, job_id, run_dir, wrapper_pid=os.getpid())
    assert daemon.executor.abandon(run_dir)
    assert daemon.tick().requeued == [job_id]
    tick_until(daemon, lambda: rq.get(job_id).state == S.SUCCEEDED)


def test_a_wrapper_dead_before_its_token_is_requeued_despite_a_reused_pid(
    rq: Queue, tmp_path: Path
) -> None:
    """The wrapper died before it took its token and its pid now belongs to a live process: the
    launch record's start time tells them apart."""
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, ["/bin/true"])
    run_dir = tmp_path / "data" / "jobs" / str(job_id) / "reused"
    _launched_spec(run_dir)
    _claim_in(rq, job_id, run_dir, wrapper_pid=os.getpid())
    stat = proc_stat(os.getpid())
    assert stat is not None
    record = {"wrapper_pid": os.getpid(), "wrapper_start_ticks": stat[0] + 1, "boot_id": ""}
    (run_dir / LAUNCH_FILE).write_text(json.dumps(record))
    assert daemon.tick().requeued == [job_id]
    tick_until(daemon, lambda: rq.get(job_id).state == S.SUCCEEDED)


def test_a_live_wrapper_about_to_start_is_waited_for(rq: Queue, tmp_path: Path) -> None:
    daemon = make_daemon(rq, tmp_path)
    job_id = submit(rq, ["/bin/true"])
    run_dir = tmp_path / "data" / "jobs" / str(job_id) / "slow"
    _launched_spec(run_dir)
    _claim_in(rq, job_id, run_dir, wrapper_pid=os.getpid())
    report = daemon.tick()
    assert report.requeued == [] and rq.get(job_id).state == S.RUNNING
    assert not (run_dir / TOKEN_FILE).exists()  # still the wrapper's to take


class _Racing(Queue):
    """A queue whose next read of a job is followed at once by a daemon putting the job back
    to wait (its claim never started), before the caller writes."""

    race = False

    def get(self, job_id: int) -> Job:
        job = super().get(job_id)
        if self.race:
            self.race = False
            self.requeue(job_id, self.clock())
        return job


@pytest.mark.parametrize("action", ["cancel", "hold"])
def test_a_request_on_a_job_put_back_to_wait_meanwhile(
    queue: Queue, clock: FakeClock, action: str
) -> None:
    racing = _Racing(queue.engine, clock)
    job_id, _ = _claimed(racing)
    racing.race = True
    if action == "cancel":
        assert racing.cancel(job_id) == "cancelled"
        assert racing.get(job_id).state == S.CANCELLED
    else:
        assert racing.hold(job_id) == "held"
        job = racing.get(job_id)
        assert job.state == S.PENDING and job.held
