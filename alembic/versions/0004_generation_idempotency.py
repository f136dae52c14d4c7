"""generations: Idempotency-Key and request hash, unique per owner, so a retried POST names the same generation

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('generations') as batch:
        batch.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f('uq_generations_owner_id_idempotency_key'),
                                       ['owner_id', 'idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table('generations') as batch:
        batch.drop_constraint(op.f('uq_generations_owner_id_idempotency_key'), type_='unique')
        batch.drop_column('request_hash')
        batch.drop_column('idempotency_key')
