"""Background sampling of a set of meters into a compact energy time series.

The daemon samples each running job's meters every ``meters.interval_s`` seconds (default 5) so
that accounting can weigh each interval's energy by that interval's carbon intensity; ``ecoq
meter`` and ``ecoq.track`` use the same `Sampler`. The effective interval is the requested one or
less: never longer than any meter's `max_interval_s` (RAPL's wrap limit, see
`ecoq.meters.rapl.safe_interval_s`). `Sampler.stop` always takes a final reading, also when the
job's processes are gone: counters are still readable and a finished process tree keeps its
last CPU time.
"""

import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ecoq.errors import MeterUnavailable
from ecoq.meters import EnergyReading, Meter, MeterDescription

log = logging.getLogger(__name__)


class EnergySeries:
    """Cumulative joules per meter at sample times, since the first sample.

    Attributes:
        descriptions: one per meter, in column order.
        started_at: UTC time of the first sample (where every column is 0).
        t_s: seconds after `started_at` of each sample (monotonic clock).
        columns: per meter, cumulative joules at each sample.
        errors: device -> the first error of that meter; its energy stayed flat from then on.
    """

    def __init__(self, descriptions: Sequence[MeterDescription], started_at: datetime) -> None:
        if started_at.tzinfo is None:
            raise ValueError(f"started_at {started_at} is naive; pass a UTC datetime")
        self.descriptions = tuple(descriptions)
        self.started_at = started_at.astimezone(UTC)
        self.t_s = array("d")
        self.columns = [array("d") for _ in self.descriptions]
        self.errors: dict[str, str] = {}

    def append(self, t_s: float, energy_j: Sequence[float]) -> None:
        """Add one sample: `t_s` after `started_at`, cumulative joules per meter."""
        if len(energy_j) != len(self.columns):
            raise ValueError(f"{len(energy_j)} values for {len(self.columns)} meters")
        self.t_s.append(t_s)
        for column, value in zip(self.columns, energy_j, strict=True):
            column.append(value)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last sample."""
        return self.t_s[-1] if self.t_s else 0.0

    @property
    def ended_at(self) -> datetime:
        """UTC time of the last sample."""
        return self.started_at + timedelta(seconds=self.duration_s)

    @property
    def energy_j(self) -> float:
        """Total joules of all meters."""
        return sum(r.energy_j for r in self.readings())

    def readings(self) -> tuple[EnergyReading, ...]:
        """Joules per meter over the whole series."""
        return tuple(
            EnergyReading(d, c[-1] if c else 0.0)
            for d, c in zip(self.descriptions, self.columns, strict=True)
        )

    def intervals(self) -> Iterator[tuple[datetime, datetime, tuple[float, ...]]]:
        """Each interval between samples: its UTC start and end and the joules per meter."""
        for i in range(1, len(self.t_s)):
            start = self.started_at + timedelta(seconds=self.t_s[i - 1])
            end = self.started_at + timedelta(seconds=self.t_s[i])
            yield start, end, tuple(c[i] - c[i - 1] for c in self.columns)

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready form: times to 1 ms, joules to 1 mJ (`from_dict` reads it)."""
        return {
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "meters": [
                {"device": d.device, "method": d.method, "detail": d.detail}
                for d in self.descriptions
            ],
            "t_s": [round(t, 3) for t in self.t_s],
            "energy_j": [[round(v, 3) for v in c] for c in self.columns],
            "errors": dict(self.errors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EnergySeries":
        """The series `to_dict` wrote.

        Raises:
            ValueError: the data is malformed.
        """
        try:
            descriptions = [
                MeterDescription(m["device"], m["method"], m.get("detail", ""))
                for m in data["meters"]
            ]
            started = datetime.fromisoformat(str(data["started_at"]).replace("Z", "+00:00"))
            series = cls(descriptions, started)
            columns = data["energy_j"]
            for i, t in enumerate(data["t_s"]):
                series.append(float(t), [float(c[i]) for c in columns])
            series.errors = {str(k): str(v) for k, v in data.get("errors", {}).items()}
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"malformed energy series: {exc!r}") from exc
        return series


class Sampler:
    """Reads `meters` every `interval_s` seconds in a background thread into an `EnergySeries`.

    Args:
        meters: the meters; the sampler closes them at `stop` unless `close_meters` is False.
        interval_s: requested seconds between samples; the effective `interval_s` is at most
            each meter's `max_interval_s`.
        clock: UTC now (tests pass a fake); monotonic: seconds for intervals.
        thread: sample in a background thread; False: only on `sample` calls (tests, callers
            with their own loop).

    Raises:
        ValueError: `interval_s` is not a positive number.
    """

    def __init__(
        self,
        meters: Sequence[Meter],
        *,
        interval_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        thread: bool = True,
        close_meters: bool = True,
    ) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s {interval_s!r} must be a positive number of seconds")
        self.meters = tuple(meters)
        self.requested_interval_s = interval_s
        self.interval_s = min([interval_s, *(m.max_interval_s for m in self.meters)])
        self._clock = clock
        self._monotonic = monotonic
        self._use_thread = thread
        self._close_meters = close_meters
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._origin: list[float] = []
        self._last: list[float] = []
        self._t0 = 0.0
        self._series: EnergySeries | None = None
        self._stopped = False

    @property
    def series(self) -> EnergySeries:
        """The series so far. Raises RuntimeError before `start`."""
        if self._series is None:
            raise RuntimeError("the sampler has not been started")
        return self._series

    def start(self) -> "Sampler":
        """Take the first reading (the origin) and start the thread. Returns self.

        Raises:
            MeterUnavailable: a meter cannot be read at all (the meters are then closed, unless
                `close_meters` is False).
            RuntimeError: already started.
        """
        if self._series is not None:
            raise RuntimeError("the sampler was already started")
        started_at = self._clock()
        self._t0 = self._monotonic()
        try:
            self._origin = [m.energy_j() for m in self.meters]
        except BaseException:
            if self._close_meters:
                for meter in self.meters:
                    meter.close()
            raise
        self._last = list(self._origin)
        self._series = EnergySeries([m.description for m in self.meters], started_at)
        self._series.append(0.0, [0.0] * len(self.meters))
        if self._use_thread:
            self._thread = threading.Thread(target=self._run, name="ecoq-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        next_at = self._monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_at - self._monotonic())):
            self.sample()
            next_at += self.interval_s
            now = self._monotonic()
            if next_at < now:  # fell behind (a suspended machine): do not catch up in a burst
                next_at = now + self.interval_s

    def sample(self) -> tuple[float, ...]:
        """Read every meter now and append the sample; returns cumulative joules per meter.

        A meter that fails (`MeterUnavailable`, or any other error) keeps its last value; its
        first error is kept in `series.errors`.
        """
        series = self.series
        with self._lock:
            t_s = self._monotonic() - self._t0
            for i, meter in enumerate(self.meters):
                try:
                    self._last[i] = meter.energy_j()
                except Exception as exc:  # a bug in one meter must not stop the others
                    device = meter.description.device
                    if device not in series.errors:
                        text = str(exc) if isinstance(exc, MeterUnavailable) else repr(exc)
                        series.errors[device] = text
                        unexpected = not isinstance(exc, MeterUnavailable)
                        log.warning(
                            "meter %s failed, its energy stays flat: %s",
                            device,
                            text,
                            exc_info=unexpected,
                        )
            values = [last - origin for last, origin in zip(self._last, self._origin, strict=True)]
            series.append(t_s, values)
            return tuple(values)

    def stop(self) -> EnergySeries:
        """Stop the thread, take the final reading, close the meters and return the series.

        Idempotent: later calls return the same series.
        """
        series = self.series
        if self._stopped:
            return series
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.sample()
        finally:
            if self._close_meters:
                for meter in self.meters:
                    meter.close()
        return series
