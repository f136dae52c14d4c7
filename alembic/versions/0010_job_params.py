"""Job parameters in one shape (storage/job_params.py: JobParams): rows written before it are rewritten once

Older rows could lack `steps`, `seed`, `descriptor` or `content` (the worker then fell back to defaults), and
could carry a `learning_rate` nothing wrote or read back. Each row gets the keys the API writes today: `steps` =
the job's total_steps, `seed` = 0 (what the worker used when it was missing), `descriptor` and `content` = its
style's; unknown keys are dropped. Downgrade leaves the rows as they are (the old code reads the new shape).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from alembic import op

revision: str = '0010'
down_revision: str | Sequence[str] | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns as they are at this revision (not the ORM models, which move on).
jobs = sa.table('training_jobs', sa.column('id', sa.String), sa.column('style_id', sa.String),
                sa.column('total_steps', sa.Integer), sa.column('params', sa.JSON))
styles = sa.table('styles', sa.column('id', sa.String), sa.column('descriptor', sa.String),
                  sa.column('content', sa.String))


def rewritten(params: dict[str, Any] | None, total_steps: int, descriptor: str, content: str | None) -> dict[str, Any]:
    old = dict(params or {})
    new: dict[str, Any] = {'steps': old.get('steps', total_steps), 'seed': int(old.get('seed', 0)),
                           'descriptor': old.get('descriptor', descriptor), 'content': old.get('content', content)}
    if isinstance(old.get('round'), dict):
        new['round'] = dict(old['round'])
        if new['round'].get('mode') == 'automatic':  # the worker's defaults when a count was missing
            new['round'] = {'prompts': 10, 'per_prompt': 4, **new['round']}
    return new


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(jobs.c.id, jobs.c.total_steps, jobs.c.params, styles.c.descriptor,
                                  styles.c.content).join(styles, styles.c.id == jobs.c.style_id)).all()
    for job_id, total_steps, params, descriptor, content in rows:
        new = rewritten(params, total_steps, descriptor, content)
        if new != params:
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(params=new))


def downgrade() -> None:
    pass
