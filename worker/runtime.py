"""What one worker process keeps resident: settings, a session factory, the blob store, and (lazily) the model.

Nothing here touches CUDA at import time. The model is loaded on first use inside the worker process (with
`--pool solo` that is the process running the tasks; never a prefork parent). Tests build a `Runtime` directly
with their own settings and session factory.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import BlobStore, blob_store_from_settings
from storage.db import make_engine, make_sessionmaker
from storage.models import Generation, TrainingJob, Worker, utcnow
from storage.settings import Settings, get_settings
from storage.states import GENERATION_ACTIVE, JOB_ACTIVE
from worker.devices import bind

if TYPE_CHECKING:
    from trainer import AmusedParts, ClipParts
    from worker.adapter_cache import AdapterCache

logger = logging.getLogger(__name__)

def worker_host() -> str:
    """`<hostname>:<pid>`: recorded on the jobs and generations this process runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Runtime:
    """One per worker process: DB sessions, the blob store, the resident base model and the adapter cache."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session] | None = None,
        store: BlobStore | None = None,
        *,
        kind: str = "generate",
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.session_factory = session_factory or make_sessionmaker(make_engine(settings.resolved_database_url))
        self.store = store or blob_store_from_settings(settings)
        self.worker_host = worker_host()  # "<hostname>:<pid>", written to the rows this process runs
        self.current_id: str | None = None  # job or generation id being run (reported by the heartbeat)
        self.current_ids: list[str] = []  # every training job of the run in progress (their heartbeats)
        self.started_at = time.time()
        self._parts: AmusedParts | None = None
        self._clip: ClipParts | None = None
        self._clip_error: str | None = None  # why CLIP could not be loaded: asked once per process, not per image
        self._cache: AdapterCache | None = None
        self._lock = threading.Lock()

    @property
    def worker_id(self) -> str:
        return f"{self.worker_host}:{self.kind}"

    def parts(self) -> AmusedParts:
        """The base model, loaded once per process on first use."""
        with self._lock:
            if self._parts is None:
                import trainer

                s = self.settings
                try:
                    device = trainer.resolve_device(s.device)
                    bind(device)  # a worker bound to one GPU (--device cuda:N) makes it the current device
                    dtype = trainer.resolve_dtype(s.dtype, device)
                except ValueError as exc:  # a configuration an operator has to fix, like a missing model
                    raise trainer.ModelLoadError(f"STYLEDROP_DEVICE / STYLEDROP_DTYPE: {exc}") from exc
                if device.startswith("cuda"):
                    import torch

                    # TF32 for the fp32 maths that remain (VQ-GAN, LoRA and optimizer): ~8x matmul throughput.
                    torch.backends.cuda.matmul.allow_tf32 = True
                    torch.backends.cudnn.allow_tf32 = True
                t0 = time.perf_counter()
                self._parts = trainer.load_base(
                    s.model,
                    revision=s.model_revision,
                    variant=s.model_variant,
                    device=device,
                    dtype=dtype,
                    tiny_dir=s.data_dir / "models" / "tiny",
                )
                logger.info("model %s loaded on %s in %.1f s", s.model, device, time.perf_counter() - t0)
            return self._parts

    def clip(self) -> ClipParts | None:
        """CLIP for the scores (settings.resolved_clip_model), loaded once on the model's device; None, with the
        reason logged once, when its weights cannot be had: scores are a report on the work, never a reason to
        fail it."""
        parts = self.parts()
        with self._lock:
            if self._clip is None and self._clip_error is None:
                import trainer

                s = self.settings
                try:
                    self._clip = trainer.load_clip(
                        s.resolved_clip_model, revision=s.clip_revision, device=parts.device,
                        dtype=parts.dtype, tiny_dir=s.data_dir / "models" / "tiny-clip")
                except trainer.ModelLoadError as exc:
                    self._clip_error = str(exc)
                    logger.error("scores disabled: %s (set STYLEDROP_CLIP_MODEL)", exc)
            return self._clip

    def cache(self) -> AdapterCache:
        """The adapter cache over a LoRA bank installed on the resident model once (1 slot in a train worker).

        `adapter_gpu_slots = 0` sizes the bank by memory (`trainer.default_capacity`). With `compile` on a CUDA
        generate worker the sampler's U-ViT forward is replayed from CUDA graphs (`trainer.capture.graph_sampling`: a
        plain capture, no compiler) after the bank is installed.
        """
        parts = self.parts()
        with self._lock:
            if self._cache is None:
                import trainer
                from worker.adapter_cache import AdapterCache, adapter_fetcher

                s = self.settings
                n = 1  # a train worker's bank serves the previews of the job it just trained
                if self.kind == "generate":
                    n = s.adapter_gpu_slots or trainer.default_capacity(parts.transformer)
                bank = trainer.LoraBank(parts.transformer, n, rank=16)
                logger.info("LoRA bank: %d adapter slots of %.1f MB on %s", n,
                            trainer.slot_bytes(parts.transformer, 16, bank.scale.dtype) / 2**20, bank.device)
                if s.compile and self.kind == "generate":
                    if bank.device.type != "cuda":
                        logger.warning("STYLEDROP_COMPILE is for CUDA devices; ignored on %s", bank.device)
                    else:
                        from trainer.capture import graph_sampling  # the sampler's forward, replayed

                        graph_sampling(parts.transformer)
                self._cache = AdapterCache(
                    bank,
                    cpu_capacity=s.adapter_cpu_cache,
                    fetch=adapter_fetcher(self.session_factory, self.store),
                    prefetch_limit=s.adapter_prefetch,
                )
            return self._cache

    def cache_stats(self) -> dict[str, Any]:
        if self._cache is None:
            return {}
        # the device tells the admin page whether "resident on the GPU" means anything on this host
        return {**self._cache.stats(), "device": str(self._parts.device) if self._parts is not None else "unknown"}


# Set when the worker process begins a warm shutdown (SIGTERM/SIGINT): a running training job then stops at the
# next step, writes a last checkpoint and goes back to the queue without spending an attempt.
SHUTDOWN = threading.Event()

_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()


def get_runtime(kind: str) -> Runtime:
    """The process-wide runtime for a worker kind ('train' or 'generate'), created on first use."""
    with _runtimes_lock:
        rt = _runtimes.get(kind)
        if rt is None:
            rt = _runtimes[kind] = Runtime(get_settings(), kind=kind)
        return rt


# --- the worker heartbeat ----------------------------------------------------------------------------------------


def beat_once(rt: Runtime) -> None:
    """Upsert this process's `workers` row; bump the heartbeat of the training job or generations it runs (else
    the reconciler would take a batch that runs longer than heartbeat_stale_seconds away from a live worker)."""
    now = utcnow()
    with rt.session_factory() as s:
        row = s.get(Worker, rt.worker_id)
        if row is None:
            host, pid = rt.worker_host.rsplit(":", 1)
            row = Worker(id=rt.worker_id, host=host, pid=int(pid), kind=rt.kind, started_at=now)
            s.add(row)
        row.heartbeat_at = now
        row.current_id = rt.current_id
        row.stats = rt.cache_stats()
        current = rt.current_id
        if current is not None and rt.kind == "train":
            s.execute(
                update(TrainingJob)
                .where(TrainingJob.id.in_(list(rt.current_ids) or [current]),  # a copy: a joining job appends
                       TrainingJob.worker_host == rt.worker_host,
                       TrainingJob.state.in_(JOB_ACTIVE))
                .values(heartbeat_at=now)
            )
        if current is not None and rt.kind == "generate":
            s.execute(
                update(Generation)
                .where(Generation.worker_host == rt.worker_host, Generation.state.in_(GENERATION_ACTIVE))
                .values(heartbeat_at=now)
            )
        s.commit()


def start_heartbeat(rt: Runtime, every: float | None = None) -> tuple[threading.Event, threading.Thread]:
    """Beat now, then every `every` seconds (default: heartbeat_every_seconds, at most a third of
    heartbeat_stale_seconds) from a daemon thread until the returned event is set.

    A thread, not the training callbacks: a step that blocks longer than the stale window (a long GPU kernel, a
    slow first compile) waits in torch with the GIL released, so the beats go on and the worker keeps its rows;
    a process that is gone beats no more, and the reconciler takes its rows back within the window."""
    if every is None:
        s = rt.settings
        every = max(0.05, min(s.heartbeat_every_seconds, s.heartbeat_stale_seconds / 3))
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                beat_once(rt)
            except Exception:  # the DB may be down for a moment; keep beating
                logger.warning("worker heartbeat failed", exc_info=True)
            if stop.wait(every):
                return

    thread = threading.Thread(target=loop, name=f"heartbeat-{rt.kind}", daemon=True)
    thread.start()
    return stop, thread
