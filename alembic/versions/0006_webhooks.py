"""webhooks and generation progress: webhook URL and event filter on jobs and generations, a per-user signing
secret, the webhook_deliveries outbox, "webhook" job events, and generations.step

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('state', 'progress', 'log', 'preview')"
NEW_KINDS = "kind IN ('state', 'progress', 'log', 'preview', 'webhook')"


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('webhook_secret', sa.String(length=64), nullable=True))
    with op.batch_alter_table('training_jobs') as batch:
        batch.add_column(sa.Column('webhook', sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column('webhook_events', sa.JSON(), nullable=True))
    with op.batch_alter_table('generations') as batch:
        batch.add_column(sa.Column('step', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('webhook', sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column('webhook_events', sa.JSON(), nullable=True))
    with op.batch_alter_table('job_events') as batch:
        batch.drop_constraint(op.f('ck_job_events_kind'), type_='check')
        batch.create_check_constraint(op.f('ck_job_events_kind'), sa.text(NEW_KINDS))
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=False),
    sa.Column('resource', sa.String(length=16), nullable=False),
    sa.Column('resource_id', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.CheckConstraint("event IN ('start', 'progress', 'completed')", name=op.f('ck_webhook_deliveries_event')),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name=op.f('ck_webhook_deliveries_state')),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_webhook_deliveries_owner_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    op.create_index(op.f('ix_webhook_deliveries_owner_id'), 'webhook_deliveries', ['owner_id'], unique=False)
    op.create_index('ix_webhook_deliveries_state_next_attempt_at', 'webhook_deliveries',
                    ['state', 'next_attempt_at'], unique=False)
    op.create_index('ix_webhook_deliveries_resource_id_event', 'webhook_deliveries', ['resource_id', 'event'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_webhook_deliveries_resource_id_event', table_name='webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_state_next_attempt_at', table_name='webhook_deliveries')
    op.drop_index(op.f('ix_webhook_deliveries_owner_id'), table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.execute("DELETE FROM job_events WHERE kind = 'webhook'")
    with op.batch_alter_table('job_events') as batch:
        batch.drop_constraint(op.f('ck_job_events_kind'), type_='check')
        batch.create_check_constraint(op.f('ck_job_events_kind'), sa.text(OLD_KINDS))
    with op.batch_alter_table('generations') as batch:
        batch.drop_column('webhook_events')
        batch.drop_column('webhook')
        batch.drop_column('step')
    with op.batch_alter_table('training_jobs') as batch:
        batch.drop_column('webhook_events')
        batch.drop_column('webhook')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('webhook_secret')
