"""End-to-end secrets audit: recognisable fake credentials go in (environment, a 0600 secrets
file, a database URL with a password), every command that could show them runs (submit, the
daemon, show, logs, every report format, config show and check, failing provider calls, with
-v), and then every byte ecoq wrote or printed is searched for them: the whole database file
(all tables, WAL included), every file under the data folder (run logs, spec.json, the job's
own environment dump), report files, stdout and stderr, and every log record. None may hold a
credential, in clear, URL-encoded or as an HTTP Basic token.

The providers are stubbed in-process with respx: the stub checks that the credentials do reach
the provider (and only it), answers with error bodies that echo them back (as a careless API
might), and the test proves ecoq scrubs them from what it stores, logs and prints.
"""

import base64
import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import respx
from typer.testing import CliRunner, Result

from ecoq.cli import app
from ecoq.config import job_environment, redact_url

WT_USER = "audit-wt-user-Q7XK"
WT_PASSWORD = "audit-wt-pass-Z9K!&x"
WT_TOKEN = "audit-wt-bearer-J2PV"  # what the WattTime stub hands out at login
EM_TOKEN = "audit-em-token-W4MD"
PG_PASSWORD = "audit-pg-pass-R5TN"
PG_QUERY_PASSWORD = "audit-pg-qpass-H8LB"
PG_URL = (
    f"postgresql://ecoq:{PG_PASSWORD}@127.0.0.1:1/ecoq?password={PG_QUERY_PASSWORD}&sslmode=off"
)
WT_BASE = "https://api.watttime.org"
EM_BASE = "https://api.electricitymaps.com"

#: Every form in which a credential could leak.
SECRETS = [WT_USER, WT_PASSWORD, WT_TOKEN, EM_TOKEN, PG_PASSWORD, PG_QUERY_PASSWORD]
NEEDLES = sorted(
    {s.encode() for s in SECRETS}
    | {quote(s, safe="").encode() for s in SECRETS}
    | {json.dumps(s).encode() for s in SECRETS}
    | {base64.b64encode(f"{WT_USER}:{WT_PASSWORD}".encode())}
)
#: A job that prints its arguments and its whole environment.
ENV_JOB = '#!/bin/sh\necho "args: $*"\nenv\n'


def echo_body(status: int, *secrets: str) -> httpx.Response:
    """An error answer that repeats back the credentials the provider was sent."""
    text = "denied: " + " ".join(f"{s!r} is not allowed" for s in secrets)
    return httpx.Response(status, json={"error": text, "message": text})


WT_ECHO = (WT_USER, WT_PASSWORD, WT_TOKEN)


def moer_points(now: datetime) -> list[dict[str, object]]:
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    return [
        {"point_time": (start + timedelta(minutes=5 * i)).isoformat(), "value": 900 + i % 12}
        for i in range(288)
    ]


@pytest.fixture
def provider_stub() -> Iterator[dict[str, int]]:
    """WattTime and Electricity Maps, in-process. Logins must carry the right Basic auth;
    the first forecast call fails with 403 (echoing the secrets), later ones succeed."""
    calls = {"login": 0, "forecast": 0, "bad_auth": 0}
    basic = "Basic " + base64.b64encode(f"{WT_USER}:{WT_PASSWORD}".encode()).decode()

    def login(request: httpx.Request) -> httpx.Response:
        calls["login"] += 1
        if request.headers.get("authorization") != basic:
            calls["bad_auth"] += 1
            return echo_body(401, request.headers.get("authorization", ""))
        return httpx.Response(200, json={"token": WT_TOKEN})

    def forecast(request: httpx.Request) -> httpx.Response:
        calls["forecast"] += 1
        if request.headers.get("authorization") != f"Bearer {WT_TOKEN}":
            calls["bad_auth"] += 1
            return echo_body(401, request.headers.get("authorization", ""))
        if calls["forecast"] == 1:
            return echo_body(403, *WT_ECHO)
        meta = {
            "data_point_period_seconds": 300,
            "region": request.url.params.get("region", "CAISO_NORTH"),
            "warnings": [{"type": "W", "message": "forecast model updated"}],
            "signal_type": "co2_moer",
            "model": {"date": "2023-03-01"},
            "units": "lbs_co2_per_mwh",
            "generated_at_period_seconds": 300,
            "generated_at": datetime.now(UTC).isoformat(),
        }
        return httpx.Response(200, json={"data": moer_points(datetime.now(UTC)), "meta": meta})

    with respx.mock(assert_all_called=False) as router:
        router.get(f"{WT_BASE}/login").mock(side_effect=login)
        router.get(f"{WT_BASE}/v3/forecast").mock(side_effect=forecast)
        router.get(url__startswith=EM_BASE).mock(return_value=echo_body(401, EM_TOKEN))
        router.route().mock(return_value=echo_body(403, *WT_ECHO))  # history, region lookups
        yield calls


@pytest.fixture
def audit_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials in the environment (WattTime) and a 0600 secrets file (Electricity Maps);
    WattTime as the forecast provider; a fast daemon; jobs due at once."""
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.sh"
    job.write_text(ENV_JOB)
    job.chmod(0o755)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[electricitymaps]\ntoken = "{EM_TOKEN}"\n')
    secrets.chmod(0o600)
    for name, value in {
        "ECOQ_WATTTIME_USERNAME": WT_USER,
        "ECOQ_WATTTIME_PASSWORD": WT_PASSWORD,
        "ECOQ_SECRETS_FILE": str(secrets),
        "ECOQ_FORECAST__PROVIDER": "watttime",
        "ECOQ_PLANNER__MIN_SAVING": "1",
        "ECOQ_DAEMON__TICK_INTERVAL_S": "0.2",
        "ECOQ_METERS__INTERVAL_S": "0.2",
        "ECOQ_METERS__NVML": "false",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """`ecoq -v ARGS` in-process (verbose: tracebacks and cause chains are shown too)."""
    result = CliRunner().invoke(app, ["-v", *args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"ecoq {args} raised {result.exception!r}\n{result.output}")
    return result


def wait_for_wrappers() -> None:
    """Wait for the job wrappers the in-process daemon started: it leaves them detached (their
    records tell how jobs end), and a Popen collected while its process still runs warns."""
    import gc
    import subprocess

    for proc in [o for o in gc.get_objects() if isinstance(o, subprocess.Popen)]:
        if proc.returncode is None:
            proc.wait(timeout=60)


def leaks(data: bytes) -> list[str]:
    return [n.decode(errors="replace") for n in NEEDLES if n in data]


def test_no_credential_anywhere(
    audit_env: Path, provider_stub: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every record of ecoq, httpx and httpcore, unformatted
    data_dir = Path(os.environ["ECOQ_PATHS__DATA_DIR"])
    db_file = Path(os.environ["ECOQ_DATABASE_URL"].removeprefix("sqlite:///"))
    printed: dict[str, Result] = {}

    # The job is planned while the provider fails (403), then runs under the daemon.
    printed["submit"] = run(
        "submit", "job.sh", "--deadline", "30m", "--duration", "1m", "--zone", "CAISO_NORTH",
        "--json", "--", "plain-arg",
    )  # fmt: skip
    assert printed["submit"].exit_code == 0, printed["submit"].output
    printed["daemon"] = run("daemon", "--until-idle")
    assert printed["daemon"].exit_code == 0, printed["daemon"].output
    wait_for_wrappers()
    assert provider_stub["login"] >= 1 and provider_stub["forecast"] >= 2
    assert provider_stub["bad_auth"] == 0  # the real credentials reached the provider
    for args in (
        ["show", "1"], ["show", "1", "--json"], ["queue", "--all", "--json"], ["logs", "1"],
        ["report", "--since", "1d"], ["report", "--since", "1d", "--format", "csv"],
        ["report", "--since", "1d", "--format", "json"], ["report", "--codecarbon"],
        ["report", "--since", "1d", "--format", "html", "--out", "report.html"],
        ["report", "--since", "1d", "--by", "job", "--out", "report.txt"],
        ["config", "show"], ["config", "show", "--json"],
        ["config", "check"], ["config", "check", "--json"],
        ["forecast", "--zone", "CAISO_NORTH"],
        ["forecast", "--zone", "CAISO_NORTH", "--provider", "watttime", "--json"],
        ["forecast", "--zone", "DE", "--provider", "electricitymaps"],  # 401 echoing the token
    ):  # fmt: skip
        printed[" ".join(args)] = run(*args)
    logs = printed["logs 1"].stdout
    assert "args: plain-arg" in logs and "ECOQ_JOB_ID=1" in logs  # the job ran; env dumped
    assert "ECOQ_WATTTIME_PASSWORD" not in logs and "ECOQ_SECRETS_FILE" in logs
    failed = printed["forecast --zone DE --provider electricitymaps"]
    assert failed.exit_code == 1 and "electricitymaps" in failed.stderr  # names the provider
    assert "***" in failed.stderr  # the echoed token was scrubbed, not dropped silently

    # A PostgreSQL URL with passwords (userinfo and query): no server, so every command fails.
    pg: dict[str, str | None] = {"ECOQ_DATABASE_URL": PG_URL}
    for args in (["config", "show"], ["config", "show", "--json"], ["config", "check"],
                 ["queue"], ["show", "1"], ["report"], ["daemon", "--once"],
                 ["submit", "job.sh", "--deadline", "1h", "--zone", "CAISO_NORTH"]):  # fmt: skip
        result = run(*args, env=pg)
        printed["pg " + " ".join(args)] = result
        assert "127.0.0.1" in result.output, result.output  # the URL is shown, redacted

    # Search everything.
    found: dict[str, list[str]] = {}
    for name, result in printed.items():
        output = (result.stdout + result.stderr).encode("utf-8", "surrogateescape")
        if hits := leaks(output):
            found[f"output of ecoq {name}"] = hits
    stored = [db_file, *db_file.parent.glob(db_file.name + "-*")]
    files = [*stored, *data_dir.rglob("*"), audit_env / "report.html", audit_env / "report.txt"]
    assert any(p.name == "spec.json" for p in files) and any(p.name == "output.log" for p in files)
    for path in files:
        if path.is_file() and (hits := leaks(path.read_bytes())):
            found[str(path)] = hits
    found |= _table_leaks(db_file)
    for r in caplog.records:
        text = f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
        if hits := leaks(text.encode("utf-8", "surrogateescape")):
            found[f"log record {text[:300]}"] = hits
    assert not found, f"credentials leaked: {found}"


def _table_leaks(db_file: Path) -> dict[str, list[str]]:
    """Every table's rows, as text (the file search above also covers freed pages)."""
    import sqlite3

    found: dict[str, list[str]] = {}
    conn = sqlite3.connect(db_file)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "jobs" in tables
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            if hits := leaks(repr(rows).encode() + str(rows).encode()):
                found[f"table {table}"] = hits
        (env_json,) = conn.execute("SELECT env FROM jobs WHERE id = 1").fetchone()
        env = json.loads(env_json)
        assert "ECOQ_WATTTIME_USERNAME" not in env and "ECOQ_WATTTIME_PASSWORD" not in env
    finally:
        conn.close()
    return found


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_secrets_file_readable_by_others_is_refused(
    audit_env: Path, provider_stub: dict[str, int], mode: int
) -> None:
    secrets = Path(os.environ["ECOQ_SECRETS_FILE"])
    secrets.chmod(mode)
    result = run("forecast", "--zone", "DE", "--provider", "electricitymaps")
    assert result.exit_code == 2, result.output
    assert f"chmod 600 {secrets}" in result.stderr and f"{stat.S_IMODE(mode):04o}" in result.stderr
    assert not leaks(result.output.encode())
    assert provider_stub["login"] == 0  # nothing was sent anywhere


def test_malformed_secrets_file_is_refused_without_echoing_it(
    audit_env: Path, provider_stub: dict[str, int]
) -> None:
    """Arrays nested 3,000 deep made tomllib raise RecursionError, which escaped ecoq's errors
    (exit 1 and a traceback); a syntax error's message gives the position, never the text."""
    secrets = Path(os.environ["ECOQ_SECRETS_FILE"])
    for text in (f'token = "{EM_TOKEN}" [[[', "x = " + "[" * 3000 + "]" * 3000):
        secrets.write_text(text)
        result = run("forecast", "--zone", "DE", "--provider", "electricitymaps")
        assert result.exit_code == 2 and f"secrets file {secrets}" in result.stderr
        assert not leaks(result.output.encode())


def test_job_environment_drops_credentials_and_database_passwords() -> None:
    environ = {
        "PATH": "/usr/bin",
        "ECOQ_WATTTIME_USERNAME": WT_USER,
        "ECOQ_WATTTIME_PASSWORD": WT_PASSWORD,
        "ECOQ_ELECTRICITYMAPS_TOKEN": EM_TOKEN,
        "ECOQ_DATABASE_URL": PG_URL,
        "ECOQ_DATABASE__URL": f"postgresql://u:{PG_PASSWORD}@db/ecoq",
        "ECOQ_SECRETS_FILE": "/home/u/.config/ecoq/secrets.toml",
        "MY_APP_DATABASE_URL": "postgresql://app:own-business@db/app",  # the job's own
    }
    env = job_environment(environ)
    assert env == {
        "PATH": "/usr/bin",
        "ECOQ_SECRETS_FILE": "/home/u/.config/ecoq/secrets.toml",
        "MY_APP_DATABASE_URL": "postgresql://app:own-business@db/app",
    }
    kept = job_environment({"ECOQ_DATABASE_URL": "postgresql://u@db/ecoq"})  # no password
    assert kept == {"ECOQ_DATABASE_URL": "postgresql://u@db/ecoq"}


def test_database_urls_are_redacted_in_the_user_part_and_the_query() -> None:
    assert redact_url(PG_URL) == ("postgresql://ecoq:***@127.0.0.1:1/ecoq?password=***&sslmode=off")
    assert redact_url("postgresql://db/ecoq?sslmode=off&PassWord=x#y") == (
        "postgresql://db/ecoq?sslmode=off&PassWord=***#y"
    )
    assert redact_url("sqlite:////var/lib/ecoq/ecoq.db") == "sqlite:////var/lib/ecoq/ecoq.db"
