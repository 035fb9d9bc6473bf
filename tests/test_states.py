"""The state machine: every legal move works through the queue, every illegal one raises."""

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import update

from ecoq.db import session
from ecoq.errors import IllegalTransition
from ecoq.models import Job
from ecoq.scheduler.queue import Queue
from ecoq.states import TERMINAL, TRANSITIONS, JobState, check_transition
from tests.conftest import FakeClock, make_spec

PAIRS = list(itertools.product(JobState, JobState))
LEGAL = [(a, b) for a, b in PAIRS if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in PAIRS if b not in TRANSITIONS[a]]


def _force(queue: Queue, job_id: int, state: JobState) -> None:
    with session(queue.engine) as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=str(state)))  # type: ignore[arg-type]
        s.commit()


@pytest.mark.parametrize(("current", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_is_applied(
    queue: Queue, clock: FakeClock, current: JobState, target: JobState
) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    _force(queue, job.id, current)
    assert queue.transition(job.id, [current], target)
    assert queue.get(job.id).state == target


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_raises_and_changes_nothing(
    queue: Queue, clock: FakeClock, current: JobState, target: JobState
) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    _force(queue, job.id, current)
    with pytest.raises(IllegalTransition, match=f"from {current} to {target}"):
        queue.transition(job.id, [current], target)
    assert queue.get(job.id).state == current


def test_compare_and_set_loses_when_state_moved(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock()))
    assert job.id is not None
    assert queue.transition(job.id, [JobState.PENDING], JobState.CANCELLED)
    # A racing claim that still believed the job pending must not win.
    assert not queue.transition(job.id, [JobState.PENDING], JobState.RUNNING)
    assert queue.get(job.id).state == JobState.CANCELLED


def test_terminal_states_have_no_way_out() -> None:
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED} == TERMINAL
    for state in TERMINAL:
        for target in JobState:
            with pytest.raises(IllegalTransition):
                check_transition(1, state, target)


def test_late_flag_set_when_claimed_after_latest_start(queue: Queue, clock: FakeClock) -> None:
    job = queue.submit(make_spec(clock(), deadline_h=2, duration_h=1))
    assert job.id is not None
    queue.set_plan(job.id, planned_start=clock())
    clock.advance(hours=1, minutes=30)
    run = queue.claim(queue.get(job.id), worker="w", host="h", run_dir="/tmp/x", gpus=[])
    assert run is not None
    assert queue.get(job.id).late
    assert queue.get(job.id).started_at == clock.now
    assert clock.now - timedelta(hours=1, minutes=30) == job.submitted_at
