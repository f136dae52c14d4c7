"""Page-test helpers: sign in through the form, and the rows a worker would leave behind (a trained style, finished
generations), made directly in the database."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from testkit.images import style_png

META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')



def sign_in(client: TestClient, key: str, next_path: str = "/styles") -> str:
    """Sign in through the form; return the page's CSRF token."""
    resp = client.post("/signin", data={"api_key": key, "next": next_path}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == next_path
    page = client.get("/styles")
    assert page.status_code == 200
    match = META.search(page.text)
    assert match, "no csrf-token meta tag"
    return match.group(1)


def make_style(client: TestClient, key: str, descriptor: str, steps: int = 20) -> tuple[str, str]:
    created = client.post("/v1/styles", headers={"Authorization": f"Bearer {key}"},
                          files={"image": ("s.png", style_png(), "image/png")},
                          data={"descriptor": descriptor, "steps": str(steps)})
    assert created.status_code == 202, created.text
    return created.json()["style"]["id"], created.json()["job"]["id"]


def trained(client: TestClient, job_id: str, *, minutes_ago: int = 0) -> str:
    """What a train worker leaves behind (none runs here): the job succeeded and its adapter row."""
    from datetime import timedelta

    from storage.models import Adapter, TrainingJob, utcnow

    with client.app.state.sessionmaker() as s:
        job = s.get(TrainingJob, job_id)
        assert job is not None
        now = utcnow() - timedelta(minutes=minutes_ago)
        job.state, job.step, job.started_at, job.finished_at = "succeeded", job.total_steps, now - timedelta(
            seconds=75), now
        version = len(s.query(Adapter).filter(Adapter.style_id == job.style_id).all()) + 1  # as the worker numbers
        adapter = Adapter(version=version, owner_id=job.owner_id, style_id=job.style_id, job_id=job.id,
                          blob_key="adapters/x",
                          sha256="0" * 64, bytes=1, base_model="tiny", base_revision=None, rank=4, alpha=4.0,
                          targets=[], descriptor=job.params["descriptor"], train_prompt="p", steps=job.total_steps,
                          seed=1, engine_version="t", created_at=now)
        s.add(adapter)
        s.commit()
        return adapter.id


def finished_generations(client: TestClient, owner_key: str, adapter_id: str | None, prompts: list[str],
                 start_minutes_ago: int) -> list[str]:
    """Finished generations (two images each), one a minute apart, oldest first."""
    from datetime import timedelta

    from storage.models import ApiKey, Generation, utcnow
    from storage.users import hash_key

    ids = []
    with client.app.state.sessionmaker() as s:
        owner_id = s.query(ApiKey).filter(ApiKey.key_hash == hash_key(owner_key)).one().user_id
        for i, prompt in enumerate(prompts):
            t = utcnow() - timedelta(minutes=start_minutes_ago - i)
            gen = Generation(owner_id=owner_id, adapter_id=adapter_id, prompt=prompt, negative_prompt="blurry",
                             style_strength=1.5, guidance_scale=8.0, steps=6, seed=100 + i, num_images=2,
                             state="succeeded", image_keys=["a", "b"], queued_at=t, finished_at=t)
            s.add(gen)
            s.flush()
            ids.append(gen.id)
        s.commit()
    return ids
