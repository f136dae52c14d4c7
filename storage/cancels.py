"""Cancelling generations, and all of one user's waiting work at once (an admin's "cancel all", disabling a user).

A generation has no `cancelled` state: a cancelled one ends `failed` with `error_code = "cancelled_on_request"` (a final
state, so its webhook's `completed` event fires and nothing moves it again). A queued one ends at once; a running
one too — its worker's `finish` is a conditional UPDATE from `running`, so the images it is still rendering are
never attached, and the worker stops sampling at its next progress write when none of its batch is still its own
(worker/progress.py). Training jobs are cancelled as `POST /v1/jobs/{id}/cancel` does: queued → cancelled,
running → cancelling (the train worker stops at its next cancel check).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import jobs
from storage.error_codes import FailureCode
from storage.models import Generation, TrainingJob, utcnow
from storage.states import GenerationState, JobState

logger = logging.getLogger(__name__)

CANCELLED_CODE = FailureCode.CANCELLED


def cancel_generation(session: Session, generation_id: str, *, why: str = "Cancelled by its owner.") -> bool:
    """queued|running → failed (`cancelled`), one conditional UPDATE; False when it was already final. The caller
    commits."""
    return jobs.transition_generation(
        session, generation_id, expected=(GenerationState.QUEUED, GenerationState.RUNNING),
        new=GenerationState.FAILED, finished_at=utcnow(), error_code=CANCELLED_CODE, error_message=why)


@dataclass(frozen=True)
class CancelledWork:
    generations: int
    jobs: int


def cancel_user_work(session: Session, user_id: str, *, running: bool, why: str) -> CancelledWork:
    """Cancel `user_id`'s queued generations and training jobs, and with `running` also those a worker holds.
    The caller commits."""
    gen_states = [GenerationState.QUEUED, *([GenerationState.RUNNING] if running else [])]
    gen_ids = session.scalars(select(Generation.id).where(Generation.owner_id == user_id,
                                                          Generation.state.in_(gen_states))).all()
    n_gens = sum(cancel_generation(session, g, why=why) for g in gen_ids)
    job_states = [JobState.QUEUED, *([JobState.RUNNING] if running else [])]
    n_jobs = 0
    now = utcnow()
    for job_id, state in session.execute(select(TrainingJob.id, TrainingJob.state).where(
            TrainingJob.owner_id == user_id, TrainingJob.state.in_(job_states))).all():
        if state == JobState.QUEUED:
            done = jobs.transition(session, job_id, expected=JobState.QUEUED, new=JobState.CANCELLED,
                                   cancel_requested_at=now, finished_at=now)
        else:
            done = jobs.transition(session, job_id, expected=JobState.RUNNING, new=JobState.CANCELLING,
                                   cancel_requested_at=now)
        n_jobs += int(done)
    if n_gens or n_jobs:
        logger.info("user %s: cancelled %d generations and %d jobs (%s)", user_id, n_gens, n_jobs, why)
    return CancelledWork(n_gens, n_jobs)
