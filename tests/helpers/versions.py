"""API-test helper: a style uploaded through the API with adapter versions recorded as the train worker records
them (v1, v2, ... with scores), without running training."""

from __future__ import annotations

from typing import Any

from storage.job_params import JobParams
from storage.models import Adapter, TrainingJob
from storage.states import JobState
from testkit.images import png_bytes
from tests.helpers.app import bearer


def style_with_versions(client: Any, key: str, n: int, descriptor: str = "ink") -> tuple[str, list[str]]:
    """A style uploaded through the API and `n` adapter versions recorded as the train worker records them."""
    resp = client.post("/v1/styles", headers=bearer(key), data={"descriptor": descriptor, "steps": "3"},
                       files={"image": ("s.png", png_bytes(), "image/png")})
    assert resp.status_code == 202, resp.text
    style_id, first_job = resp.json()["style"]["id"], resp.json()["job"]["id"]
    ids = []
    with client.app.state.sessionmaker() as s:
        owner = s.get(TrainingJob, first_job).owner_id  # type: ignore[union-attr]
        for v in range(1, n + 1):
            job_id = first_job
            if v > 1:
                job = TrainingJob(style_id=style_id, owner_id=owner, total_steps=3,
                                  params=JobParams(steps=3, seed=0, descriptor=descriptor).to_json(),
                                  state=JobState.SUCCEEDED)
                s.add(job)
                s.flush()
                job_id = job.id
            a = Adapter(version=v, owner_id=owner, style_id=style_id, job_id=job_id, blob_key=f"adapters/v{v}",
                        sha256="0" * 64, bytes=1, base_model="tiny", rank=4, alpha=4.0, targets=["to_q"],
                        descriptor=descriptor, train_prompt="p", steps=3, seed=0, engine_version="t",
                        text_score=0.1 * v, style_score=None if v == 1 else 0.5)
            s.add(a)
            s.flush()
            ids.append(a.id)
        first = s.get(TrainingJob, first_job)
        assert first is not None
        first.state = JobState.SUCCEEDED  # a version is visible once its job has succeeded
        s.commit()
    return style_id, ids
