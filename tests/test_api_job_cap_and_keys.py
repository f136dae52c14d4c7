"""Access limits not covered by test_api_access.py: the per-user cap on unfinished training jobs (429 with
Retry-After, also under concurrent uploads), and API keys stored hashed and compared in constant time."""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

from PIL import Image
from sqlalchemy import func, select

from storage.models import ApiKey, Style, TrainingJob
from tests.helpers.app import bearer


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), color).save(buf, format="PNG")
    return buf.getvalue()


def post(client: Any, key: str, color: tuple[int, int, int], **headers: str) -> Any:
    return client.post("/v1/styles", headers={**bearer(key), **headers}, data={"descriptor": "ink", "steps": "5"},
                       files={"image": ("s.png", png(color), "image/png")})


def count(client: Any, model: Any) -> int:
    with client.app.state.sessionmaker() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_unfinished_job_cap_is_429_with_retry_after(api_client, api_keys) -> None:
    cap = api_client.app.state.settings.max_concurrent_jobs_per_user
    assert cap == 2
    alice = api_keys["alice"]
    first = post(api_client, alice, (1, 0, 0), **{"Idempotency-Key": "first"}).json()["job"]["id"]
    post(api_client, alice, (2, 0, 0))
    over = post(api_client, alice, (3, 0, 0))
    assert over.status_code == 429 and over.json()["code"] == "too_many_jobs"
    assert int(over.headers["Retry-After"]) >= 5
    assert "at most 2 (STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER)" in over.json()["detail"]
    assert count(api_client, TrainingJob) == 2 and count(api_client, Style) == 2
    # a replay of an earlier request is not a new job: still answered
    replay = post(api_client, alice, (1, 0, 0), **{"Idempotency-Key": "first"})
    assert replay.status_code == 200 and replay.json()["job"]["id"] == first
    # another user is not affected; a finished (here: cancelled) job frees a place
    assert post(api_client, api_keys["bob"], (4, 0, 0)).status_code == 202
    assert api_client.post(f"/v1/jobs/{first}/cancel", headers=bearer(alice)).status_code == 202
    assert post(api_client, alice, (5, 0, 0)).status_code == 202


def test_cap_holds_under_concurrent_uploads(api_client, api_keys) -> None:
    api_client.app.state.settings = api_client.app.state.settings.model_copy(update={
        "max_concurrent_uploads_per_user": 8, "max_concurrent_uploads_total": 8})  # all 8 reach the job cap's check
    statuses: list[int] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        resp = post(api_client, api_keys["alice"], (i, 10, 10))
        with lock:
            statuses.append(resp.status_code)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [202, 202] + [429] * 6, statuses
    assert count(api_client, TrainingJob) == 2


def test_keys_are_stored_hashed_and_compared_in_constant_time(api_client, api_keys, monkeypatch) -> None:
    import hmac

    import storage.users

    with api_client.app.state.sessionmaker() as session:
        stored = {row.key_hash for row in session.scalars(select(ApiKey))}
    for plaintext in api_keys.values():
        assert plaintext not in stored and hashlib.sha256(plaintext.encode()).hexdigest() in stored
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(storage.users.hmac, "compare_digest", spy)
    alice = api_keys["alice"]
    assert api_client.get("/v1/styles", headers=bearer(alice)).status_code == 200
    wrong = alice[:-1] + ("0" if alice[-1] != "0" else "1")  # same prefix, wrong secret
    assert api_client.get("/v1/styles", headers=bearer(wrong)).status_code == 401
    digests = {hashlib.sha256(k.encode()).hexdigest() for k in (alice, wrong)}
    assert len(compared) == 2 and {b for _, b in compared} == digests  # hashes compared, via compare_digest
