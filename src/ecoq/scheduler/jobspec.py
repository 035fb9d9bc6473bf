"""What `ecoq submit` asks for (`JobSpec`) and its validation. No database, no I/O.

`ecoq.scheduler.queue` re-exports `JobSpec` and `validate_spec`; the queue stores a validated spec.
"""

import signal as sigmod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ecoq.errors import ValidationError

__all__ = ["JobSpec", "hm", "parse_signal", "span_text", "validate_spec"]

#: The most pauses a job may ask for: more is no limit in practice, and must fit the database.
MAX_PAUSES = 1_000_000
#: Signals a job cannot catch, so they can never ask it to checkpoint.
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


@dataclass(frozen=True)
class JobSpec:
    """What `ecoq submit` asks for, already parsed. Times are aware UTC.

    `zone` is the home zone; `zones` every zone the job may run in, home first (empty: only
    `zone`). `max_pauses` None is unlimited; `min_segment` is the shortest segment worth running.
    With `checkpoint_signal` (a name like "SIGUSR1") a planned pause sends that signal and waits
    for the job to exit, and `resume_command` (an argv list) continues it later.
    """

    command: list[str]
    cwd: str
    env: dict[str, str]
    user: str
    uid: int
    zone: str
    deadline: datetime
    duration: timedelta
    duration_source: str
    name: str
    project: str | None = None
    gpus: int = 0
    not_before: datetime | None = None
    drop_if_late: bool = False
    zones: tuple[str, ...] = ()
    interruptible: bool = False
    max_pauses: int | None = None
    min_segment: timedelta = timedelta(0)
    checkpoint_signal: str | None = None
    resume_command: list[str] | None = field(default=None)

    @property
    def allowed_zones(self) -> list[str]:
        """Every zone the job may run in, home zone first, without repeats."""
        out = [self.zone]
        for z in self.zones:
            if z not in out:
                out.append(z)
        return out


def parse_signal(text: str, *, flag: str = "--checkpoint-signal") -> str:
    """`SIGUSR1`, `USR1`, `usr1` or `10` → the canonical name `SIGUSR1`.

    Raises:
        ValidationError: an unknown signal, or one a process cannot catch (SIGKILL, SIGSTOP).
    """
    raw = text.strip().upper()
    try:
        if raw.isdigit():
            sig = sigmod.Signals(int(raw))
        else:
            sig = sigmod.Signals[raw if raw.startswith("SIG") else f"SIG{raw}"]
    except (KeyError, ValueError):
        raise ValidationError(
            f"{flag} {text!r} is not a signal; use a name or number such as SIGUSR1, USR1 or 10"
        ) from None
    if sig.name in _UNCATCHABLE:
        raise ValidationError(
            f"{flag} {text!r}: {sig.name} cannot be caught, so the job could not save its "
            "state; use e.g. SIGUSR1 or SIGTERM"
        )
    return sig.name


def validate_spec(spec: JobSpec, now: datetime, *, box_gpus: int) -> None:
    """Check a spec against the clock and the box. Raises ValidationError naming value and fix."""
    if not spec.command:
        raise ValidationError(
            "no command given; pass the script to run, e.g. `ecoq submit train.sh`"
        )
    if spec.duration <= timedelta(0):
        raise ValidationError(f"--duration {spec.duration} must be positive, e.g. --duration 90m")
    _validate_text(spec)
    if spec.gpus < 0:
        raise ValidationError(f"--gpus {spec.gpus} must be 0 or more")
    if spec.gpus > box_gpus:
        raise ValidationError(
            f"--gpus {spec.gpus} is more than this box has ({box_gpus}); ask for at most "
            f"{box_gpus}, or set site.gpus if GPU detection is wrong"
        )
    _validate_interruptible(spec)
    if spec.deadline <= now:
        raise ValidationError(
            f"--deadline {hm(spec.deadline)} is in the past (now {hm(now)}); "
            "give a later time or a span like --deadline 12h"
        )
    earliest = max(now, spec.not_before or now)
    if spec.deadline < earliest + spec.duration:
        not_before = spec.not_before if spec.not_before and spec.not_before > now else None
        by_not_before = not_before is not None
        if not_before is not None and not_before >= spec.deadline:
            raise ValidationError(
                f"--not-before {hm(not_before)} is not before --deadline "
                f"{hm(spec.deadline)}; give an earlier --not-before or a later --deadline"
            )
        raise ValidationError(
            f"--deadline {hm(spec.deadline)} is {span_text(spec.deadline - earliest)} after the "
            f"earliest start {hm(earliest)}"
            + (" (--not-before)" if by_not_before else "")
            + f" but the job needs --duration {span_text(spec.duration)}; "
            + ("give an earlier --not-before, " if by_not_before else "")
            + "extend --deadline or shorten --duration"
        )


def _validate_text(spec: JobSpec) -> None:
    """The fields stored as text must be text: no NUL, no undecodable bytes (the surrogates
    Python gives non-UTF-8 bytes of argv). The argv and environment are stored as JSON, which
    keeps such bytes, so only these are checked."""
    fields = [("--name", spec.name), ("--project", spec.project or "")]
    fields += [("--zone", z) for z in (spec.zone, *spec.zones)]
    fields.append(("the working directory", spec.cwd))
    for flag, text in fields:
        try:
            text.encode("utf-8")
            ok = "\x00" not in text
        except UnicodeEncodeError:
            ok = False
        if not ok:
            fix = "submit from another directory" if flag.startswith("the") else f"change {flag}"
            raise ValidationError(
                f"{flag} {text!r} is not valid UTF-8 text (it has a NUL or undecodable bytes); "
                f"{fix}"
            )


def _validate_interruptible(spec: JobSpec) -> None:
    if not spec.interruptible:
        given = [
            flag
            for flag, on in (
                ("--max-pauses", spec.max_pauses is not None),
                ("--min-segment", spec.min_segment > timedelta(0)),
                ("--checkpoint-signal", spec.checkpoint_signal is not None),
                ("--resume", spec.resume_command is not None),
            )
            if on
        ]
        if given:
            raise ValidationError(
                f"{', '.join(given)} only apply to interruptible jobs; add --interruptible"
            )
    if spec.max_pauses is not None and not 0 <= spec.max_pauses <= MAX_PAUSES:
        raise ValidationError(
            f"--max-pauses {spec.max_pauses} must be 0 or more (0: never paused) and at most "
            f"{MAX_PAUSES:,}; leave it out for no limit"
        )
    if spec.min_segment < timedelta(0):
        raise ValidationError(f"--min-segment {spec.min_segment} must be positive, e.g. 30m")
    if (spec.checkpoint_signal is None) != (spec.resume_command is None):
        missing = "--resume CMD" if spec.resume_command is None else "--checkpoint-signal SIG"
        raise ValidationError(
            "--checkpoint-signal and --resume go together: the signal asks the job to save its "
            f"state and exit, the command continues it later; add {missing}"
        )
    if spec.resume_command is not None and not spec.resume_command:
        raise ValidationError("--resume is empty; give the command that resumes the job")


def hm(when: datetime) -> str:
    """`2026-12-01 03:00:00Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span_text(delta: timedelta) -> str:
    """`2h05m` or `12m30s`."""
    seconds = int(delta.total_seconds())
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"
