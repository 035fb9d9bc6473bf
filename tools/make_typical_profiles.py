"""Generate ecoq's bundled typical-week carbon-intensity profiles.

Reads the Electricity Maps 2022 hourly life-cycle (LCA) average intensity for 123 zones (one
`datetime_utc` column, hour starts in UTC, then one column per zone, gCO2eq/kWh) and writes, per
zone, the mean for each UTC hour of the week (0 = Monday 00:00 UTC ... 167 = Sunday 23:00 UTC),
rounded to 1 decimal place. The output is deterministic: zones sorted, fixed formatting, `\\n`
line endings.

Usage (from the repository root):

    python tools/make_typical_profiles.py \\
        [--source ../shared/data/electricitymaps/zones-123-2022-hourly-lca.csv] \\
        [--out src/ecoq/forecasting/data/typical_week_2022.csv]

Data: Electricity Maps (electricitymaps.com), via Sukprasert et al. 2024; ODbL 1.0 (database),
DbCL 1.0 (contents). See src/ecoq/forecasting/data/README.md.
"""

import argparse
import csv
import math
import sys
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared/data/electricitymaps/zones-123-2022-hourly-lca.csv"
DEFAULT_OUT = REPO / "src/ecoq/forecasting/data/typical_week_2022.csv"
HOURS_PER_WEEK = 168
ATTRIBUTION = (
    "# Electricity Maps (electricitymaps.com), via Sukprasert et al. 2024. "
    "ODbL 1.0 (database) / DbCL 1.0 (contents): see LICENSE-ODbL.txt and README.md. "
    "Mean 2022 life-cycle average intensity per UTC hour of week (v0 = Monday 00:00 UTC), "
    "gCO2eq/kWh."
)


def hour_of_week(t: datetime) -> int:
    """0 = Monday 00:00 ... 167 = Sunday 23:00 (of whatever clock `t` is in; here UTC)."""
    return t.weekday() * 24 + t.hour


def typical_week(source: Path) -> dict[str, list[float]]:
    """Mean intensity per hour of week for every zone column of `source`.

    Raises:
        SystemExit: the source has a gap, a repeated hour or an empty/non-numeric value.
    """
    with source.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[0] != "datetime_utc":
            sys.exit(f"{source}: first column is {header[0]!r}, expected 'datetime_utc'")
        zones = header[1:]
        values: dict[str, list[list[float]]] = {
            z: [[] for _ in range(HOURS_PER_WEEK)] for z in zones
        }
        previous: datetime | None = None
        for row in reader:
            t = datetime.fromisoformat(row[0])
            if previous is not None and t - previous != timedelta(hours=1):
                sys.exit(f"{source}: line {reader.line_num}: {row[0]} does not follow {previous}")
            previous = t
            how = hour_of_week(t)
            for zone, raw in zip(zones, row[1:], strict=True):
                value = float(raw)
                if not math.isfinite(value) or value < 0:
                    sys.exit(f"{source}: line {reader.line_num}: {zone} value {raw!r} is not valid")
                values[zone][how].append(value)
    return {z: [math.fsum(v) / len(v) for v in values[z]] for z in sorted(zones)}


def write_profiles(profiles: dict[str, list[float]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        f.write(ATTRIBUTION + "\n")
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["zone", *(f"v{h}" for h in range(HOURS_PER_WEEK))])
        for zone, week in profiles.items():
            writer.writerow([zone, *(f"{v:.1f}" for v in week)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    profiles = typical_week(args.source)
    write_profiles(profiles, args.out)
    print(f"wrote {len(profiles)} zones x {HOURS_PER_WEEK} hours to {args.out}")


if __name__ == "__main__":
    main()
