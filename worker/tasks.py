"""The train and generate tasks: thin Celery shells over `run_train` (the training run, below) and
`worker.generation.run_generate` (the generation batch).

Both take an id and re-fetch the row; the database is the record and Celery only the delivery, so each is safe
to run twice: a task finding its job final (or already run by a live worker) returns without work. Attempts are
counted in the DB; a job past `max_attempts` ends `failed` instead of looping. Only named transient errors
(SQLAlchemy OperationalError, Redis ConnectionError) are retried by Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import timedelta
from typing import Any

import torch
from PIL import UnidentifiedImageError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

import trainer
from storage import claims, jobs
from storage.blobs import BlobNotFound, content_key, new_key, sha256_hex
from storage.broker import ROUTES
from storage.models import Adapter as AdapterRow
from storage.models import Style, TrainingJob, utcnow
from storage.states import JOB_ACTIVE, EventKind, JobState, WorkKind
from trainer import Checkpoint, CheckpointError, GenerationRequest, train_style
from worker.celery_app import app
from worker.generation import run_generate
from worker.runtime import SHUTDOWN, Runtime, get_runtime
from worker.shared import TRANSIENT, IdLogger, open_image, png

logger = logging.getLogger(__name__)

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


def _settle_message_job(rt: Runtime, job_id: str, log: IdLogger) -> None:
    """Deal with what only the message's own job can need: a takeover from a dead worker (or from this process,
    after a crash it survived), a cancel or an attempt limit reached while it waited. Which job then runs is
    decided by `claim_train_jobs`: every message is a wake-up (one may have been spent on another job)."""
    stale = timedelta(seconds=rt.settings.heartbeat_stale_seconds)
    with rt.session_factory() as s:
        job = s.get(TrainingJob, job_id)
        if job is None:
            log.warning("no such job; the message only wakes the worker")
            return
        now = utcnow()
        if job.state in JOB_ACTIVE:
            seen = claims.last_seen(job)
            if not claims.is_abandoned(job, worker_host=rt.worker_host, older_than=stale):
                log.info("%s on %s (heartbeat %s); duplicate delivery", job.state, job.worker_host, seen)
                return
            if job.state == JobState.CANCELLING:
                jobs.transition(s, job_id, expected=JobState.CANCELLING, new=JobState.CANCELLED, finished_at=now)
                s.commit()
                return
            log.warning("taking over from %s (last heartbeat %s)", job.worker_host, seen)
            jobs.transition(s, job_id, expected=JobState.RUNNING, new=JobState.QUEUED)
            s.commit()
        if job.state != JobState.QUEUED:
            return
        if job.cancel_requested_at is not None:
            jobs.transition(s, job_id, expected=JobState.QUEUED, new=JobState.CANCELLED, finished_at=now)
            s.commit()
            return
        if job.attempts >= job.max_attempts:
            jobs.transition(
                s, job_id, expected=JobState.QUEUED, new=JobState.FAILED, error_code="too_many_attempts",
                finished_at=now,
                error_message=f"Training was interrupted {job.attempts} times (the limit is {job.max_attempts}); "
                "giving up. Retry the job to start it again.",
            )
            s.commit()
            log.error("failed after %d attempts", job.attempts)


def _claim_job(rt: Runtime, job_id: str, log: IdLogger) -> TrainingJob | None:
    """Claim the job the database says is next (oldest first, fair across users), whatever job the message
    named: the embedded broker delivers messages out of order. None when nothing is claimable."""
    _settle_message_job(rt, job_id, log)
    with rt.session_factory() as s:
        claimed = claims.claim_train_jobs(s, limit=1, worker=rt.worker_host)
        s.commit()
    if not claimed:
        log.info("no queued job to claim; nothing to do")
        return None
    if claimed[0].id != job_id:
        log.info("woke up; the next job in the queue is %s", claimed[0].id)
    return claimed[0]


def run_train(rt: Runtime, job_id: str) -> str:
    """Wake up for `job_id`: run (or resume) the next queued job to a final state (or, on a warm shutdown, back
    to queued). Returns a short outcome for logs and tests."""
    if SHUTDOWN.is_set():  # a warm shutdown drains what was prefetched: claim nothing new
        return "skipped"
    job = _claim_job(rt, job_id, IdLogger(logger, {"kind": "job", "id": job_id}))
    if job is None:
        return "skipped"
    rt.current_id = job.id
    try:
        return _train(rt, job, IdLogger(logger, {"kind": "job", "id": job.id}))
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
        image = open_image(store.get_bytes(image_key)).convert("RGB")
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

    stop_reason: list[str] = []

    def should_stop() -> bool:
        if SHUTDOWN.is_set():
            log.info("worker shutting down; stopping with a last checkpoint")
            stop_reason.append("shutdown")
            return True
        with rt.session_factory() as s:
            row = s.execute(
                select(TrainingJob.cancel_requested_at, TrainingJob.state, TrainingJob.worker_host)
                .where(TrainingJob.id == job_id)
            ).one()
        if row.cancel_requested_at is not None or row.state == JobState.CANCELLING:
            log.info("cancel requested; stopping")
            stop_reason.append("cancel")
            return True
        if row.state not in JOB_ACTIVE or row.worker_host != rt.worker_host:
            log.warning("job is no longer ours (%s on %s); stopping", row.state, row.worker_host)
            stop_reason.append("lost")
            return True
        return False

    def on_checkpoint(ckpt: Checkpoint) -> None:
        if stop_reason and stop_reason != ["shutdown"]:  # cancelled or taken over: nobody resumes from it
            return
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

    if result.stopped and stop_reason == ["shutdown"]:
        return _requeue_on_shutdown(rt, job_id, elapsed(), log)
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


def _requeue_on_shutdown(rt: Runtime, job_id: str, gpu_seconds: float, log: IdLogger) -> str:
    """A clean stop is not the job's fault: back to queued with the attempt given back. No wake-up is sent from
    here (this worker, still draining, would take it): with sent_at empty the reconciler sends one."""
    with rt.session_factory() as s:
        ok = jobs.transition(s, job_id, expected=JobState.RUNNING, new=JobState.QUEUED,
                             attempts=TrainingJob.attempts - 1, heartbeat_at=None, sent_at=None,
                             eta_seconds=None, gpu_seconds=gpu_seconds)
        s.commit()
    if not ok:  # cancelled meanwhile, or taken over: whoever moved it owns it now
        return "stopped"
    log.info("requeued for the next worker (attempt not counted)")
    return "requeued"


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
        rt.store.put_bytes(key, png(res.image))
        with rt.session_factory() as s:
            n = jobs.count_events(s, job_id, EventKind.PREVIEW)  # its index: GET /v1/jobs/{id}/previews/{n}
            jobs.add_event(s, job_id, EventKind.PREVIEW, {"image_key": key, "prompt": prompt, "n": n})
            s.commit()
    log.info("rendered %d previews", len(results))


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
