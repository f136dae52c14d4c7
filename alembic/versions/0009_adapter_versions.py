"""Adapter versions and CLIP scores: adapters.version (v1, v2, ... per style, one per feedback round) with the
adapter's two CLIP scores, styles.default_adapter_id (the version a generation naming only the style uses), and
each generation's per-image scores

Revision ID: 0009
Revises: 0008b
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('adapters') as batch:
        batch.add_column(sa.Column('version', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('text_score', sa.Float(), nullable=True))
        batch.add_column(sa.Column('style_score', sa.Float(), nullable=True))
    # Existing adapters become their style's versions in the order they were made (ties by id).
    op.execute(
        "UPDATE adapters SET version = (SELECT COUNT(*) FROM adapters AS a2 WHERE a2.style_id = adapters.style_id "
        "AND (a2.created_at < adapters.created_at OR (a2.created_at = adapters.created_at AND a2.id <= adapters.id)))"
    )
    with op.batch_alter_table('adapters') as batch:
        batch.alter_column('version', existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint(op.f('uq_adapters_style_id_version'), ['style_id', 'version'])
    with op.batch_alter_table('styles') as batch:
        batch.add_column(sa.Column('default_adapter_id', sa.String(length=32), nullable=True))
    with op.batch_alter_table('generations') as batch:
        batch.add_column(sa.Column('text_scores', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('style_scores', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('generations') as batch:
        batch.drop_column('style_scores')
        batch.drop_column('text_scores')
    with op.batch_alter_table('styles') as batch:
        batch.drop_column('default_adapter_id')
    with op.batch_alter_table('adapters') as batch:
        batch.drop_constraint(op.f('uq_adapters_style_id_version'), type_='unique')
        batch.drop_column('style_score')
        batch.drop_column('text_score')
        batch.drop_column('version')
