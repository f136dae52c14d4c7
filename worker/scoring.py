"""The paper's two CLIP scores for what the workers make: an adapter's previews and a generation's images.

Text score = cosine(image, its prompt); style score = cosine(image, each of the style's reference images),
averaged (trainer/clip.py). Scores report on work, they never decide it: without CLIP (weights unavailable) or
when scoring itself fails, the scores are None and the job or generation still succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from sqlalchemy import select, update

import trainer
from storage.blobs import BlobNotFound
from storage.models import Adapter, Generation, Style, reference_images
from worker.runtime import Runtime
from worker.shared import TRANSIENT, open_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    text: list[float]
    style: list[float] | None  # None without a style reference (a generation without an adapter)


def score_images(rt: Runtime, images: Sequence[Image.Image], prompts: Sequence[str],
                 references: Sequence[Image.Image] = ()) -> Scores | None:
    """One text score per image against its prompt, and one style score per image against the references."""
    if not images:
        return None
    clip = rt.clip()
    if clip is None:
        return None
    try:
        text = [float(x) for x in trainer.clip_text_score(clip, images, prompts).tolist()]
        style = ([float(x) for x in trainer.clip_style_score(clip, images, references).tolist()]
                 if references else None)
    except TRANSIENT:
        raise
    except Exception:  # a report on the work must not fail the work
        logger.exception("CLIP scoring failed; the scores stay empty")
        return None
    return Scores(text, style)


def mean(values: Sequence[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def record_adapter_scores(rt: Runtime, adapter_id: str, previews: Sequence[tuple[str, Image.Image]],
                          references: Sequence[Image.Image]) -> None:
    """An adapter version's scores: the means over its (prompt, image) previews, style against `references`."""
    scores = score_images(rt, [im for _, im in previews], [p for p, _ in previews], references)
    if scores is not None:
        with rt.session_factory() as s:
            s.execute(update(Adapter).where(Adapter.id == adapter_id).values(
                text_score=mean(scores.text), style_score=mean(scores.style)))
            s.commit()


def generation_scores(rt: Runtime, owners: Sequence[Generation], images: Sequence[Image.Image],
                      ) -> dict[str, Scores]:
    """Each generation's scores (images[i] belongs to owners[i]); the style score against the reference images of
    its adapter's style. Generations left out were not scored."""
    if rt.clip() is None:
        return {}
    adapter_ids = {g.adapter_id for g in owners if g.adapter_id is not None}
    with rt.session_factory() as s:
        rows = s.execute(select(Adapter.id, Style.image_key, Style.references).join(Style, Style.id == Adapter.style_id)
                         .where(Adapter.id.in_(adapter_ids))).all() if adapter_ids else []
    references: dict[str, list[Image.Image]] = {}
    for adapter_id, image_key, refs in rows:
        try:
            references[adapter_id] = [open_image(rt.store.get_bytes(key)).convert("RGB")
                                      for key, _ in reference_images(image_key, refs)]
        except (BlobNotFound, UnidentifiedImageError, OSError, ValueError) as exc:
            logger.warning("style images of adapter %s unreadable (%s): no style score", adapter_id, exc)
    out: dict[str, Scores] = {}
    for gen in dict.fromkeys(owners):  # in order, once each
        mine = [im for g, im in zip(owners, images, strict=True) if g is gen]
        refs_of = references.get(gen.adapter_id, []) if gen.adapter_id is not None else []
        scores = score_images(rt, mine, [gen.prompt] * len(mine), refs_of)
        if scores is not None:
            out[gen.id] = scores
    return out
