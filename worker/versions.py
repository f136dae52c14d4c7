"""Writing a training job's adapter row as the style's next version (v1, v2, … per style).

The version is the style's highest + 1, read just before the insert; two train workers finishing two jobs of one
style at once (an admin retry beside a retrain, or a race the API's one-unfinished-job rule did not see) may read
the same highest. The unique `(style_id, version)` turns that into an IntegrityError, and the insert is tried again
with a fresh read, so both rows get their own number. The unique `job_id` keeps one row per job: a rerun of a job
finds its row and reuses it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Adapter

logger = logging.getLogger(__name__)

MAX_TRIES = 8


def next_version(session: Session, style_id: str) -> int:
    return int(session.scalar(select(func.max(Adapter.version)).where(Adapter.style_id == style_id)) or 0) + 1


def insert_version(factory: sessionmaker[Session], *, style_id: str, job_id: str, fields: dict[str, Any],
                   version: int | None = None) -> str:
    """The id of job `job_id`'s adapter row: the existing one, or a new one numbered as the style's next version
    (`version`: the first number to try, for callers that read it earlier). `fields`: the row's other columns."""
    for _ in range(MAX_TRIES):
        with factory() as s:
            existing = s.scalar(select(Adapter.id).where(Adapter.job_id == job_id))
            if existing is not None:
                return existing
            number = version if version is not None else next_version(s, style_id)
            version = None  # after a collision: read again
            row = Adapter(version=number, style_id=style_id, job_id=job_id, **fields)
            s.add(row)
            try:
                s.commit()
                return row.id
            except IntegrityError:  # another job of the style took this number first (or this job's row exists)
                s.rollback()
                logger.info("job %s: version %d of style %s was taken meanwhile; trying the next", job_id, number,
                            style_id)
    raise RuntimeError(f"job {job_id}: could not number its adapter after {MAX_TRIES} tries")
