"""Rows for listing tests, written straight through storage (no worker needed)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from storage.job_params import JobParams
from storage.models import Adapter, Generation, Style, TrainingJob, User
from storage.states import GenerationState, JobState


def add_work(session: Session, owner: User, n: int) -> list[str]:
    """`n` styles, each with a job (some queued, some succeeded with an adapter) and a generation; adapter ids."""
    adapters = []
    for i in range(n):
        style = Style(owner_id=owner.id, image_key="styles/aa/x.png", image_sha256="0" * 64, image_bytes=1,
                      width=64, height=64, descriptor=f"style {i}")
        session.add(style)
        session.flush()
        done = i % 2 == 0
        job = TrainingJob(style_id=style.id, owner_id=owner.id, total_steps=10,
                          params=JobParams(steps=10, seed=0, descriptor=style.descriptor).to_json(),
                          state=JobState.SUCCEEDED if done else JobState.QUEUED)
        session.add(job)
        session.flush()
        adapter_id = None
        if done:
            adapter = Adapter(version=1, owner_id=owner.id, style_id=style.id, job_id=job.id,
                              blob_key="adapters/aa/a.st",
                              sha256="0" * 64, bytes=1, base_model="tiny", rank=4, alpha=4.0, targets=["to_q"],
                              descriptor=f"style {i}", train_prompt="p", steps=10, seed=0, engine_version="t")
            session.add(adapter)
            session.flush()
            adapter_id = adapter.id
            adapters.append(adapter.id)
        session.add(Generation(owner_id=owner.id, adapter_id=adapter_id, prompt="a cat", guidance_scale=10.0,
                               steps=12, seed=i, num_images=1, state=GenerationState.QUEUED, image_keys=[]))
    session.commit()
    return adapters
