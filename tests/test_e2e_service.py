"""End to end over real HTTP with real Celery worker processes and the tiny model.

1. `python -m worker.cli up --model tiny` on embedded defaults (SQLite + file-system broker) in a temp data dir.
2. PostgreSQL + Redis: uvicorn and two `python -m worker.cli worker --queue ...` processes (integration).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import Stack, free_port, service_env, wait_http
from tests.helpers.db import API_REDIS_URL


def _train(client: httpx.Client, stack: Stack, color: tuple[int, int, int], descriptor: str) -> dict[str, Any]:
    r = client.post("/v1/styles", files={"image": ("style.png", style_png(color), "image/png")},
                    data={"descriptor": descriptor, "steps": "12", "seed": "5"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]["id"]
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.5)
    assert job["state"] == "succeeded", f"{job}\n{stack.logs()}"
    assert job["step"] == 12
    events = client.get(f"/v1/jobs/{job_id}/events").json()["items"]
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress and progress[-1]["payload"]["step"] == 12 and progress[-1]["payload"]["total"] == 12
    assert len([e for e in events if e["kind"] == "preview"]) == 2
    (adapter,) = [a for a in client.get("/v1/adapters").json()["items"] if a["job_id"] == job_id]
    data = client.get(f"/v1/adapters/{adapter['id']}/file").content
    header_len = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and 8 + header_len < len(data)  # a safetensors file: u64 header size, JSON header
    assert hashlib.sha256(data).hexdigest() == adapter["sha256"]
    return adapter


def _generate(client: httpx.Client, stack: Stack, adapter_id: str, prompt: str) -> None:
    r = client.post("/v1/generations", params={"wait": 60}, json={
        "prompt": prompt, "adapter_id": adapter_id, "steps": 3, "seed": 11, "num_images": 2, "guidance_scale": 3.0,
    }, timeout=90)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{stack.logs()}"
    gen = r.json()
    assert gen["state"] == "succeeded", gen
    for n in range(2):
        img = client.get(f"/v1/generations/{gen['id']}/images/{n}")
        assert img.status_code == 200 and img.content.startswith(b"\x89PNG")


@pytest.fixture
def embedded_stack(tmp_path: Path) -> Iterator[tuple[Stack, httpx.Client]]:
    port = free_port()
    stack = Stack(tmp_path, service_env(tmp_path / "data"))
    stack.spawn("up", "-m", "worker.cli", "up", "--model", "tiny", "--port", str(port))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_http(client, stack)
        yield stack, client
    finally:
        client.close()
        stack.stop()


def test_embedded_up_train_download_generate_and_hot_load(embedded_stack: tuple[Stack, httpx.Client]) -> None:
    stack, client = embedded_stack
    key = stack.cli("users", "create", "alice").strip().splitlines()[-1]
    assert key.startswith("sd_")
    assert "alice" in stack.cli("users", "list")
    client.headers["Authorization"] = f"Bearer {key}"
    first = _train(client, stack, (200, 40, 40), "red stripes")
    _generate(client, stack, first["id"], "a cat")
    # A second style trained while the generate worker is running is served at once, without a restart.
    second = _train(client, stack, (30, 160, 90), "green stripes")
    _generate(client, stack, second["id"], "a house")


@pytest.mark.integration
def test_postgres_redis_separate_processes(tmp_path: Path, pg_url: str, api_redis: Any) -> None:
    broker = API_REDIS_URL  # this run's own database, flushed before and after by api_redis
    port = free_port()
    stack = Stack(tmp_path, service_env(tmp_path / "data", DATABASE_URL=pg_url, BROKER_URL=broker))
    stack.spawn("api", "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port))
    stack.spawn("train", "-m", "worker.cli", "worker", "--queue", "train")
    stack.spawn("generate", "-m", "worker.cli", "worker", "--queue", "generate")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_http(client, stack)
        key = stack.cli("users", "create", "bob", "--admin").strip().splitlines()[-1]
        client.headers["Authorization"] = f"Bearer {key}"
        adapter = _train(client, stack, (60, 60, 220), "blue stripes")
        _generate(client, stack, adapter["id"], "a boat")
        from sqlalchemy import create_engine, text

        engine = create_engine(pg_url)
        with engine.connect() as conn:
            kinds = {row[0] for row in conn.execute(text("SELECT kind FROM workers"))}
            (sha,) = conn.execute(text("SELECT sha256 FROM adapters WHERE id = :i"), {"i": adapter["id"]}).one()
        engine.dispose()
        assert kinds == {"train", "generate"} and sha == adapter["sha256"]
    finally:
        client.close()
        stack.stop()
