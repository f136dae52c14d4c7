"""Webhook delivery no receiver can hurt: the SSRF filter judges the IPv4 inside every IPv4-embedding IPv6 form
(tested as a function with a stubbed resolver: nothing is sent anywhere), an answer's body is cut after 64 KiB, an
attempt has a wall-clock deadline however slowly the receiver trickles, and a real `styledrop webhooks` process
delivers another user's event while a trickling receiver holds its own. Receivers listen on 127.0.0.1 only."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from storage import webhooks as hookstore
from storage.db import make_engine, make_sessionmaker
from storage.models import WebhookDelivery, utcnow
from storage.settings import Settings
from storage.users import create_user
from testkit.stack import Stack, service_env
from testkit.webhooks import HostileReceiver
from worker.cli import commands
from worker.ops import reconciler, webhook_http
from worker.ops import webhooks as delivery

REFUSED = [
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::127.0.0.1", "::10.0.0.1",  # IPv4-compatible
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix: 127.0.0.1, 169.254.169.254
    "64:ff9b:1::808:808",  # NAT64 local-use prefix
    "2002:7f00:1::1", "2002:a00:1::",  # 6to4 of 127.0.0.1, 10.0.0.1
    "2001:0:808:808:0:0:80ff:fffe",  # Teredo: server 8.8.8.8, client 127.0.0.1
    "::1", "127.0.0.1", "169.254.169.254", "fd00::1",
]
ALLOWED = ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"]


def _stub(address: str):  # type: ignore[no-untyped-def]
    return lambda host, port: [ipaddress.ip_address(address)]


@pytest.mark.parametrize("address", REFUSED)
def test_ssrf_filter_unwraps_ipv4_embedded_in_ipv6(address: str) -> None:
    with pytest.raises(hookstore.WebhookRefused, match="loopback, private or link-local"):
        hookstore.check_url("https://hooks.example.com/in", allow_private=False, resolver=_stub(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_ssrf_filter_allows_public_addresses(address: str) -> None:
    got = hookstore.check_url("https://hooks.example.com/in", allow_private=False, resolver=_stub(address))
    assert got == [ipaddress.ip_address(address)]


def test_port_zero_is_refused_not_sent_to_the_default_port() -> None:
    with pytest.raises(hookstore.WebhookRefused, match="port 0"):
        hookstore.check_url("http://hooks.example.com:0/in", allow_private=True, resolver=_stub("8.8.8.8"))


def _settings(**over: object) -> Settings:
    return Settings(**{"webhook_allow_private": True, "webhook_timeout_seconds": 2.0, **over})  # type: ignore[arg-type]


def _post(url: str, settings: Settings) -> delivery.Attempt:
    return delivery.post_signed(url, '{"id": "gen_1"}', msg_id="msg_1", secret=hookstore.new_secret(),
                                event="completed", resource="generation", settings=settings)


def _wait(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_huge_answer_is_read_only_up_to_64_kib() -> None:
    receiver = HostileReceiver("huge", body_bytes=64 << 20)
    try:
        attempt = _post(receiver.url, _settings())
        assert attempt.ok and attempt.status == 200
        _wait(lambda: receiver.outcomes, "the receiver never finished its answer")
        # the sender hung up instead of taking 64 MiB; at most the socket buffers' worth was written
        assert receiver.outcomes == ["cut"] and receiver.sent[0] < (64 << 20)
    finally:
        receiver.close()
    assert webhook_http.MAX_RESPONSE_BYTES == 64 * 1024


def test_a_trickling_receiver_runs_into_the_attempts_deadline() -> None:
    # a byte every 0.3 s never trips a per-read timeout; 40 bytes (12 s) outlast the 1 s deadline
    receiver = HostileReceiver("trickle", interval=0.3, trickle_bytes=40)
    try:
        attempt = _post(receiver.url, _settings(webhook_timeout_seconds=1.0))
        assert not attempt.ok and attempt.status is None and "deadline" in (attempt.error or "")
        _wait(lambda: receiver.outcomes, "the trickle never ended")
        assert receiver.outcomes == ["cut"]
    finally:
        receiver.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def hooks_db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def _queue(factory, owner: str, url: str, n: int, *, age: float) -> list[str]:  # type: ignore[no-untyped-def]
    with factory() as s:
        rows = [WebhookDelivery(owner_id=owner, resource="generation", resource_id=f"g{i}{owner[:20]}",
                                event="completed", url=url, body="{}",
                                next_attempt_at=utcnow() - timedelta(seconds=age - i)) for i in range(n)]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, {})
    yield s
    s.stop()


def test_a_trickling_receiver_delays_only_its_own_deliveries(hooks_db: str, tmp_path: Path, stack: Stack) -> None:
    """User a's 6 events (older) go to a receiver that trickles for 20 s; user b's event is delivered by the
    `styledrop webhooks` process while a's answers are still trickling in."""
    slow = HostileReceiver("trickle", interval=0.5, trickle_bytes=40)
    fast = HostileReceiver("huge", body_bytes=0)
    engine = make_engine(hooks_db)
    factory = make_sessionmaker(engine)
    try:
        with factory() as s:
            a, b = create_user(s, "a").id, create_user(s, "b").id
            s.commit()
        _queue(factory, a, slow.url, 6, age=60)
        (mine,) = _queue(factory, b, fast.url, 1, age=10)
        stack.env = service_env(tmp_path / "data", DATABASE_URL=hooks_db, STYLEDROP_WEBHOOK_ALLOW_PRIVATE="true",
                                STYLEDROP_WEBHOOK_TIMEOUT_SECONDS="10", STYLEDROP_WEBHOOK_POLL_SECONDS="0.2")
        proc = stack.spawn("webhooks", "-m", "worker.cli", "webhooks")

        def delivered() -> bool:
            assert proc.poll() is None, stack.logs()
            with factory() as s:
                return s.scalar(select(WebhookDelivery.state).where(WebhookDelivery.id == mine)) == "delivered"

        _wait(delivered, f"user b's event was never delivered\n{stack.logs()}", timeout=90)
        # b's answer came while every one of a's answers was still trickling: none of them had ended
        assert fast.outcomes == ["completed"] and slow.outcomes == [] and slow.open >= 1
    finally:
        slow.close()
        fast.close()
        engine.dispose()


def test_styledrop_up_delivers_webhooks_in_a_child_process_not_in_the_supervisor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` hands delivery to a supervised `styledrop webhooks` child and starts its reconciler thread without the
    delivery loop, so no receiver's answer is read in the process whose death takes every child with it."""
    children: dict[str, list[str]] = {}
    loops: list[bool] = []

    child_env: dict[str, str] = {}

    class Recorder:
        def __init__(self, commands: dict[str, list[str]], *, env: dict[str, str], **_kw: object) -> None:
            children.update(commands)
            child_env.update(env)

        def run(self, _stop: object) -> int:
            return 0

    monkeypatch.setattr(commands, "Supervisor", Recorder)
    monkeypatch.setattr(reconciler, "start_thread", lambda *a, **kw: loops.append(kw["deliver_webhooks"]))
    monkeypatch.setattr(commands.signal, "signal", lambda *_a: None)
    monkeypatch.setenv("STYLEDROP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("STYLEDROP_PORT", raising=False)
    assert commands.main(["up", "--port", "1"]) == 0
    assert children["webhooks"][-3:] == ["-m", "worker.cli", "webhooks"] and loops == [False]
    # the children name the address webhook bodies link to; this process's environment is left as it was
    assert child_env["STYLEDROP_PORT"] == "1" and "STYLEDROP_PORT" not in os.environ
