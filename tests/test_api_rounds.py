"""Feedback rounds through the API: samples over the feedback prompts, a round's job, and bad selections refused
with a reason before anything is written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from storage.models import Adapter, Generation, JobEvent, TrainingJob
from storage.states import GenerationState, JobState
from testkit.images import png_bytes
from tests.helpers.app import bearer
from tests.helpers.versions import style_with_versions
from trainer.contracts.prompts import feedback_prompts


def _finish_jobs(client: Any) -> None:
    """The upload's job as a worker would leave it, so the style can start a round."""
    with client.app.state.sessionmaker() as s:
        for job in s.scalars(select(TrainingJob)):
            job.state = JobState.SUCCEEDED
        s.commit()


def _generation(client: Any, owner_of: str, adapter_id: str, state: str = GenerationState.SUCCEEDED) -> str:
    with client.app.state.sessionmaker() as s:
        owner = s.get(Adapter, owner_of).owner_id  # type: ignore[union-attr]
        gen = Generation(owner_id=owner, adapter_id=adapter_id, prompt="A castle in ink style", guidance_scale=3.0,
                         steps=3, seed=1, num_images=2, state=state,
                         image_keys=["images/a.png", "images/b.png"] if state == GenerationState.SUCCEEDED else [])
        s.add(gen)
        s.commit()
        return gen.id


def test_bad_selections_are_4xx_with_a_reason_and_create_nothing(api_client: Any, api_keys: dict[str, str]) -> None:
    alice = bearer(api_keys["alice"])
    style, (a1,) = style_with_versions(api_client, api_keys["alice"], 1)
    other_style, (b1,) = style_with_versions(api_client, api_keys["alice"], 1)
    _, (bob1,) = style_with_versions(api_client, api_keys["bob"], 1)
    _finish_jobs(api_client)
    mine, of_other_style = _generation(api_client, a1, a1), _generation(api_client, b1, b1)
    queued, bobs = _generation(api_client, a1, a1, GenerationState.QUEUED), _generation(api_client, bob1, bob1)
    pick = lambda g, i=0: {"generation_id": g, "index": i}  # noqa: E731
    cases = [
        ({"mode": "human", "selection": []}, 422, "empty_selection"),
        ({"mode": "human"}, 422, "empty_selection"),
        ({"mode": "human", "selection": [pick(bobs)]}, 404, "generation_not_found"),
        ({"mode": "human", "selection": [pick("0" * 32)]}, 404, "generation_not_found"),
        ({"mode": "human", "selection": [pick(mine, 2)]}, 422, "unknown_image_index"),
        ({"mode": "human", "selection": [pick(mine), pick(of_other_style)]}, 422, "generation_not_of_style"),
        ({"mode": "human", "selection": [pick(queued)]}, 409, "generation_not_ready"),
        ({"mode": "human", "selection": [pick(mine), pick(mine)]}, 422, "duplicate_pick"),
        ({"mode": "human", "selection": [pick(mine, -1)]}, 422, "validation_error"),
        ({"mode": "automatic", "selection": [pick(mine)]}, 422, "selection_not_allowed"),
        ({"mode": "sometimes"}, 422, "validation_error"),
    ]
    with api_client.app.state.sessionmaker() as s:
        before = (s.scalar(select(func.count()).select_from(TrainingJob)),
                  s.scalar(select(func.count()).select_from(JobEvent)))
    for body, status, code in cases:
        resp = api_client.post(f"/v1/styles/{style}/rounds", headers=alice, json=body)
        assert (resp.status_code, resp.json()["code"]) == (status, code), (body, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json") and resp.json()["detail"]
    assert api_client.post(f"/v1/styles/{style}/rounds", headers=bearer(api_keys["bob"]),
                           json={"mode": "human", "selection": [pick(mine)]}).status_code == 404
    with api_client.app.state.sessionmaker() as s:
        after = (s.scalar(select(func.count()).select_from(TrainingJob)),
                 s.scalar(select(func.count()).select_from(JobEvent)))
    assert after == before

    # A good selection queues the round's job; a second one waits for it (one unfinished job per style).
    resp = api_client.post(f"/v1/styles/{style}/rounds", headers=alice,
                           json={"mode": "human", "selection": [pick(mine, 1), pick(mine)], "steps": 4, "seed": 3})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["state"] == "queued" and job["total_steps"] == 4 and job["style_id"] == style
    assert job["params"]["round"] == {"mode": "human", "selection": [pick(mine, 1), pick(mine)]}
    again = api_client.post(f"/v1/styles/{style}/rounds", headers=alice, json={"mode": "automatic"})
    assert (again.status_code, again.json()["code"]) == (409, "style_busy")
    auto = api_client.post(f"/v1/styles/{other_style}/rounds", headers=alice, json={"mode": "automatic",
                                                                                    "prompts": 3})
    assert auto.status_code == 202 and auto.json()["params"]["round"] == {
        "mode": "automatic", "adapter_id": b1, "version": 1, "prompts": 3, "per_prompt": 4}


def test_samples_are_generations_over_the_feedback_prompts(api_client: Any, api_keys: dict[str, str]) -> None:
    alice = bearer(api_keys["alice"])
    style, (v1, v2) = style_with_versions(api_client, api_keys["alice"], 2)
    resp = api_client.post(f"/v1/styles/{style}/samples", headers=alice,
                           json={"prompts": 3, "images_per_prompt": 2, "seed": 10, "steps": 4, "version": 1})
    assert resp.status_code == 202, resp.text
    gens = resp.json()
    assert [g["prompt"] for g in gens] == feedback_prompts("ink")[:3]
    assert {g["adapter_id"] for g in gens} == {v1} and [g["seed"] for g in gens] == [10, 12, 14]
    assert all(g["num_images"] == 2 and g["steps"] == 4 for g in gens)
    default = api_client.post(f"/v1/styles/{style}/samples", headers=alice, json={"prompts": 2, "seed": 2**31 - 2})
    assert default.status_code == 202, default.text
    assert [g["adapter_id"] for g in default.json()] == [v2, v2]
    assert [g["seed"] for g in default.json()] == [2**31 - 2, 0]  # seeds wrap instead of leaving the range
    fresh = api_client.post("/v1/styles", headers=alice, data={"descriptor": "new"},
                            files={"image": ("s.png", png_bytes(), "image/png")}).json()["style"]["id"]
    for body, status in (({}, 422), ({"images_per_prompt": 99}, 422), ({"prompts": 31}, 422)):
        assert api_client.post(f"/v1/styles/{fresh}/samples", headers=alice, json=body).status_code == status
    resp = api_client.post(f"/v1/styles/{fresh}/rounds", headers=alice, json={"mode": "automatic"})
    assert (resp.status_code, resp.json()["code"]) == (422, "style_not_trained")


def test_a_subject_has_no_rounds_and_is_not_named_as_a_style(api_client: Any, api_keys: dict[str, str]) -> None:
    alice = bearer(api_keys["alice"])
    r = api_client.post("/v1/styles", headers=alice, data={"kind": "subject", "class_word": "dog"},
                        files={"image": ("s.png", png_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    subject = r.json()["style"]["id"]
    _finish_jobs(api_client)
    for path, body in ((f"/v1/styles/{subject}/rounds", {"mode": "automatic"}),
                       (f"/v1/styles/{subject}/samples", {}),
                       ("/v1/generations", {"prompt": "a dog", "style_id": subject})):
        resp = api_client.post(path, headers=alice, json=body)
        assert (resp.status_code, resp.json()["code"]) == (422, "not_a_style"), (path, resp.text)
