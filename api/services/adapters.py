"""Adapters: listing, the verified file download and its name, deletion.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.errors import Conflict, Gone
from api.services.lookup import get_owned
from storage.blobs import BlobIntegrityError, BlobNotFound, BlobStore, get_verified
from storage.error_codes import ErrorCode
from storage.models import (
    Adapter,
    User,
    utcnow,
)
from storage.visibility import visible_adapter

logger = logging.getLogger(__name__)


def list_adapters(*, session: Session, owner: User, limit: int, offset: int) -> Sequence[Adapter]:
    return session.scalars(
        select(Adapter).where(Adapter.owner_id == owner.id, visible_adapter())
        .order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(limit).offset(offset)
    ).all()


def get_adapter(*, session: Session, owner: User, adapter_id: str) -> Adapter:
    return get_owned(session, Adapter, adapter_id, owner, "adapter")


def adapter_filename(adapter: Adapter) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", adapter.descriptor.lower()).strip("-")[:48].strip("-") or "adapter"
    return f"{slug}-{adapter.id[:8]}.safetensors"


def adapter_bytes(*, blobs: BlobStore, adapter: Adapter) -> bytes:
    try:
        return get_verified(blobs, adapter.blob_key, adapter.sha256)
    except BlobNotFound as exc:
        logger.error("adapter %s: blob %s is missing", adapter.id, adapter.blob_key)
        raise Gone("the adapter file is missing from the store", code=ErrorCode.BLOB_MISSING) from exc
    except BlobIntegrityError as exc:
        raise Conflict(
            "the stored adapter file does not match its recorded sha256; it was not sent",
            code=ErrorCode.ADAPTER_CORRUPT,
        ) from exc


def delete_adapter(*, session: Session, owner: User, adapter_id: str) -> None:
    adapter = get_adapter(session=session, owner=owner, adapter_id=adapter_id)
    adapter.deleted_at = utcnow()
    session.commit()
    logger.info("user %s deleted adapter %s", owner.id, adapter.id)
