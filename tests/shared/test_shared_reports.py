"""`report`, `forecast` and `show --plot` through the shared daemon.

The backend runs the CLI's own code (`shared_report`, `UserForecasts`, `job_png`) on a real
database seeded with jobs of two users. The made-up callers test who sees what; the real socket
server and client (the test runs as root, so the kernel makes it an admin) test that every format
arrives exactly as the command prints it, however large.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecoq.cli.report import job_png, shared_report
from ecoq.cli.shared_box import UserForecasts
from ecoq.db import EngineReader, open_engine
from ecoq.errors import EcoqError, JobNotFound, ValidationError
from ecoq.plots import PNG_SIGNATURE
from ecoq.scheduler.queue import Queue
from ecoq.shared import backend as backend_module
from ecoq.shared.access import Admins, Caller
from ecoq.shared.backend import Backend
from ecoq.shared.client import Client
from ecoq.shared.protocol import (
    MAX_RESPONSE_BYTES,
    ForecastAnswer,
    ProtocolError,
    Streamed,
    make_request,
    parse_request,
)
from ecoq.shared.server import SharedServer
from ecoq.views import JobView
from tests.cli_helpers import cli
from tests.seed import seed_demo

ALICE = Caller(pid=10, uid=1001, gid=1001, user="alice", admin=False)
BOB = Caller(pid=11, uid=1002, gid=1002, user="bob", admin=False)
CAROL = Caller(pid=12, uid=1003, gid=1003, user="carol", admin=True)
PERIOD = {"since": "2026-11-01T00:00Z", "until": "2026-11-04T00:00Z"}
PERIOD_FLAGS = ("--since", PERIOD["since"], "--until", PERIOD["until"])


def no_submit(req: Any, user: str, uid: int) -> JobView:
    raise AssertionError("not submitted here")


@dataclass
class Box:
    backend: Backend
    ids: dict[str, int]

    def call(self, who: Caller, op: str, **args: Any) -> Any:
        return self.backend.handle(who, parse_request(make_request(op, args)))

    def report(self, who: Caller, **args: Any) -> str:
        answer = self.call(who, "report", **{**PERIOD, **args})
        assert isinstance(answer, Streamed)
        assert set(answer.head) == {"runs"}
        return answer.text


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """seed_demo's four jobs: train and mjob are alice's, serve bob's, idle alice's."""
    url = os.environ["ECOQ_DATABASE_URL"]
    engine = open_engine(url)
    ids = seed_demo(engine, tmp_path / "runs")
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for name, who in (("train", ALICE), ("mjob", ALICE), ("idle", ALICE), ("serve", BOB)):
            conn.execute(
                "UPDATE jobs SET uid = ?, user = ? WHERE id = ?", [who.uid, who.user, ids[name]]
            )
    backend = Backend(
        Queue(engine),
        reader=lambda: EngineReader(engine),
        submit_fn=no_submit,
        report=shared_report,
        forecast=UserForecasts(),
        plot=job_png,
    )
    yield Box(backend, ids)
    engine.dispose()


def printed(text: str) -> str:
    """`text` as `ecoq report` prints it (a newline added unless it ends in one)."""
    return text if text.endswith("\n") else text + "\n"


def groups(text: str) -> list[str]:
    return [row["group"] for row in json.loads(text)["rows"]]


# --- report: who sees what -----------------------------------------------------------------


def test_a_users_report_counts_only_their_jobs(box: Box) -> None:
    ids = box.ids
    mine = box.report(ALICE, by="job", format="json")
    assert groups(mine) == [f"{ids['train']} train", f"{ids['mjob']} mjob", f"{ids['idle']} idle"]
    assert "only runs of jobs submitted by uid 1001 are counted" in json.loads(mine)["notes"]
    assert groups(box.report(BOB, by="job", format="json")) == [f"{ids['serve']} serve"]
    assert groups(box.report(BOB, by="user", format="json")) == ["bob"]
    everyone = box.report(CAROL, by="job", format="json")
    assert len(groups(everyone)) == 4
    # An admin's report is the command's, as root prints it.
    direct = cli("report", *PERIOD_FLAGS, "--by", "job", "--json")
    assert direct.exit_code == 0 and printed(everyone) == direct.stdout


def test_a_user_with_no_jobs_gets_an_empty_report(box: Box) -> None:
    dave = Caller(pid=13, uid=1004, gid=1004, user="dave", admin=False)
    answer = box.call(dave, "report", **PERIOD)
    assert answer.head == {"runs": 0} and "no finished runs" in answer.text
    assert "serve" not in box.report(dave, by="job", codecarbon=True)


def test_the_uid_is_never_taken_from_the_request(box: Box) -> None:
    with pytest.raises(ProtocolError, match="report: unknown field 'uid'"):
        box.call(ALICE, "report", uid=1002)


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"by": "job", "format": "csv"},
        {"by": "day", "format": "table"},
        {"by": "zone", "format": "json"},
        {"codecarbon": True},
        {"codecarbon": True, "format": "csv"},
    ],
)
def test_each_format_is_the_commands_own_text(box: Box, flags: dict[str, Any]) -> None:
    argv = [*PERIOD_FLAGS]
    for key, value in flags.items():
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    direct = cli("report", *argv)
    assert direct.exit_code == 0, direct.output
    text = box.report(CAROL, **flags)
    assert printed(text) == direct.stdout
    alice = box.report(ALICE, **flags)
    assert "serve" not in alice and ("mjob" in alice or "by day" in alice or "," in alice)


def test_html_is_made_for_the_users_jobs(box: Box) -> None:
    page = box.report(ALICE, by="job", format="html")
    assert page.startswith("<!DOCTYPE html>") and "serve" not in page
    assert page.count("data:image/png;base64,") >= 3  # daily bars and alice's job plots
    assert f"{box.ids['train']} train" in page


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        ({"by": "team"}, ("--by", "team")),
        ({"format": "xml"}, ("--format", "xml")),
        ({"codecarbon": True, "format": "json"}, ("--codecarbon", "--format", "json")),
        ({"since": "yesterday"}, ("--since", "yesterday")),
        ({"since": "1d", "until": "2d"}, ("--since", "1d", "--until", "2d")),
        ({"since": ""}, ("--since", "")),
    ],
)
def test_bad_flags_get_the_commands_messages(
    box: Box, args: dict[str, Any], flags: tuple[str, ...]
) -> None:
    direct = cli("report", *flags)
    assert direct.exit_code == 2
    with pytest.raises(ValidationError) as answer:
        box.call(ALICE, "report", **args)
    assert f"error: {answer.value}" == direct.stderr.strip()


def test_reports_wait_for_a_free_slot(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "_HEAVY_WAIT_S", 0.05)
    box.backend.heavy = threading.BoundedSemaphore(1)
    box.backend.heavy.acquire()  # another report is being made
    with pytest.raises(EcoqError, match="busy with other reports"):
        box.call(ALICE, "report", **PERIOD)
    box.backend.heavy.release()
    assert box.call(ALICE, "report", **PERIOD).head["runs"] == 3


# --- plot -----------------------------------------------------------------------------------


def test_plots_are_for_the_owner_and_admins(box: Box) -> None:
    train = box.ids["train"]
    png = base64.b64decode(box.call(ALICE, "plot", id=train)["png"])
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    assert base64.b64decode(box.call(CAROL, "plot", id=train)["png"])[:8] == PNG_SIGNATURE
    with pytest.raises(JobNotFound, match=f"no job {train} of yours"):
        box.call(BOB, "plot", id=train)
    with pytest.raises(JobNotFound, match="no job 999 of yours"):
        box.call(BOB, "plot", id=999)


# --- forecast -------------------------------------------------------------------------------


def forecast(box: Box, who: Caller, **args: Any) -> ForecastAnswer:
    return ForecastAnswer.from_result(box.call(who, "forecast", **args))


def test_a_users_forecast_is_the_commands(box: Box) -> None:
    flags = ("--zone", "DE", "--hours", "12", "--duration", "2h", "--deadline", "10h")
    direct = cli("forecast", *flags, "--json")
    assert direct.exit_code == 0, direct.output
    answer = forecast(box, ALICE, zone="DE", hours=12, duration="2h", deadline="10h")
    expected = json.loads(direct.stdout)
    for key in ("zone", "source", "label", "signal", "step_s", "points", "gaps"):
        assert answer.data[key] == expected[key], key
    best, expected_best = answer.data["best_window"], expected["best_window"]  # now differs
    assert best.keys() == expected_best.keys() and best["reason"] == expected_best["reason"]
    text = cli("forecast", *flags)
    assert answer.lines[1:-1] == text.stdout.splitlines()[1:-1]  # the hours
    assert answer.lines[-1].startswith("best window: start ")
    assert answer.lines[0].startswith("zone DE: typical profile (bundled), average signal")


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        ({"zone": "DE", "hours": 0}, ("--zone", "DE", "--hours", "0")),
        ({"zone": "DE", "hours": float("nan")}, ("--zone", "DE", "--hours", "nan")),
        ({"zone": "DE", "hours": 1000}, ("--zone", "DE", "--hours", "1000")),
        ({"zone": "Atlantis"}, ("--zone", "Atlantis")),
        ({"zone": "DE", "duration": "2h"}, ("--zone", "DE", "--duration", "2h")),
        ({"zone": "DE", "duration": "soon", "deadline": "1h"},
         ("--zone", "DE", "--duration", "soon", "--deadline", "1h")),
        ({"zone": ""}, ("--zone", "")),
    ],
)  # fmt: skip
def test_forecast_flags_are_checked_by_the_daemon_as_by_the_command(
    box: Box, args: dict[str, Any], flags: tuple[str, ...]
) -> None:
    direct = cli("forecast", *flags)
    assert direct.exit_code == 2, direct.output
    with pytest.raises(EcoqError) as answer:
        box.call(ALICE, "forecast", **args)
    assert f"error: {answer.value}" == direct.stderr.strip()


def test_forecast_hours_must_be_a_number() -> None:
    with pytest.raises(ProtocolError, match="'hours': '24' is not a number"):
        parse_request(make_request("forecast", {"hours": "24"}))
    with pytest.raises(ProtocolError, match="'hours': True is not a number"):
        parse_request(make_request("forecast", {"hours": True}))


@pytest.mark.parametrize("provider", ["watttime", "electricitymaps", "ukgrid", " WattTime "])
def test_only_admins_ask_a_live_provider(box: Box, provider: str) -> None:
    with pytest.raises(ValidationError, match="only admins may"):
        box.call(ALICE, "forecast", zone="DE", provider=provider)
    try:  # an admin is let through (here it fails for want of credentials or network)
        box.call(CAROL, "forecast", zone="DE", provider=provider)
    except EcoqError as exc:
        assert "only admins may" not in str(exc)


def test_users_may_ask_the_bundled_profiles(box: Box) -> None:
    answer = forecast(box, BOB, zone="DE", provider="bundled")
    assert (answer.data["zone"], answer.data["source"]) == ("DE", "bundled")


# --- over the socket ------------------------------------------------------------------------


@pytest.fixture
def served(box: Box) -> Iterator[Client]:
    folder = Path(tempfile.mkdtemp(prefix="ecoq-sock-"))
    folder.chmod(0o755)
    server = SharedServer(folder / "run" / "ecoq.sock", box.backend, Admins(""))
    server.start()
    yield Client(server.path)
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the socket's folder must be root's")
def test_report_forecast_and_plot_over_the_socket(box: Box, served: Client) -> None:
    text, runs = served.report(by="job", fmt="csv", codecarbon=False, **PERIOD)
    direct = cli("report", *PERIOD_FLAGS, "--by", "job", "--format", "csv")
    assert (printed(text), runs) == (direct.stdout, 4)
    answer = served.forecast(zone="DE", hours=6, duration=None, deadline=None, provider=None)
    assert answer.data["zone"] == "DE" and len(answer.lines) == 1 + len(answer.data["points"])
    assert served.job_plot(box.ids["serve"])[:8] == PNG_SIGNATURE
    with pytest.raises(ValidationError, match="--by 'team'"):
        served.report(by="team", fmt="table", codecarbon=False, **PERIOD)
    with pytest.raises(JobNotFound):
        served.job_plot(999)


@pytest.mark.skipif(os.geteuid() != 0, reason="the socket's folder must be root's")
def test_a_report_larger_than_any_frame_streams_whole(box: Box, served: Client) -> None:
    # Many MB, multi-byte characters and the surrogates of argv bytes that are not UTF-8.
    line = "job \udcff ünïcødé ✓ 𝔼 " + "x" * 64 + "\n"
    big = line * (3 * MAX_RESPONSE_BYTES // len(line.encode("utf-8", "surrogatepass")))

    def huge(reader: Any, **args: Any) -> tuple[str, int]:
        return big, 123

    box.backend.report = huge
    text, runs = served.report(since="30d", until=None, by="job", fmt="csv", codecarbon=False)
    assert runs == 123 and len(text) == len(big) and text == big
