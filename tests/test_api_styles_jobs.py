"""POST /v1/styles, jobs, cancel, idempotency, upload limits and the SSE stream, over SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import fastapi.routing
from PIL import Image
from sqlalchemy import func, select

from storage import jobs as jobstore
from storage.broker import ROUTES
from storage.models import Style, TrainingJob
from storage.states import WorkKind
from tests.helpers.app import bearer


def png_bytes(size: tuple[int, int] = (96, 80), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def post_style(client: Any, key: str, *, image: bytes | None = None, headers: dict[str, str] | None = None,
               **fields: Any) -> Any:
    data = {"descriptor": "watercolor painting", **{k: str(v) for k, v in fields.items()}}
    return client.post(
        "/v1/styles", headers={**bearer(key), **(headers or {})}, data=data,
        files={"image": ("style.png", image if image is not None else png_bytes(), "image/png")},
    )


def _count(client: Any, model: Any) -> int:
    with client.app.state.sessionmaker() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _blob_files(client: Any) -> list[str]:
    root = client.app.state.settings.resolved_blob_dir
    return [p.name for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_create_style_commits_row_and_sends_train_message(api_client, api_keys, api_redis) -> None:
    resp = post_style(api_client, api_keys["alice"], steps=7, seed=3, content="a red square")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    job, style = body["job"], body["style"]
    assert job["state"] == "queued" and job["total_steps"] == 7 and job["queue_position"] == 1
    assert job["params"] == {"steps": 7, "seed": 3, "descriptor": "watercolor painting", "content": "a red square"}
    assert style["width"] == 96 and style["height"] == 80
    with api_client.app.state.sessionmaker() as session:
        row = session.get(TrainingJob, job["id"])
        assert row is not None and row.state == "queued" and row.sent_at is not None and row.celery_task_id
    assert api_redis.llen("train") == 1
    message = json.loads(api_redis.lrange("train", 0, -1)[0])
    assert message["headers"]["task"] == ROUTES[WorkKind.TRAIN].task
    args = json.loads(base64.b64decode(message["body"]))[0]
    assert args == [job["id"]]
    got = api_client.get(f"/v1/jobs/{job['id']}", headers=bearer(api_keys["alice"]))
    assert got.status_code == 200 and got.json()["progress"] == 0.0
    image = api_client.get(style["image_url"], headers=bearer(api_keys["alice"]))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    listed = api_client.get("/v1/jobs?state=queued", headers=bearer(api_keys["alice"])).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_broker_down_still_answers_202_and_leaves_row_queued(api_client, api_keys) -> None:
    from api.services import queue

    api_client.app.state.settings.broker_url = "redis://127.0.0.1:1/0"
    queue.reset()
    resp = post_style(api_client, api_keys["alice"], steps=5)
    assert resp.status_code == 202, resp.text
    with api_client.app.state.sessionmaker() as session:
        row = session.get(TrainingJob, resp.json()["job"]["id"])
        assert row is not None and row.state == "queued" and row.sent_at is None


def test_idempotency_key_same_body_same_job_different_body_409(api_client, api_keys, api_redis) -> None:
    key = api_keys["alice"]
    first = post_style(api_client, key, steps=9, seed=1, headers={"Idempotency-Key": "abc"})
    again = post_style(api_client, key, steps=9, seed=1, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["job"]["id"] == first.json()["job"]["id"]
    assert again.json()["style"]["id"] == first.json()["style"]["id"]
    other = post_style(api_client, key, steps=10, seed=1, headers={"Idempotency-Key": "abc"})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_mismatch"
    assert _count(api_client, TrainingJob) == 1 and api_redis.llen("train") == 1
    # another user may use the same key for their own request
    bob = post_style(api_client, api_keys["bob"], steps=9, seed=1, headers={"Idempotency-Key": "abc"})
    assert bob.status_code == 202


def test_text_file_named_png_is_rejected_without_leftovers(api_client, api_keys, api_redis) -> None:
    resp = post_style(api_client, api_keys["alice"], image=b"hello, I am not an image\n" * 10)
    assert resp.status_code == 415
    assert "not a PNG" in resp.json()["detail"]
    assert _count(api_client, Style) == 0 and _count(api_client, TrainingJob) == 0
    assert _blob_files(api_client) == [] and api_redis.llen("train") == 0
    tiny = post_style(api_client, api_keys["alice"], image=png_bytes((10, 10)))
    assert tiny.status_code == 422 and "too small" in tiny.json()["detail"]


def test_upload_over_limit_is_413(api_client, api_keys) -> None:
    limit = api_client.app.state.settings.max_upload_bytes
    big = png_bytes() + b"\0" * limit
    resp = post_style(api_client, api_keys["alice"], image=big)
    assert resp.status_code == 413
    assert str(limit) in resp.text
    assert _count(api_client, Style) == 0


def test_bad_fields_are_422(api_client, api_keys) -> None:
    key = api_keys["alice"]
    assert post_style(api_client, key, descriptor="   ").status_code == 422
    assert post_style(api_client, key, descriptor="x" * 201).status_code == 422
    assert post_style(api_client, key, steps=0).status_code == 422
    assert post_style(api_client, key, steps=10**6).status_code == 422
    assert post_style(api_client, key, steps="many").status_code == 422
    assert _count(api_client, TrainingJob) == 0


def test_cancel_queued_then_final_is_409(api_client, api_keys) -> None:
    key = api_keys["alice"]
    job_id = post_style(api_client, key, steps=5).json()["job"]["id"]
    resp = api_client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))
    assert resp.status_code == 202 and resp.json()["state"] == "cancelled"
    assert resp.json()["cancel_requested_at"] is not None
    again = api_client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))
    assert again.status_code == 409 and again.json()["code"] == "job_final"


def test_cancel_running_moves_to_cancelling_and_admin_retry(api_client, api_keys, api_redis) -> None:
    key = api_keys["alice"]
    job_id = post_style(api_client, key, steps=5).json()["job"]["id"]
    with api_client.app.state.sessionmaker() as session:
        assert jobstore.transition(session, job_id, expected="queued", new="running", attempts=1)
        session.commit()
    resp = api_client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))
    assert resp.status_code == 202 and resp.json()["state"] == "cancelling"
    with api_client.app.state.sessionmaker() as session:
        assert jobstore.transition(session, job_id, expected="cancelling", new="cancelled")
        session.commit()
    retry = api_client.post(f"/v1/admin/jobs/{job_id}/retry", headers=bearer(api_keys["admin"]))
    assert retry.status_code == 202, retry.text
    assert retry.json()["state"] == "queued" and retry.json()["attempts"] == 0
    assert retry.json()["owner_name"] == "alice"
    assert api_redis.llen("train") == 2
    assert api_client.post(f"/v1/admin/jobs/{job_id}/retry", headers=bearer(api_keys["admin"])).status_code == 409


def test_delete_style_cancels_its_job(api_client, api_keys) -> None:
    key = api_keys["alice"]
    body = post_style(api_client, key, steps=5).json()
    assert api_client.delete(f"/v1/styles/{body['style']['id']}", headers=bearer(key)).status_code == 204
    assert api_client.get(f"/v1/styles/{body['style']['id']}", headers=bearer(key)).status_code == 404
    assert api_client.get(f"/v1/jobs/{body['job']['id']}", headers=bearer(key)).json()["state"] == "cancelled"


def _parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                fields[name] = value
        if "event" in fields:
            events.append(fields)
    return events


def test_events_list_and_sse_stream_end_when_final(api_client, api_keys) -> None:
    key = api_keys["alice"]
    job_id = post_style(api_client, key, steps=4).json()["job"]["id"]
    factory = api_client.app.state.sessionmaker

    def worker() -> None:
        with factory() as session:
            jobstore.transition(session, job_id, expected="queued", new="running")
            session.commit()
            for step in range(1, 5):
                jobstore.add_event(session, job_id, "progress", {"step": step, "total": 4, "loss": 1.0 / step})
                session.commit()
                time.sleep(0.1)
            jobstore.transition(session, job_id, expected="running", new="succeeded", step=4)
            session.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    resp = api_client.get(f"/v1/jobs/{job_id}/events", headers={**bearer(key), "Accept": "text/event-stream"})
    thread.join()
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = _parse_sse(resp.text)
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"]) == {"state": "succeeded"}
    body = events[:-1]
    ids = [int(e["id"]) for e in body]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["event"] for e in body] == ["state", "state"] + ["progress"] * 4 + ["state"]
    assert [json.loads(e["data"])["payload"].get("step") for e in body if e["event"] == "progress"] == [1, 2, 3, 4]

    # Last-Event-ID resumes after the given event; the JSON list honours ?after and ?limit
    resumed = api_client.get(
        f"/v1/jobs/{job_id}/events",
        headers={**bearer(key), "Accept": "text/event-stream", "Last-Event-ID": str(ids[4])},
    )
    assert [int(e["id"]) for e in _parse_sse(resumed.text) if "id" in e] == ids[5:]
    listed = api_client.get(f"/v1/jobs/{job_id}/events?after={ids[1]}&limit=3", headers=bearer(key)).json()["items"]
    assert [e["id"] for e in listed] == ids[2:5]
    job = api_client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
    assert job["state"] == "succeeded" and job["progress"] == 1.0


def test_quiet_stream_sends_keep_alives_and_gives_its_place_back(api_client, api_keys, monkeypatch) -> None:
    """A stream with nothing to say still sends comment lines (proxies drop idle connections), and a stream the
    client closes frees its place: with one place per user, the next stream is a 200, not a 429."""
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.1)  # FastAPI's keep-alive period (15 s)
    api_client.app.state.streams.per_user = 1
    key = api_keys["alice"]
    job_id = post_style(api_client, key, steps=4).json()["job"]["id"]
    sse = {**bearer(key), "Accept": "text/event-stream"}
    with api_client.stream("GET", f"/v1/jobs/{job_id}/events", headers=sse) as resp:
        assert resp.status_code == 200
        lines = []
        for line in resp.iter_lines():
            lines.append(line)
            if line.startswith(":"):
                break
    assert lines[0] == "retry: 2000" and "event: state" in lines and lines[-1].startswith(":"), lines
    assert api_client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key)).status_code == 202
    again = api_client.get(f"/v1/jobs/{job_id}/events", headers=sse)
    assert again.status_code == 200, again.text
    end = _parse_sse(again.text)[-1]
    assert end["event"] == "end" and json.loads(end["data"]) == {"state": "cancelled"}


def test_previews(api_client, api_keys) -> None:
    key = api_keys["alice"]
    job_id = post_style(api_client, key, steps=4).json()["job"]["id"]
    blobs = api_client.app.state.blobs
    blobs.put_bytes("previews/ab/preview0.png", png_bytes(color=(1, 2, 3)))
    with api_client.app.state.sessionmaker() as session:
        jobstore.add_event(session, job_id, "preview", {"image_key": "previews/ab/preview0.png", "prompt": "a cat"})
        session.commit()
    resp = api_client.get(f"/v1/jobs/{job_id}/previews/0", headers=bearer(key))
    assert resp.status_code == 200 and resp.content == png_bytes(color=(1, 2, 3))
    assert api_client.get(f"/v1/jobs/{job_id}/previews/1", headers=bearer(key)).status_code == 404


def test_rate_limit_429_with_retry_after(api_client, api_keys) -> None:
    from api.http.security import RateLimiter

    api_client.app.state.rate_limiter = RateLimiter(2)
    key = api_keys["alice"]
    assert post_style(api_client, key, steps=3).status_code == 202
    assert post_style(api_client, key, steps=3).status_code == 202
    resp = post_style(api_client, key, steps=3)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert post_style(api_client, api_keys["bob"], steps=3).status_code == 202
