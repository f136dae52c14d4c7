"""The real train and generate task bodies (tiny model, SQLite) queue webhook events as they go, and the delivery
loop's pass sends them to a receiver on 127.0.0.1; generation progress and preview indices are recorded."""

from __future__ import annotations

import itertools
import json

from sqlalchemy import select

import worker.tasks as tasks
from storage.models import Generation, JobEvent, WebhookDelivery
from storage.users import create_user
from storage.webhooks import PROGRESS_MIN_SECONDS
from testkit.webhooks import Receiver, verify
from tests.helpers.db import make_generation as _generation
from tests.helpers.db import make_job as _job
from worker.ops import webhooks as delivery
from worker.runtime import Runtime


def _deliveries(rt: Runtime, resource_id: str) -> list[WebhookDelivery]:
    with rt.session_factory() as s:
        return list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.resource_id == resource_id)
                              .order_by(WebhookDelivery.created_at)))


def _spaced(progress: list[WebhookDelivery]) -> bool:
    """Progress webhooks of one resource are queued at least PROGRESS_MIN_SECONDS apart."""
    times = [d.created_at for d in progress]
    return all((b - a).total_seconds() >= PROGRESS_MIN_SECONDS for a, b in itertools.pairwise(times))


def test_train_and_generate_fire_webhooks_through_the_real_tasks(worker_runtime: Runtime) -> None:
    receiver = Receiver()
    try:
        rt = worker_runtime
        with rt.session_factory() as s:
            owner = create_user(s, "hooked").id
            s.commit()
        job_id = _job(rt, owner=owner, webhook=receiver.url)
        assert tasks.run_train(rt, job_id) == "succeeded"
        rows = _deliveries(rt, job_id)
        events = [d.event for d in rows]
        assert events[0] == "start" and events[-1] == "completed" and "progress" in events
        assert _spaced([d for d in rows if d.event == "progress"])  # 6 progress events, at most one per 5 s sent
        with rt.session_factory() as s:
            previews = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "preview")
                                      .order_by(JobEvent.id)))
        assert [p.payload["n"] for p in previews] == [0, 1]

        gen_id = _generation(rt, owner, None, webhook=receiver.url, webhook_events=["progress", "completed"])
        assert tasks.run_generate(rt, gen_id) == "done"
        with rt.session_factory() as s:
            gen = s.get(Generation, gen_id)
            assert gen is not None and gen.state == "succeeded" and gen.step == gen.steps == 3
        gen_rows = _deliveries(rt, gen_id)
        gen_events = [d.event for d in gen_rows]
        assert gen_events[0] == "progress" and gen_events[-1] == "completed"  # "start" filtered out
        assert set(gen_events[:-1]) == {"progress"} and _spaced([d for d in gen_rows if d.event == "progress"])

        settings = rt.settings.model_copy(update={"webhook_allow_private": True})
        outcomes = delivery.deliver_due(rt.session_factory, settings)
        assert set(outcomes.values()) == {"delivered"} and len(outcomes) == len(events) + len(gen_events)
        with rt.session_factory() as s:
            from storage.webhooks import user_secret

            secret = user_secret(s, owner)
        assert all(verify(secret, h, b) for h, b in receiver.requests)
        completed = [json.loads(b) for h, b in receiver.requests
                     if h["styledrop-event"] == "completed" and h["styledrop-resource"] == "job"]
        assert completed[0]["state"] == "succeeded" and completed[0]["adapter_id"] is not None
        assert completed[0]["device_seconds"] > 0 and completed[0]["progress"] == 1.0
    finally:
        receiver.close()
