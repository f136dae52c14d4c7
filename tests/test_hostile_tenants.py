"""The smaller ways one tenant could hurt the service or others: event streams that outlive their key or user,
unlimited keys and an unpaged key list, an admin retry beside another unfinished job of the style, versions shown
before their job succeeded, version numbers two train workers could share, and control or bidirectional characters
in text fields. Real uvicorn for the streams; SQLite and PostgreSQL for the rest."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from storage import accounts
from storage.db import make_engine, make_sessionmaker
from storage.models import Adapter, Generation, Style, TrainingJob, User
from storage.users import create_user
from testkit.api_process import ApiProcess, open_stream, start_api
from testkit.images import png_bytes, style_png
from tests.helpers.app import bearer
from worker.versions import insert_version


@pytest.fixture
def stream_api(tmp_path: Path) -> Iterator[ApiProcess]:
    with start_api(tmp_path, STYLEDROP_STREAM_RECHECK_SECONDS="0.3") as api:
        yield api


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(30)  # the keep-alive comes every 15 s; an open stream would time this out
    buf = b""
    while chunk := sock.recv(4096):
        buf += chunk
    return buf


def test_streams_end_when_their_key_is_revoked_or_their_user_disabled(stream_api: ApiProcess) -> None:
    api = stream_api
    revoked_key, disabled_key = api.users(2)
    engine = make_engine(api.db_url)
    try:
        with httpx.Client(base_url=api.base, timeout=60) as client:
            jobs = [client.post("/v1/styles", headers=bearer(k), data={"descriptor": "ink"},
                                files={"image": ("s.png", style_png(), "image/png")}).json()["job"]["id"]
                    for k in (revoked_key, disabled_key)]
        streams = [open_stream(api, k, j) for k, j in zip((revoked_key, disabled_key), jobs, strict=True)]
        assert [status for _, status in streams] == [200, 200]
        with make_sessionmaker(engine)() as s:
            key_id = s.scalars(select(TrainingJob.owner_id).where(TrainingJob.id == jobs[0])).one()
            (first_key,) = accounts.list_keys(s, user_id=key_id)
            accounts.revoke_key(s, key_id=first_key.id)
            accounts.set_disabled(s, user_id=s.scalars(select(TrainingJob.owner_id)
                                                         .where(TrainingJob.id == jobs[1])).one(), disabled=True)
        for sock, _ in streams:
            tail = _read_until_closed(sock)
            sock.close()
            assert b"event: end" in tail and b"unauthorized" in tail
    finally:
        engine.dispose()


def test_active_keys_are_capped_and_the_key_list_pages(api_client: Any, api_keys: dict[str, str]) -> None:
    api_client.app.state.settings = api_client.app.state.settings.model_copy(update={"max_active_keys_per_user": 3})
    alice = bearer(api_keys["alice"])
    made = [api_client.post("/v1/keys", headers=alice) for _ in range(3)]
    assert [r.status_code for r in made] == [201, 201, 409]
    assert made[2].json()["code"] == "too_many_keys"
    page1 = api_client.get("/v1/keys?limit=2", headers=alice).json()["items"]
    page2 = api_client.get("/v1/keys?limit=2&offset=2", headers=alice).json()["items"]
    assert len(page1) == 2 and len(page2) == 1 and {k["id"] for k in page1}.isdisjoint(k["id"] for k in page2)
    assert api_client.delete(f"/v1/keys/{made[0].json()['id']}", headers=alice).status_code == 204
    assert api_client.post("/v1/keys", headers=alice).status_code == 201  # a revoked key frees its place


def test_admin_retry_keeps_one_unfinished_job_per_style(api_client: Any, api_keys: dict[str, str]) -> None:
    alice, admin = bearer(api_keys["alice"]), bearer(api_keys["admin"])
    up = api_client.post("/v1/styles", headers=alice, data={"descriptor": "ink"},
                         files={"image": ("s.png", png_bytes(), "image/png")}).json()
    style_id, first = up["style"]["id"], up["job"]["id"]
    assert api_client.post(f"/v1/jobs/{first}/cancel", headers=alice).status_code == 202
    assert api_client.post(f"/v1/styles/{style_id}/jobs", headers=alice, json={}).status_code == 202
    refused = api_client.post(f"/v1/admin/jobs/{first}/retry", headers=admin)
    assert refused.status_code == 409 and refused.json()["code"] == "style_busy"
    with api_client.app.state.sessionmaker() as s:
        assert s.scalar(select(func.count()).select_from(TrainingJob).where(
            TrainingJob.style_id == style_id, TrainingJob.state == "queued")) == 1


def _adapter(s: Any, job: TrainingJob, version: int) -> Adapter:
    a = Adapter(version=version, owner_id=job.owner_id, style_id=job.style_id, job_id=job.id, blob_key="adapters/x",
                sha256="0" * 64, bytes=1, base_model="tiny", rank=4, alpha=4.0, targets=["to_q"], descriptor="ink",
                train_prompt="p", steps=3, seed=0, engine_version="t")
    s.add(a)
    s.flush()
    return a


def test_a_version_is_visible_only_once_its_job_succeeded(api_client: Any, api_keys: dict[str, str]) -> None:
    alice = bearer(api_keys["alice"])
    up = api_client.post("/v1/styles", headers=alice, data={"descriptor": "ink"},
                         files={"image": ("s.png", png_bytes(), "image/png")}).json()
    style_id, job_id = up["style"]["id"], up["job"]["id"]
    factory = api_client.app.state.sessionmaker

    def seen() -> tuple[list[int], int]:
        versions = api_client.get(f"/v1/styles/{style_id}/versions", headers=alice).json()["items"]
        gen = api_client.post("/v1/generations", headers=alice, json={"prompt": "a", "style_id": style_id})
        return [v["version"] for v in versions], gen.status_code

    with factory() as s:  # the worker stored the adapter and is rendering previews
        job = s.get(TrainingJob, job_id)
        job.state = "running"  # type: ignore[union-attr]
        _adapter(s, job, 1)  # type: ignore[arg-type]
        s.commit()
    assert seen()[0] == [] and seen()[1] >= 400
    assert api_client.get("/v1/adapters", headers=alice).json()["items"] == []
    with factory() as s:  # the previews failed: the job ends failed, its adapter row stays, never shown
        s.get(TrainingJob, job_id).state = "failed"  # type: ignore[union-attr]
        s.commit()
    assert seen()[0] == []
    with factory() as s:
        job = s.get(TrainingJob, job_id)
        again = TrainingJob(style_id=style_id, owner_id=job.owner_id, total_steps=3, params={},  # type: ignore[union-attr]
                            state="succeeded")
        s.add(again)
        s.flush()
        _adapter(s, again, 2)
        s.commit()
    versions, status = seen()
    assert versions == [2] and status == 202


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    e = make_engine(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    yield e
    e.dispose()


def test_two_train_workers_never_share_a_version_number(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with factory() as s:
        owner = create_user(s, "alice")
        style = Style(owner_id=owner.id, image_key="k", image_sha256="0" * 64, image_bytes=1, width=1, height=1,
                      descriptor="ink")
        s.add(style)
        s.flush()
        jobs = [TrainingJob(style_id=style.id, owner_id=owner.id, total_steps=3, params={}) for _ in range(6)]
        s.add_all(jobs)
        s.commit()
        ids, owner_id, style_id = [j.id for j in jobs], owner.id, style.id
    fields = dict(owner_id=owner_id, blob_key="adapters/x", sha256="0" * 64, bytes=1, base_model="tiny", rank=4,
                  alpha=4.0, targets=["to_q"], descriptor="ink", train_prompt="p", steps=3, seed=0,
                  engine_version="t")
    # two workers that both read "the highest is 0" before either wrote: the second gets the next number
    first = insert_version(factory, style_id=style_id, job_id=ids[0], fields=fields, version=1)
    second = insert_version(factory, style_id=style_id, job_id=ids[1], fields=fields, version=1)
    assert insert_version(factory, style_id=style_id, job_id=ids[1], fields=fields) == second  # one row per job
    # and two worker threads finishing two jobs each at the same moment
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(mine: list[str]) -> None:
        try:
            for job_id in mine:
                barrier.wait()
                insert_version(factory, style_id=style_id, job_id=job_id, fields=fields)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(ids[2 + n::2],)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    with factory() as s:
        rows = s.execute(select(Adapter.job_id, Adapter.version).order_by(Adapter.version)).all()
    assert [v for _, v in rows] == [1, 2, 3, 4, 5, 6] and {j for j, _ in rows} == set(ids)
    assert dict(rows)[ids[0]] == 1 and s.get(Adapter, first) is not None


BAD_TEXT = ["ink\u202eknil", "ink\u2066x\u2069", "ink\x1b[31m", "bell\x07", "del\x7f", "mark\u200f"]


def test_control_and_bidi_characters_are_refused_in_every_text_field(api_client: Any,
                                                                     api_keys: dict[str, str]) -> None:
    alice = bearer(api_keys["alice"])
    image = {"image": ("s.png", png_bytes(), "image/png")}
    for n, text in enumerate(BAD_TEXT):
        fields = [({"descriptor": text}, "bad_descriptor"), ({"descriptor": "ink", "content": text}, "bad_content"),
                  ({"descriptor": "ink", "caption": text}, "bad_caption"),
                  ({"kind": "subject", "class_word": text}, "bad_class_word")]
        data, code = fields[n % len(fields)]  # every text in one field, every field with several texts
        resp = api_client.post("/v1/styles", headers=alice, data=data, files=image)
        assert resp.status_code == 422 and resp.json()["code"] == code, (data, resp.text)
        body = {"prompt": text} if n % 2 else {"prompt": "a", "negative_prompt": text}
        resp = api_client.post("/v1/generations", headers=alice, json=body)
        assert resp.status_code == 422 and resp.json()["code"] == "bad_prompt", (body, resp.text)
    multiline = api_client.post("/v1/generations", headers=alice, json={"prompt": "a cat\non a chair"})
    assert multiline.status_code == 202  # a textarea's line break is whitespace, not a control to refuse
    with api_client.app.state.sessionmaker() as s:
        assert [s.scalar(select(func.count()).select_from(m)) for m in (Style, TrainingJob, Generation)] == [0, 0, 1]
        assert s.scalar(select(func.count()).select_from(User)) == 3
