"""A shared box's Slurm submissions: each job handed to Slurm as its submitter (``sbatch --uid
--gid``), never as root unless allowed, with a recording runner (no cluster). The real-cluster
test with real users is `tests/shared/test_shared_slurm.py`."""

import importlib
import os
import pwd
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from ecoq.db import open_engine, session
from ecoq.errors import ConfigError, ExecutorError
from ecoq.models import Job
from ecoq.scheduler.executors import LaunchSpec
from ecoq.scheduler.executors.identity import Identity, RunAs
from ecoq.scheduler.executors.slurm import (
    ENV_FILE,
    OUTPUT_FILE,
    RECORD_FILE,
    SCRIPT_FILE,
    SlurmExecutor,
    SlurmSite,
    sbatch_argv,
)
from ecoq.scheduler.executors.wrapper import MARKS_FILE
from ecoq.scheduler.queue import Queue
from ecoq.scheduler.slurmdriver import SlurmDriver
from ecoq.states import JobState
from tests.conftest import make_spec
from tests.scheduler.executors.slurm_fakes import FakeRunner

NOW = datetime(2026, 11, 29, 14, 0, 0, tzinfo=UTC)
SITE = SlurmSite("hpc", partition="gpu", sbatch_args=("--mem=8G",))
USER = Identity(uid=1234, gid=2345, groups=(2345, 77), user="alice")


def _account() -> pwd.struct_passwd:
    """An account other than root that exists here (Debian always has `nobody`)."""
    return next(e for e in pwd.getpwall() if e.pw_uid != 0)


def _unknown_uid() -> int:
    known = {e.pw_uid for e in pwd.getpwall()}
    return next(u for u in range(4_000_000, 4_100_000) if u not in known)


def _policy(data_dir: Path | None = None, *, allow_root: bool = False) -> RunAs:
    return RunAs(allow_root=allow_root, data_dir=data_dir)


def _executor(runner: FakeRunner, policy: RunAs | None, euid: int = 0) -> SlurmExecutor:
    return SlurmExecutor(
        SITE, runner=runner, clock=lambda: NOW, env={"PATH": "/usr/bin"}, run_as=policy,
        euid=lambda: euid,
    )  # fmt: skip


def _spec(run_dir: Path, uid: int | None) -> LaunchSpec:
    return LaunchSpec(
        job_id=7, run_id=0, argv=["/bin/true"], cwd="/tmp", env={"PATH": "/usr/bin:/bin"},
        run_dir=run_dir, uid=uid,
    )  # fmt: skip


# -- the command -----------------------------------------------------------------------------
def test_sbatch_argv_names_the_user_by_number_only_when_given() -> None:
    run_dir = Path("/var/lib/ecoq/jobs/7/slurm-x")
    common = dict(name="ecoq-7-0-x", run_dir=run_dir, cwd="/home/alice", begin=None, gpus=1)
    as_user = sbatch_argv(SITE, hold=True, user=USER, **common)  # type: ignore[arg-type]
    assert as_user[:8] == [
        "sbatch", "--parsable", "--no-requeue", "--job-name=ecoq-7-0-x",
        f"--export-file={run_dir / ENV_FILE}", "--chdir=/home/alice",
        f"--output={run_dir / OUTPUT_FILE}", "--open-mode=append",
    ]  # fmt: skip
    assert as_user[8:10] == ["--uid=1234", "--gid=2345"]  # Slurm adds the user's groups
    assert {"--hold", "--partition=gpu", "--gres=gpu:1", "--mem=8G"} <= set(as_user)
    assert as_user[-1] == str(run_dir / SCRIPT_FILE)
    as_daemon = sbatch_argv(SITE, hold=False, user=None, **common)  # type: ignore[arg-type]
    assert not any(a.startswith(("--uid", "--gid")) for a in as_daemon)
    assert "--hold" not in as_daemon


@pytest.mark.parametrize("option", ["--uid=0", "--gid=0"])
def test_a_site_may_not_choose_the_user_itself(option: str) -> None:
    with pytest.raises(ConfigError, match=f"may not set {option.split('=')[0]}"):
        SlurmSite("hpc", sbatch_args=(option,))


# -- whom a job is submitted as ----------------------------------------------------------------
def test_personal_mode_submits_as_the_daemon_as_before() -> None:
    ex = _executor(FakeRunner(), None)
    assert ex.submitter(7, 0) is None and ex.submitter(7, _account().pw_uid) is None


def test_shared_box_submits_as_the_owner_with_their_primary_group() -> None:
    entry = _account()
    user = _executor(FakeRunner(), _policy()).submitter(7, entry.pw_uid)
    assert user is not None and (user.uid, user.gid, user.user) == (
        entry.pw_uid, entry.pw_gid, entry.pw_name,
    )  # fmt: skip


def test_shared_box_refusals_name_the_reason_and_the_fix() -> None:
    shared = _executor(FakeRunner(), _policy())
    with pytest.raises(ExecutorError, match="submitted by root.*shared.allow_root_jobs = true"):
        shared.submitter(7, 0)
    assert _executor(FakeRunner(), _policy(allow_root=True)).submitter(7, 0) is None
    with pytest.raises(ExecutorError, match=r"uid \d+ has no account.*restore the account"):
        shared.submitter(7, _unknown_uid())
    with pytest.raises(ExecutorError, match="runs as uid 1000, not root"):
        _executor(FakeRunner(), _policy(), euid=1000).submitter(7, _account().pw_uid)


def test_a_refused_job_writes_nothing_and_runs_nothing(tmp_path: Path) -> None:
    runner = FakeRunner()
    with pytest.raises(ExecutorError, match="submitted by root"):
        _executor(runner, _policy()).submit(_spec(tmp_path / "run", 0))
    assert runner.calls == [] and not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_the_run_folder_is_arranged_for_the_user_as_the_local_executor_does(
    tmp_path: Path,
) -> None:
    entry = _account()
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    run_dir = data / "jobs" / "7" / "slurm-x"
    runner = FakeRunner()
    runner.on("sbatch", out="4242\n")
    _executor(runner, _policy(data)).submit(_spec(run_dir, entry.pw_uid))
    argv = runner.argv("sbatch")
    assert f"--uid={entry.pw_uid}" in argv and f"--gid={entry.pw_gid}" in argv
    for folder in (data, data / "jobs", data / "jobs" / "7", run_dir):
        mode = stat.S_IMODE(folder.stat().st_mode)  # root's; the user passes through
        assert folder.stat().st_uid == 0 and mode & 0o111 == 0o111 and mode & 0o022 == 0
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o711  # and lists nothing
    for name in (OUTPUT_FILE, MARKS_FILE):  # the job writes them, as its user
        st = (run_dir / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            entry.pw_uid, entry.pw_gid, 0o600,
        )  # fmt: skip
    for name in (SCRIPT_FILE, RECORD_FILE):  # read by sbatch and the daemon, as root
        st = (run_dir / name).stat()
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077 == 0


# -- the driver fails jobs that may not run as their user ---------------------------------------
def _planned(queue: Queue, uid: int, start: datetime) -> int:
    now = datetime.now(UTC)
    job = queue.submit(replace(make_spec(now, command=["/bin/true"]), uid=uid))
    assert job.id is not None
    assert queue.set_plan(job.id, planned_start=start, site="hpc")
    return job.id


def test_a_job_whose_user_is_gone_fails_with_the_reason_and_never_reaches_slurm(
    tmp_path: Path,
) -> None:
    queue = Queue(open_engine(f"sqlite:///{tmp_path / 'ecoq.db'}"))
    runner = FakeRunner()
    ex = SlurmExecutor(SITE, runner=runner, euid=lambda: 0)
    driver = SlurmDriver(
        queue, {"hpc": ex}, data_dir=tmp_path / "data", worker="w", run_as=_policy(tmp_path)
    )
    later = datetime.now(UTC) + timedelta(hours=2)
    gone, by_root = _planned(queue, _unknown_uid(), later), _planned(queue, 0, later)
    report = driver.sync(datetime.now(UTC))
    assert sorted(report.refused) == sorted([gone, by_root]) and report.submitted == []
    assert runner.calls == []  # no sbatch: nothing was submitted, as root or anyone
    for job_id, why in ((gone, "has no account"), (by_root, "never runs jobs as root")):
        job = queue.get(job_id)
        assert job.state == JobState.FAILED
        assert job.reason is not None and "not submitted to Slurm site hpc" in job.reason
        assert why in job.reason
    assert driver.sync(datetime.now(UTC)).refused == []  # failed once


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_a_user_removed_after_submission_is_withdrawn_and_failed_at_due_time(
    tmp_path: Path,
) -> None:
    queue = Queue(open_engine(f"sqlite:///{tmp_path / 'ecoq.db'}"))
    runner = FakeRunner()
    runner.on("sbatch", out="4242\n")
    ex = SlurmExecutor(SITE, runner=runner, euid=lambda: 0)
    driver = SlurmDriver(
        queue, {"hpc": ex}, data_dir=tmp_path / "data", worker="w", run_as=_policy()
    )
    job_id = _planned(queue, _account().pw_uid, datetime.now(UTC) + timedelta(hours=2))
    assert driver.sync(datetime.now(UTC)).submitted == [job_id]
    with session(queue.engine) as s:  # its owner is now a uid without an account (userdel)
        s.execute(update(Job).where(Job.id == job_id).values(uid=_unknown_uid()))  # type: ignore[arg-type]
        s.commit()
    runner.on("scontrol", "show", out=_held_line(4242))
    runner.on("scontrol", "update", out="")  # the new start is sent, then withdrawn
    runner.on("scontrol", "hold", out="")
    runner.on("scancel", out="")
    assert queue.set_plan(job_id, planned_start=datetime.now(UTC), site="hpc")
    report = driver.sync(datetime.now(UTC))
    assert (report.refused, report.withdrawn, report.released) == ([job_id], [job_id], [])
    assert ["scancel", "4242"] in [argv for argv, _ in runner.calls]
    assert not any(argv[:2] == ["scontrol", "release"] for argv, _ in runner.calls)
    job = queue.get(job_id)
    assert job.state == JobState.FAILED and job.reason is not None
    assert "has no account" in job.reason and job.slurm_run_dir is None


def _held_line(job_id: int) -> str:
    return (
        f"JobId={job_id} JobName=ecoq JobState=PENDING Reason=JobHeldUser ExitCode=0:0 "
        "SubmitTime=2026-11-29T14:00:00 EligibleTime=Unknown StartTime=Unknown EndTime=Unknown "
        "NodeList=(null) WorkDir=/tmp\n"
    )


def test_the_shared_box_gives_its_slurm_sites_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecoq.cli.shared_box import SharedBox
    from ecoq.shared.access import Admins

    config = tmp_path / "ecoq.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "data"}"\n'
        '[site]\nzone = "DE"\n[[sites]]\nname = "hpc"\nkind = "slurm"\nzone = "DE"\n'
    )
    monkeypatch.setenv("ECOQ_CONFIG", str(config))
    state = importlib.import_module("ecoq.cli.app").STATE
    for name in ("config_file", "settings", "sites"):  # read afresh, from ECOQ_CONFIG
        monkeypatch.setattr(state, name, None)
    queue = Queue(open_engine(f"sqlite:///{tmp_path / 'ecoq.db'}"))
    box = SharedBox(tmp_path / "s.sock", Admins(""), False, tmp_path / "data")
    driver = box.slurm_driver(queue)
    assert driver is not None and set(driver.executors) == {"hpc"}
    policy = driver.executors["hpc"].run_as
    assert policy is not None and not policy.allow_root and policy.data_dir == tmp_path / "data"
    job_id = _planned(queue, 0, datetime.now(UTC) + timedelta(hours=1))
    assert policy.owner_uid is not None and policy.owner_uid(job_id) == 0
