"""Request and response models, named by direction: `*Create` comes in, `*Public` goes out.

`*Public` models are validated straight from ORM rows (`from_attributes`); what a row does not hold as a column
is a computed field (URLs, progress, the error object) or, for the two values a listing computes in one query
for the whole page (`queue_position`, `adapter_id`), set by the service (`api.services.jobs.job_views`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field, computed_field, field_validator

from storage.states import JobState
from storage.users import BadUserName, validate_user_name

MAX_SEED = 2**31 - 1
MAX_OFFSET = 2**31 - 1  # list offsets and event cursors: larger ones overflow SQLite/PostgreSQL integers


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


class ErrorInfo(BaseModel):
    code: str
    message: str


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _WithError(_FromRow):
    """A row that may have failed: its `error_code`/`error_message` columns shown as one `error` object."""

    error_code: str | None = Field(default=None, exclude=True)
    error_message: str | None = Field(default=None, exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error(self) -> ErrorInfo | None:
        if self.error_code is None and self.error_message is None:
            return None
        return ErrorInfo(code=self.error_code or "error", message=self.error_message or "")


class StylePublic(_FromRow):
    id: str
    descriptor: str
    content: str | None
    width: int
    height: int
    image_bytes: int
    image_sha256: str
    created_at: datetime
    latest_job_id: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def image_url(self) -> str:
        return f"/v1/styles/{self.id}/image"


class JobPublic(_WithError):
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
        validation_alias=AliasChoices("device_seconds", "gpu_seconds"),
        description="Wall-clock seconds a worker spent running this job on its device (the GPU, or the CPU on a "
        "CPU-only worker), summed over attempts; not a GPU-only figure, so not 0 on a CPU worker.",
    )
    adapter_id: str | None = None
    webhook: str | None = Field(default=None, description=WEBHOOK_DOC)
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, validation_alias=AliasChoices("webhook_events_filter", "webhook_events"),
        description=WEBHOOK_EVENTS_DOC)

    @computed_field(description="step / total_steps, 0..1")  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float:
        return 1.0 if self.state == JobState.SUCCEEDED else min(self.step / max(self.total_steps, 1), 1.0)


class StyleJobCreate(BaseModel):
    """Train an existing style again (POST /v1/styles/{id}/jobs); the stored image is used."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, description="Default: the steps of the style's last job.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")


class StyleCreatedPublic(BaseModel):
    style: StylePublic
    job: JobPublic


class JobEventPublic(_FromRow):
    id: int
    job_id: str
    kind: str
    created_at: datetime
    payload: dict[str, Any]


class AdapterPublic(_FromRow):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    style_id: str
    job_id: str
    descriptor: str
    train_prompt: str
    sha256: str
    bytes: int
    base_model: str
    base_revision: str | None
    rank: int
    alpha: float
    targets: list[str]
    steps: int
    seed: int
    engine_version: str
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def file_url(self) -> str:
        return f"/v1/adapters/{self.id}/file"


class GenerationCreate(BaseModel):
    """The bounds and defaults are the engine's (trainer/limits.py, which api/ cannot import); a test keeps the
    two in step."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=500)
    negative_prompt: str | None = Field(default=None, max_length=500)
    adapter_id: str | None = None
    style_strength: float = Field(default=1.0, ge=-1.0, le=10.0)
    guidance_scale: float = Field(default=10.0, ge=0.0, le=50.0)
    steps: int = Field(default=12, ge=1, le=100)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")
    num_images: int = Field(default=1, ge=1, description="At most settings.max_images_per_request.")
    strength: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Image-to-image only (multipart with init_image)."
    )
    webhook: str | None = Field(default=None, min_length=1, max_length=2048, description=WEBHOOK_DOC)
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, min_length=1, max_length=3, description=WEBHOOK_EVENTS_DOC + " In multipart: comma-separated."
    )

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _split_events(cls, value: Any) -> Any:
        # multipart forms carry one string: "start,completed"
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class GenerationPublic(_WithError):
    id: str
    state: str
    adapter_id: str | None
    prompt: str
    negative_prompt: str | None
    style_strength: float
    guidance_scale: float
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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mode(self) -> Literal["text", "image", "inpaint"]:
        return "inpaint" if self.mask_key else "image" if self.init_image_key else "text"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def image_urls(self) -> list[str]:
        return [f"/v1/generations/{self.id}/images/{n}" for n in range(len(self.image_keys or []))]
    step: int = Field(default=0, description="Sampling rounds done so far (of `steps`).")
    queue_position: int = Field(default=0, description="1 = next to run; 0 when not queued.")
    eta_seconds: float | None = Field(
        default=None,
        description="Estimated seconds until done: from its own pace while running, from the service's recent pace "
        "while queued; null when there is nothing to estimate from, 0 once final.",
    )
    webhook: str | None = Field(default=None, description=WEBHOOK_DOC)
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, validation_alias=AliasChoices("webhook_events_filter", "webhook_events"),
        description=WEBHOOK_EVENTS_DOC)

    @computed_field(description="step / steps, 0..1; 1 once succeeded.")  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float:
        if self.state == "succeeded":
            return 1.0
        return math.floor(min(self.step, self.steps) / max(self.steps, 1) * 1000) / 1000


class WebhookSecretPublic(BaseModel):
    secret: str = Field(description="`whsec_` + base64 key; signs every webhook delivery of this user.")


# --- admin ---------------------------------------------------------------------------------------------------


class AdminJobPublic(JobPublic):
    owner_id: str
    owner_name: str = Field(validation_alias=AliasPath("owner", "name"))  # joined in the listing's one query
    worker_host: str | None
    heartbeat_at: datetime | None
    run_id: str | None  # jobs a train worker trained together share one


class WorkerPublic(_FromRow):
    id: str
    host: str
    pid: int
    kind: str
    started_at: datetime
    heartbeat_at: datetime
    current_id: str | None
    stats: dict[str, Any]


class FailurePublic(_WithError):
    job_id: str = Field(validation_alias="id")
    owner_name: str = Field(validation_alias=AliasPath("owner", "name"))
    attempts: int
    finished_at: datetime | None


class OverviewPublic(BaseModel):
    queue_depths: dict[str, int] | None
    queue_error: str | None = None
    workers_online: list[WorkerPublic]
    running_jobs: list[AdminJobPublic]
    failures_24h: list[FailurePublic]
    job_counts: dict[str, int]
    generation_counts: dict[str, int]


class UserCreate(BaseModel):
    name: str = Field(description="1..64 ASCII letters, digits and _ . @ - (the CLI applies the same rule).")
    is_admin: bool = False

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_user_name(value)
        except BadUserName as exc:
            raise ValueError(str(exc)) from None


class UserPublic(_FromRow):
    id: str
    name: str
    is_admin: bool
    disabled: bool
    created_at: datetime


class ApiKeyCreatedPublic(BaseModel):
    id: str
    user_id: str
    key: str = Field(description="The plaintext key; shown only in this response.")
    created_at: datetime


class ApiKeyPublic(_FromRow):
    """A key without its secret: `prefix` is the 8 characters after `sd_` (enough to recognise it)."""

    id: str
    user_id: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class UserCreatedPublic(BaseModel):
    user: UserPublic
    key: ApiKeyCreatedPublic
