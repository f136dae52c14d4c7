"""training_jobs.run_id: the training run a job was trained in; jobs a worker trains together share one

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('training_jobs') as batch:
        batch.add_column(sa.Column('run_id', sa.String(length=32), nullable=True))
        batch.create_index(batch.f('ix_training_jobs_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('training_jobs') as batch:
        batch.drop_index(batch.f('ix_training_jobs_run_id'))
        batch.drop_column('run_id')
