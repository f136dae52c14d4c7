"""The generate form speaks the engine's λA: −1 = no style, 0 = the adapter as trained; it offers λB and, once the
user has a subject adapter, a subject with its γ."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from storage.models import Adapter, Style, TrainingJob
from testkit.images import style_png
from tests.helpers.app import bearer


def sign_in(client: TestClient, key: str) -> None:
    resp = client.post("/signin", data={"api_key": key, "next": "/gallery"}, follow_redirects=False)
    assert resp.status_code == 303, resp.text


def _attrs(html: str, element_id: str) -> dict[str, str]:
    tag = re.search(rf'<input id="{element_id}"[^>]*>', html, flags=re.S)
    assert tag is not None, element_id
    return dict(re.findall(r'(\w[\w-]*)="([^"]*)"', tag.group(0)))


def _subject_adapter(client: TestClient, key: str) -> str:
    created = client.post("/v1/styles", headers=bearer(key), data={"kind": "subject", "class_word": "dog"},
                          files={"image": ("d.png", style_png(), "image/png")})
    assert created.status_code == 202, created.text
    with client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        job = s.get(TrainingJob, created.json()["job"]["id"])
        assert job is not None
        row = Adapter(version=1, owner_id=job.owner_id, style_id=job.style_id, job_id=job.id, blob_key="adapters/aa/x",
                      sha256="0" * 64, bytes=1, base_model="tiny", rank=4, alpha=4.0, targets=["to_q"],
                      descriptor="dog", train_prompt="a photo of sks dog", steps=2, seed=1, engine_version="t")
        s.add(row)
        s.commit()
        assert s.get(Style, job.style_id).kind == "subject"  # type: ignore[union-attr]
        return row.id


def test_the_style_strength_slider_reaches_no_style_and_says_what_0_means(pages_client: TestClient,
                                                                          pages_keys: dict[str, str]) -> None:
    sign_in(pages_client, pages_keys["alice"])
    html = pages_client.get("/gallery").text
    slider = _attrs(html, "style_strength")
    assert (slider["type"], float(slider["min"]), float(slider["max"]), float(slider["value"])) == (
        "range", -1.0, 3.0, 1.0)
    assert "−1 = no style, 0 = the adapter as trained" in html and "0 = no style" not in html
    guidance = _attrs(html, "text_guidance")
    assert (float(guidance["min"]), float(guidance["max"])) == (-1.0, 49.0) and "the paper uses 5" in html
    assert 'id="gen_subject"' not in html  # no subject adapter yet

    subject = _subject_adapter(pages_client, pages_keys["alice"])
    html = pages_client.get("/gallery").text
    assert f'<option value="{subject}">' in html.split('id="gen_subject"', 1)[1].split("</select>", 1)[0]
    weight = _attrs(html, "subject_weight")
    assert (float(weight["min"]), float(weight["max"]), float(weight["value"])) == (0.0, 1.0, 0.5)
