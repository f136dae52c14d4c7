"""Jobs and generations as the API shows them (the fields of JobPublic / GenerationPublic, as plain values).

The API's presenters and the webhook outbox (storage/webhooks.py) both build on these, so a webhook body is the
resource exactly as `GET` returns it at the moment of the event.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from storage import claims
from storage.models import Adapter, Generation, TrainingJob, utcnow

RECENT_GENERATIONS = 20  # finished generations the queue estimate is taken from


def error_fields(code: str | None, message: str | None) -> dict[str, str] | None:
    if code is None and message is None:
        return None
    return {"code": code or "error", "message": message or ""}


def job_fields(session: Session, job: TrainingJob) -> dict[str, Any]:
    adapter_id = session.scalar(select(Adapter.id).where(Adapter.job_id == job.id, Adapter.deleted_at.is_(None)))
    total = max(job.total_steps, 1)
    return {
        "id": job.id, "style_id": job.style_id, "state": job.state, "step": job.step,
        "total_steps": job.total_steps, "progress": 1.0 if job.state == "succeeded" else min(job.step / total, 1.0),
        "last_loss": job.last_loss, "eta_seconds": job.eta_seconds, "steps_per_second": job.steps_per_second,
        "queue_position": claims.queue_position(session, job), "attempts": job.attempts,
        "max_attempts": job.max_attempts, "params": job.params or {}, "queued_at": job.queued_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
        "cancel_requested_at": job.cancel_requested_at, "device_seconds": job.gpu_seconds,
        "error": error_fields(job.error_code, job.error_message), "adapter_id": adapter_id,
        "webhook": job.webhook, "webhook_events_filter": job.webhook_events,
    }


def generation_queue_position(session: Session, gen: Generation) -> int:
    """1 for the next queued generation to run; 0 when `gen` is not queued."""
    if gen.state != "queued":
        return 0
    ahead = session.scalar(
        select(func.count()).select_from(Generation).where(
            Generation.state == "queued",
            or_(Generation.queued_at < gen.queued_at,
                and_(Generation.queued_at == gen.queued_at, Generation.id < gen.id)),
        )
    )
    return int(ahead or 0) + 1


def recent_pace(session: Session) -> tuple[float, float] | None:
    """(seconds one generation takes, generations finished per second) over the last few that succeeded, or None
    without history. Generations run in batches, so the rate is taken over the span they covered together."""
    rows = session.execute(
        select(Generation.started_at, Generation.finished_at)
        .where(Generation.state == "succeeded", Generation.started_at.is_not(None),
               Generation.finished_at.is_not(None))
        .order_by(Generation.finished_at.desc()).limit(RECENT_GENERATIONS)
    ).all()
    spans = [(s, f) for s, f in rows if s is not None and f is not None and f >= s]
    if not spans:
        return None
    duration = sum((f - s).total_seconds() for s, f in spans) / len(spans)
    window = (max(f for _, f in spans) - min(s for s, _ in spans)).total_seconds()
    return max(duration, 0.01), len(spans) / max(window, 0.01)


def generation_queue_positions(session: Session, gens: Sequence[Generation]) -> dict[str, int]:
    """Queue positions of the queued ones among `gens`, in one query whatever their number."""
    ids = [g.id for g in gens if g.state == "queued"]
    if not ids:
        return {}
    ordered = select(Generation.id, func.row_number().over(order_by=(Generation.queued_at, Generation.id))
                     .label("n")).where(Generation.state == "queued").subquery()
    rows = session.execute(select(ordered.c.id, ordered.c.n).where(ordered.c.id.in_(ids)))
    return {gen_id: int(n) for gen_id, n in rows}


def needs_pace(gens: Sequence[Generation]) -> bool:
    """Whether any of `gens` is estimated from the service's recent pace (queued, or running without a round)."""
    return any(g.state == "queued" or (g.state == "running" and not g.step) for g in gens)


def generation_eta(session: Session, gen: Generation, position: int, now: datetime | None = None,
                   pace: tuple[float, float] | bool | None = True) -> float | None:
    """Seconds until `gen` should be done: from its own pace while running (rounds done so far), from the recent
    pace of the service while queued; None when there is nothing to go on. An estimate, never a promise.
    `pace`: the service's recent pace when already read (None: no history), True to read it here."""
    if gen.state in ("succeeded", "failed"):
        return 0.0
    now = now or utcnow()
    if gen.state == "running" and gen.started_at is not None and gen.step > 0:
        elapsed = (now - gen.started_at).total_seconds()
        return round(max(elapsed / gen.step * (max(gen.steps, gen.step) - gen.step), 0.0), 1)
    if pace is True:
        pace = recent_pace(session)
    if not isinstance(pace, tuple):
        return None
    duration, rate = pace
    if gen.state == "running":
        elapsed = (now - gen.started_at).total_seconds() if gen.started_at else 0.0
        return round(max(duration - elapsed, 0.0), 1)
    return round(duration + max(position - 1, 0) / rate, 1)


def generation_fields(session: Session | None, gen: Generation) -> dict[str, Any]:
    """The public fields of `gen`; without a session the queue position is 0 and the estimate None."""
    mode = "inpaint" if gen.mask_key else "image" if gen.init_image_key else "text"
    position = generation_queue_position(session, gen) if session is not None else 0
    eta = generation_eta(session, gen, position) if session is not None else None
    total = max(gen.steps, 1)
    step = gen.steps if gen.state == "succeeded" else min(gen.step or 0, gen.steps)
    return {
        "id": gen.id, "state": gen.state, "adapter_id": gen.adapter_id, "prompt": gen.prompt,
        "negative_prompt": gen.negative_prompt, "style_strength": gen.style_strength,
        "guidance_scale": gen.guidance_scale, "steps": gen.steps, "seed": gen.seed, "num_images": gen.num_images,
        "mode": mode, "strength": gen.strength, "attempts": gen.attempts, "queued_at": gen.queued_at,
        "started_at": gen.started_at, "finished_at": gen.finished_at, "step": step,
        "progress": 1.0 if gen.state == "succeeded" else math.floor(step / total * 1000) / 1000,
        "queue_position": position, "eta_seconds": eta,
        "image_urls": [f"/v1/generations/{gen.id}/images/{n}" for n in range(len(gen.image_keys or []))],
        "error": error_fields(gen.error_code, gen.error_message),
        "webhook": gen.webhook, "webhook_events_filter": gen.webhook_events,
    }
