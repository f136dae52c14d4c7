"""StyleDrop's prompt rule ("⟨content⟩ in ⟨descriptor⟩ style", trainer/contracts/prompts.py) seen from every place
that builds a prompt from a style's descriptor: a descriptor that already ends in "style" reads the same in the
training caption, a new version's previews, the prompts its scores are computed over, and a round's samples."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

import worker.tasks as tasks
import worker.training as training
from storage.models import Adapter, JobEvent, Style, TrainingJob
from tests.helpers.app import bearer
from tests.helpers.db import get_row, make_job
from tests.helpers.versions import style_with_versions
from worker.runtime import Runtime


def test_training_previews_and_scores_say_style_once(worker_runtime: Runtime,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime
    scored: list[list[str]] = []
    real = training.record_adapter_scores
    monkeypatch.setattr(training, "record_adapter_scores", lambda rt_, adapter_id, previews, references: (
        scored.append([p for p, _ in previews]), real(rt_, adapter_id, previews, references))[1])
    job_id = make_job(rt, steps=2)
    with rt.session_factory() as s:
        s.execute(update(Style).where(Style.id == get_row(rt, TrainingJob, job_id).style_id)
                  .values(descriptor="Watercolor style "))
        s.commit()
    assert tasks.run_train(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        previews = [e.payload["prompt"] for e in s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "preview").order_by(JobEvent.id))]
    assert adapter.train_prompt == "an image in Watercolor style"
    assert previews == ["a cat in Watercolor style", "a house by the sea in Watercolor style"]
    assert scored == [previews]


def test_round_samples_say_style_once(api_client: Any, api_keys: dict[str, str]) -> None:
    style, _ = style_with_versions(api_client, api_keys["alice"], 1, descriptor="ink style")
    resp = api_client.post(f"/v1/styles/{style}/samples", headers=bearer(api_keys["alice"]),
                           json={"prompts": 2, "steps": 4})
    assert resp.status_code == 202, resp.text
    assert [g["prompt"] for g in resp.json()["items"]] == ["A chihuahua in ink style",
                                                  "A tabby cat walking on the street in ink style"]
