"""Webhooks against a real HTTP receiver on 127.0.0.1: Standard Webhooks signatures, retries
after a 500, at-least-once delivery with a stable event id, event filters, progress throttling, and refusal of
private addresses (when set and again at delivery). State changes go through storage.jobs (the functions the
workers call) and delivery through worker.ops.webhooks, on the real databases."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from storage import claims
from storage import jobs as jobstore
from storage import webhooks as hookstore
from storage.models import JobEvent, WebhookDelivery, utcnow
from testkit.webhooks import Receiver, verify
from worker.ops import webhooks as delivery


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooks_client(api_client):  # type: ignore[no-untyped-def]
    """The API with private webhook addresses allowed (the receiver is on 127.0.0.1) and fast retries."""
    api_client.app.state.settings = api_client.app.state.settings.model_copy(update={
        "webhook_allow_private": True, "webhook_retry_base_seconds": 0.05, "webhook_timeout_seconds": 2.0})
    return api_client


def deliver_until_settled(client: Any, rounds: int = 40) -> None:
    """Run delivery passes (the loop's body) until nothing is pending."""
    factory, settings = client.app.state.sessionmaker, client.app.state.settings
    for _ in range(rounds):
        delivery.deliver_due(factory, settings)
        with factory() as s:
            if s.scalar(select(WebhookDelivery.id).where(WebhookDelivery.state == "pending").limit(1)) is None:
                return
        time.sleep(0.06)
    raise AssertionError("webhook deliveries still pending")


def _style(client: Any, key: str, **fields: Any) -> dict[str, Any]:
    from testkit.images import png_bytes

    resp = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink", **fields},
                       files={"image": ("s.png", png_bytes(), "image/png")})
    assert resp.status_code == 202, resp.text
    return resp.json()["job"]


def test_job_webhooks_signed_retried_after_500_and_visible_in_events(hooks_client, api_keys, receiver) -> None:
    client, key = hooks_client, api_keys["alice"]
    job = _style(client, key, webhook=receiver.url)
    assert job["webhook"] == receiver.url and job["webhook_events_filter"] is None
    factory = client.app.state.sessionmaker
    receiver.plan = [(500, 0.0)]  # the first delivery (start) fails once
    with factory() as s:  # what the train worker does
        assert jobstore.transition(s, job["id"], expected="queued", new="running", started_at=utcnow())
        jobstore.add_event(s, job["id"], "progress", {"step": 1, "total": 12})
        jobstore.add_event(s, job["id"], "progress", {"step": 2, "total": 12})  # within 5 s: not sent
        s.commit()
        jobstore.transition(s, job["id"], expected="running", new="succeeded", finished_at=utcnow(), step=12)
        s.commit()
    deliver_until_settled(client)

    secret = client.get("/v1/webhooks/secret", headers=bearer(key)).json()["secret"]
    assert secret.startswith("whsec_")
    assert all(verify(secret, h, b) for h, b in receiver.requests)
    ids = [h["webhook-id"] for h, _ in receiver.requests]
    events = [h["styledrop-event"] for h, _ in receiver.requests]
    assert sorted(events) == ["completed", "progress", "start", "start"]  # start twice: once answered 500
    assert len(set(ids)) == 3 and ids.count(ids[events.index("start")]) == 2  # the retry kept its id
    assert all(h["content-type"] == "application/json" for h, _ in receiver.requests)
    assert all(h["host"] == receiver.url.split("/")[2] for h, _ in receiver.requests)
    bodies = {e: json.loads(b) for (h, b), e in zip(receiver.requests, events, strict=True)}
    assert bodies["start"]["state"] == "running" and bodies["progress"]["state"] == "running"
    # the completed body is the job as GET returns it
    assert bodies["completed"] == client.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).json()

    listed = client.get(f"/v1/jobs/{job['id']}/events?limit=1000", headers=bearer(key)).json()["items"]
    attempts = [e["payload"] for e in listed if e["kind"] == "webhook"]
    assert [(a["event"], a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
        ("start", 1, "retrying", 500), ("progress", 1, "delivered", 200), ("completed", 1, "delivered", 200),
        ("start", 2, "delivered", 200)]
    assert len({a["webhook_id"] for a in attempts}) == 3
    assert "next_attempt_at" in attempts[0] and attempts[0]["error"] == "the receiver answered 500"
    # the secret is stable until rotated; rotation gives a new one
    assert client.get("/v1/webhooks/secret", headers=bearer(key)).json()["secret"] == secret
    assert client.post("/v1/webhooks/secret/rotate", headers=bearer(key)).json()["secret"] != secret


def test_lost_answer_is_delivered_again_with_the_same_id(hooks_client, api_keys, receiver) -> None:
    """The receiver gets the event but its answer never arrives (a timeout): at least once, same webhook-id."""
    client = hooks_client  # 2 s per attempt
    gen = client.post("/v1/generations", headers=bearer(api_keys["bob"]),
                      json={"prompt": "a cat", "webhook": receiver.url, "webhook_events_filter": ["completed"]})
    assert gen.status_code == 202, gen.text
    assert gen.json()["webhook_events_filter"] == ["completed"]
    factory = client.app.state.sessionmaker
    with factory() as s:  # what the generate worker does; "start" and "progress" are filtered out
        claims.claim_generations(s, limit=1, worker_host="w")
        jobstore.record_generation_step(s, gen.json()["id"], 12, "w")
        jobstore.transition_generation(s, gen.json()["id"], expected="running", new="succeeded",
                                       image_keys=["images/x.png"], finished_at=utcnow())
        s.commit()
    receiver.plan = [(200, 5.0)]  # answers after the sender gave up
    deliver_until_settled(client)
    assert len(receiver.requests) == 2
    (h1, b1), (h2, b2) = receiver.requests
    assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2
    assert h1["styledrop-resource"] == "generation" and h1["styledrop-event"] == "completed"
    body = json.loads(b2)
    # no STYLEDROP_PUBLIC_URL here: the worker has no request, and names the address `styledrop up` serves on
    image = f"http://127.0.0.1:8000/v1/generations/{gen.json()['id']}/images/0"
    assert body["state"] == "succeeded" and body["image_urls"] == [image]
    got = client.get(f"/v1/generations/{gen.json()['id']}", headers=bearer(api_keys["bob"])).json()
    assert got["image_urls"] == [image.replace("http://127.0.0.1:8000", "http://testserver")]
    assert body == {**got, "image_urls": [image]}
    with factory() as s:
        row = s.scalars(select(WebhookDelivery)).one()
        assert row.state == "delivered" and row.attempts == 2 and row.last_status == 200


def test_private_addresses_refused_by_default_and_at_delivery(api_client, api_keys, receiver, monkeypatch) -> None:
    key = bearer(api_keys["alice"])
    for url in (receiver.url, "http://localhost:9/x", "http://[::1]/x", "http://169.254.169.254/latest",
                "http://10.1.2.3/", "ftp://example.com/x", "http://bad host/"):
        resp = api_client.post("/v1/generations", headers=key, json={"prompt": "x", "webhook": url})
        assert resp.status_code == 422, url
        assert resp.json()["code"] == "webhook_refused", url
    from testkit.images import png_bytes

    style = api_client.post("/v1/styles", headers=key, data={"descriptor": "ink", "webhook": receiver.url},
                            files={"image": ("s.png", png_bytes(), "image/png")})
    assert style.status_code == 422 and "private" in style.json()["detail"]
    bad_filter = api_client.post("/v1/generations", headers=key,
                                 json={"prompt": "x", "webhook": "http://a/", "webhook_events_filter": ["done"]})
    assert bad_filter.status_code == 422
    mapped = [ipaddress.ip_address("::ffff:127.0.0.1")]
    with pytest.raises(hookstore.WebhookRefused):
        hookstore.check_url("http://x.test/", allow_private=False, resolver=lambda h, p: mapped)
    public = [ipaddress.ip_address("93.184.216.34")]
    assert hookstore.check_url("https://x.test/", allow_private=False, resolver=lambda h, p: public) == public

    # DNS rebinding: the name was public when the webhook was set and points at the receiver at delivery time
    answers = {"hooks.example.test": public}
    monkeypatch.setattr(hookstore, "resolve", lambda host, port: answers[host])
    gen = api_client.post("/v1/generations", headers=key,
                          json={"prompt": "x", "webhook": "http://hooks.example.test/in"})
    assert gen.status_code == 202, gen.text
    answers["hooks.example.test"] = [ipaddress.ip_address("127.0.0.1")]
    factory, settings = api_client.app.state.sessionmaker, api_client.app.state.settings
    with factory() as s:
        claims.claim_generations(s, limit=1, worker_host="w")
        s.commit()
    outcomes = delivery.deliver_due(factory, settings)
    assert list(outcomes.values()) == ["retrying"] and receiver.requests == []
    with factory() as s:
        row = s.scalars(select(WebhookDelivery)).one()
        assert row.last_status is None and (row.last_error or "").startswith("refused:")
        assert "127.0.0.1" in row.last_error


def test_attempts_give_up_after_the_maximum(hooks_client, api_keys, receiver) -> None:
    client = hooks_client
    client.app.state.settings = client.app.state.settings.model_copy(update={"webhook_max_attempts": 3})
    job = _style(client, api_keys["alice"], webhook=receiver.url, webhook_events_filter="start,completed")
    assert job["webhook_events_filter"] == ["start", "completed"]
    receiver.plan = [(503, 0.0)] * 10
    factory = client.app.state.sessionmaker
    with factory() as s:
        jobstore.transition(s, job["id"], expected="queued", new="running")
        jobstore.add_event(s, job["id"], "progress", {"step": 1})  # filtered out
        s.commit()
    deliver_until_settled(client)
    assert len(receiver.requests) == 3 and {h["styledrop-event"] for h, _ in receiver.requests} == {"start"}
    with factory() as s:
        row = s.scalars(select(WebhookDelivery)).one()
        assert row.state == "failed" and row.attempts == 3 and row.last_status == 503
        outcomes = [e.payload["outcome"] for e in s.scalars(
            select(JobEvent).where(JobEvent.job_id == job["id"], JobEvent.kind == "webhook").order_by(JobEvent.id))]
    assert outcomes == ["retrying", "retrying", "failed"]
    assert delivery.retry_delay(client.app.state.settings, 3) == pytest.approx(0.05 * 16)


def test_webhook_body_has_public_urls_and_the_style_and_version(hooks_client, api_keys, receiver) -> None:
    """With STYLEDROP_PUBLIC_URL the body's URLs start with it, as the API's answers do, and a generation made with
    style_id + version names them."""
    from tests.helpers.versions import style_with_versions

    client = hooks_client
    client.app.state.settings = client.app.state.settings.model_copy(
        update={"public_url": "https://styledrop.example.com"})
    style_id, (v1, _) = style_with_versions(client, api_keys["bob"], 2)
    gen = client.post("/v1/generations", headers=bearer(api_keys["bob"]), json={
        "prompt": "a cat", "style_id": style_id, "version": 1, "webhook": receiver.url,
        "webhook_events_filter": ["completed"]})
    assert gen.status_code == 202, gen.text
    assert gen.headers["Location"] == f"https://styledrop.example.com/v1/generations/{gen.json()['id']}"
    with client.app.state.sessionmaker() as s:
        claims.claim_generations(s, limit=1, worker_host="w")
        jobstore.transition_generation(s, gen.json()["id"], expected="running", new="succeeded",
                                       image_keys=["images/x.png", "images/y.png"], finished_at=utcnow())
        s.commit()
    deliver_until_settled(client)
    ((_, raw),) = receiver.requests
    body = json.loads(raw)
    assert body["image_urls"] == [f"https://styledrop.example.com/v1/generations/{gen.json()['id']}/images/{n}"
                                  for n in (0, 1)]
    assert (body["style_id"], body["version"], body["adapter_id"]) == (style_id, 1, v1)
    assert body == client.get(f"/v1/generations/{gen.json()['id']}", headers=bearer(api_keys["bob"])).json()
