"""A shared box's Slurm site on a real single-node Slurm, with a real user created for the test.

A root daemon (driven one tick at a time, with the shared-box policy a shared `ecoq daemon`
gives its executors) plans a user's jobs at the Slurm site: the job runs on the cluster as
that user (uid, primary gid, and the user's groups, which Slurm adds itself), writes its
output to a file that belongs to the user in a root folder the user can pass through but not
list, and is cancelled by the root daemon's ``scancel``. The job script runs the job's argv
itself (no Python on the node), so nothing under root's home (this checkout, its Python) has
to be readable by the user. Needs root, ``useradd`` and the test cluster
(`ECOQ_TEST_SLURM_CONF`)."""

import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.scheduler.daemon import Daemon, DaemonConfig
from ecoq.scheduler.executors.identity import RunAs
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.executors.slurm import OUTPUT_FILE, SlurmExecutor, SlurmSite
from ecoq.scheduler.executors.wrapper import MARKS_FILE
from ecoq.scheduler.forecasts import ForecastSource
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.sites import Site
from ecoq.scheduler.slurmdriver import SlurmDriver
from ecoq.states import TERMINAL, JobState
from tests.conftest import make_spec, skip_or_fail
from tests.scheduler.executors.test_slurm import slurm, slurm_site  # noqa: F401 (fixtures)
from tests.scheduler.test_slurm_sites import FlatProvider

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]
S = JobState
IDS = 'id -u; id -g; id -G; echo "cwd=$(pwd)"; ls "$ECOQ_RUN_DIR" >/dev/null 2>&1 || echo no-list'


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    groups: set[int]


@dataclass
class Box:
    queue: Queue
    daemon: Daemon
    data: Path
    user: User


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _remove(user: str, group: str) -> None:
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = None
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):  # the test user's jobs
        try:
            if uid is not None and os.stat(f"/proc/{pid}").st_uid == uid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    subprocess.run(["userdel", "--remove", "--force", user], capture_output=True, timeout=30)
    subprocess.run(["groupdel", group], capture_output=True, timeout=30)


@pytest.fixture
def box(slurm_site: SlurmSite) -> Iterator[Box]:  # noqa: F811
    if os.geteuid() != 0:
        skip_or_fail("a shared box needs root: to create a user and submit jobs as them")
    if shutil.which("useradd") is None:
        skip_or_fail("useradd is missing (Debian package passwd)")
    tag = secrets.token_hex(3)  # unique names: other test runs may share this machine
    name, extra = f"ecoqs{tag}", f"ecoqsx{tag}"
    base = Path(tempfile.mkdtemp(prefix="ecoq-slurm-"))  # the job's user must pass through
    base.chmod(0o755)
    umask = os.umask(0o077)  # the shared daemon's (`DAEMON_UMASK`): its folders are root's alone
    try:
        _run("groupadd", extra)
        _run("useradd", "--create-home", "--user-group", "--shell", "/bin/sh", "--groups", extra,
             name)  # fmt: skip
        entry = pwd.getpwnam(name)
        groups = set(os.getgrouplist(name, entry.pw_gid))
        user = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), groups)
        data = base / "data"
        data.mkdir(mode=0o711)  # as `shared_box()` leaves it
        queue = Queue(open_engine(f"sqlite:///{base / 'ecoq.db'}"))

        def owner_uid(job_id: int) -> int:
            return queue.get(job_id).uid

        policy = RunAs(owner_uid=owner_uid, allow_root=False, data_dir=data)
        ex = SlurmExecutor(replace(slurm_site, name="hpc"))
        driver = SlurmDriver(queue, {"hpc": ex}, data_dir=data, worker="box", run_as=policy)
        config = DaemonConfig(
            data_dir=data, worker="box", box_gpus=0, sites=(Site("hpc", "DE", kind="slurm"),)
        )
        daemon = Daemon(
            queue,
            ForecastSource(FlatProvider()),
            config,
            executor=LocalExecutor(run_as=policy),
            slurm=driver,
        )
        yield Box(queue, daemon, data, user)
    finally:
        os.umask(umask)
        _remove(name, extra)
        shutil.rmtree(base, ignore_errors=True)


def _submit(box: Box, script: str) -> int:
    spec = make_spec(datetime.now(UTC), command=["/bin/sh", "-c", script])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box.user.home), "USER": box.user.name}
    job = box.queue.submit(replace(spec, uid=box.user.uid, cwd=str(box.user.home), env=env))
    assert job.id is not None
    return job.id


def _until(check: Callable[[], bool], step: Callable[[], object], within_s: float = 40) -> None:
    limit = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < limit, "condition not reached in time"
        step()
        time.sleep(0.3)


def test_a_users_job_runs_on_the_slurm_site_as_that_user(
    box: Box,
    slurm: SlurmExecutor,  # noqa: F811
) -> None:
    job_id = _submit(box, IDS)
    report = box.daemon.tick()  # plans it at hpc (now), submits it held and releases it
    assert report.slurm is not None and report.slurm.released == [job_id]
    _until(lambda: box.queue.get(job_id).state in TERMINAL, box.daemon.tick)
    job = box.queue.get(job_id)
    run = box.queue.latest_run(job_id)
    assert run is not None
    run_dir = Path(run.run_dir)
    output = (run_dir / OUTPUT_FILE).read_text()
    assert job.state == S.SUCCEEDED, (job.reason, output)
    uid, gid, groups, cwd, listed = output.splitlines()
    user = box.user
    assert (int(uid), int(gid)) == (user.uid, user.gid)
    assert {int(g) for g in groups.split()} == user.groups and len(user.groups) == 2
    assert cwd == f"cwd={user.home}"
    assert listed == "no-list"  # the run folder is root's: the user passes, never lists
    for name in (OUTPUT_FILE, MARKS_FILE):  # the job's own files are the user's
        st = (run_dir / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o600)
    for folder in (run_dir, run_dir.parent, run_dir.parent.parent, box.data):
        st = folder.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711), folder


def test_the_root_daemon_cancels_a_users_running_job(
    box: Box,
    slurm: SlurmExecutor,  # noqa: F811
) -> None:
    job_id = _submit(box, "exec sleep 60")
    box.daemon.tick()
    run = box.queue.latest_run(job_id)
    assert run is not None
    run_dir = Path(run.run_dir)
    _until(lambda: slurm.status(run_dir).state == "running", lambda: None)
    shown = slurm.run("scontrol", "show", "job", "-o", str(slurm.job_id(run_dir))).stdout
    assert f"UserId={box.user.name}({box.user.uid})" in shown
    assert f"GroupId={box.user.name}({box.user.gid})" in shown
    assert box.queue.cancel(job_id) == "requested"
    _until(lambda: box.queue.get(job_id).state == S.CANCELLED, box.daemon.tick)
    status = slurm.status(run_dir)
    assert status.state == "exited" and status.reason is not None and "CANCELLED" in status.reason


def test_a_job_of_a_removed_user_fails_and_never_runs_as_root(
    box: Box,
    slurm: SlurmExecutor,  # noqa: F811
) -> None:
    job_id = _submit(box, "id -u")
    _remove(box.user.name, "")  # the account is gone before the job is planned
    box.daemon.tick()
    job = box.queue.get(job_id)
    assert job.state == S.FAILED and job.reason is not None
    assert f"uid {box.user.uid} has no account" in job.reason
    listing = slurm.run("squeue", "-h", "-o", "%A %U").stdout
    assert listing.strip() == ""  # nothing was handed to Slurm
