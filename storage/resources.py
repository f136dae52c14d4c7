"""Jobs and generations as the API shows them, defined once: `JobPublic` and `GenerationPublic` (validated from ORM
rows, `from_attributes`), and the views that add what a row does not hold (queue position, adapter, estimate) for
a whole page in a fixed number of queries.

They live in storage, not api/, because the worker writes them too: the webhook outbox (storage/webhooks.py)
records a job or generation exactly as `GET` returns it at the moment of the event, inside the transaction of the
change, and worker/ may not import api/. api/schemas.py re-exports both, and the API's responses are these models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field
from sqlalchemy import select
from sqlalchemy.orm import Session
from typing_extensions import TypeVar  # a TypeVar with a default (PEP 696) before Python 3.13

from storage.models import Adapter, Generation, TrainingJob, utcnow
from storage.queue_order import generation_queue_positions, queue_positions
from storage.states import GENERATION_FINAL, JOB_ACTIVE, GenerationState, JobState
from storage.urls import absolute
from trainer.contracts.phases import Phase

RECENT_GENERATIONS = 20  # finished generations the queue estimate is taken from

WebhookEvent = Literal["start", "progress", "completed"]
WEBHOOK_DOC = (
    "An http(s) URL that receives a POST with this resource (as GET returns it) on each chosen event, signed per "
    "Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature; secret from GET /v1/webhooks/secret) and "
    "retried with backoff until it answers 2xx. Loopback, private and link-local addresses are refused."
)
WEBHOOK_EVENTS_DOC = (
    "Which events to send: start (a worker took it), progress (at most every few seconds while running), "
    "completed (succeeded, failed or cancelled). Default: all three."
)


# The webhook a job or generation was created with, as both show it (the row's column is `webhook_events`).
WebhookUrl = Annotated[str | None, Field(description=WEBHOOK_DOC)]
WebhookEventsFilter = Annotated[list[WebhookEvent] | None, Field(
    validation_alias=AliasChoices("webhook_events_filter", "webhook_events"), description=WEBHOOK_EVENTS_DOC)]


class ErrorInfo(BaseModel):
    code: str
    message: str


class FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class WithError(FromRow):
    """A row that may have failed: its `error_code`/`error_message` columns shown as one `error` object."""

    error_code: str | None = Field(default=None, exclude=True)
    error_message: str | None = Field(default=None, exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error(self) -> ErrorInfo | None:
        if self.error_code is None and self.error_message is None:
            return None
        return ErrorInfo(code=self.error_code or "error", message=self.error_message or "")


class JobPhase(BaseModel):
    """What a running job does now, with its own count and estimate."""

    name: Phase = Field(description="rendering_candidates and scoring (an automatic round's images, before any "
                        "step), training (steps), rendering_previews (after the last step).")
    done: int = Field(description="Units of this phase done: images, or steps while training.")
    total: int = Field(description="Units of this phase in all.")
    eta_seconds: float | None = Field(default=None, description="Seconds until this phase ends at its pace so far; "
                                      "null before its first unit.")


class JobPick(BaseModel):
    """An image an automatic round kept to train on, with its CLIP scores (score = text + 0.25 · style)."""

    n: int = Field(description="Its index in /v1/jobs/{id}/picks/{n}.")
    prompt: str
    candidate: int = Field(description="Its position among the round's rendered candidates.")
    text_score: float
    style_score: float
    score: float
    image_url: str


def pick_url(job_id: str, n: int) -> str:
    return f"/v1/jobs/{job_id}/picks/{n}"


def pick_views(job_id: str, rows: Sequence[dict[str, Any]] | None) -> list[JobPick]:
    """A job's `picks` column as the API shows it: the store's keys replaced by URLs."""
    return [JobPick(n=n, image_url=absolute(pick_url(job_id, n)), **{k: v for k, v in row.items() if k != "image_key"})
            for n, row in enumerate(rows or [])]


# Example payloads for the OpenAPI document (api/schemas.py builds its other examples from these).
EXAMPLE_BASE = "https://styledrop.example.com"
JOB_EXAMPLE: dict[str, Any] = {
    "id": "5b0f6c2d9e8a4f1b8c3d2e1f0a9b8c7d", "style_id": "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f", "state": JobState.RUNNING,
    "step": 30, "total_steps": 60, "last_loss": 6.41, "eta_seconds": 12.5, "steps_per_second": 2.4,
    "queue_position": 0, "attempts": 1, "max_attempts": 3,
    "params": {"steps": 60, "seed": 7, "descriptor": "watercolor painting"},
    "queued_at": "2026-01-05T10:00:00Z", "started_at": "2026-01-05T10:00:02Z", "finished_at": None,
    "cancel_requested_at": None, "device_seconds": 12.4, "adapter_id": None, "webhook": None,
    "webhook_events_filter": None, "progress": 0.5, "error": None,
}
GENERATION_EXAMPLE: dict[str, Any] = {
    "id": "9a8b7c6d5e4f4a3b2c1d0e9f8a7b6c5d", "state": GenerationState.SUCCEEDED,
    "adapter_id": "3e4f5a6b7c8d4e9f0a1b2c3d4e5f6a7b",
    "style_id": "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f", "version": 1, "prompt": "a cat in watercolor painting style",
    "negative_prompt": None, "style_strength": 0.0, "guidance_scale": 10.0, "text_guidance": None,
    "subject_adapter_id": None, "subject_weight": None, "steps": 12, "seed": 42, "num_images": 1, "strength": None,
    "attempts": 1, "queued_at": "2026-01-05T10:02:00Z", "started_at": "2026-01-05T10:02:01Z",
    "finished_at": "2026-01-05T10:02:04Z", "text_scores": [0.31], "style_scores": [0.72], "mode": "text",
    "image_urls": [f"{EXAMPLE_BASE}/v1/generations/9a8b7c6d5e4f4a3b2c1d0e9f8a7b6c5d/images/0"], "step": 12,
    "queue_position": 0, "eta_seconds": 0.0, "webhook": None, "webhook_events_filter": None, "progress": 1.0,
    "error": None,
}


class JobPublic(WithError):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str
    style_id: str
    state: str
    step: int
    total_steps: int
    last_loss: float | None
    eta_seconds: float | None
    steps_per_second: float | None
    queue_position: int = Field(default=0, description="1 = next to run; 0 when not queued")
    attempts: int
    max_attempts: int
    params: dict[str, Any]
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    device_seconds: float = Field(
        description="Wall-clock seconds a worker spent running this job on its device (the GPU, or the CPU on a "
        "CPU-only worker), summed over attempts; not a GPU-only figure, so not 0 on a CPU worker.",
    )
    adapter_id: str | None = None
    webhook: WebhookUrl = None
    webhook_events_filter: WebhookEventsFilter = None
    phase_row: dict[str, Any] | None = Field(default=None, exclude=True, validation_alias="phase")
    pick_rows: list[dict[str, Any]] | None = Field(default=None, exclude=True, validation_alias="picks")

    @computed_field(  # type: ignore[prop-decorator]
        description="What the job does now while it runs (null otherwise): an automatic round renders and scores "
        "its candidates before its first step; `phase` events report each change.")
    @property
    def phase(self) -> JobPhase | None:
        if self.state not in JOB_ACTIVE or not self.phase_row:
            return None
        return JobPhase.model_validate(self.phase_row)

    @computed_field(  # type: ignore[prop-decorator]
        description="The images an automatic round kept to train on, once chosen (null for other jobs), each with "
        "its scores and image URL.")
    @property
    def picks(self) -> list[JobPick] | None:
        return None if self.pick_rows is None else pick_views(self.id, self.pick_rows)

    @computed_field(description="step / total_steps, 0..1")  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float:
        return 1.0 if self.state == JobState.SUCCEEDED else min(self.step / max(self.total_steps, 1), 1.0)


class GenerationPublic(WithError):
    model_config = ConfigDict(json_schema_extra={"examples": [GENERATION_EXAMPLE]})

    id: str
    state: str
    adapter_id: str | None
    style_id: str | None = Field(default=None, description=(
        "The style (or subject) whose adapter it uses: the `style_id` it was made with, or its adapter's style."))
    version: int | None = Field(default=None, description=(
        "That adapter's version: the `version` it was made with, else the one the style's default was then."))
    prompt: str
    negative_prompt: str | None
    style_strength: float
    guidance_scale: float
    text_guidance: float | None = None
    subject_adapter_id: str | None = None
    subject_weight: float | None = None
    steps: int
    seed: int
    num_images: int
    strength: float | None
    attempts: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    init_image_key: str | None = Field(default=None, exclude=True)
    mask_key: str | None = Field(default=None, exclude=True)
    image_keys: list[str] | None = Field(default=None, exclude=True)
    text_scores: list[float] | None = Field(default=None, description="CLIP text score of each image (cosine of "
                                            "image and prompt); null until scored or when CLIP is unavailable.")
    style_scores: list[float] | None = Field(default=None, description="CLIP style score of each image (cosine of "
                                             "image and the adapter's style references); null without an adapter.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mode(self) -> Literal["text", "image", "inpaint"]:
        return "inpaint" if self.mask_key else "image" if self.init_image_key else "text"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def image_urls(self) -> list[str]:
        return [absolute(f"/v1/generations/{self.id}/images/{n}") for n in range(len(self.image_keys or []))]
    step: int = Field(default=0, description="Sampling rounds done so far (of `steps`).")
    queue_position: int = Field(default=0, description="1 = next to run; 0 when not queued.")
    eta_seconds: float | None = Field(
        default=None,
        description="Estimated seconds until done: from its own pace while running, from the service's recent pace "
        "while queued; null when there is nothing to estimate from, 0 once final.",
    )
    webhook: WebhookUrl = None
    webhook_events_filter: WebhookEventsFilter = None

    @computed_field(description="step / steps, 0..1; 1 once succeeded.")  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float:
        if self.state == GenerationState.SUCCEEDED:
            return 1.0
        return math.floor(min(self.step, self.steps) / max(self.steps, 1) * 1000) / 1000


JobView = TypeVar("JobView", bound=JobPublic, default=JobPublic)


def job_views(session: Session, jobs: Sequence[TrainingJob],
              schema: type[JobView] = JobPublic) -> list[JobView]:  # type: ignore[assignment]  # mypy: a default for a TypeVar
    """`jobs` validated as `schema` (JobPublic or a subclass), with the two values a row does not hold found for the
    whole page at once: the queue positions (one query) and the live adapters (one query)."""
    positions = queue_positions(session, [j.id for j in jobs if j.state == JobState.QUEUED])
    adapters: dict[str, str] = {job_id: adapter_id for job_id, adapter_id in session.execute(
        select(Adapter.job_id, Adapter.id).where(Adapter.job_id.in_([j.id for j in jobs]), Adapter.deleted_at.is_(None))
    )} if jobs else {}
    return [
        schema.model_validate(job).model_copy(
            update={"queue_position": positions.get(job.id, 0), "adapter_id": adapters.get(job.id)}
        )
        for job in jobs
    ]


def generation_views(session: Session, gens: Sequence[Generation]) -> list[GenerationPublic]:
    """`gens` as the API shows them, in a fixed number of queries whatever their number (positions at once, the
    service's recent pace read once, the style and version of every adapter at once)."""
    positions = generation_queue_positions(session, gens)
    pace = recent_pace(session) if needs_pace(gens) else None
    adapter_ids = {g.adapter_id for g in gens if g.adapter_id is not None}
    rows = session.execute(select(Adapter.id, Adapter.style_id, Adapter.version)
                           .where(Adapter.id.in_(adapter_ids))).all() if adapter_ids else []
    named: dict[str, dict[str, Any]] = {a: {"style_id": style, "version": version} for a, style, version in rows}
    return [GenerationPublic.model_validate(g).model_copy(update={
        "queue_position": positions.get(g.id, 0),
        "eta_seconds": generation_eta(g, positions.get(g.id, 0), pace),
        **named.get(g.adapter_id or "", {})}) for g in gens]


def recent_pace(session: Session) -> tuple[float, float] | None:
    """(seconds one generation takes, generations finished per second) over the last few that succeeded, or None
    without history. Generations run in batches, so the rate is taken over the span they covered together."""
    rows = session.execute(
        select(Generation.started_at, Generation.finished_at)
        .where(Generation.state == GenerationState.SUCCEEDED, Generation.started_at.is_not(None),
               Generation.finished_at.is_not(None))
        .order_by(Generation.finished_at.desc()).limit(RECENT_GENERATIONS)
    ).all()
    spans = [(s, f) for s, f in rows if s is not None and f is not None and f >= s]
    if not spans:
        return None
    duration = sum((f - s).total_seconds() for s, f in spans) / len(spans)
    window = (max(f for _, f in spans) - min(s for s, _ in spans)).total_seconds()
    return max(duration, 0.01), len(spans) / max(window, 0.01)


def needs_pace(gens: Sequence[Generation]) -> bool:
    """Whether any of `gens` is estimated from the service's recent pace (queued, or running without a round)."""
    return any(g.state == GenerationState.QUEUED or (g.state == GenerationState.RUNNING and not g.step) for g in gens)


def generation_eta(gen: Generation, position: int, pace: tuple[float, float] | None,
                   now: datetime | None = None) -> float | None:
    """Seconds until `gen` should be done: from its own pace while running (rounds done so far), from the recent
    pace of the service (`pace`, from `recent_pace`) while queued; None when there is nothing to go on. An
    estimate, never a promise."""
    if gen.state in GENERATION_FINAL:
        return 0.0
    now = now or utcnow()
    if gen.state == GenerationState.RUNNING and gen.started_at is not None and gen.step > 0:
        elapsed = (now - gen.started_at).total_seconds()
        return round(max(elapsed / gen.step * (max(gen.steps, gen.step) - gen.step), 0.0), 1)
    if pace is None:
        return None
    duration, rate = pace
    if gen.state == GenerationState.RUNNING:
        elapsed = (now - gen.started_at).total_seconds() if gen.started_at else 0.0
        return round(max(duration - elapsed, 0.0), 1)
    return round(duration + max(position - 1, 0) / rate, 1)
