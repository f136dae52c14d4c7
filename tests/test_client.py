"""The Python client's own rules against a scripted transport (httpx.MockTransport): the error mapping, retries
after `Retry-After`, idempotency keys kept across retries, which requests are replayed after a lost connection,
listing pages followed through `next`, the event stream resumed from `Last-Event-ID`, and an adapter download
that is whole or nothing. tests/test_client_e2e.py runs the client against the real service."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import styledrop.client
from styledrop import (
    APIConnectionError,
    APIError,
    Client,
    ConflictError,
    IntegrityError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from styledrop._sse import parse_sse

BASE = "http://sd.test"
Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, code: str, detail: str, **extra: object) -> dict[str, object]:
    return {"type": "about:blank", "title": "T", "status": status, "detail": detail, "code": code,
            "instance": "/v1/x", **extra}


def job(state: str = "running", **extra: object) -> dict[str, object]:
    return {"id": "J", "style_id": "S", "state": state, "step": 1, "total_steps": 4, "progress": 0.25,
            "queued_at": "2026-01-01T00:00:00Z", **extra}


def gen(state: str = "queued", **extra: object) -> dict[str, object]:
    return {"id": "G", "state": state, "prompt": "a cat", "steps": 4, "seed": 1, "num_images": 1,
            "image_urls": [], **extra}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(styledrop.client, "_sleep", waited.append)
    return waited


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[Client, list[httpx.Request]]]]:
    made: list[Client] = []

    def _make(handler: Handler, **options: object) -> tuple[Client, list[httpx.Request]]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            request.read()
            seen.append(request)
            return handler(request)

        client = Client(BASE, "sd_test", http_client=httpx.Client(transport=httpx.MockTransport(record)),
                        **options)  # type: ignore[arg-type]
        made.append(client)
        return client, seen

    yield _make
    for c in made:
        c._http.close()


def test_an_error_answer_is_raised_by_status_with_the_problem_fields(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    answers = {
        "/v1/jobs/gone": (404, problem(404, "not_found", "job not found")),
        "/v1/jobs/done/cancel": (409, problem(409, "job_final", "the job has already succeeded")),
        "/v1/styles/bad": (422, problem(422, "validation_error", "steps: too big",
                                        errors=[{"field": "body.steps", "message": "too big", "type": "too_big"}])),
        "/v1/proxy": (502, "<html>Bad Gateway</html>"),
        "/v1/teapot": (418, problem(418, "teapot", "short and stout")),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[request.url.path]
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers={"Content-Type": "text/html"})
        return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})

    client, _ = make(handler, max_retries=0)
    with pytest.raises(NotFoundError) as missing:
        client.jobs.get("gone")
    assert (missing.value.status, missing.value.code, missing.value.detail) == (404, "not_found", "job not found")
    assert missing.value.instance == "/v1/x" and "not_found" in str(missing.value)
    with pytest.raises(ConflictError) as final:
        client.jobs.cancel("done")
    assert final.value.code == "job_final" and final.value.retry_after is None
    with pytest.raises(UnprocessableEntityError) as invalid:
        client.request("GET", "/v1/styles/bad")
    assert [(e.field, e.message, e.type) for e in invalid.value.errors] == [("body.steps", "too big", "too_big")]
    with pytest.raises(InternalServerError) as proxy:  # no problem body: the code is the reason phrase
        client.request("GET", "/v1/proxy")
    assert (proxy.value.code, proxy.value.title) == ("bad_gateway", "Bad Gateway")
    with pytest.raises(APIError) as other:
        client.request("GET", "/v1/teapot")
    assert type(other.value) is APIError and other.value.code == "teapot"
    assert sleeps == []


def test_429_and_503_are_retried_after_their_retry_after_with_the_same_idempotency_key(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    script = [
        httpx.Response(429, json=problem(429, "rate_limited", "slow down"), headers={"Retry-After": "3"}),
        httpx.Response(503, json=problem(503, "database_busy", "busy"), headers={"Retry-After": "1"}),
        httpx.Response(202, json=gen()),
    ]
    client, seen = make(lambda request: script.pop(0), max_retries=2)
    created = client.generations.create("a cat", seed=1)
    assert created.id == "G" and created.state == "queued"
    assert sleeps == [3.0, 1.0]
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1  # one key for every try of the one request
    uuid.UUID(keys.pop())  # generated: a UUID
    assert all(json.loads(r.content) == {"prompt": "a cat", "seed": 1} for r in seen)


def test_each_create_gets_its_own_key_and_a_given_key_is_sent_as_is(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    client, seen = make(lambda request: httpx.Response(202, json=gen()))
    client.generations.create("a cat")
    client.generations.create("a cat")
    client.generations.create("a cat", idempotency_key="mine-1")
    keys = [r.headers["Idempotency-Key"] for r in seen]
    assert keys[0] != keys[1] and keys[2] == "mine-1"


def test_a_retry_after_beyond_the_cap_is_raised_at_once_and_retries_run_out(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    long_wait = httpx.Response(429, json=problem(429, "too_many_jobs", "2 unfinished"), headers={"Retry-After": "900"})
    client, seen = make(lambda request: long_wait, max_retry_wait=60)
    with pytest.raises(RateLimitError) as refused:
        client.jobs.get("J")
    assert refused.value.code == "too_many_jobs" and refused.value.retry_after == 900.0
    assert len(seen) == 1 and sleeps == []

    busy = httpx.Response(503, json=problem(503, "unavailable", "down"))  # no Retry-After: exponential backoff
    client, seen = make(lambda request: busy, max_retries=3)
    with pytest.raises(ServiceUnavailableError):
        client.jobs.get("J")
    assert len(seen) == 4 and len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2] <= 8.0


def test_a_lost_connection_replays_only_what_is_safe_to_repeat(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    def flaky(ok: httpx.Response) -> Handler:
        calls = {"n": 0}

        def handler(request: httpx.Request) -> httpx.Response:
            calls["n"] += 1
            if calls["n"] == 1:
                raise httpx.ReadError("connection reset", request=request)
            return ok
        return handler

    client, seen = make(flaky(httpx.Response(200, json=job())))
    assert client.jobs.get("J").state == "running" and len(seen) == 2  # a GET goes again
    client, seen = make(flaky(httpx.Response(202, json=gen())))
    client.generations.create("a cat")  # a POST with an Idempotency-Key goes again
    assert len(seen) == 2 and seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    client, seen = make(flaky(httpx.Response(202, json=job(state="cancelling"))))
    with pytest.raises(APIConnectionError):  # a cancel without a key may have happened: not repeated
        client.jobs.cancel("J")
    assert len(seen) == 1

    proxy = httpx.Response(502, text="Bad Gateway")  # the service behind it may have acted
    client, seen = make(lambda request: proxy, max_retries=1)
    with pytest.raises(InternalServerError):
        client.jobs.cancel("J")
    assert len(seen) == 1
    with pytest.raises(InternalServerError):
        client.jobs.get("J")
    assert len(seen) == 3  # the GET once more


def test_listings_follow_next_and_keep_the_key_on_the_clients_own_origin(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "sd.test"  # a `next` on the public origin is re-based here
        assert request.headers["Authorization"] == "Bearer sd_test"
        offset = int(request.url.params.get("offset", "0"))
        nxt = f"https://public.example/v1/jobs?limit=2&offset={offset + 2}" if offset < 4 else None
        return httpx.Response(200, json={"items": [job(id=f"J{offset + i}") for i in range(2)], "next": nxt})

    client, seen = make(handler)
    page = client.jobs.list(limit=2)
    assert [j.id for j in page.items] == ["J0", "J1"] and page.next is not None
    assert [j.id for j in page] == [f"J{i}" for i in range(6)]
    assert [r.url.params.get("offset") for r in seen] == [None, "2", "4"]


def test_event_pages_follow_their_cursor_in_next(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params.get("after", "0"))
        events = [{"id": after + 1, "job_id": "J", "kind": "log", "payload": {"n": after + 1},
                   "created_at": "2026-01-01T00:00:00+00:00"}]
        nxt = f"/v1/jobs/J/events?after={after + 1}&limit=1" if after < 2 else None
        return httpx.Response(200, json={"items": events, "next": nxt})

    client, _ = make(handler)
    assert [e.id for e in client.jobs.events("J", limit=1)] == [1, 2, 3]


def test_the_sse_parser_reads_what_the_standard_says() -> None:
    lines = [": ping", "retry: 1500", "", "id: 7", "event: progress", "data: {\"a\":", "data:1}", "",
             "event: end", "data: {}", ""]
    events = list(parse_sse(lines))
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [
        ("message", "", None, 1500), ("progress", '{"a":\n1}', "7", None), ("end", "{}", "7", None)]


def test_the_event_stream_resumes_after_a_drop_from_the_last_event(make, sleeps) -> None:  # type: ignore[no-untyped-def]
    def sse(*events: tuple[int | None, str, dict[str, object]]) -> bytes:
        out = "retry: 250\n\n"
        for event_id, kind, data in events:
            out += (f"id: {event_id}\n" if event_id else "") + f"event: {kind}\ndata: {json.dumps(data)}\n\n"
        return out.encode()

    def ev(n: int, kind: str) -> tuple[int, str, dict[str, object]]:
        return n, kind, {"id": n, "job_id": "J", "kind": kind, "payload": {"step": n},
                         "created_at": "2026-01-01T00:00:00Z"}

    bodies = [sse(ev(1, "state"), ev(2, "progress")),  # the connection drops here: no `end`
              sse(ev(3, "progress"), ev(4, "state"), (None, "end", {"state": "succeeded"}))]
    client, seen = make(lambda request: httpx.Response(200, content=bodies.pop(0),
                                                       headers={"Content-Type": "text/event-stream"}))
    events = list(client.jobs.stream("J"))
    assert [(e.id, e.kind, e.payload["step"]) for e in events] == [(1, "state", 1), (2, "progress", 2),
                                                                    (3, "progress", 3), (4, "state", 4)]
    assert "Last-Event-ID" not in seen[0].headers and seen[1].headers["Last-Event-ID"] == "2"
    assert seen[0].headers["Accept"] == "text/event-stream" and sleeps == [0.25]


def test_wait_follows_retry_after_and_gives_up_with_the_last_state(make, sleeps, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    states = iter(["queued", "running", "succeeded"])
    client, seen = make(lambda request: httpx.Response(200, json=gen(state=next(states)), headers={"Retry-After": "2"}))
    done = client.generations.wait("G", timeout=None)
    assert done.succeeded and done.done and len(seen) == 3 and sleeps == [2.0, 2.0]

    clock = iter([0.0, 0.0, 5.0])  # the deadline, one poll within it, then past it
    monkeypatch.setattr(styledrop.client.time, "monotonic", lambda: next(clock))
    client, _ = make(lambda request: httpx.Response(200, json=job(state="running")))
    with pytest.raises(WaitTimeoutError) as late:
        client.jobs.wait("J", timeout=3, poll_interval=1)
    assert late.value.last.state == "running" and isinstance(late.value, TimeoutError)


def test_an_adapter_download_is_whole_and_checked_or_nothing(make, sleeps, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(range(256)) * 64
    recorded = {"sha": hashlib.sha256(data).hexdigest()}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={
            "X-Content-SHA256": recorded["sha"],
            "Content-Disposition": 'attachment; filename="../../evil.safetensors"'})

    client, _ = make(handler)
    into_folder = client.adapters.download("A", tmp_path)
    assert into_folder == tmp_path / "evil.safetensors" and into_folder.read_bytes() == data  # a bare name only
    target = tmp_path / "style.safetensors"
    target.write_bytes(b"the previous file")
    recorded["sha"] = "0" * 64
    with pytest.raises(IntegrityError):
        client.adapters.download("A", target)
    assert target.read_bytes() == b"the previous file"  # untouched, and no part file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.safetensors", "style.safetensors"]


def test_a_client_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STYLEDROP_API_KEY", raising=False)
    with pytest.raises(Exception, match="STYLEDROP_API_KEY"):
        Client(BASE)
    monkeypatch.setenv("STYLEDROP_API_KEY", "sd_env")
    with Client(BASE) as client:
        assert client._headers["Authorization"] == "Bearer sd_env"


def test_a_webhook_delivery_signed_by_the_service_verifies_and_a_changed_one_does_not() -> None:
    from storage.webhooks import new_secret, sign

    secret, body, stamp = new_secret(), '{"id": "G", "state": "succeeded"}', 1_800_000_000
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(stamp),
               "Webhook-Signature": "v1,bm90IHRoaXMgb25l " + sign(secret, "msg_1", stamp, body)}  # any listed one
    verify = styledrop.client.Webhooks.verify
    assert verify(secret, headers, body.encode(), now=stamp + 10)
    assert not verify(secret, headers, body.replace("succeeded", "failed"), now=stamp)
    assert not verify(secret, {**headers, "Webhook-Id": "msg_2"}, body, now=stamp)
    assert not verify(new_secret(), headers, body, now=stamp)
    assert not verify(secret, headers, body, now=stamp + 301)  # a replay outside the tolerance
    assert not verify(secret, {k: v for k, v in headers.items() if k != "Webhook-Signature"}, body, now=stamp)
