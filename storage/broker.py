"""The Celery settings the API (producer) and the workers (consumers) share, and queue depths for admin views.

Importing this module does not import Celery. `celery_config(settings)` is passed to `Celery.conf.update`. With no
`broker_url` the broker is kombu's file-system transport under `settings.broker_dir`: producer and consumer read
and write the same folder, so any process on this host (or sharing the volume) meets the others there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.settings import Settings
from storage.states import WorkKind

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Route:
    """Where one kind of work goes: the Celery task name and the queue its workers consume."""

    task: str
    queue: str


# The one declaration of task names and queues: `celery_config` turns it into `task_routes`, the worker's task
# decorators take their names from it, and `storage.dispatch` sends by it.
ROUTES: dict[WorkKind, Route] = {
    WorkKind.TRAIN: Route(task="styledrop.train", queue="train"),
    WorkKind.GENERATE: Route(task="styledrop.generate", queue="generate"),
}
QUEUES: tuple[str, ...] = tuple(route.queue for route in ROUTES.values())


def _fs_folders(settings: Settings) -> tuple[Path, Path, Path]:
    root = settings.broker_dir
    out, processed, control = root / "out", root / "processed", root / "control"
    for folder in (out, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    return out, processed, control


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for `Celery.conf.update(...)`; identical for the API and every worker."""
    config: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": ROUTES[WorkKind.GENERATE].queue,
        "task_routes": {route.task: {"queue": route.queue} for route in ROUTES.values()},
    }
    if settings.broker_url is None:
        out, processed, control = _fs_folders(settings)
        config["broker_url"] = "filesystem://"
        config["broker_transport_options"] = {
            "data_folder_in": str(out),
            "data_folder_out": str(out),
            "processed_folder": str(processed),
            "store_processed": False,
            # kombu keeps its exchange bindings here; the default is "control" in the working directory
            "control_folder": str(control),
        }
    else:
        config["broker_url"] = settings.broker_url
        config["broker_transport_options"] = {"visibility_timeout": settings.visibility_timeout}
    return config


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each queue: Redis `LLEN <queue>`; file-system transport: the message files named
    `<ts>_<uuid>.<queue>.msg` in the shared folder (kombu puts the queue name in the file name). Messages a
    worker has reserved but not yet acknowledged are not counted. Raises on an unreachable broker."""
    if settings.broker_url is None:
        out, _, _ = _fs_folders(settings)
        names = [p.name for p in out.iterdir()]
        return {q: sum(1 for n in names if n.partition(".")[2] == f"{q}.msg") for q in QUEUES}
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return {q: int(client.llen(q)) for q in QUEUES}  # type: ignore[arg-type]
        finally:
            client.close()
    raise NotImplementedError(f"queue depth for broker {settings.broker_url.split(':', 1)[0]!r}")


def ping(settings: Settings) -> None:
    """Raise if the broker cannot be reached (readiness probe)."""
    if settings.broker_url is None:
        out, _, _ = _fs_folders(settings)
        if not out.is_dir():
            raise OSError(f"broker folder {out} is missing")
        return
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(settings.broker_url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
