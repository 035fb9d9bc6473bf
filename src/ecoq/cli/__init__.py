"""The `ecoq` command line: the only package that prints or exits.

Start-up matters (`ecoq --help` answers in about 0.1 s), so the commands import what they need
inside their bodies; the database layer (SQLAlchemy, SQLModel, Alembic) only where they write.
Exit codes: 0 ok, 2 bad usage or input (nothing written), 1 other errors.
"""

from ecoq.cli import check, jobs, meter, ops, report, simulate  # noqa: F401  (register the commands)
from ecoq.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
