"""Retention: indexes for pruning old forecasts, runs' samples and finished jobs; when a run's
energy series was thinned out and when a realized series was compacted.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("samples_pruned_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_runs_samples_pruned", ["samples_pruned_at", "finished_at"], unique=False
        )
    with op.batch_alter_table("forecasts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compacted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_forecasts_realized_end", ["realized", "end"], unique=False)
        batch_op.create_index("ix_forecasts_compaction", ["realized", "compacted_at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_state_finished_at", ["state", "finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_finished_at")
    with op.batch_alter_table("forecasts", schema=None) as batch_op:
        batch_op.drop_index("ix_forecasts_compaction")
        batch_op.drop_index("ix_forecasts_realized_end")
        batch_op.drop_column("compacted_at")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_samples_pruned")
        batch_op.drop_column("samples_pruned_at")
