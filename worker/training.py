"""A training run: the jobs one train worker claimed together, trained in one `trainer.train_styles` call.

Read `TrainingRun.run`: its named steps are `load_inputs` (per job: style image, resume checkpoint, config),
then one engine call whose per-job callbacks are `report`, `should_stop` and `checkpoint`, and `finish` (per
job: adapter file and row, previews, final state) as each job's style leaves the run. Queued jobs join the run
while it trains when a slot is free (worker/train_batch.py). Each job keeps its own progress, events, checkpoints,
cancel, attempts and adapter, and a job that fails ends alone: the engine ends only the style whose callback
raised, and every other per-job step is guarded the same way.

Cancellation is polled by a timer: `should_stop` runs every step for every job, but it reads flags that one
query for the whole run refreshes at most every `cancel_poll_seconds`, never a query per step.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import torch
from PIL import UnidentifiedImageError
from sqlalchemy import select, update

import trainer
from storage import jobs
from storage.blobs import BlobNotFound, content_key, new_key, sha256_hex
from storage.error_codes import FailureCode
from storage.job_params import JobParams
from storage.models import Adapter as AdapterRow
from storage.models import Style, TrainingJob, utcnow
from storage.states import JOB_ACTIVE, EventKind, JobState
from trainer import Checkpoint, CheckpointError, GenerationRequest, subject_prompt, training_prompt
from trainer.contracts.phases import Phase
from trainer.feedback import PhaseClock, PhaseProgress
from trainer.train import Callbacks, Progress, StyleSpec, TrainResult, train_styles
from worker.progress import PhaseRecorder, PhaseStopped, phase_value
from worker.rounds import RoundError, job_examples
from worker.runtime import SHUTDOWN, Runtime
from worker.scoring import record_adapter_scores
from worker.shared import TRANSIENT, IdLogger, open_image, png
from worker.train_batch import JobRun, RunJoiner
from worker.versions import insert_version

logger = logging.getLogger(__name__)

class TrainingRun:
    def __init__(self, rt: Runtime, claimed: list[TrainingJob]) -> None:
        self.rt = rt
        self.run_id = uuid.uuid4().hex
        self.jobs = [JobRun(job, IdLogger(logger, {"kind": "job", "id": job.id})) for job in claimed]
        self.ready: list[JobRun] = []  # in the engine's style order (run)
        self.next_poll = 0.0

    # --- the run ---------------------------------------------------------------------------------------------

    def run(self) -> dict[str, str]:
        """Train every claimed job to a final state (or back to the queue on shutdown); job id -> outcome."""
        outcomes: dict[str, str] = {}
        self.mark_run()
        ready = [j for j in self.jobs if self.load_inputs(j, outcomes)]
        if not ready:
            return outcomes
        logger.info("run %s: %d jobs (%s)", self.run_id, len(ready), ", ".join(j.id for j in ready))
        settings = self.rt.settings
        device = trainer.resolve_device(settings.device)
        config = trainer.TrainConfig(
            checkpoint_every=settings.checkpoint_every, progress_every=settings.progress_every,
            mixed_precision=trainer.resolve_mixed_precision(settings.mixed_precision, device),  # type: ignore[arg-type]
            cuda_graph=settings.train_cuda_graph and device.startswith("cuda"),
        )
        config.capacity, config.join_every = settings.train_batch, settings.progress_every  # worker/train_batch.py
        self.ready = ready  # the engine's style i is ready[i]; jobs that join are appended as they join
        callbacks = Callbacks(
            on_progress=lambda i, p: self.report(self.ready[i], p),
            should_stop=lambda i: self.should_stop(self.ready[i]),
            on_checkpoint=lambda i, c: self.checkpoint(self.ready[i], c),
            join=RunJoiner(self, outcomes) if settings.train_batch > 1 else None,  # 1: a run is one job
            on_done=lambda i, r: self.done(self.ready[i], r, outcomes),
        )
        try:
            results = train_styles(self.rt.parts(), [j.spec for j in ready if j.spec is not None], config, callbacks)
        except TRANSIENT:
            raise
        except trainer.ModelLoadError as exc:
            logger.error("%s", exc)
            for j in self.ready:
                outcomes[j.id] = self.fail(j, FailureCode.MODEL_UNAVAILABLE, "The worker could not load the base "
                                           "model; an operator has to fix its configuration.")
            return outcomes
        except (ValueError, CheckpointError) as exc:
            logger.error("training failed: %s", exc)
            for j in self.ready:
                outcomes[j.id] = self.fail(j, FailureCode.TRAINING_ERROR, f"Training could not run: {exc}")
            return outcomes
        for j, result in zip(self.ready, results, strict=True):
            if j.id not in outcomes:  # its finish in `done` met a transient error: once more, and it may raise
                outcomes[j.id] = self.finish_guarded(j, result)
        return outcomes

    def done(self, j: JobRun, result: TrainResult, outcomes: dict[str, str]) -> None:
        """A job's style left the run: finish it now (the engine hands the model over: previews can render), so
        it never waits for the styles still training or joining."""
        j.stop = j.stop or "done"  # out of the engine: no more cancel polls for it
        try:
            outcomes[j.id] = self.finish_guarded(j, result)
        except TRANSIENT:
            j.log.exception("finishing met a transient error; tried again when the run ends")

    def finish_guarded(self, j: JobRun, result: TrainResult) -> str:
        try:
            return self.finish(j, result)
        except TRANSIENT:
            raise
        except Exception as exc:  # one job's finish failing must not take the others' results with it
            j.log.exception("finishing failed")
            return self.fail(j, FailureCode.TRAINING_ERROR, f"Training could not finish: {exc}")

    def mark_run(self) -> None:
        """Record which jobs share this run (the admin page groups them by run_id)."""
        with self.rt.session_factory() as s:
            s.execute(update(TrainingJob).where(TrainingJob.id.in_([j.id for j in self.jobs]))
                      .values(run_id=self.run_id))
            s.commit()

    # --- named steps -----------------------------------------------------------------------------------------

    def load_inputs(self, j: JobRun, outcomes: dict[str, str]) -> bool:
        """The style image, the resume checkpoint and the per-job settings. False when the job already failed."""
        store = self.rt.store
        with self.rt.session_factory() as s:
            style = s.get(Style, j.job.style_id)
            if style is None or style.deleted_at is not None:
                outcomes[j.id] = self.fail(j, FailureCode.STYLE_MISSING, "The style of this job was deleted.")
                return False
            descriptor, content, kind, class_word = style.descriptor, style.content, style.kind, style.class_word
            refs = style.reference_images
        try:
            images = [open_image(store.get_bytes(key)).convert("RGB") for key, _ in refs]
        except (BlobNotFound, UnidentifiedImageError, OSError, ValueError) as exc:
            j.log.error("style image unreadable: %s", exc)
            outcomes[j.id] = self.fail(j, FailureCode.BAD_IMAGE, "The style image could not be read; upload it "
                                       "again as PNG, JPEG or WebP.")
            return False
        j.subject = subject_prompt(class_word or descriptor) if kind == "subject" else None  # "a photo of [V] dog"
        resume: Checkpoint | None = None
        if j.job.checkpoint_key:
            try:
                resume = Checkpoint.from_bytes(store.get_bytes(j.job.checkpoint_key), self.rt.parts().transformer)
                j.log.info("resuming from checkpoint at step %d", resume.step)
            except (BlobNotFound, CheckpointError) as exc:
                j.log.warning("checkpoint %s unusable (%s); starting from step 0", j.job.checkpoint_key, exc)
        j.references = images
        j.seed = JobParams.of(j.job).seed
        try:  # a feedback round's picks, or the references with their captions (None: images under one prompt)
            examples = job_examples(self.rt, j.job, images, [c for _, c in refs], descriptor, content, j.subject)
        except RoundError as exc:
            outcomes[j.id] = self.fail(j, exc.code, exc.message)
            return False
        except PhaseStopped as exc:  # cancelled (or taken over) while the round rendered its candidates
            j.log.info("%s", exc)
            outcomes[j.id] = self.stopped(j, resume.step if resume else j.job.step)
            return False
        j.spec = StyleSpec([] if examples else images, descriptor, content, steps=j.job.total_steps, seed=j.seed,
                           resume=resume, examples=examples, prompt=j.subject)
        # The steps from here on; `progress` events say how far they got.
        PhaseRecorder(self.rt, j.id, j.job.worker_host, stops=False)(
            PhaseProgress(Phase.TRAINING, resume.step if resume else 0, j.job.total_steps, None))
        return True

    def report(self, j: JobRun, p: Progress) -> None:
        eta = p.eta_seconds if p.eta_seconds != float("inf") else None
        with self.rt.session_factory() as s:
            s.execute(update(TrainingJob).where(*j.mine()).values(
                step=p.step, last_loss=p.loss, eta_seconds=eta, steps_per_second=p.steps_per_second,
                heartbeat_at=utcnow(), device_seconds=j.device_seconds(),
                phase=phase_value(PhaseProgress(Phase.TRAINING, p.step, p.total, eta)),
            ))
            jobs.add_event(s, j.id, EventKind.PROGRESS, {
                "step": p.step, "total": p.total, "loss": p.loss, "lr": p.learning_rate,
                "steps_per_second": p.steps_per_second, "eta_seconds": eta,
            })
            s.commit()

    def should_stop(self, j: JobRun) -> bool:
        if SHUTDOWN.is_set() and j.stop is None:
            j.log.info("worker shutting down; stopping with a last checkpoint")
            j.stop = "shutdown"
        if time.monotonic() >= self.next_poll:
            self.poll()
        return j.stop is not None

    def poll(self) -> None:
        """One query for the whole run: which jobs were cancelled or are no longer this worker's."""
        self.next_poll = time.monotonic() + self.rt.settings.cancel_poll_seconds
        live = {j.id: j for j in self.jobs if j.stop is None}
        if not live:
            return
        with self.rt.session_factory() as s:
            rows = s.execute(select(TrainingJob.id, TrainingJob.cancel_requested_at, TrainingJob.state,
                                    TrainingJob.worker_host).where(TrainingJob.id.in_(list(live)))).all()
        for row in rows:
            j = live[row.id]
            if row.cancel_requested_at is not None or row.state == JobState.CANCELLING:
                j.log.info("cancel requested; stopping")
                j.stop = "cancel"
            elif row.state not in JOB_ACTIVE or row.worker_host != self.rt.worker_host:
                j.log.warning("job is no longer ours (%s on %s); stopping", row.state, row.worker_host)
                j.stop = "lost"

    def checkpoint(self, j: JobRun, ckpt: Checkpoint) -> None:
        if j.stop in ("cancel", "lost"):  # nobody resumes from it
            return
        store = self.rt.store
        key = new_key("checkpoints", "safetensors")
        store.put_bytes(key, ckpt.to_bytes())
        with self.rt.session_factory() as s:
            old = s.scalar(select(TrainingJob.checkpoint_key).where(TrainingJob.id == j.id))
            s.execute(update(TrainingJob).where(*j.mine()).values(checkpoint_key=key, checkpoint_step=ckpt.step,
                                                                   heartbeat_at=utcnow()))
            s.commit()
        if old and old != key:
            store.delete(old)
        j.log.info("checkpoint at step %d -> %s", ckpt.step, key)

    def finish(self, j: JobRun, result: TrainResult) -> str:
        """The job's final state from its result: succeeded (adapter + previews), cancelled, requeued or failed."""
        if result.error is not None:
            if isinstance(result.error, TRANSIENT):  # the database or broker blinked: the job runs again later
                return self.requeue(j, count_attempt=True)
            j.log.error("training failed: %r", result.error)
            return self.fail(j, FailureCode.TRAINING_ERROR, f"Training could not run: {result.error}")
        if result.stopped and j.stop == "shutdown":
            return self.requeue(j, count_attempt=False)
        if result.stopped or result.adapter is None:
            return self.stopped(j, result.step)

        # Stored in fp16 (10.5 MB instead of 21 MB at amused-256 size); previews use the stored copy, so they
        # show exactly what later generations with this adapter will produce.
        data = trainer.adapter_to_bytes(result.adapter, dtype=torch.float16)
        stored = trainer.adapter_from_bytes(data)
        adapter_id = self.store_adapter(j, stored, data)
        with self.rt.session_factory() as s:
            s.execute(update(TrainingJob).where(*j.mine()).values(step=result.step, heartbeat_at=utcnow()))
            s.commit()
        try:
            self.render_previews(j, adapter_id, stored)
        except TRANSIENT:
            raise
        except Exception:  # previews are a courtesy; never fail a trained job over them
            j.log.exception("preview rendering failed")
        with self.rt.session_factory() as s:
            ok = jobs.transition(s, j.id, expected=JOB_ACTIVE, new=JobState.SUCCEEDED, finished_at=utcnow(),
                                 eta_seconds=0.0, device_seconds=j.device_seconds(), step=result.step)
            old_ckpt = s.scalar(select(TrainingJob.checkpoint_key).where(TrainingJob.id == j.id))
            s.commit()
        if ok and old_ckpt:
            self.rt.store.delete(old_ckpt)
        j.log.info("succeeded in %.1f s: adapter %s", time.perf_counter() - j.t0, adapter_id)
        return JobState.SUCCEEDED if ok else "lost"

    # --- helpers of the steps --------------------------------------------------------------------------------

    def stopped(self, j: JobRun, step: int) -> str:
        """The job stopped before its end: cancelled when that was asked for, else it is no longer ours."""
        with self.rt.session_factory() as s:
            row = s.execute(select(TrainingJob.cancel_requested_at, TrainingJob.state)
                            .where(TrainingJob.id == j.id)).one()
            ok = False
            if row.cancel_requested_at is not None or row.state == JobState.CANCELLING:
                ok = jobs.transition(s, j.id, expected=JOB_ACTIVE, new=JobState.CANCELLED,
                                     finished_at=utcnow(), eta_seconds=None, device_seconds=j.device_seconds())
            s.commit()
        j.log.info("stopped at step %d (%s)", step, JobState.CANCELLED if ok else "no longer ours")
        return JobState.CANCELLED if ok else "stopped"

    def fail(self, j: JobRun, code: FailureCode, message: str) -> str:
        with self.rt.session_factory() as s:
            jobs.transition(s, j.id, expected=JOB_ACTIVE, new=JobState.FAILED, error_code=code,
                            error_message=message, finished_at=utcnow(), eta_seconds=None,
                            device_seconds=j.device_seconds(), held_by=j.job.worker_host)  # not a job taken over
            s.commit()
        return JobState.FAILED

    def requeue(self, j: JobRun, *, count_attempt: bool) -> str:
        """Back to queued for the next worker. A clean stop gives its attempt back; no wake-up is sent from here
        (this worker, still draining, would take it): with sent_at empty the reconciler sends one."""
        extra: dict[str, Any] = {} if count_attempt else {"attempts": TrainingJob.attempts - 1}
        with self.rt.session_factory() as s:
            ok = jobs.transition(s, j.id, expected=JobState.RUNNING, new=JobState.QUEUED, heartbeat_at=None,
                                 sent_at=None, eta_seconds=None, device_seconds=j.device_seconds(), **extra)
            s.commit()
        if not ok:  # cancelled meanwhile, or taken over: whoever moved it owns it now
            return "stopped"
        j.log.info("requeued for the next worker%s", "" if count_attempt else " (attempt not counted)")
        return "requeued"

    def store_adapter(self, j: JobRun, adapter: trainer.Adapter, data: bytes) -> str:
        """Write the adapter file and its row; exactly one row per job (a rerun reuses the existing one)."""
        sha = sha256_hex(data)
        key = content_key("adapters", sha, "safetensors")
        with self.rt.session_factory() as s:
            existing = s.scalar(select(AdapterRow).where(AdapterRow.job_id == j.id))
            if existing is not None:
                j.log.info("adapter row %s already exists for this job; reusing it", existing.id)
                return existing.id
        self.rt.store.put_bytes(key, data)
        meta = adapter.meta
        return insert_version(self.rt.session_factory, style_id=j.job.style_id, job_id=j.id, fields=dict(
            owner_id=j.job.owner_id, blob_key=key, sha256=sha, bytes=len(data), base_model=meta.base_model,
            base_revision=meta.base_revision, rank=meta.rank, alpha=meta.alpha, targets=list(meta.targets),
            descriptor=meta.descriptor, train_prompt=meta.train_prompt, steps=meta.steps, seed=meta.seed,
            engine_version=meta.engine_version))

    def render_previews(self, j: JobRun, adapter_id: str, adapter: trainer.Adapter) -> None:
        descriptor = adapter.meta.descriptor
        prompts = [training_prompt(descriptor, p) for p in self.rt.settings.preview_prompts[:2]]
        if j.subject is not None:
            prompts = [j.subject, f"{j.subject} on a beach"][: len(prompts)]
        if not prompts:
            return
        cache = self.rt.cache()
        cache.put(adapter_id, adapter)
        recorder = PhaseRecorder(self.rt, j.id, j.job.worker_host, stops=False)
        clock = PhaseClock(Phase.RENDERING_PREVIEWS, recorder)
        clock.start(len(prompts))
        with cache.batch([adapter_id]) as slots:
            requests = [GenerationRequest(prompt=p, seed=j.seed + i, adapter=slots[adapter_id],
                                          steps=self.rt.settings.preview_steps) for i, p in enumerate(prompts)]
            results = trainer.sample(self.rt.parts(), requests)
        clock(len(results), len(prompts))
        made = [(p, res.image) for p, res in zip(prompts, results, strict=True) if res.image is not None]
        record_adapter_scores(self.rt, adapter_id, made, j.references)
        for prompt, res in zip(prompts, results, strict=True):
            if res.image is None:
                continue
            key = new_key("previews", "png")
            self.rt.store.put_bytes(key, png(res.image))
            with self.rt.session_factory() as s:
                n = jobs.count_events(s, j.id, EventKind.PREVIEW)  # its index: GET /v1/jobs/{id}/previews/{n}
                jobs.add_event(s, j.id, EventKind.PREVIEW, {"image_key": key, "prompt": prompt, "n": n})
                s.commit()
        j.log.info("rendered %d previews", len(results))
