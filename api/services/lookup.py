"""Finding what a request names: a row the caller owns (another user's id is a 404), a stored blob (410 when
the store lost it).
"""

from __future__ import annotations

import logging
from typing import TypeVar

from sqlalchemy.orm import Session

from api.http.errors import Gone, NotFound
from storage.blobs import BlobNotFound, BlobStore
from storage.error_codes import ErrorCode
from storage.models import (
    Adapter,
    Generation,
    Style,
    TrainingJob,
    User,
)

logger = logging.getLogger(__name__)


Owned = TypeVar("Owned", Style, TrainingJob, Adapter, Generation)


def get_owned(session: Session, model: type[Owned], row_id: str, owner: User, what: str) -> Owned:
    """The row if it exists, belongs to `owner` and is not deleted; else NotFound (another user's id is a 404)."""
    row = session.get(model, row_id)
    if row is None or row.owner_id != owner.id or getattr(row, "deleted_at", None) is not None:
        raise NotFound(f"{what} not found")
    return row


def read_blob(blobs: BlobStore, key: str | None, *, what: str) -> bytes:
    if key is None:
        raise NotFound(f"{what} not found")
    try:
        return blobs.get_bytes(key)
    except BlobNotFound as exc:
        logger.error("blob %s (%s) is missing from the store", key, what)
        raise Gone(f"the stored {what} is missing", code=ErrorCode.BLOB_MISSING) from exc
