"""The train and generate tasks: thin Celery shells over `run_train` (below: claim, then `worker.training`) and
`worker.generation.run_generate` (the generation batch).

Both take an id and re-fetch the row; the database is the record and Celery only the delivery, so each is safe
to run twice: a task finding its job final (or already run by a live worker) returns without work. Attempts are
counted in the DB; a job past `max_attempts` ends `failed` instead of looping. Only named transient errors
(SQLAlchemy OperationalError, Redis ConnectionError) are retried by Celery.
"""

from __future__ import annotations

import logging
from typing import Any

from storage.broker import ROUTES
from storage.states import WorkKind
from worker.celery_app import app
from worker.generation import run_generate
from worker.runtime import SHUTDOWN, Runtime, get_runtime
from worker.shared import TRANSIENT
from worker.train_claim import claim_run
from worker.training import TrainingRun

logger = logging.getLogger(__name__)

# ==============================================================================================================
# training: which jobs run is worker/train_claim.py, the run itself worker/training.py
# ==============================================================================================================


def run_train(rt: Runtime, job_id: str) -> str:
    """Wake up for `job_id`: claim up to `train_batch` queued jobs (the database decides which) and train them in
    one run to final states (or, on a warm shutdown, back to queued). Returns the outcome of the message's job if
    it ran, else of the first claimed job; "skipped" when nothing was claimed."""
    if SHUTDOWN.is_set():  # a warm shutdown drains what was prefetched: claim nothing new
        return "skipped"
    claimed = claim_run(rt, job_id)
    if not claimed:
        return "skipped"
    rt.current_id, rt.current_ids = claimed[0].id, [j.id for j in claimed]
    try:
        outcomes = TrainingRun(rt, claimed).run()
    finally:
        rt.current_id, rt.current_ids = None, []
    return outcomes.get(job_id) or outcomes.get(claimed[0].id, "skipped")


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
