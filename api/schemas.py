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
from storage.resources import (
    EXAMPLE_BASE,
    GENERATION_EXAMPLE,
    JOB_EXAMPLE,
    WEBHOOK_DOC,
    WEBHOOK_EVENTS_DOC,
    FromRow,
    JobPublic,
    WebhookEvent,
    WithError,
)
from storage.resources import GenerationPublic as GenerationPublic  # re-exported: the API's name for it
from storage.states import GenerationState, JobState
from storage.urls import absolute
from storage.users import BadUserName, validate_user_name
from trainer.contracts import limits

MAX_OFFSET = 2**31 - 1  # list offsets and event cursors: larger ones overflow SQLite/PostgreSQL integers

Item = TypeVar("Item")

# Example payloads (the OpenAPI document shows them; each lives on its schema's `json_schema_extra`).
STYLE_ID = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
ADAPTER_ID = "3e4f5a6b7c8d4e9f0a1b2c3d4e5f6a7b"
USER_ID = "7d6c5b4a39284f1e8d7c6b5a49382716"
STYLE_EXAMPLE: dict[str, Any] = {
    "id": STYLE_ID, "descriptor": "watercolor painting", "content": "a house", "width": 512, "height": 512,
    "image_bytes": 183204, "image_sha256": "9f2c" + "0" * 60, "created_at": "2026-01-05T10:00:00Z",
    "latest_job_id": JOB_EXAMPLE["id"], "kind": "style", "class_word": None, "default_version": 1,
    "image_url": f"{EXAMPLE_BASE}/v1/styles/{STYLE_ID}/image", "captions": [None],
}
ADAPTER_EXAMPLE: dict[str, Any] = {
    "id": ADAPTER_ID, "style_id": STYLE_ID, "job_id": JOB_EXAMPLE["id"], "descriptor": "watercolor painting",
    "train_prompt": "a house in watercolor painting style", "sha256": "4be1" + "0" * 60, "bytes": 1835008,
    "base_model": "amused/amused-256", "base_revision": None, "rank": 4, "alpha": 4.0,
    "targets": ["to_q", "to_k", "to_v", "to_out.0"], "steps": 60, "seed": 7, "engine_version": "1",
    "created_at": "2026-01-05T10:01:00Z", "version": 1, "text_score": 0.31, "style_score": 0.72,
    "file_url": f"{EXAMPLE_BASE}/v1/adapters/{ADAPTER_ID}/file",
}
KEY_EXAMPLE: dict[str, Any] = {"id": "1a2b3c4d5e6f4a7b8c9d0e1f2a3b4c5d", "user_id": USER_ID, "prefix": "Xk3vQ9aB",
                               "created_at": "2026-01-05T09:00:00Z", "last_used_at": "2026-01-05T10:00:00Z",
                               "revoked_at": None}
KEY_CREATED_EXAMPLE: dict[str, Any] = {"id": KEY_EXAMPLE["id"], "user_id": USER_ID,
                                       "key": "sd_Xk3vQ9aB" + "p" * 32, "created_at": "2026-01-05T09:00:00Z"}
USER_EXAMPLE: dict[str, Any] = {"id": USER_ID, "name": "alice", "is_admin": False, "disabled": False,
                                "created_at": "2026-01-05T09:00:00Z"}
ADMIN_JOB_EXAMPLE: dict[str, Any] = {**JOB_EXAMPLE, "owner_id": USER_ID, "owner_name": "alice", "worker_host": "gpu-1",
                                     "heartbeat_at": "2026-01-05T10:00:14Z", "run_id": None}
EVENT_EXAMPLE: dict[str, Any] = {"id": 12, "job_id": JOB_EXAMPLE["id"], "kind": "progress",
                                 "created_at": "2026-01-05T10:00:14Z",
                                 "payload": {"step": 30, "total": 60, "loss": 6.41, "eta_seconds": 12.5}}


def examples(*payloads: dict[str, Any]) -> ConfigDict:
    """A schema's example payloads, as its `model_config`."""
    return ConfigDict(json_schema_extra={"examples": list(payloads)})


def page_examples(item: dict[str, Any], path: str) -> ConfigDict:
    """A listing page's example: one item, and the URL of the next page."""
    return examples({"items": [item], "next": f"{EXAMPLE_BASE}{path}?offset=50&limit=50"})


class Page(BaseModel, Generic[Item]):
    """A page of a listing; each listing has its named subclass below (`JobPage`, ...)."""

    items: list[Item]
    next: str | None = Field(default=None, description=(
        "The absolute URL of the next page (the same request, moved on); null on the last page."))


class StylePublic(FromRow):
    model_config = examples(STYLE_EXAMPLE)

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

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"steps": 120, "seed": 3}]})

    steps: int | None = Field(default=None, ge=1, description="Default: the steps of the style's last job.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")


class RoundPick(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation_id: str = Field(description="A succeeded generation of this style (made with any of its versions).")
    index: int = Field(ge=0, description="Which of its images: 0 .. num_images - 1.")


class RoundCreate(BaseModel):
    """POST /v1/styles/{id}/rounds: train the style's next version from feedback (StyleDrop's round 2)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"mode": "human", "selection": [{"generation_id": GENERATION_EXAMPLE["id"], "index": 0}], "steps": 60},
        {"mode": "automatic", "prompts": 10, "per_prompt": 4}]})

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

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prompts": 10, "images_per_prompt": 2}]})

    version: int | None = Field(default=None, ge=1, description="Default: the style's default version.")
    prompts: int = Field(default=10, ge=1, le=30, description="How many of the 30 feedback prompts, in order.")
    images_per_prompt: int = Field(default=2, ge=1, description="At most STYLEDROP_MAX_IMAGES_PER_REQUEST (4 by "
                                   "default).")
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=limits.MIN_STEPS, le=limits.MAX_STEPS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")


class SamplesPublic(BaseModel):
    """A samples request's generations (POST /v1/styles/{id}/samples) and how far they got: poll GET
    /v1/styles/{id}/samples until `done` equals `total`."""

    model_config = examples({"version": 1, "total": 2, "done": 1, "progress": 0.75, "eta_seconds": 3.0,
                             "items": [GENERATION_EXAMPLE, {**GENERATION_EXAMPLE, "state": GenerationState.RUNNING}],
                             "next": None})

    version: int | None = Field(description="The version they were made with; null while the style has none.")
    total: int = Field(description="Generations in the set (one per feedback prompt).")
    done: int = Field(description="Generations of the set that are final (succeeded or failed).")
    progress: float = Field(description="Sampling rounds done over the whole set, 0..1.")
    eta_seconds: float | None = Field(description="Seconds until the last one should be done; null when there is "
                                      "nothing to estimate from, 0 once all are final.")
    items: list[GenerationPublic] = Field(description="In feedback-prompt order.")
    next: str | None = Field(default=None, description="Always null: a set fits one page.")


class StyleCreatedPublic(BaseModel):
    model_config = examples({"style": STYLE_EXAMPLE, "job": {**JOB_EXAMPLE, "state": JobState.QUEUED, "step": 0,
                                                            "queue_position": 1, "started_at": None}})

    style: StylePublic
    job: JobPublic


class JobEventPublic(FromRow):
    model_config = examples(EVENT_EXAMPLE)

    id: int
    job_id: str
    kind: str
    created_at: datetime
    payload: dict[str, Any]


class AdapterPublic(FromRow):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=(),
                              json_schema_extra={"examples": [ADAPTER_EXAMPLE]})

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

    model_config = examples({**ADAPTER_EXAMPLE, "is_default": True})

    is_default: bool = False


class StyleUpdate(BaseModel):
    """PATCH /v1/styles/{id}: choose the version generations naming only the style use."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"default_version": 2}]})

    default_version: int = Field(ge=1, description="An existing, not deleted version of this style.")


class GenerationCreate(GenerationSettings):
    """What to generate, with which adapter (`adapter_id`, or `style_id` and `version`), and the webhook."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "a cat in watercolor painting style", "style_id": STYLE_ID, "version": 1, "seed": 42},
        {"prompt": "a dog", "adapter_id": ADAPTER_ID, "num_images": 2, "webhook": "https://example.com/hooks",
         "webhook_events_filter": ["completed"]}]})

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
    model_config = examples({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})

    secret: str = Field(description="`whsec_` + base64 key; signs every webhook delivery of this user.")


# --- admin ---------------------------------------------------------------------------------------------------


class AdminJobPublic(JobPublic):
    model_config = examples(ADMIN_JOB_EXAMPLE)

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
    model_config = examples({
        "queue_depths": {"train": 1, "generate": 0}, "queue_error": None,
        "workers_online": [{"id": "w1", "host": "gpu-1", "pid": 4242, "kind": "train",
                            "started_at": "2026-01-05T08:00:00Z", "heartbeat_at": "2026-01-05T10:00:14Z",
                            "current_id": JOB_EXAMPLE["id"], "stats": {"adapter_cache_hits": 10}}],
        "running_jobs": [ADMIN_JOB_EXAMPLE], "failures_24h": [],
        "job_counts": {JobState.RUNNING: 1, JobState.SUCCEEDED: 12},
        "generation_counts": {GenerationState.SUCCEEDED: 40}})

    queue_depths: dict[str, int] | None
    queue_error: str | None = None
    workers_online: list[WorkerPublic]
    running_jobs: list[AdminJobPublic]
    failures_24h: list[FailurePublic]
    job_counts: dict[str, int]
    generation_counts: dict[str, int]


class UserCreate(BaseModel):
    model_config = examples({"name": "alice", "is_admin": False})

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
    model_config = examples(USER_EXAMPLE)

    id: str
    name: str
    is_admin: bool
    disabled: bool
    created_at: datetime


class ApiKeyCreatedPublic(BaseModel):
    model_config = examples(KEY_CREATED_EXAMPLE)

    id: str
    user_id: str
    key: str = Field(description="The plaintext key; shown only in this response.")
    created_at: datetime


class ApiKeyPublic(FromRow):
    """A key without its secret: `prefix` is the 8 characters after `sd_` (enough to recognise it)."""

    model_config = examples(KEY_EXAMPLE)

    id: str
    user_id: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class UserCreatedPublic(BaseModel):
    model_config = examples({"user": USER_EXAMPLE, "key": KEY_CREATED_EXAMPLE})

    user: UserPublic
    key: ApiKeyCreatedPublic


# --- pages of the listings (api/http/pagination.py) -----------------------------------------------------------


class JobPage(Page[JobPublic]):
    """Jobs, newest first."""

    model_config = page_examples(JOB_EXAMPLE, "/v1/jobs")


class JobEventPage(Page[JobEventPublic]):
    """A job's events, oldest first."""

    model_config = examples({"items": [EVENT_EXAMPLE],
                             "next": f"{EXAMPLE_BASE}/v1/jobs/{JOB_EXAMPLE['id']}/events?after=12&limit=200"})


class StylePage(Page[StylePublic]):
    """Styles and subjects, newest first."""

    model_config = page_examples(STYLE_EXAMPLE, "/v1/styles")


class VersionPage(Page[VersionPublic]):
    """A style's adapter versions, v1 first."""

    model_config = examples({"items": [{**ADAPTER_EXAMPLE, "is_default": True}], "next": None})


class GenerationPage(Page[GenerationPublic]):
    """Generations, newest first."""

    model_config = page_examples(GENERATION_EXAMPLE, "/v1/generations")


class AdapterPage(Page[AdapterPublic]):
    """Adapters, newest first."""

    model_config = page_examples(ADAPTER_EXAMPLE, "/v1/adapters")


class ApiKeyPage(Page[ApiKeyPublic]):
    """API keys (never their secrets), oldest first."""

    model_config = page_examples(KEY_EXAMPLE, "/v1/keys")


class AdminJobPage(Page[AdminJobPublic]):
    """Every user's jobs, newest first."""

    model_config = page_examples(ADMIN_JOB_EXAMPLE, "/v1/admin/jobs")


class UserPage(Page[UserPublic]):
    """Users, oldest first."""

    model_config = page_examples(USER_EXAMPLE, "/v1/admin/users")
