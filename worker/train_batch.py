"""Continuous batching for a training run: queued jobs join the running batch at a step boundary; and `JobRun`,
one job's place in a run, whether claimed with it or joined later.

The engine (`trainer.train_styles`) asks `RunJoiner` for up to `free` more styles whenever a slot of the run's
`STYLEDROP_TRAIN_BATCH` is free (a job finished, was cancelled or failed), every `progress_every` steps. It
claims them through the same fair claim as a run's first jobs (`storage.claims.claim_train_jobs`: oldest first,
fair across users, race-safe), loads each one's inputs exactly as `TrainingRun.load_inputs` does for those, and
hands the engine their `StyleSpec`s. From then on a joined job is one of the run's jobs like any other: progress,
checkpoints, cancel, its own finish and failure isolation (worker/training.py).

Its own wake-up message is then a no-op wherever it lands: the job is running with a live heartbeat
(worker/train_claim.py). A queued job waits at most `progress_every - 1` steps once a slot is free, instead of
the rest of the batch. With `STYLEDROP_TRAIN_BATCH` = 1 nothing joins: a run is one job, and the next job's own
wake-up starts it (joining would save nothing but that message's delivery).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy import update

from storage import claims
from storage.models import TrainingJob
from storage.states import JOB_ACTIVE
from trainer.train import StyleSpec
from worker.runtime import SHUTDOWN
from worker.shared import TRANSIENT, IdLogger

if TYPE_CHECKING:
    from worker.training import TrainingRun

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class JobRun:
    """One claimed job's place in a run."""

    job: TrainingJob
    log: IdLogger
    spec: StyleSpec | None = None  # None until its inputs load
    seed: int = 0
    subject: str | None = None  # a subject adapter's prompt ("a photo of sks dog"): its previews show the subject
    references: list[Image.Image] = field(default_factory=list)  # what the previews' style score compares with
    stop: str | None = None  # why it must stop: "cancel", "lost" (no longer ours) or "shutdown"; "done": it left
    t0: float = field(default_factory=time.perf_counter)

    @property
    def id(self) -> str:
        return self.job.id

    def device_seconds(self) -> float:
        return (self.job.device_seconds or 0.0) + time.perf_counter() - self.t0

    def mine(self) -> tuple[Any, ...]:
        """The rows this worker may still write: its job, while it runs it."""
        return (TrainingJob.id == self.id, TrainingJob.worker_host == self.job.worker_host,
                TrainingJob.state.in_(JOB_ACTIVE))


class RunJoiner:
    """`Callbacks.join` of one `TrainingRun`: claims queued jobs into the run while it trains."""

    def __init__(self, run: TrainingRun, outcomes: dict[str, str]) -> None:
        self.run = run
        self.outcomes = outcomes  # where a joined job that fails before training records its outcome

    def __call__(self, free: int) -> list[StyleSpec]:
        """Up to `free` queued jobs, claimed for this run and loaded; their specs in claim order (the engine
        gives them the next style indices, so `run.ready` grows in the same order)."""
        rt = self.run.rt
        if SHUTDOWN.is_set():  # a warm shutdown drains: nothing new joins
            return []
        with rt.session_factory() as s:
            claimed = claims.claim_train_jobs(s, limit=free, worker=rt.worker_host)
            if claimed:
                s.execute(update(TrainingJob).where(TrainingJob.id.in_([j.id for j in claimed]))
                          .values(run_id=self.run.run_id))
            s.commit()
        specs: list[StyleSpec] = []
        for job in claimed:
            j = JobRun(job, IdLogger(logger, {"kind": "job", "id": job.id}))
            try:
                if not self.run.load_inputs(j, self.outcomes):
                    continue  # failed with its reason (style deleted, image unreadable, ...)
            except TRANSIENT:  # not heartbeated: its heartbeat goes stale and it is taken over like a dead run's
                j.log.exception("could not load this job's inputs to join run %s", self.run.run_id)
                continue
            assert j.spec is not None
            self.run.jobs.append(j)  # polled for cancel with the others
            self.run.ready.append(j)  # the engine's next index
            rt.current_ids.append(j.id)  # heartbeated with the others
            specs.append(j.spec)
            j.log.info("joined run %s at a step boundary", self.run.run_id)
        return specs
