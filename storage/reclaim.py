"""Storage reclaimed: blobs no row needs any more are deleted, and what a user stores is counted.

A blob is *referenced* while a row needs it: the image of a style that is not deleted (or whose job is still
unfinished), the file of an adapter that is not deleted (or that a waiting generation still names), the checkpoint
of an unfinished job, a generation's images/init image/mask, and a job's preview images and an automatic round's
picks. Everything else —
uploads whose request was refused after the write, deleted styles' and adapters' files, checkpoints of cancelled
and failed jobs — is deleted once it is older than a grace period.

Why a grace period and a re-check: an upload writes its blob before it commits its row. Uploads (re)write the
blob even when identical content is already stored (keys are content addressed), so a blob being adopted by a new
row is always fresh; the reclaimer skips fresh blobs and reads the age again right before each delete.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import BlobStore
from storage.models import Adapter, Generation, JobEvent, Style, TrainingJob
from storage.states import GENERATION_UNFINISHED, JOB_FINAL

logger = logging.getLogger(__name__)


@dataclass
class ReclaimReport:
    deleted: int = 0
    bytes: int = 0
    kept: int = 0


def referenced_keys(session: Session) -> set[str]:
    """Every blob key a row still needs (see the module docstring)."""
    unfinished = TrainingJob.state.not_in(JOB_FINAL)
    style_busy = select(TrainingJob.style_id).where(unfinished)
    gen_busy = Generation.state.in_(GENERATION_UNFINISHED)
    adapter_busy = select(Generation.adapter_id).where(gen_busy).union(
        select(Generation.subject_adapter_id).where(gen_busy))
    keys: set[str] = set()
    for image_key, references in session.execute(select(Style.image_key, Style.references).where(
            or_(Style.deleted_at.is_(None), Style.id.in_(style_busy)))):
        keys.add(image_key)
        keys.update(r["key"] for r in references or [] if isinstance(r, dict) and isinstance(r.get("key"), str))
    keys.update(session.scalars(select(Adapter.blob_key).where(
        or_(Adapter.deleted_at.is_(None), Adapter.id.in_(adapter_busy)))))
    keys.update(session.scalars(select(TrainingJob.checkpoint_key).where(
        unfinished, TrainingJob.checkpoint_key.is_not(None))))
    for image_keys, init_key, mask_key in session.execute(
        select(Generation.image_keys, Generation.init_image_key, Generation.mask_key)
    ):
        keys.update(image_keys or [])
        keys.update(k for k in (init_key, mask_key) if k)
    for picks in session.scalars(select(TrainingJob.picks).where(TrainingJob.picks.is_not(None))):
        keys.update(p["image_key"] for p in picks or [] if isinstance(p, dict) and isinstance(p.get("image_key"), str))
    for payload in session.scalars(select(JobEvent.payload).where(JobEvent.kind == "preview")):
        if isinstance(payload, dict) and isinstance(payload.get("image_key"), str):
            keys.add(payload["image_key"])
    return keys


def reclaim(
    session_factory: sessionmaker[Session], store: BlobStore, *, grace_seconds: float, now: float | None = None
) -> ReclaimReport:
    """Delete every unreferenced blob older than `grace_seconds`; forget finished jobs' checkpoints."""
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    report = ReclaimReport()
    listed = [b for b in store.list_blobs() if b.modified < cutoff]  # listed BEFORE the references are read
    with session_factory() as session:
        refs = referenced_keys(session)
        for blob in listed:
            if blob.key in refs:
                report.kept += 1
                continue
            modified = store.modified(blob.key)
            if modified is None or modified >= cutoff:  # gone, or rewritten by an upload meanwhile
                continue
            store.delete(blob.key)
            report.deleted += 1
            report.bytes += blob.size
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.state.in_(JOB_FINAL), TrainingJob.checkpoint_key.is_not(None))
            .values(checkpoint_key=None, checkpoint_step=None)
        )
        session.commit()
    if report.deleted:
        logger.info("reclaimed %d blobs (%d bytes)", report.deleted, report.bytes)
    return report


def user_storage_bytes(session: Session, user_id: str) -> int:
    """What a user keeps stored, for the per-user cap: their styles' images and their adapters' files."""
    styles = session.scalar(select(func.coalesce(func.sum(Style.image_bytes), 0)).where(
        Style.owner_id == user_id, Style.deleted_at.is_(None)))
    adapters = session.scalar(select(func.coalesce(func.sum(Adapter.bytes), 0)).where(
        Adapter.owner_id == user_id, Adapter.deleted_at.is_(None)))
    return int(styles or 0) + int(adapters or 0)
