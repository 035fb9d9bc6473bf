"""A root daemon's local executor starts each job as its submitter (shared box), never as root.

These tests need root (CI runs as root); they run jobs as `nobody`, which every Debian has.
The end-to-end test with real, freshly created users is tests/shared/test_shared_e2e.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecoq.errors import ExecutorError
from ecoq.scheduler.executors import LaunchSpec, RunStatus
from ecoq.scheduler.executors.identity import RunAs, lookup, resolve
from ecoq.scheduler.executors.local import LocalExecutor
from ecoq.scheduler.executors.wrapper import MARKS_FILE
from tests.conftest import skip_or_fail
from tests.scheduler.executors.test_local import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ID_SCRIPT = 'id -u; id -g; id -G; pwd; umask; echo "marker=$MARKER"'


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        skip_or_fail("starting jobs as another user needs root")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        skip_or_fail("no user `nobody` on this machine")
        raise


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder every user may traverse (pytest's tmp_path is root's alone, 0700), and the
    shared daemon's umask (077) meanwhile."""
    path = Path(tempfile.mkdtemp(prefix="ecoq-runas-"))
    path.chmod(0o755)
    old = os.umask(0o077)
    try:
        yield path
    finally:
        os.umask(old)
        shutil.rmtree(path, ignore_errors=True)


class Jobs:
    def __init__(self, base: Path, executor: LocalExecutor) -> None:
        self.base, self.ex, self.count = base, executor, 0

    def spec(self, argv: list[str], *, uid: int | None, cwd: Path | None = None) -> LaunchSpec:
        self.count += 1
        return LaunchSpec(
            job_id=self.count,
            run_id=self.count,
            argv=argv,
            cwd=str(cwd or self.base),
            env={"PATH": "/usr/bin:/bin", "MARKER": "m1"},
            run_dir=self.base / "data" / "jobs" / str(self.count) / "run",
            uid=uid,
        )

    def run(self, argv: list[str], *, uid: int | None, cwd: Path | None = None) -> RunStatus:
        spec = self.spec(argv, uid=uid, cwd=cwd)
        self.ex.launch(spec)
        return self.wait_exit(spec.run_dir)

    def wait_exit(self, run_dir: Path) -> RunStatus:
        def check() -> RunStatus | None:
            status = self.ex.status(run_dir)
            return status if status.state == "exited" else None

        status = wait_for(check, 5.0, f"{run_dir} to exit")
        assert self.ex.reap(timeout_s=3.0) == 0  # the wrapper exits right after its record
        return status


def shared(base: Path, **kw: object) -> LocalExecutor:
    return LocalExecutor(run_as=RunAs(data_dir=base / "data", **kw))  # type: ignore[arg-type]


def test_job_runs_as_its_user_with_that_users_groups(nobody: pwd.struct_passwd, base: Path) -> None:
    jobs = Jobs(base, shared(base))
    (base / "data").mkdir(mode=0o700)
    status = jobs.run(["/bin/sh", "-c", ID_SCRIPT], uid=nobody.pw_uid)
    assert status.exit_code == 0, status
    run_dir = base / "data/jobs/1/run"
    lines = (run_dir / "output.log").read_text().splitlines()
    groups = sorted(os.getgrouplist("nobody", nobody.pw_gid))
    assert lines[0] == str(nobody.pw_uid) and lines[1] == str(nobody.pw_gid)
    assert sorted(int(g) for g in lines[2].split()) == groups
    assert lines[3] == str(base) and lines[4] == "0022" and lines[5] == "marker=m1"
    # The job's own files are its user's; the records (its environment in spec.json) root's.
    for name in ("output.log", MARKS_FILE):
        st = (run_dir / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            nobody.pw_uid,
            nobody.pw_gid,
            0o600,
        )
    for name in ("spec.json", "started.json", "exit.json", "start.token", "wrapper.log"):
        st = (run_dir / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), name
    # Folders down to the run: traversable (to reach its files), not listable, by others.
    for folder in (base / "data", base / "data/jobs", base / "data/jobs/1", run_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o711, folder


def test_working_directory_is_entered_with_the_users_rights(
    nobody: pwd.struct_passwd, base: Path
) -> None:
    private = base / "private"
    (private / "open").mkdir(parents=True)
    private.chmod(0o700)  # root's; its subfolder is open, but nobody cannot get there
    (private / "open").chmod(0o755)
    jobs = Jobs(base, shared(base))
    status = jobs.run(["/bin/true"], uid=nobody.pw_uid, cwd=private / "open")
    assert status.exit_code == 126
    assert status.reason is not None and "cannot change to working directory" in status.reason
    assert "Permission denied" in status.reason


def test_program_is_looked_up_with_the_users_rights(nobody: pwd.struct_passwd, base: Path) -> None:
    hidden = base / "hidden"
    hidden.mkdir(mode=0o700)
    script = hidden / "job.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    jobs = Jobs(base, shared(base))
    status = jobs.run([str(script)], uid=nobody.pw_uid)
    assert status.exit_code == 126
    assert status.reason is not None and f"cannot execute {str(script)!r}" in status.reason


def test_a_running_job_of_another_user_can_be_cancelled(
    nobody: pwd.struct_passwd, base: Path
) -> None:
    jobs = Jobs(base, shared(base))
    spec = jobs.spec(["/bin/sleep", "30"], uid=nobody.pw_uid)
    jobs.ex.launch(spec)
    wait_for(lambda: jobs.ex.status(spec.run_dir).state == "running", 5.0, "the job to start")
    status = jobs.ex.status(spec.run_dir)
    assert status.pid is not None and os.stat(f"/proc/{status.pid}").st_uid == nobody.pw_uid
    jobs.ex.terminate(spec.run_dir)
    ended = jobs.wait_exit(spec.run_dir)
    assert ended.exit_code == 128 + signal.SIGTERM


def test_owner_hook_names_the_user_when_the_spec_does_not(
    nobody: pwd.struct_passwd, base: Path
) -> None:
    asked: list[int] = []

    def owner(job_id: int) -> int:
        asked.append(job_id)
        return nobody.pw_uid

    jobs = Jobs(base, LocalExecutor(run_as=RunAs(owner_uid=owner)))
    status = jobs.run(["/bin/sh", "-c", "id -u"], uid=None)
    assert status.exit_code == 0
    assert (base / "data/jobs/1/run/output.log").read_text().split() == [str(nobody.pw_uid)]
    assert asked == [1]


def test_shared_box_never_runs_root_or_ownerless_jobs(
    nobody: pwd.struct_passwd, base: Path
) -> None:
    jobs = Jobs(base, shared(base))
    for uid, message in ((0, "submitted by root"), (None, "has no owner uid")):
        spec = jobs.spec(["/bin/true"], uid=uid)
        with pytest.raises(ExecutorError, match=message):
            jobs.ex.launch(spec)
        assert not spec.run_dir.exists()  # nothing was written, nothing can start
    allowed = Jobs(base / "data", shared(base, allow_root=True))
    status = allowed.run(["/bin/sh", "-c", "id -u"], uid=0)
    assert status.exit_code == 0


def test_unknown_uid_is_refused_with_the_fix() -> None:
    free = next(u for u in range(4_000_000, 4_001_000) if not _has_account(u))
    with pytest.raises(ExecutorError, match=f"uid {free} has no account"):
        lookup(free)


def test_resolve_rules_without_root() -> None:
    """Personal mode keeps today's behaviour; a shared daemon must be root."""
    assert resolve(1, None, None, None, euid=1000) is None
    assert resolve(1, 1001, None, None, euid=1000) is None  # not root: runs as itself
    assert resolve(1, 1000, None, None, euid=1000) is None
    assert resolve(1, 0, None, None, euid=0) is None
    with pytest.raises(ExecutorError, match="not root"):
        resolve(1, 1001, None, RunAs(), euid=1000)
    with pytest.raises(ExecutorError, match="allow_root_jobs"):
        resolve(1, 0, None, RunAs(), euid=0)
    assert resolve(1, 0, None, RunAs(allow_root=True), euid=0) is None


def test_marks_file_name_is_the_one_track_and_accounting_use() -> None:
    from ecoq.scheduler.reconcile import MARKS_FILE as accounted
    from ecoq.track import MARKS_FILE as tracked

    assert MARKS_FILE == tracked == accounted


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
