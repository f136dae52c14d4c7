"""The storage cap holds: every request is charged what it will write before anything is written — an upload its
images and the adapter its job will train, a retrain or a round one adapter, a generation or samples their images —
and a refusal is 413 `storage_quota_exceeded` with `used` and `allowed`, leaving no row behind. SQLite and
PostgreSQL, through the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from storage.models import Adapter, Generation, TrainingJob
from storage.quotas import charged_bytes
from testkit.images import png_bytes
from tests.helpers.app import bearer

ADAPTER, IMAGE = 50_000, 10_000


def _rows(client: Any) -> tuple[int, int]:
    with client.app.state.sessionmaker() as s:
        return (int(s.scalar(select(func.count()).select_from(TrainingJob)) or 0),
                int(s.scalar(select(func.count()).select_from(Generation)) or 0))


def _refused(resp: Any, allowed: int) -> None:
    assert resp.status_code == 413, resp.text
    body = resp.json()
    assert body["code"] == "storage_quota_exceeded" and body["allowed"] == allowed
    assert body["used"] <= allowed < body["used"] + body["adding"]


def test_retrains_rounds_generations_and_samples_are_charged_before_they_write(
        api_client: Any, api_keys: dict[str, str]) -> None:
    settings = api_client.app.state.settings
    settings.adapter_charge_bytes, settings.image_charge_bytes = ADAPTER, IMAGE
    alice = bearer(api_keys["alice"])
    up = api_client.post("/v1/styles", headers=alice, data={"descriptor": "ink", "steps": "3"},
                         files={"image": ("s.png", png_bytes(), "image/png")})
    assert up.status_code == 202, up.text
    style_id, job_id = up.json()["style"]["id"], up.json()["job"]["id"]
    factory = api_client.app.state.sessionmaker
    with factory() as s:  # the job ends as the train worker ends it: succeeded, with its adapter of ADAPTER bytes
        job = s.get(TrainingJob, job_id)
        assert job is not None
        s.add(Adapter(version=1, owner_id=job.owner_id, style_id=style_id, job_id=job_id, blob_key="adapters/a",
                      sha256="0" * 64, bytes=ADAPTER, base_model="tiny", rank=4, alpha=4.0, targets=["to_q"],
                      descriptor="ink", train_prompt="p", steps=3, seed=0, engine_version="t"))
        job.state = "succeeded"
        s.commit()
        owner = job.owner_id
        used = charged_bytes(s, settings, owner)
    settings.max_storage_bytes_per_user = cap = used + IMAGE  # room for one image, not for an adapter
    before = _rows(api_client)
    _refused(api_client.post(f"/v1/styles/{style_id}/jobs", headers=alice, json={}), cap)  # a retrain
    _refused(api_client.post(f"/v1/styles/{style_id}/rounds", headers=alice,
                             json={"mode": "automatic", "prompts": 2, "per_prompt": 2}), cap)
    _refused(api_client.post(f"/v1/styles/{style_id}/samples", headers=alice,
                             json={"prompts": 2, "images_per_prompt": 1, "steps": 2}), cap)
    _refused(api_client.post("/v1/generations", headers=alice, json={"prompt": "a", "num_images": 2}), cap)
    assert _rows(api_client) == before  # nothing written by any refused request
    one = api_client.post("/v1/generations", headers=alice, json={"prompt": "a", "num_images": 1})
    assert one.status_code == 202, one.text  # exactly the room left
    _refused(api_client.post("/v1/generations", headers=alice, json={"prompt": "a", "num_images": 1}), cap)
    with factory() as s:
        assert charged_bytes(s, settings, owner) == cap  # the queued image counts until it is deleted
    assert api_client.post(f"/v1/generations/{one.json()['id']}/cancel", headers=alice).status_code == 202
    assert api_client.post("/v1/generations", headers=alice, json={"prompt": "b"}).status_code == 202
