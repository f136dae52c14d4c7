"""Enqueue latency of POST /v1/generations and POST /v1/styles under 32 concurrent clients (PostgreSQL + Redis).

Only the API runs (one uvicorn process, as `styledrop up` and docker-compose start it); no worker consumes, so the
figure is the API's own cost: authenticate, validate (and for styles decode + re-encode the upload), commit the
row, send the task to Redis, record the send. Baseline in the same run: `GET /healthz` under the same load, the
floor of the HTTP stack on this machine.

Two load shapes, 32 client threads each:
- open loop: every client sends one request every `32 / rate` seconds (a steady `rate` requests/s in total);
  latency is what a caller sees at that load;
- closed loop: every client sends the next request as soon as the last one answered (saturation); latency is
  then concurrency / throughput (Little's law), so it mostly measures throughput.

    python bench/enqueue.py [--clients 32] [--rates 25,50] [--seconds 15] [--api-workers 1]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import httpx
from service_stack import api_stack, pct

from testkit.images import style_png

REDIS = "redis://127.0.0.1:6379/12"


def drive(call: Callable[[int], int], *, clients: int, seconds: float,
          interval: float | None) -> tuple[list[float], int]:
    """Run `call(i)` from `clients` threads for `seconds`; open loop when `interval` is set. Returns latencies."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(c: int) -> None:
        nonlocal errors
        i = c
        next_at = time.perf_counter() + (interval or 0) * c / clients  # spread the open-loop phases
        while True:
            if interval is not None:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
            if time.perf_counter() >= stop_at:
                return
            t0 = time.perf_counter()
            status = call(i)
            dt = time.perf_counter() - t0
            with lock:
                if status in (200, 202):
                    latencies.append(dt)
                else:
                    errors += 1
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rates", default="25,50", help="open-loop request rates (requests/s over all clients)")
    ap.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    args = ap.parse_args()

    with api_stack("enqueue", REDIS, api_args=["--log-level", "warning", "--no-access-log", "--workers",
                                               str(args.api_workers)],
                   STYLEDROP_RATE_LIMIT_PER_MINUTE="1000000", STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER="1000000",
                   ) as (stack, base, _db_url):
        keys = [stack.cli("users", "create", f"user{i}").strip().splitlines()[-1] for i in range(args.clients)]
        image = style_png()
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        client = httpx.Client(base_url=base, timeout=60, limits=limits)

        def healthz(i: int) -> int:
            return client.get("/healthz").status_code

        def generation(i: int) -> int:
            return client.post("/v1/generations", headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
                               json={"prompt": f"a cat {i}", "steps": 2, "seed": i}).status_code

        def style(i: int) -> int:
            return client.post("/v1/styles", headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
                               data={"descriptor": "stripes", "steps": "4"},
                               files={"image": ("s.png", image, "image/png")}).status_code

        for fn in (healthz, generation, style):  # warm-up: connections, imports, DB pool
            drive(fn, clients=args.clients, seconds=1.0, interval=None)

        rates = [float(r) for r in args.rates.split(",") if r]
        shapes: list[tuple[str, float | None]] = [(f"open, {r:g}/s", args.clients / r) for r in rates]
        shapes.append(("closed (saturated)", None))
        rows = []
        for label, fn in (("GET /healthz (baseline)", healthz), ("POST /v1/generations", generation),
                          ("POST /v1/styles (256x256 PNG)", style)):
            for shape, iv in shapes:
                lat, errors = drive(fn, clients=args.clients, seconds=args.seconds, interval=iv)
                rows.append((label, shape, lat, errors))
        client.close()

        print(f"# {args.clients} clients, {args.seconds:.0f} s per row; {args.api_workers} uvicorn process(es); "
              "PostgreSQL + Redis on 127.0.0.1; no consumers; the client threads share the same 2 cores")
        print("| request | load | requests/s | p50 ms | p99 ms | p99 / healthz p99 | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        base_p99 = {shape: pct(lat, 99) for label, shape, lat, _ in rows if label.startswith("GET")}
        for label, shape, lat, errors in rows:
            load = shape
            p99 = pct(lat, 99)
            print(f"| {label} | {load} | {len(lat) / args.seconds:.0f} | {pct(lat, 50):.1f} | {p99:.1f} "
                  f"| {p99 / base_p99[shape]:.1f}x | {errors} |")
        print(f"# mean ms: {[round(statistics.mean(r[2]) * 1000, 1) for r in rows]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
