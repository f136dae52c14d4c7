"""`styledrop up` on embedded defaults (SQLite, file-system broker, tiny model) as a supervisor, with real
processes: a SIGKILLed train worker is restarted and its job requeued at once (not after the 120 s heartbeat
window) and succeeds once; a clean stop checkpoints and requeues the running job without spending an attempt;
a SIGKILLed `up` takes its children with it, frees the port, and the next `up` finishes the job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from testkit.stack import Stack, free_port, port_free, process_alive, service_env
from tests.helpers.faults import Db, assert_all_final_one_adapter_each, post_style, progress_steps, wait_for

pytestmark = pytest.mark.integration

FINAL = {"succeeded", "failed", "cancelled"}






def _pid(worker_host: str) -> int:
    return int(worker_host.rsplit(":", 1)[1])


def _runs(db: Db, job: str) -> int:
    return sum(1 for _, e in progress_steps(db, job) if e == "state:running")


def test_up_supervises_worker_kills_clean_stops_and_its_own_sigkill(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", STYLEDROP_HEARTBEAT_STALE_SECONDS="120", STYLEDROP_RECONCILE_EVERY="1",
               STYLEDROP_PREVIEW_PROMPTS='["a cat"]', OMP_NUM_THREADS="1")
    port = free_port()
    stack = Stack(tmp_path, env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    db = Db(f"sqlite:///{(tmp_path / 'data' / 'styledrop.db').resolve()}")

    def up(n: int):  # type: ignore[no-untyped-def]
        proc = stack.spawn(f"up{n}", "-m", "worker.cli", "up", "--port", str(port))

        def healthy() -> bool:
            assert proc.poll() is None, f"up{n} exited\n{stack.logs()}"
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(f"up{n} serving", healthy, stack, 120)
        return proc

    try:
        up1 = up(1)
        key = stack.cli("users", "create", "alice").strip().splitlines()[-1]

        # 1. SIGKILL the train worker after a checkpoint: running again at once, not after the heartbeat window
        job = post_style(client, key, steps=150).json()["job"]["id"]
        wait_for("a checkpoint", lambda: (db.job(job).checkpoint_step or 0) >= 4, stack, 240)
        victim = db.job(job)
        os.kill(_pid(victim.worker_host), signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for("the job running again on a new worker", lambda: (j := db.job(job)).state == "running"
                 and j.attempts == 2 and j.worker_host != victim.worker_host, stack, 100)
        back_after = time.monotonic() - killed_at
        print(f"job running again {back_after:.1f} s after its worker was SIGKILLed")  # docs/reliability.md
        assert "exited with code -9; restarting" in stack.logs()

        # 2. clean stop of `up` (SIGTERM): a last checkpoint, back to queued, the attempt given back
        ckpt_before = db.job(job).checkpoint_step
        wait_for("progress on the new worker", lambda: db.job(job).step > ckpt_before, stack, 120)
        up1.send_signal(signal.SIGTERM)
        assert up1.wait(timeout=60) == 0
        stopped = db.job(job)
        assert stopped.state == "queued" and stopped.attempts == 1, stopped
        assert stopped.checkpoint_step >= stopped.step > ckpt_before, stopped  # checkpointed where it stopped

        # 3. the next `up` (same port: nothing of the first one holds it) resumes and succeeds once
        up2 = up(2)
        wait_for("job final", lambda: db.job(job).state in FINAL, stack, 300)
        done = db.job(job)
        assert done.state == "succeeded" and done.step == 150 and done.attempts == 2, done
        events = progress_steps(db, job)
        last_run = max(i for i, (_, e) in enumerate(events) if e == "state:running")
        resumed = [int(e.split(":")[1]) for _, e in events[last_run:] if e.startswith("progress:")]
        assert resumed[0] > stopped.checkpoint_step, (stopped.checkpoint_step, resumed)

        # 4. SIGKILL `up` itself: its children go too and the port is free; the next `up` finishes the job
        second = post_style(client, key, steps=60, color=(10, 200, 10)).json()["job"]["id"]
        wait_for("second job running", lambda: (j := db.job(second)).state == "running" and j.step > 0, stack, 240)
        children = [r.pid for r in db.rows("SELECT pid FROM workers")] + [_pid(db.job(second).worker_host)]
        up2.kill()
        up2.wait()
        wait_for("children gone", lambda: not any(process_alive(p) for p in children), stack, 60)
        wait_for("port free", lambda: port_free(port), stack, 30)
        assert db.job(second).state == "queued"  # the worker got SIGTERM from the kernel: a warm shutdown
        up(3)
        wait_for("second job final", lambda: db.job(second).state in FINAL, stack, 300)
        assert db.job(second).state == "succeeded"
        assert _runs(db, job) == 3 and _runs(db, second) == 2  # started 3 and 2 times, finished once each
        assert_all_final_one_adapter_each(db)
    finally:
        client.close()
        db.close()
        stack.stop()
