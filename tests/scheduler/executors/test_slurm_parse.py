"""The Slurm parsers on recorded 22.05 output and the 23.11 JSON shape (tests/fixtures/slurm)."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ecoq.errors import ExecutorError
from ecoq.scheduler.executors.slurm_parse import (
    SlurmJob,
    parse_exit,
    parse_sacct,
    parse_scontrol,
    parse_scontrol_line,
    parse_squeue_json,
    scontrol_fields,
    utc_time,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "slurm"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def _t(hms: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-29T{hms}").replace(tzinfo=UTC)


# job id -> (Slurm state, ecoq state, held, ecoq exit code, ran) when every job had ended
FINAL = {
    1: ("PENDING", "planned", True, None, False),
    2: ("PENDING", "planned", False, None, False),
    3: ("CANCELLED", "cancelled", False, None, False),  # cancelled while held: never ran
    4: ("COMPLETED", "succeeded", False, 0, True),
    5: ("FAILED", "failed", False, 3, True),
    6: ("FAILED", "failed", False, 128 + 9, True),  # SIGKILL: ExitCode=0:9
    7: ("CANCELLED", "cancelled", False, 128 + 15, True),
    8: ("CANCELLED", "cancelled", False, 128 + 15, True),
    9: ("CANCELLED", "cancelled", False, 128 + 15, True),
    10: ("TIMEOUT", "failed", False, 128 + 15, True),
}
LIVE = {**FINAL, 7: ("RUNNING", "running", False, None, True)}
LIVE |= {
    9: ("SUSPENDED", "paused", False, None, True),
    10: ("RUNNING", "running", False, None, True),
}


def _summary(jobs: list[SlurmJob]) -> dict[int, tuple[object, ...]]:
    return {j.job_id: (j.state, j.ecoq_state, j.held, j.ecoq_exit_code, j.ran) for j in jobs}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scontrol-22.05-live.txt", LIVE),
        ("scontrol-22.05-final.txt", FINAL),
    ],
)
def test_scontrol_22_05_states_map_to_ecoq(
    name: str, expected: dict[int, tuple[object, ...]]
) -> None:
    assert _summary(parse_scontrol(_read(name))) == expected


@pytest.mark.parametrize("moment", ["live", "final"])
def test_squeue_json_22_05_agrees_with_scontrol(moment: str) -> None:
    by_json = {j.job_id: j for j in parse_squeue_json(_read(f"squeue-22.05-{moment}.json"))}
    by_text = {j.job_id: j for j in parse_scontrol(_read(f"scontrol-22.05-{moment}.txt"))}
    assert by_json.keys() == by_text.keys()
    for job_id, text in by_text.items():
        js = by_json[job_id]
        for attr in ("state", "held", "exit_code", "exit_signal", "ran", "started_at"):
            assert getattr(js, attr) == getattr(text, attr), (job_id, attr)
        assert js.ended_at == text.ended_at, job_id
        assert js.submitted_at == text.submitted_at, job_id


def test_scontrol_times_and_details() -> None:
    jobs = {j.job_id: j for j in parse_scontrol(_read("scontrol-22.05-final.txt"))}
    held = jobs[1]
    assert held.held and held.reason == "JobHeldUser"
    assert held.eligible_at == _t("15:45:03")  # --begin an hour after submission
    assert held.started_at is None and held.ended_at is None
    assert jobs[2].reason == "BeginTime" and not jobs[2].held
    timeout = jobs[10]
    assert (timeout.started_at, timeout.ended_at) == (_t("14:45:13"), _t("14:46:25"))
    assert timeout.reason == "TimeLimit" and timeout.nodes == "localhost"
    assert jobs[5].reason == "NonZeroExitCode" and jobs[5].name == "fail"
    assert all(t is None or t.tzinfo is UTC for j in jobs.values() for t in (j.started_at,))


def test_squeue_json_23_11_shape() -> None:
    jobs = {j.job_id: j for j in parse_squeue_json(_read("squeue-23.11-shape.json"))}
    assert _summary(list(jobs.values())) == {
        101: ("PENDING", "planned", True, None, False),
        102: ("PENDING", "planned", False, None, False),
        103: ("RUNNING", "running", False, None, True),
        104: ("COMPLETED", "succeeded", False, 0, True),
        105: ("FAILED", "failed", False, 3, True),
        106: ("CANCELLED", "cancelled", False, 143, True),
        107: ("TIMEOUT", "failed", False, 143, True),
        108: ("CANCELLED", "cancelled", False, None, False),
        109: ("SUSPENDED", "paused", False, None, True),
        110: ("COMPLETING", "running", False, None, True),  # ["COMPLETED", "COMPLETING"]
        111: ("OUT_OF_MEMORY", "failed", False, 137, True),
        112: ("NODE_FAIL", "failed", False, 137, True),
    }
    assert jobs[104].started_at == _t("14:45:04") and jobs[104].ended_at == _t("14:46:04")
    assert jobs[101].eligible_at == _t("15:45:00") and jobs[101].expected_start_at == _t("15:45:00")
    assert jobs[103].ended_at is None  # a running job's end_time is its time limit, not an end


def test_squeue_json_refuses_errors_and_garbage() -> None:
    with pytest.raises(ExecutorError, match="no JSON"):
        parse_squeue_json("slurm_load_jobs error: Invalid job id specified")
    with pytest.raises(ExecutorError, match="reported errors"):
        parse_squeue_json('{"jobs": [], "errors": [{"error": "boom", "error_number": 1}]}')
    with pytest.raises(ExecutorError, match="no `jobs` list"):
        parse_squeue_json('{"meta": {}}')
    with pytest.raises(ExecutorError, match="job_state"):
        parse_squeue_json('{"jobs": [{"job_id": 1, "job_state": 7}]}')


def test_unknown_state_is_an_error_naming_it() -> None:
    job = SlurmJob(job_id=5, state="TELEPORTED")
    with pytest.raises(ExecutorError, match="TELEPORTED"):
        _ = job.ecoq_state


def test_completed_with_a_nonzero_code_is_failed() -> None:
    assert SlurmJob(1, "COMPLETED", exit_code=2, nodes="n1").ecoq_state == "failed"


def test_sacct_22_05_recorded() -> None:
    text = _read("sacct-22.05.txt")
    done = parse_sacct(text, 4)
    assert done is not None and done.job.ecoq_state == "succeeded"
    assert done.job.ecoq_exit_code == 0 and done.energy_j is None  # no energy plugin: 0/empty
    assert done.job.started_at == _t("14:45:04")
    cancelled = parse_sacct(text, 8)
    assert cancelled is not None and cancelled.job.state == "CANCELLED"  # "CANCELLED by 0"
    assert cancelled.job.ecoq_exit_code == 143  # the job line says 0:0; the batch step 0:15
    assert cancelled.job.ended_at == _t("14:45:09")
    never = parse_sacct(text, 3)
    assert never is not None and not never.job.ran and never.job.ecoq_exit_code is None
    timeout = parse_sacct(text, 10)
    assert timeout is not None and timeout.job.ecoq_state == "failed"
    pending = parse_sacct(text, 1)
    assert pending is not None and pending.job.ecoq_state == "planned"
    assert parse_sacct(text, 99) is None


def test_sacct_energy_from_job_line_or_batch_step() -> None:
    text = _read("sacct-energy-shape.txt")
    whole = parse_sacct(text, 4242)
    assert whole is not None and whole.energy_j == 1874520.0
    steps_only = parse_sacct(text, 4243)
    assert steps_only is not None and steps_only.energy_j == 96300.0
    assert steps_only.job.ecoq_state == "cancelled" and steps_only.job.ecoq_exit_code == 143


def test_sacct_refuses_a_wrong_format() -> None:
    with pytest.raises(ExecutorError, match="fields"):
        parse_sacct("4|COMPLETED|0:0", 4)


def test_scontrol_fields_with_spaces_and_repeated_keys() -> None:
    line = (
        "JobId=7 JobName=ecoq-1-1 JobState=RUNNING Reason=None ExitCode=0:0 "
        "ReqNodeList=(null) NodeList=n1 TRES=cpu=1,mem=4000M "
        "WorkDir=/home/a b/JobState=COMPLETED dir StdOut=/x y/out.log"
    )
    fields = scontrol_fields(line)
    assert fields["NodeList"] == "n1" and fields["ReqNodeList"] == "(null)"
    assert fields["TRES"] == "cpu=1,mem=4000M"
    assert fields["StdOut"] == "/x y/out.log"
    assert parse_scontrol_line(line).state == "RUNNING"  # the first JobState wins


def test_scontrol_line_without_job_state_is_an_error() -> None:
    with pytest.raises(ExecutorError, match="scontrol"):
        parse_scontrol_line("JobId=3 JobName=x")


def test_time_and_exit_helpers() -> None:
    assert utc_time("2026-11-29T14:31:48") == _t("14:31:48")
    for nothing in ("Unknown", "None", "N/A", ""):
        assert utc_time(nothing) is None
    assert parse_exit("3:0") == (3, None) and parse_exit("0:15") == (0, 15)
    assert parse_exit("") == (None, None)
