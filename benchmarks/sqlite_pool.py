"""What a SQLite transaction costs the daemon with `NullPool` (a connection per transaction)
against a pool that keeps one connection open, and what happens to the `-wal` file.

Run: `python benchmarks/sqlite_pool.py [--transactions 400] [--dir /path]` from the repository
root with the venv's Python. Prints a table; writes nothing else (the database lives in a
temporary folder under `--dir`, default the system's temporary folder: pass a folder on the disk
the daemon would use, since tmpfs hides the fsyncs that are the point).

Each configuration gets a fresh database at the current schema (`ecoq.db.open_engine`), then
runs a daemon-like loop: `--transactions` small write transactions (`BEGIN IMMEDIATE`, update
one row, insert one row, commit), each through `engine.begin()` as `Queue` does. Configurations:

- `NullPool` (ecoq before this change): every transaction opens a connection (pragmas, schema
  read) and closes it; the close of the last connection checkpoints the WAL and deletes it.
- `QueuePool(1)`: one connection kept open (what `ecoq.db.make_engine` now builds for a file).
- each of the two again while another process keeps a connection of its own open and reads
  every 20 ms (a CLI or a second engine): then no close is the last one.

Reported: median and 90th percentile time per transaction, the `-wal` file's largest size during
the loop and its size at the end, and the cost of one CLI-like command (a fresh engine, one
transaction, dispose) while the daemon's engine is open.
"""

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool, QueuePool

from ecoq.db import SQLITE_BUSY_TIMEOUT_MS, _sqlite_begin_immediate, _sqlite_on_connect, open_engine


def engine_with(url: str, pool: str) -> Engine:
    """An engine set up as `ecoq.db.make_engine` sets one up, with the pool asked for."""
    kwargs: dict[str, Any] = (
        {"poolclass": NullPool}
        if pool == "null"
        else {"poolclass": QueuePool, "pool_size": 1, "max_overflow": -1}
    )
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        **kwargs,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin_immediate)
    return engine


def reader(url: str, stop: Any) -> None:
    """Another process that keeps a connection open and reads now and then."""
    engine = engine_with(url, "queue")
    with engine.connect() as conn:
        while not stop.is_set():
            conn.execute(text("SELECT count(*) FROM bench")).scalar()
            conn.rollback()
            time.sleep(0.02)
    engine.dispose()


def wal_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def loop(engine: Engine, db: Path, n: int) -> tuple[list[float], int]:
    times: list[float] = []
    biggest = 0
    for i in range(n):
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("UPDATE beat SET at = :i WHERE id = 1"), {"i": i})
            conn.execute(text("INSERT INTO bench (v) VALUES (:v)"), {"v": "x" * 200})
        times.append(time.perf_counter() - t0)
        biggest = max(biggest, wal_size(db))
    return times, biggest


def cli_cost(url: str, rounds: int) -> float:
    """Median seconds for a fresh engine, one write transaction and dispose (an `ecoq submit`'s
    database part, without the imports)."""
    spent = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        engine = engine_with(url, "null")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench (v) VALUES ('cli')"))
        engine.dispose()
        spent.append(time.perf_counter() - t0)
    return statistics.median(spent)


def run(where: Path, pool: str, with_reader: bool, n: int) -> dict[str, float]:
    db = where / f"{pool}-{int(with_reader)}.db"
    url = f"sqlite:///{db}"
    open_engine(url).dispose()
    setup = engine_with(url, "null")
    with setup.begin() as conn:
        conn.execute(text("CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("CREATE TABLE beat (id INTEGER PRIMARY KEY, at INTEGER)"))
        conn.execute(text("INSERT INTO beat VALUES (1, 0)"))
    setup.dispose()
    stop = multiprocessing.get_context("spawn").Event()
    proc = None
    if with_reader:
        proc = multiprocessing.get_context("spawn").Process(target=reader, args=(url, stop))
        proc.start()
        time.sleep(1.0)
    engine = engine_with(url, pool)
    try:
        loop(engine, db, 20)  # warm up
        times, biggest = loop(engine, db, n)
        end_wal = wal_size(db)
        cli_s = cli_cost(url, 20)
    finally:
        engine.dispose()
        stop.set()
        if proc is not None:
            proc.join()
    times.sort()
    return {
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * times[int(0.9 * len(times))],
        "wal_max_kb": biggest / 1024,
        "wal_end_kb": end_wal / 1024,
        "cli_ms": 1000 * cli_s,
    }


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=400)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    out(f"{os.uname().sysname} {os.cpu_count()} CPUs, {args.transactions} transactions each")
    out(
        f"{'pool':<14}{'other process':<15}{'median ms':>10}{'p90 ms':>9}"
        f"{'wal max kB':>12}{'wal end kB':>12}{'CLI ms':>9}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ecoq-pool-") as tmp:
        for with_reader in (False, True):
            for pool in ("null", "queue"):
                r = run(Path(tmp), pool, with_reader, args.transactions)
                name = "NullPool" if pool == "null" else "QueuePool(1)"
                out(
                    f"{name:<14}{'reading' if with_reader else 'none':<15}"
                    f"{r['median_ms']:>10.2f}{r['p90_ms']:>9.2f}{r['wal_max_kb']:>12.0f}"
                    f"{r['wal_end_kb']:>12.0f}{r['cli_ms']:>9.2f}"
                )


if __name__ == "__main__":
    main()
