"""The API's Celery producer. The API never imports the worker: `storage.dispatch` sends by task name.

`sender(settings)` is the `Send` the service functions hand to `storage.dispatch.dispatch`, which commits the
row first, then sends, then records the send; a failed send leaves the row queued for the reconciler.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from storage.broker import celery_config
from storage.dispatch import Send, celery_send
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


def sender(settings: Settings | None = None) -> Send:
    """Send tasks through the producer for `settings`' broker."""
    return celery_send(get_celery(settings))


def reset() -> None:
    """Forget the cached producers (tests that switch brokers)."""
    with _lock:
        for app in _apps.values():
            app.close()
        _apps.clear()
