"""The local executor and its wrapper, with real processes in tmp_path (Linux)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from ecoq.errors import ExecutorError
from ecoq.scheduler.executors import RunState, RunStatus
from ecoq.scheduler.executors.local import LaunchSpec, LocalExecutor, write_spec
from ecoq.scheduler.executors.wrapper import proc_stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

PY = sys.executable
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout_s: float = 3.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped counts: PID 1 in a container may not reap)."""
    stat = proc_stat(pid)
    return stat is None or stat[1] in ("Z", "X")


class Runner:
    """An executor plus helpers; kills whatever a test left running."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.ex = LocalExecutor()
        self.runs: list[Path] = []

    def spec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> LaunchSpec:
        run_dir = self.tmp / "runs" / (name or f"run{len(self.runs)}")
        self.runs.append(run_dir)
        return LaunchSpec(
            job_id=len(self.runs),
            run_id=100 + len(self.runs),
            argv=argv,
            cwd=str(cwd or self.tmp),
            env={} if env is None else env,
            run_dir=run_dir,
        )

    def launch(self, argv: list[str], **kwargs: object) -> Path:
        spec = self.spec(argv, **kwargs)  # type: ignore[arg-type]
        self.ex.launch(spec)
        return spec.run_dir

    def wait_state(self, run_dir: Path, state: RunState, timeout_s: float = 3.0) -> RunStatus:
        def check() -> RunStatus | None:
            status = self.ex.status(run_dir)
            return status if status.state == state else None

        return wait_for(check, timeout_s, f"{run_dir.name} to be {state}")

    def run_to_end(self, argv: list[str], **kwargs: object) -> tuple[RunStatus, Path]:
        run_dir = self.launch(argv, **kwargs)
        return self.wait_state(run_dir, "exited"), run_dir

    def cleanup(self) -> None:
        for run_dir in self.runs:
            if run_dir.exists() and self.ex.status(run_dir).state == "running":
                self.ex.signal(run_dir, signal.SIGKILL)
                self.wait_state(run_dir, "exited")
        assert self.ex.reap(timeout_s=3.0) == 0


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.cleanup()


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


def started_record(run_dir: Path) -> dict[str, object]:
    data = json.loads((run_dir / "started.json").read_text())
    assert isinstance(data, dict)
    return data


# --- outcomes -------------------------------------------------------------------------


def test_success_captures_output_and_times(runner: Runner) -> None:
    before = datetime.now(UTC)
    status, run_dir = runner.run_to_end(
        py("import sys; print('hello out'); print('hello err', file=sys.stderr)")
    )
    assert status.exit_code == 0 and status.reason is None
    assert status.started_at is not None and status.finished_at is not None
    assert status.started_at.utcoffset() == timedelta(0)
    assert before <= status.started_at <= status.finished_at <= datetime.now(UTC)
    log = (run_dir / "output.log").read_text()
    assert "hello out" in log and "hello err" in log
    exit_rec = json.loads((run_dir / "exit.json").read_text())
    assert exit_rec["exit_code"] == 0 and exit_rec["signal"] is None
    assert exit_rec["finished_at"].endswith("Z")
    assert str(started_record(run_dir)["started_at"]).endswith("Z")


def test_failure_exit_code(runner: Runner) -> None:
    status, _ = runner.run_to_end(py("import sys; sys.exit(3)"))
    assert (status.state, status.exit_code) == ("exited", 3)


def test_missing_executable_is_127_with_reason(runner: Runner) -> None:
    missing = str(runner.tmp / "no such program")
    status, run_dir = runner.run_to_end([missing, "x"])
    assert status.exit_code == 127
    assert status.reason is not None and missing in status.reason
    assert "No such file" in status.reason
    assert status.reason in (run_dir / "output.log").read_text()
    assert not (run_dir / "started.json").exists()


def test_not_executable_is_126(runner: Runner) -> None:
    script = runner.tmp / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)  # no x bit: even root cannot exec it
    status, _ = runner.run_to_end([str(script)])
    assert status.exit_code == 126
    assert status.reason is not None and str(script) in status.reason


def test_bad_cwd_is_reported(runner: Runner) -> None:
    cwd = runner.tmp / "missing dir"
    status, _ = runner.run_to_end(py("pass"), cwd=cwd)
    assert status.exit_code == 127
    assert status.reason is not None and "working directory" in status.reason
    assert str(cwd) in status.reason


def test_argv_is_passed_literally(runner: Runner) -> None:
    args = ["a b", "ünïcødé ✓", "; rm -rf x $(echo hi)", "`id`", "*", "$HOME", "", "'\"\\"]
    status, run_dir = runner.run_to_end(
        py("import json, sys; print('ARGS=' + json.dumps(sys.argv[1:]))", *args)
    )
    assert status.exit_code == 0
    line = next(x for x in (run_dir / "output.log").read_text().splitlines() if "ARGS=" in x)
    assert json.loads(line.removeprefix("ARGS=")) == args
    assert not (runner.tmp / "x").exists()


def test_env_is_exactly_the_spec_env(runner: Runner) -> None:
    env_bin = shutil.which("env")
    assert env_bin is not None
    env = {"ECOQ_JOB_ID": "7", "SPACED": "a b  c", "UNI": "ünï", "EMPTY": ""}
    status, run_dir = runner.run_to_end([env_bin, "-0"], env=env)
    assert status.exit_code == 0
    raw = (run_dir / "output.log").read_bytes().decode()
    got = dict(item.split("=", 1) for item in raw.split("\0") if item)
    assert got == env


def test_cwd_is_honoured(runner: Runner) -> None:
    work = runner.tmp / "work dir"
    work.mkdir()
    status, run_dir = runner.run_to_end(py("import os; print('CWD=' + os.getcwd())"), cwd=work)
    assert status.exit_code == 0
    assert f"CWD={work}" in (run_dir / "output.log").read_text()


def test_run_dir_and_records_are_private(runner: Runner) -> None:
    _, run_dir = runner.run_to_end(py("pass"))
    assert run_dir.stat().st_mode & 0o777 == 0o700
    for name in ("spec.json", "start.token", "started.json", "exit.json", "output.log"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o600, name
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["argv"] == [PY, "-c", "pass"] and spec["env"] == {}
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# --- signals --------------------------------------------------------------------------

SLEEPER = "import time; time.sleep(30)"
GRANDPARENT = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
    "open('gc.pid', 'w').write(str(p.pid))\n"
    "{tail}\n"
)


def test_terminate_running_job_is_143(runner: Runner) -> None:
    run_dir = runner.launch(py(SLEEPER))
    running = runner.wait_state(run_dir, "running")
    assert running.pid is not None and running.started_at is not None
    runner.ex.terminate(run_dir)
    status = runner.wait_state(run_dir, "exited")
    assert status.exit_code == 143 and status.reason == "killed by SIGTERM"
    assert json.loads((run_dir / "exit.json").read_text())["signal"] == "SIGTERM"
    assert not runner.ex.signal(run_dir, signal.SIGKILL)  # already gone: no-op


def test_killpg_reaches_grandchild(runner: Runner) -> None:
    run_dir = runner.launch(py(GRANDPARENT.format(tail="time.sleep(30)")))
    pid_file = runner.tmp / "gc.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="grandchild pid")
    grandchild = int(pid_file.read_text())
    runner.wait_state(run_dir, "running")
    assert runner.ex.signal(run_dir, signal.SIGTERM)
    assert runner.wait_state(run_dir, "exited").exit_code == 143
    wait_for(lambda: gone(grandchild), what="grandchild to die")


def test_leftover_processes_are_killed_when_main_exits(runner: Runner) -> None:
    status, _ = runner.run_to_end(py(GRANDPARENT.format(tail="")))
    assert status.exit_code == 0
    wait_for(lambda: gone(int((runner.tmp / "gc.pid").read_text())), what="leftover to die")


def test_sigstop_and_sigcont(runner: Runner) -> None:
    run_dir = runner.launch(py("import time; time.sleep(0.3)"))
    runner.wait_state(run_dir, "running")
    assert runner.ex.signal(run_dir, signal.SIGSTOP)
    wait_for(lambda: runner.ex.status(run_dir).reason == "stopped", what="stopped")
    time.sleep(0.5)  # longer than the job's own sleep
    assert runner.ex.status(run_dir).state == "running"
    assert runner.ex.signal(run_dir, signal.SIGCONT)
    assert runner.wait_state(run_dir, "exited").exit_code == 0


def test_terminate_resumes_a_stopped_job_and_escalates_after_grace(runner: Runner) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    run_dir = runner.launch(py(stubborn))
    runner.wait_state(run_dir, "running")
    time.sleep(0.2)  # let the job install its handler
    runner.ex.signal(run_dir, signal.SIGSTOP)
    started = time.monotonic()
    runner.ex.terminate(run_dir, grace_s=0.3)
    assert 0.25 <= time.monotonic() - started < 1.5
    status = runner.wait_state(run_dir, "exited")
    assert status.exit_code == 137 and status.reason == "killed by SIGKILL"


def test_wrapper_ignores_terminal_and_term_signals(runner: Runner) -> None:
    go = runner.tmp / "go"
    run_dir = runner.launch(
        py(f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)")
    )
    runner.wait_state(run_dir, "running")
    wrapper_pid = started_record(run_dir)["wrapper_pid"]
    assert isinstance(wrapper_pid, int)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        os.kill(wrapper_pid, sig)
    time.sleep(0.2)
    assert not gone(wrapper_pid)
    go.touch()
    assert runner.wait_state(run_dir, "exited").exit_code == 0


# --- status, abandon, crashes -----------------------------------------------------------


def test_status_transitions(runner: Runner) -> None:
    spec = runner.spec(py("import sys; sys.exit(5)"))
    assert runner.ex.status(spec.run_dir).state == "not-started"
    write_spec(spec)
    assert runner.ex.status(spec.run_dir).state == "starting"
    with pytest.raises(ExecutorError, match="already holds a run"):
        runner.ex.launch(spec)  # a run directory is never reused
    wrapper = [PY, "-m", "ecoq.scheduler.executors.wrapper", str(spec.run_dir)]
    assert subprocess.run(wrapper, check=False, capture_output=True).returncode == 0
    status = runner.ex.status(spec.run_dir)
    assert (status.state, status.exit_code) == ("exited", 5)


def test_abandon_before_wrapper_runs_prevents_start(runner: Runner) -> None:
    marker = runner.tmp / "ran"
    spec = runner.spec(py(f"open({str(marker)!r}, 'w').close()"))
    write_spec(spec)
    assert runner.ex.abandon(spec.run_dir)
    assert runner.ex.abandon(spec.run_dir)  # idempotent
    wrapper = [PY, "-m", "ecoq.scheduler.executors.wrapper", str(spec.run_dir)]
    done = subprocess.run(wrapper, check=False, capture_output=True, text=True)
    assert done.returncode == 0 and "not starting" in done.stderr
    assert not marker.exists()
    for name in ("started.json", "exit.json", "output.log"):
        assert not (spec.run_dir / name).exists()
    status = runner.ex.status(spec.run_dir)
    assert status.state == "not-started" and status.reason is not None
    assert "abandoned" in status.reason


def test_a_wrapper_that_dies_before_the_token_is_not_started(runner: Runner) -> None:
    """A wrapper that exits before it takes the start token (here an interpreter that is not
    Python) leaves a run that can never start; until then the run is starting."""
    dead = LocalExecutor(python="/bin/false")
    spec = runner.spec(py("pass"))
    dead.launch(spec)
    launch = json.loads((spec.run_dir / "launch.json").read_text())
    assert launch["wrapper_pid"] > 0 and isinstance(launch["wrapper_start_ticks"], int)
    status = wait_for(
        lambda: (s := dead.status(spec.run_dir)).state == "not-started" and s, what="not-started"
    )
    assert "exited before it took the start token" in (status.reason or "")
    assert dead.abandon(spec.run_dir)  # the daemon requeues it


def test_a_pid_reused_after_the_wrapper_died_is_not_the_wrapper(runner: Runner) -> None:
    """The record holds the wrapper's start time: a live process that reused its pid (here this
    test's own process, with another start time) does not keep the run starting."""
    spec = runner.spec(py("pass"))
    write_spec(spec)
    stat = proc_stat(os.getpid())
    assert stat is not None
    record = {"wrapper_pid": os.getpid(), "wrapper_start_ticks": stat[0] + 1, "boot_id": ""}
    (spec.run_dir / "launch.json").write_text(json.dumps(record))
    assert runner.ex.status(spec.run_dir).state == "not-started"
    record["wrapper_start_ticks"] = stat[0]  # the wrapper itself, alive: still starting
    (spec.run_dir / "launch.json").write_text(json.dumps(record))
    assert runner.ex.status(spec.run_dir).state == "starting"


def test_abandon_after_start_returns_false(runner: Runner) -> None:
    run_dir = runner.launch(py(SLEEPER))
    runner.wait_state(run_dir, "running")
    assert not runner.ex.abandon(run_dir)
    assert runner.ex.status(run_dir).state == "running"


def test_abandon_unlaunched_directory(runner: Runner) -> None:
    run_dir = runner.tmp / "never"
    assert runner.ex.abandon(run_dir)
    assert runner.ex.status(run_dir).state == "not-started"


def test_launch_rejects_bad_spec_and_bad_python(runner: Runner) -> None:
    with pytest.raises(ExecutorError, match="non-empty"):
        runner.ex.launch(runner.spec([]))
    broken = LocalExecutor(python=str(runner.tmp / "no-python"))
    spec = runner.spec(py("pass"))
    with pytest.raises(ExecutorError, match=r"job \d+ \(run \d+\).*no-python"):
        broken.launch(spec)
    assert runner.ex.status(spec.run_dir).state == "not-started"  # abandoned, never starts


HELPER = """
import signal, sys, time
from pathlib import Path
from ecoq.scheduler.executors.local import LaunchSpec, LocalExecutor
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
    signal.signal(sig, signal.SIG_IGN)
job = (
    "import signal, sys, time; time.sleep(0.4); "
    "ok = all(signal.getsignal(s) is signal.SIG_DFL for s in "
    "(signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)); "
    "sys.exit(7 if ok and signal.getsignal(signal.SIGINT) is signal.default_int_handler else 9)"
)
spec = LaunchSpec(1, 1, [sys.executable, "-c", job], "/", {}, Path(sys.argv[1]))
print(LocalExecutor().launch(spec).wrapper_pid, flush=True)
time.sleep(60)
"""


def test_killing_the_launcher_does_not_affect_the_job(runner: Runner) -> None:
    run_dir = runner.tmp / "runs" / "orphan"
    helper = subprocess.Popen(
        [PY, "-c", HELPER, str(run_dir)], stdout=subprocess.PIPE, start_new_session=True
    )
    assert helper.stdout is not None
    wrapper_pid = int(helper.stdout.readline())
    os.killpg(helper.pid, signal.SIGKILL)  # the launcher and its whole process group
    helper.wait()
    helper.stdout.close()
    assert not gone(wrapper_pid)
    status = runner.wait_state(run_dir, "exited")
    assert status.exit_code == 7  # ran to the end, with default signal dispositions


def test_vanished_when_wrapper_and_job_are_killed(runner: Runner) -> None:
    run_dir = runner.launch(py(SLEEPER))
    runner.wait_state(run_dir, "running")
    record = started_record(run_dir)
    assert isinstance(record["wrapper_pid"], int) and isinstance(record["pgid"], int)
    os.kill(record["wrapper_pid"], signal.SIGKILL)
    os.killpg(record["pgid"], signal.SIGKILL)
    status = runner.wait_state(run_dir, "vanished")
    assert status.pid == record["child_pid"] and status.exit_code is None
    assert status.reason is not None and "without recording an exit" in status.reason
    assert not runner.ex.signal(run_dir, signal.SIGTERM)


def test_vanished_when_wrapper_died_holding_the_token(runner: Runner) -> None:
    spec = runner.spec(py("pass"))
    write_spec(spec)
    take = "import sys; from pathlib import Path; from ecoq.scheduler.executors.wrapper import "
    take += "take_token; take_token(Path(sys.argv[1]), 'wrapper')"
    subprocess.run(py(take, str(spec.run_dir)), check=True)
    assert not runner.ex.abandon(spec.run_dir)
    status = runner.ex.status(spec.run_dir)
    assert status.state == "vanished" and "start token" in (status.reason or "")


def test_corrupt_spec_is_recorded_as_ecoq_failure(runner: Runner) -> None:
    run_dir = runner.tmp / "runs" / "corrupt"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text("{not json")
    wrapper = [PY, "-m", "ecoq.scheduler.executors.wrapper", str(run_dir)]
    assert subprocess.run(wrapper, check=False, capture_output=True).returncode == 1
    status = runner.ex.status(run_dir)
    assert status.exit_code == 125 and "spec.json" in (status.reason or "")
