"""The state vocabulary of training jobs, generations, job events and workers: the one place a state is named.

Members are `StrEnum`s, so they compare equal to the strings stored in the database and travel through JSON and
SQL as those strings. Code elsewhere names states through these enums and the named sets below, never as string
literals, so a new state or a changed rule is one edit here.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"  # cancel requested while running; the worker stops at its next check
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class GenerationState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventKind(StrEnum):
    """Kinds of `job_events` rows (the SSE `event:` names)."""

    STATE = "state"
    PROGRESS = "progress"
    LOG = "log"
    PREVIEW = "preview"
    WEBHOOK = "webhook"  # one webhook delivery attempt
    PHASE = "phase"  # a phase began or moved on: {phase, done, total, eta_seconds} (trainer/contracts/phases.py)
    PICKS = "picks"  # the images an automatic round kept, with their scores and image URLs


class WebhookEvent(StrEnum):
    """What a webhook can be sent for (`webhook_events_filter`)."""

    START = "start"
    PROGRESS = "progress"
    COMPLETED = "completed"


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WorkKind(StrEnum):
    """The two kinds of work: each has its own task, queue and worker pool."""

    TRAIN = "train"
    GENERATE = "generate"


# --- named sets ---------------------------------------------------------------------------------------------------

# A worker holds the row (its heartbeat says whether that worker is alive).
JOB_ACTIVE: frozenset[JobState] = frozenset({JobState.RUNNING, JobState.CANCELLING})
GENERATION_ACTIVE: frozenset[GenerationState] = frozenset({GenerationState.RUNNING})
# Not final yet: counts against the per-user job cap, and a style deletion cancels it.
JOB_UNFINISHED: frozenset[JobState] = frozenset({JobState.QUEUED, *JOB_ACTIVE})
GENERATION_UNFINISHED: frozenset[GenerationState] = frozenset({GenerationState.QUEUED, *GENERATION_ACTIVE})
# Nothing moves the row on its own any more (an admin retry of failed/cancelled jobs is the only way out).
JOB_FINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
GENERATION_FINAL: frozenset[GenerationState] = frozenset({GenerationState.SUCCEEDED, GenerationState.FAILED})

# --- the legal edges ----------------------------------------------------------------------------------------------

# `failed`/`cancelled` → `queued` is an admin retry; `running` → `queued` a requeue after a lost worker.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.CANCELLING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}
GENERATION_TRANSITIONS: dict[GenerationState, frozenset[GenerationState]] = {
    GenerationState.QUEUED: frozenset({GenerationState.RUNNING, GenerationState.FAILED}),
    GenerationState.RUNNING: frozenset({GenerationState.QUEUED, GenerationState.SUCCEEDED, GenerationState.FAILED}),
    GenerationState.SUCCEEDED: frozenset(),
    GenerationState.FAILED: frozenset({GenerationState.QUEUED}),
}
