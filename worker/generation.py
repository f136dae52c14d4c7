"""The generation batch, in named steps: claim, drop the worn out, prefetch the adapters queued work will need,
group by adapter slots, load adapters, build and check requests, sample (one call per output size), store the
images, finish each row.

One message claims its own generation and up to `generate_batch_size - 1` other queued ones, so a busy worker
serves several users' requests (and adapters) in one sampling loop. A generation that cannot run ends `failed`
with a reason without failing its neighbours: every request is checked alone (`trainer.requests.check_request`,
everything `sample` would refuse) before the batch is assembled, so only the bad one is dropped; only transient
errors (database, broker) escape to Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from PIL import UnidentifiedImageError

import trainer
from storage import claims, jobs
from storage.blobs import BlobIntegrityError, BlobNotFound, new_key
from storage.error_codes import FailureCode
from storage.models import Generation, utcnow
from storage.states import GenerationState
from trainer import GenerationRequest
from trainer.contracts.limits import DEFAULT_SUBJECT_WEIGHT
from trainer.requests import check_request
from worker.adapter_cache import AdapterMissing, split_by_slots
from worker.progress import BatchGone, StepRecorder
from worker.runtime import Runtime
from worker.scoring import generation_scores
from worker.shared import TRANSIENT, IdLogger, open_image, png

logger = logging.getLogger(__name__)

# What a user reads when the adapter of their generation cannot be used.
ADAPTER_ERRORS: dict[type[Exception], tuple[FailureCode, str]] = {
    BlobIntegrityError: (FailureCode.ADAPTER_CORRUPT, "The adapter file is damaged (its checksum does not match); "
                         "train the style again."),
    trainer.AdapterError: (FailureCode.ADAPTER_INCOMPATIBLE,
                           "The adapter does not fit the model this server runs: {exc}"),
    AdapterMissing: (FailureCode.ADAPTER_MISSING, "The adapter no longer exists."),
}


def run_generate(rt: Runtime, generation_id: str) -> str:
    """Claim `generation_id` and other queued generations, and render them in shared batches."""
    log = IdLogger(logger, {"kind": "generation", "id": generation_id})
    claimed = claim(rt, generation_id)
    if not claimed:
        log.info("nothing queued for it (unknown, or already taken); nothing to do")
        return "skipped"
    rt.current_id = generation_id
    try:
        rows = drop_worn_out(rt, claimed)
        if rows:
            log.info("batch of %d generations (%s)", len(rows), ", ".join(g.id for g in rows))
            prefetch(rt, rows)
            for chunk in split_by_slots([adapters_of(g) for g in rows], rt.cache().num_slots):
                run_chunk(rt, [rows[i] for i in chunk], log)
    finally:
        rt.current_id = None
    return "done"


def claim(rt: Runtime, generation_id: str) -> list[Generation]:
    """The rows this worker now runs (storage's one claim rule, `claims.claim_generation_batch`)."""
    with rt.session_factory() as s:
        claimed = claims.claim_generation_batch(
            s, first_id=generation_id, limit=max(1, rt.settings.generate_batch_size), worker_host=rt.worker_host,
            older_than=timedelta(seconds=rt.settings.heartbeat_stale_seconds),
        )
        s.commit()
    return claimed


def prefetch(rt: Runtime, rows: Sequence[Generation]) -> None:
    """Start reading, in the background, the adapters of the generations queued behind this batch (this batch's own
    are loaded now), so a cold adapter's store read overlaps sampling instead of stalling the next batch."""
    if not rt.cache().prefetching:
        return  # no query for adapters nobody will read
    with rt.session_factory() as s:
        queued = claims.queued_adapter_ids(s, limit=rt.settings.adapter_prefetch)
    mine = {a for g in rows for a in adapters_of(g)}
    rt.cache().prefetch([a for a in queued if a not in mine])


def adapters_of(gen: Generation) -> tuple[str, ...]:
    """The adapters a generation needs resident: its style adapter and its subject adapter, each when named."""
    return tuple(a for a in (gen.adapter_id, gen.subject_adapter_id) if a is not None)


def drop_worn_out(rt: Runtime, claimed: Sequence[Generation]) -> list[Generation]:
    """End the generations whose runs kept dying (more than `max_attempts`); the others go on."""
    rows: list[Generation] = []
    for gen in claimed:
        if gen.attempts > rt.settings.max_attempts:
            finish(rt, gen.id, GenerationState.FAILED, error_code=FailureCode.TOO_MANY_ATTEMPTS,
                   error_message=f"The generation was interrupted {gen.attempts - 1} times; giving up.")
        else:
            rows.append(gen)
    return rows


def run_chunk(rt: Runtime, rows: list[Generation], log: IdLogger) -> None:
    """Rows that need at most one GPU slot per distinct adapter: load those adapters, sample every image of every
    row in one loop, store them and finish the rows."""
    errors: dict[str, Exception] = {}
    adapter_ids = list(dict.fromkeys(a for g in rows for a in adapters_of(g)))
    with rt.cache().batch(adapter_ids, errors) as slots:
        requests: list[GenerationRequest] = []
        owners: list[Generation] = []  # the row each request belongs to
        for gen in rows:
            failed = next((a for a in adapters_of(gen) if a in errors), None)
            if failed is not None:
                code, message = adapter_error(errors[failed])
                log.warning("generation %s failed: %s", gen.id, code)
                finish(rt, gen.id, GenerationState.FAILED, error_code=code, error_message=message)
                continue
            try:
                reqs = build_requests(rt, gen, slots.get(gen.adapter_id) if gen.adapter_id else None,
                                      slots.get(gen.subject_adapter_id) if gen.subject_adapter_id else None)
                for req in reqs:  # each checked alone, so a bad one fails only its own generation
                    output_size(rt, req)
            except (trainer.SamplingError, BlobNotFound, UnidentifiedImageError, OSError) as exc:
                log.warning("generation %s is invalid: %s", gen.id, exc)
                fail_invalid(rt, [gen], exc)
                continue
            requests.extend(reqs)
            owners.extend([gen] * len(reqs))
        if not requests:
            return
        t0 = time.perf_counter()
        results: list[trainer.SampleResult | None] = [None] * len(requests)
        by_size: dict[tuple[int, int], list[int]] = {}  # an init image keeps its own size: one call per size
        for i, req in enumerate(requests):
            by_size.setdefault(output_size(rt, req), []).append(i)
        for group in by_size.values():
            gens = list(dict.fromkeys(owners[i] for i in group))
            try:
                progress = StepRecorder(rt, [(g.id, g.steps) for g in gens])
                for i, res in zip(group, trainer.sample(rt.parts(), [requests[i] for i in group], on_step=progress),
                                  strict=True):
                    results[i] = res
            except TRANSIENT:
                raise
            except BatchGone as exc:  # none of this group is this worker's any more (cancelled, taken over)
                log.info("sampling stopped: %s", exc)
            except trainer.SamplingError as exc:  # checked alone before: not expected, but never a stuck row
                fail_invalid(rt, gens, exc)
        log.info("sampled %d images for %d generations in %.2f s", sum(r is not None for r in results),
                 len(set(map(id, owners))), time.perf_counter() - t0)
    done = [i for i, r in enumerate(results) if r is not None]
    owners, kept = [owners[i] for i in done], [r for r in results if r is not None]
    stored = store_images(rt, owners, kept)
    scores = generation_scores(rt, owners, [res.image for res in kept if res.image is not None])
    for gen_id, image_keys in stored.items():
        score = scores.get(gen_id)
        finish(rt, gen_id, GenerationState.SUCCEEDED, image_keys=image_keys, error_code=None, error_message=None,
               text_scores=score.text if score else None, style_scores=score.style if score else None)


def build_requests(rt: Runtime, gen: Generation, slot: str | None,
                   subject: str | None = None) -> list[GenerationRequest]:
    """The sampler requests of one generation (one per image, seeds counting up), each checked alone as `sample`
    would check it. `slot` and `subject` are the bank names of its style and subject adapters. The images stay
    in their stored mode: the engine's one image rule converts them (trainer/contracts/images.py)."""
    init = open_image(rt.store.get_bytes(gen.init_image_key)) if gen.init_image_key else None
    mask = open_image(rt.store.get_bytes(gen.mask_key)) if gen.mask_key else None
    reqs = [
        GenerationRequest(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, seed=gen.seed + i, adapter=slot,
            style_strength=gen.style_strength, guidance_scale=gen.guidance_scale, steps=gen.steps,
            init_image=init, mask=mask, strength=gen.strength if gen.strength is not None else 1.0,
            text_guidance=gen.text_guidance, subject=subject,
            subject_weight=gen.subject_weight if gen.subject_weight is not None else DEFAULT_SUBJECT_WEIGHT,
        )
        for i in range(max(1, gen.num_images))
    ]
    return reqs


def output_size(rt: Runtime, req: GenerationRequest) -> tuple[int, int]:
    """The (height, width) `req` samples at; SamplingError for anything `trainer.sample` would refuse in it."""
    parts = rt.parts()
    return check_request(req, scale=parts.vae_scale_factor, default=parts.resolution)


def store_images(rt: Runtime, owners: Sequence[Generation], results: Sequence[trainer.SampleResult],
                 ) -> dict[str, list[str]]:
    """Each result as a PNG blob; returns generation id → its image keys, in request order."""
    keys: dict[str, list[str]] = {}
    for gen, res in zip(owners, results, strict=True):
        assert res.image is not None
        key = new_key("images", "png")
        rt.store.put_bytes(key, png(res.image))
        keys.setdefault(gen.id, []).append(key)
    return keys


def adapter_error(exc: Exception) -> tuple[FailureCode, str]:
    for cls, (code, message) in ADAPTER_ERRORS.items():
        if isinstance(exc, cls):
            return code, message.format(exc=exc)
    return FailureCode.ADAPTER_ERROR, f"The adapter could not be loaded: {exc}"


def fail_invalid(rt: Runtime, gens: Sequence[Generation], exc: Exception) -> None:
    for gen in gens:
        finish(rt, gen.id, GenerationState.FAILED, error_code=FailureCode.INVALID_REQUEST,
               error_message=f"The request cannot be run: {exc}")


def finish(rt: Runtime, gen_id: str, new: GenerationState, **fields: Any) -> None:
    """running → `new` (conditional: a row taken away meanwhile stays with whoever has it, even when it runs
    again elsewhere)."""
    with rt.session_factory() as s:
        jobs.transition_generation(s, gen_id, expected=GenerationState.RUNNING, new=new, finished_at=utcnow(),
                                   held_by=rt.worker_host, **fields)
        s.commit()
