"""Job states and the legal transitions between them (design doc, "Job states").

Kept apart from `ecoq.models` so that read-only commands can use them without importing the
database layer.
"""

from enum import StrEnum

from ecoq.errors import IllegalTransition


class JobState(StrEnum):
    """Where a job is in its life. `late` and `held` are flags on the job, not states."""

    PENDING = "pending"
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


S = JobState

#: Every legal move. `running → pending` is the requeue of a claimed job whose wrapper provably
#: never started it (the daemon died between claim and launch); `running → planned` is a
#: checkpoint pause (an interruptible job saved its state and exited; its resume command runs at
#: its next segment). Nothing else goes backwards.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.PLANNED, S.RUNNING, S.CANCELLED, S.EXPIRED}),
    S.PLANNED: frozenset({S.PENDING, S.PLANNED, S.RUNNING, S.CANCELLED, S.EXPIRED}),
    S.RUNNING: frozenset({S.PAUSED, S.PLANNED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PENDING}),
    S.PAUSED: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
}

TERMINAL: frozenset[JobState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ACTIVE: frozenset[JobState] = frozenset({S.RUNNING, S.PAUSED})
WAITING: frozenset[JobState] = frozenset({S.PENDING, S.PLANNED})


def check_transition(job_id: int | None, current: JobState, target: JobState) -> None:
    """Raise `IllegalTransition` unless `current → target` is a legal move."""
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (terminal state)"
        raise IllegalTransition(
            f"job {job_id} cannot go from {current} to {target}; from {current} it may go to: "
            f"{allowed}"
        )
