"""Seeding a real database through the models: jobs with finished runs, energy series, forecasts.

Used by the accounting, reconciliation, report and CLI report tests.
"""

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from ecoq.db import session
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.meters import MeterDescription
from ecoq.meters.sampler import EnergySeries
from ecoq.models import Job, Run

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)  # a Monday


def at(hours: float) -> datetime:
    """T0 plus `hours`."""
    return T0 + timedelta(hours=hours)


def series(
    start: datetime,
    meters: Sequence[tuple[str, str]],
    samples: Sequence[tuple[float, Sequence[float]]],
) -> dict[str, Any]:
    """A stored `energy_series` with one segment: `meters` as (device, method), `samples` as
    (seconds after start, cumulative joules per meter); the first sample should be (0, zeros)."""
    s = EnergySeries([MeterDescription(d, m, "test") for d, m in meters], start)  # type: ignore[arg-type]
    for t_s, values in samples:
        s.append(t_s, list(values))
    return {"segments": [s.to_dict()]}


def flat_series(
    start: datetime,
    hours: float,
    energy_j: float,
    *,
    method: str = "counter",
    steps: int = 4,
    device: str = "gpu:0",
) -> dict[str, Any]:
    """Energy drawn evenly over `hours` from `start`, sampled in `steps` intervals."""
    dt = hours * 3600 / steps
    samples = [(i * dt, [energy_j * i / steps]) for i in range(steps + 1)]
    return series(start, [(device, method)], samples)


def forecast(
    zone: str,
    start: datetime,
    values: Sequence[float],
    *,
    step_h: float = 1.0,
    source: str = "file",
    signal: str = "average",
    realized: bool = False,
    issued_at: datetime | None = None,
    label: str | None = None,
) -> Forecast:
    """An hourly (by default) forecast or realized series."""
    step = timedelta(hours=step_h)
    return Forecast(
        zone=zone,
        signal=signal,  # type: ignore[arg-type]
        source=source,
        label=label or f"{source} {'realized' if realized else 'forecast'}",
        issued_at=issued_at or start,
        step=step,
        points=tuple(IntensityPoint(start + i * step, v) for i, v in enumerate(values)),
        realized=realized,
    )


def add_run(
    engine: Engine,
    *,
    submitted_at: datetime,
    started_at: datetime | None,
    finished_at: datetime | None,
    energy_series: dict[str, Any] | None = None,
    energy_j: float | None = None,
    zone: str = "DE",
    project: str | None = "proj",
    user: str = "alice",
    name: str = "train",
    gpus: int = 0,
    plan_signal: str | None = "average",
    plan_source: str | None = "file",
    planned_start: datetime | None = None,
    deadline: datetime | None = None,
    not_before: datetime | None = None,
    run_dir: str = "/nonexistent",
    worker: str = "box:1",
    state: str = "succeeded",
    late: bool = False,
    duration_s: int = 3600,
    forecast_issued_at: datetime | None = None,
) -> tuple[int, int]:
    """A job with one run, stored through the models. Returns (job id, run id)."""
    if energy_j is None and energy_series is not None:
        energy_j = sum(EnergySeries.from_dict(seg).energy_j for seg in energy_series["segments"])
    job = Job(
        name=name,
        project=project,
        user=user,
        uid=os.getuid(),
        command=["/bin/true"],
        cwd="/",
        env={},
        zone=zone,
        gpus=gpus,
        submitted_at=submitted_at,
        not_before=not_before,
        deadline=deadline or submitted_at + timedelta(hours=24),
        duration_s=duration_s,
        duration_source="user",
        state=state,  # type: ignore[arg-type]
        late=late,
        planned_start=planned_start or started_at,
        plan_signal=plan_signal,
        plan_source=plan_source,
        plan_label=plan_source,
        forecast_issued_at=forecast_issued_at,
        worker=worker,
        started_at=started_at,
        finished_at=finished_at,
        exit_code=0,
        energy_j=energy_j,
        updated_at=finished_at or submitted_at,
    )
    with session(engine) as s:
        s.add(job)
        s.commit()
        s.refresh(job)
        assert job.id is not None
        run = Run(
            job_id=job.id,
            worker=worker,
            host="box",
            run_dir=run_dir,
            gpu_indices=list(range(gpus)),
            claimed_at=started_at or submitted_at,
            started_at=started_at,
            finished_at=finished_at,
            exit_code=0,
            energy_j=energy_j,
            energy_series=energy_series,
        )
        s.add(run)
        s.commit()
        s.refresh(run)
        assert run.id is not None
        return job.id, run.id


def _marks(run_dir: Any, unit: str, n: float) -> str:
    import json
    from pathlib import Path

    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    record = {"t": "2026-11-02T12:30:00Z", "name": "t", "kind": "mark", "unit": unit, "n": n}
    (path / "marks.jsonl").write_text(json.dumps(record) + "\n")
    return str(path)


def seed_demo(engine: Engine, run_root: Any) -> dict[str, int]:
    """Four accounted jobs (ids by name), hand-computable:

    - ``train`` (vision, DE, average): submitted 08:00, ran 12:00-15:00, 3 kWh GPU counter, 2 GPUs,
      10 epochs; realized 320 g/kWh outside 11:00-16:00, 120 inside: 360 g realized, 960 g at
      submission, 600 g avoided; final.
    - ``serve`` (nlp, DE, average): day 2 08:00-09:00, 0.5 kWh CPU estimate, 1000 inferences, no
      realized values: forecast 300: 150 g, 0 avoided; provisional; finished after its deadline.
    - ``mjob`` (vision, CAISO_NORTH, marginal): submitted 01:00, ran 03:00-05:00, 2 kWh; forecast
      500 except 400 from 03:00 to 05:00: 800 g realized, 1000 g at submission; provisional.
    - ``idle`` (nlp, DE): unmetered.
    """
    from ecoq.scheduler.forecasts import ForecastStore
    from ecoq.scheduler.reconcile import account_run

    store = ForecastStore(engine, clock=lambda: at(0))
    de = [100.0 if 11 <= h % 24 < 16 else 300.0 for h in range(48)]
    store.save(forecast("DE", at(0), de, issued_at=at(0)))
    store.save(forecast("DE", at(0), [v + 20 for v in de[:24]], realized=True, issued_at=at(24)))
    moer = [400.0 if 3 <= h < 5 else 500.0 for h in range(24)]
    store.save(
        forecast("CAISO_NORTH", at(0), moer, source="watttime", signal="marginal", issued_at=at(0))
    )
    ids: dict[str, int] = {}
    ids["train"], run = add_run(
        engine,
        name="train",
        project="vision",
        submitted_at=at(8),
        started_at=at(12),
        finished_at=at(15),
        energy_series=flat_series(at(12), 3.0, 3 * 3.6e6, steps=6),
        gpus=2,
        run_dir=_marks(run_root / "train", "epoch", 10),
        forecast_issued_at=at(0),
    )
    account_run(engine, store, run, now=at(40))
    ids["serve"], run = add_run(
        engine,
        name="serve",
        project="nlp",
        user="bob",
        submitted_at=at(32),
        started_at=at(32),
        finished_at=at(33),
        deadline=at(32.5),
        energy_series=flat_series(at(32), 1.0, 0.5 * 3.6e6, method="estimate", device="cpu"),
        run_dir=_marks(run_root / "serve", "inference", 1000),
    )
    account_run(engine, store, run, now=at(40))
    ids["mjob"], run = add_run(
        engine,
        name="mjob",
        project="vision",
        zone="CAISO_NORTH",
        submitted_at=at(1),
        started_at=at(3),
        finished_at=at(5),
        energy_series=flat_series(at(3), 2.0, 2 * 3.6e6),
        plan_signal="marginal",
        plan_source="watttime",
        forecast_issued_at=at(0),
    )
    account_run(engine, store, run, now=at(40))
    ids["idle"], run = add_run(
        engine,
        name="idle",
        project="nlp",
        submitted_at=at(20),
        started_at=at(20),
        finished_at=at(21),
    )
    account_run(engine, store, run, now=at(40))
    return ids
