"""The API's operations as plain keyword-only functions: the routes validate, call these, and map errors.

Functions that create work commit the row FIRST, then `storage.dispatch.dispatch` sends the task and records the
send. A failed send is logged and leaves the row queued for the reconciler; the caller still answers 202.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queue
from api.decoding import decode_slot
from api.errors import Conflict, Gone, Invalid, NotFound, RateLimited, TooLarge, UnsupportedMedia
from api.schemas import (
    MAX_SEED,
    AdminJobPublic,
    GenerationCreate,
    JobPublic,
    StylePublic,
)
from api.text import is_invisible
from storage import jobs as jobstore
from storage.blobs import BlobIntegrityError, BlobNotFound, BlobStore, content_key, get_verified
from storage.dispatch import dispatch
from storage.images import ImageRejected, NormalizedImage, load_mask, normalize_upload
from storage.models import Adapter, Generation, JobEvent, Style, TrainingJob, User, utcnow
from storage.settings import Settings
from storage.states import JOB_FINAL, JOB_UNFINISHED, EventKind, GenerationState, JobState, WorkKind

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_STEPS = 1500
DEFAULT_IMG2IMG_STRENGTH = 0.75
_CHUNK = 64 * 1024


# --- uploads -------------------------------------------------------------------------------------------------


def read_bounded(stream: BinaryIO, *, max_bytes: int, what: str = "upload") -> bytes:
    """Read `stream` in chunks, refusing (413) as soon as it exceeds `max_bytes`."""
    buf = bytearray()
    while chunk := stream.read(_CHUNK):
        buf += chunk
        if len(buf) > max_bytes:
            raise TooLarge(f"the {what} is larger than the limit of {max_bytes} bytes")
    return bytes(buf)


def _image_error(exc: ImageRejected, what: str) -> Exception:
    message = f"{what}: {exc.reason}"
    if exc.reason.startswith("not a "):
        return UnsupportedMedia(message, code="unsupported_image")
    return Invalid(message, code="bad_image")


def _normalize(data: bytes, *, settings: Settings, what: str) -> NormalizedImage:
    try:
        with decode_slot(settings.max_concurrent_decodes):
            return normalize_upload(
                data, max_pixels=settings.max_image_pixels, min_side=settings.min_image_side,
                max_bytes=settings.max_upload_bytes, max_decode_pixels=settings.max_decode_pixels,
            )
    except ImageRejected as exc:
        raise _image_error(exc, what) from exc


# --- views: rows as the API shows them, in a fixed number of queries per page ---------------------------------


JobView = TypeVar("JobView", JobPublic, AdminJobPublic)


def job_views(session: Session, jobs: Sequence[TrainingJob], schema: type[JobView] = JobPublic) -> list[JobView]:  # type: ignore[assignment]
    """`jobs` validated as `schema`, with the two values a row does not hold found for the whole page at once: the
    queue positions (one query) and the live adapters (one query). AdminJobPublic needs `owner` loaded."""
    positions = jobstore.queue_positions(session, [j.id for j in jobs if j.state == JobState.QUEUED])
    adapters: dict[str, str] = {job_id: adapter_id for job_id, adapter_id in session.execute(
        select(Adapter.job_id, Adapter.id).where(Adapter.job_id.in_([j.id for j in jobs]), Adapter.deleted_at.is_(None))
    )} if jobs else {}
    return [
        schema.model_validate(job).model_copy(
            update={"queue_position": positions.get(job.id, 0), "adapter_id": adapters.get(job.id)}
        )
        for job in jobs
    ]


def job_public(session: Session, job: TrainingJob) -> JobPublic:
    return job_views(session, [job])[0]


def style_views(session: Session, styles: Sequence[Style]) -> list[StylePublic]:
    """`styles` validated, each with its newest training job's id (one query for the page)."""
    latest: dict[str, str] = {}
    if styles:
        for style_id, job_id in session.execute(
            select(TrainingJob.style_id, TrainingJob.id).where(TrainingJob.style_id.in_([s.id for s in styles]))
            .order_by(TrainingJob.queued_at, TrainingJob.id)
        ):
            latest[style_id] = job_id  # ordered oldest first: the last one written wins
    return [StylePublic.model_validate(s).model_copy(update={"latest_job_id": latest.get(s.id)}) for s in styles]


def style_public(session: Session, style: Style) -> StylePublic:
    return style_views(session, [style])[0]


def styles_with_jobs(
    session: Session, styles: Sequence[StylePublic]
) -> list[tuple[StylePublic, JobPublic | None]]:
    """Each style with its newest job (the pages show both), in two more queries for the whole list."""
    ids = [s.latest_job_id for s in styles if s.latest_job_id is not None]
    jobs = job_views(session, session.scalars(select(TrainingJob).where(TrainingJob.id.in_(ids))).all()) if ids else []
    by_id = {job.id: job for job in jobs}
    return [(s, by_id.get(s.latest_job_id) if s.latest_job_id else None) for s in styles]


# --- blobs ---------------------------------------------------------------------------------------------------


def read_blob(blobs: BlobStore, key: str | None, *, what: str) -> bytes:
    if key is None:
        raise NotFound(f"{what} not found")
    try:
        return blobs.get_bytes(key)
    except BlobNotFound as exc:
        logger.error("blob %s (%s) is missing from the store", key, what)
        raise Gone(f"the stored {what} is missing", code="blob_missing") from exc


# --- styles and training jobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleCreated:
    style: Style
    job: TrainingJob
    created: bool  # False: an idempotent replay of an earlier request


def _request_hash(image: bytes, fields: dict[str, Any]) -> str:
    digest = hashlib.sha256(image)
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


DEFAULT_JOB_RETRY_AFTER = 30


def _lock_owner(session: Session, owner: User) -> None:
    """Write the owner's row (a no-op UPDATE): PostgreSQL then holds that row's lock, SQLite its write lock, until
    the commit, so concurrent requests of one user (cap checks, idempotent retries) run one after another."""
    session.execute(update(User).where(User.id == owner.id).values(name=User.name))


def _check_job_cap(session: Session, settings: Settings, owner: User, *, lock: bool) -> None:
    """429 with Retry-After when `owner` already has `max_concurrent_jobs_per_user` unfinished training jobs.

    `lock=True` first takes the owner's lock (`_lock_owner`).
    """
    if lock:
        _lock_owner(session, owner)
    active = session.execute(
        select(func.count(), func.min(TrainingJob.eta_seconds))
        .where(TrainingJob.owner_id == owner.id, TrainingJob.state.in_(JOB_UNFINISHED))
    ).one()
    cap = settings.max_concurrent_jobs_per_user
    if int(active[0]) >= cap:
        eta = active[1]
        retry = int(min(max(eta if eta is not None else DEFAULT_JOB_RETRY_AFTER, 5), 3600))
        raise RateLimited(
            f"you already have {int(active[0])} unfinished training jobs (the limit is {cap}); "
            f"retry when one finishes (about {retry} s), or cancel one",
            code="too_many_jobs", headers={"Retry-After": str(retry)},
        )


def create_style(
    *,
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    owner: User,
    image: bytes,
    descriptor: str,
    content: str | None,
    steps: int | None,
    seed: int | None,
    idempotency_key: str | None,
) -> StyleCreated:
    descriptor = descriptor.strip()
    content = content.strip() if content and content.strip() else None
    if not descriptor or len(descriptor) > 200:
        raise Invalid("descriptor must be 1..200 characters", code="bad_descriptor")
    if is_invisible(descriptor):
        raise Invalid("descriptor has no visible characters (only spaces, control or zero-width ones)",
                      code="bad_descriptor")
    if content is not None and len(content) > 500:
        raise Invalid("content must be at most 500 characters", code="bad_content")
    if steps is not None and not 1 <= steps <= settings.max_train_steps:
        raise Invalid(f"steps must be between 1 and {settings.max_train_steps}", code="bad_steps")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise Invalid(f"seed must be between 0 and {MAX_SEED}", code="bad_seed")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise Invalid("Idempotency-Key must be 1..255 characters", code="bad_idempotency_key")

    request_hash = _request_hash(image, {"descriptor": descriptor, "content": content, "steps": steps, "seed": seed})
    if idempotency_key is not None:
        replay = _idempotent_replay(session, owner.id, idempotency_key, request_hash)
        if replay is not None:
            return replay
    try:
        _check_job_cap(session, settings, owner, lock=False)  # cheap early answer: nothing decoded or stored yet
    except RateLimited:
        # A concurrent retry with this key may have committed since the replay check: that is our job, not a 429.
        replay = _idempotent_replay(session, owner.id, idempotency_key, request_hash) if idempotency_key else None
        if replay is None:
            raise
        return replay

    normalized = _normalize(image, settings=settings, what="image")
    key = content_key("styles", normalized.sha256, "png")
    if not blobs.exists(key):
        blobs.put_bytes(key, normalized.png_bytes)

    total = steps or min(settings.train_steps or DEFAULT_TRAIN_STEPS, settings.max_train_steps)
    style = Style(
        owner_id=owner.id, image_key=key, image_sha256=normalized.sha256, image_bytes=len(normalized.png_bytes),
        width=normalized.width, height=normalized.height, descriptor=descriptor, content=content,
    )
    _lock_owner(session, owner)
    if idempotency_key is not None:  # a concurrent retry may have committed meanwhile: it is this request's job
        replay = _idempotent_replay(session, owner.id, idempotency_key, request_hash)
        if replay is not None:
            session.rollback()
            return replay
    _check_job_cap(session, settings, owner, lock=False)  # again under the owner's lock, just before insert
    session.add(style)
    session.flush()
    job = TrainingJob(
        style_id=style.id, owner_id=owner.id, state=JobState.QUEUED, total_steps=total,
        max_attempts=settings.max_attempts,
        params={"steps": total, "seed": seed if seed is not None else secrets.randbelow(MAX_SEED + 1),
                "descriptor": descriptor, "content": content},
        idempotency_key=idempotency_key, request_hash=request_hash,
    )
    session.add(job)
    try:
        session.flush()
        jobstore.add_event(session, job.id, EventKind.STATE, {"from": None, "to": JobState.QUEUED})
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        replay = _idempotent_replay(session, owner.id, idempotency_key, request_hash)
        if replay is None:
            raise
        return replay
    logger.info("user %s: style %s, job %s queued (%d steps)", owner.id, style.id, job.id, total)
    dispatch(session, WorkKind.TRAIN, job.id, queue.sender(settings))
    return StyleCreated(style=style, job=job, created=True)


def _idempotent_replay(session: Session, owner_id: str, key: str, request_hash: str) -> StyleCreated | None:
    job = session.scalar(
        select(TrainingJob).where(TrainingJob.owner_id == owner_id, TrainingJob.idempotency_key == key)
    )
    if job is None:
        return None
    if job.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different request", code="idempotency_mismatch")
    style = session.get(Style, job.style_id)
    assert style is not None
    return StyleCreated(style=style, job=job, created=False)


def list_styles(*, session: Session, owner: User, limit: int, offset: int) -> list[StylePublic]:
    styles = session.scalars(
        select(Style).where(Style.owner_id == owner.id, Style.deleted_at.is_(None))
        .order_by(Style.created_at.desc(), Style.id.desc()).limit(limit).offset(offset)
    ).all()
    return style_views(session, styles)


_Owned = TypeVar("_Owned", Style, TrainingJob, Adapter, Generation)


def _get_owned(session: Session, model: type[_Owned], row_id: str, owner: User, what: str) -> _Owned:
    """The row if it exists, belongs to `owner` and is not deleted; else NotFound (another user's id is a 404)."""
    row = session.get(model, row_id)
    if row is None or row.owner_id != owner.id or getattr(row, "deleted_at", None) is not None:
        raise NotFound(f"{what} not found")
    return row


def get_style(*, session: Session, owner: User, style_id: str) -> Style:
    return _get_owned(session, Style, style_id, owner, "style")


def delete_style(*, session: Session, owner: User, style_id: str) -> None:
    style = get_style(session=session, owner=owner, style_id=style_id)
    style.deleted_at = utcnow()
    for job in session.scalars(
        select(TrainingJob).where(TrainingJob.style_id == style.id, TrainingJob.state.in_(JOB_UNFINISHED))
    ):
        _request_cancel(session, job)
    session.commit()
    logger.info("user %s deleted style %s", owner.id, style.id)


def list_jobs(*, session: Session, owner: User, state: str | None, limit: int, offset: int) -> list[JobPublic]:
    query = select(TrainingJob).where(TrainingJob.owner_id == owner.id)
    if state is not None:
        query = query.where(TrainingJob.state == state)
    return job_views(session, session.scalars(
        query.order_by(TrainingJob.queued_at.desc(), TrainingJob.id.desc()).limit(limit).offset(offset)
    ).all())


def get_job(*, session: Session, owner: User, job_id: str) -> TrainingJob:
    return _get_owned(session, TrainingJob, job_id, owner, "job")


def _request_cancel(session: Session, job: TrainingJob) -> bool:
    """queued → cancelled or running → cancelling (conditional); False when the job is already final."""
    for _ in range(3):  # the state may move under us; each try is one conditional UPDATE
        now = utcnow()
        if job.state == JobState.CANCELLING:
            return True
        if job.state == JobState.QUEUED and jobstore.transition(
            session, job.id, expected=JobState.QUEUED, new=JobState.CANCELLED, cancel_requested_at=now,
            finished_at=now,
        ):
            return True
        if job.state == JobState.RUNNING and jobstore.transition(
            session, job.id, expected=JobState.RUNNING, new=JobState.CANCELLING, cancel_requested_at=now
        ):
            return True
        if job.state in JOB_FINAL:
            return False
        session.refresh(job)
    return job.state in (JobState.CANCELLING, JobState.CANCELLED)


def cancel_job(*, session: Session, job: TrainingJob) -> TrainingJob:
    """Cancel `job` (already authorised). Raises Conflict when it is final."""
    if not _request_cancel(session, job):
        session.rollback()
        raise Conflict(f"the job is already {job.state}", code="job_final")
    session.commit()
    session.refresh(job)
    logger.info("job %s: cancel requested (now %s)", job.id, job.state)
    return job


def retry_job(*, session: Session, settings: Settings, job_id: str) -> TrainingJob:
    """Admin retry: failed|cancelled → queued, error cleared, attempts reset (the history stays in events)."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFound("job not found")
    previous_attempts = job.attempts
    if not jobstore.transition(
        session, job.id, expected=(JobState.FAILED, JobState.CANCELLED), new=JobState.QUEUED, error_code=None,
        error_message=None, cancel_requested_at=None, finished_at=None, heartbeat_at=None, attempts=0,
        queued_at=utcnow(), sent_at=None,
    ):
        session.rollback()
        raise Conflict(f"only failed or cancelled jobs can be retried; this one is {job.state}", code="not_retryable")
    jobstore.add_event(
        session, job.id, EventKind.LOG, {"message": "retried by an admin", "previous_attempts": previous_attempts}
    )
    session.commit()
    dispatch(session, WorkKind.TRAIN, job.id, queue.sender(settings))
    session.refresh(job)
    return job


def job_events(*, session: Session, job_id: str, after: int, limit: int) -> Sequence[JobEvent]:
    return jobstore.events_after(session, job_id, after, limit)


def preview_key(*, session: Session, job_id: str, n: int) -> str:
    event = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.PREVIEW)
        .order_by(JobEvent.id).offset(n).limit(1)
    ).first()
    key = (event.payload or {}).get("image_key") if event is not None else None
    if not isinstance(key, str):
        raise NotFound("preview not found")
    return key


# --- adapters ------------------------------------------------------------------------------------------------


def list_adapters(*, session: Session, owner: User, limit: int, offset: int) -> Sequence[Adapter]:
    return session.scalars(
        select(Adapter).where(Adapter.owner_id == owner.id, Adapter.deleted_at.is_(None))
        .order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(limit).offset(offset)
    ).all()


def get_adapter(*, session: Session, owner: User, adapter_id: str) -> Adapter:
    return _get_owned(session, Adapter, adapter_id, owner, "adapter")


def adapter_filename(adapter: Adapter) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", adapter.descriptor.lower()).strip("-")[:48].strip("-") or "adapter"
    return f"{slug}-{adapter.id[:8]}.safetensors"


def adapter_bytes(*, blobs: BlobStore, adapter: Adapter) -> bytes:
    try:
        return get_verified(blobs, adapter.blob_key, adapter.sha256)
    except BlobNotFound as exc:
        logger.error("adapter %s: blob %s is missing", adapter.id, adapter.blob_key)
        raise Gone("the adapter file is missing from the store", code="blob_missing") from exc
    except BlobIntegrityError as exc:
        raise Conflict(
            "the stored adapter file does not match its recorded sha256; it was not sent", code="adapter_corrupt"
        ) from exc


def delete_adapter(*, session: Session, owner: User, adapter_id: str) -> None:
    adapter = get_adapter(session=session, owner=owner, adapter_id=adapter_id)
    adapter.deleted_at = utcnow()
    session.commit()
    logger.info("user %s deleted adapter %s", owner.id, adapter.id)


# --- generations ---------------------------------------------------------------------------------------------


def create_generation(
    *,
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    owner: User,
    request: GenerationCreate,
    init_image: bytes | None = None,
    mask: bytes | None = None,
    idempotency_key: str | None = None,
) -> GenerationCreated:
    """Queue a generation. A repeated `idempotency_key` with the same request (fields and files) returns the
    first generation (`created=False`); with a different request it is a 409."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise Invalid("Idempotency-Key must be 1..255 characters", code="bad_idempotency_key")
    request_hash = _request_hash(
        (init_image or b"") + b"\0mask\0" + (mask or b""), request.model_dump(mode="json"))
    if idempotency_key is not None:
        replay = _generation_replay(session, owner.id, idempotency_key, request_hash)
        if replay is not None:
            return GenerationCreated(replay, created=False)
    if request.num_images > settings.max_images_per_request:
        raise Invalid(f"num_images must be at most {settings.max_images_per_request}", code="bad_num_images")
    if request.adapter_id is not None:
        get_adapter(session=session, owner=owner, adapter_id=request.adapter_id)
    if mask is not None and init_image is None:
        raise Invalid("a mask needs an init_image", code="mask_without_image")
    if request.strength is not None and init_image is None:
        raise Invalid("strength applies to image-to-image only; send an init_image", code="strength_without_image")

    init_key = mask_key = None
    strength: float | None = None
    if init_image is not None:
        init = _normalize(init_image, settings=settings, what="init_image")
        mask_png: bytes | None = None
        if mask is not None:
            try:
                with decode_slot(settings.max_concurrent_decodes):
                    mask_im = load_mask(mask, max_pixels=settings.max_image_pixels, max_bytes=settings.max_upload_bytes,
                                        max_decode_pixels=settings.max_decode_pixels)
            except ImageRejected as exc:
                raise _image_error(exc, "mask") from exc
            if mask_im.size != (init.width, init.height):
                raise Invalid(
                    f"mask is {mask_im.size[0]}x{mask_im.size[1]} but init_image is {init.width}x{init.height}; "
                    "they must be the same size", code="mask_size_mismatch",
                )
            buf = io.BytesIO()
            mask_im.save(buf, format="PNG")
            mask_png = buf.getvalue()
        else:
            strength = request.strength if request.strength is not None else DEFAULT_IMG2IMG_STRENGTH
        init_key = content_key("inits", init.sha256, "png")
        if not blobs.exists(init_key):
            blobs.put_bytes(init_key, init.png_bytes)
        if mask_png is not None:
            mask_key = content_key("masks", hashlib.sha256(mask_png).hexdigest(), "png")
            if not blobs.exists(mask_key):
                blobs.put_bytes(mask_key, mask_png)

    gen = Generation(
        owner_id=owner.id, adapter_id=request.adapter_id, prompt=request.prompt,
        negative_prompt=request.negative_prompt or None, style_strength=request.style_strength,
        guidance_scale=request.guidance_scale, steps=request.steps,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        num_images=request.num_images, init_image_key=init_key, mask_key=mask_key, strength=strength,
        state=GenerationState.QUEUED, image_keys=[], idempotency_key=idempotency_key, request_hash=request_hash,
    )
    session.add(gen)
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key committed first: answer with its generation
        session.rollback()
        replay = _generation_replay(session, owner.id, idempotency_key, request_hash) if idempotency_key else None
        if replay is None:
            raise
        return GenerationCreated(replay, created=False)
    logger.info("user %s: generation %s queued", owner.id, gen.id)
    dispatch(session, WorkKind.GENERATE, gen.id, queue.sender(settings))  # also updates `gen`: no re-read
    return GenerationCreated(gen, created=True)


@dataclass(frozen=True)
class GenerationCreated:
    generation: Generation
    created: bool  # False: an idempotent replay of an earlier request


def _generation_replay(session: Session, owner_id: str, key: str, request_hash: str) -> Generation | None:
    gen = session.scalar(select(Generation).where(Generation.owner_id == owner_id, Generation.idempotency_key == key))
    if gen is not None and gen.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different request", code="idempotency_mismatch")
    return gen


def list_generations(
    *, session: Session, owner: User, limit: int, offset: int, adapter_id: str | None = None
) -> Sequence[Generation]:
    """`owner`'s generations, newest first; with `adapter_id`, only those made with that adapter."""
    query = select(Generation).where(Generation.owner_id == owner.id)
    if adapter_id is not None:
        query = query.where(Generation.adapter_id == adapter_id)
    return session.scalars(
        query.order_by(Generation.queued_at.desc(), Generation.id.desc()).limit(limit).offset(offset)
    ).all()


def get_generation(*, session: Session, owner: User, generation_id: str) -> Generation:
    return _get_owned(session, Generation, generation_id, owner, "generation")


def generation_image_key(gen: Generation, n: int) -> str:
    keys = gen.image_keys or []
    if not 0 <= n < len(keys):
        raise NotFound("image not found")
    return keys[n]

