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


# No batch (table-rebuilding) operations: SQLite rebuilds a table by dropping it, which its foreign keys (on in
# every connection we make) refuse while generations reference adapters and adapters reference styles. Every step
# below is one SQLite can do in place: ADD COLUMN (NOT NULL with a default), CREATE UNIQUE INDEX, DROP COLUMN.


def upgrade() -> None:
    # NOT NULL needs a default for the rows already there; the UPDATE then gives each its real number.
    op.add_column('adapters', sa.Column('version', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('adapters', sa.Column('text_score', sa.Float(), nullable=True))
    op.add_column('adapters', sa.Column('style_score', sa.Float(), nullable=True))
    # Existing adapters become their style's versions in the order they were made (ties by id).
    op.execute(
        "UPDATE adapters SET version = (SELECT COUNT(*) FROM adapters AS a2 WHERE a2.style_id = adapters.style_id "
        "AND (a2.created_at < adapters.created_at OR (a2.created_at = adapters.created_at AND a2.id <= adapters.id)))"
    )
    if op.get_bind().dialect.name != 'sqlite':  # SQLite cannot drop a default in place; the ORM always sets it
        op.alter_column('adapters', 'version', server_default=None)
    op.create_index(op.f('ix_adapters_style_id_version'), 'adapters', ['style_id', 'version'], unique=True)
    op.add_column('styles', sa.Column('default_adapter_id', sa.String(length=32), nullable=True))
    op.add_column('generations', sa.Column('text_scores', sa.JSON(), nullable=True))
    op.add_column('generations', sa.Column('style_scores', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('generations', 'style_scores')
    op.drop_column('generations', 'text_scores')
    op.drop_column('styles', 'default_adapter_id')
    op.drop_index(op.f('ix_adapters_style_id_version'), table_name='adapters')
    op.drop_column('adapters', 'style_score')
    op.drop_column('adapters', 'text_score')
    op.drop_column('adapters', 'version')
