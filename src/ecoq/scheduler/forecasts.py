"""Forecasts as the scheduler gets them: the database cache and the failover chain.

Every forecast a provider returns, and every series of realized values, is stored
(`ForecastStore`) with its provider, signal, issue time and fetch time. `ForecastSource` is what
the planner asks, and it fails over exactly as design.md's "Planning" says:

1. a fresh cached forecast (fetched within `refresh_s`) that reaches the window's end or is a
   full day-ahead forecast (`FULL_HORIZON`: a shorter one was fetched for a short window, e.g.
   `ecoq forecast --hours 1`), else the zone's providers, live, in
   order (`forecast.provider = "ukgrid, electricitymaps"`; one signal type, checked by config);
2. the newest cached forecast covering the window, however old (with a warning past `max_age_s`);
3. the fallback forecaster on stored realized history;
4. the bundled typical profile (only behind average-signal providers: a chain never mixes
   signals);
5. none: the caller starts the job per `planner.fail_policy`.

Each step down is logged once per episode (not per tick), and the forecast's `label` says which
step produced it, so `ecoq forecast` and the job's plan show it.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import col, select

from ecoq.db import session
from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting import Forecast, ForecastProvider, IntensityPoint
from ecoq.models import ForecastRecord

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: How much realized history the fallback forecaster is given.
FALLBACK_HISTORY = timedelta(days=63)
#: A cached forecast reaching this far past its fetch is as long as providers give (their
#: day-ahead forecasts reach 24 to 72 h): a longer request is served from it, not refetched.
FULL_HORIZON = timedelta(hours=24)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _epoch(t: datetime) -> float:
    return t.timestamp()


def _from_epoch(s: float | None) -> datetime:
    return datetime.fromtimestamp(float(s or 0), UTC)


class ForecastStore:
    """Fetched forecasts and realized values in the database."""

    def __init__(self, engine: Engine, clock: Clock = _utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def save(self, forecast: Forecast) -> None:
        """Store one forecast (or realized series) as fetched now."""
        record = ForecastRecord(
            zone=forecast.zone,
            source=forecast.source,
            signal=forecast.signal,
            emission_factor=forecast.emission_factor,
            model=forecast.model,
            label=forecast.label,
            realized=forecast.realized,
            issued_at=forecast.issued_at,
            fetched_at=self.clock(),
            step_s=int(forecast.step.total_seconds()),
            start=forecast.start,
            end=forecast.end,
            points=[[_epoch(p.start), p.g_per_kwh, p.is_estimated] for p in forecast.points],
        )
        with session(self.engine) as s:
            s.add(record)
            s.commit()

    def newest(
        self, zone: str, sources: Sequence[str], *, covering: datetime
    ) -> tuple[Forecast, datetime] | None:
        """The newest-issued forecast from `sources` whose span includes `covering`, with the
        time it was fetched; None when the cache has none."""
        with session(self.engine) as s:
            record = s.exec(
                select(ForecastRecord)
                .where(
                    ForecastRecord.zone == zone,
                    col(ForecastRecord.realized).is_(False),
                    col(ForecastRecord.source).in_(list(sources)),
                    col(ForecastRecord.start) <= covering,
                    col(ForecastRecord.end) > covering,
                )
                .order_by(col(ForecastRecord.issued_at).desc(), col(ForecastRecord.id).desc())
                .limit(1)
            ).first()
        return None if record is None else (_forecast(record), record.fetched_at)

    def history(self, zone: str, signal: str, start: datetime, end: datetime) -> Forecast | None:
        """Realized values of one signal over [start, end), merged across fetches (the newest
        fetch wins where they overlap, since providers revise values); None when there are
        none. The step is the finest stored step."""
        with session(self.engine) as s:
            records = s.exec(
                select(ForecastRecord)
                .where(
                    ForecastRecord.zone == zone,
                    ForecastRecord.signal == signal,
                    col(ForecastRecord.realized).is_(True),
                    col(ForecastRecord.end) > start,
                    col(ForecastRecord.start) < end,
                )
                .order_by(col(ForecastRecord.fetched_at), col(ForecastRecord.id))
            ).all()
        if not records:
            return None
        merged: dict[float, list[float | None]] = {}
        for record in records:  # oldest fetch first, so newer values overwrite
            for point in record.points:
                merged[float(point[0] or 0)] = point
        lo, hi = _epoch(start), _epoch(end)
        points = tuple(
            IntensityPoint(_from_epoch(t), float(p[1] or 0.0), _estimated(p))
            for t, p in sorted(merged.items())
            if lo <= t < hi
        )
        if not points:
            return None
        newest = records[-1]
        return Forecast(
            zone=zone,
            signal=newest.signal,  # type: ignore[arg-type]
            source=newest.source,
            label=f"{newest.source} realized",
            issued_at=newest.issued_at,
            step=timedelta(seconds=min(r.step_s for r in records)),
            points=points,
            emission_factor=newest.emission_factor,
            realized=True,
            model=newest.model,
        )


def _estimated(point: list[float | None]) -> bool | None:
    return None if len(point) < 3 or point[2] is None else bool(point[2])


def _forecast(record: ForecastRecord) -> Forecast:
    return Forecast(
        zone=record.zone,
        signal=record.signal,  # type: ignore[arg-type]
        source=record.source,
        label=record.label,
        issued_at=record.issued_at,
        step=timedelta(seconds=record.step_s),
        points=tuple(
            IntensityPoint(_from_epoch(p[0]), float(p[1] or 0.0), _estimated(p))
            for p in record.points
        ),
        emission_factor=record.emission_factor,
        realized=record.realized,
        model=record.model,
    )


@dataclass(frozen=True)
class ChainSettings:
    """The `[forecast]` settings the chain needs (seconds)."""

    refresh_s: float = 1800.0
    max_age_s: float = 21600.0


class ForecastSource:
    """The failover chain behind the configured providers (see the module docstring)."""

    def __init__(
        self,
        providers: ForecastProvider | Sequence[ForecastProvider],
        *,
        store: ForecastStore | None = None,
        bundled: ForecastProvider | None = None,
        fallback: Callable[[Forecast, datetime, datetime], Forecast] | None = None,
        settings: ChainSettings = ChainSettings(),
        clock: Clock = _utcnow,
    ) -> None:
        chain = [providers] if not isinstance(providers, Sequence) else list(providers)
        if not chain:
            raise ValueError("a forecast chain needs at least one provider")
        self.providers: list[ForecastProvider] = chain
        self.store = store
        signal = getattr(chain[0], "signal", "average")
        # The typical profile is an average signal: never behind a marginal provider.
        self.bundled = bundled if signal != "marginal" else None
        self.signal: str = signal
        self._names = [p.name for p in chain if p.name != "bundled"]
        self.fallback = fallback
        self.settings = settings
        self.clock = clock
        self._step: dict[str, str] = {}  # zone -> the chain step last used (for episode logs)
        self._memo: dict[str, tuple[Forecast, datetime]] = {}  # zone -> newest cached, fetched
        self._fallen: dict[str, tuple[Forecast, datetime]] = {}  # zone -> fallback, made at

    def forecast(self, zone: str, start: datetime, end: datetime) -> Forecast | None:
        """A forecast covering [start, end) from the first step of the chain that has one;
        None when no step has.

        Raises UnknownZone when the configured provider does not know the zone at all.
        """
        now = self.clock()
        cached = self._cached(zone, start)
        if (
            cached is not None
            and (now - cached[1]).total_seconds() < self.settings.refresh_s
            and (cached[0].end >= end or cached[0].end - cached[1] >= FULL_HORIZON)
        ):
            return self._use(zone, "cache", cached[0])
        causes = []
        for provider in self.providers:
            try:
                live = provider.forecast(zone, start, end)
            except ForecastUnavailable as exc:
                causes.append(str(exc))
                continue
            if self.store is not None and provider.name != "bundled":
                self.store.save(live)
                self._memo[zone] = (live, now)
            primary = provider is self.providers[0]
            return self._use(
                zone,
                "live" if primary else f"live from {provider.name}",
                live,
                None,
                "; ".join(causes),
            )
        cause = "; ".join(causes)
        if cached is not None:
            age_s = (now - cached[1]).total_seconds()
            stale = age_s > self.settings.max_age_s
            label = f"{cached[0].label}, cached {age_s / 3600:.1f} h ago" + (
                " (stale)" if stale else ""
            )
            step = "stale cached forecast" if stale else "cached forecast"
            return self._use(zone, step, cached[0], label, cause)
        fallback = self._from_history(zone, start, end)
        if fallback is not None:
            return self._use(zone, "fallback forecaster", fallback, None, cause)
        if self.bundled is not None:
            try:
                typical = self.bundled.forecast(zone, start, end)
            except (ForecastUnavailable, UnknownZone):
                pass
            else:
                return self._use(zone, "typical profile", typical, None, cause)
        self._use(zone, "none", None, None, cause)
        return None

    def refresh_history(self, zone: str, start: datetime, end: datetime) -> bool:
        """Fetch realized values for [start, end) into the store; False when unavailable."""
        if self.store is None:
            return False
        for provider in self.providers:
            if provider.name == "bundled":
                continue  # a typical profile has no realized values
            try:
                history = provider.history(zone, start, end)
            except (ForecastUnavailable, UnknownZone) as exc:
                log.info("no realized history from %s for %s: %s", provider.name, zone, exc)
                continue
            self.store.save(history)
            return True
        return False

    def _cached(self, zone: str, start: datetime) -> tuple[Forecast, datetime] | None:
        if self.store is None or not self._names:
            return None
        memo = self._memo.get(zone)
        if memo is not None and memo[0].start <= start < memo[0].end:
            return memo  # saves a query per job when re-planning many jobs of one zone
        found = self.store.newest(zone, self._names, covering=start)
        if found is not None:
            self._memo[zone] = found
        return found

    def _from_history(self, zone: str, start: datetime, end: datetime) -> Forecast | None:
        if self.store is None:
            return None
        fallback = self.fallback
        if fallback is None:
            from ecoq.forecasting.fallback import forecast_from_history

            fallback = forecast_from_history
        now = self.clock()
        made = self._fallen.get(zone)
        fresh = now - made[1] < timedelta(seconds=self.settings.refresh_s) if made else False
        if made is not None and fresh and made[0].start <= start and end <= made[0].end:
            return made[0]  # weeks of history and a model fit: not again for every re-plan
        history = self.store.history(zone, self.signal, now - FALLBACK_HISTORY, now)
        if history is None:
            return None
        try:
            forecast = fallback(history, start, end)
        except ForecastUnavailable:
            return None
        self._fallen[zone] = (forecast, now)
        return forecast

    def _use(
        self,
        zone: str,
        step: str,
        forecast: Forecast | None,
        label: str | None = None,
        cause: str | None = None,
    ) -> Forecast | None:
        previous = self._step.get(zone)
        if step != previous:
            self._step[zone] = step
            first = self.providers[0].name
            if step in ("live", "cache"):
                if previous is not None and previous not in ("live", "cache"):
                    log.info("forecast for %s from %s again", zone, first)
            else:
                log.warning("forecast for %s: %s failed (%s); using %s", zone, first, cause, step)
        if forecast is None:
            return None
        return replace(forecast, label=label) if label else forecast
