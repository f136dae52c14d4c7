"""A generation's settings are defined once (storage/generation_settings.py): the request takes each, the row
stores each, the API shows each back, the page's form has an input for each, "use these settings again" restores
every one of them, and the worker hands every engine-facing one to the sampler."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.schemas import GenerationCreate
from storage.generation_settings import SETTING_NAMES
from storage.models import Generation
from storage.resources import GenerationPublic
from testkit.images import png_bytes, style_png
from tests.helpers.pages import make_style, sign_in, trained
from trainer.sampler import GenerationRequest
from worker.generation import build_requests

# Every setting, none at its default: a restore that drops one shows as a difference.
CHOSEN: dict[str, Any] = {"prompt": "a lighthouse", "negative_prompt": "blurry", "style_strength": 2.5,
                          "guidance_scale": 7.0, "text_guidance": 4.0, "subject_weight": 0.3, "steps": 9,
                          "seed": 42, "num_images": 2, "strength": 0.6}
# Settings that reach the sampler under another name, or as the number of requests.
TO_SAMPLER = {"adapter_id": "adapter", "subject_adapter_id": "subject"}


def _generation_with_every_setting(client: TestClient, key: str) -> tuple[str, dict[str, Any]]:
    auth = {"Authorization": f"Bearer {key}"}
    _, job = make_style(client, key, "blue stripes")
    adapter_id = trained(client, job)
    subject = client.post("/v1/styles", headers=auth, files={"image": ("s.png", style_png(), "image/png")},
                          data={"kind": "subject", "class_word": "dog", "steps": "3"})
    assert subject.status_code == 202, subject.text
    subject_id = trained(client, subject.json()["job"]["id"])
    chosen = {**CHOSEN, "adapter_id": adapter_id, "subject_adapter_id": subject_id}
    assert set(chosen) == set(SETTING_NAMES), "CHOSEN must set every setting"
    resp = client.post("/v1/generations", headers=auth, data={k: str(v) for k, v in chosen.items()},
                       files={"init_image": ("i.png", png_bytes(), "image/png")})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"], chosen


def test_every_setting_is_taken_stored_shown_and_in_the_form(pages_client: TestClient,
                                                           pages_keys: dict[str, str]) -> None:
    assert set(SETTING_NAMES) <= set(GenerationCreate.model_fields) and set(SETTING_NAMES) <= set(
        GenerationPublic.model_fields) and set(SETTING_NAMES) <= set(Generation.__table__.columns.keys())
    gen_id, chosen = _generation_with_every_setting(pages_client, pages_keys["alice"])
    shown = pages_client.get(f"/v1/generations/{gen_id}", headers={
        "Authorization": f"Bearer {pages_keys['alice']}"}).json()
    assert {name: shown[name] for name in SETTING_NAMES} == chosen

    with pages_client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        s.execute(update(Generation).where(Generation.id == gen_id).values(state="succeeded",
                                                                            image_keys=["a", "b"]))
        s.commit()
    sign_in(pages_client, pages_keys["alice"])
    html = pages_client.get("/gallery").text
    start = html.index('<form id="gen-form"')
    form = html[start:html.index("</form>", start)]
    for name in SETTING_NAMES:
        assert f'name="{name}"' in form, f"the generate form has no input for {name}"
    names = re.search(r"data-setting-names='([^']*)'", form)
    assert names is not None and json.loads(names.group(1).replace("&#34;", '"')) == list(SETTING_NAMES)
    reuse = re.search(r"data-settings='([^']*)'", html)
    assert reuse is not None
    assert json.loads(reuse.group(1).replace("&#34;", '"')) == chosen  # "use these settings again": all of them


def test_the_worker_hands_every_setting_to_the_sampler(pages_client: TestClient,
                                                       pages_keys: dict[str, str]) -> None:
    gen_id, chosen = _generation_with_every_setting(pages_client, pages_keys["alice"])
    with pages_client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        gen = s.get(Generation, gen_id)
        assert gen is not None
        rt = SimpleNamespace(store=pages_client.app.state.blobs)  # type: ignore[attr-defined]
        requests = build_requests(rt, gen, "style-slot", "subject-slot")  # type: ignore[arg-type]
    fields = set(GenerationRequest.__dataclass_fields__)
    for name in SETTING_NAMES:
        if name == "num_images":
            assert len(requests) == chosen["num_images"]
        elif name == "seed":
            assert [r.seed for r in requests] == [chosen["seed"] + i for i in range(chosen["num_images"])]
        elif name in TO_SAMPLER:
            assert {getattr(r, TO_SAMPLER[name]) for r in requests} == {
                "style-slot" if name == "adapter_id" else "subject-slot"}
        else:
            assert name in fields, f"the sampler has no {name}: add it to TO_SAMPLER or GenerationRequest"
            assert {getattr(r, name) for r in requests} == {chosen[name]}, name
