"""Feedback rounds end to end over real HTTP with real worker processes (`styledrop up --model tiny`: SQLite, the
folder broker, a train and a generate worker), the tiny model and the tiny CLIP: samples → a human selection →
the round's job → v2 → a generation naming v2; then an automatic round → v3; every version and image scored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import Stack, free_port, service_env, wait_http

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[Stack, httpx.Client]]:
    port = free_port()
    stack = Stack(tmp_path, service_env(tmp_path / "data"))
    stack.spawn("up", "-m", "worker.cli", "up", "--model", "tiny", "--port", str(port))
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_http(c, stack)
        c.headers["Authorization"] = f"Bearer {stack.cli('users', 'create', 'carol').strip().splitlines()[-1]}"
        yield stack, c
    finally:
        c.close()
        stack.stop()


def _wait(c: httpx.Client, stack: Stack, path: str, final: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        row = c.get(path).json()
        if row["state"] in final:
            return row
        time.sleep(0.5)
    raise AssertionError(f"{path} not final: {row}\n{stack.logs()}")


def _job_done(c: httpx.Client, stack: Stack, job_id: str) -> dict[str, Any]:
    job = _wait(c, stack, f"/v1/jobs/{job_id}", {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", f"{job}\n{stack.logs()}"
    return job


def _scored(v: dict[str, Any]) -> bool:
    return isinstance(v["text_score"], float) and isinstance(v["style_score"], float)


def test_human_then_automatic_round_through_the_api(client: tuple[Stack, httpx.Client]) -> None:
    stack, c = client
    r = c.post("/v1/styles", files={"image": ("s.png", style_png((200, 40, 40)), "image/png")},
               data={"descriptor": "red stripes", "steps": "6", "seed": "1"})
    assert r.status_code == 202, r.text
    style = r.json()["style"]["id"]
    _job_done(c, stack, r.json()["job"]["id"])
    (v1,) = c.get(f"/v1/styles/{style}/versions").json()["items"]
    assert v1["version"] == 1 and v1["is_default"] and _scored(v1)

    # Round-1 samples over the feedback prompts; the user picks two images.
    samples = c.post(f"/v1/styles/{style}/samples", json={"prompts": 2, "images_per_prompt": 2, "steps": 3})
    assert samples.status_code == 202, samples.text
    assert (samples.json()["version"], samples.json()["total"], samples.json()["next"]) == (1, 2, None)
    deadline = time.monotonic() + 180  # the set's progress is what a page polls
    while (now := c.get(f"/v1/styles/{style}/samples").json())["done"] < 2 and time.monotonic() < deadline:
        assert 0 <= now["done"] <= now["total"] == 2
        time.sleep(0.5)
    assert (now["done"], now["progress"], now["eta_seconds"]) == (2, 1.0, 0.0), f"{now}\n{stack.logs()}"
    assert [g["id"] for g in now["items"]] == [g["id"] for g in samples.json()["items"]]
    gens = now["items"]
    assert all(g["state"] == "succeeded" and g["adapter_id"] == v1["id"] for g in gens), gens
    assert all(len(g["text_scores"]) == 2 and len(g["style_scores"]) == 2 for g in gens)
    selection = [{"generation_id": gens[0]["id"], "index": 1}, {"generation_id": gens[1]["id"], "index": 0}]
    r = c.post(f"/v1/styles/{style}/rounds", json={"mode": "human", "selection": selection, "steps": 6})
    assert r.status_code == 202, r.text
    job = _job_done(c, stack, r.json()["id"])
    events = c.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    assert [e["payload"]["step"] for e in events if e["kind"] == "progress"][-1] == 6
    v1_again, v2 = c.get(f"/v1/styles/{style}/versions").json()["items"]
    assert v2["version"] == 2 and v2["job_id"] == job["id"] and v2["is_default"] and _scored(v2)
    assert v2["sha256"] != v1_again["sha256"]

    r = c.post("/v1/generations", params={"wait": 60}, timeout=90,
               json={"prompt": "a boat", "style_id": style, "version": 2, "steps": 3, "seed": 4})
    assert r.status_code == 200, r.text
    gen = r.json()
    assert gen["state"] == "succeeded" and gen["adapter_id"] == v2["id"] and len(gen["text_scores"]) == 1
    assert c.get(f"/v1/generations/{gen['id']}/images/0").content.startswith(b"\x89PNG")

    # An automatic round renders the default (v2), keeps the CLIP-best per prompt and trains v3.
    r = c.post(f"/v1/styles/{style}/rounds", json={"mode": "automatic", "prompts": 2, "per_prompt": 2,
                                                    "steps": 4})
    assert r.status_code == 202 and r.json()["params"]["round"]["adapter_id"] == v2["id"], r.text
    job = _job_done(c, stack, r.json()["id"])
    events = c.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    (picks,) = [e["payload"]["picks"] for e in events if e["kind"] == "picks"]
    assert picks == job["picks"] and len(picks) == 2 and job["phase"] is None  # a phase only while it runs
    assert all(c.get(p["image_url"]).content.startswith(b"\x89PNG") for p in picks)
    assert next(e["payload"]["phase"] for e in events if e["kind"] == "phase") == "rendering_candidates"
    versions = c.get(f"/v1/styles/{style}/versions").json()["items"]
    assert [v["version"] for v in versions] == [1, 2, 3] and _scored(versions[2])

    # The user keeps v1 as the default after comparing scores.
    r = c.patch(f"/v1/styles/{style}", json={"default_version": 1})
    assert r.status_code == 200 and r.json()["default_version"] == 1
    r = c.post("/v1/generations", params={"wait": 60}, timeout=90,
               json={"prompt": "a boat", "style_id": style, "steps": 2, "seed": 4})
    assert r.json()["adapter_id"] == v1["id"]
