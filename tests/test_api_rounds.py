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
    gens = resp.json()["items"]
    assert [g["prompt"] for g in gens] == feedback_prompts("ink")[:3]
    assert {g["adapter_id"] for g in gens} == {v1} and [g["seed"] for g in gens] == [10, 12, 14]
    assert all(g["num_images"] == 2 and g["steps"] == 4 for g in gens)
    default = api_client.post(f"/v1/styles/{style}/samples", headers=alice, json={"prompts": 2, "seed": 2**31 - 2})
    assert default.status_code == 202, default.text
    assert [g["adapter_id"] for g in default.json()["items"]] == [v2, v2]
    assert [g["seed"] for g in default.json()["items"]] == [2**31 - 2, 0]  # seeds wrap instead of leaving the range
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


def test_a_samples_set_reports_done_of_total_as_its_generations_finish(api_client: Any,
                                                                       api_keys: dict[str, str]) -> None:
    alice, bob = bearer(api_keys["alice"]), bearer(api_keys["bob"])
    style, (v1, v2) = style_with_versions(api_client, api_keys["alice"], 2)
    empty = api_client.get(f"/v1/styles/{style}/samples", headers=alice)
    assert empty.status_code == 200 and empty.json() == {"version": 2, "total": 0, "done": 0, "progress": 0.0,
                                                         "eta_seconds": None, "items": [], "next": None}
    made = api_client.post(f"/v1/styles/{style}/samples", headers=alice,
                           json={"prompts": 4, "images_per_prompt": 1, "steps": 10, "version": 1}).json()
    assert (made["version"], made["total"], made["done"], made["progress"], made["next"]) == (1, 4, 0, 0.0, None)
    ids = [g["id"] for g in made["items"]]
    with api_client.app.state.sessionmaker() as s:  # as the generate worker leaves them: two done, one halfway
        for gen_id, state, step in zip(ids, ("succeeded", "failed", "running", "queued"), (10, 3, 5, 0),
                                       strict=True):
            gen = s.get(Generation, gen_id)
            gen.state, gen.step = state, step
            if state != "queued":
                gen.started_at = gen.queued_at
            if state in ("succeeded", "failed"):
                gen.finished_at = gen.queued_at
        s.commit()
    now = api_client.get(f"/v1/styles/{style}/samples", headers=alice).json()
    assert (now["version"], now["total"], now["done"]) == (1, 4, 2)
    assert now["progress"] == (1 + 1 + 0.5 + 0) / 4 and [g["id"] for g in now["items"]] == ids
    assert [g["prompt"] for g in now["items"]] == feedback_prompts("ink")[:4]
    # The newest set wins; a version names its own newest; another user's style is unknown.
    newer = api_client.post(f"/v1/styles/{style}/samples", headers=alice, json={"prompts": 1}).json()
    latest = api_client.get(f"/v1/styles/{style}/samples", headers=alice).json()
    assert (latest["version"], latest["total"], [g["id"] for g in latest["items"]]) == (
        2, 1, [g["id"] for g in newer["items"]])
    assert [g["id"] for g in api_client.get(f"/v1/styles/{style}/samples", headers=alice,
                                            params={"version": 1}).json()["items"]] == ids
    missing = api_client.get(f"/v1/styles/{style}/samples", headers=alice, params={"version": 9})
    assert (missing.status_code, missing.json()["code"]) == (404, "version_not_found")
    assert api_client.get(f"/v1/styles/{style}/samples", headers=bob).status_code == 404
    assert {g["adapter_id"] for g in now["items"]} == {v1} and {g["adapter_id"] for g in newer["items"]} == {v2}


def test_a_rounds_phase_and_picks_show_on_the_job_and_picks_are_served_to_their_owner_only(
    api_client: Any, api_keys: dict[str, str]
) -> None:
    alice, bob = bearer(api_keys["alice"]), bearer(api_keys["bob"])
    style, _ = style_with_versions(api_client, api_keys["alice"], 1)
    job_id = api_client.post(f"/v1/styles/{style}/rounds", headers=alice,
                             json={"mode": "automatic", "prompts": 2, "per_prompt": 2}).json()["id"]
    queued = api_client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert queued["phase"] is None and queued["picks"] is None
    blobs = api_client.app.state.blobs
    keys = [f"picks/aa/{n}.png" for n in range(2)]
    for n, key in enumerate(keys):
        blobs.put_bytes(key, png_bytes(color=(n, 0, 0)))
    with api_client.app.state.sessionmaker() as s:  # as the train worker leaves it while it renders candidates
        job = s.get(TrainingJob, job_id)
        job.state, job.phase = JobState.RUNNING, {"name": "rendering_candidates", "done": 2, "total": 4,
                                                  "eta_seconds": 12.5}
        prompts = feedback_prompts("ink")[:2]
        job.picks = [{"prompt": p, "candidate": 2 * n, "text_score": 0.3, "style_score": 0.6, "score": 0.45,
                      "image_key": key} for n, (p, key) in enumerate(zip(prompts, keys, strict=True))]
        s.commit()
    running = api_client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert running["phase"] == {"name": "rendering_candidates", "done": 2, "total": 4, "eta_seconds": 12.5}
    assert [p["image_url"] for p in running["picks"]] == [f"http://testserver/v1/jobs/{job_id}/picks/{n}"
                                                          for n in range(2)]
    assert running["picks"][1] == {"n": 1, "prompt": feedback_prompts("ink")[1], "candidate": 2, "text_score": 0.3,
                                   "style_score": 0.6, "score": 0.45,
                                   "image_url": f"http://testserver/v1/jobs/{job_id}/picks/1"}
    for n, key in enumerate(keys):
        image = api_client.get(f"/v1/jobs/{job_id}/picks/{n}", headers=alice)
        assert (image.status_code, image.headers["content-type"]) == (200, "image/png")
        assert image.content == blobs.get_bytes(key)
        other = api_client.get(f"/v1/jobs/{job_id}/picks/{n}", headers=bob)  # as unknown as a missing job
        unknown = api_client.get(f"/v1/jobs/{'0' * 32}/picks/{n}", headers=bob)
        assert other.status_code == unknown.status_code == 404 and other.json()["code"] == unknown.json()["code"]
    assert api_client.get(f"/v1/jobs/{job_id}/picks/2", headers=alice).status_code == 404
    with api_client.app.state.sessionmaker() as s:
        s.get(TrainingJob, job_id).state = JobState.SUCCEEDED  # type: ignore[union-attr]
        s.commit()
    assert api_client.get(f"/v1/jobs/{job_id}", headers=alice).json()["phase"] is None  # only while it runs
