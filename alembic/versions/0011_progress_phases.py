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


# Plain ADD/DROP COLUMN, not batch mode: a batch rebuild of `generations` on SQLite would turn 0008b's inline
# REFERENCES into a table constraint, which 0008b's own downgrade (a plain DROP COLUMN) cannot drop.


def upgrade() -> None:
    op.add_column('training_jobs', sa.Column('phase', sa.JSON(), nullable=True))
    op.add_column('training_jobs', sa.Column('picks', sa.JSON(), nullable=True))
    op.add_column('generations', sa.Column('sample_set', sa.String(length=32), nullable=True))
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
    op.drop_column('generations', 'sample_set')
    op.drop_column('training_jobs', 'picks')
    op.drop_column('training_jobs', 'phase')
