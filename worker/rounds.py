"""What a training job trains on when it is more than the style's images under one prompt: the references with
their own captions, a subject's photos under its prompt, or a feedback round's (image, caption) pairs, those of
`params.round` (storage/job_params.py, written by api/services/rounds.py):

- human: the picked images (generation id and index), each captioned with its generation's prompt;
- automatic: the style's default version (as it was when the round was asked for) rendered over the feedback
  prompts, `per_prompt` candidates each, scored with CLIP against the style's reference images and the best of
  each prompt kept (`trainer.select_best`). The candidates' seeds follow from the job's seed, so a resumed round
  trains on the same picks as the run it resumes. Its candidates rendered and scored are `phase` events, and the
  kept images are stored and listed on the job (`picks`) with a `picks` event.
"""

from __future__ import annotations

import logging

from PIL import Image, UnidentifiedImageError
from sqlalchemy import select, update

import trainer
from storage import jobs
from storage.blobs import BlobNotFound, new_key
from storage.error_codes import FailureCode
from storage.job_params import AutomaticRound, HumanRound, JobParams, Pick
from storage.models import Generation, TrainingJob
from storage.resources import pick_views
from storage.states import EventKind
from trainer import TrainingExample
from trainer.contracts.phases import Phase
from trainer.contracts.prompts import training_prompt
from trainer.feedback import PhaseClock, ScoredCandidate
from worker.progress import PhaseRecorder, PhaseStopped
from worker.runtime import Runtime
from worker.shared import TRANSIENT, open_image, png

logger = logging.getLogger(__name__)


class RoundError(Exception):
    """The round cannot run; `code` and `message` end its job `failed`."""

    def __init__(self, code: FailureCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def job_examples(rt: Runtime, job: TrainingJob, references: list[Image.Image], captions: list[str | None],
                 descriptor: str, content: str | None, subject: str | None) -> list[TrainingExample] | None:
    """A round's pairs; else a subject's photos under `subject`, or references with their own captions (the others
    take the StyleDrop prompt); None for images under one prompt."""
    picked = round_examples(rt, job, references, descriptor)
    if picked is not None:
        return picked
    if subject is not None:
        return [TrainingExample(im, subject) for im in references]
    if any(captions):
        default = training_prompt(descriptor, content)
        return [TrainingExample(im, c or default) for im, c in zip(references, captions, strict=True)]
    return None


def round_examples(rt: Runtime, job: TrainingJob, references: list[Image.Image],
                   descriptor: str) -> list[TrainingExample] | None:
    """The job's training pairs when it is a feedback round; None for a plain job (it trains on the style image)."""
    params = JobParams.of(job)
    if params.round is None:
        return None
    if isinstance(params.round, HumanRound):
        return picked_examples(rt, params.round.selection)
    return automatic_examples(rt, job, params.round, references, descriptor, params.seed)


def picked_examples(rt: Runtime, selection: list[Pick]) -> list[TrainingExample]:
    with rt.session_factory() as s:
        gens = {g.id: g for g in s.scalars(select(Generation).where(
            Generation.id.in_([p.generation_id for p in selection])))}
    out = []
    for p in selection:
        gen, index = gens.get(p.generation_id), p.index
        try:
            if gen is None or index >= len(gen.image_keys or []):
                raise BlobNotFound(f"{p.generation_id}/{index}")
            image = open_image(rt.store.get_bytes(gen.image_keys[index])).convert("RGB")
        except (BlobNotFound, UnidentifiedImageError, OSError, ValueError) as exc:
            raise RoundError(FailureCode.SELECTION_MISSING, f"Picked image {index} of generation "
                             f"{p.generation_id} no longer exists; start the round again with a new "
                             "selection.") from exc
        out.append(TrainingExample(image, gen.prompt))
    return out


def automatic_examples(rt: Runtime, job: TrainingJob, feedback: AutomaticRound, references: list[Image.Image],
                       descriptor: str, seed: int) -> list[TrainingExample]:
    """Render, score and keep; each phase is reported on the job (`phase` events, worker/progress.py) and the kept
    images are stored as the job's `picks` with a `picks` event. `PhaseStopped` (cancelled meanwhile) passes up."""
    clip = rt.clip()
    if clip is None:
        raise RoundError(FailureCode.CLIP_UNAVAILABLE, "An automatic round scores images with CLIP, which this "
                         "worker could not load; an operator has to set STYLEDROP_CLIP_MODEL (a human round works "
                         "without it).")
    adapter_id = feedback.adapter_id
    prompts = trainer.feedback_prompts(descriptor)[: feedback.prompts]
    on_phase = PhaseRecorder(rt, job.id, job.worker_host)
    rendering = PhaseClock(Phase.RENDERING_CANDIDATES, on_phase)
    errors: dict[str, Exception] = {}
    try:
        rendering.start(len(prompts) * feedback.per_prompt)
        with rt.cache().batch([adapter_id], errors) as slots:
            if adapter_id in errors:
                raise RoundError(FailureCode.ADAPTER_MISSING, f"Version {feedback.version} could not be "
                                 f"loaded ({errors[adapter_id]}); make another version the default and start "
                                 "again.")
            settings = trainer.EvalSettings(adapter=slots[adapter_id], seed=seed, steps=rt.settings.preview_steps)
            candidates = trainer.render_candidates(rt.parts(), prompts, per_prompt=feedback.per_prompt,
                                                   settings=settings, on_batch=rendering)
        picked = trainer.select_best(candidates, trainer.ClipScorer(clip, references), per_prompt=1,
                                     on_phase=on_phase)
    except (RoundError, PhaseStopped):
        raise
    except TRANSIENT:
        raise
    except Exception as exc:  # a sampling or scoring failure ends this round's job, not the worker
        logger.exception("automatic round of job %s failed", job.id)
        raise RoundError(FailureCode.ROUND_ERROR, f"The round's samples could not be made: {exc}") from exc
    store_picks(rt, job.id, picked, len(candidates))
    return [p.example() for p in picked]


def store_picks(rt: Runtime, job_id: str, picked: list[ScoredCandidate], candidates: int) -> None:
    """The kept images as PNG blobs, listed on the job (`picks`, served at /v1/jobs/{id}/picks/{n}) and announced
    with their scores and URLs by a `picks` event. A resumed round renders the same picks and lists them anew."""
    rows = []
    for p in picked:
        key = new_key("picks", "png")
        rt.store.put_bytes(key, png(p.candidate.image))
        rows.append({"prompt": p.candidate.prompt, "candidate": p.index, "text_score": p.text_score,
                     "style_score": p.style_score, "score": p.score, "image_key": key})
    with rt.session_factory() as s:
        s.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(picks=rows))
        jobs.add_event(s, job_id, EventKind.LOG, {
            "message": f"automatic round: kept {len(picked)} of {candidates} images by CLIP score"})
        jobs.add_event(s, job_id, EventKind.PICKS, {"picks": [pick.model_dump() for pick in pick_views(job_id, rows)]})
        s.commit()
