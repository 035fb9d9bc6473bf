"""Planning in the daemon: allowed zones, interruptible jobs, segments and the plan's figures.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _job_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("zones", sa.JSON(), nullable=True),
        sa.Column("interruptible", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_pauses", sa.Integer(), nullable=True),
        sa.Column("min_segment_s", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("checkpoint_signal", sa.String(), nullable=True),
        sa.Column("resume_command", sa.JSON(), nullable=True),
        sa.Column("segments", sa.JSON(), nullable=True),
        sa.Column("plan_zone", sa.String(), nullable=True),
        sa.Column("plan_candidates", sa.Integer(), nullable=True),
        sa.Column("plan_runner_up_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("plan_runner_up_g_per_kwh", sa.Float(), nullable=True),
        sa.Column("plan_runner_up_zone", sa.String(), nullable=True),
        sa.Column("plan_saving", sa.Float(), nullable=True),
        sa.Column("plan_min_saving", sa.Float(), nullable=True),
        sa.Column("pauses", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("work_done_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("segment_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("segment_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checkpoint_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("plan_asap", sa.Boolean(), nullable=False, server_default=sa.false()),
    ]


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in _job_columns():
            batch_op.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in reversed(_job_columns()):
            batch_op.drop_column(column.name)
