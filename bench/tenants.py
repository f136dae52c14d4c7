"""Tenant-isolation benchmark (not a test): what one hostile user can cost another, each figure measured against a
baseline in the same run. Real processes on 127.0.0.1 only (a uvicorn API, a `styledrop webhooks` process), SQLite.

    python bench/tenants.py flood      another user's generation under a flood: batches it waits (fair vs FIFO)
    python bench/tenants.py webhooks   delivery process memory beside a 300 MB answer; another user's delivery
                                       delay beside a trickling receiver
    python bench/tenants.py uploads    API memory under 8 concurrent 5-image uploads (~19 MB images)
    python bench/tenants.py polls      another user's GET /v1/jobs p50/p99 under 100 waiting ?wait=60 requests
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
from service_stack import pct

from storage import claims
from storage.db import make_engine, make_sessionmaker, upgrade_to_head
from storage.models import Generation, WebhookDelivery, utcnow
from storage.queue_order import generation_queue_positions
from storage.users import create_user
from testkit.api_process import process_memory, start_api
from testkit.stack import Stack, service_env
from testkit.webhooks import HostileReceiver

MB = 1024 * 1024


def flood(batch: int) -> None:
    """Two `samples` calls of one user (30 prompts each) are queued, then another user's 1-image generation; the
    generate worker claims batches of `batch`. FIFO: the old oldest-first order, from the same rows."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/b.db"
        upgrade_to_head(url)
        factory = make_sessionmaker(make_engine(url))
        with factory() as s:
            flooder, other = create_user(s, "flood"), create_user(s, "other")
            t0 = utcnow() - timedelta(hours=1)
            s.add_all(Generation(owner_id=flooder.id, prompt="p", guidance_scale=3.0, steps=100, seed=i,
                                 num_images=4, queued_at=t0 + timedelta(seconds=i)) for i in range(60))
            mine = Generation(owner_id=other.id, prompt="q", guidance_scale=3.0, steps=1, seed=0,
                              queued_at=t0 + timedelta(seconds=100))
            s.add(mine)
            s.commit()
            fifo = 1 + sum(1 for g in s.query(Generation).all() if g.queued_at < mine.queued_at)
            position = generation_queue_positions(s, [mine])[mine.id]
            batches = 0
            while s.get(Generation, mine.id).state == "queued":  # type: ignore[union-attr]
                claims.claim_generations(s, limit=batch, worker_host="w")
                s.commit()
                batches += 1
        print(f"another user's 1-step generation behind 60 flood generations (240 images), batch {batch}:")
        print(f"  fair: queue position {position}, claimed in batch {batches} (waits {batches - 1} batches)")
        print(f"  FIFO (before): queue position {fifo}, claimed in batch {-(-fifo // batch)} "
              f"(waits {-(-fifo // batch) - 1} batches)")


def _webhooks_process(tmp: Path, url: str) -> tuple[Stack, int]:
    stack = Stack(tmp, service_env(tmp / "data", DATABASE_URL=url, STYLEDROP_WEBHOOK_ALLOW_PRIVATE="true",
                                   STYLEDROP_WEBHOOK_TIMEOUT_SECONDS="10", STYLEDROP_WEBHOOK_POLL_SECONDS="0.2"))
    proc = stack.spawn("webhooks", "-m", "worker.cli", "webhooks")
    time.sleep(3)  # imported and polling
    return stack, proc.pid


def _queue(factory, owner: str, url: str, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    with factory() as s:
        rows = [WebhookDelivery(owner_id=owner, resource="generation", resource_id=f"g{i}{owner[:20]}",
                                event="completed", url=url, body="{}") for i in range(n)]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


def _delivered(factory, ids: list[str]) -> bool:  # type: ignore[no-untyped-def]
    with factory() as s:
        return all(s.get(WebhookDelivery, i).state != "pending" for i in ids)  # type: ignore[union-attr]


def webhooks() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/b.db"
        upgrade_to_head(url)
        factory = make_sessionmaker(make_engine(url))
        with factory() as s:
            a, b = create_user(s, "a").id, create_user(s, "b").id
            s.commit()
        stack, pid = _webhooks_process(Path(tmp), url)
        try:
            warm = HostileReceiver("huge", body_bytes=1024)
            ids = _queue(factory, b, warm.url, 4)  # the process is up, imported and has delivered once
            while not _delivered(factory, ids):
                time.sleep(0.1)
            warm.close()
            huge = HostileReceiver("huge", body_bytes=300 * MB)
            before = process_memory(pid, "VmHWM")  # its peak so far (start-up included)
            ids = _queue(factory, a, huge.url, 4)
            while not _delivered(factory, ids):
                time.sleep(0.1)
            peak = process_memory(pid, "VmHWM")
            print(f"4 deliveries to a receiver answering 300 MB: `styledrop webhooks` peak RSS {before / MB:.0f} MB "
                  f"before -> {peak / MB:.0f} MB after (+{(peak - before) / MB:.0f} MB); answers "
                  f"{sorted(huge.outcomes)} (cut: the sender hung up after 64 KiB)")
            huge.close()
            slow = HostileReceiver("trickle", interval=2.0, trickle_bytes=1000)
            fast = HostileReceiver("huge", body_bytes=0)
            _queue(factory, a, slow.url, 6)
            time.sleep(0.5)  # a's attempts are in flight
            t0 = time.monotonic()
            (mine,) = _queue(factory, b, fast.url, 1)
            while not _delivered(factory, [mine]):
                time.sleep(0.02)
            print(f"another user's delivery beside a receiver trickling a byte every 2 s: delivered after "
                  f"{time.monotonic() - t0:.2f} s (the trickling attempts end at their 10 s deadline)")
            slow.close()
            fast.close()
        finally:
            stack.stop()


def _noise_png(side: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def uploads(side: int) -> None:
    images = [_noise_png(side, i) for i in range(5)]
    print(f"8 concurrent uploads of 5 images of {len(images[0]) / MB:.1f} MB ({side}x{side} noise PNGs):")
    with tempfile.TemporaryDirectory() as tmp, start_api(
            Path(tmp), STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER="20", STYLEDROP_MAX_UPLOAD_BYTES=str(20 * MB)) as api:
        keys = api.users(8)
        pid = api.stack.procs[0][0].pid
        before = process_memory(pid, "VmRSS")
        statuses: list[int] = []

        def upload(key: str) -> None:
            with httpx.Client(base_url=api.base, timeout=300) as c:
                files = [("image", (f"{n}.png", data, "image/png")) for n, data in enumerate(images)]
                statuses.append(c.post("/v1/styles", headers={"Authorization": f"Bearer {key}"},
                                       data={"descriptor": "noise"}, files=files).status_code)

        t0 = time.monotonic()
        threads = [threading.Thread(target=upload, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = process_memory(pid, "VmHWM")
        print(f"  statuses {sorted(statuses)} in {time.monotonic() - t0:.1f} s; API RSS {before / MB:.0f} MB -> "
              f"peak {peak / MB:.0f} MB (+{(peak - before) / MB:.0f} MB)")


def polls(n: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, start_api(
            Path(tmp), STYLEDROP_MAX_WAITERS_PER_USER=str(n), STYLEDROP_MAX_UNFINISHED_IMAGES_PER_USER="1000") as api:
        hostile, other = api.users(2)
        client = httpx.Client(base_url=api.base, timeout=120)
        auth = {"Authorization": f"Bearer {other}"}

        def sample() -> list[float]:
            lat = []
            for _ in range(requests):
                t0 = time.perf_counter()
                assert client.get("/v1/jobs", headers=auth).status_code == 200
                lat.append(time.perf_counter() - t0)
            return lat

        base = sample()
        waiting = [threading.Thread(target=lambda: httpx.post(
            f"{api.base}/v1/generations?wait=60", headers={"Authorization": f"Bearer {hostile}"},
            json={"prompt": "a"}, timeout=120)) for _ in range(n)]
        for t in waiting:
            t.start()
        time.sleep(5)  # all waiting (no generate worker runs: none finishes)
        loaded = sample()
        print(f"another user's GET /v1/jobs ({requests} requests), p50 / p99:")
        print(f"  no waiters: {pct(base, 50):.1f} / {pct(base, 99):.1f} ms")
        print(f"  {n} ?wait=60 waiters of one user: {pct(loaded, 50):.1f} / {pct(loaded, 99):.1f} ms "
              f"(p99 {pct(loaded, 99) / pct(base, 99):.2f}x)")
        for t in waiting:
            t.join()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["flood", "webhooks", "uploads", "polls"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--side", type=int, default=2520)
    ap.add_argument("--waiters", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    print(f"$ python bench/tenants.py {' '.join(sys.argv[1:])}")
    {"flood": lambda: flood(args.batch), "webhooks": webhooks, "uploads": lambda: uploads(args.side),
     "polls": lambda: polls(args.waiters, args.requests)}[args.case]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
