"""Prometheus metrics of the daemon (`ecoq daemon --metrics-port 9464`), with prometheus-client.

The daemon calls `start_metrics` once and `Metrics.update` from each tick; `update` reads the
database (a handful of aggregate queries, at most every `min_interval_s`) into a snapshot that
each scrape serves, so a scrape never touches the database. Metrics (g = grams CO2e):

- ``ecoq_jobs{state}``: jobs per state (queue depth: pending, planned, running, paused…);
- ``ecoq_realized_gco2e_total{signal}``, ``ecoq_avoided_gco2e_total{signal}``: the sums over
  accounted runs, per signal (never added across signals). They grow as runs finish;
  reconciliation with realized values can also lower them a little, which Prometheus reads as a
  counter reset;
- ``ecoq_energy_joules_total``: metered energy of finished runs;
- ``ecoq_meter_errors_total``: meters that failed during finished runs;
- ``ecoq_intensity_g_per_kwh{zone,signal,source}``: the intensity now, from the newest cached
  forecast of each zone (or the typical profile for zones in use without one);
- ``ecoq_forecast_age_seconds{zone,source}``: seconds since the newest forecast was fetched;
- ``ecoq_metrics_updated_timestamp_seconds``: when the snapshot was taken.
"""

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from ecoq.db import session
from ecoq.errors import EcoqError
from ecoq.models import ForecastRecord, Job, Run
from ecoq.scheduler.forecasts import ForecastStore
from ecoq.states import ACTIVE, WAITING, JobState

log = logging.getLogger(__name__)

__all__ = ["Metrics", "Snapshot", "read_snapshot", "start_metrics"]


@dataclass
class Snapshot:
    """What the database said at `taken_at` (see the module docstring for units)."""

    taken_at: datetime | None = None
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    realized_g: dict[str, float] = field(default_factory=dict)  # signal -> grams
    avoided_g: dict[str, float] = field(default_factory=dict)  # signal -> grams
    energy_j: float = 0.0
    meter_errors: int = 0
    #: (zone, signal, source) -> g/kWh now
    intensity: dict[tuple[str, str, str], float] = field(default_factory=dict)
    #: (zone, source) -> seconds since the newest forecast was fetched
    forecast_age_s: dict[tuple[str, str], float] = field(default_factory=dict)


def read_snapshot(engine: Engine, now: datetime) -> Snapshot:
    """Read the metrics from the database.

    Raises:
        SQLAlchemyError: the database could not be read.
    """
    snap = Snapshot(taken_at=now)
    with session(engine) as s:
        states = s.exec(select(Job.state, func.count()).group_by(Job.state)).all()
        snap.jobs_by_state = {str(state): int(n) for state, n in states}
        sums = s.exec(
            select(Run.accounting_signal, func.sum(Run.realized_g), func.sum(Run.avoided_g))
            .where(col(Run.realized_g).is_not(None))
            .group_by(Run.accounting_signal)
        ).all()
        for signal, realized, avoided in sums:
            snap.realized_g[signal or "unknown"] = float(realized or 0.0)
            snap.avoided_g[signal or "unknown"] = float(avoided or 0.0)
        energy, errors = s.exec(
            select(func.sum(Run.energy_j), func.sum(Run.meter_errors)).where(
                col(Run.finished_at).is_not(None)
            )
        ).one()
        snap.energy_j, snap.meter_errors = float(energy or 0.0), int(errors or 0)
        fetched = s.exec(
            select(ForecastRecord.zone, ForecastRecord.source, func.max(ForecastRecord.fetched_at))
            .where(col(ForecastRecord.realized).is_(False))
            .group_by(ForecastRecord.zone, ForecastRecord.source)
        ).all()
        in_use = s.exec(
            select(Job.zone)
            .where(col(Job.state).in_([str(x) for x in WAITING | ACTIVE]))
            .distinct()
        ).all()
    store = ForecastStore(engine)
    for zone, source, when in fetched:
        if when is not None:
            snap.forecast_age_s[(zone, source)] = max(0.0, (now - _aware(when)).total_seconds())
        found = store.newest(zone, [source], covering=now)
        if found is not None:
            snap.intensity[(zone, found[0].signal, source)] = found[0].value_at(now)
    covered = {zone for zone, _, _ in snap.intensity}
    for zone in sorted(set(in_use) - covered):
        typical = _typical_now(zone, now)
        if typical is not None:
            snap.intensity[(zone, "average", "bundled")] = typical
    return snap


def _aware(when: datetime | str) -> datetime:
    t = datetime.fromisoformat(when) if isinstance(when, str) else when
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _typical_now(zone: str, now: datetime) -> float | None:
    from ecoq.errors import ForecastUnavailable, UnknownZone
    from ecoq.forecasting.bundled import BundledProvider

    try:
        return BundledProvider().forecast(zone, now, now + timedelta(hours=1)).value_at(now)
    except (ForecastUnavailable, UnknownZone):
        return None


class _Collector(Collector):
    """Serves the latest snapshot on each scrape."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        jobs = GaugeMetricFamily("ecoq_jobs", "Jobs per state (queue depth).", labels=["state"])
        for state in JobState:
            jobs.add_metric([str(state)], float(snap.jobs_by_state.get(str(state), 0)))
        yield jobs
        for name, values, what in (
            ("ecoq_realized_gco2e", snap.realized_g, "Realized emissions of accounted runs"),
            ("ecoq_avoided_gco2e", snap.avoided_g, "Avoided emissions of accounted runs"),
        ):
            counter = CounterMetricFamily(
                name, f"{what}, grams CO2e, per signal.", labels=["signal"]
            )
            for signal, grams in sorted(values.items()):
                counter.add_metric([signal], grams)
            yield counter
        yield CounterMetricFamily(
            "ecoq_energy_joules", "Metered energy of finished runs, joules.", value=snap.energy_j
        )
        yield CounterMetricFamily(
            "ecoq_meter_errors", "Meters that failed during finished runs.", value=snap.meter_errors
        )
        intensity = GaugeMetricFamily(
            "ecoq_intensity_g_per_kwh",
            "Carbon intensity now, gCO2e/kWh, from the newest cached forecast.",
            labels=["zone", "signal", "source"],
        )
        for (zone, signal, source), value in sorted(snap.intensity.items()):
            intensity.add_metric([zone, signal, source], value)
        yield intensity
        age = GaugeMetricFamily(
            "ecoq_forecast_age_seconds",
            "Seconds since the newest forecast of the zone was fetched.",
            labels=["zone", "source"],
        )
        for (zone, source), seconds in sorted(snap.forecast_age_s.items()):
            age.add_metric([zone, source], seconds)
        yield age
        if snap.taken_at is not None:
            yield GaugeMetricFamily(
                "ecoq_metrics_updated_timestamp_seconds",
                "When the metrics were read from the database (Unix time).",
                value=snap.taken_at.timestamp(),
            )


class Metrics:
    """The daemon's metrics: `update` from each tick; `close` stops the HTTP server.

    Args:
        engine: the queue's database.
        registry: where the metrics are registered (default: a new one, served by
            `start_metrics`).
        min_interval_s: `update` reads the database at most this often (seconds).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        registry: CollectorRegistry | None = None,
        min_interval_s: float = 15.0,
    ) -> None:
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        self.min_interval = timedelta(seconds=min_interval_s)
        self._collector = _Collector()
        self.registry.register(self._collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._collector.snapshot

    def update(self, now: datetime, *, force: bool = False) -> Snapshot:
        """Re-read the database unless it was read less than `min_interval_s` ago (or `force`).

        Never raises for database errors: the previous snapshot stays, with one warning.
        """
        last = self._collector.snapshot.taken_at
        if not force and last is not None and now - last < self.min_interval:
            return self._collector.snapshot
        try:
            self._collector.snapshot = read_snapshot(self.engine, now)
        except (SQLAlchemyError, EcoqError) as exc:
            log.warning("metrics not updated: cannot read the database: %s", exc)
        return self._collector.snapshot

    def close(self) -> None:
        """Stop serving. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def start_metrics(
    port: int,
    engine: Engine,
    *,
    addr: str = "0.0.0.0",
    now: datetime | None = None,
    registry: CollectorRegistry | None = None,
) -> Metrics:
    """Serve the metrics over HTTP on `addr`:`port` (``/metrics``) from a background thread.

    Args:
        port: TCP port (9464 is the usual one for ecoq; 0 picks a free one, see `Metrics.port`).
        now: when given, read the database once before serving.

    Raises:
        EcoqError: the port cannot be bound (in use, or privileged).
    """
    metrics = Metrics(engine, registry=registry)
    if now is not None:
        metrics.update(now, force=True)
    try:
        server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        raise EcoqError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror}; choose another --metrics-port"
        ) from exc
    metrics._server, metrics._thread = server, thread
    metrics.port = int(server.server_port)
    return metrics
