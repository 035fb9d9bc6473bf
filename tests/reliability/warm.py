"""Imported by the crash harness's fork server only: one clean `ecoq daemon --once` on a
throwaway database, so every daemon forked from the server starts with ecoq's lazy imports done
and SQLAlchemy's mappers configured (as a long-running daemon would be after its first tick)."""

import contextlib
import io
import os
import shutil
import tempfile


def _warm() -> None:
    saved = dict(os.environ)
    where = tempfile.mkdtemp(prefix="ecoq-warm-")
    try:
        for name in [n for n in os.environ if n.startswith("ECOQ_")]:
            del os.environ[name]
        os.environ.update(
            ECOQ_DATABASE_URL=f"sqlite:///{where}/ecoq.db",
            ECOQ_PATHS__DATA_DIR=f"{where}/data",
            XDG_CONFIG_HOME=f"{where}/config",
            XDG_DATA_HOME=f"{where}/share",
        )
        from ecoq.cli import app

        quiet = io.StringIO()
        with (
            contextlib.redirect_stderr(quiet),
            contextlib.redirect_stdout(quiet),
            contextlib.suppress(SystemExit),
        ):
            app(["daemon", "--once"], prog_name="ecoq")
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(where, ignore_errors=True)


_warm()
