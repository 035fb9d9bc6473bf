"""Helpers for driving the real `ecoq` CLI: in-process (Typer's CliRunner) and as subprocesses.

Every helper uses the environment the autouse `clean_env` fixture prepared (ECOQ_DATABASE_URL
and ECOQ_PATHS__DATA_DIR under the test's tmp_path), so subprocesses share the test's database.
"""

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from ecoq.cli import app

#: The keys every job object carries, in the design doc's order ("CLI conventions").
JOB_KEYS = [
    "id",
    "name",
    "state",
    "command",
    "zone",
    "site",
    "submitted_at",
    "deadline",
    "planned_start",
    "started_at",
    "finished_at",
    "exit_code",
    "energy_j",
    "realized_g",
    "counterfactual_g",
    "avoided_g",
    "signal",
]
TIME_KEYS = ["submitted_at", "deadline", "planned_start", "started_at", "finished_at"]

#: A job script: prints its arguments one per line, then exits with $JOB_EXIT (default 0).
#: `JOB_SLEEP` makes it take that long first.
ECHO_SCRIPT = """#!/bin/sh
sleep "${JOB_SLEEP:-0}"
for arg in "$@"; do printf 'arg: %s\\n' "$arg"; done
echo "job id $ECOQ_JOB_ID"
exit "${JOB_EXIT:-0}"
"""


def cli(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """Run `ecoq ARGS...` in this process; stdout and stderr are kept apart."""
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"ecoq {' '.join(args)} raised {result.exception!r}\n{result.output}"
        ) from result.exception
    return result


def cli_json(*args: str, env: Mapping[str, str | None] | None = None) -> Any:
    """Run `ecoq ARGS... --json` (the flag goes before any `--`), check it exited 0 and return
    the parsed JSON."""
    at = args.index("--") if "--" in args else len(args)
    result = cli(*args[:at], "--json", *args[at:], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def ecoq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecoq", *args]


def ecoq_proc(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m ecoq ARGS...` as a real process with the test's environment."""
    return subprocess.run(
        ecoq_cmd(*args),
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_script(directory: Path, name: str = "job.sh", body: str = ECHO_SCRIPT) -> Path:
    """Write an executable script and return its path."""
    path = directory / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def jobs_json() -> list[dict[str, Any]]:
    """Every job, as `ecoq queue --all --json` prints them."""
    data = cli_json("queue", "--all")
    assert isinstance(data, list)
    return data


def db_path() -> Path:
    """The SQLite file the test's ECOQ_DATABASE_URL points at."""
    return Path(os.environ["ECOQ_DATABASE_URL"].removeprefix("sqlite:///"))


def count_rows(table: str) -> int:
    """Rows in `table` of the test's database, read directly (0 when there is no database)."""
    path = db_path()
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    conn.close()
    return int(count)


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    """Poll `condition` until it is true; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def submit_args(script: Path | str, *extra: str, deadline: str = "10m") -> list[str]:
    """`submit SCRIPT --deadline 10m --duration 1m --zone DE EXTRA...` (due at once under the
    `run_now` fixture of test_cli)."""
    return [
        "submit",
        str(script),
        "--deadline",
        deadline,
        "--duration",
        "1m",
        "--zone",
        "DE",
        *extra,
    ]
