"""progress of every phase: training_jobs.phase (what a running job does now) and .picks (an automatic round's kept
images), generations.sample_set (the samples request a generation belongs to), and "phase"/"picks" job events

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0011'
down_revision: str | Sequence[str] | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('state', 'progress', 'log', 'preview', 'webhook')"
NEW_KINDS = "kind IN ('state', 'progress', 'log', 'preview', 'webhook', 'phase', 'picks')"


def upgrade() -> None:
    with op.batch_alter_table('training_jobs') as batch:
        batch.add_column(sa.Column('phase', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('picks', sa.JSON(), nullable=True))
    with op.batch_alter_table('generations') as batch:
        batch.add_column(sa.Column('sample_set', sa.String(length=32), nullable=True))
    op.create_index(op.f('ix_generations_sample_set'), 'generations', ['sample_set'], unique=False)
    with op.batch_alter_table('job_events') as batch:
        batch.drop_constraint(op.f('ck_job_events_kind'), type_='check')
        batch.create_check_constraint(op.f('ck_job_events_kind'), sa.text(NEW_KINDS))


def downgrade() -> None:
    op.execute("DELETE FROM job_events WHERE kind IN ('phase', 'picks')")
    with op.batch_alter_table('job_events') as batch:
        batch.drop_constraint(op.f('ck_job_events_kind'), type_='check')
        batch.create_check_constraint(op.f('ck_job_events_kind'), sa.text(OLD_KINDS))
    op.drop_index(op.f('ix_generations_sample_set'), table_name='generations')
    with op.batch_alter_table('generations') as batch:
        batch.drop_column('sample_set')
    with op.batch_alter_table('training_jobs') as batch:
        batch.drop_column('picks')
        batch.drop_column('phase')
