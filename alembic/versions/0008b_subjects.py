"""Several reference images per style, subject adapters, and a generation's subject, γ and λB

styles.kind ("style" | "subject"), styles.class_word, styles.references (every image with its caption);
generations.subject_adapter_id, subject_weight (γ) and text_guidance (λB).

Revision ID: 0008b
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0008b'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# No batch (table-rebuilding) operations: SQLite rebuilds a table by dropping it, which its foreign keys (on in
# every connection we make) refuse once other rows reference it. ADD COLUMN and DROP COLUMN work in place; the
# subject adapter's foreign key is declared inline with its column on SQLite (REFERENCES, allowed by ADD COLUMN for
# a nullable column) and as a named constraint elsewhere.
FK = 'fk_generations_subject_adapter_id_adapters'


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    op.add_column('styles', sa.Column('kind', sa.String(length=16), server_default='style', nullable=False))
    op.add_column('styles', sa.Column('class_word', sa.String(length=64), nullable=True))
    op.add_column('styles', sa.Column('references', sa.JSON(), nullable=True))
    if sqlite:  # alembic refuses any constraint on SQLite outside batch mode; SQLite itself takes it inline
        op.execute('ALTER TABLE generations ADD COLUMN subject_adapter_id VARCHAR(32) REFERENCES adapters (id)')
    else:
        op.add_column('generations', sa.Column('subject_adapter_id', sa.String(length=32), nullable=True))
    op.add_column('generations', sa.Column('subject_weight', sa.Float(), nullable=True))
    op.add_column('generations', sa.Column('text_guidance', sa.Float(), nullable=True))
    op.create_index(op.f('ix_generations_subject_adapter_id'), 'generations', ['subject_adapter_id'], unique=False)
    if not sqlite:
        op.create_foreign_key(FK, 'generations', 'adapters', ['subject_adapter_id'], ['id'])


def downgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.drop_constraint(FK, 'generations', type_='foreignkey')
    op.drop_index(op.f('ix_generations_subject_adapter_id'), table_name='generations')
    op.drop_column('generations', 'text_guidance')
    op.drop_column('generations', 'subject_weight')
    op.drop_column('generations', 'subject_adapter_id')
    op.drop_column('styles', 'references')
    op.drop_column('styles', 'class_word')
    op.drop_column('styles', 'kind')
