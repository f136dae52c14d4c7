"""Worker faults with real processes (PostgreSQL, a private redis-server, uvicorn, Celery workers, the reconciler):

- SIGKILL the train worker mid-job, start another: the job resumes from its last checkpoint, succeeds once, one
  adapter;
- SIGKILL the generate worker mid-batch, start another: every generation of the batch succeeds once;
- a job that keeps killing its worker ends `failed` (too_many_attempts) instead of looping;
- cancel: a queued job never starts, a running one stops within a few steps, a finished one answers 409.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.faults import (
    assert_all_final_one_adapter_each,
    fault_stack,
    kill,
    make_user,
    post_style,
    progress_steps,
    spawn_reconciler,
    spawn_worker,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_worker_kills_resume_crash_loop_and_cancel(tmp_path: Path, pg_url: str) -> None:
    with fault_stack(tmp_path, pg_url, STYLEDROP_MAX_ATTEMPTS="2",
                     STYLEDROP_CANCEL_POLL_SECONDS="0.05",  # tiny steps are fast: poll often enough for "a few steps"
                     ) as (stack, client, db, _redis):
        key = make_user(stack, "alice")
        auth = {"Authorization": f"Bearer {key}"}
        spawn_reconciler(stack)
        train = spawn_worker(stack, "train", 0)

        # 1. kill the train worker after its first checkpoint; a new worker resumes from it
        job = post_style(client, key, steps=40).json()["job"]["id"]
        ckpt = wait_for("a checkpoint", lambda: (db.job(job).checkpoint_step or 0) >= 4, stack, timeout=180)
        assert ckpt
        kill(train)
        at_kill = db.job(job)
        assert at_kill.state == "running" and at_kill.step < 40, at_kill
        train = spawn_worker(stack, "train", 1)
        wait_for("job final", lambda: db.job(job).state in {"succeeded", "failed", "cancelled"}, stack, 240)
        done = db.job(job)
        assert done.state == "succeeded" and done.step == 40 and done.attempts == 2, done
        events = progress_steps(db, job)
        second_run = [i for i, (_, e) in enumerate(events) if e == "state:running"][1]
        resumed = [int(e.split(":")[1]) for _, e in events[second_run:] if e.startswith("progress:")]
        assert resumed and resumed[0] > at_kill.checkpoint_step >= 4, (at_kill.checkpoint_step, events)
        assert len(db.rows("SELECT id FROM adapters WHERE job_id = :i", i=job)) == 1

        # 2. a job that keeps killing its worker: with max_attempts=2 it ends failed after two runs
        looping = post_style(client, key, steps=4000, color=(10, 200, 10)).json()["job"]["id"]
        for n in (2, 3):
            wait_for(f"looping job running (attempt {n - 1})", lambda n=n: (
                (j := db.job(looping)).state == "running" and j.attempts == n - 1 and j.step > 0), stack, 120)
            kill(train)
            train = spawn_worker(stack, "train", n)
        wait_for("looping job failed", lambda: db.job(looping).state == "failed", stack, 60)
        failed = db.job(looping)
        assert failed.error_code == "too_many_attempts" and failed.attempts == 2, failed
        assert "giving up" in client.get(f"/v1/jobs/{looping}", headers=auth).json()["error"]["message"]

        # 3. cancel: a running job stops within a few steps; a queued one never starts; final -> 409
        running = post_style(client, key, steps=400, color=(0, 0, 200)).json()["job"]["id"]
        queued = post_style(client, key, steps=5, color=(0, 100, 100)).json()["job"]["id"]
        wait_for("running job past step 2", lambda: (db.job(running).step or 0) >= 2, stack, 120)
        assert client.post(f"/v1/jobs/{queued}/cancel", headers=auth).json()["state"] == "cancelled"
        step_at_cancel = db.job(running).step
        assert client.post(f"/v1/jobs/{running}/cancel", headers=auth).json()["state"] == "cancelling"
        wait_for("cancelled", lambda: db.job(running).state == "cancelled", stack, 60)
        assert db.job(running).step <= step_at_cancel + 5, (step_at_cancel, db.job(running).step)
        assert "state:running" not in [e for _, e in progress_steps(db, queued)]
        assert client.post(f"/v1/jobs/{running}/cancel", headers=auth).status_code == 409
        assert client.post(f"/v1/jobs/{job}/cancel", headers=auth).status_code == 409

        # 4. kill the generate worker mid-batch; a new one finishes every generation once
        adapter = db.one("SELECT id FROM adapters WHERE job_id = :i", i=job).id
        gens = [client.post("/v1/generations", headers=auth, json={
            "prompt": f"a cat {i}", "adapter_id": adapter, "steps": 20, "num_images": 2, "seed": i,
        }).json()["id"] for i in range(6)]
        generate = spawn_worker(stack, "generate", 0)
        wait_for("a batch running", lambda: db.rows(
            "SELECT id FROM generations WHERE state = 'running'"), stack, 120, every=0.05)
        kill(generate)
        interrupted = {r.id for r in db.rows("SELECT id FROM generations WHERE state = 'running'")}
        assert interrupted, "the batch finished before the kill"
        spawn_worker(stack, "generate", 1)
        wait_for("generations final", lambda: not db.rows(
            "SELECT id FROM generations WHERE state IN ('queued', 'running')"), stack, 240)
        for gen_id in gens:
            body = client.get(f"/v1/generations/{gen_id}", headers=auth).json()
            assert body["state"] == "succeeded" and len(body["image_urls"]) == 2, (body, stack.logs())
            if gen_id in interrupted:
                assert body["attempts"] == 2, body
        assert_all_final_one_adapter_each(db)
