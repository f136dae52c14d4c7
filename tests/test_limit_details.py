"""A limit a user runs into is named in the problem's `detail`: the value in force and the environment variable that
sets it (api/services/limits.py), so nobody has to find it in the configuration table."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.services.limits import limit, setting_env
from storage.settings import Settings
from tests.helpers.app import add_users, app_client, bearer
from tests.helpers.db import API_REDIS_URL


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), color).save(buf, format="PNG")
    return buf.getvalue()


def test_setting_env_is_the_variable_the_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    ints = [f for f, info in Settings.model_fields.items() if info.annotation is int]
    assert "max_concurrent_jobs_per_user" in ints and len(ints) > 20
    for n, field in enumerate(ints):
        monkeypatch.setenv(setting_env(field), str(1000 + n))
    read = Settings()
    assert {f: getattr(read, f) for f in ints} == {f: 1000 + n for n, f in enumerate(ints)}
    assert setting_env("database_url") == "DATABASE_URL" and setting_env("s3_bucket") == "S3_BUCKET"
    assert limit(read, "max_train_steps") == f"{read.max_train_steps} (STYLEDROP_MAX_TRAIN_STEPS)"
    with pytest.raises(KeyError):
        setting_env("max_nothing")


@pytest.fixture
def client(tmp_path: Path, sqlite_empty_url: str, api_redis: object) -> Iterator[TestClient]:
    # Limits other than the defaults: the details must carry the values in force, not restated numbers.
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_empty_url, broker_url=API_REDIS_URL,
                        secret_key="test-secret", rate_limit_per_minute=1000, max_concurrent_jobs_per_user=1,
                        max_images_per_request=3, max_style_images=2, max_train_steps=50)
    with app_client(settings) as c:
        yield c


def upload(client: TestClient, key: str, *colors: tuple[int, int, int], **data: str) -> Any:
    return client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink", "steps": "5", **data},
                       files=[("image", (f"{n}.png", png(c), "image/png")) for n, c in enumerate(colors)])


def test_refusals_name_the_limit_and_its_setting(client: TestClient) -> None:
    key = add_users(client, "alice")["alice"]

    def refused(resp: Any, status: int, code: str, named: str) -> None:
        body = resp.json()
        assert resp.status_code == status and body["code"] == code, body
        assert named in body["detail"], body["detail"]

    refused(upload(client, key, (1, 0, 0), (2, 0, 0), (3, 0, 0)), 422, "too_many_images",
            "a style takes at most 2 (STYLEDROP_MAX_STYLE_IMAGES)")
    refused(upload(client, key, (1, 0, 0), steps="51"), 422, "bad_steps",
            "between 1 and 50 (STYLEDROP_MAX_TRAIN_STEPS)")
    refused(client.post("/v1/generations", headers=bearer(key), json={"prompt": "a cat", "num_images": 4}), 422,
            "bad_num_images", "at most 3 (STYLEDROP_MAX_IMAGES_PER_REQUEST)")

    first = upload(client, key, (1, 0, 0))
    assert first.status_code == 202
    jobs = "unfinished (queued or running) training jobs; a user may have at most 1 " \
           "(STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER)"
    # an upload is refused by the gate before its body is read, a retraining by the job service: the same detail
    refused(upload(client, key, (2, 0, 0)), 429, "too_many_jobs", f"you already have 1 {jobs}")
    style, job = first.json()["style"]["id"], first.json()["job"]["id"]
    assert client.post(f"/v1/jobs/{job}/cancel", headers=bearer(key)).status_code == 202
    assert upload(client, key, (3, 0, 0)).status_code == 202
    again = client.post(f"/v1/styles/{style}/jobs", headers=bearer(key), json={})
    refused(again, 429, "too_many_jobs", f"you already have 1 {jobs}")
    assert int(again.headers["Retry-After"]) >= 5
