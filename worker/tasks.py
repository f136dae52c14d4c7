"""The train and generate tasks: thin Celery shells over `run_train` / `run_generate`.

Both take an id and re-fetch the row; the database is the record and Celery only the delivery, so each is safe
to run twice: a task finding its job final (or already run by a live worker) returns without work. Attempts are
counted in the DB; a job past `max_attempts` ends `failed` instead of looping. Only named transient errors
(SQLAlchemy OperationalError, Redis ConnectionError) are retried by Celery.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Collection, MutableMapping
from datetime import timedelta
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

import trainer
from storage import jobs
from storage.blobs import BlobIntegrityError, BlobNotFound, content_key, new_key, sha256_hex
from storage.broker import ROUTES
from storage.models import Adapter as AdapterRow
from storage.models import Generation, Style, TrainingJob, utcnow
from storage.states import JOB_ACTIVE, JOB_FINAL, EventKind, GenerationState, JobState, WorkKind
from trainer import Checkpoint, CheckpointError, GenerationRequest, train_style
from worker.adapter_cache import AdapterMissing, split_by_slots
from worker.celery_app import app
from worker.runtime import Runtime, get_runtime

logger = logging.getLogger(__name__)

try:  # redis is installed with celery[redis]; keep the worker importable without it
    from redis.exceptions import ConnectionError as RedisConnectionError

    TRANSIENT: tuple[type[Exception], ...] = (OperationalError, RedisConnectionError)
except ImportError:  # pragma: no cover
    TRANSIENT = (OperationalError,)



class IdLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the job or generation id it is about."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('kind', 'job')} {extra.get('id')}] {msg}", kwargs


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ==============================================================================================================
# training
# ==============================================================================================================


class _Stop(Exception):
    pass


def _fail_job(rt: Runtime, job_id: str, expected: Collection[str], code: str, message: str, **fields: Any) -> bool:
    with rt.session_factory() as s:
        ok = jobs.transition(
            s, job_id, expected=expected, new=JobState.FAILED, error_code=code, error_message=message,
            finished_at=utcnow(), eta_seconds=None, **fields,
        )
        s.commit()
    return ok


def _claim_job(rt: Runtime, job_id: str, log: IdLogger) -> TrainingJob | None:
    """Move the job to running for this process, or return None when there is nothing to do."""
    stale = timedelta(seconds=rt.settings.heartbeat_stale_seconds)
    with rt.session_factory() as s:
        job = s.get(TrainingJob, job_id)
        if job is None:
            log.warning("no such job; dropping the message")
            return None
        if job.state in JOB_FINAL:
            log.info("already %s; nothing to do", job.state)
            return None
        now = utcnow()
        if job.state in JOB_ACTIVE:
            seen = job.heartbeat_at or job.started_at or job.queued_at
            ours = job.worker_host == rt.worker_host
            if not ours and seen > now - stale:
                log.info("%s on %s (heartbeat %s); duplicate delivery ignored", job.state, job.worker_host, seen)
                return None
            if job.state == JobState.CANCELLING:
                jobs.transition(s, job_id, expected=JobState.CANCELLING, new=JobState.CANCELLED, finished_at=now)
                s.commit()
                return None
            log.warning("taking over from %s (last heartbeat %s)", job.worker_host, seen)
            jobs.transition(s, job_id, expected=JobState.RUNNING, new=JobState.QUEUED)
        if job.cancel_requested_at is not None:
            jobs.transition(s, job_id, expected=JobState.QUEUED, new=JobState.CANCELLED, finished_at=now)
            s.commit()
            return None
        if job.attempts >= job.max_attempts:
            jobs.transition(
                s, job_id, expected=JobState.QUEUED, new=JobState.FAILED, error_code="too_many_attempts",
                finished_at=now,
                error_message=f"Training was interrupted {job.attempts} times (the limit is {job.max_attempts}); "
                "giving up. Retry the job to start it again.",
            )
            s.commit()
            log.error("failed after %d attempts", job.attempts)
            return None
        ok = jobs.transition(
            s, job_id, expected=JobState.QUEUED, new=JobState.RUNNING, attempts=TrainingJob.attempts + 1,
            worker_host=rt.worker_host, started_at=job.started_at or now, heartbeat_at=now,
            error_code=None, error_message=None,
        )
        s.commit()
        if not ok:
            log.info("another worker claimed it first")
            return None
        s.refresh(job)
        return job


def run_train(rt: Runtime, job_id: str) -> str:
    """Run (or resume) training job `job_id` to a final state. Returns a short outcome for logs and tests."""
    log = IdLogger(logger, {"kind": "job", "id": job_id})
    job = _claim_job(rt, job_id, log)
    if job is None:
        return "skipped"
    rt.current_id = job_id
    try:
        return _train(rt, job, log)
    finally:
        rt.current_id = None


def _train(rt: Runtime, job: TrainingJob, log: IdLogger) -> str:
    settings, store = rt.settings, rt.store
    job_id = job.id
    t0 = time.perf_counter()
    gpu_before = job.gpu_seconds or 0.0
    mine = (TrainingJob.id == job_id, TrainingJob.worker_host == rt.worker_host, TrainingJob.state.in_(JOB_ACTIVE))

    def elapsed() -> float:
        return gpu_before + time.perf_counter() - t0

    with rt.session_factory() as s:
        style = s.get(Style, job.style_id)
        if style is None or style.deleted_at is not None:
            _fail_job(rt, job_id, JOB_ACTIVE, "style_missing", "The style of this job was deleted.")
            return "failed"
        image_key, descriptor, content = style.image_key, style.descriptor, style.content
    try:
        image = _open_image(store.get_bytes(image_key)).convert("RGB")
    except (BlobNotFound, UnidentifiedImageError, OSError, ValueError) as exc:
        log.error("style image unreadable: %s", exc)
        _fail_job(rt, job_id, JOB_ACTIVE, "bad_image",
                  "The style image could not be read; upload it again as PNG, JPEG or WebP.")
        return "failed"

    resume: Checkpoint | None = None
    if job.checkpoint_key:
        try:
            resume = Checkpoint.from_bytes(store.get_bytes(job.checkpoint_key))
            log.info("resuming from checkpoint at step %d", resume.step)
        except (BlobNotFound, CheckpointError) as exc:
            log.warning("checkpoint %s unusable (%s); starting from step 0", job.checkpoint_key, exc)

    params = dict(job.params or {})
    config = trainer.TrainConfig(
        steps=job.total_steps,
        seed=int(params.get("seed", 0)),
        checkpoint_every=settings.checkpoint_every,
        progress_every=settings.progress_every,
    )
    if params.get("learning_rate") is not None:
        config.learning_rate = float(params["learning_rate"])

    def on_progress(p: trainer.Progress) -> None:
        eta = p.eta_seconds if p.eta_seconds != float("inf") else None
        with rt.session_factory() as s:
            s.execute(
                update(TrainingJob).where(*mine).values(
                    step=p.step, last_loss=p.loss, eta_seconds=eta, steps_per_second=p.steps_per_second,
                    heartbeat_at=utcnow(), gpu_seconds=elapsed(),
                )
            )
            jobs.add_event(s, job_id, EventKind.PROGRESS, {
                "step": p.step, "total": p.total, "loss": p.loss, "lr": p.learning_rate,
                "steps_per_second": p.steps_per_second, "eta_seconds": eta,
            })
            s.commit()

    def should_stop() -> bool:
        with rt.session_factory() as s:
            row = s.execute(
                select(TrainingJob.cancel_requested_at, TrainingJob.state, TrainingJob.worker_host)
                .where(TrainingJob.id == job_id)
            ).one()
        if row.cancel_requested_at is not None or row.state == JobState.CANCELLING:
            log.info("cancel requested; stopping")
            return True
        if row.state not in JOB_ACTIVE or row.worker_host != rt.worker_host:
            log.warning("job is no longer ours (%s on %s); stopping", row.state, row.worker_host)
            return True
        return False

    def on_checkpoint(ckpt: Checkpoint) -> None:
        key = new_key("checkpoints", "safetensors")
        store.put_bytes(key, ckpt.to_bytes())
        with rt.session_factory() as s:
            old = s.scalar(select(TrainingJob.checkpoint_key).where(TrainingJob.id == job_id))
            s.execute(update(TrainingJob).where(*mine).values(checkpoint_key=key, checkpoint_step=ckpt.step,
                                                              heartbeat_at=utcnow()))
            s.commit()
        if old and old != key:
            store.delete(old)
        log.info("checkpoint at step %d -> %s", ckpt.step, key)

    try:
        parts = rt.parts()
        result = train_style(
            parts, [image], descriptor=descriptor, content=content, config=config, resume=resume,
            on_progress=on_progress, should_stop=should_stop, on_checkpoint=on_checkpoint,
        )
    except TRANSIENT:
        raise
    except trainer.ModelLoadError as exc:
        log.error("%s", exc)
        _fail_job(rt, job_id, JOB_ACTIVE, "model_unavailable",
                  "The worker could not load the base model; an operator has to fix its configuration.",
                  gpu_seconds=elapsed())
        return "failed"
    except (ValueError, CheckpointError) as exc:
        log.error("training failed: %s", exc)
        _fail_job(rt, job_id, JOB_ACTIVE, "training_error",
                  f"Training could not run: {exc}", gpu_seconds=elapsed())
        return "failed"

    if result.stopped or result.adapter is None:
        with rt.session_factory() as s:
            row = s.execute(select(TrainingJob.cancel_requested_at, TrainingJob.state)
                            .where(TrainingJob.id == job_id)).one()
            ok = False
            if row.cancel_requested_at is not None or row.state == JobState.CANCELLING:
                ok = jobs.transition(s, job_id, expected=JOB_ACTIVE, new=JobState.CANCELLED,
                                     finished_at=utcnow(), eta_seconds=None, gpu_seconds=elapsed())
            s.commit()
        log.info("stopped at step %d (%s)", result.step, "cancelled" if ok else "no longer ours")
        return "cancelled" if ok else "stopped"

    # Stored in fp16 (10.5 MB instead of 21 MB at amused-256 size); previews use the stored copy, so they show
    # exactly what later generations with this adapter will produce.
    data = trainer.adapter_to_bytes(result.adapter, dtype=torch.float16)
    stored = trainer.adapter_from_bytes(data)
    adapter_id = _store_adapter(rt, job, stored, data, log)
    with rt.session_factory() as s:
        s.execute(update(TrainingJob).where(*mine).values(step=result.step, heartbeat_at=utcnow()))
        s.commit()
    try:
        _render_previews(rt, job_id, adapter_id, stored, descriptor, config.seed, log)
    except TRANSIENT:
        raise
    except Exception:  # previews are a courtesy; never fail a trained job over them
        log.exception("preview rendering failed")
    with rt.session_factory() as s:
        ok = jobs.transition(s, job_id, expected=JOB_ACTIVE, new=JobState.SUCCEEDED,
                             finished_at=utcnow(), eta_seconds=0.0, gpu_seconds=elapsed(), step=result.step)
        old_ckpt = s.scalar(select(TrainingJob.checkpoint_key).where(TrainingJob.id == job_id))
        s.commit()
    if ok and old_ckpt:
        store.delete(old_ckpt)
    log.info("succeeded in %.1f s: adapter %s", time.perf_counter() - t0, adapter_id)
    return "succeeded" if ok else "lost"


def _store_adapter(rt: Runtime, job: TrainingJob, adapter: trainer.Adapter, data: bytes, log: IdLogger) -> str:
    """Write the adapter file (`data`, the serialised `adapter`) and its row; exactly one row per job (a rerun
    reuses the existing one)."""
    sha = sha256_hex(data)
    key = content_key("adapters", sha, "safetensors")
    with rt.session_factory() as s:
        existing = s.scalar(select(AdapterRow).where(AdapterRow.job_id == job.id))
        if existing is not None:
            log.info("adapter row %s already exists for this job; reusing it", existing.id)
            return existing.id
    rt.store.put_bytes(key, data)
    meta = adapter.meta
    row = AdapterRow(
        owner_id=job.owner_id, style_id=job.style_id, job_id=job.id, blob_key=key, sha256=sha, bytes=len(data),
        base_model=meta.base_model, base_revision=meta.base_revision, rank=meta.rank, alpha=meta.alpha,
        targets=list(meta.targets), descriptor=meta.descriptor, train_prompt=meta.train_prompt, steps=meta.steps,
        seed=meta.seed, engine_version=meta.engine_version,
    )
    with rt.session_factory() as s:
        s.add(row)
        try:
            s.commit()
            return row.id
        except IntegrityError:
            s.rollback()
    with rt.session_factory() as s:
        adapter_id = s.scalar(select(AdapterRow.id).where(AdapterRow.job_id == job.id))
        assert adapter_id is not None
        return adapter_id


def _render_previews(rt: Runtime, job_id: str, adapter_id: str, adapter: trainer.Adapter, descriptor: str,
                     seed: int, log: IdLogger) -> None:
    prompts = [f"{p} in {descriptor} style" for p in rt.settings.preview_prompts[:2]]
    if not prompts:
        return
    cache = rt.cache()
    cache.put(adapter_id, adapter)
    with cache.batch([adapter_id]) as slots:
        steps = rt.settings.preview_steps
        requests = [GenerationRequest(prompt=p, seed=seed + i, adapter=slots[adapter_id], steps=steps)
                    for i, p in enumerate(prompts)]
        results = trainer.sample(rt.parts(), requests)
    for prompt, res in zip(prompts, results, strict=True):
        if res.image is None:
            continue
        key = new_key("previews", "png")
        rt.store.put_bytes(key, _png(res.image))
        with rt.session_factory() as s:
            jobs.add_event(s, job_id, EventKind.PREVIEW, {"image_key": key, "prompt": prompt})
            s.commit()
    log.info("rendered %d previews", len(results))


# ==============================================================================================================
# generation
# ==============================================================================================================

ADAPTER_ERRORS: dict[type[Exception], tuple[str, str]] = {
    BlobIntegrityError: ("adapter_corrupt", "The adapter file is damaged (its checksum does not match); "
                         "train the style again."),
    trainer.AdapterError: ("adapter_incompatible", "The adapter does not fit the model this server runs: {exc}"),
    AdapterMissing: ("adapter_missing", "The adapter no longer exists."),
}


def _adapter_error(exc: Exception) -> tuple[str, str]:
    for cls, (code, message) in ADAPTER_ERRORS.items():
        if isinstance(exc, cls):
            return code, message.format(exc=exc)
    return "adapter_error", f"The adapter could not be loaded: {exc}"


def _finish_generation(rt: Runtime, gen_id: str, new: str, **fields: Any) -> None:
    with rt.session_factory() as s:
        jobs.transition_generation(s, gen_id, expected=GenerationState.RUNNING, new=new, finished_at=utcnow(),
                                   **fields)
        s.commit()


def _claim_batch(rt: Runtime, generation_id: str, log: IdLogger) -> list[Generation]:
    stale = timedelta(seconds=rt.settings.heartbeat_stale_seconds)
    with rt.session_factory() as s:
        gen = s.get(Generation, generation_id)
        if gen is None:
            log.warning("no such generation; dropping the message")
            return []
        if gen.state == GenerationState.RUNNING:
            seen = gen.heartbeat_at or gen.started_at or gen.queued_at
            if gen.worker_host == rt.worker_host or seen < utcnow() - stale:
                log.warning("requeueing (was running on %s, last seen %s)", gen.worker_host, seen)
                jobs.transition_generation(s, generation_id, expected=GenerationState.RUNNING,
                                           new=GenerationState.QUEUED)
                s.commit()
        claimed = jobs.claim_generations(
            s, first_id=generation_id, limit=max(1, rt.settings.generate_batch_size), worker_host=rt.worker_host
        )
        s.commit()
    if not claimed:
        log.info("nothing queued for it (already %s); nothing to do", gen.state)
    return claimed


def run_generate(rt: Runtime, generation_id: str) -> str:
    """Claim `generation_id` and other queued generations, and render them in shared batches."""
    log = IdLogger(logger, {"kind": "generation", "id": generation_id})
    claimed = _claim_batch(rt, generation_id, log)
    if not claimed:
        return "skipped"
    rt.current_id = generation_id
    try:
        _generate(rt, claimed, log)
    finally:
        rt.current_id = None
    return "done"


def _generate(rt: Runtime, claimed: list[Generation], log: IdLogger) -> None:
    max_attempts = rt.settings.max_attempts
    rows: list[Generation] = []
    for gen in claimed:
        if gen.attempts > max_attempts:
            _finish_generation(rt, gen.id, GenerationState.FAILED, error_code="too_many_attempts",
                               error_message=f"The generation was interrupted {gen.attempts - 1} times; giving up.")
        else:
            rows.append(gen)
    if not rows:
        return
    log.info("batch of %d generations (%s)", len(rows), ", ".join(g.id for g in rows))
    cache = rt.cache()
    for chunk in split_by_slots([g.adapter_id for g in rows], cache.num_slots):
        _generate_chunk(rt, [rows[i] for i in chunk], log)


def _requests_for(rt: Runtime, gen: Generation, slot: str | None) -> list[GenerationRequest]:
    init = _open_image(rt.store.get_bytes(gen.init_image_key)).convert("RGB") if gen.init_image_key else None
    mask = _open_image(rt.store.get_bytes(gen.mask_key)).convert("L") if gen.mask_key else None
    reqs = [
        GenerationRequest(
            prompt=gen.prompt, negative_prompt=gen.negative_prompt, seed=gen.seed + i, adapter=slot,
            style_strength=gen.style_strength, guidance_scale=gen.guidance_scale, steps=gen.steps,
            init_image=init, mask=mask, strength=gen.strength if gen.strength is not None else 1.0,
        )
        for i in range(max(1, gen.num_images))
    ]
    for req in reqs:
        req.validate()
    return reqs


def _generate_chunk(rt: Runtime, rows: list[Generation], log: IdLogger) -> None:
    cache = rt.cache()
    errors: dict[str, Exception] = {}
    adapter_ids = [g.adapter_id for g in rows if g.adapter_id is not None]
    with cache.batch(adapter_ids, errors) as slots:
        requests: list[GenerationRequest] = []
        owners: list[Generation] = []
        for gen in rows:
            if gen.adapter_id is not None and gen.adapter_id in errors:
                code, message = _adapter_error(errors[gen.adapter_id])
                log.warning("generation %s failed: %s", gen.id, code)
                _finish_generation(rt, gen.id, GenerationState.FAILED, error_code=code, error_message=message)
                continue
            try:
                reqs = _requests_for(rt, gen, slots.get(gen.adapter_id) if gen.adapter_id else None)
            except (trainer.SamplingError, BlobNotFound, UnidentifiedImageError, OSError) as exc:
                log.warning("generation %s is invalid: %s", gen.id, exc)
                _finish_generation(rt, gen.id, GenerationState.FAILED, error_code="invalid_request",
                                   error_message=f"The request cannot be run: {exc}")
                continue
            requests.extend(reqs)
            owners.extend([gen] * len(reqs))
        if not requests:
            return
        t0 = time.perf_counter()
        try:
            results = trainer.sample(rt.parts(), requests)
        except TRANSIENT:
            raise
        except trainer.SamplingError as exc:
            for gen in dict.fromkeys(owners):
                _finish_generation(rt, gen.id, GenerationState.FAILED, error_code="invalid_request",
                                   error_message=f"The request cannot be run: {exc}")
            return
        log.info("sampled %d images for %d generations in %.2f s", len(results), len(set(map(id, owners))),
                 time.perf_counter() - t0)
    keys: dict[str, list[str]] = {}
    for gen, res in zip(owners, results, strict=True):
        assert res.image is not None
        key = new_key("images", "png")
        rt.store.put_bytes(key, _png(res.image))
        keys.setdefault(gen.id, []).append(key)
    for gen_id, image_keys in keys.items():
        _finish_generation(rt, gen_id, GenerationState.SUCCEEDED, image_keys=image_keys, error_code=None,
                           error_message=None)


# ==============================================================================================================
# Celery shells
# ==============================================================================================================


# Names from storage.broker.ROUTES (the queue comes from there too, through `task_routes`). Only named transient
# errors are retried; everything else ends the row in a final state inside run_train / run_generate.
_TASK_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT, "retry_backoff": True, "max_retries": 5, "acks_late": True,
    "reject_on_worker_lost": True, "ignore_result": True,
}


@app.task(name=ROUTES[WorkKind.TRAIN].task, retry_backoff_max=60, **_TASK_OPTIONS)
def train(job_id: str) -> str:
    return run_train(get_runtime(WorkKind.TRAIN), job_id)


@app.task(name=ROUTES[WorkKind.GENERATE].task, retry_backoff_max=30, **_TASK_OPTIONS)
def generate(generation_id: str) -> str:
    return run_generate(get_runtime(WorkKind.GENERATE), generation_id)
