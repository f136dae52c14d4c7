"""Styles: the upload (which queues the style's training job), listing with each style's newest job, deletion.

The row is committed FIRST, then `storage.dispatch.dispatch` sends the task and records the send; a failed send
is logged and leaves the row queued for the reconciler, and the caller still answers 202.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.http.errors import Conflict, Invalid, NotFound, RateLimited
from api.schemas import (
    MAX_SEED,
    JobPublic,
    StylePublic,
)
from api.services import limits, queue
from api.services.jobs import request_cancel
from api.services.lookup import get_owned
from api.services.quotas import adapter_bytes, check_storage
from api.services.references import (
    ImageSource,
    check_references,
    close_all,
    decode_references,
    store_references,
)
from api.services.text import is_invisible, unsafe_character
from api.services.uploads import BytesSource, hash_request, lock_owner
from api.services.versions import default_of, live_versions
from api.services.webhooks import checked_webhook
from storage import jobs as jobstore
from storage.blobs import BlobStore
from storage.dispatch import dispatch
from storage.error_codes import ErrorCode
from storage.job_params import AutomaticRound, HumanRound, JobParams
from storage.models import (
    Style,
    TrainingJob,
    User,
    utcnow,
)
from storage.resources import job_views
from storage.settings import Settings
from storage.states import JOB_UNFINISHED, EventKind, JobState, WorkKind

logger = logging.getLogger(__name__)


DEFAULT_JOB_RETRY_AFTER = 30


@dataclass(frozen=True)
class StyleCreated:
    style: Style
    job: TrainingJob
    created: bool  # False: an idempotent replay of an earlier request


def _check_job_cap(session: Session, settings: Settings, owner: User, *, lock: bool) -> None:
    """429 with Retry-After when `owner` already has `max_concurrent_jobs_per_user` unfinished training jobs.

    `lock=True` first takes the owner's lock (`lock_owner`).
    """
    if lock:
        lock_owner(session, owner)
    active = session.execute(
        select(func.count(), func.min(TrainingJob.eta_seconds))
        .where(TrainingJob.owner_id == owner.id, TrainingJob.state.in_(JOB_UNFINISHED))
    ).one()
    cap = settings.max_concurrent_jobs_per_user
    if int(active[0]) >= cap:
        eta = active[1]
        retry = int(min(max(eta if eta is not None else DEFAULT_JOB_RETRY_AFTER, 5), 3600))
        raise RateLimited(
            limits.too_many_jobs(settings, int(active[0]), retry),
            code=ErrorCode.TOO_MANY_JOBS, headers={"Retry-After": str(retry)},
        )


def _check_steps_seed(settings: Settings, steps: int | None, seed: int | None) -> None:
    if steps is not None and not 1 <= steps <= settings.max_train_steps:
        raise Invalid(f"steps must be between 1 and {limits.limit(settings, 'max_train_steps')}",
                      code=ErrorCode.BAD_STEPS, field="body.steps")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise Invalid(f"seed must be between 0 and {MAX_SEED}", code=ErrorCode.BAD_SEED, field="body.seed")


def create_style(
    *,
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    owner: User,
    images: Sequence[ImageSource | bytes],
    descriptor: str | None,
    content: str | None,
    steps: int | None,
    seed: int | None,
    idempotency_key: str | None,
    webhook: str | None = None,
    webhook_events: Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
    kind: str = "style",
    class_word: str | None = None,
) -> StyleCreated:
    sources = [BytesSource(i) if isinstance(i, bytes) else i for i in images]
    refs = check_references(settings=settings, kind=kind, images=sources, captions=captions, class_word=class_word)
    # A subject is named by its class word unless a descriptor is given (it shows in listings and the adapter).
    descriptor = (descriptor or "").strip() or (refs.class_word if refs.kind == "subject" else "") or ""
    content = content.strip() if content and content.strip() else None
    if not descriptor:
        raise Invalid("descriptor must not be empty", code=ErrorCode.BAD_DESCRIPTOR, field="body.descriptor")
    if len(descriptor) > 200:
        raise Invalid("descriptor must be at most 200 characters",
                      code=ErrorCode.BAD_DESCRIPTOR, field="body.descriptor")
    if is_invisible(descriptor):
        raise Invalid("descriptor has no visible characters (only spaces, control or zero-width ones)",
                      code=ErrorCode.BAD_DESCRIPTOR, field="body.descriptor")
    if content is not None and len(content) > 500:
        raise Invalid("content must be at most 500 characters", code=ErrorCode.BAD_CONTENT, field="body.content")
    checked = (("descriptor", descriptor, ErrorCode.BAD_DESCRIPTOR), ("content", content, ErrorCode.BAD_CONTENT))
    for name, text, code in checked:
        bad = unsafe_character(text or "")
        if bad:
            raise Invalid(f"{name} contains {bad}", code=code, field=f"body.{name}")
    _check_steps_seed(settings, steps, seed)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise Invalid("Idempotency-Key must be 1..255 characters", code=ErrorCode.BAD_IDEMPOTENCY_KEY,
                      field="header.Idempotency-Key")

    hook_url, hook_events = checked_webhook(webhook, webhook_events, settings=settings)
    extra = {"kind": refs.kind, "class_word": refs.class_word, "captions": refs.captions} if (
        refs.kind != "style" or len(images) > 1 or any(refs.captions)) else {}  # one plain image: hashes as before
    request_hash = hash_request((s.read() for s in sources), sep=b"\0image\0", fields={
        "descriptor": descriptor, "content": content, "steps": steps, "seed": seed, **extra,
        **({"webhook": hook_url, "events": hook_events} if hook_url else {})})
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

    normalized = decode_references(settings, refs)
    try:
        # the images and the adapter the job will write, charged before anything is written
        adding = sum(n.size for n in normalized) + adapter_bytes(session, settings)
        check_storage(session, settings, owner, adding, "this upload (its images and the adapter it will train)")
        references = store_references(blobs, normalized, refs)
    finally:
        close_all(normalized)
    first = references[0]

    total = steps or settings.default_train_steps
    style = Style(  # image_bytes: every reference together (what the storage cap counts)
        owner_id=owner.id, image_key=first["key"], image_sha256=first["sha256"],
        image_bytes=sum(r["bytes"] for r in references), width=first["width"], height=first["height"],
        descriptor=descriptor, content=content, kind=refs.kind, class_word=refs.class_word, references=references,
    )
    lock_owner(session, owner)
    if idempotency_key is not None:  # a concurrent retry may have committed meanwhile: it is this request's job
        replay = _idempotent_replay(session, owner.id, idempotency_key, request_hash)
        if replay is not None:
            session.rollback()
            return replay
    _check_job_cap(session, settings, owner, lock=False)  # again under the owner's lock, just before insert
    check_storage(session, settings, owner, adding, "this upload (its images and the adapter it will train)")
    session.add(style)
    session.flush()
    job = TrainingJob(
        style_id=style.id, owner_id=owner.id, state=JobState.QUEUED, total_steps=total,
        max_attempts=settings.max_attempts,
        params=JobParams(steps=total, seed=seed if seed is not None else secrets.randbelow(MAX_SEED + 1),
                         descriptor=descriptor, content=content).to_json(),
        idempotency_key=idempotency_key, request_hash=request_hash, webhook=hook_url, webhook_events=hook_events,
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
        raise Conflict("this Idempotency-Key was used with a different request", code=ErrorCode.IDEMPOTENCY_MISMATCH)
    style = session.get(Style, job.style_id)
    assert style is not None
    return StyleCreated(style=style, job=job, created=False)


def style_views(session: Session, styles: Sequence[Style]) -> list[StylePublic]:
    """`styles` validated, each with its newest training job's id (one query for the page)."""
    latest: dict[str, str] = {}
    if styles:
        for style_id, job_id in session.execute(
            select(TrainingJob.style_id, TrainingJob.id).where(TrainingJob.style_id.in_([s.id for s in styles]))
            .order_by(TrainingJob.queued_at, TrainingJob.id)
        ):
            latest[style_id] = job_id  # ordered oldest first: the last one written wins
    versions = live_versions(session, [s.id for s in styles])
    views = []
    for s in styles:
        default = default_of(s, versions[s.id])
        views.append(StylePublic.model_validate(s).model_copy(update={
            "latest_job_id": latest.get(s.id), "default_version": default.version if default else None}))
    return views


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


def list_styles(*, session: Session, owner: User, limit: int, offset: int) -> list[StylePublic]:
    styles = session.scalars(
        select(Style).where(Style.owner_id == owner.id, Style.deleted_at.is_(None))
        .order_by(Style.created_at.desc(), Style.id.desc()).limit(limit).offset(offset)
    ).all()
    return style_views(session, styles)


def get_style(*, session: Session, owner: User, style_id: str) -> Style:
    return get_owned(session, Style, style_id, owner, "style")


def reference_key(style: Style, n: int) -> str:
    """The blob key of reference image `n`; 404 past the last one."""
    keys = [key for key, _ in style.reference_images]
    if not 0 <= n < len(keys):
        raise NotFound(f"this style has {len(keys)} reference image(s), numbered from 0",
                       code=ErrorCode.IMAGE_NOT_FOUND)
    return keys[n]


def delete_style(*, session: Session, owner: User, style_id: str) -> None:
    style = get_style(session=session, owner=owner, style_id=style_id)
    style.deleted_at = utcnow()
    for job in session.scalars(
        select(TrainingJob).where(TrainingJob.style_id == style.id, TrainingJob.state.in_(JOB_UNFINISHED))
    ):
        request_cancel(session, job)
    session.commit()
    logger.info("user %s deleted style %s", owner.id, style.id)


def create_style_job(
    *, session: Session, settings: Settings, owner: User, style_id: str, steps: int | None, seed: int | None,
    feedback: HumanRound | AutomaticRound | None = None,
) -> TrainingJob:
    """Train a style again from the image it stored (the way out after a cancelled or failed job, or a deleted
    adapter). Default steps: those of the style's last job; default seed: random. 409 while the style still has
    an unfinished job; 429 over the per-user job cap, as an upload."""
    style = get_style(session=session, owner=owner, style_id=style_id)
    _check_steps_seed(settings, steps, seed)
    lock_owner(session, owner)  # one request of this user at a time: the checks below hold until the commit
    last = session.scalar(
        select(TrainingJob).where(TrainingJob.style_id == style.id)
        .order_by(TrainingJob.queued_at.desc(), TrainingJob.id.desc()).limit(1)
    )
    if last is not None and last.state in JOB_UNFINISHED:
        raise Conflict(f"this style is still training (job {last.id} is {last.state}); cancel it first",
                       code=ErrorCode.STYLE_BUSY)
    _check_job_cap(session, settings, owner, lock=False)
    check_storage(session, settings, owner, adapter_bytes(session, settings), "this training job's adapter")
    if steps is None:
        previous = JobParams.of(last).steps if last is not None else None
        default = settings.default_train_steps
        steps = previous if isinstance(previous, int) and 1 <= previous <= settings.max_train_steps else default
    job = TrainingJob(
        style_id=style.id, owner_id=owner.id, state=JobState.QUEUED, total_steps=steps,
        max_attempts=settings.max_attempts,
        params=JobParams(steps=steps, seed=seed if seed is not None else secrets.randbelow(MAX_SEED + 1),
                         descriptor=style.descriptor, content=style.content, round=feedback).to_json(),
    )
    session.add(job)
    session.flush()
    jobstore.add_event(session, job.id, EventKind.STATE, {"from": None, "to": JobState.QUEUED})
    session.commit()
    logger.info("user %s: style %s trained again, job %s queued (%d steps)", owner.id, style.id, job.id, steps)
    dispatch(session, WorkKind.TRAIN, job.id, queue.sender(settings))
    return job
