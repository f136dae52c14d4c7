"""What the API answers, as frozen dataclasses parsed from its JSON.

Each keeps the whole JSON object in `raw`, so a field the service adds later is readable before this client
names it; unknown fields are otherwise ignored, and missing optional ones are None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

JOB_FINAL = frozenset({"succeeded", "failed", "cancelled"})  # README "Job events"; states of a job that never move
GENERATION_FINAL = frozenset({"succeeded", "failed"})


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _build(cls: type[T], data: Mapping[str, Any], **converted: Any) -> T:
    """`cls` from the JSON object `data`: its dataclass fields by name (absent ones keep their defaults; every
    `*_at` a datetime, `error` an ErrorInfo), values in `converted` instead of the raw ones, and the object itself
    as `raw`."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: _time(v) if k.endswith("_at") else v for k, v in data.items() if k in names and k != "raw"}
    if "error" in kwargs:
        kwargs["error"] = ErrorInfo.parse(kwargs["error"])
    kwargs.update(converted)
    kwargs["raw"] = dict(data)
    return cls(**kwargs)


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job or generation failed: `code` is one of the README's failure codes (`training_error`,
    `cancelled_on_request`, ...)."""

    code: str
    message: str

    @classmethod
    def parse(cls, data: Any) -> ErrorInfo | None:
        return cls(code=str(data.get("code", "")), message=str(data.get("message", ""))) if data else None


@dataclass(frozen=True)
class Style:
    id: str
    descriptor: str
    content: str | None = None
    kind: str = "style"
    class_word: str | None = None
    captions: list[str | None] = field(default_factory=list)
    width: int = 0
    height: int = 0
    image_bytes: int = 0
    image_sha256: str = ""
    image_url: str = ""
    latest_job_id: str | None = None
    default_version: int | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Style:
        return _build(cls, data, captions=list(data.get("captions") or []))


@dataclass(frozen=True)
class Job:
    """A training job: an upload's first training, a retraining or a feedback round."""

    id: str
    style_id: str
    state: str
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    last_loss: float | None = None
    eta_seconds: float | None = None
    steps_per_second: float | None = None
    queue_position: int = 0
    attempts: int = 0
    max_attempts: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    device_seconds: float = 0.0
    adapter_id: str | None = None
    error: ErrorInfo | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Final: succeeded, failed or cancelled."""
        return self.state in JOB_FINAL

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Job:
        return _build(cls, data)


@dataclass(frozen=True)
class StyleCreated:
    """The answer to an upload: the style and its training job; `replayed` when an earlier request with the same
    idempotency key had already created them (the API's 200 instead of 202)."""

    style: Style
    job: Job
    replayed: bool = False


@dataclass(frozen=True)
class JobEvent:
    """One event of a job (`kind`: state, progress, log, preview, webhook, ...); `payload` as the API sends it
    (a preview's `url`, a progress event's step and loss)."""

    id: int
    job_id: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> JobEvent:
        return _build(cls, data, payload=dict(data.get("payload") or {}))


@dataclass(frozen=True)
class Generation:
    id: str
    state: str
    prompt: str
    adapter_id: str | None = None
    style_id: str | None = None
    version: int | None = None
    subject_adapter_id: str | None = None
    subject_weight: float | None = None
    negative_prompt: str | None = None
    style_strength: float | None = None
    guidance_scale: float | None = None
    text_guidance: float | None = None
    steps: int = 0
    seed: int = 0
    num_images: int = 0
    strength: float | None = None
    mode: str = "text"
    step: int = 0
    progress: float = 0.0
    queue_position: int = 0
    eta_seconds: float | None = None
    attempts: int = 0
    image_urls: list[str] = field(default_factory=list)
    text_scores: list[float] | None = None
    style_scores: list[float] | None = None
    error: ErrorInfo | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Final: succeeded or failed (a cancelled generation ends failed with `cancelled_on_request`)."""
        return self.state in GENERATION_FINAL

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Generation:
        return _build(cls, data, image_urls=list(data.get("image_urls") or []))


@dataclass(frozen=True)
class Adapter:
    """A trained adapter: one version of a style (`version` 1 is the upload's training, each round the next)."""

    id: str
    style_id: str
    job_id: str
    version: int = 1
    descriptor: str = ""
    train_prompt: str = ""
    sha256: str = ""
    bytes: int = 0
    base_model: str = ""
    base_revision: str | None = None
    rank: int = 0
    alpha: float = 0.0
    targets: list[str] = field(default_factory=list)
    steps: int = 0
    seed: int = 0
    engine_version: str = ""
    text_score: float | None = None
    style_score: float | None = None
    file_url: str = ""
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Adapter:
        return _build(cls, data, targets=list(data.get("targets") or []))


@dataclass(frozen=True)
class Version(Adapter):
    """One adapter version of a style, with whether generations naming only the style use it."""

    is_default: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Version:
        return _build(cls, data, targets=list(data.get("targets") or []))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing (`{"items": [...], "next": URL | null}`). Iterating over a page walks every later
    page too, following `next`; `items` is this page alone."""

    items: list[T]
    next: str | None = None
    fetch_next: Callable[[str], Page[T]] | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[T]:
        page: Page[T] | None = self
        while page is not None:
            yield from page.items
            page = page.next_page()

    def __len__(self) -> int:
        return len(self.items)

    def next_page(self) -> Page[T] | None:
        return self.fetch_next(self.next) if self.next and self.fetch_next is not None else None
