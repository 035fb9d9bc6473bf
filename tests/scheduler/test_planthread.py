"""Planning beside the tick: the planner thread coalesces requests and survives failures; a
daemon whose planning blocks still starts due jobs and carries out cancels; a plan made from an
older copy of a job never overwrites what a user did meanwhile."""

import logging
import os
import signal as sigmod
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.errors import ForecastUnavailable
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.executors import Launched, LaunchSpec, RunStatus
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.planthread import PlannerThread, PlanRun
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.replan import LocalSite, PlannerParams, plan_batch, split
from ecoq.states import JobState
from tests.conftest import FakeClock, make_spec

S = JobState
WAIT_S = 20.0  # generous: the machine may be busy; never a timing assertion


# -- the thread on its own ----------------------------------------------------------------------
class GatedPlan:
    """A plan function that blocks until released, recording what it was asked."""

    def __init__(self, fail: bool = False) -> None:
        self.asked: list[bool] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = fail

    def __call__(self, all_waiting: bool) -> int:
        self.asked.append(all_waiting)
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        if self.fail:
            raise RuntimeError("planner broke")
        return 3


@pytest.fixture
def gated() -> Iterator[tuple[GatedPlan, PlannerThread, list[PlanRun]]]:
    plan = GatedPlan()
    runs: list[PlanRun] = []
    thread = PlannerThread(plan, on_done=runs.append)
    thread.start()
    yield plan, thread, runs
    plan.gate.set()
    assert thread.stop(WAIT_S)


def test_requests_made_while_planning_become_one_more_plan_of_the_widest_kind(
    gated: tuple[GatedPlan, PlannerThread, list[PlanRun]],
) -> None:
    plan, thread, runs = gated
    thread.request(all_waiting=False)
    assert plan.entered.wait(WAIT_S)
    assert thread.busy
    for wide in (False, True, False):  # three asks while the first plan runs
        thread.request(all_waiting=wide)
    plan.gate.set()
    assert thread.wait_idle(WAIT_S)
    assert plan.asked == [False, True]
    assert [(r.all_waiting, r.planned, r.failed) for r in runs] == [
        (False, 3, False),
        (True, 3, False),
    ]
    assert not thread.busy
    assert thread.last == runs[-1]


def test_a_failing_plan_is_logged_and_the_thread_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan = GatedPlan(fail=True)
    plan.gate.set()
    runs: list[PlanRun] = []
    thread = PlannerThread(plan, on_done=runs.append)
    thread.start()
    try:
        with caplog.at_level(logging.ERROR, logger="ecoq.scheduler.planthread"):
            thread.request(all_waiting=True)
            assert thread.wait_idle(WAIT_S)
        assert runs[0].failed and runs[0].planned == 0
        assert "planning failed" in caplog.text and "planner broke" in caplog.text
        plan.fail = False
        thread.request(all_waiting=False)
        assert thread.wait_idle(WAIT_S)
        assert [r.failed for r in runs] == [True, False]
    finally:
        assert thread.stop(WAIT_S)


def test_stop_serves_nothing_more_and_reports_a_plan_still_running(
    gated: tuple[GatedPlan, PlannerThread, list[PlanRun]],
) -> None:
    plan, thread, _runs = gated
    thread.request(all_waiting=True)
    assert plan.entered.wait(WAIT_S)
    thread.request(all_waiting=True)  # dropped by the stop
    assert thread.stop(0.05) is False
    thread.start()  # a fresh thread while the old one still plans
    plan.gate.set()
    assert thread.wait_idle(WAIT_S)
    assert plan.asked == [True]
    thread.request(all_waiting=False)  # served once, by the new thread alone
    assert thread.wait_idle(WAIT_S)
    assert plan.asked == [True, False]

    def planners() -> int:
        return [t.name for t in threading.enumerate()].count("ecoq-planner")

    limit = time.monotonic() + WAIT_S  # the old thread ends after its plan, not before
    while planners() > 1 and time.monotonic() < limit:
        time.sleep(0.01)
    assert planners() == 1


# -- a daemon whose planning blocks -------------------------------------------------------------
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


class GatedProvider:
    """Flat hourly forecasts; while `gate` is clear, `forecast` blocks (a provider timing out)."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        if not self.gate.is_set():
            self.waiting.set()
            assert self.gate.wait(WAIT_S)
        hours = int((end - start).total_seconds() // 3600) + 2
        points = tuple(IntensityPoint(start + timedelta(hours=h), 300.0) for h in range(hours))
        return Forecast(zone, "average", "gated", "test", start, timedelta(hours=1), points)

    def history(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable(f"{self.name} keeps no realized values")


class Running:
    """An executor whose runs stay running; records what it launched and signalled."""

    def __init__(self) -> None:
        self.launched: list[int] = []
        self.signals: list[int] = []

    def launch(self, spec: LaunchSpec) -> Launched:
        self.launched.append(spec.job_id)
        return Launched(wrapper_pid=os.getpid(), started_at=T0)

    def status(self, run_dir: Path) -> RunStatus:
        return RunStatus("running", pid=os.getpid(), started_at=T0)

    def signal(self, run_dir: Path, sig: sigmod.Signals | int) -> bool:
        self.signals.append(int(sig))
        return True

    def terminate(self, run_dir: Path, grace_s: float = 0.0) -> None:
        return None

    def abandon(self, run_dir: Path) -> bool:
        return True


def test_ticks_start_due_jobs_and_carry_out_cancels_while_a_plan_blocks(
    db_url: str, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    queue = Queue(open_engine(db_url), clock=clock)
    provider = GatedProvider()
    executor = Running()
    cfg = DaemonConfig(data_dir=tmp_path / "data", worker="box1", box_gpus=0)
    daemon = Daemon(queue, ForecastSource(provider), cfg, executor=executor)
    first = queue.submit(make_spec(T0, deadline_h=1.5)).id
    daemon.tick()  # inline: plans it (a flat forecast: at once) and starts it
    assert first in executor.launched
    due = queue.submit(make_spec(T0, deadline_h=30)).id
    assert due is not None
    queue.run_now(due)  # planned to start now, without the planner
    later = queue.submit(make_spec(T0, deadline_h=30)).id
    provider.gate.clear()
    done: list[PlanRun] = []
    daemon.plan_in_background(on_done=done.append)
    try:
        daemon.tick()  # asks the thread, which blocks in the provider
        assert provider.waiting.wait(WAIT_S)
        assert due in executor.launched, "the due job waited for the plan"
        assert queue.cancel(first or 0) == "requested"
        daemon.tick()
        assert int(sigmod.SIGTERM) in executor.signals, "the cancel waited for the plan"
        assert queue.get(later or 0).state == S.PENDING and not done
        provider.gate.set()
        assert daemon.planner is not None and daemon.planner.wait_idle(WAIT_S)
        assert done[0].planned == 1 and not any(r.failed for r in done)
        assert queue.get(later or 0).state in (S.PLANNED, S.RUNNING)
    finally:
        provider.gate.set()
        daemon.stop_planning(WAIT_S)


# -- plans made from an older copy --------------------------------------------------------------
def test_a_plan_never_overwrites_what_a_user_did_while_it_was_made(
    queue: Queue, clock: FakeClock
) -> None:
    ids = [queue.submit(make_spec(clock.now, deadline_h=30)).id or 0 for _ in range(4)]
    started, held, untouched, cancelled = ids
    site = LocalSite(name="box1", zone="DE", gpus=0, max_jobs=0)
    todo, holding = split(queue.planning_jobs(), site, all_waiting=True)
    source = ForecastSource(GatedProvider())
    planned = plan_batch(todo, holding, source, clock.now, PlannerParams(), site)
    clock.advance(seconds=1)  # the users act while the plan is being made
    queue.run_now(started)
    queue.hold(held)
    queue.cancel(cancelled)
    rows = [(job.id or 0, job.state, fields) for job, fields in planned]
    queue.set_plans(rows, seen={job.id or 0: job.updated_at for job in todo})
    assert queue.get(started).run_now and queue.get(started).planned_start == clock.now
    assert queue.get(held).held and queue.get(held).state == S.PENDING
    assert queue.get(cancelled).state == S.CANCELLED
    assert queue.get(untouched).state == S.PLANNED


def test_a_job_changed_within_the_same_clock_reading_is_still_protected(
    queue: Queue, clock: FakeClock
) -> None:
    """A frozen clock gives the change the same `updated_at`: the flags still protect it."""
    job_id = queue.submit(make_spec(clock.now, deadline_h=30)).id or 0
    site = LocalSite(name="box1", zone="DE", gpus=0, max_jobs=0)
    todo, holding = split(queue.planning_jobs(), site, all_waiting=True)
    planned = plan_batch(
        todo, holding, ForecastSource(GatedProvider()), clock.now, PlannerParams(), site
    )
    queue.hold(job_id)
    queue.set_plans(
        [(job.id or 0, job.state, f) for job, f in planned],
        seen={job.id or 0: job.updated_at for job in todo},
    )
    assert queue.get(job_id).held and queue.get(job_id).state == S.PENDING


def test_after_a_start_jobs_wait_for_the_daemons_first_re_plan(db_url: str, tmp_path: Path) -> None:
    """A job planned to start now by `ecoq submit` (or by a daemon before a restart) starts only
    once this daemon has re-planned it with its own forecasts; ticks meanwhile stay short."""
    clock = FakeClock(T0)
    queue = Queue(open_engine(db_url), clock=clock)
    provider = GatedProvider()
    executor = Running()
    cfg = DaemonConfig(data_dir=tmp_path / "data", worker="box1", box_gpus=0)
    daemon = Daemon(queue, ForecastSource(provider), cfg, executor=executor)
    job_id = queue.submit(make_spec(T0, deadline_h=1.5)).id or 0
    queue.set_plan(job_id, planned_start=T0)  # the submit-time plan: now
    provider.gate.clear()
    daemon.plan_in_background()
    try:
        daemon.tick()
        assert provider.waiting.wait(WAIT_S)
        daemon.tick()
        assert executor.launched == [], "started on a plan this daemon has not made"
        provider.gate.set()
        assert daemon.planner is not None and daemon.planner.wait_idle(WAIT_S)
        daemon.tick()
        assert executor.launched == [job_id]
    finally:
        provider.gate.set()
        daemon.stop_planning(WAIT_S)
