"""What a user's storage is charged, for the per-user cap (`max_storage_bytes_per_user`): what they keep, plus
what their waiting work will write, so a request is refused before anything is written rather than after.

- kept: their styles' reference images and their live adapters' files (`storage.reclaim.user_storage_bytes`),
  and the images of their generations (`image_charge_bytes` each: the bytes of one image are not recorded);
- pending: one adapter (`adapter_charge`) for each unfinished training job — an upload, a retrain or a round each
  writes one — and the images of queued and running generations.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Adapter, Generation, TrainingJob
from storage.reclaim import user_storage_bytes
from storage.settings import Settings
from storage.states import JOB_UNFINISHED, GenerationState


def adapter_charge(session: Session, settings: Settings) -> int:
    """What one more adapter will write: the newest adapter's file size (one base model per service, so they are
    all alike), or `adapter_charge_bytes` before the first one exists."""
    newest = session.scalar(select(Adapter.bytes).order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(1))
    return int(newest) if newest else settings.adapter_charge_bytes


def charged_bytes(session: Session, settings: Settings, owner_id: str) -> int:
    """Bytes `owner_id` is charged now: kept plus pending (see the module docstring), in three queries."""
    jobs = session.scalar(select(func.count()).select_from(TrainingJob).where(
        TrainingJob.owner_id == owner_id, TrainingJob.state.in_(JOB_UNFINISHED))) or 0
    images = session.scalar(select(func.coalesce(func.sum(Generation.num_images), 0)).where(
        Generation.owner_id == owner_id, Generation.state != GenerationState.FAILED)) or 0
    return (user_storage_bytes(session, owner_id) + int(jobs) * adapter_charge(session, settings)
            + int(images) * settings.image_charge_bytes)


def over_quota(session: Session, settings: Settings, owner_id: str, adding: int) -> tuple[int, int] | None:
    """(used, allowed) when `adding` more bytes would take `owner_id` past the cap; None when it fits or there is
    no cap."""
    cap = settings.max_storage_bytes_per_user
    if not cap:
        return None
    used = charged_bytes(session, settings, owner_id)
    return (used, cap) if used + adding > cap else None
