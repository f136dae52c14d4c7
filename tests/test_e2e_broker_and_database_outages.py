"""Outages with real processes (PostgreSQL, a private redis-server, uvicorn, Celery workers, the reconciler):

- the broker (Redis) stopped for 10+ s with jobs and generations queued and running, then a new empty one
  started on the same port: the workers reconnect, the reconciler re-sends what was lost, each row runs once;
- the API SIGKILLed in the middle of concurrent (some slow, chunked) uploads: no temp or partial blob file, no
  style without its job and blob, every job queued or final; after a restart the queued ones are sent and run;
- the database cut for ~8 s (a TCP proxy in front of PostgreSQL) under a running train worker: the API answers
  503 `database_unavailable`, `/readyz` 503; afterwards the job ends `succeeded` once, with one adapter.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from testkit.images import style_png
from testkit.stack import wait_http
from tests.helpers.faults import (
    FINAL,
    Db,
    TcpProxy,
    assert_all_final_one_adapter_each,
    fault_stack,
    kill,
    make_user,
    post_style,
    progress_steps,
    spawn_reconciler,
    spawn_worker,
    unfinished,
    wait_for,
)

pytestmark = pytest.mark.integration


def _all_final(db: Db) -> bool:
    return not unfinished(db)


def _assert_generations_once(db: Db) -> None:
    for gen in db.rows("SELECT id, state, attempts, num_images, image_keys FROM generations"):
        assert gen.state == "succeeded" and gen.attempts == 1, gen
        assert len(gen.image_keys) == gen.num_images, gen


# ==============================================================================================================
# 1. Redis outage
# ==============================================================================================================


def test_redis_outage_loses_nothing_and_runs_nothing_twice(tmp_path: Path, pg_url: str) -> None:
    with fault_stack(tmp_path, pg_url, STYLEDROP_CHECKPOINT_EVERY="4", STYLEDROP_PROGRESS_EVERY="2") as (
            stack, client, db, redis):
        key = make_user(stack, "alice")
        auth = {"Authorization": f"Bearer {key}"}
        spawn_reconciler(stack)
        train = spawn_worker(stack, "train")
        generate = spawn_worker(stack, "generate")
        jobs = [post_style(client, key, steps=40, color=c).json()["job"]["id"]
                for c in ((200, 40, 40), (40, 200, 40))]
        gens = [client.post("/v1/generations", headers=auth, json={
            "prompt": f"a cat {i}", "steps": 6, "num_images": 2, "seed": i}).json()["id"] for i in range(3)]
        wait_for("job 1 past its first checkpoint", lambda: (db.job(jobs[0]).checkpoint_step or 0) >= 4,
                 stack, timeout=180)
        assert db.job(jobs[1]).state == "queued"

        redis.stop(graceful=True)
        down_at = time.monotonic()
        # accepted while the broker is down: committed, not sent (the reconciler sends it later)
        late = client.post("/v1/generations", headers=auth, json={
            "prompt": "a late cat", "steps": 6, "num_images": 1, "seed": 9})
        assert late.status_code == 202, late.text
        gens.append(late.json()["id"])
        late_job = post_style(client, key, steps=8, color=(40, 40, 200))
        assert late_job.status_code == 202, late_job.text
        jobs.append(late_job.json()["job"]["id"])
        time.sleep(max(0.0, 11 - (time.monotonic() - down_at)))
        assert train.poll() is None and generate.poll() is None, stack.logs()
        redis.start()  # empty: every message queued before the outage is gone

        wait_for("every job and generation final", lambda: _all_final(db), stack, timeout=240, every=0.5)
        assert train.poll() is None and generate.poll() is None, stack.logs()
        for job_id in jobs:
            job = db.job(job_id)
            assert job.state == "succeeded" and job.attempts == 1 and job.step == job.total_steps, job
            runs = [e for _, e in progress_steps(db, job_id) if e == "state:running"]
            assert len(runs) == 1, (job_id, runs)
        _assert_generations_once(db)
        assert_all_final_one_adapter_each(db)
        # the late rows were never sent: only the reconciler can have sent them
        log = (tmp_path / "reconcile0.log").read_text()
        reconciled = [line.split("sent_jobs=")[1].split("requeued_jobs")[0] for line in log.splitlines()
                      if "reconciled:" in line]

        def sent(row_id: str) -> bool:
            return any(row_id in line for line in reconciled)

        for row_id in (jobs[2], gens[-1]):
            assert sent(row_id), (row_id, reconciled)
        # the queued job's message died with the old server: the reconciler re-sends it when the queue holds
        # fewer messages than sent rows wait on it, unless a worker took it first on a later row's message
        # (the database, not the message, decides which queued job a worker runs: the oldest). Either way it
        # ran exactly once (checked above).
        if sent(jobs[1]):
            assert "re-sending them" in log


# ==============================================================================================================
# 2. API killed during uploads
# ==============================================================================================================


def _multipart(fields: dict[str, str], png: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="s.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), boundary


def _slow_upload(port: int, key: str, png: bytes, results: list[Any], pause: float = 0.25,
                 pieces: int = 40) -> None:
    """POST /v1/styles over a raw socket, the body in `pieces` chunks with pauses in between."""
    body, boundary = _multipart({"descriptor": "stripes", "steps": "3", "seed": "1"}, png)
    head = (f"POST /v1/styles HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head)
            step = len(body) // pieces + 1
            for i in range(0, len(body), step):
                sock.sendall(body[i:i + step])
                time.sleep(pause)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = answer.split(b"\r\n", 1)[0].decode() if answer else "error: closed without an answer"
        results.append(("slow", status, answer))
    except OSError as exc:
        results.append(("slow", f"error: {exc!r}", b""))


def _fast_uploads(base_url: str, key: str, seed: int, results: list[Any], stop: threading.Event) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        n = 0
        while not stop.is_set() and n < 6:
            try:
                r = post_style(client, key, steps=3, color=(seed * 40 % 256, n * 30 % 256, 90))
                results.append(("fast", r.status_code, r.json()))
            except httpx.HTTPError as exc:
                results.append(("fast", f"error: {exc!r}", None))
                return
            n += 1


def _check_blob_dir(blob_dir: Path) -> int:
    """No temp file anywhere; every style blob is a complete PNG named after its sha256. Returns the count."""
    leftovers = [p for p in blob_dir.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
    assert leftovers == [], leftovers
    styles = [p for p in (blob_dir / "styles").rglob("*") if p.is_file()]
    for path in styles:
        data = path.read_bytes()
        assert path.name == f"{hashlib.sha256(data).hexdigest()}.png", path
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.format == "PNG"
    return len(styles)


def test_api_killed_during_uploads(tmp_path: Path, pg_url: str) -> None:
    blob_dir = tmp_path / "data" / "blobs"
    with fault_stack(tmp_path, pg_url, STYLEDROP_MAX_ATTEMPTS="2",  # every upload reaches its kill
                     STYLEDROP_MAX_CONCURRENT_UPLOADS_PER_USER="16", STYLEDROP_MAX_CONCURRENT_UPLOADS_TOTAL="16",
                     ) as (stack, client, db, _redis):
        key = make_user(stack, "alice")
        auth = {"Authorization": f"Bearer {key}"}
        base_url = str(client.base_url).rstrip("/")
        port = int(base_url.rsplit(":", 1)[1])
        api = stack.procs[0][0]
        results: list[Any] = []
        stop = threading.Event()
        slow = [threading.Thread(target=_slow_upload, args=(port, key, style_png((i * 50, 20, 200)),
                                                            results), daemon=True) for i in range(4)]
        fast = [threading.Thread(target=_fast_uploads, args=(base_url, key, i, results, stop), daemon=True)
                for i in range(2)]
        for t in slow + fast:
            t.start()
        # The fast uploads complete (and a few more start) while the slow ones are still sending their
        # bodies (40 chunks, 0.25 s apart); the kill lands in the middle of those.
        time.sleep(1.5)
        stop.set()
        for t in fast:
            t.join(timeout=30)
        assert all(t.is_alive() for t in slow), results
        kill(api)
        for t in slow:
            t.join(timeout=30)
        assert [r for r in results if r[0] == "slow" and r[1].startswith("error")], results
        assert len([r for r in results if r[0] == "slow"]) == 4, results
        assert [r for r in results if r[0] == "fast" and r[1] == 202], results
        # what the kill left behind
        n_blobs = _check_blob_dir(blob_dir)
        assert db.rows("SELECT s.id FROM styles s LEFT JOIN training_jobs j ON j.style_id = s.id "
                       "WHERE j.id IS NULL") == []
        for style in db.rows("SELECT id, image_key, image_sha256 FROM styles"):
            assert (blob_dir / style.image_key).is_file(), style
            assert style.image_key.endswith(f"{style.image_sha256}.png"), style
        states = db.rows("SELECT id, state FROM training_jobs")
        assert {s for _, s in states} <= {"queued"} | FINAL, states
        fast_accepted = [r[2]["job"]["id"] for r in results if r[0] == "fast" and r[1] == 202]
        assert set(fast_accepted) <= {i for i, _ in states}, (fast_accepted, states)
        assert n_blobs >= len(states), (n_blobs, states)  # (a blob may have no row: killed before commit)

        # restart the API on the same port; it serves; a worker and the reconciler finish every job
        stack.spawn("api2", "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port))
        stack.procs.insert(0, stack.procs.pop())  # keep the live API first
        wait_http(client, _Live(stack))  # type: ignore[arg-type]
        assert client.get("/readyz").status_code == 200
        listed = client.get("/v1/jobs", headers=auth)
        assert listed.status_code == 200, listed.text
        spawn_reconciler(stack)
        spawn_worker(stack, "train")
        wait_for("every job final", lambda: _all_final(db), stack, timeout=180, every=0.5)
        for job in db.rows("SELECT id, state, attempts FROM training_jobs"):
            assert job.state == "succeeded" and job.attempts == 1, job
        assert_all_final_one_adapter_each(db)
        _check_blob_dir(blob_dir)
        body = client.get("/v1/jobs", headers=auth).json()
        assert body["items"], body


class _Live:
    """A view of a stack whose dead (killed) processes are ignored by `wait_http`."""

    def __init__(self, stack: Any) -> None:
        self.procs = [(p, log) for p, log in stack.procs if p.poll() is None]
        self.logs = stack.logs


# ==============================================================================================================
# 3. Database unreachable
# ==============================================================================================================


def test_database_cut_under_a_running_job(tmp_path: Path, pg_url: str) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    proxied = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    assert proxied != pg_url
    try:
        with fault_stack(tmp_path, proxied, direct_db_url=pg_url,  # reads go direct, not through the proxy
                         STYLEDROP_CHECKPOINT_EVERY="4", STYLEDROP_PROGRESS_EVERY="2") as (stack, client, db, _redis):
            key = make_user(stack, "alice")
            auth = {"Authorization": f"Bearer {key}"}
            spawn_reconciler(stack)
            train = spawn_worker(stack, "train")
            job_id = post_style(client, key, steps=40).json()["job"]["id"]
            wait_for("a checkpoint", lambda: (db.job(job_id).checkpoint_step or 0) >= 4, stack, timeout=180)
            step_at_cut = db.job(job_id).step

            proxy.cut()
            cut_at = time.monotonic()
            answers = []
            while time.monotonic() - cut_at < 8:
                r = client.get(f"/v1/jobs/{job_id}", headers=auth)
                ready = client.get("/readyz")
                answers.append((r.status_code, ready.status_code))
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "database_unavailable", r.text
                assert r.headers.get("Retry-After"), r.headers
                assert ready.status_code == 503, ready.text
                assert "database" in ready.text.lower(), ready.text
                time.sleep(1)
            assert len(answers) >= 4
            assert train.poll() is None, stack.logs()
            proxy.restore()

            assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
            wait_for("ready again", lambda: client.get("/readyz").status_code == 200, stack, timeout=30)
            wait_for("job final", lambda: db.job(job_id).state in FINAL, stack, timeout=240, every=0.5)
            job = db.job(job_id)
            assert job.state == "succeeded" and job.step == 40, (job, stack.logs())
            assert job.attempts <= 2, job
            assert train.poll() is None, stack.logs()
            if job.attempts == 2:  # requeued: the second run resumed from a checkpoint, not from step 0
                events = progress_steps(db, job_id)
                second = [i for i, (_, e) in enumerate(events) if e == "state:running"][1]
                resumed = [int(e.split(":")[1]) for _, e in events[second:] if e.startswith("progress:")]
                assert resumed and resumed[0] > 4, events
            assert step_at_cut < 40
            assert_all_final_one_adapter_each(db)
            assert client.get("/v1/adapters", headers=auth).json()["items"][0]["job_id"] == job_id
    finally:
        proxy.cut()

