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


def upgrade() -> None:
    with op.batch_alter_table('styles') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), server_default='style', nullable=False))
        batch.add_column(sa.Column('class_word', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('references', sa.JSON(), nullable=True))
    with op.batch_alter_table('generations') as batch:
        batch.add_column(sa.Column('subject_adapter_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('subject_weight', sa.Float(), nullable=True))
        batch.add_column(sa.Column('text_guidance', sa.Float(), nullable=True))
        batch.create_index(batch.f('ix_generations_subject_adapter_id'), ['subject_adapter_id'], unique=False)
        batch.create_foreign_key(batch.f('fk_generations_subject_adapter_id_adapters'), 'adapters',
                                 ['subject_adapter_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('generations') as batch:
        batch.drop_constraint(batch.f('fk_generations_subject_adapter_id_adapters'), type_='foreignkey')
        batch.drop_index(batch.f('ix_generations_subject_adapter_id'))
        batch.drop_column('text_guidance')
        batch.drop_column('subject_weight')
        batch.drop_column('subject_adapter_id')
    with op.batch_alter_table('styles') as batch:
        batch.drop_column('references')
        batch.drop_column('class_word')
        batch.drop_column('kind')
