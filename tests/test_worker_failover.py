"""Failover across hosts, in-process on the tiny model: a training step that blocks for three stale windows keeps
its job while the worker's heartbeat thread beats; when the worker stops beating (gone, or frozen) the
reconciler's stale sweep takes the job back, another host resumes it from the last checkpoint, and the frozen
worker, when it wakes, writes nothing more; a frozen generate worker likewise finishes nothing that another
worker took over. The same with real processes and SIGKILL: tests/test_topology.py."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, update

import trainer
import worker.tasks as tasks
import worker.training as training
from storage import jobs
from storage.db import make_engine, make_sessionmaker
from storage.models import Adapter, Generation, JobEvent, TrainingJob
from storage.settings import Settings
from storage.states import WorkKind
from storage.users import create_user
from tests.helpers.db import get_row, make_generation, make_job
from worker import generation
from worker.ops.reconciler import requeue_stale
from worker.runtime import Runtime, start_heartbeat

STALE = 1.0  # seconds: the stale window of this test; the step below blocks for three of them


def _progress(rt: Runtime, job_id: str) -> list[int]:
    with rt.session_factory() as s:
        return [e.payload["step"] for e in s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "progress").order_by(JobEvent.id))]


@pytest.mark.parametrize("beating", [True, False], ids=["slow-but-alive", "stopped-beating"])
def test_a_step_blocked_past_the_stale_window_keeps_its_job_only_while_the_worker_beats(
    worker_settings: Settings, beating: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings.model_copy(update={
        "heartbeat_stale_seconds": STALE, "heartbeat_every_seconds": 0.1, "cancel_poll_seconds": 0.0})
    engine = make_engine(settings.resolved_database_url)
    rt = Runtime(settings, make_sessionmaker(engine), kind="train")
    other = Runtime(settings, rt.session_factory, rt.store, kind="train")
    other.worker_host = "other-host:4242"  # a second train worker on another host
    job_id = make_job(rt)  # 12 steps, a checkpoint every 4
    blocked, release = threading.Event(), threading.Event()
    real = training.train_styles

    def one_slow_step(parts: Any, specs: Any, config: Any, callbacks: Any) -> Any:
        if threading.current_thread() is threading.main_thread():  # the other host's run: no slow step
            return real(parts, specs, config, callbacks)
        calls = iter(range(1, 1000))

        def stop(i: int) -> bool:
            if next(calls) == 6:  # after step 6 (checkpoint at 4): nothing reaches the database until released
                blocked.set()
                release.wait(120)
            return bool(callbacks.should_stop(i))

        return real(parts, specs, config, replace(callbacks, should_stop=stop))

    monkeypatch.setattr(training, "train_styles", one_slow_step)
    beat_stop, beat_thread = start_heartbeat(rt)
    outcome: list[str] = []
    run = threading.Thread(target=lambda: outcome.append(tasks.run_train(rt, job_id)), name="slow-worker")
    sent: list[tuple[WorkKind, str]] = []

    def send(kind: WorkKind, row_id: str) -> str:  # stands in for the broker
        sent.append((kind, row_id))
        return "task-id"

    try:
        run.start()
        assert blocked.wait(120), f"the run never reached its slow step: {outcome}"
        if not beating:  # the process is gone (or frozen): its heartbeat thread beats no more
            beat_stop.set()
            beat_thread.join()
        # The reconciler sweeps while the step blocks: for three stale windows when the worker beats (nothing may
        # happen), until it requeues the job when it does not (a minute at most on a loaded machine).
        deadline = time.monotonic() + (3 * STALE if beating else 60.0)
        while time.monotonic() < deadline and not sent:
            requeue_stale(rt.session_factory, settings, send)
            time.sleep(0.05)
        if beating:
            assert sent == []
            assert tasks.run_train(other, job_id) == "skipped"  # a duplicate delivery: the job is taken
            job = get_row(rt, TrainingJob, job_id)
            assert (job.state, job.worker_host, job.attempts) == ("running", rt.worker_host, 1)
        else:
            assert sent == [(WorkKind.TRAIN, job_id)]
            assert get_row(rt, TrainingJob, job_id).state == "queued"
            assert tasks.run_train(other, job_id) == "succeeded"  # resumed from the step-4 checkpoint
    finally:
        release.set()
        run.join(120)
        beat_stop.set()
        engine.dispose()

    job = get_row(rt, TrainingJob, job_id)
    with rt.session_factory() as s:
        adapters = list(s.scalars(select(Adapter.id).where(Adapter.job_id == job_id)))
    assert job.state == "succeeded" and job.step == 12 and len(adapters) == 1
    if beating:
        assert outcome == ["succeeded"] and job.attempts == 1 and job.worker_host == rt.worker_host
        assert _progress(rt, job_id) == [2, 4, 6, 8, 10, 12]
    else:
        # the frozen worker woke, saw the job was no longer its own and stopped without a write
        assert outcome == ["stopped"] and job.attempts == 2 and job.worker_host == other.worker_host
        assert _progress(rt, job_id) == [2, 4, 6, 6, 8, 10, 12]  # 2, 4, 6 before; 6.. after resuming at 4


def test_a_frozen_generate_worker_does_not_finish_a_generation_taken_over_by_another(
    worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frozen worker wakes while the other one is still sampling the row: it must leave the row running."""
    settings = worker_settings.model_copy(update={"heartbeat_stale_seconds": STALE})
    engine = make_engine(settings.resolved_database_url)
    frozen = Runtime(settings, make_sessionmaker(engine), kind="generate")
    other = Runtime(settings, frozen.session_factory, frozen.store, kind="generate")
    other.worker_host = "other-host:4242"
    with frozen.session_factory() as s:
        owner = create_user(s, "gen-owner").id
        s.commit()
    gen_id = make_generation(frozen, owner, None, num_images=2)
    # per worker thread: set once it has sampled, then it waits for its release
    sampled = {name: threading.Event() for name in ("frozen", "other")}
    release = {name: threading.Event() for name in ("frozen", "other")}
    real = trainer.sample

    def pausing(parts: Any, requests: Any, **kw: Any) -> Any:
        results = real(parts, requests, **kw)
        name = threading.current_thread().name
        sampled[name].set()
        release[name].wait(120)
        return results

    monkeypatch.setattr(trainer, "sample", pausing)
    threads = {name: threading.Thread(target=generation.run_generate, args=(rt, gen_id), name=name)
               for name, rt in (("frozen", frozen), ("other", other))}
    try:
        threads["frozen"].start()
        assert sampled["frozen"].wait(120)
        # no heartbeat thread: the frozen worker's row goes stale, the sweep requeues it, the other host claims it
        deadline = time.monotonic() + 60
        while get_row(frozen, Generation, gen_id).state != "queued" and time.monotonic() < deadline:
            requeue_stale(frozen.session_factory, settings, lambda kind, row_id: "task-id")
            time.sleep(0.05)
        threads["other"].start()
        assert sampled["other"].wait(120)
        release["frozen"].set()  # it wakes while the other worker holds the row
        threads["frozen"].join(120)
        row = get_row(frozen, Generation, gen_id)
        assert (row.state, row.worker_host, row.image_keys) == ("running", other.worker_host, [])
    finally:
        for event in release.values():
            event.set()
        for thread in threads.values():
            if thread.is_alive() or thread.ident is not None:
                thread.join(120)
        engine.dispose()
    done = get_row(frozen, Generation, gen_id)
    assert (done.state, done.worker_host, done.attempts, len(done.image_keys)) == (
        "succeeded", other.worker_host, 2, 2)


def test_a_frozen_train_worker_does_not_fail_a_job_taken_over_by_another(worker_runtime: Runtime) -> None:
    """A worker that wakes past the stale window and hits an error must not end the job another worker runs."""
    rt = worker_runtime
    job_id = make_job(rt, state="running", attempts=1, worker_host=rt.worker_host)
    run = training.TrainingRun(rt, [get_row(rt, TrainingJob, job_id)])
    with rt.session_factory() as s:  # meanwhile: requeued and claimed by another host
        s.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(worker_host="other-host:4242",
                                                                             attempts=2))
        s.commit()
    run.fail(run.jobs[0], "training_error", "the frozen worker's error")
    job = get_row(rt, TrainingJob, job_id)
    assert (job.state, job.worker_host, job.error_code) == ("running", "other-host:4242", None)
    with rt.session_factory() as s:  # the worker that holds it can still end it
        assert jobs.transition(s, job_id, expected="running", new="failed", held_by="other-host:4242")
