"""CLI start-up time: `ecoq --help` and `ecoq queue` on an empty database, against `python -c pass`.

Run: `python benchmarks/startup.py [--runs 21]` from the repository root with the venv's Python.
PYTHONDONTWRITEBYTECODE is removed from the children's environment and one warm-up run is made
first, so modules are loaded from their compiled caches as on users' machines. Prints a table of
medians and writes the "CLI start-up" section of benchmarks/RESULTS.md. The issue's targets:
`ecoq --help` <= 120 ms and `ecoq queue` (empty database) <= 500 ms median on a 2-core machine.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

SECTION = "## CLI start-up"


def measure(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    subprocess.run(argv, env=env, check=True, capture_output=True)  # warm-up: compile caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    ecoq = str(Path(sys.executable).with_name("ecoq"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOQ_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            ECOQ_PATHS__DATA_DIR=tmp,
            ECOQ_DATABASE_URL=f"sqlite:///{tmp}/ecoq.db",
            XDG_CONFIG_HOME=f"{tmp}/config",
        )
        # An empty database at the current schema (as after the first `ecoq submit`).
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from ecoq.db import open_engine; open_engine(sys.argv[1])",
                env["ECOQ_DATABASE_URL"],
            ],
            env=env,
            check=True,
        )
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("ecoq --help", [ecoq, "--help"], 0.120),
            ("ecoq queue (empty database)", [ecoq, "queue"], 0.500),
        ]
        rows = []
        base = None
        for label, argv, target in cases:
            median = statistics.median(measure(argv, env, args.runs))
            base = base or median
            rows.append((label, median, median / base, target))

    lines = [
        f"Command: `python benchmarks/startup.py --runs {args.runs}` (median of {args.runs} runs "
        "after one warm-up, PYTHONDONTWRITEBYTECODE unset so compiled caches are used).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, measured {time.strftime('%Y-%m-%d')}.",
        "",
        "| command | median | × `python -c pass` | target | ok |",
        "|---|---|---|---|---|",
    ]
    for label, median, ratio, target in rows:
        ok = "" if target is None else ("yes" if median <= target else "NO")
        tgt = "" if target is None else f"≤ {target * 1000:.0f} ms"
        lines.append(f"| `{label}` | {median * 1000:.0f} ms | {ratio:.1f} | {tgt} | {ok} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
