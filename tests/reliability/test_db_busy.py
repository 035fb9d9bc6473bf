"""A busy database: while another process holds SQLite's write lock, a daemon's tick waits for it
(the 60 s busy timeout) instead of failing, then does its work; nothing is lost or doubled."""

import os
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.crashkit import Daemons, Observer, drain, open_queue, submit_jobs


@pytest.mark.slow
def test_a_tick_waits_for_a_busy_database_then_does_its_work(
    tmp_path: Path, fast_dir: Path
) -> None:
    marks = fast_dir / "marks"
    marks.mkdir()
    observer = Observer(db=fast_dir / "ecoq.db", data_dir=fast_dir / "data", marks=marks)
    daemons = Daemons(tmp_path, {"ECOQ_PLANNER__MIN_SAVING": "1"})
    queue = open_queue(os.environ["ECOQ_DATABASE_URL"])
    ids = submit_jobs(queue, marks, random.Random(3), 3)

    holder = sqlite3.connect(observer.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer (a long `ecoq submit`, a backup) holds it
    held_s = 1.5
    release = threading.Timer(held_s, lambda: holder.execute("COMMIT"))
    began = time.monotonic()
    release.start()
    try:
        assert daemons.run("daemon", "--once") == 0, daemons.log.read_text()[-3000:]
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - began >= held_s - 0.1  # it waited for the lock ...
    assert {queue.get(i).state for i in ids} <= {"running", "succeeded"}  # ... then started them
    drain(daemons, observer)
    assert observer.check_final() == {"succeeded": 3}
