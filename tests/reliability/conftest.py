"""Fixtures of the reliability suites."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def fast_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The database and data folder of a reliability suite, on tmpfs when there is one.

    A SIGKILLed process loses nothing the kernel has accepted, fsync'ed or not, so tmpfs changes
    nothing these suites check; it only spares hundreds of daemon ticks the fsyncs of SQLite's
    WAL checkpoints (each closed connection checkpoints), 2-3x faster on CI disks. Logs stay in
    `tmp_path`.
    """
    shm = Path("/dev/shm")
    root = tmp_path
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="ecoq-reliability-", dir=shm))
    monkeypatch.setenv("ECOQ_DATABASE_URL", f"sqlite:///{root / 'ecoq.db'}")
    monkeypatch.setenv("ECOQ_PATHS__DATA_DIR", str(root / "data"))
    yield root
    if root != tmp_path:
        shutil.rmtree(root, ignore_errors=True)
