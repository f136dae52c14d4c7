"""Several reference images with captions, subjects, and a generation's subject, γ and λB at the API: what is
accepted is stored as asked, and every bad request is a 4xx problem with a reason that creates nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from storage.models import Adapter, Generation, Style, TrainingJob
from testkit.images import png_bytes
from tests.helpers.app import bearer


def _post(client: Any, key: str, images: list[bytes], **fields: Any) -> Any:
    data: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    return client.post("/v1/styles", headers=bearer(key), data=data,
                       files=[("image", (f"{n}.png", im, "image/png")) for n, im in enumerate(images)])


def _counts(client: Any) -> tuple[int, int, int, int]:
    with client.app.state.sessionmaker() as s:
        return tuple(int(s.scalar(select(func.count()).select_from(m)) or 0)  # type: ignore[return-value]
                     for m in (Style, TrainingJob, Adapter, Generation))


def _blob_files(client: Any) -> list[str]:
    root = client.app.state.settings.resolved_blob_dir
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _colors(n: int) -> list[bytes]:
    return [png_bytes((96, 80), (40 * k, 200 - 30 * k, 90)) for k in range(n)]


def test_a_style_takes_several_images_each_with_its_caption(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    resp = _post(api_client, api_keys["alice"], _colors(3), descriptor="flat vector",
                 caption=["a red fence in flat vector style", "", "a hill in flat vector style"])
    assert resp.status_code == 202, resp.text
    style = resp.json()["style"]
    assert style["kind"] == "style" and style["class_word"] is None
    assert style["captions"] == ["a red fence in flat vector style", None, "a hill in flat vector style"]
    with api_client.app.state.sessionmaker() as s:
        row = s.get(Style, style["id"])
        assert row is not None and row.references is not None and len(row.references) == 3
        assert row.image_key == row.references[0]["key"] and len({r["key"] for r in row.references}) == 3
        assert row.image_bytes == sum(r["bytes"] for r in row.references)
        for ref in row.references:
            assert api_client.app.state.blobs.get_bytes(ref["key"])[:4] == b"\x89PNG"
    key = bearer(api_keys["alice"])
    images = [api_client.get(f"/v1/styles/{style['id']}/images/{n}", headers=key) for n in range(3)]
    assert all(r.status_code == 200 and r.content[:4] == b"\x89PNG" for r in images)
    assert len({r.content for r in images}) == 3
    missing = api_client.get(f"/v1/styles/{style['id']}/images/3", headers=key)
    assert missing.status_code == 404 and missing.json()["code"] == "image_not_found"
    assert api_client.get(f"/v1/styles/{style['id']}/images/0", headers=bearer(api_keys["bob"])).status_code == 404


def test_a_subject_takes_photos_and_a_class_word(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    resp = _post(api_client, api_keys["alice"], _colors(2), kind="subject", class_word=" dog ")
    assert resp.status_code == 202, resp.text
    style = resp.json()["style"]
    assert (style["kind"], style["class_word"], style["descriptor"]) == ("subject", "dog", "dog")


def test_bad_uploads_are_refused_with_a_reason_and_create_nothing(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    key = api_keys["alice"]
    cases: list[tuple[dict[str, Any], list[bytes], int, str]] = [
        ({"descriptor": "ink"}, _colors(6), 422, "too_many_images"),
        ({"descriptor": "ink", "caption": ["a", "b", "c"]}, _colors(2), 422, "bad_caption"),
        ({"descriptor": "ink", "caption": ["x" * 501]}, _colors(1), 422, "bad_caption"),
        ({"descriptor": "ink", "caption": ["\u200b\u200b"]}, _colors(1), 422, "bad_caption"),
        ({"kind": "subject"}, _colors(2), 422, "bad_class_word"),
        ({"kind": "subject", "class_word": "   "}, _colors(1), 422, "bad_class_word"),
        ({"kind": "subject", "class_word": "dog", "caption": ["a dog"]}, _colors(1), 422, "bad_caption"),
        ({"descriptor": "ink", "class_word": "dog"}, _colors(1), 422, "bad_class_word"),
        ({"kind": "subject", "class_word": "dog"}, _colors(6), 422, "too_many_images"),
        ({}, _colors(1), 422, "bad_descriptor"),
        ({"descriptor": "ink"}, [*_colors(1), b"not an image"], 415, "unsupported_image"),
    ]
    before, blobs_before = _counts(api_client), _blob_files(api_client)
    for fields, images, status, code in cases:
        resp = _post(api_client, key, images, **fields)
        assert resp.status_code == status, (fields, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == code, (fields, resp.json())
        assert resp.json()["detail"], fields
    assert _counts(api_client) == before and _blob_files(api_client) == blobs_before


def test_the_image_cap_is_a_setting(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    api_client.app.state.settings.max_style_images = 2
    try:
        resp = _post(api_client, api_keys["alice"], _colors(3), descriptor="ink")
        assert resp.status_code == 422 and "at most 2" in resp.json()["detail"]
        assert _post(api_client, api_keys["alice"], _colors(2), descriptor="ink").status_code == 202
    finally:
        api_client.app.state.settings.max_style_images = 5


def _adapter_of(client: Any, style_id: str, job_id: str) -> str:
    from storage.blobs import sha256_hex

    client.app.state.blobs.put_bytes(f"adapters/aa/{job_id}.safetensors", b"fake")
    with client.app.state.sessionmaker() as s:
        job = s.get(TrainingJob, job_id)
        assert job is not None
        row = Adapter(version=1, owner_id=job.owner_id, style_id=style_id, job_id=job_id,
                      blob_key=f"adapters/aa/{job_id}.safetensors", sha256=sha256_hex(b"fake"), bytes=4,
                      base_model="tiny", rank=4, alpha=4.0, targets=["to_q"], descriptor="d", train_prompt="p",
                      steps=3, seed=1, engine_version="test")
        s.add(row)
        s.commit()
        return row.id


def _style_and_subject(client: Any, key: str) -> tuple[str, str]:
    style = _post(client, key, _colors(1), descriptor="ink").json()
    subject = _post(client, key, _colors(2), kind="subject", class_word="dog").json()
    return (_adapter_of(client, style["style"]["id"], style["job"]["id"]),
            _adapter_of(client, subject["style"]["id"], subject["job"]["id"]))


def test_a_generation_names_a_style_and_a_subject(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    key = bearer(api_keys["alice"])
    style, subject = _style_and_subject(api_client, api_keys["alice"])
    resp = api_client.post("/v1/generations", headers=key, json={
        "prompt": "a photo of sks dog", "adapter_id": style, "subject_adapter_id": subject, "text_guidance": 5.0})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert (body["subject_adapter_id"], body["subject_weight"], body["text_guidance"]) == (subject, 0.5, 5.0)
    resp = api_client.post("/v1/generations", headers=key, json={
        "prompt": "a cat", "subject_adapter_id": subject, "subject_weight": 0.7, "style_strength": -1})
    assert resp.status_code == 202 and resp.json()["subject_weight"] == 0.7
    plain = api_client.post("/v1/generations", headers=key, json={"prompt": "a cat"}).json()
    assert (plain["subject_adapter_id"], plain["subject_weight"], plain["text_guidance"]) == (None, None, None)


def test_bad_generation_mixes_are_refused_with_a_reason_and_create_nothing(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    style, subject = _style_and_subject(api_client, api_keys["alice"])
    bobs_style, bobs_subject = _style_and_subject(api_client, api_keys["bob"])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"subject_adapter_id": subject, "subject_weight": 1.5}, 422, "subject_weight"),
        ({"subject_adapter_id": subject, "subject_weight": -0.1}, 422, "subject_weight"),
        ({"adapter_id": style, "subject_weight": 0.5}, 422, "subject_weight_without_subject"),
        ({"subject_adapter_id": style}, 422, "not_a_subject"),
        ({"subject_adapter_id": bobs_subject}, 404, "not_found"),
        ({"text_guidance": 49.5}, 422, "text_guidance"),
        ({"style_strength": -1.5}, 422, "style_strength"),
    ]
    before = _counts(api_client)
    for fields, status, reason in cases:
        resp = api_client.post("/v1/generations", headers=bearer(api_keys["alice"]),
                               json={"prompt": "a cat", **fields})
        assert resp.status_code == status, (fields, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert reason in resp.text, (fields, resp.text)
    assert _counts(api_client) == before
    assert bobs_style


def test_openapi_documents_the_new_fields(api_client) -> None:  # type: ignore[no-untyped-def]
    spec = api_client.get("/openapi.json").json()
    body = spec["paths"]["/v1/generations"]["post"]["requestBody"]["content"]
    props = body["application/json"]["schema"]["properties"]
    assert {"text_guidance", "subject_adapter_id", "subject_weight"} <= set(body["multipart/form-data"]["schema"][
        "properties"])
    assert "−1 = no style" in props["style_strength"]["description"]
    assert "0 = the adapter as trained" in props["style_strength"]["description"]
    assert "λB = 5" in props["text_guidance"]["description"]
    assert "γ" in props["subject_weight"]["description"] and "subject_adapter_id" in props
    form = spec["components"]["schemas"]["StyleCreateForm"]
    assert {"image", "caption", "kind", "class_word"} <= set(form["properties"])
    assert form["properties"]["image"]["type"] == "array"
