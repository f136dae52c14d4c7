"""The Celery app of the workers: `celery -A worker.celery_app worker --pool solo -Q train` (or `-Q generate`).

Configuration comes from `storage.broker.celery_config(get_settings())`, applied lazily when Celery first reads
its config, so importing this module creates no folders and opens no connections. A worker process also runs a
heartbeat thread that upserts its `workers` row every few seconds (kind, current job, adapter cache stats).
No CUDA here: the model is loaded lazily by the first task, inside the worker process (`--pool solo`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from storage.broker import ROUTES, celery_config
from storage.settings import get_settings
from storage.states import WorkKind
from worker.runtime import SHUTDOWN, get_runtime, start_heartbeat

logger = logging.getLogger(__name__)

app = Celery("styledrop", include=["worker.tasks"])


_configuring = False


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    # Re-entrance guard. When `app.amqp` exists before the configuration is loaded (the standalone reconciler's
    # first `send_task`), `conf.update` calls amqp's observer, which reads `conf.task_routes`, which loads the
    # configuration again and fires this signal again: endless recursion (RecursionError tracebacks logged on
    # every reconciler start). The update has already landed in the pending settings when the observer runs,
    # so the nested call has nothing to add.
    global _configuring
    if _configuring:
        return
    _configuring = True
    try:
        sender.conf.update(celery_config(get_settings()))
    finally:
        _configuring = False


_heartbeats: list[tuple[threading.Event, threading.Thread]] = []


def _consumed_queues(consumer: Any) -> list[str]:
    try:
        return [q.name for q in consumer.task_consumer.queues]
    except AttributeError:
        return list(app.amqp.queues.consume_from or [])


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    queues = _consumed_queues(sender)
    kinds = [kind for kind, route in ROUTES.items() if route.queue in queues] or [WorkKind.GENERATE]
    for kind in kinds:
        _heartbeats.append(start_heartbeat(get_runtime(kind)))
    logger.info("worker ready: queues %s", ", ".join(queues))


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    # Runs in the signal handler, between two training steps of the solo pool's task: only set a flag.
    SHUTDOWN.set()


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    for stop, thread in _heartbeats:
        stop.set()
        thread.join(timeout=2)
    _heartbeats.clear()
