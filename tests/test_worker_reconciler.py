"""A broker that lost its messages (Redis restarted without persistence, a flushed queue): the reconciler sees
fewer messages in the queue than sent rows waiting on it and re-sends them at once, not after visibility_timeout.
(The end-to-end version with real processes and a real redis-server stop/start is in docs/reliability.md.)"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from storage.models import TrainingJob, utcnow
from storage.states import WorkKind
from tests.helpers.db import get_row, make_job
from worker.ops.reconciler import reconcile_once
from worker.runtime import Runtime


def test_lost_messages_are_resent_when_the_queue_is_short(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    old = utcnow() - timedelta(minutes=10)  # sent long after the grace, long before visibility_timeout (6 h)
    waiting = [make_job(rt, queued_at=old, sent_at=old) for _ in range(2)]
    sent: list[str] = []

    def send(kind: WorkKind, row_id: str) -> str:  # stands in for the broker; only training jobs wait here
        assert kind == WorkKind.TRAIN, (kind, row_id)
        sent.append(row_id)
        return "tid"

    # the broker still holds both messages: nothing to do
    reconcile_once(rt.session_factory, rt.settings, send, depths=lambda: {"train": 2, "generate": 0})
    assert sent == []
    # no depths known: only the time-based re-send (after visibility_timeout), as before
    reconcile_once(rt.session_factory, rt.settings, send)
    assert sent == []
    # the queue came back empty: both are sent again, and their send time recorded
    report = reconcile_once(rt.session_factory, rt.settings, send,
                            depths=lambda: {"train": 0, "generate": 0})
    assert sorted(sent) == sorted(waiting) and sorted(report.sent_jobs) == sorted(waiting)
    assert all(get_row(rt, TrainingJob, j).sent_at > old for j in waiting)
    # an unreachable broker is not a reason to re-send
    sent.clear()
    with rt.session_factory() as session:
        session.execute(update(TrainingJob).values(sent_at=old))
        session.commit()

    def down() -> dict[str, int]:
        raise ConnectionError("broker down")

    reconcile_once(rt.session_factory, rt.settings, send, depths=down)
    assert sent == []
