"""Pending generations say where they stand, event lists page with a cursor, generations can
be deleted, jobs report device seconds, and error messages read as English."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from storage import claims
from storage import jobs as jobstore
from storage.models import Generation, JobEvent, utcnow


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _create_style(client: Any, key: str) -> dict[str, Any]:
    from testkit.images import png_bytes

    resp = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink"},
                       files={"image": ("s.png", png_bytes(), "image/png")})
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_pending_generation_has_location_retry_after_position_and_clamped_wait(api_client, api_keys) -> None:
    key = bearer(api_keys["alice"])
    api_client.app.state.settings = api_client.app.state.settings.model_copy(update={"max_wait_seconds": 0.3})
    first = api_client.post("/v1/generations", headers=key, json={"prompt": "one"}).json()
    api_client.post("/v1/generations", headers=key, json={"prompt": "two"})
    # far above the maximum: clamped to 0.3 s instead of a 422, and still queued behind two others
    resp = api_client.post("/v1/generations?wait=3600", headers=key, json={"prompt": "three"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["state"] == "queued" and body["queue_position"] == 3
    assert body["step"] == 0 and body["progress"] == 0.0 and body["eta_seconds"] is None  # no history yet
    assert resp.headers["Location"] == f"http://testserver/v1/generations/{body['id']}"
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    assert api_client.get(resp.headers["Location"], headers=key).json()["queue_position"] == 3

    # history: two generations that each took 4 s, run together -> the queued ones get an estimate
    factory = api_client.app.state.sessionmaker
    now = utcnow()
    with factory() as session:
        for _ in range(2):
            session.add(Generation(owner_id=session.get(Generation, first["id"]).owner_id, prompt="old",
                                   guidance_scale=1, steps=12, seed=1, state="succeeded", image_keys=[],
                                   started_at=now - timedelta(seconds=14), finished_at=now - timedelta(seconds=10)))
        session.commit()
    queued = api_client.get(f"/v1/generations/{body['id']}", headers=key).json()
    assert queued["eta_seconds"] is not None and queued["eta_seconds"] >= 4.0

    # running: 6 of 12 rounds in 6 s -> half done, about 6 s to go
    with factory() as session:
        assert claims.claim_generations(session, limit=1, worker_host="w")
        jobstore.record_generation_step(session, first["id"], 6, "w")
        session.get(Generation, first["id"]).started_at = utcnow() - timedelta(seconds=6)
        session.commit()
    running = api_client.get(f"/v1/generations/{first['id']}", headers=key).json()
    assert running["state"] == "running" and running["step"] == 6 and running["progress"] == 0.5
    assert running["queue_position"] == 0 and 5.0 <= running["eta_seconds"] <= 8.0
    assert api_client.get(f"/v1/generations/{body['id']}", headers=key).json()["queue_position"] == 2


def test_delete_generation_removes_row_and_images_owner_only(api_client, api_keys) -> None:
    alice, bob = bearer(api_keys["alice"]), bearer(api_keys["bob"])
    from testkit.images import png_bytes

    gen = api_client.post("/v1/generations", headers=alice, data={"prompt": "a cat"},
                          files={"init_image": ("i.png", png_bytes(), "image/png")}).json()
    blobs = api_client.app.state.blobs
    factory = api_client.app.state.sessionmaker
    assert api_client.delete(f"/v1/generations/{gen['id']}", headers=alice).status_code == 409  # still queued
    with factory() as session:
        claims.claim_generations(session, limit=1, worker_host="w")
        blobs.put_bytes("images/t/0.png", b"png0")
        blobs.put_bytes("images/t/1.png", b"png1")
        jobstore.transition_generation(session, gen["id"], expected="running", new="succeeded",
                                       image_keys=["images/t/0.png", "images/t/1.png"], finished_at=utcnow())
        init_key = session.get(Generation, gen["id"]).init_image_key
        session.commit()
    assert api_client.delete(f"/v1/generations/{gen['id']}", headers=bob).status_code == 404
    assert api_client.get(f"/v1/generations/{gen['id']}/images/1", headers=alice).content == b"png1"
    resp = api_client.delete(f"/v1/generations/{gen['id']}", headers=alice)
    assert resp.status_code == 204, resp.text
    assert api_client.get(f"/v1/generations/{gen['id']}", headers=alice).status_code == 404
    assert not blobs.exists("images/t/0.png") and not blobs.exists("images/t/1.png") and not blobs.exists(init_key)
    assert api_client.delete(f"/v1/generations/{gen['id']}", headers=alice).status_code == 404


def test_events_page_with_next_cursor_and_preview_urls(api_client, api_keys) -> None:
    key = bearer(api_keys["alice"])
    job_id = _create_style(api_client, api_keys["alice"])["job"]["id"]
    with api_client.app.state.sessionmaker() as session:
        for i in range(3):
            jobstore.add_event(session, job_id, "log", {"message": f"line {i}"})
        jobstore.add_event(session, job_id, "preview", {"image_key": "previews/a/b.png", "prompt": "p", "n": 0})
        # written before previews carried their index: the list works it out
        session.add(JobEvent(job_id=job_id, kind="preview", payload={"image_key": "previews/c/d.png"}))
        session.commit()
    seen: list[dict[str, Any]] = []
    url: str | None = f"/v1/jobs/{job_id}/events?limit=2"
    pages = 0
    while url is not None:
        resp = api_client.get(url, headers=key)
        assert resp.status_code == 200
        seen += resp.json()["items"]
        pages += 1
        url = resp.json()["next"]
        if url is not None:  # absolute, after the last event shown
            assert url == f"http://testserver/v1/jobs/{job_id}/events?after={seen[-1]['id']}&limit=2"
    assert pages == 3 and len(seen) == 6  # queued state, 3 logs, 2 previews: nothing cut, nothing twice
    assert [e["id"] for e in seen] == sorted({e["id"] for e in seen})
    previews = [e["payload"] for e in seen if e["kind"] == "preview"]
    assert [p["url"] for p in previews] == [f"http://testserver/v1/jobs/{job_id}/previews/{n}" for n in (0, 1)]
    assert all("image_key" not in p for p in previews)
    full = api_client.get(f"/v1/jobs/{job_id}/events?limit=6", headers=key)
    assert len(full.json()["items"]) == 6 and full.json()["next"] is None  # exactly everything: no next page


def test_english_errors_bearer_hint_and_device_seconds(api_client, api_keys) -> None:
    key = bearer(api_keys["alice"])
    job = _create_style(api_client, api_keys["alice"])["job"]
    assert "device_seconds" in job and "gpu_seconds" not in job
    assert api_client.post(f"/v1/jobs/{job['id']}/cancel", headers=key).json()["state"] == "cancelled"
    again = api_client.post(f"/v1/jobs/{job['id']}/cancel", headers=key)
    assert again.status_code == 409
    assert again.json()["detail"] == "the job has already been cancelled"
    retry = api_client.post(f"/v1/admin/jobs/{job['id']}/retry", headers=bearer(api_keys["admin"]))
    assert retry.status_code == 202, retry.text
    twice = api_client.post(f"/v1/admin/jobs/{job['id']}/retry", headers=bearer(api_keys["admin"]))
    assert twice.status_code == 409 and twice.json()["detail"].endswith("this one is still queued")

    bare = api_client.get("/v1/styles", headers={"Authorization": api_keys["alice"]})
    assert bare.status_code == 401 and "add `Bearer `" in bare.json()["detail"]
    basic = api_client.get("/v1/styles", headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401 and "Bearer <API key>" in basic.json()["detail"]
    assert api_client.get("/v1/styles", headers={"Authorization": f"bearer {api_keys['alice']}"}).status_code == 200

    openapi = api_client.get("/openapi.json").json()
    assert set(openapi["paths"]["/v1/generations"]["post"]["responses"]["202"]["headers"]) == {"Location",
                                                                                               "Retry-After"}
    assert "delete" in openapi["paths"]["/v1/generations/{generation_id}"]
    schema = openapi["components"]["schemas"]
    assert "device_seconds" in schema["JobPublic"]["properties"] and "gpu_seconds" not in schema["JobPublic"][
        "properties"]
    assert "CPU" in schema["JobPublic"]["properties"]["device_seconds"]["description"]
    for field in ("queue_position", "progress", "eta_seconds", "webhook", "webhook_events_filter"):
        assert schema["GenerationPublic"]["properties"][field].get("description"), field
