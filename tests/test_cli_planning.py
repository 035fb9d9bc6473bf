"""`ecoq submit` for interruptible and multi-zone jobs, and `ecoq show` explaining the plan: the
real CLI in-process on a real SQLite file, with a forecast file whose cleanest hours are apart."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.db import open_engine
from tests.cli_helpers import cli, cli_json, count_rows, jobs_json, make_script


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test runs in its tmp dir, with `job.sh` and a forecast file: 400 g/kWh every hour
    except 50 at now+3h and now+5h (so a 2 h job is cleanest in two segments)."""
    monkeypatch.chdir(tmp_path)
    make_script(tmp_path)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = ["time,value"]
    for h in range(-1, 30):
        value = 50 if h in (3, 5) else 400
        rows.append(f"{(hour + timedelta(hours=h)).isoformat()},{value}")
    forecast = tmp_path / "forecast.csv"
    forecast.write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("ECOQ_FORECAST__PROVIDER", "file")
    monkeypatch.setenv("ECOQ_FORECAST__FILE", str(forecast))
    return tmp_path.resolve()


BASE = ["submit", "job.sh", "--deadline", "8h", "--duration", "2h", "--zone", "DE"]

INVALID: list[tuple[str, list[str], list[str]]] = [
    (
        "resume without signal",
        ["--interruptible", "--resume", "job.sh --resume"],
        ["--checkpoint-signal and --resume go together", "add --checkpoint-signal SIG"],
    ),
    (
        "signal without resume",
        ["--interruptible", "--checkpoint-signal", "SIGUSR1"],
        ["--checkpoint-signal and --resume go together", "add --resume CMD"],
    ),
    (
        "unknown signal",
        ["--interruptible", "--checkpoint-signal", "SIGFOO", "--resume", "job.sh"],
        ["--checkpoint-signal 'SIGFOO' is not a signal", "SIGUSR1, USR1 or 10"],
    ),
    (
        "uncatchable signal",
        ["--interruptible", "--checkpoint-signal", "9", "--resume", "job.sh"],
        ["SIGKILL cannot be caught", "SIGUSR1"],
    ),
    (
        "negative max pauses",
        ["--interruptible", "--max-pauses", "-1"],
        ["--max-pauses -1 must be 0 or more"],
    ),
    (
        "max pauses without interruptible",
        ["--max-pauses", "2"],
        ["--max-pauses only apply to interruptible jobs", "add --interruptible"],
    ),
    (
        "checkpoint without interruptible",
        ["--checkpoint-signal", "USR1", "--resume", "job.sh"],
        ["--checkpoint-signal, --resume only apply to interruptible jobs"],
    ),
    ("bad min segment", ["--interruptible", "--min-segment", "soon"], ["--min-segment 'soon'"]),
    (
        "resume command missing",
        ["--interruptible", "--checkpoint-signal", "USR1", "--resume", "nosuch.sh --go"],
        ["--resume: script 'nosuch.sh' not found"],
    ),
]


@pytest.mark.parametrize(
    ("extra", "fragments"), [pytest.param(e, f, id=name) for name, e, f in INVALID]
)
def test_submit_interruptible_validation_exits_2_and_writes_nothing(
    workdir: Path, db_url: str, extra: list[str], fragments: list[str]
) -> None:
    open_engine(db_url)  # the database exists, so "nothing written" means no row
    result = cli(*BASE, *extra)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert count_rows("jobs") == 0


def test_signal_names_and_numbers_are_accepted(workdir: Path) -> None:
    for given in ("SIGUSR1", "usr1", "10"):
        job = cli_json(
            *BASE, "--interruptible", "--checkpoint-signal", given, "--resume", "job.sh --resume"
        )
        assert job["checkpoint_signal"] == "SIGUSR1"
        assert job["resume_command"] == [str(workdir / "job.sh"), "--resume"]


#: A planned start as `ecoq submit` prints it: the time, with the day when it is not today
#: (a test run late in the UTC day plans into the next one).
WHEN = r"(?:\w{3} \d\d? \w{3} )?\d\d:\d\d"


def test_submit_prints_the_interruptible_plan_in_segments(workdir: Path) -> None:
    result = cli(*BASE, "--interruptible", "--max-pauses", "2")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"job 1 planned: start {WHEN} UTC in DE in 2 segments, 50 g/kWh vs 400 now, −88 % "
        r"\(file \S+forecast.csv, average signal\)\n",
        result.stdout,
    ), result.stdout
    contiguous = cli(*BASE)
    assert re.fullmatch(
        rf"job 2 planned: start {WHEN} UTC in DE, 225 g/kWh vs 400 now, −44 % \(file .*\)\n",
        contiguous.stdout,
    ), contiguous.stdout


def test_show_explains_the_decision(workdir: Path) -> None:
    assert cli(*BASE, "--interruptible", "--max-pauses", "2", "--min-segment", "30m").exit_code == 0
    show = cli("show", "1")
    assert show.exit_code == 0, show.output
    fields = dict(line.strip().split(": ", 1) for line in show.stdout.splitlines())
    assert re.fullmatch(r"\d+ windows and interruptible slots compared", fields["candidates"])
    assert re.fullmatch(r"\S.* UTC, 50 g/kWh", fields["best"])
    assert re.fullmatch(r"start \S.* in DE, 225 g/kWh", fields["runner-up"])
    assert fields["why not now"] == (
        "starting now averages 400 g/kWh; waiting saves 87.5 %, at least min_saving 2 %"
    )
    assert fields["why"] == "cleanest slots"
    assert re.fullmatch(r"\S.* UTC, \S.* UTC \(2 segments\)", fields["segments"])
    assert fields["pauses"] == "0 taken, at most 2; segments of at least 30m00s"
    assert fields["pause signal"].startswith("SIGSTOP, then SIGCONT")
    assert fields["signal"].startswith("average (file ")

    job = cli_json("show", "1")
    assert job["zones"] == ["DE"] and job["interruptible"] and job["max_pauses"] == 2
    assert [list(s) for s in job["segments"]] == [["start", "end"]] * 2
    first, second = job["segments"]
    for seg in job["segments"]:
        assert seg["start"].endswith("Z") and seg["end"].endswith("Z")
    start = datetime.fromisoformat(first["start"])
    assert datetime.fromisoformat(first["end"]) - start == timedelta(hours=1)
    assert datetime.fromisoformat(second["start"]) - start == timedelta(hours=2)
    assert job["planned_start"] == first["start"]
    assert job["plan_saving_fraction"] == pytest.approx(0.875)
    assert job["plan_min_saving_fraction"] == pytest.approx(0.02)
    assert job == jobs_json()[0]


def test_checkpoint_job_show_and_json(workdir: Path) -> None:
    args = ["--interruptible", "--checkpoint-signal", "USR1", "--resume", "job.sh --resume"]
    assert cli(*BASE, *args).exit_code == 0
    fields = dict(line.strip().split(": ", 1) for line in cli("show", "1").stdout.splitlines())
    assert fields["pause signal"] == (
        "checkpoint: SIGUSR1, the job saves and exits (its GPUs are freed); then "
        f"`{workdir / 'job.sh'} --resume`"
    )
    assert fields["pauses"] == "0 taken, no limit"


def test_several_zones_are_stored_and_planned_on_this_box(workdir: Path) -> None:
    job = cli_json(*BASE, "--zone", "FR", "--zone", "DE")  # repeats are dropped
    assert job["zone"] == "DE" and job["zones"] == ["DE", "FR"]
    assert "FR allowed but no site there: planned on" in job["plan_reason"]
    fields = dict(line.strip().split(": ", 1) for line in cli("show", "1").stdout.splitlines())
    assert fields["zones"] == "DE, FR (planned in DE)"
    single = cli_json(*BASE)
    assert single["zones"] == ["DE"]
