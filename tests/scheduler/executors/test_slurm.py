"""The Slurm executor: commands checked with a recording runner, then the same operations on a
real single-node Slurm (`tests/services/slurm.sh`; `ECOQ_TEST_SLURM_CONF` names its slurm.conf).
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.errors import ConfigError, ExecutorError
from ecoq.scheduler.executors import LaunchSpec, RunStatus
from ecoq.scheduler.executors.slurm import (
    ENV_FILE,
    RECORD_FILE,
    SCRIPT_FILE,
    CommandResult,
    SlurmExecutor,
    SlurmSite,
    run_command,
)
from ecoq.scheduler.executors.slurm_site import job_environment, job_script
from tests.conftest import skip_or_fail
from tests.scheduler.executors.slurm_fakes import SLURM_CONF, FakeRunner

FIXTURES = Path(__file__).parents[2] / "fixtures" / "slurm"
NOW = datetime(2026, 11, 29, 14, 0, 0, tzinfo=UTC)
#: Arguments a shell would mangle: all must reach the job byte for byte.
NASTY = ["a b", "$(touch pwned)", "`id`", "'q\"", "*", "x;y", "$HOME", "new\nline", "", "-n"]


def _spec(run_dir: Path, argv: list[str] | None = None, **env: str) -> LaunchSpec:
    return LaunchSpec(
        job_id=7,
        run_id=3,
        argv=argv or ["/bin/true"],
        cwd=str(run_dir.parent),
        env={"PATH": "/usr/bin:/bin", **env},
        run_dir=run_dir,
    )


def _executor(runner: FakeRunner, **site: object) -> SlurmExecutor:
    return SlurmExecutor(
        SlurmSite("gpu-cluster", slurm_conf="/etc/slurm-a/slurm.conf", **site),  # type: ignore[arg-type]
        runner=runner,
        clock=lambda: NOW,
        env={"PATH": "/usr/bin", "SECRET_OF_DAEMON": "x"},
    )


def _scontrol_line(job_id: int, state: str, reason: str = "None", nodes: str = "") -> str:
    return (
        f"JobId={job_id} JobName=ecoq JobState={state} Reason={reason} ExitCode=0:0 "
        "SubmitTime=2026-11-29T14:00:00 EligibleTime=2026-11-29T15:00:00 "
        f"StartTime=2026-11-29T15:00:00 EndTime=Unknown NodeList={nodes} WorkDir=/tmp\n"
    )


# -- commands, with a recording runner --------------------------------------------------------
def test_submit_held_with_begin_and_site_options(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="4242\n")
    ex = _executor(
        runner, partition="gpu", account="green", gres="gpu:a100", sbatch_args=("--mem=8G",)
    )
    run_dir = tmp_path / "run%1"
    start = NOW + timedelta(hours=2, microseconds=1)
    spec = _spec(run_dir, HF_TOKEN="abc", SLURM_JOB_ID="99", CUDA_VISIBLE_DEVICES="0")
    submitted = ex.submit(spec, start=start, gpus=2)
    assert (submitted.job_id, submitted.held, submitted.begin) == (4242, True, start)
    argv, env = runner.calls[0]
    assert "--hold" in argv and "--no-requeue" in argv and "--parsable" in argv
    assert "--begin=2026-11-29T16:00:01" in argv  # UTC, rounded up, never earlier
    assert f"--output={tmp_path}/run%%1/output.log" in argv  # % would start a pattern
    assert {"--partition=gpu", "--account=green", "--gres=gpu:a100:2", "--mem=8G"} <= set(argv)
    assert argv[-1] == str(run_dir / SCRIPT_FILE)
    assert any(a.startswith("--export-file=") for a in argv)
    assert not any("abc" in a for a in argv)  # the job's environment is never on a command line
    assert env == {
        "PATH": "/usr/bin",
        "TZ": "UTC0",
        "LC_ALL": "C",
        "SLURM_CONF": "/etc/slurm-a/slurm.conf",
    }
    record = json.loads((run_dir / RECORD_FILE).read_text())
    assert record["job_id"] == 4242 and record["held"] is True
    assert not (run_dir / ENV_FILE).exists()  # read by sbatch, then removed
    assert ex.job_id(run_dir) == 4242


def test_environment_file_is_nul_separated_and_slurm_variables_are_left_to_slurm(
    tmp_path: Path,
) -> None:
    seen: dict[str, bytes] = {}

    def capture() -> CommandResult:
        path = next(a for a in runner.calls[-1][0] if a.startswith("--export-file="))
        seen["env"] = Path(path.split("=", 1)[1]).read_bytes()
        return CommandResult((), 0, "5\n", "")

    runner = FakeRunner()
    runner.answers.append((("sbatch",), capture))
    spec = _spec(tmp_path / "r", FOO="x\ny=z", SLURM_JOB_ID="1", SBATCH_PARTITION="p")
    _executor(runner).submit(spec, start=None)
    assert seen["env"].split(b"\0") == [
        b"PATH=/usr/bin:/bin",
        b"FOO=x\ny=z",
        b"CUDA_VISIBLE_DEVICES=",  # a job without GPUs sees none
        b"",
    ]
    assert "--begin" not in " ".join(runner.argv("sbatch"))


def test_a_start_in_the_past_is_never_sent(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="5\n")
    runner.on("scontrol", "update")
    ex = _executor(runner)
    ex.submit(_spec(tmp_path / "r"), start=NOW - timedelta(minutes=5))
    assert not any(a.startswith("--begin") for a in runner.argv("sbatch"))
    ex.move(tmp_path / "r", NOW - timedelta(seconds=1))
    ex.move(tmp_path / "r", NOW + timedelta(minutes=30))
    updates = [a for a, _ in runner.calls if a[:2] == ["scontrol", "update"]]
    assert updates == [
        ["scontrol", "update", "JobId=5", "StartTime=now"],
        ["scontrol", "update", "JobId=5", "StartTime=2026-11-29T14:30:00"],
    ]


def test_sbatch_failure_names_the_command_status_and_stderr(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", rc=1, err="sbatch: error: invalid partition specified: nope")
    with pytest.raises(ExecutorError) as info:
        _executor(runner, partition="nope").submit(_spec(tmp_path / "r"))
    message = str(info.value)
    assert "sbatch" in message and "exit status 1" in message and "invalid partition" in message
    assert not (tmp_path / "r" / RECORD_FILE).exists()  # no job was made
    assert _executor(FakeRunner()).status(tmp_path / "r").state == "not-started"


def test_a_submission_whose_answer_was_lost_is_found_by_name(tmp_path: Path) -> None:
    runner = FakeRunner()

    def timeout() -> CommandResult:
        raise ExecutorError("`sbatch ...` did not finish within 30 s")

    runner.answers.append((("sbatch",), timeout))
    ex = _executor(runner)
    with pytest.raises(ExecutorError, match="did not finish"):
        ex.submit(_spec(tmp_path / "r"))
    name = json.loads((tmp_path / "r" / RECORD_FILE).read_text())["name"]
    listing = json.loads((FIXTURES / "squeue-22.05-live.json").read_text())
    listing["jobs"][0]["name"] = name
    runner.on("squeue", out=json.dumps(listing))
    assert ex.job_id(tmp_path / "r") == 1
    assert json.loads((tmp_path / "r" / RECORD_FILE).read_text())["job_id"] == 1


def test_status_falls_back_to_sacct_then_reports_vanished(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="8\n")
    ex = _executor(runner)
    ex.submit(_spec(tmp_path / "r"))
    runner.on("scontrol", "show", rc=1, err="slurm_load_jobs error: Invalid job id specified")
    sacct = (FIXTURES / "sacct-22.05.txt").read_text()
    runner.on(
        "sacct", out="\n".join(line for line in sacct.splitlines() if line.startswith(("8|", "8.")))
    )
    status = ex.status(tmp_path / "r")
    assert (status.state, status.exit_code) == ("exited", 143)
    assert status.finished_at == datetime(2026, 11, 29, 14, 45, 9, tzinfo=UTC)
    assert status.reason is not None and "CANCELLED" in status.reason
    runner.answers = [a for a in runner.answers if a[0][0] != "sacct"]
    runner.on("sacct", rc=1, err="Slurm accounting storage is disabled")
    gone = ex.status(tmp_path / "r")
    assert gone.state == "vanished" and gone.reason is not None and "MinJobAge" in gone.reason
    assert ex.energy_j(tmp_path / "r") is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (_scontrol_line(9, "PENDING", "JobHeldUser"), RunStatus("starting")),
        (_scontrol_line(9, "RUNNING", nodes="n1"), RunStatus("running")),
        (_scontrol_line(9, "CANCELLED", "JobHeldUser"), RunStatus("not-started")),
    ],
)
def test_status_states(tmp_path: Path, line: str, expected: RunStatus) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="9\n")
    runner.on("scontrol", "show", out=line)
    ex = _executor(runner)
    ex.submit(_spec(tmp_path / "r"))
    assert ex.status(tmp_path / "r").state == expected.state


def test_scontrol_errors_other_than_unknown_job_are_raised(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="9\n")
    runner.on("scontrol", "show", rc=1, err="Unable to contact slurm controller")
    ex = _executor(runner)
    ex.submit(_spec(tmp_path / "r"))
    with pytest.raises(ExecutorError, match="Unable to contact slurm controller"):
        ex.status(tmp_path / "r")


def _abandon_with(tmp_path: Path, *states: tuple[str, str]) -> tuple[bool, list[list[str]]]:
    """abandon() while `scontrol show job` answers (state, nodes) in turn."""
    answers = iter(states)
    runner = FakeRunner()
    runner.on("sbatch", out="9\n")
    runner.answers.append(
        (
            ("scontrol", "show"),
            lambda: CommandResult((), 0, _scontrol_line(9, *next(answers)), ""),
        )
    )
    runner.on("scontrol", "hold")
    runner.on("scancel")
    ex = _executor(runner)
    ex.submit(_spec(tmp_path / "r"))
    return ex.abandon(tmp_path / "r"), [a for a, _ in runner.calls]


def test_abandon_holds_then_cancels_a_pending_job(tmp_path: Path) -> None:
    never_ran, calls = _abandon_with(tmp_path, ("PENDING", ""), ("PENDING", ""))
    assert never_ran is True
    changes = [c for c in calls if c[:2] != ["scontrol", "show"]]
    assert changes[-2:] == [["scontrol", "hold", "9"], ["scancel", "9"]]


def test_abandon_never_cancels_a_job_that_started_meanwhile(tmp_path: Path) -> None:
    never_ran, calls = _abandon_with(tmp_path, ("PENDING", ""), ("RUNNING", "n1"))
    assert never_ran is False and ["scancel", "9"] not in calls


def test_abandon_of_a_started_or_unsubmitted_run(tmp_path: Path) -> None:
    never_ran, calls = _abandon_with(tmp_path, ("RUNNING", "n1"))
    assert never_ran is False and not any(c[0] == "scancel" for c in calls)
    assert _executor(FakeRunner()).abandon(tmp_path / "never-submitted") is True


def test_signal_uses_scancel_full_and_skips_jobs_that_are_not_running(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="9\n")
    runner.on("scontrol", "show", out=_scontrol_line(9, "RUNNING", nodes="n1"))
    runner.on("scancel")
    ex = _executor(runner)
    ex.submit(_spec(tmp_path / "r"))
    assert ex.signal(tmp_path / "r", 19) is True  # SIGSTOP
    assert runner.calls[-1][0] == ["scancel", "--signal=STOP", "--full", "9"]
    runner.answers[1] = (
        ("scontrol", "show"),
        CommandResult((), 0, _scontrol_line(9, "PENDING"), ""),
    )
    assert ex.signal(tmp_path / "r", 15) is False


def test_launch_takes_the_gpu_count_from_cuda_visible_devices(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.on("sbatch", out="11;cluster-a\n")  # --parsable adds ";cluster" on federations
    launched = _executor(runner).launch(_spec(tmp_path / "r", CUDA_VISIBLE_DEVICES="0,1,3"))
    argv = runner.argv("sbatch")
    assert "--gres=gpu:3" in argv and "--hold" not in argv
    assert launched.wrapper_pid == 0 and launched.started_at == NOW


def test_site_validation_and_table() -> None:
    with pytest.raises(ConfigError, match="--output"):
        SlurmSite("s", sbatch_args=("--output=/tmp/x",))
    with pytest.raises(ConfigError, match="--export"):
        SlurmSite("s", sbatch_args=("--export=ALL",))
    with pytest.raises(ConfigError, match="timeout_s"):
        SlurmSite("s", timeout_s=0)
    site = SlurmSite.from_table(
        "hpc",
        {"kind": "slurm", "zone": "DE", "partition": "gpu", "sbatch_args": ["--qos=low"]},
    )
    assert site == SlurmSite("hpc", partition="gpu", sbatch_args=("--qos=low",))
    with pytest.raises(ConfigError, match="unknown key 'partiton'"):
        SlurmSite.from_table("hpc", {"partiton": "gpu"})
    with pytest.raises(ConfigError, match="list of strings"):
        SlurmSite.from_table("hpc", {"sbatch_args": "--qos=low"})


def test_job_script_runs_the_argv_exactly(tmp_path: Path) -> None:
    """The generated script, run by /bin/sh as Slurm would, passes every argument unchanged."""
    argv = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *NASTY]
    spec = _spec(tmp_path / "run", argv=argv)
    script = tmp_path / "job.sh"
    script.write_text(job_script(spec))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == NASTY
    assert not (tmp_path / "pwned").exists()
    bad_cwd = LaunchSpec(1, 1, ["/bin/true"], str(tmp_path / "missing dir"), {}, tmp_path)
    script.write_text(job_script(bad_cwd))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True)
    assert done.returncode == 126 and "missing dir" in done.stderr
    with pytest.raises(ExecutorError, match="starts with '-'"):
        job_script(_spec(tmp_path, argv=["-x"]))


def test_job_environment_refuses_what_slurm_cannot_carry() -> None:
    with pytest.raises(ExecutorError, match="cannot be passed"):
        job_environment({"A=B": "1"}, 0)
    assert job_environment({"CUDA_VISIBLE_DEVICES": "3", "X": "1"}, 1) == {"X": "1"}


def test_run_command_errors_name_the_command() -> None:
    with pytest.raises(ExecutorError, match="cannot run `no-such-sbatch"):
        run_command(["no-such-sbatch", "--version"], env={"PATH": "/nonexistent"}, timeout_s=5)
    with pytest.raises(ExecutorError, match="did not finish within 0.2 s"):
        run_command(["sleep", "5"], env={"PATH": os.environ["PATH"]}, timeout_s=0.2)
    result = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], env={}, timeout_s=5)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


# -- a real Slurm -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm_site() -> SlurmSite:
    """The running test cluster (`tests/services/slurm.sh start DIR` prints its slurm.conf)."""
    if not SLURM_CONF:
        skip_or_fail(
            "no Slurm: set ECOQ_TEST_SLURM_CONF (.ci/run starts one: tests/services/slurm.sh)"
        )
    site = SlurmSite("test-slurm", cluster="ecoqtest", slurm_conf=SLURM_CONF, timeout_s=20)
    result = SlurmExecutor(site).run("sinfo", "-h", "-o", "%T", check=False)
    if result.returncode != 0:
        skip_or_fail(f"Slurm at {SLURM_CONF} does not answer: {result.stderr.strip()}")
    return site


@pytest.fixture
def slurm(slurm_site: SlurmSite) -> Iterator[SlurmExecutor]:
    ex = SlurmExecutor(slurm_site)
    yield ex
    # Leave nothing running for the next test (the node has few CPUs).
    listing = ex.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
    if listing:
        ex.run("scancel", *listing, check=False)


def _wait(
    ex: SlurmExecutor, run_dir: Path, done: Callable[[RunStatus], bool], within_s: float
) -> RunStatus:
    deadline = time.monotonic() + within_s
    while True:
        status = ex.status(run_dir)
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


def _ceil(t: datetime) -> datetime:
    """`t` rounded up to the second, as the executor sends it."""
    return t.replace(microsecond=0) + timedelta(seconds=1 if t.microsecond else 0)


def _real_spec(tmp_path: Path, argv: list[str], **env: str) -> LaunchSpec:
    return LaunchSpec(
        job_id=1,
        run_id=1,
        argv=argv,
        cwd=str(tmp_path),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        run_dir=tmp_path / "run",
    )


@pytest.mark.slurm
def test_real_held_job_moves_and_starts_when_released_at_its_planned_time(
    slurm: SlurmExecutor, tmp_path: Path
) -> None:
    spec = _real_spec(tmp_path, ["/bin/sh", "-c", "echo started; exit 0"])
    now = datetime.now(UTC)
    submitted = slurm.submit(spec, start=now + timedelta(hours=3))
    job = slurm.job(spec.run_dir)
    assert job is not None and job.held and job.ecoq_state == "planned"
    assert job.eligible_at == _ceil(now + timedelta(hours=3))
    assert slurm.status(spec.run_dir).state == "starting"
    # Re-plan: 3 s from now. The job stays held although its start passes.
    planned = datetime.now(UTC) + timedelta(seconds=3)
    slurm.move(spec.run_dir, planned)
    job = slurm.job(spec.run_dir)
    assert job is not None and job.held
    assert job.eligible_at == _ceil(planned)
    time.sleep(max(0.0, (planned - datetime.now(UTC)).total_seconds()) + 2.5)
    held = slurm.job(spec.run_dir)
    assert held is not None and held.ecoq_state == "planned" and held.held  # not before release
    released_at = datetime.now(UTC)
    slurm.release(spec.run_dir)
    status = _wait(slurm, spec.run_dir, lambda s: s.state == "exited", 20)
    assert (status.state, status.exit_code, status.reason) == ("exited", 0, None)
    assert status.started_at is not None and status.finished_at is not None
    assert (
        released_at - timedelta(seconds=1)
        <= status.started_at
        <= released_at + timedelta(seconds=10)
    )
    assert status.finished_at >= status.started_at
    assert (spec.run_dir / "output.log").read_text() == "started\n"
    assert submitted.job_id == slurm.job_id(spec.run_dir)
    assert slurm.energy_j(spec.run_dir) is None  # no slurmdbd here: the daemon meters instead


@pytest.mark.slurm
def test_real_begin_without_hold_starts_by_itself_not_before(
    slurm: SlurmExecutor, tmp_path: Path
) -> None:
    spec = _real_spec(tmp_path, ["/bin/true"])
    start = datetime.now(UTC) + timedelta(seconds=3)
    slurm.submit(spec, start=start, hold=False)
    status = _wait(slurm, spec.run_dir, lambda s: s.state == "exited", 20)
    assert status.state == "exited" and status.exit_code == 0
    assert status.started_at is not None and status.started_at >= start.replace(microsecond=0)


@pytest.mark.slurm
def test_real_argv_environment_and_exit_code(slurm: SlurmExecutor, tmp_path: Path) -> None:
    code = (
        "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        "'foo': os.environ.get('FOO'), 'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), "
        "'slurm': 'SLURM_JOB_ID' in os.environ})); sys.exit(3)"
    )
    spec = _real_spec(tmp_path, [sys.executable, "-c", code, *NASTY], FOO="x\ny z")
    slurm.launch(spec)
    status = _wait(slurm, spec.run_dir, lambda s: s.state == "exited", 20)
    assert (status.state, status.exit_code) == ("exited", 3)
    assert status.reason is not None and "FAILED" in status.reason
    seen = json.loads((spec.run_dir / "output.log").read_text())
    assert seen == {"argv": NASTY, "cwd": str(tmp_path), "foo": "x\ny z", "cuda": "", "slurm": True}
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slurm
def test_real_cancel_pending_and_running(slurm: SlurmExecutor, tmp_path: Path) -> None:
    pending = _real_spec(tmp_path / "a", ["/bin/sleep", "60"])
    slurm.submit(pending, start=datetime.now(UTC) + timedelta(hours=1))
    assert slurm.abandon(pending.run_dir) is True  # cancelled before it ever ran
    assert slurm.status(pending.run_dir).state == "not-started"
    running = _real_spec(tmp_path / "b", ["/bin/sleep", "60"])
    slurm.launch(running)
    assert _wait(slurm, running.run_dir, lambda s: s.state == "running", 20).state == "running"
    with pytest.raises(ExecutorError, match="no longer pending"):
        slurm.move(running.run_dir, datetime.now(UTC) + timedelta(hours=1))
    assert slurm.poll([slurm.job_id(running.run_dir)])[slurm.job_id(running.run_dir)].ran
    assert slurm.abandon(running.run_dir) is False  # it started: never re-run it
    slurm.cancel(running.run_dir)
    status = _wait(slurm, running.run_dir, lambda s: s.state == "exited", 20)
    assert (status.state, status.exit_code) == ("exited", 143)  # SIGTERM
    assert status.reason is not None and "CANCELLED" in status.reason
    assert status.started_at is not None and status.finished_at is not None
    assert slurm.signal(running.run_dir, 15) is False  # already over
