"""ecoq.track: marks and windows inside a job (marks.jsonl, never metered) and standalone."""

import json
import multiprocessing
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ecoq import track
from ecoq.errors import EcoqError, ValidationError
from ecoq.track import MARKS_FILE, Tracker


def job_env(run_dir: Path) -> dict[str, str]:
    return {"ECOQ_JOB_ID": "7", "ECOQ_RUN_DIR": str(run_dir)}


def lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / MARKS_FILE).read_text().splitlines()]


def utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_inside_a_job_marks_and_windows_go_to_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an invalid [meters] setting: loading settings, as metering would, fails
    monkeypatch.setenv("ECOQ_METERS__INTERVAL_S", "-1")
    with track("train", env=job_env(tmp_path)) as t:
        t.mark("epoch")
        for _ in range(3):
            t.mark("inference", n=32)
        with t.window("eval"):
            t.mark("inference", n=4)
        t.mark("epoch")
    records = lines(tmp_path)
    assert [r["kind"] for r in records][0] == "start"
    assert records[-1] == {**records[-1], "kind": "end", "error": None}
    assert all(r["name"] == "train" for r in records)
    times = [utc(r["t"]) for r in records]
    assert times == sorted(times) and all(t.tzinfo == UTC for t in times)
    marks = [r for r in records if r["kind"] == "mark"]
    assert sum(r["n"] for r in marks if r["unit"] == "inference") == 100
    assert sum(r["n"] for r in marks if r["unit"] == "epoch") == 2
    (window,) = [r for r in records if r["kind"] == "window"]
    assert window["label"] == "eval" and utc(window["start"]) <= utc(window["t"])
    summary = t.summary()
    assert summary.job_id == "7"
    assert summary.energy_j is None and summary.readings == ()  # the run meters; not this
    assert dict(summary.units) == {"epoch": 2, "inference": 100}
    assert summary.energy_per_unit_j == {}
    assert [w.label for w in summary.windows] == ["eval"]
    assert summary.windows[0].energy_j is None
    assert "metered by ecoq job 7's run" in str(summary)
    assert (tmp_path / MARKS_FILE).stat().st_mode & 0o777 == 0o600


def test_marks_made_close_together_share_a_line(tmp_path: Path) -> None:
    with track("loop", env=job_env(tmp_path)) as t:
        for _ in range(1000):
            t.mark("step")
    marks = [r for r in lines(tmp_path) if r["kind"] == "mark"]
    assert sum(r["n"] for r in marks) == 1000
    assert len(marks) < 1000


def test_an_exception_is_recorded_and_propagates(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), track("x", env=job_env(tmp_path)):
        1 / 0  # noqa: B018
    assert lines(tmp_path)[-1]["error"] == "ZeroDivisionError"


def _writer(run_dir: str, worker: int) -> None:
    with track(f"w{worker}", env={"ECOQ_JOB_ID": "7", "ECOQ_RUN_DIR": run_dir}) as t:
        for i in range(200):
            with t.window(f"window {i} " + "x" * 150):
                pass


def test_appends_from_several_processes_never_interleave(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    records = lines(tmp_path)  # every line parses
    for w in range(4):
        assert sum(r["kind"] == "window" and r["name"] == f"w{w}" for r in records) == 200


def test_standalone_meters_itself(tmp_path: Path) -> None:
    with track("work", meters=["estimate"], interval_s=0.05, env={}) as t:
        total = 0
        for i in range(200_000):
            total += i
        t.mark("batch", n=4)
        with t.window("inner"):
            for i in range(100_000):
                total += i
    summary = t.summary()
    assert summary.job_id is None
    assert [(r.device, r.method) for r in summary.readings] == [
        ("cpu", "estimate"),
        ("ram", "estimate"),
    ]
    assert summary.energy_j == sum(r.energy_j for r in summary.readings)
    assert summary.energy_j is not None and summary.energy_j > 0
    assert summary.energy_per_unit_j == {"batch": summary.energy_j / 4}
    (window,) = summary.windows
    assert window.energy_j is not None and 0 <= window.energy_j <= summary.energy_j
    assert summary.ended_at is not None and summary.duration_s >= window.duration_s
    assert not (tmp_path / MARKS_FILE).exists()
    assert "J/batch" in str(summary)


def test_summary_while_running_then_final() -> None:
    t = track("s", meters=["estimate"], env={})
    with pytest.raises(EcoqError, match="has not run yet"):
        t.summary()
    with t:
        assert t.summary().ended_at is None
    final = t.summary()
    assert final.ended_at is not None
    assert t.summary() is final


def test_as_decorator(tmp_path: Path) -> None:
    t = track("step", env=job_env(tmp_path))

    @t
    def step(n: int) -> int:
        t.mark("item", n=n)
        return n * 2

    assert step(3) == 6
    assert step(5) == 10
    assert dict(t.summary().units) == {"item": 5}  # each call is one tracked block
    assert sum(r["kind"] == "start" for r in lines(tmp_path)) == 2


def test_bare_decorator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOQ_JOB_ID", "3")
    monkeypatch.setenv("ECOQ_RUN_DIR", str(tmp_path))

    @track
    def train() -> str:
        return "done"

    assert train() == "done"
    assert lines(tmp_path)[0]["name"].endswith("train")


def test_misuse(tmp_path: Path) -> None:
    t = Tracker("m", env=job_env(tmp_path))
    with pytest.raises(EcoqError, match="outside its block"):
        t.mark("epoch")
    with t:
        for bad in (0, -1, float("nan"), float("inf"), True, "3"):
            with pytest.raises(ValidationError, match="finite number > 0"):
                t.mark("epoch", n=bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="non-empty string"):
            t.mark("  ")
        with pytest.raises(ValidationError, match="non-empty string"), t.window(""):
            pass
        with pytest.raises(EcoqError, match="already active"), t:
            pass
    with pytest.raises(ValidationError):
        Tracker("")


def test_import_is_lazy_and_works_in_either_order(tmp_path: Path) -> None:
    code = (
        "import sys; import ecoq\n"
        "print('ecoq.track' in sys.modules, 'typing' in sys.modules)\n"
        "import ecoq.track\n"
        "from ecoq import track\n"
        "with track('x', env={'ECOQ_JOB_ID': '1', 'ECOQ_RUN_DIR': sys.argv[1]}) as t:\n"
        "    t.mark('a')\n"
        "print(t.summary().units['a'], ecoq.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["False False", "1 0.1.0"]
