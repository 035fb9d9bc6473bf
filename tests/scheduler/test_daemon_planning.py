"""The daemon plans with `plan_jobs`: interruptible jobs paused and resumed at their segment
boundaries (SIGSTOP/SIGCONT and checkpoints), capacity over time, and re-plans that never move
a started segment. Real SQLite files and real processes; the daemon's clock is a fake one, so
segment boundaries an hour apart pass in milliseconds."""

import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from ecoq.db import open_engine
from ecoq.errors import ForecastUnavailable
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.models import Job
from ecoq.scheduler import segments as segs
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.replan import PlannerParams
from ecoq.states import JobState
from tests.conftest import FakeClock, make_spec

S = JobState
T0 = FakeClock(datetime.fromisoformat("2026-11-30T10:00:00+00:00")).now


class HourlyProvider:
    """Hourly values from T0 on (`values[h]` holds over [T0 + h, T0 + h + 1h)); the last value
    holds after them. `values` may be replaced between ticks (a forecast update)."""

    name = "hourly"

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        hours = max(len(self.values), int((end - T0).total_seconds() // 3600) + 2)
        points = tuple(
            IntensityPoint(T0 + timedelta(hours=h), self.values[min(h, len(self.values) - 1)])
            for h in range(hours)
        )
        return Forecast(zone, "average", "hourly", "test forecast", T0, timedelta(hours=1), points)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


_DAEMONS: list[Daemon] = []


@pytest.fixture
def fq(db_url: str, clock: FakeClock) -> Iterator[Queue]:
    """A queue on the fake clock; kills the jobs' processes and reaps their wrappers after."""
    queue = Queue(open_engine(db_url), clock=clock)
    yield queue
    for daemon in _DAEMONS:
        for job in queue.jobs(list(S)):
            run = queue.latest_run(job.id or 0)
            if run is not None:
                daemon.executor.signal(Path(run.run_dir), signal.SIGKILL)
                daemon.executor.signal(Path(run.run_dir), signal.SIGCONT)
        assert isinstance(daemon.executor, LocalExecutor)
        daemon.executor.reap(10)
    _DAEMONS.clear()


def daemon_for(queue: Queue, tmp_path: Path, provider: HourlyProvider, **kw: object) -> Daemon:
    cfg = DaemonConfig(data_dir=tmp_path / "data", worker="box1", box_gpus=0, kill_grace_s=0.5)
    for key, value in kw.items():
        setattr(cfg, key, value)
    daemon = Daemon(queue, ForecastSource(provider), cfg)
    _DAEMONS.append(daemon)
    return daemon


def wait_until(daemon: Daemon, done: Callable[[], bool], timeout_s: float = 15) -> None:
    limit = time.monotonic() + timeout_s
    while time.monotonic() < limit:
        daemon.tick()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached before the timeout")


def grows(path: Path, wait_s: float = 0.4) -> bool:
    """Whether the job keeps writing to `path` (it runs) over `wait_s` seconds."""
    before = path.stat().st_size if path.exists() else 0
    time.sleep(wait_s)
    return (path.stat().st_size if path.exists() else 0) > before


#: A job that writes a line every 50 ms until `flag` exists, and notes every SIGCONT and SIGUSR1
#: it receives (SIGSTOP itself cannot be caught: /proc shows it). On SIGUSR1 it "saves its state"
#: and exits 0. argv: out-file, flag-file.
LOOP = """
import os, signal, sys, time
out, flag = sys.argv[1], sys.argv[2]
def note(text):
    with open(out, "a") as fh:
        fh.write(text + "\\n")
def cont(*_):
    note("CONT")
def save(*_):
    note("SAVED")
    sys.exit(0)
signal.signal(signal.SIGCONT, cont)
signal.signal(signal.SIGUSR1, save)
note("START " + " ".join(sys.argv[3:]))
while not os.path.exists(flag):
    note("tick")
    time.sleep(0.05)
note("DONE")
"""


def loop_cmd(tmp_path: Path, *extra: str) -> list[str]:
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    return [sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / "flag"), *extra]


def submit(queue: Queue, command: list[str], **kw: object) -> int:
    job = queue.submit(make_spec(queue.clock(), command=command, **kw))
    assert job.id is not None
    return job.id


def running_pid(queue: Queue, job_id: int) -> Callable[[], bool]:
    return lambda: (r := queue.latest_run(job_id)) is not None and r.pid is not None


def stopped(daemon: Daemon, queue: Queue, job_id: int) -> bool:
    run = queue.latest_run(job_id)
    assert run is not None
    return daemon.executor.status(Path(run.run_dir)).reason == "stopped"


# Clean at 10:00 and 12:00, dirty at 11:00 and after 13:00: a 2 h job with one pause runs
# 10-11 and 12-13.
SPLIT = [100.0, 500.0, 100.0, 500.0, 500.0, 500.0]


def test_sigstop_pause_and_resume_at_segment_boundaries(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    daemon = daemon_for(fq, tmp_path, HourlyProvider(SPLIT))
    out = tmp_path / "out"
    job_id = submit(
        fq, loop_cmd(tmp_path), deadline_h=4, duration_h=2, interruptible=True, max_pauses=1
    )
    report = daemon.tick()
    job = fq.get(job_id)
    assert report.started == [job_id]
    assert segs.load(job.segments) == [
        (T0, T0 + timedelta(hours=1)),
        (T0 + timedelta(hours=2), T0 + timedelta(hours=3)),
    ]
    assert job.segment_end == T0 + timedelta(hours=1)
    wait_until(daemon, running_pid(fq, job_id))
    assert grows(out)

    clock.advance(minutes=59)
    assert daemon.tick().paused == [] and grows(out)
    clock.advance(minutes=1)  # 11:00: the first segment is over
    report = daemon.tick()
    job = fq.get(job_id)
    assert report.paused == [job_id] and job.state == S.PAUSED and not job.held
    assert job.pauses == 1 and job.planned_start == T0 + timedelta(hours=2)
    assert job.work_done_s == pytest.approx(3600)
    assert stopped(daemon, fq, job_id) and not grows(out)
    assert fq.next_start() == T0 + timedelta(hours=2)  # run_forever wakes then
    run = fq.latest_run(job_id)
    assert run is not None and run.gpu_indices == []  # the run (and its GPUs) stays

    clock.advance(minutes=30)
    assert daemon.tick().resumed == [] and fq.get(job_id).state == S.PAUSED
    clock.advance(minutes=30)  # 12:00: the next segment begins
    report = daemon.tick()
    assert report.resumed == [job_id] and fq.get(job_id).state == S.RUNNING
    assert not stopped(daemon, fq, job_id) and grows(out)
    assert out.read_text().count("CONT") == 1  # the SIGCONT reached the job
    assert fq.get(job_id).segment_end is None  # the last segment: no more pauses

    clock.advance(hours=1, minutes=30)  # past the planned end: never paused again
    assert daemon.tick().paused == [] and grows(out)
    (tmp_path / "flag").touch()
    wait_until(daemon, lambda: fq.get(job_id).state == S.SUCCEEDED)
    job = fq.get(job_id)
    assert job.pauses == 1 and job.exit_code == 0
    assert len([r for r in [fq.latest_run(job_id)] if r]) == 1


def test_never_pauses_more_than_max_pauses(fq: Queue, clock: FakeClock, tmp_path: Path) -> None:
    """Even when the stored plan has more segments than pauses allowed (a plan from before the
    limit changed, or a hand-edited one), the daemon stops pausing at the limit."""
    daemon = daemon_for(fq, tmp_path, HourlyProvider([100.0]))
    job_id = submit(
        fq, loop_cmd(tmp_path), deadline_h=8, duration_h=3, interruptible=True, max_pauses=1
    )
    hour = timedelta(hours=1)
    plan = [(T0 + k * 2 * hour, T0 + k * 2 * hour + hour) for k in range(3)]  # 3 segments
    assert fq.set_plan(job_id, planned_start=T0, segments=segs.dump(plan))
    daemon._replan_all = False  # keep the forged plan
    assert daemon.tick().started == [job_id]
    wait_until(daemon, running_pid(fq, job_id))
    pauses = 0
    for _ in range(6):
        clock.advance(hours=1)
        report = daemon.tick()
        pauses += len(report.paused)
    job = fq.get(job_id)
    assert pauses == 1 and job.pauses == 1 and job.state == S.RUNNING
    assert job.segment_end is None


def test_checkpoint_pause_then_resume_command_runs_as_a_new_run(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    daemon = daemon_for(fq, tmp_path, HourlyProvider(SPLIT))
    out = tmp_path / "out"
    (tmp_path / "flag").touch()  # the resumed run finishes at once
    flagless = loop_cmd(tmp_path)
    flagless[3] = str(tmp_path / "no-flag")  # the first run loops until its checkpoint
    job_id = submit(
        fq,
        flagless,
        deadline_h=4,
        duration_h=2,
        interruptible=True,
        max_pauses=1,
        checkpoint_signal="SIGUSR1",
        resume_command=loop_cmd(tmp_path, "--resume"),
    )
    assert daemon.tick().started == [job_id]
    wait_until(daemon, running_pid(fq, job_id))
    first = fq.latest_run(job_id)
    assert first is not None

    clock.advance(hours=1)  # 11:00: SIGUSR1, the job saves and exits
    daemon.tick()
    assert fq.get(job_id).checkpoint_at == clock.now
    wait_until(daemon, lambda: fq.get(job_id).state == S.PLANNED)
    job = fq.get(job_id)
    assert "SAVED" in out.read_text()
    assert job.pauses == 1 and job.work_done_s == pytest.approx(3600)
    assert job.planned_start == T0 + timedelta(hours=2) and job.worker is None
    assert job.started_at is not None and job.finished_at is None
    done = fq.latest_run(job_id)
    assert done is not None and done.id == first.id
    assert done.exit_code == 0 and "checkpointed on SIGUSR1" in (done.reason or "")
    assert segs.load(job.segments)[0] == (T0, T0 + timedelta(hours=1))

    clock.advance(minutes=30)
    assert daemon.tick().started == []  # waits for its next segment
    clock.advance(minutes=30)  # 12:00: the resume command runs as a new run
    assert daemon.tick().started == [job_id]
    wait_until(daemon, lambda: fq.get(job_id).state == S.SUCCEEDED)
    second = fq.latest_run(job_id)
    assert second is not None and second.id != first.id and second.exit_code == 0
    text = out.read_text()
    assert text.count("START") == 2 and "START --resume" in text and text.count("DONE") == 1
    job = fq.get(job_id)
    assert job.state == S.SUCCEEDED and job.exit_code == 0 and job.pauses == 1
    assert job.started_at == T0  # the job's first start


def test_checkpoint_that_ignores_the_signal_is_killed_after_the_grace(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    daemon = daemon_for(fq, tmp_path, HourlyProvider(SPLIT))
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import signal, time\nsignal.signal(signal.SIGUSR1, signal.SIG_IGN)\ntime.sleep(60)\n"
    )
    job_id = submit(
        fq,
        [sys.executable, str(stubborn)],
        deadline_h=4,
        duration_h=2,
        interruptible=True,
        checkpoint_signal="USR1",
        resume_command=["/bin/true"],
    )
    daemon.tick()
    wait_until(daemon, running_pid(fq, job_id))
    time.sleep(0.3)  # let it install its handler
    clock.advance(hours=1)
    daemon.tick()
    time.sleep(0.3)
    daemon.tick()
    assert fq.get(job_id).state == S.RUNNING  # still within its grace
    clock.advance(seconds=1)
    wait_until(daemon, lambda: fq.get(job_id).state == S.PLANNED)
    run = fq.latest_run(job_id)
    assert run is not None and run.exit_code == 128 + signal.SIGKILL
    assert "did not exit within 0.5 s of SIGUSR1" in (run.reason or "")


def test_capacity_spreads_jobs_that_want_one_green_hour(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    # 12:00 is the cleanest hour, then 13:00, then 11:00; 10:00 and later are dirty.
    provider = HourlyProvider([500.0, 300.0, 100.0, 200.0, 450.0, 600.0])
    daemon = daemon_for(fq, tmp_path, provider, max_jobs=2)
    gate = tmp_path / "gate"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    ids = [submit(fq, ["/bin/sh", "-c", wait], deadline_h=6, duration_h=1) for _ in range(6)]
    daemon.tick()
    jobs = [fq.get(i) for i in ids]
    hours = sorted(int(((j.planned_start or T0) - T0).total_seconds() // 3600) for j in jobs)
    assert hours == [1, 1, 2, 2, 3, 3]  # two per hour, the cleanest hours first
    pushed = [j for j in jobs if "with room" in (j.plan_reason or "")]
    assert len(pushed) == 4

    def at_most_two() -> bool:
        assert len(fq.active("box1")) <= 2
        return all(fq.get(i).state == S.SUCCEEDED for i in ids)

    clock.now = T0 + timedelta(hours=1)
    assert len(daemon.tick().started) == 2
    clock.now = T0 + timedelta(hours=2)  # two more are due, but both slots are taken
    assert daemon.tick().started == [] and len(fq.active("box1")) == 2
    gate.touch()
    clock.now = T0 + timedelta(hours=3)
    wait_until(daemon, at_most_two)


def test_replan_never_moves_a_started_segment(fq: Queue, clock: FakeClock, tmp_path: Path) -> None:
    provider = HourlyProvider(SPLIT)
    daemon = daemon_for(fq, tmp_path, provider)
    job_id = submit(
        fq, loop_cmd(tmp_path), deadline_h=6, duration_h=2, interruptible=True, max_pauses=1
    )
    daemon.tick()
    wait_until(daemon, running_pid(fq, job_id))
    before = fq.get(job_id)

    # A new forecast makes 11:00 the cleanest hour: the running segment keeps its plan.
    provider.values = [100.0, 50.0, 500.0, 500.0, 500.0, 20.0]
    clock.advance(minutes=30)
    daemon.request_replan()
    daemon.tick()
    during = fq.get(job_id)
    assert during.state == S.RUNNING
    assert during.segments == before.segments and during.segment_end == before.segment_end

    clock.advance(minutes=30)  # 11:00: paused as planned (the plan said 12:00 next)
    assert daemon.tick().paused == [job_id]
    assert fq.get(job_id).planned_start == T0 + timedelta(hours=2)
    # The next refresh re-plans the remaining hour: 15:00 is cleanest now. The hour it ran
    # stays as it ran.
    daemon.request_replan()
    daemon.tick()
    paused = fq.get(job_id)
    assert paused.state == S.PAUSED
    assert segs.load(paused.segments) == [
        (T0, T0 + timedelta(hours=1)),
        (T0 + timedelta(hours=5), T0 + timedelta(hours=6)),
    ]
    assert paused.planned_start == T0 + timedelta(hours=5)


def test_a_job_held_by_the_user_is_not_resumed_by_the_planner(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    daemon = daemon_for(fq, tmp_path, HourlyProvider(SPLIT))
    job_id = submit(
        fq, loop_cmd(tmp_path), deadline_h=4, duration_h=2, interruptible=True, max_pauses=1
    )
    daemon.tick()
    wait_until(daemon, running_pid(fq, job_id))
    clock.advance(hours=1)
    assert daemon.tick().paused == [job_id]
    assert fq.hold(job_id) == "held"  # a planned pause: held at once, nothing to signal
    clock.advance(hours=1)  # its next segment begins, but the user holds it
    assert daemon.tick().resumed == []
    assert fq.get(job_id).state == S.PAUSED and stopped(daemon, fq, job_id)
    assert fq.release(job_id) == "released"
    assert daemon.tick().resumed == [job_id]
    assert not stopped(daemon, fq, job_id)


def test_user_hold_and_release_of_a_running_interruptible_job(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    daemon = daemon_for(fq, tmp_path, HourlyProvider(SPLIT))
    job_id = submit(
        fq, loop_cmd(tmp_path), deadline_h=4, duration_h=2, interruptible=True, max_pauses=1
    )
    daemon.tick()
    wait_until(daemon, running_pid(fq, job_id))
    clock.advance(minutes=10)
    assert fq.hold(job_id) == "requested"
    daemon.tick()
    job: Job = fq.get(job_id)
    assert job.state == S.PAUSED and job.held and job.planned_start is None
    assert stopped(daemon, fq, job_id)
    clock.advance(hours=2)  # the planner leaves a user's pause alone
    assert daemon.tick().resumed == [] and fq.get(job_id).state == S.PAUSED
    assert fq.release(job_id) == "requested"
    daemon.tick()
    job = fq.get(job_id)
    assert job.state == S.RUNNING and not job.held and not stopped(daemon, fq, job_id)
    assert job.segment_end is None  # released after its segment's end: runs to the end


def test_jobs_a_box_can_never_run_do_not_crowd_out_those_it_can(fq: Queue) -> None:
    gpu_jobs = [submit(fq, ["/bin/true"], gpus=1) for _ in range(3)]
    cpu_job = submit(fq, ["/bin/true"])
    for job_id in [*gpu_jobs, cpu_job]:
        assert fq.set_plan(job_id, planned_start=T0)
    assert [j.id for j in fq.due(T0, limit=2)] == gpu_jobs[:2]
    assert [j.id for j in fq.due(T0, limit=2, max_gpus=0)] == [cpu_job]


def test_a_job_pushed_only_for_room_may_start_once_there_is_room(
    fq: Queue, clock: FakeClock, tmp_path: Path
) -> None:
    daemon = daemon_for(fq, tmp_path, HourlyProvider([100.0]), max_jobs=1)
    gate = tmp_path / "gate"
    wait = ["/bin/sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]
    first, second = (submit(fq, wait, deadline_h=6, duration_h=1) for _ in range(2))
    assert daemon.tick().started == [first]
    job = fq.get(second)
    assert job.planned_start == T0 + timedelta(hours=1) and job.plan_asap
    assert "no capacity now" in (job.plan_reason or "")
    gate.touch()  # the first ends long before its hour is up: the second starts at once
    wait_until(daemon, lambda: fq.get(second).state != S.PLANNED)
    assert fq.get(second).started_at == T0


class DownProvider:
    """Every call fails, and nothing is cached: the chain has no forecast at all."""

    name = "down"

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast:
        raise ForecastUnavailable(f"down: no forecast for {zone}")


@pytest.mark.parametrize("policy", ["now", "latest"])
def test_no_forecast_starts_per_fail_policy(
    fq: Queue, tmp_path: Path, policy: Literal["now", "latest"]
) -> None:
    cfg = DaemonConfig(
        data_dir=tmp_path / "data",
        worker="box1",
        box_gpus=0,
        planner=PlannerParams(fail_policy=policy),
    )
    daemon = Daemon(fq, ForecastSource(DownProvider()), cfg)
    _DAEMONS.append(daemon)
    job_id = submit(fq, ["/bin/true"], deadline_h=6, duration_h=1)
    daemon.tick()
    job = fq.get(job_id)
    assert job.plan_reason == f"no forecast for DE: start per fail_policy={policy}"
    assert job.plan_label == "no forecast" and job.plan_g_per_kwh is None
    if policy == "now":
        assert job.state != S.PENDING and job.started_at == T0
    else:
        assert job.planned_start == T0 + timedelta(hours=5)  # its latest start: never late
