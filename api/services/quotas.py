"""Per-user caps checked before anything is written: unfinished generation images (429 `too_many_queued_images`
with Retry-After) and storage (413 `storage_quota_exceeded`, with `used` and `allowed`; storage/quotas.py). Each check
is cheap; callers run it once early (before decoding or storing anything) and again under the owner's lock
(`api.services.uploads.lock_owner`) right before the commit, so concurrent requests of one user cannot pass it
together."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.http.errors import RateLimited, TooLarge
from api.services import limits
from storage import quotas
from storage.error_codes import ErrorCode
from storage.models import Generation, User
from storage.settings import Settings
from storage.states import GENERATION_UNFINISHED

IMAGES_RETRY_AFTER = 30  # seconds: a batch of generations takes about this long on a GPU


def unfinished_images(session: Session, owner_id: str) -> int:
    """Images of the owner's queued and running generations."""
    total = session.scalar(select(func.coalesce(func.sum(Generation.num_images), 0))
                           .where(Generation.owner_id == owner_id, Generation.state.in_(GENERATION_UNFINISHED)))
    return int(total or 0)


def check_image_cap(session: Session, settings: Settings, owner: User, adding: int) -> None:
    """429 `too_many_queued_images` when `adding` more images would take `owner` past
    max_unfinished_images_per_user."""
    cap = settings.max_unfinished_images_per_user
    if not cap:
        return
    waiting = unfinished_images(session, owner.id)
    if waiting + adding > cap:
        retry = IMAGES_RETRY_AFTER
        raise RateLimited(
            f"you have {waiting} images queued or rendering and this request adds {adding}; the limit is "
            f"{limits.limit(settings, 'max_unfinished_images_per_user')}: "
            f"retry when some finish (about {retry} s), or cancel generations you no longer need",
            code=ErrorCode.TOO_MANY_QUEUED_IMAGES, headers={"Retry-After": str(retry)},
        )


def check_storage(session: Session, settings: Settings, owner: User, adding: int, what: str) -> None:
    """413 `storage_quota_exceeded` when `adding` bytes (`what` says what they are) would take `owner` past
    max_storage_bytes_per_user, counting what their waiting work will write."""
    over = quotas.over_quota(session, settings, owner.id, adding)
    if over is not None:
        used, allowed = over
        raise TooLarge(f"storage limit reached: you use {used} bytes (styles, adapters, generated images and what "
                       f"your waiting work will write) and {what} adds {adding}; the limit is {allowed} "
                       f"({limits.setting_env('max_storage_bytes_per_user')}): delete "
                       "styles, adapters or generations you no longer need", code=ErrorCode.STORAGE_QUOTA_EXCEEDED,
                       extensions={"used": used, "allowed": allowed, "adding": adding})


def adapter_bytes(session: Session, settings: Settings) -> int:
    return quotas.adapter_charge(session, settings)
