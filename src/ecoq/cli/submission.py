"""Storing a submitted job: what `ecoq submit` does once its flags are parsed, and what a
shared daemon does for a user's submission that came in on its socket."""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ecoq.cli.app import open_queue, open_reader, settings, utcnow

if TYPE_CHECKING:
    from ecoq.scheduler.jobspec import JobSpec
    from ecoq.shared.protocol import SubmitRequest
    from ecoq.views import JobView


def store_job(spec: "JobSpec", now: datetime) -> "JobView":
    """Learn the duration (unless given), validate, plan and store the job `spec` asks for:
    `ecoq submit`'s work once the flags are parsed, also done by a shared daemon for its users.

    Raises ValidationError (nothing stored), UnknownZone, DatabaseError.
    """
    from ecoq.cli.jobs import _most_gpus, _preview_plan, _with_duration
    from ecoq.errors import ValidationError
    from ecoq.render import span as span_text
    from ecoq.scheduler.jobspec import validate_spec
    from ecoq.views import JobView

    shared = settings().shared
    if shared.socket and spec.uid == 0 and not shared.allow_root_jobs:
        raise ValidationError(
            "root may not submit jobs on a shared box (they would run as root); submit as a "
            "user, or set shared.allow_root_jobs = true"
        )
    queue = None
    if spec.duration_source == "default" and open_reader() is not None:  # no db: nothing to learn
        queue = open_queue()
        learned = queue.learned_duration_s(spec.command)
        if learned is not None:  # runs under a second learn 1 s, never 0
            spec = _with_duration(spec, timedelta(seconds=max(1, learned)), "learned")
    try:
        validate_spec(spec, now, box_gpus=_most_gpus())
    except ValidationError as exc:
        if spec.duration_source == "user" or "--duration" not in str(exc):
            raise
        origin = {
            "learned": "the median of earlier runs of this command",
            "default": "planner.default_duration_s",
        }[spec.duration_source]
        raise ValidationError(
            f"{exc} (no --duration was given, so the job's duration is {origin}: "
            f"{span_text(spec.duration.total_seconds())}; pass --duration)"
        ) from None
    queue = queue or open_queue()
    plan = _preview_plan(queue, spec, now)
    job = queue.submit(spec)
    assert job.id is not None
    queue.set_plan(job.id, **plan)
    return JobView.from_model(queue.get(job.id))


def submit_for(request: "SubmitRequest", user: str, uid: int) -> "JobView":
    """Store a job that `user` (`uid`, from the kernel) submitted through the shared daemon, as
    `ecoq submit` would for them, with the daemon's settings (`ecoq.shared.backend`)."""
    from ecoq.cli.jobs import _allowed_zones
    from ecoq.scheduler.jobspec import JobSpec, parse_signal

    cfg = settings()
    zones = _allowed_zones(list(request.zones), [])
    given = request.duration_s is not None
    spec = JobSpec(
        command=list(request.command),
        cwd=request.cwd,
        env=dict(request.env),
        user=user,
        uid=uid,
        zone=zones[0],
        deadline=request.deadline,
        duration=timedelta(seconds=request.duration_s or cfg.planner.default_duration_s),
        duration_source="user" if given else "default",
        name=request.name,
        project=request.project,
        gpus=request.gpus,
        not_before=request.not_before,
        drop_if_late=request.drop_if_late,
        zones=tuple(zones),
        interruptible=request.interruptible,
        max_pauses=request.max_pauses,
        min_segment=timedelta(seconds=request.min_segment_s),
        checkpoint_signal=parse_signal(request.checkpoint_signal)
        if request.checkpoint_signal
        else None,
        resume_command=list(request.resume_command) if request.resume_command else None,
    )
    return store_job(spec, utcnow())
