"""Generations (JSON, image-to-image, inpainting, ?wait), /healthz, /readyz, /metrics and the admin overview."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage import jobs as jobstore
from storage.broker import ROUTES
from storage.db import downgrade_to_base, make_engine, schema_problem
from storage.models import Generation, Worker, utcnow
from storage.settings import Settings
from storage.states import WorkKind
from testkit.images import png_bytes
from tests.helpers.app import add_users, app_client, bearer


def _generation(client: Any, gen_id: str) -> Generation:
    with client.app.state.sessionmaker() as session:
        gen = session.get(Generation, gen_id)
        assert gen is not None
        return gen


def test_json_generation_queues_and_sends(api_client, api_keys, api_redis) -> None:
    resp = api_client.post("/v1/generations", headers=bearer(api_keys["alice"]),
                           json={"prompt": "a cat", "seed": 5, "num_images": 2})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["state"] == "queued" and body["mode"] == "text" and body["seed"] == 5
    assert body["style_strength"] == 1.0 and body["guidance_scale"] == 10.0 and body["steps"] == 12
    assert _generation(api_client, body["id"]).sent_at is not None
    message = json.loads(api_redis.lrange("generate", 0, -1)[0])
    assert message["headers"]["task"] == ROUTES[WorkKind.GENERATE].task
    assert json.loads(base64.b64decode(message["body"]))[0] == [body["id"]]


def test_generation_validation(api_client, api_keys) -> None:
    key = bearer(api_keys["alice"])
    bad = [
        {"prompt": ""}, {"prompt": "x" * 501}, {"prompt": "x", "steps": 0}, {"prompt": "x", "steps": 101},
        {"prompt": "x", "style_strength": 11}, {"prompt": "x", "guidance_scale": -1}, {"prompt": "x", "seed": -1},
        {"prompt": "x", "num_images": 5}, {"prompt": "x", "strength": 0.5}, {"prompt": "x", "bogus": 1},
    ]
    for body in bad:
        assert api_client.post("/v1/generations", headers=key, json=body).status_code == 422, body
    unknown = api_client.post("/v1/generations", headers=key, json={"prompt": "x", "adapter_id": "nope"})
    assert unknown.status_code == 404
    no_type = api_client.post("/v1/generations", headers=key, content=b"prompt=x")
    assert no_type.status_code == 415
    broken = api_client.post("/v1/generations", headers={**key, "Content-Type": "application/json"}, content=b"{")
    assert broken.status_code == 422 and broken.json()["code"] == "bad_json"
    assert api_client.post("/v1/generations?wait=-1", headers=key, json={"prompt": "x"}).status_code == 422


def test_image_to_image_and_inpainting(api_client, api_keys) -> None:
    key = bearer(api_keys["alice"])
    img2img = api_client.post("/v1/generations", headers=key, data={"prompt": "a cat", "strength": "0.4"},
                              files={"init_image": ("i.png", png_bytes(), "image/png")})
    assert img2img.status_code == 202, img2img.text
    assert img2img.json()["mode"] == "image" and img2img.json()["strength"] == 0.4
    assert _generation(api_client, img2img.json()["id"]).init_image_key is not None
    inpaint = api_client.post(
        "/v1/generations", headers=key, data={"prompt": "a cat"},
        files={"init_image": ("i.png", png_bytes(), "image/png"), "mask": ("m.png", png_bytes(mode="L"), "image/png")},
    )
    assert inpaint.status_code == 202 and inpaint.json()["mode"] == "inpaint"
    gen = _generation(api_client, inpaint.json()["id"])
    assert gen.mask_key and api_client.app.state.blobs.exists(gen.mask_key)
    mismatch = api_client.post(
        "/v1/generations", headers=key, data={"prompt": "a cat"},
        files={"init_image": ("i.png", png_bytes(), "image/png"),
               "mask": ("m.png", png_bytes((64, 64), mode="L"), "image/png")},
    )
    assert mismatch.status_code == 422 and mismatch.json()["code"] == "mask_size_mismatch"
    not_image = api_client.post("/v1/generations", headers=key, data={"prompt": "a cat"},
                                files={"init_image": ("i.png", b"plain text", "image/png")})
    assert not_image.status_code == 415
    mask_only = api_client.post("/v1/generations", headers=key, data={"prompt": "a cat"},
                                files={"mask": ("m.png", png_bytes(mode="L"), "image/png")})
    assert mask_only.status_code == 422


def test_wait_returns_200_when_final(api_client, api_keys) -> None:
    key = bearer(api_keys["alice"])
    factory = api_client.app.state.sessionmaker
    done = threading.Event()

    def worker() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not done.is_set():
            with factory() as session:
                for gen in session.query(Generation).filter(Generation.state == "queued").all():
                    jobstore.transition_generation(session, gen.id, expected="queued", new="running")
                    jobstore.transition_generation(session, gen.id, expected="running", new="succeeded",
                                                   image_keys=["generated/x/y.png"], finished_at=utcnow())
                    session.commit()
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    resp = api_client.post("/v1/generations?wait=5", headers=key, json={"prompt": "a cat"})
    done.set()
    thread.join()
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "succeeded" and resp.json()["image_urls"] == [
        f"http://testserver/v1/generations/{resp.json()['id']}/images/0"]
    short = api_client.post("/v1/generations?wait=0.3", headers=key, json={"prompt": "a dog"})
    assert short.status_code == 202 and short.json()["state"] == "queued"


def test_healthz_readyz_metrics_overview(api_client, api_keys) -> None:
    assert api_client.get("/healthz").json() == {"status": "ok"}
    ready = api_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    key = bearer(api_keys["alice"])
    api_client.post("/v1/styles", headers=key, data={"descriptor": "oil"},
                    files={"image": ("s.png", png_bytes(), "image/png")})
    with api_client.app.state.sessionmaker() as session:
        session.add(Worker(id="h:1:generate", host="h", pid=1, kind="generate", current_id=None,
                           stats={"hits_gpu": 2, "hits_cpu": 1, "misses": 1, "evictions": 0, "loads": 1}))
        session.add(Worker(id="h:2:train", host="h", pid=2, kind="train", heartbeat_at=utcnow().replace(year=2000),
                           started_at=utcnow().replace(year=2000), stats={}))
        session.commit()
    # /metrics is admin-only by default (job ids, queue depths; each scrape runs queries)
    assert api_client.get("/metrics").status_code == 401
    assert api_client.get("/metrics", headers=key).status_code == 403
    text = api_client.get("/metrics", headers=bearer(api_keys["admin"])).text
    assert 'styledrop_jobs{state="queued"} 1.0' in text
    assert 'styledrop_queue_depth{queue="train"} 1.0' in text
    assert "styledrop_adapter_cache_hits_total 3.0" in text
    assert "styledrop_generation_latency_seconds_bucket" in text
    overview = api_client.get("/v1/admin/overview", headers=bearer(api_keys["admin"]))
    assert overview.status_code == 200, overview.text
    body = overview.json()
    assert body["queue_depths"] == {"train": 1, "generate": 0}
    assert [w["id"] for w in body["workers_online"]] == ["h:1:generate"]
    assert body["job_counts"]["queued"] == 1 and body["running_jobs"] == [] and body["failures_24h"] == []


def test_readyz_503_and_db_errors_503_when_database_is_down(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
                        secret_key="x")
    with app_client(settings, migrate=False) as client:  # the database is down: nothing to migrate
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")
        resp = client.get("/v1/styles", headers=bearer("sd_" + "0" * 40))
        assert resp.status_code == 503 and resp.json()["code"] == "database_unavailable"


def test_api_refuses_a_schema_behind_head_and_readyz_never_migrates(sqlite_empty_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_empty_url, secret_key="x")
    with pytest.raises(RuntimeError, match="styledrop migrate"), app_client(settings, migrate=False):
        pass  # an empty database that answers: the API does not start (and does not migrate it)
    assert schema_problem(make_engine(sqlite_empty_url)) is not None
    with app_client(settings) as client:
        assert client.get("/readyz").status_code == 200
        downgrade_to_base(sqlite_empty_url)  # the schema falls behind while the API runs
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "styledrop migrate" in ready.json()["checks"]["database"]
        assert client.get("/readyz").status_code == 503  # asking again did not migrate it either


def test_embedded_filesystem_broker(tmp_path: Path) -> None:
    """No BROKER_URL: the kombu file-system transport; the message file names the queue and the depth counts it."""
    from storage.broker import celery_config, queue_depths

    settings = Settings(data_dir=tmp_path, secret_key="x")
    config = celery_config(settings)
    options = config["broker_transport_options"]
    assert config["broker_url"] == "filesystem://" and options["data_folder_in"] == options["data_folder_out"]
    with app_client(settings) as client:
        key = add_users(client, "solo")["solo"]
        resp = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink"},
                           files={"image": ("s.png", png_bytes(), "image/png")})
        assert resp.status_code == 202
        assert queue_depths(settings) == {"train": 1, "generate": 0}
        assert client.get("/readyz").status_code == 200
