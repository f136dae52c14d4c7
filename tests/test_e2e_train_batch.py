"""A real train worker (Celery over Redis, PostgreSQL) given 5 queued jobs and STYLEDROP_TRAIN_BATCH=3 trains
3 at once and the other 2 join that run as slots free (continuous batching, worker/train_batch.py): every job
succeeds once, with one adapter and its own progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from api.services.queue import sender
from storage.blobs import blob_store_from_settings, content_key, sha256_hex
from storage.dispatch import dispatch
from storage.job_params import JobParams
from storage.models import Adapter, JobEvent, Style, TrainingJob, utcnow
from storage.settings import Settings
from storage.states import WorkKind
from storage.users import create_user
from testkit.images import style_png
from tests.helpers.db import API_REDIS_URL

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_five_queued_jobs_run_three_at_a_time_the_last_two_joining(tmp_path: Path, pg_url: str,
                                                                   api_redis: Any) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=pg_url, broker_url=API_REDIS_URL)
    store = blob_store_from_settings(settings)
    engine = create_engine(pg_url)
    t0 = utcnow() - timedelta(minutes=5)
    ids: list[str] = []
    with Session(engine) as s:
        owners = [create_user(s, "ann").id, create_user(s, "ben").id]
        for i in range(5):
            png = style_png((40 * i, 90, 200 - 30 * i))
            key = content_key("styles", sha256_hex(png), "png")
            store.put_bytes(key, png)
            style = Style(owner_id=owners[i % 2], image_key=key, image_sha256=sha256_hex(png), image_bytes=len(png),
                          width=256, height=256, descriptor=f"poster {i}")
            s.add(style)
            s.flush()
            job = TrainingJob(style_id=style.id, owner_id=owners[i % 2], total_steps=3 + i % 2,
                              params=JobParams(steps=3 + i % 2, seed=i, descriptor=style.descriptor).to_json(),
                              queued_at=t0 + timedelta(seconds=i))
            s.add(job)
            s.flush()
            ids.append(job.id)
        s.commit()
    send = sender(settings)
    with Session(engine) as s:  # every job's wake-up is queued before the worker starts: the first claim sees all 5
        assert all(dispatch(s, WorkKind.TRAIN, job_id, send) for job_id in ids)

    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEDROP_") and k not in
           {"DATABASE_URL", "BROKER_URL"}}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "STYLEDROP_DATA_DIR": str(data_dir), "DATABASE_URL": pg_url, "BROKER_URL": API_REDIS_URL,
                "STYLEDROP_MODEL": "tiny", "STYLEDROP_DEVICE": "cpu", "STYLEDROP_TRAIN_BATCH": "3",
                "STYLEDROP_PROGRESS_EVERY": "1", "STYLEDROP_CHECKPOINT_EVERY": "2", "STYLEDROP_PREVIEW_STEPS": "2"})
    log = tmp_path / "train.log"
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--queue", "train"], cwd=tmp_path,
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            with Session(engine) as s:
                unfinished = s.scalar(select(func.count()).select_from(TrainingJob)
                                      .where(TrainingJob.state.in_(("queued", "running", "cancelling"))))
            if unfinished == 0:
                break
            time.sleep(1.0)
        with Session(engine) as s:
            jobs = {j.id: j for j in s.scalars(select(TrainingJob))}
            adapters = Counter(s.scalars(select(Adapter.job_id)))
            progress = {i: [e.payload["step"] for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == i, JobEvent.kind == "progress").order_by(JobEvent.id))]
                for i in ids}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        engine.dispose()
    assert all(j.state == "succeeded" for j in jobs.values()), (
        {i: (j.state, j.error_code) for i, j in jobs.items()}, log.read_text(errors="replace")[-4000:])
    assert all(j.attempts == 1 for j in jobs.values())
    assert adapters == Counter(ids)  # one adapter per job
    runs = [jobs[i].run_id for i in ids]
    assert len(set(runs)) == 1 and None not in runs  # one run: the last two joined it
    assert all(progress[i] == list(range(1, jobs[i].total_steps + 1)) for i in ids)  # each its own curve
    # the oldest three ran first, together; the other two were claimed once a slot was free (a 3-step job done),
    # while the 4-step one still trained
    assert min(jobs[i].finished_at for i in ids[:3]) <= min(jobs[i].started_at for i in ids[3:])
    assert min(jobs[i].started_at for i in ids[3:]) < max(jobs[i].finished_at for i in ids[:3])
