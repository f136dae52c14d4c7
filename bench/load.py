"""Load benchmark (not a test): N generation requests and M training jobs from C concurrent clients against a real
stack on 127.0.0.1 — uvicorn + PostgreSQL + Redis + one train and one generate worker process (tiny model, CPU).

Records the enqueue latency of POST /v1/generations and POST /v1/styles (p50/p99), throughput and errors, then
waits until every row is final and checks that none ran twice (one adapter per succeeded job, the generation
images match num_images). Uses a throwaway PostgreSQL database and Redis db 13, both removed afterwards.

    python bench/load.py --generations 500 --jobs 50 --clients 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from service_stack import api_stack, pct
from sqlalchemy import create_engine, text

from testkit.images import style_png

REDIS = "redis://127.0.0.1:6379/13"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--users", type=int, default=25, help="jobs are spread over this many users (cap 2 each)")
    args = ap.parse_args()

    with api_stack("load", REDIS, api_args=["--log-level", "warning"], STYLEDROP_CHECKPOINT_EVERY="4",
                   STYLEDROP_PREVIEW_PROMPTS='["a cat"]', STYLEDROP_RATE_LIMIT_PER_MINUTE="100000",
                   ) as (stack, base, db_url):
        keys = [stack.cli("users", "create", f"user{i}").strip().splitlines()[-1] for i in range(args.users)]
        stack.spawn("train", "-m", "worker.cli", "worker", "--queue", "train")
        stack.spawn("generate", "-m", "worker.cli", "worker", "--queue", "generate")
        image = style_png()
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        client = httpx.Client(base_url=base, timeout=60, limits=limits)
        lat: dict[str, list[float]] = {"generations": [], "styles": []}
        errors: dict[str, int] = {}
        ids: dict[str, list[str]] = {"generations": [], "jobs": []}

        plan = ["styles"] * args.jobs + ["generations"] * args.generations
        order = sorted(range(len(plan)), key=lambda k: (k * 7919) % len(plan))  # interleave deterministically

        def run(k: int) -> None:
            i = order[k]
            kind = plan[i]
            key = keys[i % len(keys)]
            headers = {"Authorization": f"Bearer {key}"}
            t0 = time.perf_counter()
            try:
                if kind == "styles":
                    r = client.post("/v1/styles", headers=headers, data={"descriptor": "stripes", "steps": "4"},
                                    files={"image": ("s.png", image, "image/png")})
                else:
                    r = client.post("/v1/generations", headers=headers,
                                    json={"prompt": f"a cat {i}", "steps": 2, "seed": i, "num_images": 1})
            except httpx.HTTPError as exc:
                errors[f"{kind} {type(exc).__name__}"] = errors.get(f"{kind} {type(exc).__name__}", 0) + 1
                return
            dt = time.perf_counter() - t0
            if r.status_code != 202:
                errors[f"{kind} {r.status_code}"] = errors.get(f"{kind} {r.status_code}", 0) + 1
                return
            lat[kind].append(dt)
            ids["jobs" if kind == "styles" else "generations"].append(
                r.json()["job"]["id"] if kind == "styles" else r.json()["id"])

        t_start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(run, range(len(plan))))
        submit_s = time.perf_counter() - t_start
        engine = create_engine(db_url)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                pending = conn.execute(text(
                    "SELECT (SELECT count(*) FROM training_jobs WHERE state NOT IN ('succeeded','failed','cancelled'))"
                    " + (SELECT count(*) FROM generations WHERE state NOT IN ('succeeded','failed'))")).scalar()
            if not pending:
                break
            time.sleep(1)
        done_s = time.perf_counter() - t_start
        with engine.connect() as conn:
            job_states = dict(conn.execute(text("SELECT state, count(*) FROM training_jobs GROUP BY state")).all())
            gen_states = dict(conn.execute(text("SELECT state, count(*) FROM generations GROUP BY state")).all())
            dup_adapters = conn.execute(text(
                "SELECT count(*) FROM (SELECT job_id FROM adapters GROUP BY job_id HAVING count(*) > 1) d")).scalar()
            adapters = conn.execute(text("SELECT count(*) FROM adapters")).scalar()
            bad_images = conn.execute(text(
                "SELECT count(*) FROM generations WHERE state = 'succeeded' "
                "AND json_array_length(image_keys::json) <> num_images")).scalar()
            gen_attempts = conn.execute(text("SELECT max(attempts) FROM generations")).scalar()
        engine.dispose()
        client.close()
        all_lat = lat["generations"] + lat["styles"]
        report = {
            "requests": len(plan), "clients": args.clients, "errors": errors, "submit_seconds": round(submit_s, 2),
            "api_throughput_rps": round(len(all_lat) / submit_s, 1),
            "all_final_seconds": round(done_s, 1), "pending_at_end": pending,
            "latency_ms": {k: {"n": len(v), "p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1),
                               "mean": round(statistics.mean(v) * 1000, 1)} for k, v in lat.items() if v},
            "all_latency_ms": {"p50": round(pct(all_lat, 50), 1), "p99": round(pct(all_lat, 99), 1)},
            "job_states": job_states, "generation_states": gen_states, "adapters": adapters,
            "jobs_with_two_adapters": dup_adapters, "generations_with_wrong_image_count": bad_images,
            "max_generation_attempts": gen_attempts,
        }
        print(json.dumps(report, indent=2))
        return 0 if not pending and not dup_adapters and not bad_images else 1


if __name__ == "__main__":
    raise SystemExit(main())
