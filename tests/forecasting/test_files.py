from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting.files import FileProvider

DAY = datetime(2026, 5, 1, tzinfo=UTC)


def write(tmp_path: Path, text: str) -> FileProvider:
    path = tmp_path / "forecast.csv"
    path.write_text(text)
    return FileProvider(path)


def test_time_value_file_applies_to_any_zone(tmp_path: Path) -> None:
    provider = write(
        tmp_path,
        "time,value\n"
        "2026-05-01T00:00Z,100\n"
        "2026-05-01T00:30:00+00:00,80.5\n"
        "2026-05-01T03:00:00+02:00,60\n",  # 01:00 UTC
    )
    forecast = provider.forecast("anywhere", DAY, DAY + timedelta(hours=2))
    assert forecast.zone == "anywhere"
    assert (forecast.source, forecast.label, forecast.signal) == (
        "file",
        f"file {provider.path}",
        "average",
    )
    assert forecast.step == timedelta(minutes=30)
    assert [p.start for p in forecast.points] == [
        DAY,
        DAY + timedelta(minutes=30),
        DAY + timedelta(hours=1),
    ]
    assert [p.g_per_kwh for p in forecast.points] == [100, 80.5, 60]
    assert forecast.issued_at.tzinfo is not None


def test_naive_times_are_utc_and_rows_may_be_unsorted(tmp_path: Path) -> None:
    provider = write(tmp_path, "Time,Value\n2026-05-01 01:00,3\n2026-05-01 00:00,1\n")
    forecast = provider.forecast("X", DAY, DAY + timedelta(hours=2))
    assert forecast.points[0].start == DAY
    assert forecast.step == timedelta(hours=1)
    assert forecast.end == DAY + timedelta(hours=2)


def test_zone_column_filters_by_zone(tmp_path: Path) -> None:
    provider = write(
        tmp_path,
        "time,zone,value\n"
        "2026-05-01T00:00Z,DE,300\n2026-05-01T01:00Z,DE,310\n"
        "2026-05-01T00:00Z,FR,50\n2026-05-01T01:00Z,FR,55\n",
    )
    forecast = provider.forecast("FR", DAY, DAY + timedelta(hours=2))
    assert [p.g_per_kwh for p in forecast.points] == [50, 55]
    assert provider.forecast("de", DAY, DAY + timedelta(hours=2)).zone == "DE"
    with pytest.raises(UnknownZone, match=r"'PL'.*it has DE, FR"):
        provider.forecast("PL", DAY, DAY + timedelta(hours=2))


def test_returns_only_points_overlapping_the_range(tmp_path: Path) -> None:
    rows = "".join(f"2026-05-01T{h:02d}:00Z,{h}\n" for h in range(10))
    provider = write(tmp_path, "time,value\n" + rows)
    forecast = provider.forecast(
        "X", DAY + timedelta(hours=2, minutes=30), DAY + timedelta(hours=4)
    )
    assert [p.g_per_kwh for p in forecast.points] == [2, 3]


def test_range_outside_the_file_says_its_time_range(tmp_path: Path) -> None:
    provider = write(tmp_path, "time,value\n2026-05-01T00:00Z,1\n2026-05-01T01:00Z,2\n")
    with pytest.raises(ForecastUnavailable, match=r"covers 2026-05-01T00:00:00\+00:00 to "):
        provider.forecast("X", DAY + timedelta(days=1), DAY + timedelta(days=2))


def test_signal_from_comment_or_column(tmp_path: Path) -> None:
    text = "# signal: marginal\ntime,value\n2026-05-01T00:00Z,1\n2026-05-01T01:00Z,2\n"
    assert write(tmp_path, text).forecast("X", DAY, DAY).signal == "marginal"
    text = "time,value,signal\n2026-05-01T00:00Z,1,marginal\n2026-05-01T01:00Z,2,marginal\n"
    assert write(tmp_path, text).forecast("X", DAY, DAY).signal == "marginal"
    text = "time,value,signal\n2026-05-01T00:00Z,1,marginal\n2026-05-01T01:00Z,2,average\n"
    with pytest.raises(ForecastUnavailable, match="mixes signals average, marginal"):
        write(tmp_path, text).forecast("X", DAY, DAY)
    text = "time,value,signal\n2026-05-01T00:00Z,1,moer\n2026-05-01T01:00Z,2,moer\n"
    with pytest.raises(ForecastUnavailable, match="line 2: signal 'moer'"):
        write(tmp_path, text).forecast("X", DAY, DAY)


def test_file_is_reread_at_each_call(tmp_path: Path) -> None:
    provider = write(tmp_path, "time,value\n2026-05-01T00:00Z,1\n2026-05-01T01:00Z,2\n")
    assert provider.forecast("X", DAY, DAY).points[0].g_per_kwh == 1
    provider.path.write_text("time,value\n2026-05-01T00:00Z,7\n2026-05-01T01:00Z,2\n")
    assert provider.forecast("X", DAY, DAY).points[0].g_per_kwh == 7


def test_most_common_difference_is_the_step_and_gaps_stay_gaps(tmp_path: Path) -> None:
    times = [0, 15, 30, 45, 120, 135]  # minutes; a gap from 60 to 120
    rows = "".join(f"{(DAY + timedelta(minutes=m)).isoformat()},{m}\n" for m in times)
    forecast = write(tmp_path, "time,value\n" + rows).forecast("X", DAY, DAY + timedelta(hours=3))
    assert forecast.step == timedelta(minutes=15)
    assert forecast.value_at(DAY + timedelta(minutes=50)) == 45
    with pytest.raises(ForecastUnavailable, match="no value at"):
        forecast.value_at(DAY + timedelta(minutes=90))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("yesterday,12", r"line 3: time 'yesterday' is not ISO-8601"),
        ("2026-05-01T02:00Z,lots", r"line 3: value 'lots' is not a number"),
        ("2026-05-01T02:00Z,nan", r"line 3: value 'nan' is not a finite, non-negative"),
        ("2026-05-01T02:00Z,-5", r"line 3: value '-5' is not a finite, non-negative"),
        ("2026-05-01T02:00Z,inf", r"line 3: value 'inf'"),
        ("2026-05-01T02:00Z", r"line 3: 1 fields, the header has 2"),
        ("2026-05-01T00:00Z,3", r"lines 2 and 3: time 2026-05-01T00:00:00\+00:00 appears twice"),
    ],
)
def test_bad_rows_name_file_line_and_value(tmp_path: Path, row: str, message: str) -> None:
    provider = write(tmp_path, f"time,value\n2026-05-01T00:00Z,1\n{row}\n2026-05-01T04:00Z,2\n")
    with pytest.raises(ForecastUnavailable, match=message) as info:
        provider.forecast("X", DAY, DAY + timedelta(hours=1))
    assert str(provider.path) in str(info.value)


def test_bad_header(tmp_path: Path) -> None:
    provider = write(tmp_path, "when,intensity\n2026-05-01T00:00Z,1\n")
    with pytest.raises(ForecastUnavailable, match=r"line 1: header .* time,value"):
        provider.forecast("X", DAY, DAY)


def test_empty_missing_or_single_row_file(tmp_path: Path) -> None:
    with pytest.raises(ForecastUnavailable, match="is empty"):
        write(tmp_path, "").forecast("X", DAY, DAY)
    with pytest.raises(ForecastUnavailable, match="at least two are needed"):
        write(tmp_path, "time,value\n2026-05-01T00:00Z,1\n").forecast("X", DAY, DAY)
    with pytest.raises(ForecastUnavailable, match="cannot read forecast file .*forecast.file"):
        FileProvider(tmp_path / "missing.csv").forecast("X", DAY, DAY)


# -- JSON files, issued forecasts (replay), history -------------------------------------------


def write_named(tmp_path: Path, name: str, text: str, **kw: object) -> FileProvider:
    path = tmp_path / name
    path.write_text(text)
    return FileProvider(path, **kw)  # type: ignore[arg-type]


def test_json_list_of_points(tmp_path: Path) -> None:
    text = (
        '[{"time": "2026-05-01T01:00Z", "value": 3}, {"time": "2026-05-01T00:00:00+00:00", '
        '"value": 1.5}, {"time": "2026-05-01T04:00:00+02:00", "value": 2}]'
    )
    forecast = write_named(tmp_path, "f.json", text).forecast("X", DAY, DAY + timedelta(hours=3))
    assert [p.start for p in forecast.points] == [DAY + timedelta(hours=h) for h in range(3)]
    assert [p.g_per_kwh for p in forecast.points] == [1.5, 3, 2]
    assert forecast.signal == "average" and not forecast.realized


def test_json_object_with_signal_and_zones(tmp_path: Path) -> None:
    text = (
        '{"signal": "marginal", "points": ['
        '{"time": "2026-05-01T00:00Z", "zone": "CAISO_NORTH", "value": 400},'
        '{"time": "2026-05-01T00:05Z", "zone": "CAISO_NORTH", "value": 410},'
        '{"time": "2026-05-01T00:00Z", "zone": "PJM_DC", "value": 600}]}'
    )
    provider = write_named(tmp_path, "forecast.data", text)  # detected by its first character
    forecast = provider.forecast("caiso_north", DAY, DAY + timedelta(minutes=10))
    assert (forecast.zone, forecast.signal, forecast.step) == (
        "CAISO_NORTH", "marginal", timedelta(minutes=5),
    )  # fmt: skip
    with pytest.raises(UnknownZone, match="it has CAISO_NORTH, PJM_DC"):
        provider.forecast("DE", DAY, DAY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"time": "2026-05-01T00:00Z", "value": 1},', "is not valid JSON"),
        ('{"points": 3}', "neither a list of points"),
        ('[{"time": "2026-05-01T00:00Z"}]', "item 1: not an object with 'time' and 'value'"),
        ('[{"time": "2026-05-01T00:00Z", "value": 1}, {"time": "x", "value": 1}]', "item 2: time"),
        ('[{"time": "2026-05-01T00:00Z", "value": NaN}]', "item 1: value 'NaN' is not a finite"),
        ('[{"time": "2026-05-01T00:00Z", "value": -1}]', "item 1: value '-1' is not a finite"),
        ('[{"time": "2026-05-01T00:00Z", "value": null}]', "item 1: value 'null' is not a num"),
        (
            '[{"time": "2026-05-01T00:00Z", "value": 1}, '
            '{"time": "2026-05-01T00:00Z", "value": 2}]',
            "items 1 and 2: time 2026-05-01T00:00:00",
        ),
    ],
)
def test_bad_json_names_file_and_item(tmp_path: Path, text: str, message: str) -> None:
    provider = write_named(tmp_path, "f.json", text)
    with pytest.raises(ForecastUnavailable, match=message) as info:
        provider.forecast("X", DAY, DAY + timedelta(hours=1))
    assert str(provider.path) in str(info.value)


ISSUED = (
    "issued_at,time,zone,value\n"
    "2026-04-30T12:00Z,2026-05-01T00:00Z,DE,300\n"
    "2026-04-30T12:00Z,2026-05-01T01:00Z,DE,310\n"
    "2026-04-30T12:00Z,2026-05-01T02:00Z,DE,320\n"
    "2026-05-01T00:30Z,2026-05-01T01:00Z,DE,250\n"
    "2026-05-01T00:30Z,2026-05-01T02:00Z,DE,260\n"
    "2026-05-01T00:30Z,2026-05-01T03:00Z,DE,270\n"
    "2026-04-30T12:00Z,2026-05-01T00:00Z,FR,50\n"
    "2026-04-30T12:00Z,2026-05-01T01:00Z,FR,55\n"
)


def test_issued_forecasts_replay_the_newest_issue_by_as_of(tmp_path: Path) -> None:
    now = DAY + timedelta(hours=5)
    provider = write_named(tmp_path, "issued.csv", ISSUED, now=lambda: now)
    early = provider.forecast("DE", DAY, DAY + timedelta(hours=3), as_of=DAY)
    assert early.issued_at == datetime(2026, 4, 30, 12, tzinfo=UTC)
    assert [p.g_per_kwh for p in early.points] == [300, 310, 320]
    at_issue = provider.forecast(
        "DE", DAY, DAY + timedelta(hours=4), as_of=DAY + timedelta(minutes=30)
    )
    assert at_issue.issued_at == DAY + timedelta(minutes=30)
    assert [p.g_per_kwh for p in at_issue.points] == [250, 260, 270]
    assert provider.forecast("DE", DAY, DAY + timedelta(hours=4)).issued_at == at_issue.issued_at
    assert [p.g_per_kwh for p in provider.forecast("FR", DAY, DAY).points] == [50]
    with pytest.raises(ForecastUnavailable, match="no forecast for zone 'DE' issued at or before"):
        provider.forecast("DE", DAY, DAY, as_of=DAY - timedelta(days=2))
    with pytest.raises(ForecastUnavailable, match="holds issued forecasts, not realized values"):
        provider.history("DE", DAY, DAY + timedelta(hours=1))


def test_issued_forecasts_with_a_duplicate_inside_one_issue(tmp_path: Path) -> None:
    text = ISSUED + "2026-05-01T00:30Z,2026-05-01T03:00Z,DE,271\n"
    provider = write_named(tmp_path, "issued.csv", text)
    with pytest.raises(ForecastUnavailable, match=r"lines 7 and 10: time .* appears twice"):
        provider.forecast("DE", DAY, DAY + timedelta(hours=4), as_of=DAY + timedelta(hours=1))


def test_bad_issued_at(tmp_path: Path) -> None:
    provider = write_named(tmp_path, "i.csv", "issued_at,time,value\nsoon,2026-05-01T00:00Z,1\n")
    with pytest.raises(ForecastUnavailable, match="line 2: issued_at 'soon' is not ISO-8601"):
        provider.forecast("X", DAY, DAY)


def test_history_reads_a_plain_file_as_realized_values(tmp_path: Path) -> None:
    provider = write(tmp_path, "time,value\n2026-05-01T00:00Z,1\n2026-05-01T01:00Z,2\n")
    history = provider.history("X", DAY, DAY + timedelta(hours=2))
    assert history.realized and [p.g_per_kwh for p in history.points] == [1, 2]
