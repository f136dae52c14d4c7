"""The scaled-out shape, end to end with real processes: PostgreSQL, a private Redis and moto's S3 server on
127.0.0.1 shared by two API processes, two train and two generate workers and two reconcilers (each running the
reconcile pass, the stale-heartbeat sweep, the reclaimer and webhook delivery), every process with its own data
directory. Four users upload through one API and read through the other; a train worker and a generate worker
are SIGKILLed mid-work and nothing restarts them: the heartbeat failover hands their work to the survivors.

Asserted: every job and generation succeeds exactly once (one adapter per job, the killed rows on their second
attempt and no third, the killed job resumed past its checkpoint), every blob is in S3 and none on any local disk,
either API serves every image, each webhook event reaches its receiver once with two delivery loops running, and
after the reclaimer runs twice at once S3 holds exactly the blobs rows need.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from storage.blobs import blob_store_from_settings
from storage.db import make_engine, make_sessionmaker
from storage.reclaim import reclaim, referenced_keys
from storage.settings import Settings
from testkit.images import style_png
from testkit.topology import S3_CREDENTIALS, Topology, create_users, local_blob_files, topology_env
from testkit.webhooks import Receiver
from tests.helpers.faults import (
    Db,
    RedisServer,
    assert_all_final_one_adapter_each,
    kill,
    progress_steps,
    unfinished,
    wait_for,
)

pytestmark = pytest.mark.integration

STEPS = 30  # per job; a checkpoint every 2 steps


def _bucket_keys(endpoint: str, bucket: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def running_on(db: Db, table: str) -> list[tuple[str, str]]:
    """(id, worker_host) of the rows of `table` running now."""
    return [(r.id, r.worker_host) for r in db.rows(f"SELECT id, worker_host FROM {table} WHERE state = 'running'")]


def test_two_apis_two_by_two_workers_on_s3_survive_sigkills_exactly_once(
    tmp_path: Path, pg_url: str, s3_endpoint: str, s3_bucket: str
) -> None:
    redis, receiver, db = RedisServer(tmp_path), Receiver(), Db(pg_url)
    redis.start()
    env = topology_env(tmp_path, pg_url, redis.url, s3_endpoint, s3_bucket, STYLEDROP_GENERATE_BATCH_SIZE="4",
                       STYLEDROP_RECONCILE_EVERY="2", STYLEDROP_RECLAIM_EVERY="2",
                       STYLEDROP_BLOB_GRACE_SECONDS="120")  # failover: the default 10 s window, 2 s beats
    top = Topology(tmp_path, env)
    try:
        up, down = top.api("api0"), top.api("api1")  # users write through `up`, read through `down`
        for n in (0, 1):
            top.reconciler(n)
        for queue in ("train", "generate"):
            for n in (0, 1):
                top.worker(queue, n)
        keys = create_users(pg_url, 4)
        jobs = [up.post("/v1/styles", headers={"Authorization": f"Bearer {key}"},
                        files={"image": ("s.png", style_png((60 * i, 200 - 40 * i, 90)), "image/png")},
                        data={"descriptor": "stripes", "steps": str(STEPS), "seed": "1", "webhook": receiver.url})
                for i, key in enumerate(keys)]
        assert all(r.status_code == 202 for r in jobs), [r.text for r in jobs]
        job_ids = [r.json()["job"]["id"] for r in jobs]

        # SIGKILL the train worker of a job past its first checkpoint, and a generate worker mid-batch
        def resumable() -> list[tuple[str, str]]:
            return [(r.id, r.worker_host) for r in db.rows(
                "SELECT id, worker_host FROM training_jobs WHERE state = 'running' AND checkpoint_step >= 2 "
                "AND step < :n", n=STEPS - 8)]

        (job, host), *_ = wait_for("a job past a checkpoint", resumable, top, timeout=300, every=0.05)
        kill(top.proc_of(host))
        killed_at = datetime.now(UTC)
        at_kill = db.job(job)
        assert at_kill.state == "running" and at_kill.worker_host == host, at_kill
        # generations queued now find the generate workers idle: a batch is claimed, then the model loads and
        # it samples, so there is time to catch it running
        gens = [up.post("/v1/generations", headers={"Authorization": f"Bearer {keys[i % 4]}"}, json={
            "prompt": f"a cat {i}", "steps": 12, "num_images": 2, "seed": i}).json()["id"] for i in range(8)]
        (_, gen_host), *_ = wait_for("a generation batch", lambda: running_on(db, "generations"), top, 300, 0.05)
        kill(top.proc_of(gen_host))
        interrupted = {gid for gid, h in running_on(db, "generations") if h == gen_host}
        assert interrupted, "the batch finished before the kill"

        wait_for("everything final", lambda: not unfinished(db), top, timeout=600, every=0.5)

        # exactly once
        assert_all_final_one_adapter_each(db)
        for j in db.rows("SELECT id, state, attempts, step FROM training_jobs"):
            assert (j.state, j.step, j.attempts) == ("succeeded", STEPS, 2 if j.id == job else 1), j
        events = progress_steps(db, job)
        second_run = [i for i, (_, e) in enumerate(events) if e == "state:running"][1]
        resumed = [int(e.split(":")[1]) for _, e in events[second_run:] if e.startswith("progress:")]
        assert resumed and resumed[0] > at_kill.checkpoint_step >= 2, (at_kill, events)
        for g in db.rows("SELECT id, state, attempts, image_keys FROM generations"):
            assert g.state == "succeeded" and len(g.image_keys) == 2, g
            assert g.attempts == (2 if g.id in interrupted else 1), g
        requeued_at = db.one("SELECT min(created_at) AS at FROM job_events WHERE job_id = :j AND kind = 'state' "
                             "AND created_at > :k AND payload->>'to' = 'queued'", j=job, k=killed_at).at
        print(f"\nfailover: job requeued {(requeued_at - killed_at).total_seconds():.1f} s after the SIGKILL")

        # either API serves every image (and every preview); none of them from a local disk
        for gen_id in gens:
            bodies = []
            for client in (up, down):
                auth = {"Authorization": f"Bearer {keys[gens.index(gen_id) % 4]}"}
                urls = client.get(f"/v1/generations/{gen_id}", headers=auth).json()["image_urls"]
                bodies.append([client.get(urlsplit(u).path, headers=auth).content for u in urls])  # this API
            assert len(bodies[0]) == 2 and bodies[0] == bodies[1] and bodies[0][0].startswith(b"\x89PNG")
        for key, job_id in zip(keys, job_ids, strict=True):
            previews = [c.get(f"/v1/jobs/{job_id}/previews/0", headers={"Authorization": f"Bearer {key}"})
                        for c in (up, down)]
            assert [p.status_code for p in previews] == [200, 200] and previews[0].content == previews[1].content
        assert local_blob_files(top.data_dirs()) == []

        # singleton loops, two of each: one delivery per webhook event, no failed pass, and two reclaimers at
        # once (grace 0, everything final) leave exactly the referenced blobs, the orphans of the killed batch gone
        wait_for("every job's completed webhook", lambda: [h["styledrop-event"] for h, _ in receiver.requests]
                 .count("completed") >= len(job_ids), top, timeout=60)  # delivery runs a poll behind the rows
        ids = [h["webhook-id"] for h, _ in receiver.requests]
        assert ids and len(ids) == len(set(ids)), ids
        assert [h["styledrop-event"] for h, _ in receiver.requests].count("completed") == len(job_ids)
        for n in (0, 1):
            log = (tmp_path / f"reconcile{n}.log").read_text()
            assert not any(m in log for m in ("pass failed", "sweep failed", "Traceback")), log[-4000:]
        settings = Settings(blob_backend="s3", s3_bucket=s3_bucket, s3_endpoint_url=s3_endpoint,
                            s3_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            s3_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        engine = make_engine(pg_url)
        factory = make_sessionmaker(engine)
        store = blob_store_from_settings(settings)
        with factory() as s:
            needed = referenced_keys(s)
        assert needed <= _bucket_keys(s3_endpoint, s3_bucket)
        errors: list[BaseException] = []

        def reclaimer() -> None:
            try:
                reclaim(factory, store, grace_seconds=0, now=time.time() + 60)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reclaimer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine.dispose()
        assert errors == [] and _bucket_keys(s3_endpoint, s3_bucket) == needed
        assert len(needed) == 4 + 4 + 4 + 16  # style images, adapters, previews, generation images
    finally:
        top.stop()
        receiver.close()
        db.close()
        redis.stop()
