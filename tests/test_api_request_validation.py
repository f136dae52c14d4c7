"""Hostile requests over HTTP (in-process, SQLite and PostgreSQL): oversized and odd JSON, NUL bytes, huge
indices and cursors, concurrent idempotent retries and a full connection pool. Each answers a 4xx (or 503 with
Retry-After for the pool) with a reason, never a 500.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from storage.models import Generation, TrainingJob


def bearer(key: str, **extra: Any) -> dict[str, Any]:
    return {"Authorization": f"Bearer {key}", **extra}


def png(color: tuple[int, int, int], size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def post_style(client: Any, key: str, color: tuple[int, int, int], **headers: str) -> Any:
    return client.post("/v1/styles", headers=bearer(key, **headers), data={"descriptor": "ink"},
                       files={"image": ("s.png", png(color), "image/png")})


def post_json(client: Any, key: str, body: str | bytes, path: str = "/v1/generations", **headers: str) -> Any:
    return client.post(path, headers=bearer(key, **{"Content-Type": "application/json", **headers}), content=body)


def count(client: Any, model: Any) -> int:
    with client.app.state.sessionmaker() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def assert_4xx(resp: Any, *codes: int) -> None:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    if codes:
        assert resp.status_code in codes, (resp.status_code, resp.text[:300])
    assert resp.json()["detail"]


# --- JSON body size and echo ------------------------------------------------------------------------------------------


def test_json_body_over_the_limit_is_413_and_422_echo_is_short(api_client, api_keys) -> None:
    limit = api_client.app.state.settings.max_json_bytes
    big = '{"prompt": "' + "a" * (limit + 10) + '"}'
    resp = post_json(api_client, api_keys["alice"], big)
    assert resp.status_code == 413 and str(limit) in resp.json()["detail"]
    # no Content-Length (chunked): counted while streaming
    resp = api_client.post("/v1/generations", headers=bearer(api_keys["alice"], **{"Content-Type": "application/json"}),
                           content=iter([big[i:i + 4096].encode() for i in range(0, len(big), 4096)]))
    assert resp.status_code == 413
    # inside the limit but invalid: the 422 names the field and echoes only a short excerpt
    resp = post_json(api_client, api_keys["alice"], '{"prompt": "' + "b" * (limit - 100) + '"}')
    assert resp.status_code == 422 and len(resp.content) < 2048, len(resp.content)
    assert "prompt" in resp.text
    assert count(api_client, Generation) == 0


# --- non-finite numbers, nesting, Last-Event-ID -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    '{"prompt": "a cat", "guidance_scale": NaN}', '{"prompt": "a cat", "style_strength": Infinity}',
    '{"prompt": "a cat", "guidance_scale": -Infinity}', '{"prompt": "a cat", "guidance_scale": 1e400}',
    '{"prompt": "a cat", "seed": 1e400}', '{"prompt": NaN}', "[" * 30000, '{"prompt": ' + "[" * 30000,
    '{"prompt": "a cat", "x": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
])
def test_non_finite_and_deeply_nested_json_is_4xx(api_client, api_keys, body: str) -> None:
    assert_4xx(post_json(api_client, api_keys["alice"], body))
    assert_4xx(post_json(api_client, api_keys["admin"], body, path="/v1/admin/users"))
    assert count(api_client, Generation) == 0


def test_nesting_past_the_body_limit_is_413(api_client, api_keys) -> None:
    assert post_json(api_client, api_keys["alice"], "[" * 100000).status_code == 413


@pytest.mark.parametrize("value", [b"9" * 5000, b"\xb2", b"1\xb2", b"-1", b"1e3", "٣".encode()])
def test_odd_last_event_id_is_4xx(api_client, api_keys, value: bytes) -> None:
    """Header bytes are Latin-1 to the server: b"\xb2" arrives as '²', which str.isdigit() accepts."""
    job_id = post_style(api_client, api_keys["alice"], (9, 9, 9)).json()["job"]["id"]
    resp = api_client.get(f"/v1/jobs/{job_id}/events",
                          headers=bearer(api_keys["alice"], **{"Last-Event-ID": value}))
    assert_4xx(resp, 422)


def test_large_numeric_last_event_id_is_clamped(api_client, api_keys) -> None:
    job_id = post_style(api_client, api_keys["alice"], (9, 9, 8)).json()["job"]["id"]
    resp = api_client.get(f"/v1/jobs/{job_id}/events",
                          headers=bearer(api_keys["alice"], **{"Last-Event-ID": "9" * 19}))
    assert resp.status_code == 200 and resp.json() == {"items": [], "next": None}


# --- NUL bytes and preview indices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "adapter_id"])
def test_nul_in_json_text_is_422(api_client, api_keys, field: str) -> None:
    body: dict[str, Any] = {"prompt": "a cat", field: "a\x00b"}
    resp = api_client.post("/v1/generations", headers=bearer(api_keys["alice"]), json=body)
    assert_4xx(resp, 422)
    assert count(api_client, Generation) == 0


@pytest.mark.parametrize("field", ["descriptor", "content"])
def test_nul_in_form_text_is_4xx(api_client, api_keys, field: str) -> None:
    data = {"descriptor": "ink", field: "a\x00b"}
    resp = api_client.post("/v1/styles", headers=bearer(api_keys["alice"]), data=data,
                           files={"image": ("s.png", png((1, 2, 3)), "image/png")})
    assert_4xx(resp, 400, 422)
    assert count(api_client, TrainingJob) == 0
    resp = api_client.post("/v1/generations?wait=0", headers=bearer(api_keys["alice"]),
                           data={"prompt": "a\x00cat"}, files={"init_image": ("i.png", png((1, 2, 3)), "image/png")})
    assert_4xx(resp, 400, 422)


def _multipart(name: bytes, value: bytes, filename: bytes = b"s.png", file: bytes = b"\x89PNG\xff\xfe") -> bytes:
    return (b"--bnd\r\nContent-Disposition: form-data; name=\"" + name + b"\"\r\n\r\n" + value
            + b"\r\n--bnd\r\nContent-Disposition: form-data; name=\"image\"; filename=\"" + filename
            + b"\"\r\nContent-Type: image/png\r\n\r\n" + file + b"\r\n--bnd--\r\n")


@pytest.mark.parametrize(("body", "refused"), [
    (_multipart(b"descriptor", "café ☕ ink".encode()), None),
    (_multipart(b"descriptor", b"caf\xe9"), "not valid utf-8"),  # Latin-1, not UTF-8
    (_multipart(b"descriptor", "café".encode()[:-1]), "not valid utf-8"),  # cut inside a character
    (_multipart(b"descr\xffiptor", b"ink"), "not valid utf-8"),
    (_multipart(b"descriptor", b"ink", filename=b"s\xff.png"), "not valid utf-8"),
    (_multipart(b"descriptor", b"in\x00k"), "NUL"),
])
def test_form_text_is_checked_across_chunk_boundaries(body: bytes, refused: str | None) -> None:
    """Fed one byte at a time (a character split between network chunks is still one character); file contents
    are bytes and never checked."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException

    from api.http.forms import FormTextCheck

    check = FormTextCheck.for_headers(Headers({"content-type": "multipart/form-data; boundary=bnd"}))
    assert check is not None
    try:
        for i in range(len(body)):
            check.write(body[i:i + 1])
    except MultiPartException as exc:
        assert refused is not None and refused in exc.message, exc.message
    else:
        assert refused is None


@pytest.mark.parametrize("path", [
    "/v1/jobs/a%00b", "/v1/jobs/a%00b/events", "/v1/styles/%00", "/v1/styles/x%00/image", "/v1/adapters/%00",
    "/v1/adapters/%00/file", "/v1/generations/%00", "/v1/generations/%00/images/0",
    "POST /v1/admin/users/%00/keys", "POST /v1/jobs/%00/cancel", "POST /v1/admin/jobs/%00/retry",
    "POST /v1/styles/%00/jobs", "DELETE /v1/keys/%00",
    "DELETE /v1/generations/%00",
])
def test_nul_in_path_ids_is_404(api_client, api_keys, path: str) -> None:
    method, _, url = path.rpartition(" ")
    assert_4xx(api_client.request(method or "GET", url, headers=bearer(api_keys["admin"])), 404)


def test_nul_in_query_and_admin_names_is_4xx(api_client, api_keys) -> None:
    assert_4xx(api_client.get("/v1/jobs?state=queued%00", headers=bearer(api_keys["alice"])), 422)
    resp = api_client.post("/v1/admin/users", headers=bearer(api_keys["admin"]), json={"name": "eve\x00"})
    assert_4xx(resp, 422)


def test_preview_indices_out_of_range_are_4xx(api_client, api_keys) -> None:
    from storage import jobs as jobstore

    job_id = post_style(api_client, api_keys["alice"], (7, 7, 7)).json()["job"]["id"]
    api_client.app.state.blobs.put_bytes("previews/x.png", png((0, 0, 0)))
    with api_client.app.state.sessionmaker() as session:
        jobstore.add_event(session, job_id, "preview", {"image_key": "previews/x.png", "prompt": "a cat"})
        session.commit()
    ok = api_client.get(f"/v1/jobs/{job_id}/previews/0", headers=bearer(api_keys["alice"]))
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    for n in ("-1", "1", "9223372036854775807", "9223372036854775808", "99999999999999999999999"):
        assert_4xx(api_client.get(f"/v1/jobs/{job_id}/previews/{n}", headers=bearer(api_keys["alice"])))


# --- idempotency under concurrency, and for generations ---------------------------------------------------------------


def _concurrently(n: int, call: Any) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_retries_with_one_key_name_the_same_job_at_the_cap(api_client, api_keys) -> None:
    api_client.app.state.settings = api_client.app.state.settings.model_copy(update={
        "max_concurrent_uploads_per_user": 6, "max_concurrent_uploads_total": 6})  # all 6 reach the job cap's check
    alice = api_keys["alice"]
    assert post_style(api_client, alice, (1, 1, 1)).status_code == 202  # one place of two left
    results = _concurrently(6, lambda i: post_style(api_client, alice, (5, 5, 5), **{"Idempotency-Key": "retry-1"}))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 5 + [202], [(r.status_code, r.text[:200]) for r in results]
    assert len({r.json()["job"]["id"] for r in results}) == 1
    assert count(api_client, TrainingJob) == 2
    # the cap still holds for a new key
    assert post_style(api_client, alice, (6, 6, 6), **{"Idempotency-Key": "retry-2"}).status_code == 429


def test_generations_honour_idempotency_key(api_client, api_keys) -> None:
    alice = api_keys["alice"]
    body = {"prompt": "a cat", "steps": 2, "seed": 1}
    first = api_client.post("/v1/generations", headers=bearer(alice, **{"Idempotency-Key": "g-1"}), json=body)
    assert first.status_code == 202
    again = api_client.post("/v1/generations", headers=bearer(alice, **{"Idempotency-Key": "g-1"}), json=body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = api_client.post("/v1/generations", headers=bearer(alice, **{"Idempotency-Key": "g-1"}),
                            json={**body, "seed": 2})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_mismatch"
    # another user's key of the same name is theirs
    bob = api_client.post("/v1/generations", headers=bearer(api_keys["bob"], **{"Idempotency-Key": "g-1"}), json=body)
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]
    results = _concurrently(6, lambda i: api_client.post(
        "/v1/generations", headers=bearer(alice, **{"Idempotency-Key": "g-2"}), json=body))
    assert sorted(r.status_code for r in results) == [200] * 5 + [202], [r.text[:200] for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert count(api_client, Generation) == 3
    assert_4xx(api_client.post("/v1/generations", headers=bearer(alice, **{"Idempotency-Key": "k" * 256}), json=body),
               422)


# --- a full connection pool is a 503 ----------------------------------------------------------------------------------


def test_pool_exhaustion_is_503_with_retry_after(api_client, api_keys) -> None:
    from storage.db import make_engine, make_sessionmaker

    state = api_client.app.state
    tiny = make_engine(state.settings.resolved_database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    old = state.engine, state.sessionmaker
    state.engine, state.sessionmaker = tiny, make_sessionmaker(tiny)
    try:
        held = tiny.connect()  # the only connection
        try:
            resp = api_client.get("/v1/jobs", headers=bearer(api_keys["alice"]))
            assert resp.status_code == 503 and int(resp.headers["Retry-After"]) >= 1
            assert resp.json()["code"] == "database_busy"
            stream = api_client.get("/v1/jobs/any/events",
                                    headers=bearer(api_keys["alice"], Accept="text/event-stream"))
            assert stream.status_code == 503 and stream.json()["code"] == "database_busy"
        finally:
            held.close()
        assert api_client.get("/v1/jobs", headers=bearer(api_keys["alice"])).status_code == 200
    finally:
        state.engine, state.sessionmaker = old
        tiny.dispose()


def _raw_post(app: Any, key: str, chunks: int, content_length: int | None) -> tuple[int, int]:
    """POST /v1/generations through raw ASGI with a JSON body of `chunks` x 64 KiB; (status, chunks pulled)."""
    import asyncio

    chunk = b"a" * 65536
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < chunks:
            pulled += 1
            body = b'{"prompt": "' + chunk if pulled == 1 else chunk
            return {"type": "http.request", "body": body, "more_body": pulled < chunks}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode()),
               (b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/generations", "raw_path": b"/v1/generations", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=60))
    return next(m for m in sent if m["type"] == "http.response.start")["status"], pulled


def test_json_body_is_refused_before_it_is_read(api_client, api_keys) -> None:
    limit = api_client.app.state.settings.max_json_bytes
    # a declared 64 MiB: refused from the header, not one chunk read
    assert _raw_post(api_client.app, api_keys["alice"], 1024, 1024 * 65536) == (413, 0)
    # chunked, no length: refused as soon as the count passes the limit
    status, pulled = _raw_post(api_client.app, api_keys["alice"], 1024, None)
    assert status == 413 and pulled <= limit // 65536 + 1, pulled
