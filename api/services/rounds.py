"""Feedback rounds (StyleDrop's iterative training, paper §3.3): samples to pick from, and a round's training job.

A round is a training job of the style like any other (queue, progress, events, cancel, checkpoints, resume) whose
`params.round` says what it trains on; its adapter becomes the style's next version. Everything a round names is
checked here, before anything is written: a bad selection is a 4xx that creates nothing.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.http.errors import Conflict, Invalid, NotFound
from api.schemas import MAX_SEED, GenerationCreate, RoundCreate, RoundPick, SamplesCreate, SamplesPublic
from api.services.generations import create_generation
from api.services.limits import limit
from api.services.lookup import get_owned
from api.services.quotas import check_image_cap, check_storage
from api.services.styles import create_style_job
from api.services.versions import default_of, generation_adapter, live_versions, styled, version_of
from storage.blobs import BlobStore
from storage.error_codes import ErrorCode
from storage.job_params import AutomaticRound, HumanRound, Pick
from storage.models import Adapter, Generation, Style, TrainingJob, User
from storage.resources import generation_views
from storage.settings import Settings
from storage.states import GENERATION_FINAL, GenerationState
from trainer.contracts.prompts import feedback_prompts


def create_samples(*, session: Session, blobs: BlobStore, settings: Settings, owner: User, style_id: str,
                   body: SamplesCreate) -> SamplesPublic:
    """One generation per feedback prompt with the named (or default) version, recorded as one set; the images of
    a human round are picked from these."""
    style = get_owned(session, Style, style_id, owner, "style")
    adapter_id = generation_adapter(session=session, owner=owner, adapter_id=None, style_id=style.id,
                                    version=body.version)
    if body.images_per_prompt > settings.max_images_per_request:
        raise Invalid(f"images_per_prompt must be at most {limit(settings, 'max_images_per_request')}",
                      code=ErrorCode.BAD_NUM_IMAGES, field="body.images_per_prompt")
    prompts = feedback_prompts(style.descriptor)[: body.prompts]
    images = len(prompts) * body.images_per_prompt
    check_image_cap(session, settings, owner, images)  # all of them, or none
    check_storage(session, settings, owner, images * settings.image_charge_bytes, "these samples")
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED // 2)
    gens = []
    for i, prompt in enumerate(prompts):
        request = GenerationCreate(prompt=prompt, adapter_id=adapter_id, steps=body.steps,
                                   num_images=body.images_per_prompt,
                                   seed=(seed + i * body.images_per_prompt) % (MAX_SEED + 1))
        gens.append(create_generation(session=session, blobs=blobs, settings=settings, owner=owner,
                                      request=request).generation)
    sample_set = uuid.uuid4().hex
    session.execute(update(Generation).where(Generation.id.in_([g.id for g in gens])).values(sample_set=sample_set))
    session.commit()
    return _samples_view(session, style, gens)


def get_samples(*, session: Session, owner: User, style_id: str, version: int | None) -> SamplesPublic:
    """The newest samples set of `style_id` (of `version` when named) with its progress; an empty set (of the
    default version) when none was made yet."""
    style = styled(get_owned(session, Style, style_id, owner, "style"))
    if version is not None:
        adapter_ids = [version_of(session, style, version).id]
    else:
        adapter_ids = list(session.scalars(select(Adapter.id).where(Adapter.style_id == style.id)))
    newest = session.scalar(select(Generation.sample_set).where(
        Generation.owner_id == owner.id, Generation.sample_set.is_not(None), Generation.adapter_id.in_(adapter_ids),
    ).order_by(Generation.queued_at.desc(), Generation.id.desc()).limit(1)) if adapter_ids else None
    if newest is None:
        default = default_of(style, live_versions(session, [style.id])[style.id])
        return SamplesPublic(version=version if version is not None else (default.version if default else None),
                             total=0, done=0, progress=0.0, eta_seconds=None, items=[])
    gens = session.scalars(select(Generation).where(Generation.owner_id == owner.id,
                                                    Generation.sample_set == newest)).all()
    return _samples_view(session, style, gens)


def _samples_view(session: Session, style: Style, gens: Sequence[Generation]) -> SamplesPublic:
    order = {p: i for i, p in enumerate(feedback_prompts(style.descriptor))}
    items = generation_views(session, sorted(gens, key=lambda g: (order.get(g.prompt, len(order)), g.queued_at)))
    version = session.scalar(select(Adapter.version).where(Adapter.id == items[0].adapter_id)) if items else None
    final = [g for g in items if g.state in GENERATION_FINAL]
    waiting = [g.eta_seconds for g in items if g.state not in GENERATION_FINAL]
    return SamplesPublic(
        version=version, total=len(items), done=len(final),
        progress=round(sum(1.0 if g.state in GENERATION_FINAL else g.progress for g in items) / max(len(items), 1), 3),
        eta_seconds=0.0 if not waiting else (None if None in waiting else max(w for w in waiting if w is not None)),
        items=items)


def create_round(*, session: Session, settings: Settings, owner: User, style_id: str,
                 body: RoundCreate) -> TrainingJob:
    style = styled(get_owned(session, Style, style_id, owner, "style"))
    feedback: HumanRound | AutomaticRound
    if body.mode == "human":
        feedback = HumanRound(selection=_checked_selection(session, owner, style, body.selection))
    else:
        if body.selection is not None:
            raise Invalid("an automatic round picks its own images; send no selection",
                          code=ErrorCode.SELECTION_NOT_ALLOWED,
                          field="body.selection")
        default = default_of(style, live_versions(session, [style.id])[style.id])
        if default is None:
            raise Invalid("an automatic round renders the style's default version, and it has none yet",
                          code=ErrorCode.STYLE_NOT_TRAINED)
        feedback = AutomaticRound(adapter_id=default.id, version=default.version, prompts=body.prompts,
                                  per_prompt=body.per_prompt)
    return create_style_job(session=session, settings=settings, owner=owner, style_id=style.id, steps=body.steps,
                            seed=body.seed, feedback=feedback)


def _checked_selection(session: Session, owner: User, style: Style,
                       picks: list[RoundPick] | None) -> list[Pick]:
    """The picks as job params, each naming an existing image of a succeeded generation of `style`'s."""
    if not picks:
        raise Invalid("a human round needs a selection: at least one picked image", code=ErrorCode.EMPTY_SELECTION,
                      field="body.selection")
    seen: set[tuple[str, int]] = set()
    for n, p in enumerate(picks):
        if (p.generation_id, p.index) in seen:
            raise Invalid(f"image {p.index} of generation {p.generation_id} is picked twice",
                          code=ErrorCode.DUPLICATE_PICK,
                          field=f"body.selection.{n}")
        seen.add((p.generation_id, p.index))
    ids = list({p.generation_id for p in picks})
    rows = session.execute(select(Generation, Adapter.style_id).outerjoin(Adapter, Adapter.id == Generation.adapter_id)
                           .where(Generation.id.in_(ids), Generation.owner_id == owner.id)).all()
    found = {gen.id: (gen, sid) for gen, sid in rows}
    for n, p in enumerate(picks):
        field = f"body.selection.{n}"
        if p.generation_id not in found:  # another user's generation is as unknown as a missing one
            raise NotFound(f"generation {p.generation_id} not found", code=ErrorCode.GENERATION_NOT_FOUND, field=field)
        gen, sid = found[p.generation_id]
        if sid != style.id:
            raise Invalid(f"generation {gen.id} was not made with a version of style {style.id}",
                          code=ErrorCode.GENERATION_NOT_OF_STYLE, field=field)
        if gen.state != GenerationState.SUCCEEDED:
            raise Conflict(f"generation {gen.id} is {gen.state}; pick images of succeeded generations",
                           code=ErrorCode.GENERATION_NOT_READY)
        if p.index >= len(gen.image_keys or []):
            raise Invalid(f"generation {gen.id} has {len(gen.image_keys or [])} images; there is no image {p.index}",
                          code=ErrorCode.UNKNOWN_IMAGE_INDEX, field=field)
    return [Pick(generation_id=p.generation_id, index=p.index) for p in picks]


def pick_key(job: TrainingJob, n: int) -> str:
    """The blob of the n-th image an automatic round kept (the job's `picks`); 404 when there is none."""
    picks = job.picks or []
    key = picks[n].get("image_key") if n < len(picks) and isinstance(picks[n], dict) else None
    if not isinstance(key, str):
        raise NotFound(f"job {job.id} has no picked image {n}")
    return key
