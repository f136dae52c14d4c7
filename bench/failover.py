"""Seconds from a train worker's SIGKILL to its job's resumed progress, in the scaled-out shape.

PostgreSQL (a throwaway database), Redis (127.0.0.1:6379 db 12, flushed; 12 and 13 are the benchmarks') and moto's
S3 server on 127.0.0.1; one API, two train workers and a reconciler, each with its own data directory
(testkit/topology.py). Both workers are warmed
by a short job each; then a long job runs, and once it has a checkpoint its worker is SIGKILLed. Printed: the
seconds from the kill to the job back in the queue (`queued`), to `running` on the other worker, and to its first
progress past the checkpoint — with this build's settings, and with `--baseline` also with the old ones
(`STYLEDROP_HEARTBEAT_STALE_SECONDS=120`, a 5 s beat, `STYLEDROP_RECONCILE_EVERY=30`) in the same run.

    python bench/failover.py [--baseline] [--runs 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, create_engine, text  # noqa: E402

from storage.db import upgrade_to_head  # noqa: E402
from testkit.images import style_png  # noqa: E402
from testkit.stack import free_port  # noqa: E402
from testkit.topology import Topology, create_users, topology_env  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
OLD = {"STYLEDROP_HEARTBEAT_STALE_SECONDS": "120", "STYLEDROP_HEARTBEAT_EVERY_SECONDS": "5",
       "STYLEDROP_RECONCILE_EVERY": "30"}


def job_row(db: Engine, job_id: str) -> Any:
    with db.connect() as conn:
        return conn.execute(text("SELECT * FROM training_jobs WHERE id = :i"), {"i": job_id}).one()


def wait_for(what: str, predicate: Callable[[], Any], top: Topology, timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}\n{top.logs()}")


def post(client, key: str, steps: int, shade: int) -> str:  # type: ignore[no-untyped-def]
    resp = client.post("/v1/styles", headers={"Authorization": f"Bearer {key}"},
                       files={"image": ("s.png", style_png((shade, 90, 200 - shade)), "image/png")},
                       data={"descriptor": "stripes", "steps": str(steps), "seed": "1"})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["job"]["id"])


def measure(s3_endpoint: str, **settings: str) -> dict[str, float]:
    """One topology, one kill; seconds from the kill to queued / running again / progress past the checkpoint."""
    import boto3

    name = f"styledrop_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade_to_head(db_url)
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    tmp = Path(tempfile.mkdtemp(prefix="styledrop-failover-"))
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    db = create_engine(db_url, pool_pre_ping=True)
    top = Topology(tmp, topology_env(tmp, db_url, REDIS_URL, s3_endpoint, bucket, STYLEDROP_CHECKPOINT_EVERY="10",
                                     STYLEDROP_PROGRESS_EVERY="1", **settings))
    try:
        api = top.api("api0")
        top.reconciler(0)
        workers = [top.worker("train", n) for n in (0, 1)]
        (key,) = create_users(db_url, 1)
        for attempt in range(4):  # warm both workers (model loaded), each by a job of its own
            warm = [post(api, key, 2, 10 * attempt + i) for i in (0, 1)]
            wait_for("warm-up", lambda w=warm: all(job_row(db, j).state == "succeeded" for j in w), top, 600)
            with db.connect() as conn:
                hosts = set(conn.execute(text("SELECT worker_host FROM training_jobs WHERE state = 'succeeded'"))
                            .scalars())
            if len(hosts) == 2:
                break
        else:
            raise RuntimeError("the warm-up never reached both workers")
        job = post(api, key, 2000, 200)
        wait_for("a checkpoint", lambda: (job_row(db, job).checkpoint_step or 0) >= 10, top, 600, every=0.05)
        victim = job_row(db, job)
        os.killpg(top.proc_of(victim.worker_host).pid, signal.SIGKILL)
        killed = datetime.now(UTC)
        assert {p for p in workers if p.poll() is None}, "no train worker left"

        def resumed() -> bool:
            row = job_row(db, job)
            return row.attempts == 2 and row.state == "running" and row.step > victim.checkpoint_step

        wait_for("resumed progress", resumed, top, timeout=900, every=0.1)
        out = {}
        for label, sql in (
            ("queued", "kind = 'state' AND payload->>'to' = 'queued'"),
            ("running", "kind = 'state' AND payload->>'to' = 'running'"),
            ("progress", "kind = 'progress'"),
        ):
            with db.connect() as conn:
                at = conn.execute(text(f"SELECT min(created_at) FROM job_events WHERE job_id = :j AND "
                                       f"created_at > :k AND {sql}"), {"j": job, "k": killed}).scalar_one()
            out[label] = (at - killed).total_seconds()
        return out
    finally:
        top.stop()
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="also measure with the old settings")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    shapes = {"this build (stale 10 s, beat 2 s)": {}}
    if args.baseline:
        shapes["old settings (stale 120 s, beat 5 s, reconcile 30 s)"] = OLD
    results: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        stack.callback(server.stop)
        for _ in range(args.runs):
            for label, env in shapes.items():
                t0 = time.perf_counter()
                results.setdefault(label, []).append(measure(endpoint, **env))
                print(f"{label}: {results[label][-1]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nseconds from SIGKILL of the train worker to ... (median of runs)")
    print(f"{'shape':<56}{'queued':>8}{'running':>9}{'progress':>10}")
    medians = {}
    for label, runs in results.items():
        med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        medians[label] = med
        print(f"{label:<56}{med['queued']:>8.1f}{med['running']:>9.1f}{med['progress']:>10.1f}")
    if len(medians) == 2:
        new, old = medians.values()
        print(f"kill → resumed progress: {old['progress'] / new['progress']:.1f}× faster than the old settings")


if __name__ == "__main__":
    main()
