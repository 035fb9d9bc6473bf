"""Accounting: each run's emissions with their provenance, the job's totals, marked units.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _run_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("accounting", sa.String(length=16), nullable=True),
        sa.Column("accounted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("intensity_zone", sa.String(), nullable=True),
        sa.Column("accounting_signal", sa.String(), nullable=True),
        sa.Column("intensity_source", sa.String(), nullable=True),
        sa.Column("intensity_kind", sa.String(), nullable=True),
        sa.Column("intensity_label", sa.String(), nullable=True),
        sa.Column("energy_method", sa.String(), nullable=True),
        sa.Column("estimate_energy_j", sa.Float(), nullable=True),
        sa.Column("cpu_energy_j", sa.Float(), nullable=True),
        sa.Column("gpu_energy_j", sa.Float(), nullable=True),
        sa.Column("ram_energy_j", sa.Float(), nullable=True),
        sa.Column("meter_errors", sa.Integer(), nullable=True),
        sa.Column("pue", sa.Float(), nullable=True),
        sa.Column("facility_energy_j", sa.Float(), nullable=True),
        sa.Column("realized_g", sa.Float(), nullable=True),
        sa.Column("counterfactual_g", sa.Float(), nullable=True),
        sa.Column("avoided_g", sa.Float(), nullable=True),
        sa.Column("counterfactual_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("embodied_g", sa.Float(), nullable=True),
        sa.Column("delay_s", sa.Float(), nullable=True),
        sa.Column("deadline_missed", sa.Boolean(), nullable=True),
        sa.Column("marks", sa.JSON(), nullable=True),
    ]


def _job_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("accounting", sa.String(length=16), nullable=True),
        sa.Column("accounting_signal", sa.String(), nullable=True),
        sa.Column("intensity_source", sa.String(), nullable=True),
        sa.Column("intensity_kind", sa.String(), nullable=True),
        sa.Column("energy_method", sa.String(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for column in _run_columns():
            batch_op.add_column(column)
        batch_op.create_index("ix_runs_accounting", ["accounting"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in _job_columns():
            batch_op.add_column(column)
    op.create_table(
        "run_units",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(), nullable=False),
        sa.Column("count", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("run_units", schema=None) as batch_op:
        batch_op.create_index("ix_run_units_run_id", ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_units", schema=None) as batch_op:
        batch_op.drop_index("ix_run_units_run_id")
    op.drop_table("run_units")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in reversed(_job_columns()):
            batch_op.drop_column(column.name)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_accounting")
        for column in reversed(_run_columns()):
            batch_op.drop_column(column.name)
