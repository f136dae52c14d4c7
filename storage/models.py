"""ORM tables. Ids are server-made UUID4 hex strings; timestamps are timezone-aware UTC.

Changing anything here needs a new Alembic migration (`alembic revision --autogenerate`), and
`tests/test_storage_migrations.py` fails until the two agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.db import Base
from storage.states import DeliveryState, EventKind, GenerationState, JobState, WebhookEvent, WorkKind

WEBHOOK_EVENTS: tuple[str, ...] = tuple(WebhookEvent)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE`; always stored as UTC and always read back aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use storage.models.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


ID = String(32)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    webhook_secret: Mapped[str | None] = mapped_column(String(64))  # "whsec_<base64>", made on first use


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(8), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A signed-in browser session. The cookie holds a random token; only its sha256 is the id here, so a database
    leak gives no usable cookie. Ends at `expires_at`, on sign-out (`revoked_at`), when the key it was opened with
    is revoked, or when the user is disabled."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Style(Base):
    __tablename__ = "styles"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    image_key: Mapped[str] = mapped_column(String(255))
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    descriptor: Mapped[str] = mapped_column(String(500))
    content: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "style" (StyleDrop) or "subject" (DreamBooth-style: photos of one subject of class `class_word`).
    kind: Mapped[str] = mapped_column(String(16), default="style", server_default="style")
    class_word: Mapped[str | None] = mapped_column(String(64))
    # Every reference image, the first being image_key: [{"key", "sha256", "bytes", "width", "height",
    # "caption"}] (caption None = the StyleDrop prompt). None for one uncaptioned style image (image_key only):
    # read them through `reference_images`.
    references: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The version a generation naming only the style uses. No foreign key: styles and adapters would reference
    # each other, and every insert/delete order between them would need a deferred constraint; the service checks
    # the id belongs to this style, and a deleted adapter falls back to the newest live version.
    default_adapter_id: Mapped[str | None] = mapped_column(ID)

    @property
    def reference_images(self) -> list[tuple[str, str | None]]:
        return reference_images(self.image_key, self.references)


def reference_images(image_key: str, references: list[dict[str, Any]] | None) -> list[tuple[str, str | None]]:
    """(blob key, caption) of every reference image of a style, in upload order: its `references`, or its one
    image when it has no list (a single uncaptioned upload stores none). Every reader goes through this."""
    return [(r["key"], r.get("caption")) for r in references or []] or [(image_key, None)]


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(_in("state", JobState), name="state"),
        # NULL keys never collide (PostgreSQL and SQLite), so this only binds rows that carry a key.
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_training_jobs_owner_state", "owner_id", "state"),
        Index("ix_training_jobs_state_queued_at", "state", "queued_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    style_id: Mapped[str] = mapped_column(ForeignKey("styles.id"), index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    last_loss: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    steps_per_second: Mapped[float | None] = mapped_column(Float)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last time a task message was sent
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    # Seconds on the worker's device (GPU or CPU); the column keeps the name the first migration gave it.
    device_seconds: Mapped[float] = mapped_column("gpu_seconds", Float, default=0.0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    celery_task_id: Mapped[str | None] = mapped_column(String(255))
    checkpoint_key: Mapped[str | None] = mapped_column(String(255))
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    webhook: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(32), index=True)  # jobs trained together share one
    # What the running job does now: {name (trainer/contracts/phases.py), done, total, eta_seconds}.
    phase: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # An automatic round's kept images: [{prompt, candidate, text_score, style_score, score, image_key}].
    picks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    # Read-only, and loaded only when a query asks for it (`joinedload`): the admin listings show the owner's name.
    owner: Mapped[User] = relationship(User, viewonly=True, lazy="raise_on_sql")


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (CheckConstraint(_in("kind", EventKind), name="kind"),)

    # Monotonic: the SSE cursor (Last-Event-ID).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Adapter(Base):
    __tablename__ = "adapters"
    # A unique index, not a constraint: SQLite can add an index in place but a constraint only by rebuilding the
    # table (migration 0008).
    __table_args__ = (Index("ix_adapters_style_id_version", "style_id", "version", unique=True),)

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    style_id: Mapped[str] = mapped_column(ForeignKey("styles.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id"), unique=True)
    blob_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(255))
    base_revision: Mapped[str | None] = mapped_column(String(255))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    targets: Mapped[list[str]] = mapped_column(JSON, default=list)
    descriptor: Mapped[str] = mapped_column(String(500))
    train_prompt: Mapped[str] = mapped_column(Text)
    steps: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    engine_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer)  # v1, v2, ... per style: each feedback round adds the next
    # The paper's two CLIP metrics, means over the adapter's previews; null when CLIP could not be loaded.
    text_score: Mapped[float | None] = mapped_column(Float)
    style_score: Mapped[float | None] = mapped_column(Float)


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (
        CheckConstraint(_in("state", GenerationState), name="state"),
        UniqueConstraint("owner_id", "idempotency_key"),  # NULL keys never collide
        Index("ix_generations_state_queued_at", "state", "queued_at"),
        Index("ix_generations_owner_queued_at", "owner_id", "queued_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    style_strength: Mapped[float] = mapped_column(Float, default=1.0)
    guidance_scale: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    num_images: Mapped[int] = mapped_column(Integer, default=1)
    init_image_key: Mapped[str | None] = mapped_column(String(255))
    mask_key: Mapped[str | None] = mapped_column(String(255))
    strength: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default=GenerationState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    image_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    celery_task_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer, default=0)  # sampling rounds done (progress while running)
    webhook: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    subject_adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), index=True)
    subject_weight: Mapped[float | None] = mapped_column(Float)  # γ; set when subject_adapter_id is
    text_guidance: Mapped[float | None] = mapped_column(Float)  # λB; None = guidance_scale − 1
    # One CLIP score per image (text: against the prompt; style: against its adapter's style's references).
    text_scores: Mapped[list[float] | None] = mapped_column(JSON)
    style_scores: Mapped[list[float] | None] = mapped_column(JSON)
    # The samples request (POST /v1/styles/{id}/samples) this generation was queued by; None for the others.
    sample_set: Mapped[str | None] = mapped_column(String(32), index=True)


class WebhookDelivery(Base):
    """One webhook event (the outbox): written in the transaction that changed the resource, sent by the
    delivery loop (worker/ops/webhooks.py) until a 2xx answer or `max_attempts`. The id is the `webhook-id` header,
    the same on every retry."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("state", DeliveryState), name="state"),
        CheckConstraint(_in("event", WebhookEvent), name="event"),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_resource_id_event", "resource_id", "event"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: f"msg_{new_id()}")
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    resource: Mapped[str] = mapped_column(String(16))  # "job" | "generation"
    resource_id: Mapped[str] = mapped_column(ID)
    event: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)  # the resource as GET returned it when the event happened
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


# A worker whose heartbeat is older than this is not listed as online (admin overview, /metrics).
WORKER_ONLINE_WINDOW = timedelta(seconds=60)


class Worker(Base):
    """One worker process; upserted by the worker every few seconds (id = "<hostname>:<pid>:<kind>")."""

    __tablename__ = "workers"
    __table_args__ = (CheckConstraint(_in("kind", WorkKind), name="kind"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    current_id: Mapped[str | None] = mapped_column(String(32))  # job or generation id being run
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
