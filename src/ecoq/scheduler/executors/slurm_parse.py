"""Pure parsers for what Slurm's commands print: no subprocess, no clock, no files.

- `parse_scontrol` reads `scontrol show job -o` (one job per line, ``Key=Value`` pairs);
- `parse_squeue_json` reads `squeue --json`, in both shapes: Slurm 22.05 (data_parser
  v0.0.38: plain integers for times, a string state, the raw wait status as `exit_code`) and
  23.02 and later (v0.0.39+: ``{"set", "infinite", "number"}`` structs, the state as a list of
  flags, `exit_code` as ``{"status", "return_code", "signal"}``);
- `parse_sacct` reads `sacct --noheader --parsable2 --format=` `SACCT_FIELDS`.

Slurm prints times in the local time zone of the command, without an offset: the executor runs
every command with ``TZ=UTC0``, so the naive times here are read as UTC. `SlurmJob.ecoq_state`
maps Slurm's job states onto ecoq's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ecoq.errors import ExecutorError

EcoqState = Literal["planned", "running", "paused", "succeeded", "failed", "cancelled"]

#: Slurm base states (and the state flags scontrol shows instead of them) -> ecoq state.
#: COMPLETED maps to "succeeded" only with exit code 0 (see `SlurmJob.ecoq_state`).
STATE_MAP: dict[str, EcoqState] = {
    "PENDING": "planned",
    "REQUEUED": "planned",
    "REQUEUE_HOLD": "planned",
    "REQUEUE_FED": "planned",
    "RESV_DEL_HOLD": "planned",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "RESIZING": "running",
    "POWER_UP_NODE": "running",
    "UPDATE_DB": "running",
    "SUSPENDED": "paused",
    "STOPPED": "paused",
    "COMPLETED": "succeeded",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "NODE_FAIL": "failed",
    "TIMEOUT": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "PREEMPTED": "failed",
    "SPECIAL_EXIT": "failed",
    "REVOKED": "failed",
    "LAUNCH_FAILED": "failed",
}
#: Flags that, when set, are the state Slurm reports (the job is still winding up or down).
_OVERRIDING_FLAGS = ("COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING")
HOLD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
#: The `sacct --format` fields `parse_sacct` expects, in order.
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Start,End,ElapsedRaw,NodeList,ConsumedEnergyRaw"
_NO_TIME = frozenset({"", "Unknown", "None", "N/A", "(null)"})
_NO_NODES = frozenset({"", "(null)", "None assigned"})
_NO_VAL64 = 0xFFFFFFFFFFFFFFFE  # Slurm's "not set" for 64-bit counters


@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job as its controller (or accounting) reports it. Times are aware UTC.

    Attributes:
        job_id: Slurm's job id.
        state: the base state in upper case (``PENDING``, ``RUNNING``, ``COMPLETED``, ...);
            a winding-up/down flag (``COMPLETING``, ``CONFIGURING``) takes its place.
        reason: why it is pending or ended (``JobHeldUser``, ``BeginTime``, ``Resources``,
            ``NonZeroExitCode``, ``TimeLimit``); None for Slurm's ``None``.
        held: pending with a user or admin hold (`scontrol release` lets it start).
        exit_code: N of Slurm's ``ExitCode=N:S``; None when unknown.
        exit_signal: S, the signal that ended the job (None for 0 or unknown).
        submitted_at: when it was submitted.
        eligible_at: when it may start (``--begin`` / ``StartTime=``); None while unknown.
        expected_start_at: Slurm's start estimate for a pending job, else None.
        started_at: when it started on a node; None if it never ran.
        ended_at: when it ended (None while it has not).
        nodes: the nodes it ran on; None if it never ran.
        name: the job name.
    """

    job_id: int
    state: str
    reason: str | None = None
    held: bool = False
    exit_code: int | None = None
    exit_signal: int | None = None
    submitted_at: datetime | None = None
    eligible_at: datetime | None = None
    expected_start_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    nodes: str | None = None
    name: str | None = None

    @property
    def ran(self) -> bool:
        """Whether the job got a node (it started, however briefly)."""
        return self.nodes is not None

    @property
    def finished(self) -> bool:
        """Whether the job is over for good (succeeded, failed or cancelled)."""
        return self.ecoq_state in ("succeeded", "failed", "cancelled")

    @property
    def ecoq_state(self) -> EcoqState:
        """The ecoq state: PENDING (held or not) is ``planned``; RUNNING, COMPLETING and
        CONFIGURING are ``running``; SUSPENDED is ``paused``; COMPLETED is ``succeeded`` (with
        exit code 0, else ``failed``); CANCELLED is ``cancelled``; FAILED, NODE_FAIL, TIMEOUT,
        OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, PREEMPTED are ``failed``.

        Raises:
            ExecutorError: a state this ecoq does not know (a newer Slurm); the message names it.
        """
        try:
            mapped = STATE_MAP[self.state]
        except KeyError:
            raise ExecutorError(
                f"Slurm job {self.job_id} is in state {self.state!r}, which ecoq does not know; "
                "report it with `scontrol show job -o` output"
            ) from None
        if mapped == "succeeded" and (self.exit_code or self.exit_signal):
            return "failed"
        return mapped

    @property
    def ecoq_exit_code(self) -> int | None:
        """The exit code as ecoq records it: 128+S when a signal S ended the job, else N; None
        when the job has not ended, never ran, or failed without a code of its own (TIMEOUT,
        NODE_FAIL with ``0:0``)."""
        if not self.finished or not self.ran:
            return None
        if self.exit_signal:
            return 128 + self.exit_signal
        if self.exit_code is None:
            return None
        if self.exit_code == 0 and self.ecoq_state in ("failed", "cancelled"):
            return None  # Slurm ended it; 0 would read as success
        return self.exit_code


def utc_time(text: str) -> datetime | None:
    """A Slurm time printed under ``TZ=UTC0`` (``2026-11-29T14:31:48``) as aware UTC; None for
    ``Unknown``, ``None``, ``N/A`` and empty. Raises ValueError for anything else."""
    text = text.strip()
    if text in _NO_TIME:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def parse_exit(text: str) -> tuple[int | None, int | None]:
    """``"N:S"`` -> (N, S or None). ``""`` -> (None, None). Raises ValueError if malformed."""
    text = text.strip()
    if not text:
        return None, None
    code, _, sig = text.partition(":")
    signal = int(sig) if sig else 0
    return int(code), (signal or None)


# -- scontrol show job -o --------------------------------------------------------------------
_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/]*)=")


def scontrol_fields(line: str) -> dict[str, str]:
    """The ``Key=Value`` pairs of one `scontrol show job -o` line; the first of a repeated key
    wins. Values may hold spaces (`Command`, `WorkDir`, `StdOut` come last), so a value runs to
    the next `` Key=``; the fields read here all come before any user-chosen text."""
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(line))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        fields.setdefault(match.group(1), line[match.end() : end].strip())
    return fields


def _nodes(text: str | None) -> str | None:
    return None if text is None or text.strip() in _NO_NODES else text.strip()


def parse_scontrol_line(line: str) -> SlurmJob:
    """One job from one line of `scontrol show job -o`.

    Raises:
        ExecutorError: the line lacks JobId or JobState, or a time or exit code is malformed.
    """
    f = scontrol_fields(line)
    try:
        job_id, state = int(f["JobId"]), f["JobState"].upper()
        reason = f.get("Reason") or None
        exit_code, exit_signal = parse_exit(f.get("ExitCode", ""))
        nodes = _nodes(f.get("NodeList"))
        start = utc_time(f.get("StartTime", ""))
        return SlurmJob(
            job_id=job_id,
            state=state,
            reason=None if reason == "None" else reason,
            held=state == "PENDING" and reason in HOLD_REASONS,
            exit_code=exit_code,
            exit_signal=exit_signal,
            submitted_at=utc_time(f.get("SubmitTime", "")),
            eligible_at=utc_time(f.get("EligibleTime", "")),
            expected_start_at=start if state == "PENDING" else None,
            started_at=start if nodes is not None else None,
            ended_at=utc_time(f.get("EndTime", "")) if STATE_MAP.get(state) in _ENDED else None,
            nodes=nodes,
            name=f.get("JobName"),
        )
    except (KeyError, ValueError) as exc:
        raise ExecutorError(
            f"cannot read `scontrol show job -o` output ({type(exc).__name__}: {exc}): "
            f"{line[:200]!r}"
        ) from exc


_ENDED = ("succeeded", "failed", "cancelled")


def parse_scontrol(text: str) -> list[SlurmJob]:
    """Every job in `scontrol show job -o` output (one per non-empty line)."""
    return [parse_scontrol_line(line) for line in text.splitlines() if line.strip()]


# -- squeue --json ---------------------------------------------------------------------------
def _number(value: Any) -> int | None:
    """A 22.05 integer, or a 23.02+ ``{"set", "infinite", "number"}`` struct; None if unset."""
    if isinstance(value, dict):
        if not value.get("set", False) or value.get("infinite", False):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _epoch(value: Any) -> datetime | None:
    seconds = _number(value)
    if not seconds or seconds >= _NO_VAL64:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _json_state(value: Any) -> str:
    """22.05: ``"RUNNING"``; 23.02+: ``["RUNNING"]`` or ``["RUNNING", "COMPLETING"]``."""
    flags: list[object] = [value] if isinstance(value, str) else value
    if not isinstance(flags, list) or not flags or not all(isinstance(s, str) for s in flags):
        raise ValueError(f"job_state {value!r} is neither a string nor a list of strings")
    upper = [str(s).upper() for s in flags]
    for flag in _OVERRIDING_FLAGS:
        if flag in upper[1:]:
            return flag
    return upper[0]


def _json_exit(value: Any) -> tuple[int | None, int | None]:
    """22.05: the raw wait status (``768`` = exit 3, ``15`` = SIGTERM). 23.02+: a dict with
    ``status`` (``["EXITED"]``, ``["SIGNALED"]``, ...), ``return_code`` and ``signal.id``."""
    if isinstance(value, dict):
        code = _number(value.get("return_code"))
        signal = value.get("signal")
        sig = _number(signal.get("id")) if isinstance(signal, dict) else _number(signal)
        status = value.get("status")
        flags = [status] if isinstance(status, str) else list(status or [])
        if "PENDING" in flags and code is None and not sig:
            return None, None
        return (code if code is not None else 0), (sig or None)
    raw = _number(value)
    if raw is None:
        return None, None
    if raw & 0x7F:
        return 0, raw & 0x7F
    return (raw >> 8) & 0xFF, None


def parse_squeue_job(job: dict[str, Any]) -> SlurmJob:
    """One element of `squeue --json`'s ``jobs`` list (22.05 or 23.02+ shape).

    Raises:
        ExecutorError: the element lacks job_id or job_state, or they are malformed.
    """
    try:
        state = _json_state(job["job_state"])
        job_id = int(job["job_id"])
        reason = job.get("state_reason") or None
        code, signal = _json_exit(job.get("exit_code"))
        nodes = _nodes(job.get("nodes"))
        start = _epoch(job.get("start_time"))
        held = state == "PENDING" and (reason in HOLD_REASONS or job.get("hold") is True)
        return SlurmJob(
            job_id=job_id,
            state=state,
            reason=None if reason == "None" else reason,
            held=held,
            exit_code=code,
            exit_signal=signal,
            submitted_at=_epoch(job.get("submit_time")),
            eligible_at=_epoch(job.get("eligible_time")),
            expected_start_at=start if state == "PENDING" else None,
            started_at=start if nodes is not None else None,
            ended_at=_epoch(job.get("end_time")) if STATE_MAP.get(state) in _ENDED else None,
            nodes=nodes,
            name=job.get("name"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExecutorError(
            f"cannot read a job in `squeue --json` output ({type(exc).__name__}: {exc})"
        ) from exc


def parse_squeue_json(text: str) -> list[SlurmJob]:
    """Every job in `squeue --json` output, from Slurm 22.05 or 23.02 and later.

    Raises:
        ExecutorError: not JSON, no ``jobs`` list, Slurm reported errors, or a malformed job.
    """
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ExecutorError(f"`squeue --json` printed no JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("jobs"), list):
        raise ExecutorError("`squeue --json` output has no `jobs` list")
    errors = payload.get("errors") or []
    if errors:
        raise ExecutorError(f"`squeue --json` reported errors: {json.dumps(errors)[:300]}")
    return [parse_squeue_job(job) for job in payload["jobs"]]


# -- sacct --parsable2 -----------------------------------------------------------------------
@dataclass(frozen=True)
class SacctRecord:
    """What accounting knows of one job: its allocation line, and its energy when gathered."""

    job: SlurmJob
    #: Joules the job consumed (ConsumedEnergyRaw), None when the cluster does not gather
    #: energy (Slurm then reports 0 or nothing).
    energy_j: float | None


def _energy(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    value = int(text)
    return None if value <= 0 or value >= _NO_VAL64 else float(value)


def parse_sacct(text: str, job_id: int) -> SacctRecord | None:
    """Job `job_id` in `sacct --noheader --parsable2 --format=SACCT_FIELDS` output.

    The allocation line (``JobIDRaw`` = `job_id`) gives state, exit code and times; its energy,
    else the ``.batch`` step's, gives `energy_j` (Slurm charges a job's energy to both). A
    ``CANCELLED by UID`` state reads as CANCELLED. Returns None when sacct knows no such job.

    Raises:
        ExecutorError: a line with the wrong number of fields or a malformed value.
    """
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("|")
        if len(parts) != len(SACCT_FIELDS.split(",")):
            raise ExecutorError(
                f"`sacct --parsable2` line has {len(parts)} fields, expected {SACCT_FIELDS}: "
                f"{line[:200]!r}"
            )
        lines.setdefault(parts[0], parts)  # with requeues, the first record is the latest
    main = lines.get(str(job_id))
    if main is None:
        return None
    try:
        _, state, exit_text, start, end, _elapsed, node_list, energy = main
        state = state.split()[0].upper() if state.strip() else "UNKNOWN"
        code, signal = parse_exit(exit_text)
        batch = lines.get(f"{job_id}.batch")
        if not signal and batch is not None:
            # A cancelled or timed-out job's line says 0:0; its batch step has the signal.
            signal = parse_exit(batch[2])[1]
        nodes = _nodes(node_list)
        joules = _energy(energy)
        if joules is None and batch is not None:
            joules = _energy(batch[7])
        job = SlurmJob(
            job_id=job_id,
            state=state,
            exit_code=code,
            exit_signal=signal,
            started_at=utc_time(start) if nodes is not None else None,
            ended_at=utc_time(end) if STATE_MAP.get(state) in _ENDED else None,
            nodes=nodes,
        )
    except ValueError as exc:
        raise ExecutorError(f"cannot read `sacct` output for job {job_id}: {exc}") from exc
    return SacctRecord(job, joules)


__all__ = [
    "HOLD_REASONS",
    "SACCT_FIELDS",
    "STATE_MAP",
    "EcoqState",
    "SacctRecord",
    "SlurmJob",
    "parse_exit",
    "parse_sacct",
    "parse_scontrol",
    "parse_scontrol_line",
    "parse_squeue_job",
    "parse_squeue_json",
    "scontrol_fields",
    "utc_time",
]
