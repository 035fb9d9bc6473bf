"""Text the CLI shows, built from `JobView`s. Pure: returns strings and rows, prints nothing."""

from datetime import UTC, datetime, timedelta

from ecoq.states import TERMINAL
from ecoq.views import JobView, iso


def hm(when: datetime | None, now: datetime | None = None) -> str:
    """`03:00 UTC`, with the date when it is not today (relative to `now`)."""
    if when is None:
        return "-"
    when = when.astimezone(UTC)
    if now is not None and when.date() != now.astimezone(UTC).date():
        return when.strftime("%a %d %b %H:%M UTC")
    return when.strftime("%H:%M UTC")


def span(seconds: float) -> str:
    """`2h05m`, `12m30s` or `45s`."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def saving_pct(job: JobView) -> float | None:
    if job.plan_g_per_kwh is None or not job.now_g_per_kwh:
        return None
    return 100.0 * (job.now_g_per_kwh - job.plan_g_per_kwh) / job.now_g_per_kwh


def plan_phrase(job: JobView, now: datetime) -> str:
    """`start 03:00 UTC in DE, 212 g/kWh vs 341 now, −38 % (typical profile)`."""
    start = job.planned_start
    when = "now" if start is None or start - now < timedelta(seconds=60) else hm(start, now)
    text = f"start {when} in {job.plan_zone or job.zone}"
    parts = len(job.segments or [])
    if parts > 1:
        text += f" in {parts} segments"
    pct = saving_pct(job)
    if job.plan_g_per_kwh is not None and job.now_g_per_kwh is not None and pct is not None:
        sign = "−" if pct > 0.05 else ("+" if pct < -0.05 else "±")
        text += (
            f", {job.plan_g_per_kwh:.0f} g/kWh vs {job.now_g_per_kwh:.0f} now, "
            f"{sign}{abs(pct):.0f} %"
        )
    label = job.plan_label or "no forecast"
    signal = f", {job.plan_signal} signal" if job.plan_signal else ""
    return f"{text} ({label}{signal})"


def submit_line(job: JobView, now: datetime) -> str:
    if job.state == "planned":
        return f"job {job.id} planned: {plan_phrase(job, now)}"
    return f"job {job.id} {job.state}"


QUEUE_HEADER = ("id", "name", "state", "zone", "planned start", "g/kWh", "deadline", "user")


def queue_row(job: JobView, now: datetime) -> tuple[str, ...]:
    flags = [f for f, on in (("held", job.held), ("late", job.late)) if on]
    if job.request and job.state not in TERMINAL:
        flags.append(f"{job.request} requested")
    state = str(job.state) + (f" ({', '.join(flags)})" if flags else "")
    g = f"{job.plan_g_per_kwh:.0f}" if job.plan_g_per_kwh is not None else "-"
    start = job.started_at if job.started_at else job.planned_start
    return (
        str(job.id),
        job.name,
        state,
        job.zone,
        hm(start, now),
        g,
        hm(job.deadline, now),
        job.user,
    )


def show_lines(job: JobView, now: datetime) -> list[tuple[str, str]]:
    """(label, value) pairs for `ecoq show`, explaining the plan."""
    rows = [
        ("job", f"{job.id} {job.name!r}"),
        (
            "state",
            str(job.state) + (" (late)" if job.late else "") + (" (held)" if job.held else ""),
        ),
        ("command", " ".join(_quote(a) for a in job.command)),
        ("cwd", job.cwd),
        ("user", job.user + (f", project {job.project}" if job.project else "")),
        ("zone", job.zone + (f", site {job.site}" if job.site else "")),
        ("gpus", str(job.gpus)),
        ("submitted", iso(job.submitted_at) or "-"),
        ("not before", iso(job.not_before) or "-"),
        ("deadline", f"{iso(job.deadline)} (finish by)"),
        ("duration", f"{span(job.duration_s)} ({job.duration_source})"),
        ("latest start", iso(job.deadline - timedelta(seconds=job.duration_s)) or "-"),
    ]
    if job.planned_start is not None:
        rows.append(("plan", plan_phrase(job, now)))
        rows.append(("why", job.plan_reason or "-"))
        rows.extend(explain_lines(job, now))
    if job.request and job.state in TERMINAL:  # failed as lost: kept for its daemon
        rows.append(("request", f"{job.request} (carried out if its lost daemon comes back)"))
    elif job.request:
        rows.append(("request", f"{job.request} (the daemon carries it out at its next tick)"))
    if job.started_at:
        rows.append(("started", iso(job.started_at) or "-"))
    if job.finished_at:
        rows.append(("finished", iso(job.finished_at) or "-"))
        if job.started_at:
            rows.append(("ran for", span((job.finished_at - job.started_at).total_seconds())))
    if job.exit_code is not None:
        rows.append(("exit code", str(job.exit_code)))
    if job.reason:
        rows.append(("reason", job.reason))
    return rows


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} g/kWh"


def _window(start: datetime, end: datetime, now: datetime) -> str:
    """`Mon 30 Nov 10:00–13:00 UTC` (the end's date only when it differs)."""
    first = hm(start, now).removesuffix(" UTC")
    if start.astimezone(UTC).date() == end.astimezone(UTC).date():
        return f"{first}–{end.astimezone(UTC):%H:%M} UTC"
    return f"{first}–{hm(end, start)}"


def explain_lines(job: JobView, now: datetime) -> list[tuple[str, str]]:
    """Why the plan is what it is: candidates, best, runner-up, why not now, segments, pauses."""
    rows: list[tuple[str, str]] = []
    if job.plan_candidates is not None:
        what = "windows" + (" and interruptible slots" if job.interruptible else "")
        rows.append(("candidates", f"{job.plan_candidates} {what} compared"))
    spans = job.segments or []
    if spans and job.plan_g_per_kwh is not None:
        rows.append(
            ("best", f"{_window(spans[0][0], spans[-1][1], now)}, {_g(job.plan_g_per_kwh)}")
        )
    if job.plan_runner_up_start is not None:
        where = f" in {job.plan_runner_up_zone}" if job.plan_runner_up_zone else ""
        rows.append(
            (
                "runner-up",
                f"start {hm(job.plan_runner_up_start, now)}{where}, "
                f"{_g(job.plan_runner_up_g_per_kwh)}",
            )
        )
    elif job.plan_candidates is not None:
        rows.append(("runner-up", "none: no other window is covered by the forecast"))
    if (job.plan_saving or 0) > 0 and job.now_g_per_kwh is not None:
        threshold = f"{job.plan_min_saving * 100:g} %" if job.plan_min_saving is not None else "-"
        rows.append(
            (
                "why not now",
                f"starting now averages {_g(job.now_g_per_kwh)}; waiting saves "
                f"{(job.plan_saving or 0) * 100:.1f} %, at least min_saving {threshold}",
            )
        )
    if job.interruptible:
        rows.extend(_interruptible_lines(job, now))
    if len(job.allowed_zones) > 1 or (job.plan_zone and job.plan_zone != job.zone):
        where = f" (planned in {job.plan_zone})" if job.plan_zone else ""
        rows.append(("zones", ", ".join(job.allowed_zones) + where))
    if job.plan_signal:
        rows.append(("signal", f"{job.plan_signal} ({job.plan_label or job.plan_source})"))
    return rows


def _interruptible_lines(job: JobView, now: datetime) -> list[tuple[str, str]]:
    spans = job.segments or []
    rows: list[tuple[str, str]] = []
    if spans:
        listed = ", ".join(_window(a, b, now) for a, b in spans)
        rows.append(("segments", f"{listed} ({len(spans)} segment{'s' * (len(spans) != 1)})"))
    limit = "no limit" if job.max_pauses is None else f"at most {job.max_pauses}"
    taken = f"{job.pauses} taken, {limit}"
    if job.min_segment_s:
        taken += f"; segments of at least {span(job.min_segment_s)}"
    rows.append(("pauses", taken))
    if job.checkpoint_signal:
        resume = " ".join(_quote(a) for a in job.resume_command or [])
        rows.append(
            (
                "pause signal",
                f"checkpoint: {job.checkpoint_signal}, the job saves and exits (its GPUs are "
                f"freed); then `{resume}`",
            )
        )
    else:
        rows.append(
            (
                "pause signal",
                "SIGSTOP, then SIGCONT: the job stays in memory and keeps its GPUs (idle power)",
            )
        )
    return rows


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
