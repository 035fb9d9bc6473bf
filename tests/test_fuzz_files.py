"""Fuzzing the files ecoq reads: forecast files (CSV, JSON, raw bytes), the `ecoq simulate`
CSVs, and config files (wrong types, unknown keys, `[[sites]]`, broken TOML).

Each file either reads into a value with the documented properties or raises the module's
`EcoqError` (ForecastUnavailable/UnknownZone, ValidationError, ConfigError) naming the file;
config problems also name the key and its line. No other exception escapes.
"""

import json
import math
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ecoq.config import Settings, _schema, load_settings
from ecoq.errors import ConfigError, EcoqError, ForecastUnavailable, UnknownZone, ValidationError
from ecoq.forecasting.files import MAX_G_PER_KWH, FileProvider
from ecoq.scheduler.simdata import (
    Trace,
    check_horizon,
    read_forecasts,
    read_jobs,
    read_trace,
)
from ecoq.scheduler.simulate import simulate

DAY = datetime(2026, 5, 1, tzinfo=UTC)
#: `ECOQ_FUZZ_EXAMPLES=2000` digs deeper than CI's 80 examples a test.
FILES = settings(
    max_examples=int(os.environ.get("ECOQ_FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- cells: valid values near DAY, and garbage ----------------------------------------------------

times = st.one_of(
    st.integers(-6, 30).map(lambda h: (DAY + timedelta(hours=h)).isoformat()),
    st.integers(-6, 30).map(lambda h: (DAY + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%MZ")),
    st.integers(0, 30).map(lambda h: (DAY + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M")),
    st.sampled_from(
        [
            *("0001-01-01T00:00+01:00", "9999-12-31T23:00Z", "9999-12-31T23:59-01:00"),
            *("2026-05-01T02:00+14:00", "2026-02-30T00:00Z", "yesterday", "", "T", "1e9"),
            "2026-05-01T00:00:00.000001Z",
        ]
    ),
)
numbers = st.one_of(
    st.floats(0, 2000).map(lambda v: f"{v:.3f}"),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-1", "1e308", "1e6", "1000001", "", " 12 ", "1_0", "0x1f"]),
    st.integers().map(str),
)
zones = st.sampled_from(["DE", "FR", "de", "", " DE ", "ünï", "A|B"])
junk = st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=12)
cells = {
    "time": st.one_of(times, times, junk),
    "issued_at": st.one_of(times, junk),
    "value": st.one_of(numbers, numbers, junk),
    "zone": st.one_of(zones, junk),
    "signal": st.sampled_from(["average", "marginal", "MARGINAL", "moer", ""]),
}


def csv_cell(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n\r') else text


@st.composite
def forecast_csv(draw: st.DrawFn) -> str:
    columns = draw(
        st.one_of(
            st.permutations(["time", "value"]),
            st.permutations(["time", "zone", "value"]),
            st.permutations(["issued_at", "time", "zone", "value"]),
            st.lists(st.sampled_from([*cells, "extra", "TIME", " value "]), max_size=5),
        )
    )
    lines = []
    if draw(st.booleans()):
        lines.append(f"# signal: {draw(cells['signal'])}")
    lines.append(",".join(columns))
    for _ in range(draw(st.integers(0, 8))):
        row = [draw(cells.get(c.strip().lower(), junk)) for c in columns]
        if draw(st.integers(0, 9)) == 9:
            row = row[: draw(st.integers(0, len(row)))]  # a short row
        lines.append(",".join(map(csv_cell, row)))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.sampled_from(["2026-05-01T01:00Z", "DE", "average"]),
        junk,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(junk, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def forecast_json(draw: st.DrawFn) -> str:
    point = st.fixed_dictionaries(
        {"time": st.one_of(times, json_values), "value": st.one_of(st.floats(0, 900), json_values)},
        optional={"zone": st.one_of(zones, json_values), "issued_at": times, "signal": json_values},
    )
    points = st.lists(point, max_size=8)
    data = draw(
        st.one_of(
            points,
            st.fixed_dictionaries({"points": points}, optional={"signal": json_values}),
            json_values,
        )
    )
    return json.dumps(data, allow_nan=True)


def check_forecast(path: Path, zone: str = "DE") -> None:
    """Read `path` as a forecast file: a sound Forecast, or an error naming the file."""
    provider = FileProvider(path, now=lambda: DAY + timedelta(days=1))
    try:
        fc = provider.forecast(zone, DAY, DAY + timedelta(hours=3))
    except (ForecastUnavailable, UnknownZone) as exc:
        assert str(path) in str(exc)
        return
    starts = [p.start for p in fc.points]
    assert starts == sorted(set(starts)) and fc.step > timedelta(0)
    assert all(p.start < DAY + timedelta(hours=3) and p.start + fc.step > DAY for p in fc.points)
    assert all(0 <= p.g_per_kwh <= MAX_G_PER_KWH for p in fc.points)


@FILES
@given(text=forecast_csv())
def test_any_forecast_csv(tmp_path: Path, text: str) -> None:
    path = tmp_path / "forecast.csv"
    path.write_text(text, encoding="utf-8")
    check_forecast(path)


@FILES
@given(text=forecast_json())
def test_any_forecast_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "forecast.json"
    path.write_text(text, encoding="utf-8")
    check_forecast(path)


@FILES
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".json", ""]))
def test_any_forecast_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"forecast{suffix}"
    path.write_bytes(data)
    check_forecast(path)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [  # each of these raised something other than ForecastUnavailable
        ("deep.json", "[" * 100_000 + "]" * 100_000, "is not valid JSON (maximum recursion"),
        ("big.json", '[{"time": "2026-05-01T00:00Z", "value": 1' + "0" * 5000 + "}]", "4300"),
        ("field.csv", "time,value\n2026-05-01T00:00Z," + "1" * 140_000 + "\n", "line 2: not a CSV"),
        ("offset.csv", "time,value\n0001-01-01T00:00+01:00,1\n", "line 2: time '0001"),
        (
            "end.csv",
            "time,value\n9999-12-31T22:00Z,1\n9999-12-31T23:00Z,2\n",
            "passes the year 9999",
        ),
        ("huge.csv", "time,value\n2026-05-01T00:00Z,1e308\n", "at most 1,000,000"),
    ],
)
def test_forecast_file_regressions(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ForecastUnavailable, match=re.escape(fragment)):
        FileProvider(path).forecast("DE", DAY, DAY + timedelta(hours=3))


def test_forecast_file_with_a_bom_is_read(tmp_path: Path) -> None:
    """Spreadsheets save UTF-8 CSV with a byte-order mark; it used to hide the `time` column."""
    path = tmp_path / "excel.csv"
    path.write_text("\ufefftime,value\n2026-05-01T00:00Z,100\n2026-05-01T01:00Z,90\n")
    assert len(FileProvider(path).forecast("DE", DAY, DAY + timedelta(hours=2)).points) == 2


# -- the files of `ecoq simulate` ------------------------------------------------------------


@st.composite
def sim_csv(draw: st.DrawFn, columns: list[str], values: dict[str, st.SearchStrategy[str]]) -> str:
    if draw(st.integers(0, 5)) == 5:  # a broken header
        columns = draw(st.lists(st.sampled_from([*columns, "", "DE", "x"]), max_size=6))
    lines = [",".join(columns)]
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(values.get(c, junk)) for c in columns]
        if draw(st.integers(0, 9)) == 9:
            row = row[: draw(st.integers(0, len(row)))] + draw(st.lists(junk, max_size=2))
        lines.append(",".join(map(csv_cell, row)))
    return "\n".join(lines) + "\n"


sim_numbers = st.one_of(st.floats(0, 500).map(lambda v: f"{v:.1f}"), numbers)
trace_csv = sim_csv(["time", "DE", "FR"], {"time": times, "DE": sim_numbers, "FR": sim_numbers})
jobs_csv = sim_csv(
    ["id", "submit", "duration_h", "deadline", "zones", "interruptible", "power_kw", "max_pauses"],
    {
        "id": st.sampled_from(["a", "b", "c", "", "a"]),
        "submit": times,
        "deadline": times,
        "duration_h": st.one_of(st.sampled_from(["0.5", "1", "2.5", "30"]), numbers),
        "zones": st.sampled_from(["DE", "FR", "DE|FR", "FR|DE|", "XX", "", "|"]),
        "interruptible": st.sampled_from(["true", "no", "1", "", "maybe"]),
        "power_kw": st.one_of(st.sampled_from(["", "1", "0.3"]), numbers),
        "max_pauses": st.sampled_from(["", "0", "2", "-1", "1.5", "9" * 30, "٣"]),
    },
)
forecasts_csv = sim_csv(
    ["issued_at", "time", "zone", "value"],
    {"issued_at": times, "time": times, "zone": zones, "value": sim_numbers},
)


def read_or_refuse(read: Callable[[], Any], path: Path) -> Any:
    try:
        return read()
    except ValidationError as exc:
        assert str(path) in str(exc)
        return None


@FILES
@given(trace=trace_csv, jobs=jobs_csv, forecasts=forecasts_csv)
def test_any_simulate_files(tmp_path: Path, trace: str, jobs: str, forecasts: str) -> None:
    paths = [tmp_path / n for n in ("trace.csv", "jobs.csv", "forecasts.csv")]
    for path, text in zip(paths, (trace, jobs, forecasts), strict=True):
        path.write_text(text, encoding="utf-8")
    tr = read_or_refuse(lambda: read_trace(paths[0]), paths[0])
    job_list = read_or_refuse(lambda: read_jobs(paths[1]), paths[1])
    if tr is not None:
        assert isinstance(tr, Trace) and tr.step_s > 0
        for values in tr.zones.values():
            assert all(0 <= v <= 1e6 for v in values)
        read_or_refuse(lambda: read_forecasts(paths[2], tr), paths[2])
    if job_list is not None:
        assert len({j.id for j in job_list}) == len(job_list)
        for job in job_list:
            assert math.isfinite(job.duration_s) and job.duration_s > 0 and job.power_kw > 0
            assert job.deadline_s - job.submit_s <= 3660 * 86400


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-30, 60),  # submit, hours after the trace's start
            st.floats(0.01, 40),  # duration_h
            st.integers(-5, 80),  # deadline, hours after submit
            st.sampled_from(["DE", "FR", "DE|FR"]),
            st.booleans(),
            st.sampled_from(["", "0", "1", "3"]),
        ),
        min_size=1,
        max_size=5,
    ),
    policy=st.sampled_from(["now", "window", "ecoq", "oracle"]),
    capacity=st.sampled_from([None, 1, 2]),
)
def test_any_simulation_runs_or_refuses(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, float, int, str, bool, str]],
    policy: str,
    capacity: int | None,
) -> None:
    """Jobs before, inside and after the trace, impossible deadlines and tight capacity: the
    simulation finishes with sound numbers (or refuses the input with a ValidationError)."""
    root = tmp_path_factory.mktemp("sim")
    trace = root / "trace.csv"
    hours = [DAY + timedelta(hours=h) for h in range(48)]
    trace.write_text(
        "time,DE,FR\n"
        + "".join(
            f"{t.isoformat()},{100 + h % 24 * 10},{300 - h}\n" for h, t in enumerate(hours)
        )  # fmt: skip
    )
    jobs = root / "jobs.csv"
    lines = ["id,submit,duration_h,deadline,zones,interruptible,power_kw,max_pauses"]
    for i, (submit_h, duration_h, deadline_h, zones_, interruptible, pauses) in enumerate(rows):
        submit = DAY + timedelta(hours=submit_h)
        deadline = submit + timedelta(hours=deadline_h)
        lines.append(
            f"j{i},{submit.isoformat()},{duration_h},{deadline.isoformat()},{zones_},"
            f"{interruptible},1,{pauses}"
        )
    jobs.write_text("\n".join(lines) + "\n")
    tr, job_list = read_trace(trace), read_jobs(jobs)
    check_horizon(tr, job_list)
    result = simulate(tr, job_list, policy=policy, capacity=capacity)  # type: ignore[arg-type]
    summary = result.summary()
    assert summary["jobs"] == len(rows)
    assert math.isfinite(result.baseline_g) and math.isfinite(result.scheduled_g)
    assert 0 <= result.deadline_misses <= len(rows)
    for job in job_list:
        done = sum((s.end - s.start).total_seconds() for s in result.segments if s.id == job.id)
        assert done == pytest.approx(job.duration_s, abs=1e-3)


def test_simulate_files_with_a_bom_are_read(tmp_path: Path) -> None:
    """A spreadsheet's byte-order mark used to turn `time` into a missing column."""
    trace = tmp_path / "trace.csv"
    trace.write_text("\ufefftime,DE\n2026-01-01T00:00Z,1\n2026-01-01T01:00Z,2\n")
    assert list(read_trace(trace).zones) == ["DE"]


def test_trace_with_a_century_step(tmp_path: Path) -> None:
    """A job shorter than a millionth of the grid step (a trace step of two centuries) still
    takes one cell of the slot search: it used to need none, and the empty plan failed."""
    trace = tmp_path / "trace.csv"
    trace.write_text("time,DE\n1900-01-01T00:00Z,1\n2100-01-01T00:00Z,5\n")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "id,submit,duration_h,deadline,zones,interruptible,power_kw\n"
        "a,2026-01-01T00:00Z,1,2026-01-01T05:00Z,DE,1,1\n"
    )
    result = simulate(read_trace(trace), read_jobs(jobs))
    assert result.summary()["jobs"] == 1
    done = sum((s.end - s.start).total_seconds() for s in result.segments if s.id == "a")
    assert done == pytest.approx(3600.0, abs=1e-3)


# -- config files ----------------------------------------------------------------------------


def toml_value(value: object) -> str:
    """`value` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(
            value) else repr(value)  # fmt: skip
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(st.characters(codec="utf-8"), max_size=10),
    st.sampled_from(["file", "bundled, ukgrid", "watttime", "http://x", "~/data", "1979-05-27"]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abc"), inner, max_size=2)
    ),
    max_leaves=5,
)
SECTIONS = sorted({k.section.split(".")[0] for k in _schema().values()})
KEYS = {s: sorted({k.name for k in _schema().values() if k.section == s}) for s in SECTIONS}


@st.composite
def config_doc(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    """A TOML document, and the line of each `section.key` it sets."""
    lines: list[str] = []
    where: dict[str, int] = {}
    sections = st.one_of(st.sampled_from(SECTIONS), st.sampled_from(["sites", "plannr", "x y"]))
    for section in draw(st.lists(sections, max_size=4, unique=True)):
        header = "[[sites]]" if section == "sites" else f"[{json.dumps(section)}]"
        lines.append(header if " " in section else header.replace('"', ""))
        known = st.sampled_from(KEYS.get(section, ["name", "zone", "gpus", "pue", "kind"]))
        for key in draw(st.lists(st.one_of(known, known, junk), max_size=4, unique=True)):
            lines.append(f"{json.dumps(key, ensure_ascii=False)} = {toml_value(draw(toml_values))}")
            where[f"{section}.{key}"] = len(lines)
    if draw(st.integers(0, 9)) == 9:
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(junk))  # likely a syntax error
        where = {k: n + (n > at) for k, n in where.items()}
    return "\n".join(lines) + "\n", where


def load(path: Path, home: Path) -> Settings:
    return load_settings(config_file=path, env={"HOME": str(home)})


@FILES
@given(doc=config_doc())
@example(doc=("x = " + "[" * 3000 + "]" * 3000 + "\n", {}))  # was RecursionError
@example(doc=("\ufeff[planner]\nmin_saving = 0.1\n", {}))  # a BOM was a syntax error
@example(doc=('[forecast.ukgrid]\nbase_url = "http://\\u0000"\n', {}))  # was httpx.InvalidURL
@example(doc=("[planner]\ndefault_duration_s = " + "9" * 18 + "\n", {}))  # was OverflowError
def test_any_config_file_loads_or_names_file_key_and_line(
    tmp_path: Path, doc: tuple[str, dict[str, int]]
) -> None:
    text, where = doc
    path = tmp_path / "ecoq.toml"
    path.write_text(text, encoding="utf-8")
    try:
        settings_ = load(path, tmp_path)
    except ConfigError as exc:
        message = str(exc)
        problems = message.splitlines()[1:] or [message]
        assert all(str(path) in line for line in problems), message
        for dotted, line in where.items():  # a problem with a key names its line
            section, _, name = dotted.partition(".")
            for problem in problems:
                if f"{dotted} = " in problem or f"unknown key {name!r} in [{section}]" in problem:
                    assert f"{path}:{line}:" in problem, (problem, line)
        return
    assert isinstance(settings_, Settings)
    for key in _schema():
        if key.endswith("_s"):
            assert 0 <= _get(settings_, key) <= 3660 * 86400


def _get(settings_: Settings, dotted: str) -> Any:
    value: Any = settings_
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


BAD_VALUES: dict[type, list[object]] = {
    int: ["12", 1.5, True, [1], 10**30],
    float: ["0.1", True, float("nan"), float("inf"), {"a": 1}],
    str: [5, 1.5, False, ["x"], "a\x00b"],
    bool: ["yes", 1, 0.0],
}


@FILES
@given(
    key=st.sampled_from(sorted(_schema())),
    pick=st.integers(0, 4),
    before=st.integers(0, 3),
    style=st.sampled_from(["table", "dotted", "inline"]),
)
def test_a_wrong_value_names_file_key_and_line(
    tmp_path: Path, key: str, pick: int, before: int, style: str
) -> None:
    spec = _schema()[key]
    bad = BAD_VALUES[spec.type][pick % len(BAD_VALUES[spec.type])]
    section, _, name = key.rpartition(".")
    lines = ["# comment"] * before
    if style == "table":
        lines += [f"[{section}]", f"{name} = {toml_value(bad)}"]
    elif style == "dotted":
        lines += [f"{key} = {toml_value(bad)}"]
    else:
        head, _, rest = key.partition(".")
        inner = rest.replace(".", " = {", rest.count(".")) if "." in rest else rest
        closing = "}" * rest.count(".")
        lines += [f"{head} = {{{inner} = {toml_value(bad)}{closing}}}"]
    path = tmp_path / "ecoq.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, tmp_path)
    message = str(info.value)
    assert key in message and f"{path}:{len(lines)}" in message, message
    assert "Fix: edit" in message


@FILES
@given(
    name=st.sampled_from(["bogus", "gpu", "zone_", "Zone", "partitions", "ünï"]),
    before=st.integers(0, 3),
    section=st.sampled_from(SECTIONS),
)
def test_an_unknown_key_names_file_key_and_line(
    tmp_path: Path, name: str, before: int, section: str
) -> None:
    lines = ["# comment"] * before + [f"[{section}]", f'"{name}" = 1']
    path = tmp_path / "ecoq.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, tmp_path)
    message = str(info.value)
    assert f"{path}:{len(lines)}: unknown key {name!r} in [{section}]" in message, message


SITE_VALUES = st.one_of(toml_scalars, st.sampled_from(["DE", "FR", "box", "slurm", "remote"]))


@FILES
@given(
    sites=st.lists(
        st.dictionaries(
            st.sampled_from(
                ["name", "zone", "kind", "gpus", "slots", "pue", "idle_w_per_gpu", "partition",
                 "sbatch_args", "timeout_s", "bogus"]
            ),
            SITE_VALUES,
            max_size=6,
        ),
        max_size=3,
    )
)  # fmt: skip
def test_any_sites_table_loads_or_names_file_line_and_key(
    tmp_path: Path, sites: list[dict[str, object]]
) -> None:
    lines: list[str] = []
    for table in sites:
        lines.append("[[sites]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path = tmp_path / "ecoq.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        loaded = load(path, tmp_path)
    except ConfigError as exc:
        problems = str(exc).splitlines()[1:] or [str(exc)]
        for problem in problems:
            assert re.search(rf"{re.escape(str(path))}(:\d+)?: ", problem), problem
            assert "[[sites]] #" in problem or "sites" in problem, problem
        return
    assert len(loaded.sites) == len(sites)
    for site in loaded.sites:
        assert site.name.strip() and site.zone.strip() and site.pue >= 1
        assert site.gpus is None or site.gpus >= 0


def test_config_regressions(tmp_path: Path) -> None:
    path = tmp_path / "ecoq.toml"
    # an array of tables where a table belongs: named, with its line
    path.write_text("[[planner]]\nmin_saving = 1\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:1: 'planner' .* one table"):
        load(path, tmp_path)
    # a key of an inline table: the line of the table
    path.write_text("# x\nplanner = {min_saving = 'x'}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:2: planner.min_saving"):
        load(path, tmp_path)
    # U+0085 in a value is no line end for TOML (str.splitlines() counted one)
    path.write_text('[site]\nname = "a\u0085b"\nbogus = 1\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:3: unknown key 'bogus'"):
        load(path, tmp_path)
    # a quoted key with escapes: its own line, not its table's
    path.write_text('[site]\n\n"x\\u0041" = 1\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:3: unknown key 'xA'"):
        load(path, tmp_path)
    # GPU counts the daemon would loop over for ever
    path.write_text("[site]\ngpus = 99999999999\n")
    with pytest.raises(ConfigError, match=r":2: site.gpus = 99999999999 is out of range"):
        load(path, tmp_path)
    path.write_text("[[sites]]\nname = 'a'\nzone = 'DE'\nslots = 99999999999\n")
    with pytest.raises(ConfigError, match=r":4: \[\[sites\]\] #1 'a': slots = 99999999999"):
        load(path, tmp_path)
    path.write_text("[planner]\ndefault_duration_s = 99999999999\n")  # timedelta overflowed
    with pytest.raises(ConfigError, match=r"at most 316,224,000 seconds \(10 years\)"):
        load(path, tmp_path)
    # a config path too long for the file system
    with pytest.raises(ConfigError, match="File name too long"):
        load_settings(config_file=tmp_path / ("x" * 5000), env={"HOME": str(tmp_path)})


def test_every_error_is_an_ecoq_error() -> None:
    """The suites above catch only these classes; all of them are EcoqError."""
    for cls in (ConfigError, ForecastUnavailable, UnknownZone, ValidationError):
        assert issubclass(cls, EcoqError)
