"""The queue API: submission, validation, requests and claims."""

from dataclasses import replace
from datetime import timedelta

import pytest

from ecoq.errors import JobNotFound, ValidationError
from ecoq.scheduler.queue import Queue, validate_spec
from ecoq.states import JobState
from tests.conftest import FakeClock, make_spec

S = JobState


def test_submit_stores_everything(queue: Queue, clock: FakeClock) -> None:
    spec = make_spec(clock(), command=["/bin/echo", "x y"], gpus=0, project="p")
    job = queue.submit(spec)
    assert job.id is not None
    got = queue.get(job.id)
    assert got.state == S.PENDING
    assert got.command == ["/bin/echo", "x y"]
    assert got.project == "p"
    assert got.env["PATH"]
    assert got.deadline == spec.deadline


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"deadline_h": -1}, "in the past"),
        ({"deadline_h": 1, "duration_h": 2}, "extend --deadline or shorten --duration"),
        ({"gpus": 3}, "more than this box has"),
        ({"gpus": -1}, "must be 0 or more"),
    ],
)
def test_validation(clock: FakeClock, change: dict[str, float], message: str) -> None:
    spec = make_spec(clock(), **change)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=message):
        validate_spec(spec, clock(), box_gpus=2)


def test_not_before_counts_toward_the_deadline(clock: FakeClock) -> None:
    spec = make_spec(clock(), deadline_h=3, duration_h=1, not_before=clock() + timedelta(hours=2.5))
    with pytest.raises(ValidationError, match="earliest start"):
        validate_spec(spec, clock(), box_gpus=0)


def test_unknown_job(queue: Queue) -> None:
    with pytest.raises(JobNotFound, match="no job with id 42"):
        queue.cancel(42)


def test_cancel_waiting_job_is_immediate(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock() + timedelta(hours=3))
    assert queue.cancel(job.id) == "cancelled"
    got = queue.get(job.id)
    assert got.state == S.CANCELLED and got.reason == "cancelled by user"
    with pytest.raises(ValidationError, match="finished"):
        queue.cancel(job.id)


def test_cancel_running_job_is_a_request(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    assert queue.claim(queue.get(job.id), worker="w", host="h", run_dir="/x", gpus=[])
    assert queue.cancel(job.id) == "requested"
    got = queue.get(job.id)
    assert got.state == S.RUNNING and got.request == "cancel"


def test_hold_and_release_waiting(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    assert queue.hold(job.id) == "held"
    assert queue.due(clock()) == []
    assert queue.release(job.id) == "released"
    got = queue.get(job.id)
    assert got.state == S.PENDING and not got.held and got.planned_start is None


def test_hold_running_requests_pause_and_release_needs_paused(
    queue: Queue, clock: FakeClock
) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    queue.claim(queue.get(job.id), worker="w", host="h", run_dir="/x", gpus=[])
    with pytest.raises(ValidationError, match="cannot release"):
        queue.release(job.id)
    assert queue.hold(job.id) == "requested"
    assert queue.get(job.id).request == "hold"


def test_run_now_moves_the_start_and_survives_replanning(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock() + timedelta(hours=5))
    assert queue.run_now(job.id) == "requested"
    got = queue.get(job.id)
    assert got.run_now and got.planned_start == clock()
    assert [j.id for j in queue.due(clock())] == [job.id]


def test_a_job_is_claimed_once(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    stale = queue.get(job.id)
    assert queue.claim(stale, worker="a", host="h", run_dir="/a", gpus=[]) is not None
    assert queue.claim(stale, worker="b", host="h", run_dir="/b", gpus=[]) is None
    assert queue.get(job.id).worker == "a"
    assert len(queue.active("a")) == 1 and queue.active("b") == []


def test_drop_if_late_expires(queue: Queue, clock: FakeClock) -> None:
    keep = queue.submit(make_spec(clock(), deadline_h=2, duration_h=1))
    drop = queue.submit(make_spec(clock(), deadline_h=2, duration_h=1, drop_if_late=True))
    clock.advance(hours=1, minutes=1)
    expired = queue.expire_overdue(clock())
    assert [j.id for j in expired] == [drop.id]
    assert drop.id is not None and keep.id is not None
    assert queue.get(drop.id).state == S.EXPIRED
    assert "drop-if-late" in (queue.get(drop.id).reason or "")
    assert queue.get(keep.id).state == S.PENDING


def test_learned_duration_is_the_median_of_recent_successes(queue: Queue, clock: FakeClock) -> None:
    for minutes in (10, 30, 20):
        job = queue.submit(make_spec(clock(), command=["/bin/train"]))
        assert job.id is not None
        queue.set_plan(job.id, planned_start=clock())
        run = queue.claim(queue.get(job.id), worker="w", host="h", run_dir="/x", gpus=[])
        assert run is not None
        queue.finish(
            queue.get(job.id),
            run,
            S.SUCCEEDED,
            exit_code=0,
            finished_at=clock() + timedelta(minutes=minutes),
        )
    assert queue.learned_duration_s(["/bin/train"]) == 20 * 60
    assert queue.learned_duration_s(["/bin/other"]) is None


def test_finish_records_job_and_run(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    run = queue.claim(queue.get(job.id), worker="w", host="h", run_dir="/x", gpus=[])
    assert run is not None
    assert queue.finish(queue.get(job.id), run, S.FAILED, exit_code=3, finished_at=clock())
    assert not queue.finish(queue.get(job.id), run, S.FAILED, exit_code=3, finished_at=clock())
    got, latest = queue.get(job.id), queue.latest_run(job.id)
    assert got.state == S.FAILED and got.exit_code == 3
    assert latest is not None and latest.exit_code == 3


def test_spec_replace_keeps_validation(clock: FakeClock) -> None:
    spec = replace(make_spec(clock()), duration=timedelta(0))
    with pytest.raises(ValidationError, match="must be positive"):
        validate_spec(spec, clock(), box_gpus=0)
