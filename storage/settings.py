"""The one typed settings object shared by api/, worker/ and storage/.

Every field reads the environment variable `STYLEDROP_<FIELD>` (case-insensitive), except the three that
deployments conventionally name without a prefix: `DATABASE_URL`, `BROKER_URL` and the `S3_*` settings. With no
environment at all the service runs embedded: SQLite file, local blob directory and a file-system broker, all
under `data_dir`. `trainer/` never reads this: the worker turns it into the engine's dataclass configs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.contracts.limits import DEFAULT_STEPS, DEFAULT_TRAIN_STEPS, MIN_IMAGE_SIDE

# Default training steps on the random-weight demo model: about a minute on a small CPU (the recipe's 1500 steps take
# about 11 minutes there), so a first try shows the whole flow; real weights keep the recipe.
DEMO_TRAIN_STEPS = 100


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STYLEDROP_", extra="ignore", populate_by_name=True)

    # --- where things live -----------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path(".styledrop"), description="Root of every embedded default below.")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "STYLEDROP_DATABASE_URL"),
        description="SQLAlchemy URL; default sqlite:///<data_dir>/styledrop.db.",
    )
    broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BROKER_URL", "STYLEDROP_BROKER_URL"),
        description="Celery broker (redis://...); default an embedded file-system broker under data_dir.",
    )
    blob_backend: Literal["local", "s3"] = "local"
    blob_dir: Path | None = Field(default=None, description="Local blob directory; default <data_dir>/blobs.")
    s3_bucket: str | None = Field(default=None, validation_alias=AliasChoices("S3_BUCKET", "STYLEDROP_S3_BUCKET"))
    s3_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("S3_ENDPOINT_URL", "STYLEDROP_S3_ENDPOINT_URL")
    )
    s3_region: str = Field(default="us-east-1", validation_alias=AliasChoices("S3_REGION", "STYLEDROP_S3_REGION"))
    s3_access_key_id: str | None = Field(
        default=None, validation_alias=AliasChoices("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: str | None = Field(
        default=None, validation_alias=AliasChoices("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    s3_prefix: str = Field(default="", validation_alias=AliasChoices("S3_PREFIX", "STYLEDROP_S3_PREFIX"))

    # --- the model ---------------------------------------------------------------------------------------------
    model: str = Field(default="amused-256", description="amused-256, amused-512, tiny, a hub id or a local dir.")
    model_revision: str | None = None
    model_variant: str | None = Field(default=None, description="'fp16' to load the half-size hub files.")
    device: str = Field(default="auto", description="auto (cuda if available), cpu, cuda, cuda:1 ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="U-ViT/text encoder weights; auto = bfloat16 on CUDA, float32 on CPU.")
    clip_model: str | None = Field(default=None, description=(
        "CLIP for the scores (tiny, clip-vit-large-patch14, a hub id or a local dir); None = tiny with the tiny "
        "demo model, else openai/clip-vit-large-patch14. Unavailable weights leave scores empty, never fail work."))
    clip_revision: str | None = None

    # --- training ----------------------------------------------------------------------------------------------
    train_steps: int | None = Field(default=None, description=(
        f"Default steps; None = the recipe's {DEFAULT_TRAIN_STEPS}, or {DEMO_TRAIN_STEPS} on the demo model."))
    max_train_steps: int = 4000
    checkpoint_every: int = 100
    progress_every: int = 5
    preview_prompts: list[str] = Field(default_factory=lambda: ["a cat", "a house by the sea"])
    preview_steps: int = Field(default=DEFAULT_STEPS,
                               description="MaskGIT steps for the preview images of a new adapter.")
    max_attempts: int = Field(
        default=3,
        description="Runs of a training job or a generation whose worker died before it ends failed.",
    )
    max_concurrent_jobs_per_user: int = 2
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="Training autocast; auto = bf16 on CUDA, none on CPU (CPU has no autocast).")
    train_batch: int = Field(default=1, ge=1, description="Training jobs one train worker runs together, one "
                             "batch row each (e.g. 8 on a GPU); above 1, queued jobs join a running batch "
                             "when a slot frees.")
    cancel_poll_seconds: float = Field(default=1.0, ge=0, description="How often a training run asks the "
                                       "database whether its jobs were cancelled (never per step).")
    train_cuda_graph: bool = Field(default=False, description="CUDA only: replay each training step as one CUDA "
                                   "graph (captured once per batch size); refused on a CPU.")

    # --- generation --------------------------------------------------------------------------------------------
    generate_batch_size: int = 8
    max_images_per_request: int = 4
    max_unfinished_images_per_user: int = Field(default=128, ge=0, description=(
        "Images of one user's queued and running generations (samples included) at once; 0 = no limit."))
    max_wait_seconds: float = 60.0
    max_waiters_per_user: int = Field(default=10, ge=0, description="`?wait=` requests of one user waiting at "
                                      "once per API process; more are answered at once (202), without waiting.")
    adapter_gpu_slots: int = Field(default=0, ge=0, description=(
        "LoRA-bank slots (adapters resident on the device) per generate worker; 0 = sized by memory: 10% of the "
        "GPU's free memory (a thousand amused-256 adapters on an H200), 16 on a CPU"))
    adapter_cpu_cache: int = 64
    adapter_prefetch: int = Field(default=16, ge=0, description=(
        "adapters of queued generations read into the host cache while a batch samples"))
    compile: bool = Field(default=False, description=(
        "CUDA only: replay the sampler's U-ViT forward from CUDA graphs (a plain capture per pass layout)"))

    # --- uploads -----------------------------------------------------------------------------------------------
    max_upload_bytes: int = 20 * 1024 * 1024
    max_style_images: int = Field(default=5, ge=1, description=(
        "Reference images one style (or subject photos one subject) may be trained on."))
    max_image_pixels: int = Field(default=40_000_000, description="Largest image header accepted at all.")
    max_decode_pixels: int = Field(
        default=16_777_216,
        description="Pixels actually decoded per image (the model trains at 256/512 px): larger JPEGs are decoded "
        "reduced, larger PNG/WebP/GIF refused before decoding.",
    )
    max_concurrent_decodes: int = Field(default=2, description="Image decodes at once per API process.")
    max_concurrent_uploads_per_user: int = Field(default=1, ge=1, description="Style uploads of one user read at "
                                                 "once per API process (429 too_many_uploads beyond).")
    max_concurrent_uploads_total: int = Field(default=2, ge=1, description="Style uploads read at once per API "
                                              "process, all users together (429 too_many_uploads beyond).")
    min_image_side: int = MIN_IMAGE_SIDE
    max_json_bytes: int = Field(default=64 * 1024, description="Largest JSON request body (413 beyond).")
    max_storage_bytes_per_user: int = Field(default=2 * 1024**3, description="Styles' images, adapters' files "
                                            "and generated images one user may keep, counting what their waiting "
                                            "work will write (storage/quotas.py); 0 = no limit.")
    adapter_charge_bytes: int = Field(default=12 * 1024**2, ge=0, description="What the storage cap charges an "
                                      "adapter before the first one exists (then: the newest adapter's size).")
    image_charge_bytes: int = Field(default=3 * 512 * 512, ge=0, description="What the storage cap charges one "
                                    "generated image (an RGB PNG's upper bound at 512 px).")
    blob_grace_seconds: float = Field(default=3600.0, description="Unreferenced blobs younger than this are kept.")
    reclaim_every: float = Field(default=600.0, description="Seconds between reclaimer passes (in the reconciler).")

    # --- delivery ----------------------------------------------------------------------------------------------
    visibility_timeout: int = Field(default=6 * 3600, description="Seconds; above the longest job (Celery #5935).")
    heartbeat_stale_seconds: float = Field(default=10.0, gt=0, description=(
        "A running job or generation whose worker has not beaten for this long is taken back to the queue (by "
        "the reconciler's sweep, or by the next worker its message reaches). Several beats fit in it, so a slow "
        "database write or a busy host does not look like a death; hosts' clocks must agree to well within it."))
    heartbeat_every_seconds: float = Field(default=2.0, gt=0, description=(
        "How often a worker's heartbeat thread (independent of training steps) bumps its rows; at most a third "
        "of heartbeat_stale_seconds is used. The reconciler sweeps for stale rows this often too."))
    reconcile_every: float = 30.0
    restart_max_crashes: int = Field(default=5, description="`styledrop up` gives up on a child that exits this "
                                     "many times within restart_window_seconds.")
    restart_window_seconds: float = 120.0

    # --- webhooks ----------------------------------------------------------------------------------------------
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhooks to loopback/private/link-local addresses (local development)."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=10.0,
        description="One delivery attempt's wall-clock deadline: connect, send and the (bounded) answer.",
    )
    webhook_max_attempts: int = Field(default=8, description="Attempts per event before it is given up (failed).")
    webhook_retry_base_seconds: float = Field(
        default=5.0, description="First retry delay; each next one is 4x longer (5 s, 20 s, 80 s, ... up to 6 h)."
    )
    webhook_poll_seconds: float = Field(default=1.0, description="How often the delivery loop looks for due events.")

    # --- HTTP --------------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(default=None, description=(
        "The service's address as its users reach it, e.g. https://styledrop.example.com (behind a proxy). URLs in "
        "answers (image_urls, Location, next) and in webhook bodies start with it; unset, answers use the address "
        "the request came to, and webhook bodies http://<host>:<port>."))
    secret_key: str | None = Field(default=None, description="Signs session cookies; default a file in data_dir.")
    rate_limit_per_minute: int = Field(
        default=120, description="Per user; shared by every API process through Redis when BROKER_URL is Redis."
    )
    session_max_age_seconds: int = Field(default=14 * 24 * 3600, description="Browser sessions end after this.")
    cookie_secure: bool = Field(
        default=False,
        description="Always mark the session cookie Secure (set it behind a TLS-terminating proxy whose "
        "X-Forwarded-Proto uvicorn does not trust); without it the cookie is Secure when the request is https.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without authentication (only when the API port is not reachable from "
        "outside); by default /metrics needs an admin API key (Prometheus: `authorization: credentials`).",
    )
    max_streams_per_user: int = Field(default=10, description="Open event streams per user (429 beyond).")
    max_active_keys_per_user: int = Field(default=20, ge=1, description="API keys a user may hold unrevoked "
                                          "(POST /v1/keys answers 409 too_many_keys beyond; admins are not capped).")
    max_streams_total: int = Field(default=1000, description="Open event streams per API process (429 beyond).")
    stream_recheck_seconds: float = Field(default=5.0, gt=0, description="How often an open event stream checks "
                                          "that its key or session is still valid (it ends when not).")
    db_pool_size: int = 5
    db_max_overflow: int = 10
    db_pool_timeout: float = Field(default=10.0, description="Seconds to wait for a pooled connection (then 503).")

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"STYLEDROP_PUBLIC_URL must be an http(s) URL without query, e.g. "
                             f"https://styledrop.example.com; got {value!r}")
        return value.strip().rstrip("/")

    # --- derived -----------------------------------------------------------------------------------------------
    @property
    def public_base_url(self) -> str:
        """Where URLs sent without a request (webhook bodies) point: `public_url`, else the address the API serves
        on (`styledrop up`: http://<host>:<port>; a wildcard bind address as 127.0.0.1)."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'styledrop.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def max_body_bytes(self) -> int:
        """The largest request body (413 beyond it, while it streams): every file a request may carry at
        max_upload_bytes (a style's images, or an init image + mask), plus 1 MiB of form fields and part headers."""
        return max(2, self.max_style_images) * self.max_upload_bytes + 1024 * 1024

    @property
    def default_train_steps(self) -> int:
        """The steps of a job that names none: `train_steps`, else the recipe's on real weights and a short run on
        the random demo model (its images are noise however long it trains), within `max_train_steps`."""
        default = DEMO_TRAIN_STEPS if self.is_demo_model else DEFAULT_TRAIN_STEPS
        return min(self.train_steps or default, self.max_train_steps)

    @property
    def is_demo_model(self) -> bool:
        """The random-weight `tiny` preset (by name, or a directory the engine built it in: it carries the
        `.complete` marker that only the tiny preset's builder writes). Its images are noise; the pages say so."""
        return self.model in ("tiny", "tiny-512") or (Path(self.model) / ".complete").is_file()

    @property
    def resolved_clip_model(self) -> str:
        if self.clip_model:
            return self.clip_model
        return "tiny" if self.is_demo_model else "openai/clip-vit-large-patch14"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings. Tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings()
