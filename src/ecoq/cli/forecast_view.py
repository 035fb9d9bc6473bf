"""What `ecoq forecast` shows, made apart from the printing so that a shared daemon can make it
for its users from its own providers, credentials and cache (`ecoq.shared.backend`)."""

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ecoq.cli.app import canonical_zone, forecast_provider, forecast_source, settings

if TYPE_CHECKING:
    from ecoq.forecasting import Forecast
    from ecoq.scheduler.forecasts import ForecastSource
    from ecoq.scheduler.planning import Plan
    from ecoq.shared.protocol import ForecastAnswer


def forecast_answer(
    *,
    zone: str | None,
    hours: float,
    duration: str | None,
    deadline: str | None,
    provider: str | None,
    now: datetime,
    source: "Callable[[], ForecastSource]" = forecast_source,
) -> "ForecastAnswer":
    """The forecast `ecoq forecast` shows for its flags (as typed): `--json`'s object and the
    text lines. `source` gives the failover chain (default: a new one on the database).

    Raises:
        ValidationError: a bad flag (named). UnknownZone: a zone the providers do not know.
        ForecastUnavailable: no source has a forecast. ConfigError: an unknown provider, or
            its credentials are missing.
    """
    from datetime import timedelta

    from ecoq.errors import ForecastUnavailable, ValidationError
    from ecoq.parsing import parse_duration, parse_when
    from ecoq.scheduler.planning import plan_window

    cfg = settings()
    zone_name = zone or cfg.site.zone
    if not zone_name:
        raise ValidationError("no zone given; pass --zone, e.g. --zone DE (`ecoq zones`)")
    if not 0 < hours <= 24 * 31:  # also refuses NaN
        raise ValidationError(f"--hours {hours:g} must be more than 0 and at most 744 (31 d)")
    zone_name = canonical_zone(zone_name, provider=provider)
    span = parse_duration(duration) if duration else None
    until = parse_when(deadline, now, flag="--deadline") if deadline else None
    if (span is None) != (until is None):
        raise ValidationError("give both --duration and --deadline to find the best window")
    end = max(now + timedelta(hours=hours), until or now)
    fc: Forecast | None
    if provider is not None:
        asked = forecast_provider(provider)
        try:
            fc = asked.forecast(zone_name, now, end)
        finally:
            close = getattr(asked, "close", None)
            if close is not None:
                close()
    else:
        fc = source().forecast(zone_name, now, end)
    if fc is None:
        raise ForecastUnavailable(f"no forecast for zone {zone_name} from any source")
    best = None
    if span is not None and until is not None:
        best = plan_window(
            fc,
            earliest_start=now,
            latest_start=until - span,
            duration=span,
            min_saving=cfg.planner.min_saving,
            rule=cfg.planner.averaging,
        )
    return _answer(fc, best, now, hours)


def _answer(fc: "Forecast", best: "Plan | None", now: datetime, hours: float) -> "ForecastAnswer":
    from datetime import timedelta

    from ecoq.shared.protocol import ForecastAnswer
    from ecoq.views import iso

    shown = [p for p in fc.points if p.start < now + timedelta(hours=hours)]
    age_s = max(0.0, (now - fc.issued_at).total_seconds())
    data: dict[str, object] = {
        "zone": fc.zone,
        "source": fc.source,
        "label": fc.label,
        "signal": fc.signal,
        "issued_at": iso(fc.issued_at),
        "age_s": round(age_s),
        "step_s": int(fc.step.total_seconds()),
        "emission_factor": fc.emission_factor,
        "model": fc.model,
        "points": [
            {"time": iso(p.start), "g_per_kwh": p.g_per_kwh, "estimated": p.is_estimated}
            for p in shown
        ],
        "gaps": [{"start": iso(a), "end": iso(b)} for a, b in fc.gaps()],
    }
    if best is not None:
        data["best_window"] = {
            "start": iso(best.start),
            "mean_g_per_kwh": best.mean_g_per_kwh,
            "now_g_per_kwh": best.now_g_per_kwh,
            "saving_pct": 100 * best.saving_fraction,
            "reason": best.reason,
        }
    basis = f" ({fc.emission_factor})" if fc.emission_factor else ""
    lines = [
        f"zone {fc.zone}: {fc.label} ({fc.source}), {fc.signal} signal{basis}, gCO2eq/kWh, "
        f"issued {iso(fc.issued_at)} ({age_s / 60:.0f} min ago)"
    ]
    for p in shown:
        bar = "#" * max(1, round(p.g_per_kwh / 20))
        flag = "  (estimated)" if p.is_estimated else ""
        lines.append(f"  {p.start:%a %H:%M}Z  {p.g_per_kwh:7.1f}  {bar}{flag}")
    for a, b in fc.gaps():
        lines.append(f"  no data from {iso(a)} to {iso(b)}")
    if best is not None:
        lines.append(
            f"best window: start {iso(best.start)}, {best.mean_g_per_kwh:.0f} g/kWh vs "
            f"{best.now_g_per_kwh:.0f} now ({100 * best.saving_fraction:.1f} % less): "
            f"{best.reason}"
        )
    return ForecastAnswer(data, lines)
