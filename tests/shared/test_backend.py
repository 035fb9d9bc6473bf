"""Who may do what through the shared daemon: the authorisation matrix of `Backend`.

The callers are made up here (the kernel-given identity is tested in test_server.py and
end to end in test_shared_e2e.py); the queue is a real database.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ecoq.db import EngineReader
from ecoq.errors import EcoqError, JobNotFound, ValidationError
from ecoq.scheduler.queue import Queue
from ecoq.shared.access import Caller
from ecoq.shared.backend import Backend
from ecoq.shared.protocol import SubmitRequest, make_request, parse_request
from ecoq.states import JobState
from ecoq.views import JobView
from tests.conftest import FakeClock, make_spec

ALICE = Caller(pid=10, uid=1001, gid=1001, user="alice", admin=False)
BOB = Caller(pid=11, uid=1002, gid=1002, user="bob", admin=False)
CAROL = Caller(pid=12, uid=1003, gid=1003, user="carol", admin=True)  # in shared.admins


class World:
    def __init__(self, queue: Queue, clock: FakeClock, tmp_path: Path) -> None:
        self.queue, self.clock, self.tmp = queue, clock, tmp_path
        self.submitted: list[tuple[SubmitRequest, str, int]] = []
        self.backend = Backend(
            queue,
            reader=lambda: EngineReader(queue.engine),
            submit_fn=self.submit_fn,
            accounting=lambda job_id: [("energy", f"job {job_id}: 1 kWh")],
        )
        self.a1 = self.add(ALICE)
        self.a2 = self.add(ALICE)
        self.b1 = self.add(BOB)

    def add(self, who: Caller) -> int:
        spec = replace(make_spec(self.clock()), user=who.user, uid=who.uid)
        job = self.queue.submit(spec)
        assert job.id is not None
        return job.id

    def submit_fn(self, req: SubmitRequest, user: str, uid: int) -> JobView:
        self.submitted.append((req, user, uid))
        spec = replace(make_spec(self.clock()), user=user, uid=uid, env=req.env)
        return JobView.from_model(self.queue.submit(spec))

    def call(self, who: Caller, op: str, **args: Any) -> Any:
        return self.backend.handle(who, parse_request(make_request(op, args)))

    def state(self, job_id: int) -> tuple[JobState, bool]:
        job = self.queue.get(job_id)
        return job.state, job.held


@pytest.fixture
def world(queue: Queue, clock: FakeClock, tmp_path: Path) -> World:
    return World(queue, clock, tmp_path)


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def test_hello_reports_the_callers_identity(world: World) -> None:
    hello = world.call(ALICE, "hello")
    assert (hello["uid"], hello["user"], hello["admin"], hello["protocol"]) == (
        1001,
        "alice",
        False,
        1,
    )
    assert world.call(CAROL, "hello")["admin"] is True


def test_queue_lists_only_the_callers_jobs_unless_admin(world: World) -> None:
    assert ids(world.call(ALICE, "queue")) == [world.a1, world.a2]
    assert ids(world.call(BOB, "queue")) == [world.b1]
    assert ids(world.call(CAROL, "queue")) == [world.a1, world.a2, world.b1]
    world.queue.cancel(world.a2)
    assert ids(world.call(ALICE, "queue")) == [world.a1]
    assert ids(world.call(ALICE, "queue", all=True)) == [world.a1, world.a2]
    assert ids(world.call(BOB, "queue", all=True)) == [world.b1]
    rows = world.call(ALICE, "queue", all=True)
    assert all("env" not in row for row in rows)  # no operation returns an environment


def test_show_is_for_the_owner_and_admins(world: World) -> None:
    shown = world.call(ALICE, "show", id=world.a1)
    assert shown["job"]["id"] == world.a1 and shown["job"]["user"] == "alice"
    assert shown["accounting"] == [["energy", f"job {world.a1}: 1 kWh"]]
    assert "env" not in shown["job"]
    assert world.call(CAROL, "show", id=world.a1)["job"]["id"] == world.a1
    with pytest.raises(JobNotFound) as foreign:
        world.call(BOB, "show", id=world.a1)
    with pytest.raises(JobNotFound) as missing:
        world.call(BOB, "show", id=999)
    # Another user's job and no job read the same: ids held by others are not revealed.
    assert str(foreign.value) == str(missing.value).replace("job 999", f"job {world.a1}")
    assert "of yours (bob (uid 1002))" in str(foreign.value)


@pytest.mark.parametrize("op", ["cancel", "hold", "release", "start"])
def test_other_users_cannot_change_a_job(world: World, op: str) -> None:
    before = world.state(world.a1)
    with pytest.raises(JobNotFound):
        world.call(BOB, op, id=world.a1)
    assert world.state(world.a1) == before


def test_the_owner_changes_their_jobs(world: World) -> None:
    assert world.call(ALICE, "hold", id=world.a1) == {"outcome": "held"}
    assert world.state(world.a1) == (JobState.PENDING, True)
    assert world.call(ALICE, "release", id=world.a1) == {"outcome": "released"}
    assert world.state(world.a1)[1] is False
    assert world.call(ALICE, "start", id=world.a1) == {"outcome": "requested"}
    assert world.call(ALICE, "cancel", id=world.a2) == {"outcome": "cancelled"}
    assert world.state(world.a2)[0] == JobState.CANCELLED


def test_an_admin_changes_anyones_jobs(world: World) -> None:
    assert world.call(CAROL, "hold", id=world.b1) == {"outcome": "held"}
    assert world.call(CAROL, "release", id=world.b1) == {"outcome": "released"}
    assert world.call(CAROL, "cancel", id=world.a1) == {"outcome": "cancelled"}
    assert world.state(world.a1)[0] == JobState.CANCELLED


def test_queue_errors_still_reach_the_owner(world: World) -> None:
    world.call(ALICE, "cancel", id=world.a1)
    with pytest.raises(ValidationError, match="cannot cancel job"):
        world.call(ALICE, "cancel", id=world.a1)


def test_logs_are_for_the_owner_and_admins_in_chunks(world: World) -> None:
    job = world.queue.get(world.a1)
    world.queue.set_plan(world.a1, planned_start=world.clock())
    run_dir = world.tmp / "run-a1"
    run_dir.mkdir()
    (run_dir / "output.log").write_bytes(b"line one\nline two\n")
    run = world.queue.claim(
        world.queue.get(world.a1), worker="w", host="h", run_dir=str(run_dir), gpus=[]
    )
    assert run is not None and job.id == world.a1
    got = world.call(ALICE, "logs", id=world.a1)
    assert base64.b64decode(got["data"]) == b"line one\nline two\n"
    assert (got["offset"], got["size"], got["run"], got["state"]) == (18, 18, True, "running")
    part = world.call(CAROL, "logs", id=world.a1, offset=5, max_bytes=3)
    assert (base64.b64decode(part["data"]), part["offset"]) == (b"one", 8)
    end = world.call(ALICE, "logs", id=world.a1, offset=18)
    assert (end["data"], end["offset"]) == ("", 18)
    with pytest.raises(JobNotFound):
        world.call(BOB, "logs", id=world.a1)
    none_yet = world.call(BOB, "logs", id=world.b1)
    assert (none_yet["run"], none_yet["data"], none_yet["state"]) == (False, "", "pending")


def test_logs_never_follow_a_link_or_open_a_fifo(world: World) -> None:
    import os

    world.queue.set_plan(world.a1, planned_start=world.clock())
    run_dir = world.tmp / "run-link"
    run_dir.mkdir()
    secret = world.tmp / "secret"
    secret.write_text("root's secret")
    (run_dir / "output.log").symlink_to(secret)
    world.queue.claim(
        world.queue.get(world.a1), worker="w", host="h", run_dir=str(run_dir), gpus=[]
    )
    with pytest.raises(EcoqError, match="cannot read the output of job"):
        world.call(ALICE, "logs", id=world.a1)
    (run_dir / "output.log").unlink()
    os.mkfifo(run_dir / "output.log")  # opening it must not block the server's thread
    assert world.call(ALICE, "logs", id=world.a1)["data"] == ""


def test_submit_takes_the_identity_from_the_caller(world: World) -> None:
    req = SubmitRequest.from_spec(
        replace(
            make_spec(world.clock()),
            env={"HOME": "/home/alice", "ECOQ_WATTTIME_PASSWORD": "hunter2"},
        ),
        duration_given=True,
    )
    job = world.call(ALICE, "submit", **req.to_args())["job"]
    (sent, user, uid) = world.submitted[-1]
    assert (user, uid) == ("alice", 1001)
    assert sent.env == {"HOME": "/home/alice"}  # credential variables never reach a job
    assert job["user"] == "alice" and world.queue.get(job["id"]).uid == 1001


def test_root_and_accountless_callers_cannot_submit(world: World) -> None:
    args = SubmitRequest.from_spec(make_spec(world.clock()), duration_given=True).to_args()
    root = Caller(pid=1, uid=0, gid=0, user="root", admin=True)
    with pytest.raises(ValidationError, match="allow_root_jobs"):
        world.call(root, "submit", **args)
    ghost = Caller(pid=1, uid=4242, gid=4242, user="uid 4242", admin=False)
    with pytest.raises(ValidationError, match="has no account"):
        world.call(ghost, "submit", **args)
    world.backend.allow_root_jobs = True
    assert world.call(root, "submit", **args)["job"]["user"] == "root"
