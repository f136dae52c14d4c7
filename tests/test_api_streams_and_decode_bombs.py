"""One hostile user against a real uvicorn API process on embedded defaults (SQLite, file-system broker): 200 open
event streams, and concurrent decode bombs. No timed assertions: every request must
succeed (or be refused with a 4xx); the latencies and memory figures are printed for docs/reliability.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.api_process import ApiProcess, open_stream, process_memory, start_api
from testkit.images import decode_bomb, style_png
from tests.helpers.app import bearer


@pytest.fixture
def stream_api(tmp_path: Path) -> Iterator[ApiProcess]:
    with start_api(tmp_path, STYLEDROP_MAX_STREAMS_PER_USER="10", STYLEDROP_MAX_STREAMS_TOTAL="205") as api:
        yield api


def test_200_open_streams_hold_no_connection_and_are_bounded(stream_api: ApiProcess) -> None:
    api = stream_api
    keys = api.users(21)
    client = httpx.Client(base_url=api.base, timeout=90)
    jobs = []
    for key in keys[:20]:
        r = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink"},
                        files={"image": ("s.png", style_png(), "image/png")})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["job"]["id"])
    socks = []
    for key, job in zip(keys[:20], jobs, strict=True):
        for _ in range(10):
            sock, status = open_stream(api, key, job)
            assert status == 200
            socks.append(sock)
    assert len(socks) == 200
    # Under 200 open streams (more than the pool's 15 connections): the rest of the API answers, no 5xx.
    lat: dict[str, list[float]] = {"/healthz": [], "/readyz": [], "/v1/jobs": []}
    for _ in range(40):
        for path in lat:
            t0 = time.perf_counter()
            r = client.get(path, headers=bearer(keys[0]))
            lat[path].append(time.perf_counter() - t0)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
    for path, values in lat.items():
        values.sort()
        print(f"{path} under 200 streams: p50 {values[len(values) // 2] * 1000:.1f} ms, "
              f"p99 {values[int(0.99 * (len(values) - 1))] * 1000:.1f} ms")
    # the 11th stream of one user, and any past the server's total, are a 429 with a reason
    sock, status = open_stream(api, keys[0], jobs[0])
    assert status == 429
    sock.close()
    r = client.get(f"/v1/jobs/{jobs[0]}/events", headers={**bearer(keys[0]), "Accept": "text/event-stream"})
    assert r.status_code == 429 and r.json()["code"] == "too_many_streams" and r.headers["Retry-After"]
    assert "limit is 10" in r.json()["detail"]
    extra = client.post("/v1/styles", headers=bearer(keys[20]), data={"descriptor": "ink"},
                        files={"image": ("s.png", style_png(), "image/png")}).json()["job"]["id"]
    for _ in range(5):
        s, status = open_stream(api, keys[20], extra)
        assert status == 200
        socks.append(s)
    r = client.get(f"/v1/jobs/{extra}/events", headers={**bearer(keys[20]), "Accept": "text/event-stream"})
    assert r.status_code == 429 and "205 event streams open" in r.json()["detail"]
    # a stream sees events written after it opened, and ends when the job ends
    r = client.post(f"/v1/jobs/{jobs[1]}/cancel", headers=bearer(keys[1]))
    assert r.status_code == 202
    tail = socks[10].recv(65536)
    while b"event: end" not in tail:
        chunk = socks[10].recv(65536)
        assert chunk
        tail += chunk
    assert b'"to": "cancelled"' in tail or b'"to":"cancelled"' in tail, tail
    # closed streams give their places back
    for s in socks:
        s.close()
    deadline = time.monotonic() + 60
    while True:
        sock, status = open_stream(api, keys[0], jobs[0])
        sock.close()
        if status == 200:
            break
        assert status == 429 and time.monotonic() < deadline, "streams were not released after closing"
        time.sleep(0.5)
    client.close()


# --- decode bombs -------------------------------------------------------------------------------------------


@pytest.fixture
def bomb_api(tmp_path: Path) -> Iterator[ApiProcess]:
    # all 8 bombs decode at once (max_concurrent_decodes is what bounds them here, not the upload places)
    with start_api(tmp_path, STYLEDROP_MAX_CONCURRENT_UPLOADS_TOTAL="8") as api:
        yield api


def test_concurrent_decode_bombs_stay_within_a_memory_budget(bomb_api: ApiProcess) -> None:
    api = bomb_api
    keys = api.users(8)
    client = httpx.Client(base_url=api.base, timeout=120)
    warm = client.post("/v1/styles", headers=bearer(keys[7]), data={"descriptor": "ink"},
                       files={"image": ("s.png", style_png(), "image/png")})
    assert warm.status_code == 202
    png, jpeg = decode_bomb("PNG"), decode_bomb("JPEG")
    assert len(png) < 400_000 and len(jpeg) < 2_000_000  # small files...
    baseline = process_memory(api.pid, "VmRSS")
    results: list[Any] = [None] * 8

    def upload(i: int) -> None:
        data, name = (png, "b.png") if i < 4 else (jpeg, "b.jpg")
        results[i] = client.post("/v1/styles", headers=bearer(keys[i]), data={"descriptor": "ink"},
                                 files={"image": (name, data, "application/octet-stream")})

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = process_memory(api.pid, "VmHWM")
    growth = peak - baseline
    print(f"API RSS {baseline / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB under 4 PNG + 4 JPEG "
          f"36-megapixel uploads at once: +{growth / 2**20:.0f} MiB")
    for r in results[:4]:  # ...that decode to 36 megapixels: refused from the header, before decoding
        assert r.status_code == 422 and "at most" in r.json()["detail"], r.text
    for r in results[4:]:  # JPEG decodes at reduced scale (draft) within the budget
        assert r.status_code == 202, r.text
        assert (r.json()["style"]["width"], r.json()["style"]["height"]) == (3000, 3000)
    assert growth <= 1024 * 2**20, f"the API grew by {growth / 2**20:.0f} MiB"
    client.close()
