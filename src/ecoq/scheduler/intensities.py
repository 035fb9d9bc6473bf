"""Which intensity accounts a run: realized values, else cached forecasts, else the typical
profile; one provider and one signal for both sides of the comparison (`ecoq.accounting`)."""

from collections.abc import Iterator
from datetime import datetime, timedelta

from ecoq.accounting import Intensity
from ecoq.errors import ForecastUnavailable, UnknownZone
from ecoq.forecasting import ForecastProvider
from ecoq.scheduler.forecasts import ForecastStore

__all__ = ["LOOKBACK", "intensity_candidates"]

#: `ForecastStore.history` keeps points that start inside the span asked for; asking from this
#: much earlier also gets the point in force at its start (steps are at most an hour).
LOOKBACK = timedelta(hours=6)


def intensity_candidates(
    store: ForecastStore,
    zone: str,
    signals: list[str],
    sources: list[str],
    windows: list[tuple[datetime, datetime]],
    bundled: ForecastProvider | None,
    plan_signal: str | None,
) -> Iterator[Intensity]:
    """Intensities to try for a run whose run and counterfactual spans are `windows`, best
    first: stored realized values of each of `signals`, the cached forecasts of `sources`
    (stitched, one provider), then the typical profile unless the job's plan was marginal.
    `bundled` None: `BundledProvider`."""
    lo = min(w[0] for w in windows)
    hi = max(w[1] for w in windows)
    for signal in signals:
        history = store.history(zone, signal, lo - LOOKBACK, hi)
        if history is not None:
            yield Intensity.from_forecast(history)
    if sources:
        cached = _cached(store, zone, signals[0] if signals else None, sources, windows)
        if cached is not None:
            yield cached
    if plan_signal != "marginal":  # the typical profile is an average signal
        typical = _typical(bundled, zone, lo, hi)
        if typical is not None:
            yield typical


def _cached(
    store: ForecastStore,
    zone: str,
    signal: str | None,
    sources: list[str],
    windows: list[tuple[datetime, datetime]],
) -> Intensity | None:
    """The cached forecasts covering `windows`, newest issue first, older ones filling the
    gaps; all from one provider and of one signal. None when they do not cover."""
    combined: Intensity | None = None
    for start, end in windows:
        for _ in range(64):  # each pass adds one forecast; bounded in case of odd data
            gaps = [(start, end)] if combined is None else combined.uncovered(start, end)
            if not gaps:
                break
            found = store.newest(zone, sources, covering=gaps[0][0])
            if found is None:
                return None
            piece = Intensity.from_forecast(found[0])
            if signal is not None and piece.signal != signal:
                return None
            if combined is None:
                combined = piece
            elif piece.source != combined.source:
                return None  # never stitch two providers into one comparison
            else:
                before = combined.uncovered(start, end)
                combined = combined.filled_from(piece)
                if combined.uncovered(start, end) == before:
                    return None  # the newest forecast adds nothing: cannot cover
    return combined


def _typical(
    bundled: ForecastProvider | None, zone: str, start: datetime, end: datetime
) -> Intensity | None:
    if bundled is None:
        from ecoq.forecasting.bundled import BundledProvider

        bundled = BundledProvider()
    try:
        return Intensity.from_forecast(bundled.forecast(zone, start, end))
    except (ForecastUnavailable, UnknownZone):
        return None
