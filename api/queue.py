"""Sending tasks by name. The API never imports the worker: it only knows the task names and queues.

The caller commits the row first, then calls `send_*`, then records the send with `storage.jobs.mark_*_sent`.
A send that fails (broker down) leaves the row queued; the worker's reconciler re-sends it later.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from storage.broker import GENERATE_QUEUE, GENERATE_TASK, TRAIN_QUEUE, TRAIN_TASK, celery_config
from storage.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

_apps: dict[tuple[str, str], Celery] = {}
_lock = threading.Lock()


def get_celery(settings: Settings | None = None) -> Celery:
    """The producer-only Celery app for `settings`' broker, built on first use."""
    settings = settings or get_settings()
    cache_key = (settings.broker_url or "filesystem://", str(settings.broker_dir))
    with _lock:
        app = _apps.get(cache_key)
        if app is None:
            from celery import Celery

            app = Celery("styledrop-api")
            app.conf.update(celery_config(settings))
            # The API answers 202 even when the broker is down: fail fast and let the reconciler re-send.
            app.conf.update(
                broker_connection_timeout=2,
                task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                           "interval_max": 0.5},
            )
            _apps[cache_key] = app
        return app


def send_train(job_id: str, *, settings: Settings | None = None) -> str:
    """Send `styledrop.train(job_id)` to the train queue; returns the Celery task id. Raises when it fails."""
    result = get_celery(settings).send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE)
    logger.info("sent %s(%s) as %s", TRAIN_TASK, job_id, result.id)
    return str(result.id)


def send_generate(generation_id: str, *, settings: Settings | None = None) -> str:
    result = get_celery(settings).send_task(GENERATE_TASK, args=[generation_id], queue=GENERATE_QUEUE)
    logger.info("sent %s(%s) as %s", GENERATE_TASK, generation_id, result.id)
    return str(result.id)


def reset() -> None:
    """Forget the cached producers (tests that switch brokers)."""
    with _lock:
        for app in _apps.values():
            app.close()
        _apps.clear()
