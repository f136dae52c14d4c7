"""Which training jobs a train worker runs: the message is a wake-up, the database decides.

`claim_run` first settles what only the message's own job can need (a takeover from a dead worker, a cancel or
an attempt limit reached while it waited), then claims up to `STYLEDROP_TRAIN_BATCH` queued jobs in queue order
(`storage.claims.claim_train_jobs`: oldest first, fair across users, race-safe). A job already claimed by a batch
makes its own message a no-op, as a redelivery is.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from storage import claims, jobs
from storage.error_codes import FailureCode
from storage.models import TrainingJob, utcnow
from storage.states import JOB_ACTIVE, JobState
from worker.runtime import Runtime
from worker.shared import IdLogger

logger = logging.getLogger(__name__)


def settle_message_job(rt: Runtime, job_id: str, log: IdLogger) -> None:
    """Deal with what only the message's own job can need: a takeover from a dead worker (or from this process,
    after a crash it survived), a cancel or an attempt limit reached while it waited. Which jobs then run is
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
                s, job_id, expected=JobState.QUEUED, new=JobState.FAILED, error_code=FailureCode.TOO_MANY_ATTEMPTS,
                finished_at=now,
                error_message=f"Training was interrupted {job.attempts} times (the limit is {job.max_attempts}); "
                "giving up. Retry the job to start it again.",
            )
            s.commit()
            log.error("failed after %d attempts", job.attempts)


def claim_run(rt: Runtime, job_id: str) -> list[TrainingJob]:
    """Settle the message's job, then claim the jobs the database says are next (up to train_batch)."""
    log = IdLogger(logger, {"kind": "job", "id": job_id})
    settle_message_job(rt, job_id, log)
    with rt.session_factory() as s:
        claimed = claims.claim_train_jobs(s, limit=max(1, rt.settings.train_batch), worker=rt.worker_host)
        s.commit()
    if not claimed:
        log.info("no queued job to claim; nothing to do")
    elif job_id not in {j.id for j in claimed}:
        log.info("woke up; the next jobs in the queue are %s", ", ".join(j.id for j in claimed))
    return claimed
