"""Generations: creation (text, image-to-image, inpainting; idempotent with a key), listing, their images.

Like uploads, the row is committed first and then dispatched; a failed send leaves it queued for the reconciler.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.http.errors import Conflict, Invalid, NotFound
from api.schemas import (
    MAX_SEED,
    GenerationCreate,
    GenerationPublic,
)
from api.services import limits, queue
from api.services.adapters import get_adapter
from api.services.decoding import decode_slot
from api.services.lookup import get_owned
from api.services.quotas import check_image_cap, check_storage
from api.services.text import unsafe_character
from api.services.uploads import hash_request, image_error, lock_owner, normalize_image
from api.services.versions import generation_adapter
from api.services.webhooks import checked_webhook
from storage import cancels
from storage.blobs import BlobStore, content_key
from storage.dispatch import dispatch
from storage.error_codes import ErrorCode
from storage.images import ImageRejected, load_mask
from storage.models import (
    Generation,
    Style,
    User,
)
from storage.resources import generation_views
from storage.settings import Settings
from storage.states import GenerationState, WorkKind
from trainer.contracts.limits import DEFAULT_IMG2IMG_STRENGTH, DEFAULT_SUBJECT_WEIGHT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationCreated:
    generation: Generation
    created: bool  # False: an idempotent replay of an earlier request


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
        raise Invalid("Idempotency-Key must be 1..255 characters", code=ErrorCode.BAD_IDEMPOTENCY_KEY,
                      field="header.Idempotency-Key")
    request_hash = hash_request(
        (init_image or b"") + b"\0mask\0" + (mask or b""), request.model_dump(mode="json"))
    if idempotency_key is not None:
        replay = _generation_replay(session, owner.id, idempotency_key, request_hash)
        if replay is not None:
            return GenerationCreated(replay, created=False)
    if request.num_images > settings.max_images_per_request:
        raise Invalid(f"num_images must be at most {limits.limit(settings, 'max_images_per_request')}",
                      code=ErrorCode.BAD_NUM_IMAGES, field="body.num_images")
    for name, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        if bad := unsafe_character(text or ""):
            raise Invalid(f"{name} contains {bad}", code=ErrorCode.BAD_PROMPT, field=f"body.{name}")
    check_image_cap(session, settings, owner, request.num_images)  # before any decode or write
    adding = request.num_images * settings.image_charge_bytes + len(init_image or b"") + len(mask or b"")
    check_storage(session, settings, owner, adding, "this generation")
    adapter_id = generation_adapter(session=session, owner=owner, adapter_id=request.adapter_id,
                                    style_id=request.style_id, version=request.version)
    subject_weight = check_subject(session, owner, request)
    if mask is not None and init_image is None:
        raise Invalid("a mask needs an init_image", code=ErrorCode.MASK_WITHOUT_IMAGE)
    if request.strength is not None and init_image is None:
        raise Invalid("strength applies to image-to-image only; send an init_image",
                      code=ErrorCode.STRENGTH_WITHOUT_IMAGE)
    hook_url, hook_events = checked_webhook(request.webhook, request.webhook_events_filter, settings=settings)

    init_key = mask_key = None
    strength: float | None = None
    if init_image is not None:
        init = normalize_image(init_image, settings=settings, what="init_image")
        mask_png: bytes | None = None
        if mask is not None:
            try:
                with decode_slot(settings.max_concurrent_decodes):
                    mask_im = load_mask(mask, max_pixels=settings.max_image_pixels, max_bytes=settings.max_upload_bytes,
                                        max_decode_pixels=settings.max_decode_pixels)
            except ImageRejected as exc:
                raise image_error(exc, "mask") from exc
            if mask_im.size != (init.width, init.height):
                raise Invalid(
                    f"mask is {mask_im.size[0]}x{mask_im.size[1]} but init_image is {init.width}x{init.height}; "
                    "they must be the same size", code=ErrorCode.MASK_SIZE_MISMATCH,
                )
            buf = io.BytesIO()
            mask_im.save(buf, format="PNG")
            mask_png = buf.getvalue()
        else:
            strength = request.strength if request.strength is not None else DEFAULT_IMG2IMG_STRENGTH
        init_key = content_key("inits", init.sha256, "png")
        blobs.put_bytes(init_key, init.png_bytes)  # rewritten even when present (see styles.create_style)
        if mask_png is not None:
            mask_key = content_key("masks", hashlib.sha256(mask_png).hexdigest(), "png")
            blobs.put_bytes(mask_key, mask_png)

    gen = Generation(
        owner_id=owner.id, adapter_id=adapter_id, prompt=request.prompt,
        negative_prompt=request.negative_prompt or None, style_strength=request.style_strength,
        guidance_scale=request.guidance_scale, steps=request.steps, text_guidance=request.text_guidance,
        subject_adapter_id=request.subject_adapter_id, subject_weight=subject_weight,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        num_images=request.num_images, init_image_key=init_key, mask_key=mask_key, strength=strength,
        state=GenerationState.QUEUED, image_keys=[], idempotency_key=idempotency_key, request_hash=request_hash,
        webhook=hook_url, webhook_events=hook_events,
    )
    lock_owner(session, owner)  # the cap again, under the owner's lock until the commit
    check_image_cap(session, settings, owner, request.num_images)
    check_storage(session, settings, owner, adding, "this generation")
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


def cancel_generation(*, session: Session, owner: User, generation_id: str) -> Generation:
    """Cancel `owner`'s queued or running generation (storage/cancels.py); 409 `generation_final` once final."""
    gen = get_owned(session, Generation, generation_id, owner, "generation")
    if not cancels.cancel_generation(session, gen.id):
        session.rollback()
        raise Conflict(f"the generation has already {gen.state}", code=ErrorCode.GENERATION_FINAL)
    session.commit()
    session.refresh(gen)
    logger.info("user %s: generation %s cancelled", owner.id, gen.id)
    return gen


def _generation_replay(session: Session, owner_id: str, key: str, request_hash: str) -> Generation | None:
    gen = session.scalar(select(Generation).where(Generation.owner_id == owner_id, Generation.idempotency_key == key))
    if gen is not None and gen.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different request", code=ErrorCode.IDEMPOTENCY_MISMATCH)
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
    return get_owned(session, Generation, generation_id, owner, "generation")


def check_subject(session: Session, owner: User, request: GenerationCreate) -> float | None:
    """γ to store: the request's or DEFAULT_SUBJECT_WEIGHT with a subject adapter (the caller's own, trained from a
    subject), None without one; a weight without a subject is refused rather than ignored."""
    if request.subject_adapter_id is None:
        if request.subject_weight is not None:
            raise Invalid("subject_weight needs a subject_adapter_id", code=ErrorCode.SUBJECT_WEIGHT_WITHOUT_SUBJECT,
                          field="body.subject_weight")
        return None
    adapter = get_adapter(session=session, owner=owner, adapter_id=request.subject_adapter_id)
    style = session.get(Style, adapter.style_id)
    if style is None or style.kind != "subject":
        raise Invalid("subject_adapter_id must name the adapter of a subject (a style created with kind "
                      "'subject'); to use a style adapter, pass it as adapter_id", code=ErrorCode.NOT_A_SUBJECT,
                      field="body.subject_adapter_id")
    return request.subject_weight if request.subject_weight is not None else DEFAULT_SUBJECT_WEIGHT


def generation_image_key(gen: Generation, n: int) -> str:
    keys = gen.image_keys or []
    if not 0 <= n < len(keys):
        raise NotFound("image not found")
    return keys[n]


def generation_view(session: Session, gen: Generation) -> GenerationPublic:
    """`gen` as the API shows it, with where it stands: queue position and estimated seconds to go."""
    return generation_views(session, [gen])[0]
