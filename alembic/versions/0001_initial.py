"""initial schema: users, api keys, styles, training jobs and their events, adapters, generations

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('name', name=op.f('uq_users_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('prefix', sa.String(length=8), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys'))
    )
    op.create_index(op.f('ix_api_keys_prefix'), 'api_keys', ['prefix'], unique=False)
    op.create_index(op.f('ix_api_keys_user_id'), 'api_keys', ['user_id'], unique=False)

    op.create_table('styles',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=False),
    sa.Column('image_key', sa.String(length=255), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=False),
    sa.Column('image_bytes', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('descriptor', sa.String(length=500), nullable=False),
    sa.Column('content', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_styles_owner_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_styles'))
    )
    op.create_index(op.f('ix_styles_owner_id'), 'styles', ['owner_id'], unique=False)

    op.create_table('training_jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('style_id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('total_steps', sa.Integer(), nullable=False),
    sa.Column('last_loss', sa.Float(), nullable=True),
    sa.Column('eta_seconds', sa.Float(), nullable=True),
    sa.Column('steps_per_second', sa.Float(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('gpu_seconds', sa.Float(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('celery_task_id', sa.String(length=255), nullable=True),
    sa.Column('checkpoint_key', sa.String(length=255), nullable=True),
    sa.Column('checkpoint_step', sa.Integer(), nullable=True),
    sa.CheckConstraint("state IN ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_training_jobs_state')),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_training_jobs_owner_id_users')),
    sa.ForeignKeyConstraint(['style_id'], ['styles.id'], name=op.f('fk_training_jobs_style_id_styles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_jobs')),
    sa.UniqueConstraint('owner_id', 'idempotency_key', name=op.f('uq_training_jobs_owner_id_idempotency_key'))
    )
    op.create_index('ix_training_jobs_owner_state', 'training_jobs', ['owner_id', 'state'], unique=False)
    op.create_index('ix_training_jobs_state_queued_at', 'training_jobs', ['state', 'queued_at'], unique=False)
    op.create_index(op.f('ix_training_jobs_style_id'), 'training_jobs', ['style_id'], unique=False)

    op.create_table('adapters',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=False),
    sa.Column('style_id', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('blob_key', sa.String(length=255), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('base_model', sa.String(length=255), nullable=False),
    sa.Column('base_revision', sa.String(length=255), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('alpha', sa.Float(), nullable=False),
    sa.Column('targets', sa.JSON(), nullable=False),
    sa.Column('descriptor', sa.String(length=500), nullable=False),
    sa.Column('train_prompt', sa.Text(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('engine_version', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_adapters_job_id_training_jobs')),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_adapters_owner_id_users')),
    sa.ForeignKeyConstraint(['style_id'], ['styles.id'], name=op.f('fk_adapters_style_id_styles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    sa.UniqueConstraint('job_id', name=op.f('uq_adapters_job_id'))
    )
    op.create_index(op.f('ix_adapters_owner_id'), 'adapters', ['owner_id'], unique=False)
    op.create_index(op.f('ix_adapters_style_id'), 'adapters', ['style_id'], unique=False)

    op.create_table('job_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.CheckConstraint("kind IN ('state', 'progress', 'log', 'preview')", name=op.f('ck_job_events_kind')),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_job_events_job_id_training_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_events'))
    )
    op.create_index(op.f('ix_job_events_job_id'), 'job_events', ['job_id'], unique=False)

    op.create_table('generations',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=False),
    sa.Column('adapter_id', sa.String(length=32), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('negative_prompt', sa.Text(), nullable=True),
    sa.Column('style_strength', sa.Float(), nullable=False),
    sa.Column('guidance_scale', sa.Float(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('num_images', sa.Integer(), nullable=False),
    sa.Column('init_image_key', sa.String(length=255), nullable=True),
    sa.Column('mask_key', sa.String(length=255), nullable=True),
    sa.Column('strength', sa.Float(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('image_keys', sa.JSON(), nullable=False),
    sa.Column('celery_task_id', sa.String(length=255), nullable=True),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed')", name=op.f('ck_generations_state')),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_generations_adapter_id_adapters')),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_generations_owner_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generations'))
    )
    op.create_index(op.f('ix_generations_adapter_id'), 'generations', ['adapter_id'], unique=False)
    op.create_index('ix_generations_owner_queued_at', 'generations', ['owner_id', 'queued_at'], unique=False)
    op.create_index('ix_generations_state_queued_at', 'generations', ['state', 'queued_at'], unique=False)



def downgrade() -> None:
    op.drop_index('ix_generations_state_queued_at', table_name='generations')
    op.drop_index('ix_generations_owner_queued_at', table_name='generations')
    op.drop_index(op.f('ix_generations_adapter_id'), table_name='generations')

    op.drop_table('generations')
    op.drop_index(op.f('ix_job_events_job_id'), table_name='job_events')

    op.drop_table('job_events')
    op.drop_index(op.f('ix_adapters_style_id'), table_name='adapters')
    op.drop_index(op.f('ix_adapters_owner_id'), table_name='adapters')

    op.drop_table('adapters')
    op.drop_index(op.f('ix_training_jobs_style_id'), table_name='training_jobs')
    op.drop_index('ix_training_jobs_state_queued_at', table_name='training_jobs')
    op.drop_index('ix_training_jobs_owner_state', table_name='training_jobs')

    op.drop_table('training_jobs')
    op.drop_index(op.f('ix_styles_owner_id'), table_name='styles')

    op.drop_table('styles')
    op.drop_index(op.f('ix_api_keys_user_id'), table_name='api_keys')
    op.drop_index(op.f('ix_api_keys_prefix'), table_name='api_keys')

    op.drop_table('api_keys')
    op.drop_table('users')
