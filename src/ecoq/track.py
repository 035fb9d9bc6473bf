"""`track`: meter a block of code and count its units of work, so reports can give energy per
epoch or per inference.

    from ecoq import track

    with track("train") as t:
        for epoch in range(10):
            ...
            t.mark("epoch")
        with t.window("eval"):
            ...
            t.mark("inference", n=32)
    print(t.summary())

A `Tracker` is also a decorator (``@track("train")``; a bare ``@track`` names it after the
function); each call is then one tracked block.

**Inside an ecoq job** (``ECOQ_JOB_ID`` and ``ECOQ_RUN_DIR`` set by the daemon) nothing is
metered here: the daemon meters the whole run, and a tracked block never adds to that total. The
tracker appends its start, marks, windows and end as JSON lines to ``$ECOQ_RUN_DIR/marks.jsonl``
(one ``write`` per line on an ``O_APPEND`` file, each line under 4 KiB, so lines from several
processes never interleave; times are UTC ISO-8601 with ``Z``). Marks of one unit made within a
second are written as one line whose ``n`` is their sum and ``t`` the time of the last.

**Standalone** the tracker meters itself with `ecoq.meters.detect_meters` (this process and its
children for CPU and RAM, the GPUs in ``CUDA_VISIBLE_DEVICES`` or all), using the ``[meters]``
settings, and `Tracker.summary` gives the energy, per device and per unit of work. No database.
"""

import contextlib
import json
import math
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import ContextDecorator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ecoq.errors import EcoqError, ValidationError
from ecoq.meters import EnergyReading

if TYPE_CHECKING:
    from ecoq.meters.sampler import Sampler

__all__ = ["TrackSummary", "Tracker", "WindowSummary", "track"]

MARKS_FILE = "marks.jsonl"
#: Seconds over which marks of one unit are summed into one line of marks.jsonl.
FLUSH_S = 1.0
_MAX_LABEL = 200  # characters; keeps every line far below PIPE_BUF (4096 bytes)

F = TypeVar("F", bound=Callable[..., Any])


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _label(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()[:_MAX_LABEL]


@dataclass(frozen=True)
class WindowSummary:
    """A labelled sub-window: its UTC span and, standalone, its energy in joules."""

    label: str
    started_at: datetime
    ended_at: datetime
    energy_j: float | None

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class TrackSummary:
    """What a tracked block did.

    Attributes:
        name: the tracker's name.
        started_at, ended_at: UTC; `ended_at` is None while the block runs.
        duration_s: seconds so far.
        units: unit -> how many were marked (``epoch`` -> 10).
        windows: the finished sub-windows, in the order they ended.
        job_id: the ecoq job this ran in; its energy is then the run's, not measured here.
        energy_j: joules of all meters (standalone); None inside a job.
        readings: joules per device, each with its method (standalone).
        skipped: why meters that were looked for are missing (standalone).
    """

    name: str
    started_at: datetime
    ended_at: datetime | None
    duration_s: float
    units: Mapping[str, float]
    windows: tuple[WindowSummary, ...] = ()
    job_id: str | None = None
    energy_j: float | None = None
    readings: tuple[EnergyReading, ...] = ()
    skipped: tuple[str, ...] = ()
    energy_per_unit_j: Mapping[str, float] = field(init=False)

    def __post_init__(self) -> None:
        per_unit = {}
        if self.energy_j is not None:
            per_unit = {u: self.energy_j / n for u, n in self.units.items() if n > 0}
        object.__setattr__(self, "energy_per_unit_j", per_unit)

    def __str__(self) -> str:
        counts = ", ".join(f"{n:g} {unit}" for unit, n in self.units.items())
        head = f"{self.name}: {self.duration_s:.1f} s" + (f", {counts}" if counts else "")
        if self.energy_j is None:
            return f"{head}; energy is metered by ecoq job {self.job_id}'s run"
        methods = ", ".join(f"{r.device} {r.energy_j:.1f} J ({r.method})" for r in self.readings)
        per = ", ".join(f"{e:.3g} J/{u}" for u, e in self.energy_per_unit_j.items())
        return f"{head}; {self.energy_j:.1f} J: {methods}" + (f"; {per}" if per else "")


class Tracker(ContextDecorator):
    """A tracked block: use with ``with`` or as a decorator; see the module docstring.

    Args:
        name: the block's name (default ``"track"``).
        meters: meter names for standalone metering (`ecoq.meters.METER_NAMES`), which must
            then work; None: auto-detect.
        interval_s: standalone sampling interval in seconds; None: ``meters.interval_s``.
        env: the environment that tells whether this runs in an ecoq job (default os.environ).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        meters: list[str] | None = None,
        interval_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = _label(name, "the tracker's name") if name is not None else "track"
        self._meter_names = meters
        self._interval_s = interval_s
        self._env = env
        self._lock = threading.RLock()
        self._active = False
        self._started_at: datetime | None = None
        self._ended_at: datetime | None = None
        self._t0 = 0.0
        self._units: dict[str, float] = {}
        self._windows: list[WindowSummary] = []
        self._job_id: str | None = None
        self._fd: int | None = None
        self._pending: dict[str, float] = {}
        self._pending_t: datetime | None = None
        self._flushed_at = 0.0
        self._sampler: Sampler | None = None
        self._skipped: tuple[str, ...] = ()
        self._final: TrackSummary | None = None

    def __enter__(self) -> "Tracker":
        with self._lock:
            if self._active:
                raise EcoqError(f"tracker {self.name!r} is already active; nest another tracker")
            env = os.environ if self._env is None else self._env
            self._units, self._windows, self._final = {}, [], None
            self._pending, self._pending_t = {}, None
            self._ended_at = None
            job_id, run_dir = env.get("ECOQ_JOB_ID"), env.get("ECOQ_RUN_DIR")
            if job_id and run_dir:
                self._job_id = job_id
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(os.path.join(run_dir, MARKS_FILE), flags, 0o600)
            else:
                self._job_id = None
                self._sampler = self._start_sampler()
            self._started_at, self._t0 = datetime.now(UTC), time.monotonic()
            self._flushed_at = self._t0
            self._active = True
            self._write({"kind": "start", "pid": os.getpid()}, self._started_at)
        return self

    def _start_sampler(self) -> "Sampler":
        from ecoq.config import load_settings
        from ecoq.meters import detect_meters
        from ecoq.meters.process import ProcessTree
        from ecoq.meters.sampler import Sampler

        cfg = load_settings().meters
        found = detect_meters(
            self._meter_names, settings=cfg, process=ProcessTree(os.getpid()), env=self._env
        )
        self._skipped = found.skipped
        interval_s = self._interval_s if self._interval_s is not None else cfg.interval_s
        return Sampler(found.meters, interval_s=interval_s).start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        with self._lock:
            if not self._active:
                return
            self._ended_at = datetime.now(UTC)
            try:
                self._flush()
                error = exc_type.__name__ if exc_type is not None else None
                self._write({"kind": "end", "error": error}, self._ended_at)
            finally:
                self._active = False
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                try:
                    if self._sampler is not None:
                        self._sampler.stop()  # the final reading
                finally:
                    self._final = self._summary()
                    self._sampler = None

    def mark(self, unit: str, n: float = 1) -> None:
        """Count `n` units of work done (``t.mark("inference", n=32)``).

        Raises:
            ValidationError: `unit` is empty or `n` is not a finite number > 0.
            EcoqError: the tracker is not active.
        """
        unit = _label(unit, "a mark's unit")
        if (
            isinstance(n, bool)
            or not isinstance(n, int | float)
            or not (math.isfinite(n) and n > 0)
        ):
            raise ValidationError(f"mark {unit!r}: n must be a finite number > 0, got {n!r}")
        with self._lock:
            self._require_active("mark")
            self._units[unit] = self._units.get(unit, 0) + n
            if self._fd is None:
                return
            self._pending[unit] = self._pending.get(unit, 0) + n
            self._pending_t = datetime.now(UTC)
            if time.monotonic() - self._flushed_at >= FLUSH_S:
                self._flush()

    @contextlib.contextmanager
    def window(self, label: str) -> Iterator[None]:
        """A labelled sub-window (``with t.window("eval"):``); windows may nest.

        Raises:
            ValidationError: `label` is empty.
            EcoqError: the tracker is not active.
        """
        label = _label(label, "a window's label")
        with self._lock:
            self._require_active("window")
            start, start_j = datetime.now(UTC), self._energy_now()
        try:
            yield
        finally:
            with self._lock:
                end, end_j = datetime.now(UTC), self._energy_now()
                energy = None if start_j is None or end_j is None else end_j - start_j
                self._windows.append(WindowSummary(label, start, end, energy))
                self._flush()
                self._write({"kind": "window", "label": label, "start": _iso(start)}, end)

    def summary(self) -> TrackSummary:
        """The summary: final after the block, so far while it runs.

        Raises:
            EcoqError: the tracker was never entered.
        """
        with self._lock:
            if self._final is not None and not self._active:
                return self._final
            if self._started_at is None:
                raise EcoqError(f"tracker {self.name!r} has not run yet")
            if self._sampler is not None:
                self._sampler.sample()
            return self._summary()

    def _summary(self) -> TrackSummary:
        assert self._started_at is not None
        end = self._ended_at
        if end is None:
            duration_s = time.monotonic() - self._t0
        else:
            duration_s = (end - self._started_at).total_seconds()
        readings: tuple[EnergyReading, ...] = ()
        energy_j = None
        if self._job_id is None and self._sampler is not None:
            readings = self._sampler.series.readings()
            energy_j = sum(r.energy_j for r in readings)
        return TrackSummary(
            name=self.name,
            started_at=self._started_at,
            ended_at=end,
            duration_s=duration_s,
            units=dict(self._units),
            windows=tuple(self._windows),
            job_id=self._job_id,
            energy_j=energy_j,
            readings=readings,
            skipped=self._skipped,
        )

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise EcoqError(
                f"{what}() on tracker {self.name!r} outside its block; call it inside "
                "`with track(...) as t:` or the decorated function"
            )

    def _energy_now(self) -> float | None:
        if self._sampler is None:
            return None
        return sum(self._sampler.sample())

    def _flush(self) -> None:
        if self._pending and self._pending_t is not None:
            for unit, n in self._pending.items():
                self._write({"kind": "mark", "unit": unit, "n": n}, self._pending_t)
        self._pending, self._pending_t = {}, None
        self._flushed_at = time.monotonic()

    def _write(self, record: dict[str, Any], when: datetime) -> None:
        if self._fd is None:
            return
        line = {"t": _iso(when), "name": self.name, **record}
        os.write(self._fd, (json.dumps(line, ensure_ascii=False) + "\n").encode())


@overload
def track(fn: F, /) -> F: ...
@overload
def track(
    name: str | None = None,
    /,
    *,
    meters: list[str] | None = None,
    interval_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Tracker: ...
def track(
    name: Any = None,
    /,
    *,
    meters: list[str] | None = None,
    interval_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Any:
    """A `Tracker` (``with track("train") as t:``, ``@track("train")``), or, given a function
    (bare ``@track``), that function tracked under its own name."""
    if callable(name):
        return Tracker(getattr(name, "__qualname__", "track"))(name)
    return Tracker(name, meters=meters, interval_s=interval_s, env=env)


class _CallableModule(types.ModuleType):
    """Importing this submodule rebinds the package attribute ``ecoq.track`` to the module, so
    ``from ecoq import track`` can yield the module instead of the function; calling the
    module therefore calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return track(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
