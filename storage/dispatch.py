"""Handing committed work to the broker: the one path the API and the reconciler share.

The database is the record and the broker only the delivery. A row is committed `queued` FIRST; `dispatch` then
sends its task, records the send (`sent_at`, `celery_task_id`) and commits. A send that fails (broker down) is
logged and leaves the row queued: the reconciler sends it again later, through this same function.

Nothing here imports Celery: callers pass a `Send` (`celery_send(app)` in production, a recording function in
tests), so api/ needs no worker code and no Celery app of its own shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from storage import jobs
from storage.broker import ROUTES
from storage.models import Generation, TrainingJob
from storage.states import WorkKind

logger = logging.getLogger(__name__)

Send = Callable[[WorkKind, str], str | None]  # (kind, row id) -> Celery task id; raises when the broker is down

MODELS: dict[WorkKind, type[TrainingJob] | type[Generation]] = {
    WorkKind.TRAIN: TrainingJob,
    WorkKind.GENERATE: Generation,
}


def celery_send(app: Any) -> Send:
    """A `Send` through a Celery app: by task name; the queue comes from the app's `task_routes` (`ROUTES`)."""

    def send(kind: WorkKind, row_id: str) -> str:
        task = ROUTES[kind].task
        result = app.send_task(task, args=[row_id])
        logger.info("sent %s(%s) as %s", task, row_id, result.id)
        return str(result.id)

    return send


def dispatch(session: Session, kind: WorkKind, row_id: str, send: Send) -> bool:
    """Send the task of the committed row `row_id`, record the send and commit.

    Returns False (and logs) when the broker refused the message; the row stays queued for the reconciler.
    """
    try:
        task_id = send(kind, row_id)
    except Exception as exc:  # broker down or slow: never the caller's failure, the reconciler re-sends
        logger.warning("could not send %s %s (the reconciler will re-send it): %s", kind, row_id, exc)
        return False
    jobs.mark_sent(session, MODELS[kind], row_id, task_id)
    session.commit()
    return True
