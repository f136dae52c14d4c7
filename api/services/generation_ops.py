"""Deleting a generation: its row, its images, and init images or masks no other generation uses."""

from __future__ import annotations

import logging

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from api.http.errors import Conflict, NotFound
from storage.blobs import BlobStore
from storage.error_codes import ErrorCode
from storage.models import Generation, User
from storage.states import GENERATION_FINAL

logger = logging.getLogger(__name__)


def delete_generation(*, session: Session, blobs: BlobStore, owner: User, generation_id: str) -> None:
    """Delete `owner`'s finished generation. Another user's id is a 404; a queued or running one is a 409 (its
    worker would write images for a row that is gone). Webhook events already queued for it are still delivered
    (they carry their own copy of the body). Blobs go after the commit: a crash between the two leaves
    unreferenced files, never a row whose images are missing."""
    gen = session.get(Generation, generation_id)
    if gen is None or gen.owner_id != owner.id:
        raise NotFound("generation not found")
    if gen.state not in GENERATION_FINAL:
        raise Conflict(f"the generation is still {gen.state}; delete it once it has finished",
                       code=ErrorCode.GENERATION_ACTIVE)
    keys = list(gen.image_keys or [])
    # init images and masks are stored by content hash and may be shared by other generations
    for key in (gen.init_image_key, gen.mask_key):
        if key is not None and not session.scalar(
            select(func.count()).select_from(Generation).where(
                Generation.id != gen.id, or_(Generation.init_image_key == key, Generation.mask_key == key))
        ):
            keys.append(key)
    session.delete(gen)
    session.commit()
    for key in keys:
        try:
            blobs.delete(key)
        except OSError as exc:  # the row is gone; a leftover file is only space
            logger.warning("generation %s: could not delete blob %s: %s", generation_id, key, exc)
    logger.info("user %s deleted generation %s (%d blobs)", owner.id, generation_id, len(keys))
