"""Request and response models, named by direction: `*Create` comes in, `*Public` goes out.

`*Public` models are validated straight from ORM rows (`from_attributes`); what a row does not hold as a column
is a computed field (URLs, progress, the error object) or, for the values a listing computes in one query for
the whole page (`queue_position`, `adapter_id`, `eta_seconds`), set by the view (`storage.resources.job_views`).
`JobPublic` and `GenerationPublic` are defined in storage/resources.py, because the worker's webhook outbox
sends them too; they are re-exported here with the rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AliasPath, BaseModel, ConfigDict, Field, computed_field, field_validator

from storage.generation_settings import MAX_SEED as MAX_SEED  # re-exported: the seed bound of every request
from storage.generation_settings import GenerationSettings
from storage.resources import WEBHOOK_DOC, WEBHOOK_EVENTS_DOC, FromRow, JobPublic, WebhookEvent, WithError
from storage.resources import GenerationPublic as GenerationPublic  # re-exported: the API's name for it
from storage.urls import absolute
from storage.users import BadUserName, validate_user_name
from trainer.contracts import limits

MAX_OFFSET = 2**31 - 1  # list offsets and event cursors: larger ones overflow SQLite/PostgreSQL integers

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A page of a listing; each listing has its named subclass below (`JobPage`, ...)."""

    items: list[Item]
    next: str | None = Field(default=None, description=(
        "The absolute URL of the next page (the same request, moved on); null on the last page."))


class StylePublic(FromRow):
    id: str
    descriptor: str
    content: str | None
    width: int
    height: int
    image_bytes: int
    image_sha256: str
    created_at: datetime
    latest_job_id: str | None = None
    kind: Literal["style", "subject"] = Field(default="style", description=(
        '"style": a StyleDrop style adapter; "subject": a subject adapter (mix it in with subject_adapter_id).'))
    class_word: str | None = Field(default=None, description='A subject\'s class word ("dog").')
    references: list[dict[str, Any]] | None = Field(default=None, exclude=True)
    default_version: int | None = Field(
        default=None, description="The adapter version a generation naming only this style uses: the one the user "
        "made default, else the newest; null until the first version is trained.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def image_url(self) -> str:
        return absolute(f"/v1/styles/{self.id}/image")

    @computed_field(  # type: ignore[prop-decorator]
        description="Each reference image's caption, in upload order; null = the StyleDrop prompt (a subject's "
        "photos train on 'a photo of sks <class_word>').")
    @property
    def captions(self) -> list[str | None]:
        return [r.get("caption") for r in self.references] if self.references else [None]


class StyleJobCreate(BaseModel):
    """Train an existing style again (POST /v1/styles/{id}/jobs); the stored image is used."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, description="Default: the steps of the style's last job.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")


class RoundPick(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation_id: str = Field(description="A succeeded generation of this style (made with any of its versions).")
    index: int = Field(ge=0, description="Which of its images: 0 .. num_images - 1.")


class RoundCreate(BaseModel):
    """POST /v1/styles/{id}/rounds: train the style's next version from feedback (StyleDrop's round 2)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["human", "automatic"] = Field(description=(
        "human: train on the images in `selection`, each with its generation's prompt as caption. automatic: the "
        "worker renders the default version over the feedback prompts, scores every image with CLIP and keeps the "
        "best per prompt."))
    selection: list[RoundPick] | None = Field(default=None, max_length=64, description="human mode only: the "
                                              "picked images (the paper keeps about 10).")
    steps: int | None = Field(default=None, ge=1, description="Default: the steps of the style's last job.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")
    prompts: int = Field(default=10, ge=1, le=30, description="automatic mode: how many of the 30 feedback "
                         "prompts to render (in their fixed order).")
    per_prompt: int = Field(default=4, ge=1, le=8, description="automatic mode: candidates rendered per prompt.")


class SamplesCreate(BaseModel):
    """POST /v1/styles/{id}/samples: generations over the feedback prompts, to pick a round's images from."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, description="Default: the style's default version.")
    prompts: int = Field(default=10, ge=1, le=30, description="How many of the 30 feedback prompts, in order.")
    images_per_prompt: int = Field(default=2, ge=1, description="At most settings.max_images_per_request.")
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=limits.MIN_STEPS, le=limits.MAX_STEPS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")


class SamplesPublic(BaseModel):
    """A samples request's generations (POST /v1/styles/{id}/samples) and how far they got: poll GET
    /v1/styles/{id}/samples until `done` equals `total`."""

    version: int | None = Field(description="The version they were made with; null while the style has none.")
    total: int = Field(description="Generations in the set (one per feedback prompt).")
    done: int = Field(description="Generations of the set that are final (succeeded or failed).")
    progress: float = Field(description="Sampling rounds done over the whole set, 0..1.")
    eta_seconds: float | None = Field(description="Seconds until the last one should be done; null when there is "
                                      "nothing to estimate from, 0 once all are final.")
    items: list[GenerationPublic] = Field(description="In feedback-prompt order.")
    next: str | None = Field(default=None, description="Always null: a set fits one page.")


class StyleCreatedPublic(BaseModel):
    style: StylePublic
    job: JobPublic


class JobEventPublic(FromRow):
    id: int
    job_id: str
    kind: str
    created_at: datetime
    payload: dict[str, Any]


class AdapterPublic(FromRow):
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
    version: int = Field(description="v1, v2, ... within its style: each feedback round makes the next version.")
    text_score: float | None = Field(description="CLIP text score, mean over the previews (cosine of image and "
                                     "prompt); null when CLIP was unavailable.")
    style_score: float | None = Field(description="CLIP style score, mean over the previews (cosine of image and "
                                      "the style's reference images); null when CLIP was unavailable.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def file_url(self) -> str:
        return absolute(f"/v1/adapters/{self.id}/file")


class VersionPublic(AdapterPublic):
    """One adapter version of a style (GET /v1/styles/{id}/versions)."""

    is_default: bool = False


class StyleUpdate(BaseModel):
    """PATCH /v1/styles/{id}: choose the version generations naming only the style use."""

    model_config = ConfigDict(extra="forbid")

    default_version: int = Field(ge=1, description="An existing, not deleted version of this style.")


class GenerationCreate(GenerationSettings):
    """The settings (storage/generation_settings.py), how to name the adapter, and the webhook."""

    style_id: str | None = Field(default=None, description="Use this style's adapter: `version`, else its "
                                 "default version. Not together with adapter_id.")
    version: int | None = Field(default=None, ge=1, description="An adapter version of `style_id`.")
    webhook: str | None = Field(default=None, min_length=1, max_length=2048, description=WEBHOOK_DOC)
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None, min_length=1, max_length=3, description=WEBHOOK_EVENTS_DOC + " In multipart: comma-separated."
    )

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _split_events(cls, value: Any) -> Any:
        # multipart forms carry one string: "start,completed"
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class WebhookSecretPublic(BaseModel):
    secret: str = Field(description="`whsec_` + base64 key; signs every webhook delivery of this user.")


# --- admin ---------------------------------------------------------------------------------------------------


class AdminJobPublic(JobPublic):
    owner_id: str
    owner_name: str = Field(validation_alias=AliasPath("owner", "name"))  # joined in the listing's one query
    worker_host: str | None
    heartbeat_at: datetime | None
    run_id: str | None  # jobs a train worker trained together share one


class WorkerPublic(FromRow):
    id: str
    host: str
    pid: int
    kind: str
    started_at: datetime
    heartbeat_at: datetime
    current_id: str | None
    stats: dict[str, Any]


class FailurePublic(WithError):
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


class UserPublic(FromRow):
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


class ApiKeyPublic(FromRow):
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


# --- pages of the listings (api/http/pagination.py) -----------------------------------------------------------


class JobPage(Page[JobPublic]):
    """Jobs, newest first."""


class JobEventPage(Page[JobEventPublic]):
    """A job's events, oldest first."""


class StylePage(Page[StylePublic]):
    """Styles and subjects, newest first."""


class VersionPage(Page[VersionPublic]):
    """A style's adapter versions, v1 first."""


class GenerationPage(Page[GenerationPublic]):
    """Generations, newest first."""


class AdapterPage(Page[AdapterPublic]):
    """Adapters, newest first."""


class ApiKeyPage(Page[ApiKeyPublic]):
    """API keys (never their secrets), oldest first."""


class AdminJobPage(Page[AdminJobPublic]):
    """Every user's jobs, newest first."""


class UserPage(Page[UserPublic]):
    """Users, oldest first."""
