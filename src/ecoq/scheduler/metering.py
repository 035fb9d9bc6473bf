"""Meters for the daemon's running jobs: one sampler per run, started when the job's process is
known and stopped (with a final read) when the run ends.

Samplers live in the daemon's memory. Their series is written to the run every
`SNAPSHOT_EVERY_S`, so a daemon that dies loses at most that much, and a restarted daemon starts a
new segment for a run it finds still running: a run's series is a list of segments, and the gap
between them (while no daemon ran) is not metered, which the stored series shows.
"""

import logging
import time
from collections.abc import Callable
from typing import Any

from ecoq.errors import MeterUnavailable
from ecoq.meters import Detection, MeterSettings, detect_meters
from ecoq.meters.sampler import EnergySeries, Sampler

log = logging.getLogger(__name__)

#: Seconds between writes of a running job's series to the database.
SNAPSHOT_EVERY_S = 60.0

Detect = Callable[..., Detection]


class RunMeters:
    """Samplers of the runs this daemon watches, by run id."""

    def __init__(
        self, settings: MeterSettings, *, interval_s: float, detect: Detect = detect_meters
    ) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self._detect = detect
        self._samplers: dict[int, Sampler] = {}
        self._saved_at: dict[int, float] = {}

    def watching(self, run_id: int) -> bool:
        return run_id in self._samplers

    def start(self, run_id: int, pid: int, gpus: list[int]) -> None:
        """Meter the process tree of `pid` and the GPUs `gpus` (indices) from now on.

        A meter that cannot be opened is skipped with one log line per reason; a run with no
        meter at all is left unmetered (its energy stays unknown, never zero).
        """
        if run_id in self._samplers:
            return
        try:
            found = self._detect(settings=self.settings, gpus=[str(i) for i in gpus], process=pid)
        except MeterUnavailable as exc:
            log.warning("run %s is not metered: %s", run_id, exc)
            return
        # `detect_meters` already logs each skipped meter once per process.
        if not found.meters:
            return
        try:
            sampler = Sampler(found.meters, interval_s=self.interval_s).start()
        except MeterUnavailable as exc:
            log.warning("run %s is not metered: %s", run_id, exc)
            return
        self._samplers[run_id] = sampler
        self._saved_at[run_id] = time.monotonic()

    def due_snapshots(self) -> dict[int, dict[str, Any]]:
        """The series of runs not written for `SNAPSHOT_EVERY_S`, to be stored now."""
        now = time.monotonic()
        due = {}
        for run_id, sampler in self._samplers.items():
            if now - self._saved_at.get(run_id, 0.0) >= SNAPSHOT_EVERY_S:
                self._saved_at[run_id] = now
                due[run_id] = sampler.series.to_dict()
        return due

    def stop(self, run_id: int) -> EnergySeries | None:
        """Final read and the run's series; None when it was not metered by this daemon."""
        sampler = self._samplers.pop(run_id, None)
        self._saved_at.pop(run_id, None)
        return None if sampler is None else sampler.stop()

    def stop_all(self) -> None:
        for run_id in list(self._samplers):
            self.stop(run_id)


def merge_segments(stored: dict[str, Any] | None, current: dict[str, Any] | None) -> dict[str, Any]:
    """The run's `energy_series` JSON: earlier segments (from before a restart) plus `current`,
    which replaces a segment with the same start (a snapshot of the same sampler)."""
    segments = list((stored or {}).get("segments", []))
    if current is not None:
        segments = [s for s in segments if s.get("started_at") != current.get("started_at")]
        segments.append(current)
    return {"segments": segments}


def total_energy_j(series: dict[str, Any]) -> float | None:
    """Joules over all segments, or None when nothing was metered."""
    segments = series.get("segments", [])
    if not segments:
        return None
    return sum(EnergySeries.from_dict(s).energy_j for s in segments)
