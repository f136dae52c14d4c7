"""Hostile-user benchmark (not a test): one uvicorn API process on embedded defaults (SQLite, file-system broker)
in a temp dir, measured against itself in the same run.

1. `/healthz` and `GET /v1/jobs` latency (p50/p99 of N requests) with no streams open (the baseline), then with
   200 open `GET /v1/jobs/{id}/events` streams (20 users x 10), and the ratio.
2. JSON bodies over the 64 KiB limit (with Content-Length, and chunked without one): status and time to refuse.
3. The API process's resident memory before and its peak (VmHWM) during 4 concurrent 6000x6000 PNG uploads
   (150 KB files), then 4 concurrent 6000x6000 JPEG uploads.

    python bench/hostile.py --requests 200
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from service_stack import pct

from testkit.api_process import open_stream, process_memory, start_api
from testkit.images import decode_bomb, style_png


def timed(client: httpx.Client, n: int, path: str, headers: dict[str, str]) -> tuple[list[float], set[int]]:
    lat, statuses = [], set()
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, headers=headers)
        lat.append(time.perf_counter() - t0)
        statuses.add(r.status_code)
    return lat, statuses


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--streams", type=int, default=200)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"$ python {' '.join(shlex.quote(a) for a in sys.argv)}   (commit {commit})")
    with tempfile.TemporaryDirectory() as tmp, start_api(
            Path(tmp), STYLEDROP_MAX_STREAMS_PER_USER="10",
            STYLEDROP_MAX_STREAMS_TOTAL=str(args.streams + 10)) as api:
        users = max(1, args.streams // 10)
        keys = api.users(users + 4)
        client = httpx.Client(base_url=api.base, timeout=120)
        auth = {"Authorization": f"Bearer {keys[0]}"}
        jobs = []
        for key in keys[:users]:
            r = client.post("/v1/styles", headers={"Authorization": f"Bearer {key}"}, data={"descriptor": "ink"},
                            files={"image": ("s.png", style_png(), "image/png")})
            jobs.append(r.json()["job"]["id"])

        print("\n## 1. latency under open event streams")
        base: dict[str, list[float]] = {}
        for path in ("/healthz", "/v1/jobs"):
            base[path], st = timed(client, args.requests, path, auth)
            print(f"{path:10s} 0 streams:   p50 {pct(base[path], 50):7.1f} ms  p99 {pct(base[path], 99):7.1f} ms  "
                  f"statuses {sorted(st)}")
        socks = []
        t0 = time.perf_counter()
        for i in range(args.streams):
            sock, status = open_stream(api, keys[i // 10], jobs[i // 10])
            assert status == 200, status
            socks.append(sock)
        print(f"opened {len(socks)} streams in {time.perf_counter() - t0:.1f} s")
        for path in ("/healthz", "/v1/jobs"):
            lat, st = timed(client, args.requests, path, auth)
            print(f"{path:10s} {len(socks)} streams: p50 {pct(lat, 50):7.1f} ms  p99 {pct(lat, 99):7.1f} ms  "
                  f"statuses {sorted(st)}  p99 ratio to 0 streams {pct(lat, 99) / pct(base[path], 99):.2f}x")
        for s in socks:
            s.close()

        print("\n## 2. JSON bodies over the limit")
        headers = {**auth, "Content-Type": "application/json"}
        for size in (64 * 1024 + 1, 1 << 20, 20 << 20, 40 << 20):
            body = b'{"prompt": "' + b"a" * size + b'"}'
            for chunked in (False, True):
                content: Any = body if not chunked else iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
                t0 = time.perf_counter()
                r = client.post("/v1/generations", headers=headers, content=content)
                dt = time.perf_counter() - t0
                print(f"{len(body):>10d} bytes {'chunked' if chunked else 'Content-Length'}: {r.status_code} in "
                      f"{dt * 1000:.1f} ms (client send included); answer {len(r.content)} bytes")

        print("\n## 3. memory under concurrent decode bombs")
        png, jpeg = decode_bomb("PNG"), decode_bomb("JPEG")
        for name, data in (("PNG", png), ("JPEG", jpeg)):
            before = process_memory(api.pid, "VmRSS")
            results: list[int] = []

            def upload(i: int, data: bytes = data, results: list[int] = results) -> None:
                r = client.post("/v1/styles", headers={"Authorization": f"Bearer {keys[users + i]}"},
                                data={"descriptor": "ink"}, files={"image": ("b", data, "application/octet-stream")})
                results.append(r.status_code)

            threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            peak = process_memory(api.pid, "VmHWM")
            print(f"4 x 6000x6000 {name} ({len(data)} bytes each): statuses {sorted(results)}; RSS before "
                  f"{before / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB (+{(peak - before) / 2**20:.0f} MiB)")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
