"""The real `ecoq` command line: exit codes, messages, JSON, and whole runs with a real daemon.

Most tests run the Typer app in-process (fast); the ones that need separate processes (a daemon,
concurrent submitters, `python -m ecoq`) start real subprocesses on the same tmp database.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecoq.cli import app
from ecoq.config import CREDENTIAL_ENV_VARS
from ecoq.db import open_engine
from ecoq.scheduler.queue import Queue
from tests.cli_helpers import (
    JOB_KEYS,
    TIME_KEYS,
    cli,
    cli_json,
    count_rows,
    db_path,
    ecoq_cmd,
    ecoq_proc,
    jobs_json,
    make_script,
    submit_args,
    wait_for,
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test runs in its tmp dir, which holds an executable `job.sh` (see ECHO_SCRIPT)."""
    monkeypatch.chdir(tmp_path)
    make_script(tmp_path)
    return tmp_path.resolve()  # as the CLI sees it (os.getcwd has no symlinks)


@pytest.fixture
def run_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs start at once: waiting never saves enough (a 10-minute deadline may still span an
    hour boundary of the forecast, and a cleaner next hour would defer the job)."""
    monkeypatch.setenv("ECOQ_PLANNER__MIN_SAVING", "1")


def _utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    when = datetime.fromisoformat(text)
    assert when.utcoffset() == timedelta(0)
    return when


def _near(when: datetime, expected: datetime, slack_s: float = 10) -> bool:
    return abs((when - expected).total_seconds()) <= slack_s


# -- submit: every validation error exits 2, names the value and the fix, writes nothing ----------

DE = ["--zone", "DE"]
VALIDATION_CASES: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    (
        "missing script",
        ["missing.sh", "--deadline", "1h", *DE],
        {},
        ["'missing.sh'", "not found", "give the path to the file"],
    ),
    (
        "directory",
        ["adir", "--deadline", "1h", *DE],
        {},
        ["'adir'", "is a directory", "give the file"],
    ),
    (
        "not executable, no interpreter",
        ["notes.txt", "--deadline", "1h", *DE],
        {},
        ["'notes.txt'", "not executable", "chmod +x notes.txt", "#!"],
    ),
    (
        "deadline word",
        ["job.sh", "--deadline", "tomorrow", *DE],
        {},
        ["--deadline 'tomorrow'", "ISO-8601", "2026-12-01T03:00Z", "12h"],
    ),
    ("deadline bare number", ["job.sh", "--deadline", "12", *DE], {}, ["--deadline '12'", "12h"]),
    (
        "deadline without offset",
        ["job.sh", "--deadline", "2030-12-01T08:00", *DE],
        {},
        ["'2030-12-01T08:00'", "no UTC offset", "2030-12-01T08:00Z", "2030-12-01T08:00+01:00"],
    ),
    (
        "deadline date without offset",
        ["job.sh", "--deadline", "2030-12-01", *DE],
        {},
        ["'2030-12-01'", "no UTC offset", "2030-12-01T00:00Z"],
    ),
    (
        "deadline in the past",
        ["job.sh", "--deadline", "2020-01-01T00:00Z", *DE],
        {},
        ["--deadline 2020-01-01 00:00:00Z", "in the past", "--deadline 12h"],
    ),
    (
        "deadline before now + duration",
        ["job.sh", "--deadline", "30m", "--duration", "1h", *DE],
        {},
        ["--deadline", "needs --duration 1h00m", "extend --deadline or shorten --duration"],
    ),
    (
        "default duration does not fit",
        ["job.sh", "--deadline", "30m", *DE],
        {},
        ["needs --duration 1h00m", "planner.default_duration_s", "pass --duration"],
    ),
    (
        "zero duration",
        ["job.sh", "--deadline", "1h", "--duration", "0m", *DE],
        {},
        ["--duration '0m'", "longer than zero", "30m"],
    ),
    (
        "duration word",
        ["job.sh", "--deadline", "1h", "--duration", "abc", *DE],
        {},
        ["--duration 'abc'", "not a duration", "90m"],
    ),
    (
        "negative duration",
        ["job.sh", "--deadline", "1h", "--duration", "-1h", *DE],
        {},
        ["--duration '-1h'", "not a duration", "90m"],
    ),
    (
        "not-before after deadline - duration",
        ["job.sh", "--deadline", "2h", "--duration", "1h", "--not-before", "90m", *DE],
        {},
        ["earliest start", "(--not-before)", "--duration 1h00m", "give an earlier --not-before"],
    ),
    (
        "not-before after deadline",
        ["job.sh", "--deadline", "2h", "--duration", "1h", "--not-before", "3h", *DE],
        {},
        ["--not-before", "is not before --deadline", "give an earlier --not-before"],
    ),
    (
        "bad not-before",
        ["job.sh", "--deadline", "2h", "--not-before", "soon", *DE],
        {},
        ["--not-before 'soon'", "12h"],
    ),
    (
        "unknown zone",
        ["job.sh", "--deadline", "1h", "--zone", "DEE"],
        {},
        ["zone 'DEE'", "did you mean", "ecoq zones"],
    ),
    ("no zone", ["job.sh", "--deadline", "1h"], {}, ["no zone given", "--zone DE", "site.zone"]),
    (
        "more GPUs than the box has",
        ["job.sh", "--deadline", "1h", "--gpus", "1", *DE],
        {"ECOQ_SITE__GPUS": "0"},
        ["--gpus 1", "more than this box has (0)", "at most 0", "site.gpus"],
    ),
    (
        "negative GPUs",
        ["job.sh", "--deadline", "1h", "--gpus", "-1", *DE],
        {"ECOQ_SITE__GPUS": "0"},
        ["--gpus -1", "0 or more"],
    ),
    (
        "config value not a number",
        ["job.sh", "--deadline", "1h", *DE],
        {"ECOQ_PLANNER__MIN_SAVING": "abc"},
        ["ECOQ_PLANNER__MIN_SAVING", "'abc'", "cannot be read as a number", "unset"],
    ),
    (
        "config value out of range",
        ["job.sh", "--deadline", "1h", *DE],
        {"ECOQ_PLANNER__MIN_SAVING": "2"},
        ["ECOQ_PLANNER__MIN_SAVING", "out of range", "between 0 and 1"],
    ),
    (
        "unknown config variable",
        ["job.sh", "--deadline", "1h", *DE],
        {"ECOQ_PLANER__MIN_SAVING": "0.1"},
        ["ECOQ_PLANER__MIN_SAVING", "is not a setting", "did you mean ECOQ_PLANNER__MIN_SAVING"],
    ),
    (
        "config file missing",
        ["job.sh", "--deadline", "1h", *DE],
        {"ECOQ_CONFIG": "/nonexistent/ecoq.toml"},
        ["/nonexistent/ecoq.toml", "does not exist", "ECOQ_CONFIG"],
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [pytest.param(a, e, f, id=name) for name, a, e, f in VALIDATION_CASES],
)
def test_submit_validation_errors_exit_2_and_write_nothing(
    workdir: Path, db_url: str, args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    (workdir / "adir").mkdir()
    (workdir / "notes.txt").write_text("echo hi\n")
    open_engine(db_url)  # the database exists, so "nothing written" means no row
    result = cli("submit", *args, env=env)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert count_rows("jobs") == 0
    assert jobs_json() == []


def test_unknown_zone_suggests_close_matches(workdir: Path) -> None:
    result = cli("submit", "job.sh", "--deadline", "1h", "--zone", "DEE")
    assert result.exit_code == 2
    suggestion = re.search(r"did you mean ([^?]+)\?", result.stderr)
    assert suggestion is not None, result.stderr
    assert "DE" in suggestion.group(1).split(", ")


def test_submit_usage_errors_exit_2(workdir: Path) -> None:
    missing_deadline = cli("submit", "job.sh", *DE)
    assert missing_deadline.exit_code == 2
    assert "--deadline" in missing_deadline.stderr
    no_script = cli("submit", "--deadline", "1h", *DE)
    assert no_script.exit_code == 2
    assert "SCRIPT" in no_script.stderr
    assert count_rows("jobs") == 0


# -- submit: the happy path ------------------------------------------------------------------------


def test_submit_prints_the_plan(workdir: Path) -> None:
    result = cli("submit", "job.sh", "--deadline", "12h", "--duration", "2h", *DE)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert re.fullmatch(
        r"job 1 planned: start (now|\S.* UTC) in DE, \d+ g/kWh vs \d+ now, [−+±]\d+ % "
        r"\(typical profile, average signal\)\n",
        result.stdout,
    ), result.stdout


def test_submit_json_is_the_design_job_object(workdir: Path) -> None:
    before = datetime.now(UTC)
    job = cli_json("submit", "job.sh", "--deadline", "12h", *DE)
    assert list(job)[: len(JOB_KEYS)] == JOB_KEYS
    assert job["id"] == 1
    assert job["name"] == "job.sh"
    assert job["state"] == "planned"
    assert job["command"] == [str(workdir / "job.sh")]
    assert job["zone"] == "DE"
    assert job["signal"] == "average"
    for key in TIME_KEYS:
        assert job[key] is None or _utc(job[key])
    for key in ("started_at", "finished_at", "exit_code", "energy_j", "realized_g"):
        assert job[key] is None
    submitted = _utc(job["submitted_at"])
    assert _near(submitted, before)
    assert _near(_utc(job["deadline"]), submitted + timedelta(hours=12))
    planned = _utc(job["planned_start"])
    assert before - timedelta(seconds=1) <= planned <= _utc(job["deadline"]) - timedelta(hours=1)
    # Without --duration (and no earlier runs) the duration is the configured default.
    assert job["duration_source"] == "default"
    assert job["duration_s"] == 3600
    assert job["cwd"] == str(workdir)
    # The same object everywhere a job is printed.
    assert cli_json("show", "1") == job
    assert cli_json("queue") == [job]
    assert cli_json("queue", "--all") == [job]


def test_submit_stores_the_options(workdir: Path) -> None:
    now = datetime.now(UTC)
    job = cli_json(
        "submit",
        "job.sh",
        "--deadline",
        "12h",
        "--duration",
        "2h",
        "--not-before",
        "1h",
        "--zone",
        "de",
        "--name",
        "nightly",
        "--project",
        "vision",
        "--drop-if-late",
    )
    assert job["zone"] == "DE"  # zones match ignoring case
    assert (job["name"], job["project"], job["drop_if_late"]) == ("nightly", "vision", True)
    assert (job["duration_s"], job["duration_source"]) == (7200, "user")
    not_before = _utc(job["not_before"])
    assert _near(not_before, now + timedelta(hours=1))
    assert not_before <= _utc(job["planned_start"]) <= _utc(job["deadline"]) - timedelta(hours=2)


ODD_ARGS = [
    "two words",
    "ünïcødé ☃ 日本",
    "$(touch pwned); `id` | cat > x & echo *",
    "'single' \"double\" \\back",
    "",
    "--lr",
    "3e-4",
    "--",
    "-x",
]


def test_submit_keeps_arguments_verbatim_as_an_argv_list(workdir: Path) -> None:
    job = cli_json("submit", "job.sh", "--deadline", "1h", *DE, "--", *ODD_ARGS)
    assert job["command"] == [str(workdir / "job.sh"), *ODD_ARGS]
    # Stored as JSON argv, never a shell string: the database has the same list.
    stored = Queue(open_engine(os.environ["ECOQ_DATABASE_URL"])).get(job["id"])
    assert stored.command == job["command"]
    assert not (workdir / "pwned").exists()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    args=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
        max_size=4,
    )
)
def test_any_argument_round_trips(workdir: Path, args: list[str]) -> None:
    job = cli_json("submit", "job.sh", "--deadline", "1h", *DE, "--", *args)
    assert job["command"][1:] == args
    assert cli_json("show", str(job["id"]))["command"][1:] == args


def test_submit_resolves_interpreters_and_path_commands(workdir: Path) -> None:
    (workdir / "train.py").write_text("print('hi')\n")  # not executable: run with python3
    (workdir / "run").write_text("#!/bin/sh\necho hi\n")  # not executable: its #! line
    py = cli_json("submit", "train.py", "--deadline", "1h", *DE)
    assert py["command"] == [shutil.which("python3"), str(workdir / "train.py")]
    sh = cli_json("submit", "run", "--deadline", "1h", *DE)
    assert sh["command"] == ["/bin/sh", str(workdir / "run")]
    on_path = cli_json("submit", "true", "--deadline", "1h", *DE)
    assert on_path["command"] == [shutil.which("true")]
    assert on_path["name"] == "true"


def test_job_environment_drops_credentials(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    credentials = {"ECOQ_WATTTIME_USERNAME", "ECOQ_WATTTIME_PASSWORD", "ECOQ_ELECTRICITYMAPS_TOKEN"}
    assert credentials <= CREDENTIAL_ENV_VARS
    for name in credentials:
        monkeypatch.setenv(name, f"secret-{name.lower()}")
    monkeypatch.setenv("MY_JOB_SETTING", "kept")
    job = cli_json("submit", "job.sh", "--deadline", "1h", *DE)
    env = Queue(open_engine(db_url)).get(job["id"]).env
    assert not credentials & set(env)
    assert env["MY_JOB_SETTING"] == "kept"
    assert env["PATH"] == os.environ["PATH"]
    # Nor anywhere else in the database files.
    for path in db_path().parent.glob(db_path().name + "*"):
        assert b"secret-" not in path.read_bytes(), path


# -- queue and show ------------------------------------------------------------------------------


def test_reading_commands_do_not_create_a_database(tmp_path: Path) -> None:
    assert not db_path().exists()
    empty = cli("queue")
    assert (empty.exit_code, empty.stdout) == (
        0,
        "no waiting or running jobs (--all shows finished)\n",
    )
    assert cli("queue", "--all").stdout == "no jobs\n"
    assert cli_json("queue") == []
    assert cli_json("queue", "--all") == []
    for args in (["show", "1"], ["logs", "1"], ["wait", "1"], ["cancel", "1"], ["start", "1"]):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "no job with id 1" in result.stderr
    assert not db_path().exists()
    assert not (tmp_path / "data").exists()


def test_queue_and_show(workdir: Path) -> None:
    assert cli("submit", "job.sh", "--deadline", "12h", *DE).exit_code == 0
    second = cli("submit", "job.sh", "--deadline", "12h", "--duration", "90m", *DE, "--", "a b")
    assert second.exit_code == 0
    assert cli("cancel", "1").exit_code == 0

    waiting = cli("queue")
    assert waiting.exit_code == 0
    lines = waiting.stdout.splitlines()
    assert lines[0].split() == [
        "id", "name", "state", "zone", "planned", "start", "g/kWh", "deadline", "user",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["2"]
    assert lines[1].split()[1:4] == ["job.sh", "planned", "DE"]
    everything = cli("queue", "--all").stdout.splitlines()
    assert [line.split()[:3] for line in everything[1:]] == [
        ["1", "job.sh", "cancelled"],
        ["2", "job.sh", "planned"],
    ]
    assert [(j["id"], j["state"]) for j in jobs_json()] == [(1, "cancelled"), (2, "planned")]

    show = cli("show", "2")
    assert show.exit_code == 0
    fields = dict(line.strip().split(": ", 1) for line in show.stdout.splitlines())
    assert fields["job"] == "2 'job.sh'"
    assert fields["state"] == "planned"
    assert fields["command"] == f"{workdir / 'job.sh'} 'a b'"
    assert fields["zone"] == "DE"
    assert fields["duration"] == "1h30m (user)"
    assert fields["deadline"].endswith("Z (finish by)")
    assert fields["plan"].startswith("start ")
    assert fields["plan"].endswith("(typical profile, average signal)")
    assert fields["why"]
    assert cli_json("show", "2") == jobs_json()[1]

    missing = cli("show", "99")
    assert missing.exit_code == 2
    assert "no job with id 99" in missing.stderr and "ecoq queue --all" in missing.stderr
    assert cli("show", "abc").exit_code == 2


# -- requests on a waiting job ---------------------------------------------------------------------


def test_hold_release_start_cancel_a_planned_job(workdir: Path) -> None:
    assert cli("submit", "job.sh", "--deadline", "24h", "--duration", "1h", *DE).exit_code == 0

    held = cli("hold", "1")
    assert (held.exit_code, held.stdout) == (
        0,
        "job 1 held: it will not start until `ecoq release 1`\n",
    )
    job = cli_json("show", "1")
    assert (job["state"], job["held"]) == ("planned", True)
    assert "planned (held)" in cli("queue").stdout

    released = cli("release", "1")
    assert (released.exit_code, released.stdout) == (
        0,
        "job 1 released: it will be planned again\n",
    )
    job = cli_json("show", "1")
    assert (job["state"], job["held"], job["planned_start"]) == ("pending", False, None)

    started = cli("start", "1")
    assert started.exit_code == 0
    assert (
        started.stdout == "job 1: run now requested; the daemon carries it out at its next tick\n"
    )
    job = cli_json("show", "1")
    assert job["state"] == "planned"
    assert _near(_utc(job["planned_start"]), datetime.now(UTC))
    assert "ecoq start" in job["plan_reason"]

    cancelled = cli("cancel", "1")
    assert (cancelled.exit_code, cancelled.stdout) == (0, "job 1 cancelled\n")
    job = cli_json("show", "1")
    assert job["state"] == "cancelled"
    assert job["reason"] == "cancelled by user"
    assert _near(_utc(job["finished_at"]), datetime.now(UTC))

    again = cli("cancel", "1")
    assert again.exit_code == 2
    assert "cannot cancel job 1: it is cancelled and finished" in again.stderr
    for action in ("hold", "release", "start"):
        result = cli(action, "1")
        assert result.exit_code == 2, action
        assert "cancelled" in result.stderr and result.stdout == ""
    assert cli_json("show", "1")["state"] == "cancelled"

    ended = cli("wait", "1")  # cancelled without an exit code: 1
    assert (ended.exit_code, ended.stdout) == (1, "job 1 cancelled\n")


def test_wait_times_out_and_logs_before_any_run(workdir: Path) -> None:
    assert cli("submit", "job.sh", "--deadline", "1h", *DE).exit_code == 0
    assert cli("hold", "1").exit_code == 0
    timed_out = cli("wait", "1", "--timeout", "0.2", "--poll", "0.05")
    assert timed_out.exit_code == 124
    assert "job 1 still planned after 0.2 s" in timed_out.stderr
    logs = cli("logs", "1")
    assert (logs.exit_code, logs.stdout) == (0, "")
    assert "job 1 is planned and has no output yet" in logs.stderr


# -- with a real daemon ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("run_now")
def test_end_to_end_with_a_daemon(workdir: Path) -> None:
    ok = cli(*submit_args("job.sh", "--", "hello world", "ünï ☃", "$(echo no) | ;", "--flag"))
    assert ok.exit_code == 0, ok.output
    failing = cli(*submit_args("job.sh"), env={"JOB_EXIT": "3"})  # the job env is captured
    assert failing.exit_code == 0, failing.output

    tick = ecoq_proc("daemon", "--once")
    assert tick.returncode == 0, tick.stderr
    assert "started [1, 2]" in tick.stdout

    # `ecoq wait` in its own process blocks until a daemon has reaped the job.
    waiter = subprocess.Popen(
        ecoq_cmd("wait", "2", "--poll", "0.1", "--timeout", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        idle = ecoq_proc("daemon", "--until-idle")
        assert idle.returncode == 0, idle.stderr
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 3, err
    assert out == "job 2 failed (exit 3)\n"

    succeeded = ecoq_proc("wait", "1")
    assert (succeeded.returncode, succeeded.stdout) == (0, "job 1 succeeded\n")

    logs = cli("logs", "1")
    assert logs.exit_code == 0
    assert logs.stdout.splitlines() == [
        "arg: hello world",
        "arg: ünï ☃",
        "arg: $(echo no) | ;",
        "arg: --flag",
        "job id 1",
    ]
    assert cli("logs", "2").stdout == "job id 2\n"
    assert cli("logs", "1", "--follow").stdout == logs.stdout  # ended: prints all, returns

    shown = cli("show", "1").stdout
    assert re.search(r"^ +state: succeeded$", shown, re.M)
    assert re.search(r"^ +exit code: 0$", shown, re.M)
    shown = cli("show", "2").stdout
    assert re.search(r"^ +state: failed$", shown, re.M)
    assert re.search(r"^ +exit code: 3$", shown, re.M)
    assert re.search(r"^ +reason: exited with status 3$", shown, re.M)

    jobs = {j["id"]: j for j in jobs_json()}
    assert (jobs[1]["state"], jobs[1]["exit_code"]) == ("succeeded", 0)
    assert (jobs[2]["state"], jobs[2]["exit_code"]) == ("failed", 3)
    for job in jobs.values():
        assert _utc(job["started_at"]) <= _utc(job["finished_at"])
    assert cli_json("queue") == []

    # A second run of the same command learns its duration from the first (a sub-second run
    # learns 1 s, never 0), so a deadline shorter than the default duration is fine.
    args = ["hello world", "ünï ☃", "$(echo no) | ;", "--flag"]
    again = cli_json("submit", "job.sh", "--deadline", "10m", *DE, "--", *args)
    assert again["duration_source"] == "learned"
    assert 1 <= again["duration_s"] < 60


@pytest.mark.slow
@pytest.mark.usefixtures("run_now")
def test_concurrent_submits_while_the_daemon_runs(workdir: Path) -> None:
    log = (workdir / "daemon.log").open("w")
    daemon = subprocess.Popen(
        ecoq_cmd("daemon"),
        env={**os.environ, "ECOQ_DAEMON__TICK_INTERVAL_S": "0.2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        lock = Path(os.environ["ECOQ_PATHS__DATA_DIR"]) / "daemon.lock"
        wait_for(
            lambda: lock.exists() and lock.read_text().strip() == str(daemon.pid),
            timeout=30,
            what="the daemon to take its lock",
        )
        second = ecoq_proc("daemon", "--once")  # only one daemon per data folder
        assert second.returncode == 1
        assert "another ecoq daemon" in second.stderr

        def submitter(worker: int) -> list[subprocess.CompletedProcess[str]]:
            return [
                ecoq_proc(
                    *submit_args("job.sh", "--json", "--", f"w{worker}", f"i{i}"),
                    env={"JOB_SLEEP": "2"},
                )
                for i in range(10)
            ]

        with ThreadPoolExecutor(4) as pool:
            results = [r for batch in pool.map(submitter, range(4)) for r in batch]
        assert [r.returncode for r in results] == [0] * 40, [r.stderr for r in results]
        ids = [json.loads(r.stdout)["id"] for r in results]
        assert sorted(ids) == list(range(1, 41))

        def last_started() -> bool:
            return cli_json("show", "40")["state"] not in ("pending", "planned")

        wait_for(last_started, timeout=30, what="the daemon to start job 40")
        running = {j["id"] for j in jobs_json() if j["state"] == "running"}
        assert running  # each job sleeps 2 s: job 40 at least is still running
        daemon.send_signal(signal.SIGTERM)  # warm stop: running jobs finish first
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        log.close()
    daemon_log = (workdir / "daemon.log").read_text()
    assert "Traceback" not in daemon_log, daemon_log
    assert "warm stop" in daemon_log
    states = {j["id"]: j["state"] for j in jobs_json()}
    assert all(states[i] == "succeeded" for i in running), (running, states)

    finish = ecoq_proc("daemon", "--until-idle")
    assert finish.returncode == 0, finish.stderr
    jobs = jobs_json()
    assert len(jobs) == 40
    assert sorted(j["id"] for j in jobs) == list(range(1, 41))
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert sorted(tuple(j["command"][1:]) for j in jobs) == sorted(
        (f"w{w}", f"i{i}") for w in range(4) for i in range(10)
    )
    assert count_rows("runs") == 40  # each job ran exactly once


# -- help ------------------------------------------------------------------------------------------


def _commands() -> dict[tuple[str, ...], Any]:
    """Every command and group of the app by its path (the root is `()`)."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found[path] = command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def _examples(command: Any) -> list[str]:
    """The example lines of a command's epilog (the block after click's `\\b` marker)."""
    block = (command.epilog or "").split("\b\n", 1)[-1].split("\n\n")[0]
    return [line.strip() for line in block.splitlines() if line.startswith("  ecoq ")]


def test_every_command_has_help_with_examples_one_per_line() -> None:
    commands = _commands()
    assert {("submit",), ("config", "show"), ("daemon",)} <= set(commands)
    for path, command in commands.items():
        result = cli(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert result.stdout.startswith("Usage: "), path
        assert cli(*path, "-h").stdout == result.stdout
        if hasattr(command, "commands"):
            continue  # a group: its commands carry the examples
        examples = _examples(command)
        assert examples, f"`ecoq {' '.join(path)} --help` has no examples"
        shown = [line.strip() for line in result.stdout.splitlines()]
        for example in examples:
            assert example in shown, (path, example, result.stdout)


def test_submit_help_keeps_long_examples_on_one_line() -> None:
    result = cli("submit", "--help")
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "ecoq submit train.sh --deadline 12h --duration 2h --zone DE" in lines
    long = "ecoq submit train.py --deadline 2026-12-01T08:00Z --gpus 2 -- --lr 3e-4 --epochs 10"
    assert long in lines
    at = lines.index(long)
    assert lines[at - 1].startswith("ecoq submit train.sh")  # one per line, no blank between
    assert "\b" not in result.stdout


@pytest.mark.slow
def test_python_m_ecoq_help() -> None:
    result = ecoq_proc("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    for command in ("submit", "queue", "daemon", "forecast", "config"):
        assert command in result.stdout


# -- config, zones, forecast -----------------------------------------------------------------------


def test_config_show_lists_values_and_sources(tmp_path: Path) -> None:
    result = cli("config", "show", env={"ECOQ_PLANNER__MIN_SAVING": "0.05", "ECOQ_SITE__GPUS": "0"})
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^planner\.min_saving +0\.05  \[env ECOQ_PLANNER__MIN_SAVING\]$", result.stdout, re.M
    )
    assert re.search(
        r"^database\.url +'sqlite:///.*'  \[env ECOQ_DATABASE_URL\]$", result.stdout, re.M
    )
    assert re.search(r"^daemon\.kill_grace_s +30\.0  \[default\]$", result.stdout, re.M)
    assert (
        result.stdout.splitlines()[-1] == f"# GPUs on this box: 0; data folder: {tmp_path / 'data'}"
    )

    config = tmp_path / "site.toml"
    config.write_text("[planner]\nmin_saving = 0.1\n")
    data = cli_json("--config", str(config), "config", "show")
    assert data["planner.min_saving"] == {"value": 0.1, "source": f"file {config}:2"}
    assert data["daemon.tick_interval_s"] == {"value": 5.0, "source": "default"}

    bad = cli("config", "show", env={"ECOQ_DAEMON__TICK_INTERVAL_S": "-1"})
    assert bad.exit_code == 2
    assert "ECOQ_DAEMON__TICK_INTERVAL_S" in bad.stderr


def test_config_show_redacts_the_database_password_without_connecting() -> None:
    env = {"ECOQ_DATABASE_URL": "postgresql+psycopg://bob:s3cr3t@db.invalid:5432/ecoq"}
    result = cli("config", "show", "--json", env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["database.url"] == {
        "value": "postgresql+psycopg://bob:***@db.invalid:5432/ecoq",
        "source": "env ECOQ_DATABASE_URL",
    }
    assert data["planner.min_saving"] == {"value": 0.02, "source": "default"}  # typed values
    assert "s3cr3t" not in result.output
    text = cli("config", "show", env=env)
    assert text.exit_code == 0
    assert "bob:***@db.invalid" in text.stdout and "s3cr3t" not in text.output


def test_forecast_json() -> None:
    now = datetime.now(UTC)
    data = cli_json("forecast", "--zone", "de")
    assert list(data)[:5] == ["zone", "source", "label", "signal", "issued_at"]
    assert {"age_s", "points"} <= set(data)
    assert (data["zone"], data["source"], data["label"], data["signal"]) == (
        "DE", "bundled", "typical profile", "average",
    )  # fmt: skip
    assert _near(_utc(data["issued_at"]), now) and data["age_s"] >= 0
    assert 24 <= len(data["points"]) <= 25
    first = _utc(data["points"][0]["time"])  # the hour holding "now"
    assert (first.minute, first.second) == (0, 0)
    assert first - timedelta(seconds=10) <= now < first + timedelta(hours=1)
    assert all(p["g_per_kwh"] > 0 for p in data["points"])
    assert "best_window" not in data


def test_forecast_best_window() -> None:
    now = datetime.now(UTC)
    data = cli_json("forecast", "--zone", "DE", "--duration", "3h", "--deadline", "12h")
    best = data["best_window"]
    assert set(best) == {"start", "mean_g_per_kwh", "now_g_per_kwh", "saving_pct", "reason"}
    start = _utc(best["start"])
    assert now - timedelta(seconds=5) <= start <= now + timedelta(hours=9, seconds=5)
    assert best["mean_g_per_kwh"] <= best["now_g_per_kwh"] + 1e-9
    assert best["reason"]
    text = cli("forecast", "--zone", "DE", "--duration", "3h", "--deadline", "12h")
    assert text.exit_code == 0
    assert text.stdout.startswith("zone DE: typical profile (bundled), average signal")
    assert text.stdout.splitlines()[-1].startswith("best window: start ")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--zone", "DE", "--duration", "3h"], "give both --duration and --deadline"),
        (["--zone", "DEE"], "zone 'DEE'"),
        ([], "no zone given"),
        (["--zone", "DE", "--hours", "0"], "--hours 0"),
        (["--zone", "DE", "--duration", "x", "--deadline", "1h"], "--duration 'x'"),
    ],
)
def test_forecast_bad_input_exits_2(args: list[str], fragment: str) -> None:
    result = cli("forecast", *args)
    assert result.exit_code == 2
    assert fragment in result.stderr


def test_daemon_operator_flags() -> None:
    text = cli("daemon", "--help").stdout
    assert "--log-format" in text and "--metrics-port" in text
    bad = cli("daemon", "--once", "--log-format", "xml")
    assert bad.exit_code == 2 and "xml" in bad.stderr
    assert cli("daemon", "--once", "--metrics-port", "70000").exit_code == 2


def test_daemon_once_logs_json_lines() -> None:
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        result = cli("daemon", "--once", "--log-format", "json")
    finally:  # the daemon's handler points at this test's captured stderr: take it away
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("tick:")
    for line in filter(None, result.stderr.splitlines()):
        assert json.loads(line)["level"]
