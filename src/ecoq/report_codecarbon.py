"""CodeCarbon's ``emissions.csv`` for ecoq runs (`ecoq report --codecarbon`), so dashboards that
read CodeCarbon's file read ecoq's runs too. Pure: returns text."""

import csv
import io
from datetime import UTC, datetime
from typing import Any

from ecoq.report_sql import run_filter
from ecoq.reports import J_PER_KWH
from ecoq.views import Reader

__all__ = ["CODECARBON_COLUMNS", "codecarbon_rows", "render_codecarbon"]

# CodeCarbon's emissions.csv columns, in its order: the fields of
# `codecarbon.output_methods.emissions_data.EmissionsData` (mlco2/codecarbon, file
# codecarbon/output_methods/emissions_data.py at commit 1188739; `FileOutput` writes
# `EmissionsData.values` in field order). Units as CodeCarbon's: duration s, emissions kg CO2e,
# emissions_rate kg/s, power W, energy kWh.
CODECARBON_COLUMNS = (
    "timestamp",
    "project_name",
    "run_id",
    "experiment_id",
    "duration",
    "emissions",
    "emissions_rate",
    "cpu_power",
    "gpu_power",
    "ram_power",
    "cpu_energy",
    "gpu_energy",
    "ram_energy",
    "energy_consumed",
    "country_name",
    "country_iso_code",
    "region",
    "cloud_provider",
    "cloud_region",
    "os",
    "python_version",
    "codecarbon_version",
    "cpu_count",
    "cpu_model",
    "gpu_count",
    "gpu_model",
    "longitude",
    "latitude",
    "ram_total_size",
    "tracking_mode",
    "on_cloud",
    "pue",
)
_RUNS_SQL = """
SELECT r.id AS run_id, r.job_id, j.project, COALESCE(r.intensity_zone, j.zone) AS zone,
       r.started_at, r.finished_at, r.energy_j, r.facility_energy_j, r.pue, r.realized_g,
       r.cpu_energy_j, r.gpu_energy_j, r.ram_energy_j, r.gpu_indices
FROM runs r JOIN jobs j ON j.id = r.job_id
WHERE {where}
ORDER BY r.finished_at, r.id
"""


def _time(value: Any) -> datetime:
    """UTC: naive from SQLite's text (which is UTC), aware from other databases."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value
    return datetime.fromisoformat(value)


def _uuid(kind: int, number: int) -> str:
    """A fixed UUID per ecoq run (kind 8) or job (kind 9); CodeCarbon's ids are UUIDs."""
    return f"ec0a0000-0000-4000-{kind}000-{number:012x}"


def _count(gpus: Any) -> int:
    if isinstance(gpus, str):  # JSON text "[0, 1]" from SQLite
        return 0 if gpus.strip() in ("", "[]") else gpus.count(",") + 1
    return len(gpus or [])


def _values(r: dict[str, Any]) -> list[Any]:
    """One run's row, in `CODECARBON_COLUMNS` order (None: unknown, written empty)."""
    finished = _time(r["finished_at"])
    duration = (finished - _time(r["started_at"])).total_seconds()
    kg = r["realized_g"] / 1000 if r["realized_g"] is not None else None
    energy = r["facility_energy_j"] if r["facility_energy_j"] is not None else r["energy_j"]
    cpu, gpu, ram = (r[f"{k}_energy_j"] or 0.0 for k in ("cpu", "gpu", "ram"))
    per_s = 1 / duration if duration > 0 else 0.0
    return [
        finished.isoformat(timespec="seconds")[:19],  # timestamp, %Y-%m-%dT%H:%M:%S
        r["project"] or "ecoq",  # project_name
        _uuid(8, r["run_id"]),  # run_id
        _uuid(9, r["job_id"]),  # experiment_id
        duration,  # s
        kg,  # emissions, kg CO2e
        kg * per_s if kg is not None else None,  # emissions_rate, kg/s
        cpu * per_s,  # cpu_power, W
        gpu * per_s,
        ram * per_s,
        cpu / J_PER_KWH,  # cpu_energy, kWh
        gpu / J_PER_KWH,
        ram / J_PER_KWH,
        energy / J_PER_KWH if energy is not None else None,  # energy_consumed, kWh
        None,  # country_name
        None,  # country_iso_code
        r["zone"],  # region
        None,  # cloud_provider
        None,  # cloud_region
        None,  # os
        None,  # python_version
        None,  # codecarbon_version
        None,  # cpu_count
        None,  # cpu_model
        _count(r["gpu_indices"]),  # gpu_count
        None,  # gpu_model
        None,  # longitude
        None,  # latitude
        None,  # ram_total_size
        "process",  # tracking_mode
        "N",  # on_cloud
        r["pue"] or 1.0,  # pue
    ]


def codecarbon_rows(
    reader: Reader, *, since: datetime, until: datetime, uid: int | None = None
) -> list[dict[str, Any]]:
    """One CodeCarbon row per run that finished in `[since, until)`, oldest first (with `uid`,
    only runs of jobs whose ``jobs.uid`` is `uid`).

    ``run_id`` and ``experiment_id`` are fixed UUIDs made from ecoq's run and job ids;
    ``energy_consumed`` is facility energy (IT × PUE), so that ``emissions`` =
    ``energy_consumed`` × intensity; the per-device energies and powers are IT energy; the zone
    goes in ``region``; fields ecoq does not know are None (written empty).
    """
    return [
        dict(zip(CODECARBON_COLUMNS, v, strict=True))
        for v in _run_values(reader, since, until, uid)
    ]


def _run_values(
    reader: Reader, since: datetime, until: datetime, uid: int | None
) -> list[list[Any]]:
    where, params = run_filter(reader, since=since, until=until, uid=uid)
    return [_values(r) for r in reader.query(_RUNS_SQL.format(where=where), params)]


def render_codecarbon(
    reader: Reader | None, *, since: datetime, until: datetime, uid: int | None = None
) -> tuple[str, int]:
    """CodeCarbon's ``emissions.csv`` (its header, then one line per run) and the run count;
    without a database (`reader` None), the header alone. With `uid`, only the runs of jobs
    whose ``jobs.uid`` is `uid`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # writes None as an empty field
    writer.writerow(CODECARBON_COLUMNS)
    rows = _run_values(reader, since, until, uid) if reader is not None else []
    writer.writerows(rows)
    return out.getvalue(), len(rows)
