"""Alembic migrations for ecoq's database, run programmatically by `ecoq.db`.

`HEAD` must name the newest revision in `versions/`: read-only commands compare it with the
database's `alembic_version` without importing Alembic (a test keeps the two in step).
"""

HEAD = "0008"
