"""End to end over real HTTP with real Celery worker processes and the tiny model.

1. `python -m worker.cli up --model tiny` on embedded defaults (SQLite + file-system broker) in a temp data dir.
2. PostgreSQL + Redis: uvicorn and two `python -m worker.cli worker --queue ...` processes (integration).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_REDIS_URL, worker_free_port, worker_style_png

REPO = Path(__file__).resolve().parent.parent


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEDROP_") and k not in
           {"DATABASE_URL", "BROKER_URL"}}
    env.update({
        "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
        "STYLEDROP_DATA_DIR": str(data_dir), "STYLEDROP_MODEL": "tiny", "STYLEDROP_DEVICE": "cpu",
        "STYLEDROP_CHECKPOINT_EVERY": "4", "STYLEDROP_PROGRESS_EVERY": "2", "STYLEDROP_RECONCILE_EVERY": "2",
        "STYLEDROP_PREVIEW_STEPS": "2", "STYLEDROP_RATE_LIMIT_PER_MINUTE": "10000",
    })
    env.update(extra)
    return env


class Stack:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen([sys.executable, *args], cwd=self.tmp, env=self.env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        return proc

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=self.tmp, env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def logs(self) -> str:
        return "\n".join(f"===== {log.name}\n{log.read_text(errors='replace')[-4000:]}" for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is self.procs[0][0] else signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_http(client: httpx.Client, stack: Stack, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, _ in stack.procs:
            assert proc.poll() is None, f"a process exited early\n{stack.logs()}"
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"API did not come up\n{stack.logs()}")


def _train(client: httpx.Client, stack: Stack, color: tuple[int, int, int], descriptor: str) -> dict[str, Any]:
    r = client.post("/v1/styles", files={"image": ("style.png", worker_style_png(color), "image/png")},
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
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress and progress[-1]["payload"]["step"] == 12 and progress[-1]["payload"]["total"] == 12
    assert len([e for e in events if e["kind"] == "preview"]) == 2
    (adapter,) = [a for a in client.get("/v1/adapters").json() if a["job_id"] == job_id]
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
    port = worker_free_port()
    stack = Stack(tmp_path, _env(tmp_path / "data"))
    stack.spawn("up", "-m", "worker.cli", "up", "--model", "tiny", "--port", str(port))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait_http(client, stack)
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
    port = worker_free_port()
    stack = Stack(tmp_path, _env(tmp_path / "data", DATABASE_URL=pg_url, BROKER_URL=broker))
    stack.spawn("api", "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port))
    stack.spawn("train", "-m", "worker.cli", "worker", "--queue", "train")
    stack.spawn("generate", "-m", "worker.cli", "worker", "--queue", "generate")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait_http(client, stack)
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
