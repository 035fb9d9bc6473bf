"""A fuzz run of the command line: random argv lists for submit, show, cancel, queue, simulate,
forecast and report, run in-process.

Every run must end with exit 0, 1 or 2 and no exception escaping; a failure says `error: ...`
(or click's usage error); no output holds a traceback; and an exit 2 ("bad input") leaves the
database exactly as it was. Values are drawn from valid ones, known-nasty ones (huge numbers,
times near year 1 and 9999, DST transitions, shell metacharacters, non-UTF-8 bytes) and random
text. The regression tests below pin each bug the fuzzing found.
"""

import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from ecoq.cli import app
from tests.cli_helpers import cli, cli_json, db_path, ecoq_cmd, ecoq_proc, make_script

# -- the values ------------------------------------------------------------------------------------

#: Values that broke, or could break, a parser: numbers at and past every limit, times at the
#: ends of the calendar, shell syntax, odd Unicode and the bytes of a non-UTF-8 argv.
NASTY = [
    *("", " ", "-", "--", "0", "-1", "1", "00", "+5", "1_000", "0x10", "1e3", "1e308", "-1e308"),
    *("nan", "NaN", "inf", "-inf", "9" * 40, "2147483648", "9223372036854775808"),
    *("0s", "1.h", "1h30", "h", "12 h", "1e5h", "3661d", "99999999999999d", "9" * 400 + "s"),
    *("١٢h", "１２h", "⁵h", "½h"),
    *("2026-12-01", "2026-12-01T00:00", "2026-02-30T00:00Z", "2026-13-01T00:00Z", "24:00"),
    *("0001-01-01T00:00Z", "0001-01-01T00:00+01:00", "9999-12-31T23:59Z", "9999-12-31T23:59-01:00"),
    *("2026-03-29T02:30+01:00", "2026-10-25T02:30+02:00", "2026-03-08T02:30-05:00", "yesterday"),
    *("$(touch pwned)", "`touch pwned`", "; touch pwned", "| cat", "&& rm -rf ~", "*", "~", ".."),
    *("/", "/dev/null", "../../etc/passwd", "'", '"', "\\", "{}", "[", "%s%n", "\t", "\n", "\r\n"),
    *("ünïcødé ☃ 日本", "\u202egnp.exe", "\u200b", "e\u0301", "🚀" * 3, "A" * 300, "A" * 5000),
    *("\udcff\udcfe", "x\udc80y"),  # what Python makes of non-UTF-8 argv bytes
]
TIMEZONES = [
    UTC,
    *map(ZoneInfo, ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]),
    *map(ZoneInfo, ["Pacific/Kiritimati", "America/St_Johns", "Europe/London"]),
]
#: Text as a real argv can hold it: no NUL, and surrogates only for non-UTF-8 bytes.
argv_text = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape")),
)
garbage = st.one_of(st.sampled_from(NASTY), argv_text)


def either(*valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A plausible value five times in six, else garbage."""
    # Hypothesis leans to small integers, so the rarer branch takes the largest.
    return st.integers(0, 5).flatmap(lambda k: garbage if k == 5 else st.one_of(*valid))


spans = st.one_of(
    st.sampled_from(["45s", "1m", "90m", "2h", "1h30m", "1d", "2w", "0.5h", "3660d"]),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**7), st.sampled_from("smhdw")),
)


@st.composite
def instants(draw: st.DrawFn) -> str:
    """An ISO-8601 time with an offset, in a zone with DST or an odd offset, from 11 years
    ago to 11 years ahead, often right at a DST transition."""
    zone = draw(st.sampled_from(TIMEZONES))
    delta = draw(st.timedeltas(min_value=timedelta(days=-4000), max_value=timedelta(days=4000)))
    when = datetime.now(UTC) + delta
    if draw(st.booleans()):  # a DST transition of 2026 or 2027 (01:00 UTC in the EU)
        day = draw(st.sampled_from(["2026-03-29", "2026-10-25", "2027-03-28", "2027-10-31"]))
        when = datetime.fromisoformat(f"{day}T01:00Z") + timedelta(
            minutes=draw(st.integers(-90, 90))
        )
    text = when.astimezone(zone).isoformat(timespec=draw(st.sampled_from(["minutes", "seconds"])))
    return text.replace("+00:00", "Z") if draw(st.booleans()) else text


whens = st.one_of(spans, instants())
zones = st.sampled_from(["DE", "de", "FR", "GB", "US-CAL-CISO", "aws:eu-central-1", "frankfurt"])
counts = either(st.integers(0, 4).map(str), st.integers(-3, 5).map(str), st.integers().map(str))
signals = st.sampled_from(["SIGUSR1", "USR1", "usr2", "10", "SIGKILL", "9", "SIGSTOP", "64", "0"])


@st.composite
def command_line(
    draw: st.DrawFn,
    head: list[str],
    options: dict[str, st.SearchStrategy[str]],
    flags: list[str],
    required: tuple[str, ...] = (),
    positional: st.SearchStrategy[list[str]] | None = None,
) -> list[str]:
    """`head`, then options (the `required` ones usually), flags and positionals, shuffled;
    now and then a stray token."""
    names = [o for o in required if draw(st.integers(0, 9)) < 9]
    names += draw(st.lists(st.sampled_from(sorted(options)), max_size=5)) if options else []
    groups = [[name, draw(options[name])] for name in names]
    groups += [[f] for f in draw(st.lists(st.sampled_from(flags), max_size=3))] if flags else []
    if draw(st.integers(0, 9)) == 9:
        groups.append([draw(st.sampled_from(["--no-such-option", "-x", "--json=1", "extra"]))])
    order = draw(st.permutations(range(len(groups)))) if groups else []
    tokens = [t for i in order for t in groups[i]]
    rest = draw(positional) if positional is not None else []
    return [*head, *tokens, *rest]


# -- the files that --config, --intensity, --jobs, --forecast and forecast.file name ------------


def hourly(start: datetime, values: list[float]) -> list[str]:
    return [f"{(start + timedelta(hours=i)).isoformat()},{v}" for i, v in enumerate(values)]


def write_pool(root: Path) -> dict[str, list[str]]:
    """Valid and broken input files under `root`; their paths by kind."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    files: dict[str, dict[str, str | bytes]] = {
        "config": {
            "ok.toml": "[planner]\nmin_saving = 0.05\n[site]\nzone = 'DE'\ngpus = 2\n",
            "types.toml": "[planner]\nmin_saving = 'lots'\ndefault_duration_s = -5\n",
            "unknown.toml": "[planner]\nmin_savings = 0.1\n[plannr]\nx = 1\n",
            "huge.toml": "[daemon]\ntick_interval_s = 1e300\n[planner]\ndefault_duration_s = "
            + "9" * 30,
            "nul.toml": '[forecast]\nprovider = "file"\nfile = "a\\u0000b"\n',
            "syntax.toml": "[planner\nmin_saving = ",
            "deep.toml": "x = " + "[" * 3000 + "]" * 3000,
            "binary.toml": b"\xff\xfe\x00[planner]",
            "sites.toml": "[[sites]]\nname = 5\nzone = ''\ngpus = -1\npue = 0.5\nbogus = 1\n"
            "[[sites]]\nname = 'a'\nzone = 'DE'\nkind = 'slurm'\nsbatch_args = 7\n",
            "sites_ok.toml": "[[sites]]\nname = 'a'\nzone = 'DE'\ngpus = 99999999999\n"
            "[[sites]]\nname = 'b'\nzone = 'FR'\npue = 1.4\n",
            "provider.toml": "[forecast]\nprovider = 'ukgrid, watttime'\n",
            "bom.toml": "\ufeff[planner]\nmin_saving = 0.1\n",
        },
        "trace": {
            "trace.csv": "time,DE,FR\n"
            + "\n".join(f"{row},{300 - i}" for i, row in enumerate(hourly(t0, [100] * 48))),
            "trace_bad.csv": "time,DE\n2026-01-01T00:00Z,nan\n2026-01-01T01:00Z,-3\n",
            "trace_short.csv": "DE,time\n1\n2,2026-01-01T01:00Z\n",
            "trace_dup.csv": "time,DE,DE\n2026-01-01T00:00Z,1,2\n2026-01-01T01:00Z,1,2\n",
            "trace_bin.csv": b"time,DE\n\xff\xfe\x00\x01",
            "trace_year.csv": "time,DE\n0001-01-01T00:00+01:00,1\n9999-12-31T23:00Z,2\n",
            "trace_huge.csv": "time,DE\n2026-01-01T00:00Z,1e308\n2026-01-01T01:00Z,1\n",
            "trace_fine.csv": "time,DE\n2026-01-01T00:00Z,1\n2026-01-01T00:01Z,2\n",
            "trace_field.csv": "time,DE\n2026-01-01T00:00Z," + "1" * 140_000 + "\n",
        },
        "jobs": {
            "jobs.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw,max_pauses\n"
            "a,2026-01-01T00:00Z,2,2026-01-01T20:00Z,DE|FR,true,1.5,2\n"
            "b,2026-01-01T03:00Z,1,2026-01-02T03:00Z,FR,no,,\n",
            "jobs_bad.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw\n"
            "a,2026-01-01T00:00Z,inf,2026-01-01T20:00Z,DE,maybe,-1\n",
            "jobs_short.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw\na,1\n",
            "jobs_far.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw\n"
            "a,2026-01-01T00:00Z,1,2035-01-01T00:00Z,DE,yes,1\n",
            "jobs_huge.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw\n"
            "a,2026-01-01T00:00Z,1e300,2026-01-02T00:00Z,DE,1,1e308\n",
            "jobs_zone.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw\n"
            "a,2026-01-01T00:00Z,1,2026-01-02T00:00Z,XX|,0,1\n",
            "jobs_dup.csv": "id,submit,duration_h,deadline,zones,interruptible,power_kw\n"
            "a,2026-01-01T00:00Z,1,2026-01-02T00:00Z,DE,0,1\n"
            "a,2026-01-01T00:00Z,1,2026-01-02T00:00Z,DE,0,1\n",
        },
        "forecast": {
            "fc.csv": "issued_at,time,zone,value\n"
            + "\n".join(f"2026-01-01T00:00Z,{r}" for r in hourly(t0, [90] * 24)).replace(
                ",90", ",DE,90"
            ),
            "fc_bad.csv": "issued_at,time,zone,value\n2026-01-01T00:00Z,2026-01-01T00:30Z,DE,x\n",
            "fc_nan.csv": "issued_at,time,zone,value\n2026-01-01T00:00Z,2026-01-01T01:00Z,DE,nan\n",
            "live.csv": "time,value\n" + "\n".join(hourly(now - timedelta(hours=1), [300] * 60)),
            "live_huge.csv": "time,value\n"
            + "\n".join(hourly(now - timedelta(hours=1), [1e308] * 60)),
            "live.json": json.dumps(
                [{"time": t.split(",")[0], "value": 250} for t in hourly(now, [0] * 30)]
            ),
            "deep.json": "[" * 100_000 + "]" * 100_000,
            "bigint.json": '[{"time": "2026-01-01T00:00Z", "value": 1' + "0" * 5000 + "}]",
            "live_bin.csv": b"\xef\xbb\xbftime,value\n\xff",
            "live_9999.csv": "time,value\n9999-12-31T22:00Z,1\n9999-12-31T23:00Z,2\n",
        },
    }
    paths: dict[str, list[str]] = {}
    for kind, items in files.items():
        for name, content in items.items():
            path = root / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
            paths.setdefault(kind, []).append(str(path))
        paths[kind].append(str(root / "missing.csv"))
    return paths


# -- the harness --------------------------------------------------------------------------------


def db_digest() -> str:
    """A hash of every row of every table of the test's SQLite database."""
    path = db_path()
    if not path.exists():
        return "no database"
    digest = hashlib.sha256()
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in sorted(tables):
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            digest.update(f"{table}:{sorted(map(repr, rows))}".encode())
    finally:
        conn.close()
    return digest.hexdigest()


def check_run(argv: list[str], env: dict[str, str | None] | None = None) -> Result:
    """Run `ecoq ARGV` and check the fuzzing invariants."""
    before = db_digest()
    result = CliRunner().invoke(app, argv, env=env)
    shown = f"ecoq {argv!r} (env {env}) exited {result.exit_code}:\n{result.output[-3000:]}"
    escaped = result.exception
    if escaped is not None and not isinstance(escaped, SystemExit):
        raise AssertionError(f"{shown}\nraised {escaped!r}") from escaped
    assert result.exit_code in (0, 1, 2), shown
    assert "Traceback" not in result.output, shown
    if result.exit_code:
        assert "error: " in result.stderr or "Error: " in result.stderr, shown
    if result.exit_code == 2:
        assert db_digest() == before, f"exit 2, but the database changed: {shown}"
    return result


@pytest.fixture
def fuzz_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A working folder with job scripts of awkward names, input files, a database holding
    job 1, and providers that cannot reach the network."""
    monkeypatch.chdir(tmp_path)
    for name in ("job.sh", "ünï ☃.sh", "$(touch pwned).sh", "a;b|c&d.sh"):
        make_script(tmp_path, name)
    (tmp_path / "pool").mkdir()
    for name in ("WATTTIME", "ELECTRICITYMAPS", "UKGRID"):
        monkeypatch.setenv(f"ECOQ_FORECAST__{name}__BASE_URL", "http://127.0.0.1:9")
        monkeypatch.setenv(f"ECOQ_FORECAST__{name}__TIMEOUT_S", "2")
    assert cli("submit", "job.sh", "--deadline", "12h", "--zone", "DE").exit_code == 0
    return write_pool(tmp_path / "pool")


#: Examples per command: 25 keeps the run short for CI; `ECOQ_FUZZ_EXAMPLES=2000` digs deeper.
FUZZ = settings(
    max_examples=int(os.environ.get("ECOQ_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
scripts = st.sampled_from(["job.sh", "ünï ☃.sh", "$(touch pwned).sh", "a;b|c&d.sh", "true"])
job_ids = either(st.sampled_from(["1", "2", "0"]), st.integers().map(str))


def submit_line(pool: dict[str, list[str]]) -> st.SearchStrategy[list[str]]:
    options = {
        "--deadline": either(whens),
        "--duration": either(spans),
        "--not-before": either(whens),
        "--zone": either(zones),
        "--region": either(st.sampled_from(["eu", "europe", "usa", "asia", "mars"])),
        "--gpus": either(st.sampled_from(["0", "1"]), counts),
        "--name": garbage,
        "--project": garbage,
        "--max-pauses": counts,
        "--min-segment": either(spans),
        "--checkpoint-signal": either(signals),
        "--resume": either(st.sampled_from(["job.sh --resume", "'unclosed", "", "python3 x"])),
    }
    flags = ["--drop-if-late", "--interruptible", "--json"]
    args = st.lists(garbage, max_size=3).map(lambda a: ["--", *a] if a else [])
    return either(scripts).flatmap(
        lambda script: command_line(
            ["submit"], options, flags, ("--deadline", "--zone"), args.map(lambda a: [script, *a])
        )
    )


COMMANDS: dict[str, Callable[[dict[str, list[str]]], st.SearchStrategy[list[str]]]] = {
    "submit": submit_line,
    "show": lambda pool: command_line(
        ["show"],
        {"--plot": either(st.sampled_from(["p.png", "sub/p.png", "/nonexistent/p.png"]))},
        ["--json"],
        positional=job_ids.map(lambda i: [i]),
    ),
    "cancel": lambda pool: command_line(["cancel"], {}, [], positional=job_ids.map(lambda i: [i])),
    "logs": lambda pool: command_line(["logs"], {}, [], positional=job_ids.map(lambda i: [i])),
    "queue": lambda pool: command_line(["queue"], {}, ["--all", "--json"]),
    "forecast": lambda pool: command_line(
        ["forecast"],
        {
            "--zone": either(zones),
            "--hours": either(st.sampled_from(["1", "24", "0.5", "744"]), st.floats().map(str)),
            "--duration": either(spans),
            "--deadline": either(whens),
            "--provider": either(st.sampled_from(["bundled", "file", "ukgrid", "watttime"])),
        },
        ["--json"],
        ("--zone",),
    ),
    "report": lambda pool: command_line(
        ["report"],
        {
            "--since": either(whens),
            "--until": either(whens),
            "--by": either(st.sampled_from(["job", "project", "user", "zone", "day"])),
            "--format": either(st.sampled_from(["table", "csv", "json", "html"])),
            "--out": either(st.sampled_from(["r.out", "/nonexistent/r.out", ".", "/dev/full"])),
        },
        ["--codecarbon", "--json"],
    ),
    "simulate": lambda pool: command_line(
        ["simulate"],
        {
            "--intensity": either(st.just(pool["trace"][0]), st.sampled_from(pool["trace"])),
            "--jobs": either(st.just(pool["jobs"][0]), st.sampled_from(pool["jobs"])),
            "--out": either(st.sampled_from(["s.csv", "/nonexistent/s.csv", "."])),
            "--forecast": either(st.just(pool["forecast"][0]), st.sampled_from(pool["forecast"])),
            "--forecast-error": either(st.sampled_from(["0", "0.05", "0.3"]), st.floats().map(str)),
            "--seed": counts,
            "--policy": either(st.sampled_from(["now", "window", "ecoq", "oracle"])),
            "--capacity": counts,
            "--min-saving": either(st.sampled_from(["0", "0.02", "1"]), st.floats().map(str)),
        },
        ["--json"],
        ("--intensity", "--jobs", "--out"),
    ),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@FUZZ
@given(data=st.data())
def test_cli_fuzz(fuzz_dir: dict[str, list[str]], command: str, data: st.DataObject) -> None:
    argv = data.draw(COMMANDS[command](fuzz_dir), label="argv")
    if data.draw(st.integers(0, 4), label="with --config") == 4:
        argv = ["--config", data.draw(st.sampled_from(fuzz_dir["config"])), *argv]
    env: dict[str, str | None] = {
        "ECOQ_FORECAST__FILE": data.draw(st.sampled_from(fuzz_dir["forecast"]), label="file")
    }
    result = check_run(argv, env)
    event(f"exit {result.exit_code}")
    assert not Path("pwned").exists()


# -- regressions: each bug the fuzzing found ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--deadline", "9999-12-31T23:00Z"], "more than 10 years away"),
        (["--deadline", "99999999999999d"], "more than 10 years"),
        (["--deadline", "9" * 400 + "s"], "more than 10 years"),
        (["--deadline", "0001-01-01T00:00+01:00"], "is not an ISO-8601 time"),
        (["--deadline", "12h", "--not-before", "9999-12-31T23:59-01:00"], "not an ISO-8601 time"),
        (["--deadline", "1h", "--interruptible", "--max-pauses", "9" * 20], "at most 1,000,000"),
        (["--deadline", "1h", "--name", "n\udcff"], "--name 'n\\udcff' is not valid UTF-8"),
        (["--deadline", "1h", "--project", "p\udc80"], "--project"),
    ],
)
def test_submit_extremes_exit_2(
    fuzz_dir: dict[str, list[str]], args: list[str], fragment: str
) -> None:
    result = check_run(["submit", "job.sh", "--zone", "DE", *args])
    assert result.exit_code == 2 and fragment in result.stderr, result.output


def test_script_name_with_non_utf8_bytes_is_stored(fuzz_dir: dict[str, list[str]]) -> None:
    """A file named with Latin-1 bytes runs under its real name; its job name shows �."""
    name = b"caf\xe9.sh".decode("utf-8", "surrogateescape")
    make_script(Path.cwd(), name)
    job = cli_json("submit", name, "--deadline", "2h", "--zone", "DE")
    assert job["name"] == "caf\ufffd.sh"
    assert os.fsencode(job["command"][0]) == os.fsencode(str(Path.cwd() / name))


@pytest.mark.parametrize("job_id", ["99999999999999999999999", "9223372036854775808", "-1"])
def test_huge_job_ids_exit_2(fuzz_dir: dict[str, list[str]], job_id: str) -> None:
    for command in ("show", "cancel"):
        result = check_run([command, "--", job_id])
        assert result.exit_code == 2 and "Invalid value" in result.stderr


def test_script_name_too_long_exits_2(fuzz_dir: dict[str, list[str]]) -> None:
    """Path.is_dir() raised OSError(ENAMETOOLONG) for a 300-byte name."""
    result = check_run(["submit", "A" * 300, "--deadline", "1h", "--zone", "DE"])
    assert result.exit_code == 2 and "cannot be looked up (File name too long)" in result.stderr


def test_non_utf8_arguments_print_on_a_strict_utf8_terminal(
    fuzz_dir: dict[str, list[str]],
) -> None:
    """`show` failed with UnicodeEncodeError on an argument holding non-UTF-8 bytes (the
    runner's stdout, like a UTF-8 locale's, is strict); JSON now \\u-escapes them."""
    raw = "caf\udce9"  # b"caf\xe9" from a Latin-1 shell
    job = check_run(["submit", "job.sh", "--deadline", "2h", "--zone", "DE", "--", raw])
    assert job.exit_code == 0, job.output
    shown = check_run(["show", "2", "--json"])
    assert shown.exit_code == 0 and '"caf\\udce9"' in shown.stdout
    assert json.loads(shown.stdout)["command"][-1] == raw
    text = check_run(["show", "2"])
    assert text.exit_code == 0 and "caf" in text.stdout


@pytest.mark.parametrize(
    "flags", [["--poll", "-1"], ["--poll", "nan"], ["--poll", "0"], ["--timeout", "nan"]]
)
def test_wait_bad_timing_exits_2(fuzz_dir: dict[str, list[str]], flags: list[str]) -> None:
    """`--poll -1` reached time.sleep(-1): ValueError."""
    result = check_run(["wait", "1", "--timeout", "5", *flags])
    assert result.exit_code == 2 and "give --poll in seconds" in result.stderr


def test_forecast_hours_nan_exits_2(fuzz_dir: dict[str, list[str]]) -> None:
    result = check_run(["forecast", "--zone", "DE", "--hours", "nan"])
    assert result.exit_code == 2 and "--hours nan must be more than 0" in result.stderr


def test_forecast_file_with_absurd_values_exits_cleanly(fuzz_dir: dict[str, list[str]]) -> None:
    """1e308 g/kWh used to overflow the planner and the bar chart of `ecoq forecast`."""
    huge = next(p for p in fuzz_dir["forecast"] if p.endswith("live_huge.csv"))
    result = check_run(
        ["forecast", "--zone", "DE", "--provider", "file"], {"ECOQ_FORECAST__FILE": huge}
    )
    assert result.exit_code == 1 and "is not a finite, non-negative intensity" in result.stderr


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--seed", "-1", "--forecast-error", "0.1"], "--seed -1 must be 0 or more"),
        (["--forecast-error", "inf"], "--forecast-error inf must be a fraction"),
        (["--forecast-error", "nan"], "--forecast-error nan must be a fraction"),
    ],
)
def test_simulate_bad_flags_exit_2(
    fuzz_dir: dict[str, list[str]], flags: list[str], fragment: str
) -> None:
    trace, jobs = fuzz_dir["trace"][0], fuzz_dir["jobs"][0]
    args = ["simulate", "--intensity", trace, "--jobs", jobs, "--out", "s.csv", *flags]
    result = check_run(args)
    assert result.exit_code == 2 and fragment in result.stderr, result.output


@pytest.mark.parametrize(
    ("trace", "jobs", "fragment"),
    [
        ("trace_bin.csv", "jobs.csv", "is not UTF-8 text"),
        ("trace_short.csv", "jobs.csv", "line 2: the header has 2 fields but this row fewer"),
        ("trace_dup.csv", "jobs.csv", "column 'DE' appears twice"),
        ("trace_year.csv", "jobs.csv", "'0001-01-01T00:00+01:00' is not an ISO-8601 time"),
        ("trace_huge.csv", "jobs.csv", "'1e308' is not an intensity"),
        ("trace_bad.csv", "jobs.csv", "'nan' is not an intensity"),
        ("trace_field.csv", "jobs.csv", "not a CSV row (field larger than field limit"),
        ("trace.csv", "jobs_short.csv", "line 2: the header has 7 fields but this row fewer"),
        ("trace.csv", "jobs_bad.csv", "duration_h 'inf' is not a number"),
        ("trace.csv", "jobs_huge.csv", "line 2: the job spans more than 10 years"),
        ("trace.csv", "jobs_dup.csv", "line 3: id 'a' is also on line 2"),
        ("trace_fine.csv", "jobs_far.csv", "trace steps past the end of the intensity trace"),
    ],
)
def test_simulate_garbage_files_exit_2(
    fuzz_dir: dict[str, list[str]], trace: str, jobs: str, fragment: str
) -> None:
    pool = Path("pool")
    args = ["simulate", "--intensity", str(pool / trace), "--jobs", str(pool / jobs)]
    result = check_run([*args, "--out", "s.csv"])
    assert result.exit_code == 2 and fragment in result.stderr, result.output
    assert not Path("s.csv").exists()


# -- argv lists, never a shell: what the user typed reaches the job byte for byte ---------------

#: A job that writes its own argv (as bytes, hex) to argv.json in its working folder.
ARGV_JOB = """#!/usr/bin/env python3
import json, os, sys
with open("argv.json", "w") as f:
    json.dump([os.fsencode(a).hex() for a in sys.argv], f)
"""
METACHARACTERS = [
    "$(touch pwned)",
    "`touch pwned`",
    "; touch pwned",
    "| touch pwned",
    "&& touch pwned",
    "> pwned",
    "$HOME ${PATH} $$ $0 *",
    "'single' \"double\" \\back",
    "line\nbreak\ttab",
    "ünïcødé ☃ 日本 🚀",
    "\u202eright-to-left",
    " leading and trailing ",
    "",
    "--flag=$(id)",
]


@pytest.mark.slow
def test_shell_metacharacters_reach_the_job_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOQ_PLANNER__MIN_SAVING", "1")  # due at once
    script = make_script(tmp_path, "$(touch pwned) ☃;.py", ARGV_JOB)
    raw = b"\xff\xfe-latin1-\xe9"  # not UTF-8: reaches the job as the same bytes
    args = [*METACHARACTERS, raw.decode("utf-8", "surrogateescape")]
    # A real process, so the arguments pass through the OS as bytes, as a user's would.
    flags = ["--deadline", "10m", "--duration", "1m", "--zone", "DE", "--"]
    submit = subprocess.run(
        [*ecoq_cmd("submit", script.name, *flags), *map(os.fsencode, args)],
        capture_output=True,
        check=False,
    )
    assert submit.returncode == 0, submit.stderr
    ran = ecoq_proc("daemon", "--until-idle", timeout=120)
    assert ran.returncode == 0, ran.stderr
    seen = [bytes.fromhex(h) for h in json.loads((tmp_path / "argv.json").read_text())]
    assert seen == [os.fsencode(str(script)), *map(os.fsencode, args)]
    assert not list(tmp_path.rglob("pwned")) and not (Path.home() / "pwned").exists()
