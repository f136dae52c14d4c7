"""The train and generate task bodies run in-process on SQLite with the tiny model."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

import trainer
import worker.tasks as tasks
import worker.training as training
from storage.blobs import sha256_hex
from storage.models import Adapter, Generation, JobEvent, Style, TrainingJob, Worker, utcnow
from storage.states import WorkKind
from tests.helpers.db import get_row, make_generation, make_job
from tests.helpers.spies import record_calls
from worker import generation
from worker.ops.reconciler import reconcile_once
from worker.runtime import Runtime, beat_once


def _events(rt: Runtime, job_id: str, kind: str) -> list[JobEvent]:
    with rt.session_factory() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
                              .order_by(JobEvent.id)))


def _adapters_for(rt: Runtime, job_id: str) -> list[Adapter]:
    with rt.session_factory() as s:
        return list(s.scalars(select(Adapter).where(Adapter.job_id == job_id)))


def test_train_succeeds_with_progress_adapter_and_previews(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    job_id = make_job(rt)
    assert tasks.run_train(rt, job_id) == "succeeded"
    job = get_row(rt, TrainingJob, job_id)
    assert job.state == "succeeded" and job.step == 12 and job.attempts == 1 and job.device_seconds > 0
    assert job.finished_at is not None and job.worker_host == rt.worker_host
    progress = _events(rt, job_id, "progress")
    assert [e.payload["step"] for e in progress] == [2, 4, 6, 8, 10, 12]
    assert set(progress[0].payload) == {"step", "total", "loss", "lr", "steps_per_second", "eta_seconds"}
    (adapter,) = _adapters_for(rt, job_id)
    data = rt.store.get_bytes(adapter.blob_key)
    assert sha256_hex(data) == adapter.sha256 and adapter.bytes == len(data)
    assert trainer.adapter_from_bytes(data).meta.steps == 12
    previews = _events(rt, job_id, "preview")
    assert len(previews) == 2 and previews[0].payload["prompt"] == "a cat in striped poster style"
    assert rt.store.get_bytes(previews[0].payload["image_key"]).startswith(b"\x89PNG")
    assert job.checkpoint_key is None or not rt.store.exists(job.checkpoint_key)  # cleaned up

    # a second delivery of the same message does nothing
    n_events = len(_events(rt, job_id, "state")) + len(progress)
    assert tasks.run_train(rt, job_id) == "skipped"
    assert len(_events(rt, job_id, "state")) + len(_events(rt, job_id, "progress")) == n_events
    assert len(_adapters_for(rt, job_id)) == 1


class _Crash(BaseException):
    """Stands in for SIGKILL: nothing in the task catches it."""


def test_resume_from_checkpoint_after_crash(worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime
    job_id = make_job(rt)
    real = training.train_styles
    resumed_at: list[int | None] = []

    def crashing(parts: Any, specs: Any, config: Any, callbacks: Any) -> Any:
        resumed_at.append(specs[0].resume.step if specs[0].resume else None)
        steps = iter(range(1, 100))

        def stop(i: int) -> bool:
            if next(steps) >= 6:  # after step 6; the last checkpoint is step 4
                raise _Crash
            return bool(callbacks.should_stop(i))

        return real(parts, specs, config, replace(callbacks, should_stop=stop))

    monkeypatch.setattr(training, "train_styles", crashing)
    with pytest.raises(_Crash):
        tasks.run_train(rt, job_id)
    job = get_row(rt, TrainingJob, job_id)
    assert (job.state, job.checkpoint_step, job.step) == ("running", 4, 6)

    # The worker is gone: its heartbeat goes stale. A redelivery to another worker process takes over.
    with rt.session_factory() as s:
        s.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(hours=1)))
        s.commit()
    def spy(parts: Any, specs: Any, config: Any, callbacks: Any) -> Any:
        resumed_at.append(specs[0].resume.step if specs[0].resume else None)
        return real(parts, specs, config, callbacks)

    monkeypatch.setattr(training, "train_styles", spy)
    rt2 = Runtime(rt.settings, rt.session_factory, rt.store, kind="train")
    rt2.worker_host = "other-host:4242"
    assert tasks.run_train(rt2, job_id) == "succeeded"
    assert resumed_at == [None, 4]
    job = get_row(rt, TrainingJob, job_id)
    assert job.state == "succeeded" and job.attempts == 2 and job.worker_host == "other-host:4242"
    steps = [e.payload["step"] for e in _events(rt, job_id, "progress")]
    assert steps == [2, 4, 6, 6, 8, 10, 12]  # 2,4,6 before the crash; 6.. after resuming at 4
    assert len(_adapters_for(rt, job_id)) == 1


def test_fresh_running_job_is_left_alone_and_attempts_are_capped(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    busy = make_job(rt, state="running", worker_host="elsewhere:1", heartbeat_at=utcnow(), attempts=1)
    assert tasks.run_train(rt, busy) == "skipped"
    assert get_row(rt, TrainingJob, busy).state == "running"
    worn = make_job(rt, attempts=3)
    assert tasks.run_train(rt, worn) == "skipped"
    job = get_row(rt, TrainingJob, worn)
    assert (job.state, job.error_code) == ("failed", "too_many_attempts")
    cancelled = make_job(rt, cancel_requested_at=utcnow())
    tasks.run_train(rt, cancelled)
    assert get_row(rt, TrainingJob, cancelled).state == "cancelled"


def test_cancel_mid_run_and_bad_image(worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime
    rt.settings.cancel_poll_seconds = 0  # poll at every step, so the stop step is exact
    job_id = make_job(rt)
    real = training.train_styles

    def cancel_at_4(parts: Any, specs: Any, config: Any, callbacks: Any) -> Any:
        def progress(i: int, p: trainer.Progress) -> None:
            callbacks.on_progress(i, p)
            if p.step == 4:
                with rt.session_factory() as s:
                    s.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                              .values(state="cancelling", cancel_requested_at=utcnow()))
                    s.commit()

        return real(parts, specs, config, replace(callbacks, on_progress=progress))

    monkeypatch.setattr(training, "train_styles", cancel_at_4)
    assert tasks.run_train(rt, job_id) == "cancelled"
    job = get_row(rt, TrainingJob, job_id)
    assert job.state == "cancelled" and job.step == 4 and _adapters_for(rt, job_id) == []

    bad = make_job(rt)
    with rt.session_factory() as s:
        style = s.get(Style, get_row(rt, TrainingJob, bad).style_id)
        assert style is not None
        rt.store.put_bytes(style.image_key, b"not an image at all")
    assert tasks.run_train(rt, bad) == "failed"
    job = get_row(rt, TrainingJob, bad)
    assert job.error_code == "bad_image" and "could not be read" in (job.error_message or "")


def _trained_adapters(rt: Runtime, n: int) -> tuple[str, list[str]]:
    owner = None
    ids = []
    for i in range(n):
        job_id = make_job(rt, steps=2, seed=i, color=(40 * (i + 1), 90, 200 - 40 * i), owner=owner)
        owner = get_row(rt, TrainingJob, job_id).owner_id
        assert tasks.run_train(rt, job_id) == "succeeded"
        ids.append(_adapters_for(rt, job_id)[0].id)
    assert owner is not None
    return owner, ids


def test_generate_batches_different_adapters_in_one_sample_call(
    worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = worker_runtime
    owner, (a1, a2) = _trained_adapters(rt, 2)
    rt2 = Runtime(rt.settings, rt.session_factory, rt.store, kind="generate")  # a generate worker started earlier
    g1 = make_generation(rt2, owner, a1, num_images=2)
    g2 = make_generation(rt2, owner, a2)
    g3 = make_generation(rt2, owner, None)
    calls = record_calls(monkeypatch, trainer, "sample")
    assert generation.run_generate(rt2, g1) == "done"
    assert len(calls) == 1 and len(calls[0]) == 4
    assert [r.seed for r in calls[0]] == [7, 8, 7, 7]
    assert len({r.adapter for r in calls[0]}) == 3  # two slots and the base model
    gens = [get_row(rt2, Generation, g) for g in (g1, g2, g3)]
    assert all(g.state == "succeeded" for g in gens)
    assert len({g.started_at for g in gens}) == 1  # claimed together
    assert [len(g.image_keys) for g in gens] == [2, 1, 1]
    assert rt2.store.get_bytes(gens[0].image_keys[0]).startswith(b"\x89PNG")
    assert rt2.cache().stats()["misses"] == 2
    # the other generations' own messages find them done
    assert generation.run_generate(rt2, g2) == "skipped" and len(calls) == 1
    # the heartbeat reports the cache
    beat_once(rt2)
    row = get_row(rt2, Worker, rt2.worker_id)
    assert row.kind == "generate" and row.stats["misses"] == 2


def test_corrupt_adapter_fails_only_its_generation(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    owner, (a1, a2) = _trained_adapters(rt, 2)
    key = get_row(rt, Adapter, a1).blob_key
    data = bytearray(rt.store.get_bytes(key))
    data[-10] ^= 0xFF
    rt.store.put_bytes(key, bytes(data))
    rt2 = Runtime(rt.settings, rt.session_factory, rt.store, kind="generate")
    bad = make_generation(rt2, owner, a1)
    good = make_generation(rt2, owner, a2)
    generation.run_generate(rt2, bad)
    b, g = get_row(rt2, Generation, bad), get_row(rt2, Generation, good)
    assert (b.state, b.error_code) == ("failed", "adapter_corrupt")
    assert g.state == "succeeded" and len(g.image_keys) == 1


def test_reconciler_requeues_stale_and_resends_unsent(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    old = utcnow() - timedelta(hours=1)
    stale = make_job(rt, state="running", attempts=1, heartbeat_at=old, worker_host="dead:1")
    worn = make_job(rt, state="running", attempts=3, heartbeat_at=old, worker_host="dead:1")
    unsent = make_job(rt, queued_at=old)
    fresh_sent = make_job(rt, queued_at=old, sent_at=utcnow())
    owner = get_row(rt, TrainingJob, unsent).owner_id
    gen = make_generation(rt, owner, None, queued_at=old)
    sent: list[tuple[str, str]] = []

    def send(kind: WorkKind, row_id: str) -> str:  # stands in for the broker
        sent.append((kind[0], row_id))
        return f"{kind[0]}id"

    report = reconcile_once(rt.session_factory, rt.settings, send)
    assert sorted(sent) == sorted([("t", stale), ("t", unsent), ("g", gen)])
    assert report.requeued_jobs == [stale] and report.failed_jobs == [worn]
    assert get_row(rt, TrainingJob, stale).state == "queued"
    assert get_row(rt, TrainingJob, worn).error_code == "too_many_attempts"
    assert get_row(rt, TrainingJob, unsent).celery_task_id == "tid"
    assert get_row(rt, TrainingJob, fresh_sent).celery_task_id is None
    with rt.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Adapter)) == 0


def test_messages_out_of_order_still_run_jobs_in_database_order(worker_runtime: Runtime) -> None:
    """The embedded broker may deliver the newest job's message first: the database decides which job runs."""
    rt = worker_runtime
    t0 = utcnow() - timedelta(minutes=5)
    ids = [make_job(rt, steps=2, queued_at=t0 + timedelta(seconds=i), color=(40 * i, 90, 90)) for i in range(3)]
    for message in reversed(ids):  # wake-ups arrive newest first
        assert tasks.run_train(rt, message) == "succeeded"
    rows = [get_row(rt, TrainingJob, i) for i in ids]
    assert all(r.state == "succeeded" and r.attempts == 1 for r in rows)
    assert [r.started_at for r in rows] == sorted(r.started_at for r in rows)
    assert rows[0].finished_at <= rows[1].started_at and rows[1].finished_at <= rows[2].started_at
    assert tasks.run_train(rt, ids[0]) == "skipped"  # a duplicate message of a finished job changes nothing
    assert [get_row(rt, TrainingJob, i).attempts for i in ids] == [1, 1, 1]
    assert all(len(_adapters_for(rt, i)) == 1 for i in ids)


def test_a_train_batch_runs_claimed_jobs_together_each_with_its_own_results(
        worker_runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    rt = worker_runtime
    rt.settings.train_batch, rt.settings.cancel_poll_seconds = 3, 0  # polled every step
    t0 = utcnow() - timedelta(minutes=5)
    ids = [make_job(rt, steps=4 + i % 2, seed=i, queued_at=t0 + timedelta(seconds=i),
                    color=(40 * i, 90, 200 - 30 * i)) for i in range(5)]
    assert tasks.run_train(rt, ids[0]) == "succeeded"
    # three claimed together; the other two join that run when two of them leave at step 4 (worker/train_batch.py)
    rows = [get_row(rt, TrainingJob, i) for i in ids]
    assert all(r.state == "succeeded" and r.attempts == 1 and r.step == r.total_steps for r in rows)
    assert len({r.run_id for r in rows}) == 1 and rows[0].run_id is not None
    assert min(r.started_at for r in rows[3:]) >= min(r.finished_at for r in rows[:3])
    assert tasks.run_train(rt, ids[1]) == "skipped"  # its job already ran, and nothing is queued
    assert "no longer ours" not in caplog.text  # a job finished while others train is not taken for a lost one
    for r in rows:  # each job its own progress (every 2 steps and the last), adapter and previews
        want = [2, 4] if r.total_steps == 4 else [2, 4, 5]
        assert [e.payload["step"] for e in _events(rt, r.id, "progress")] == want
        (adapter,) = _adapters_for(rt, r.id)
        assert trainer.adapter_from_bytes(rt.store.get_bytes(adapter.blob_key)).meta.seed == r.params["seed"]
        assert len(_events(rt, r.id, "preview")) == 2
    assert tasks.run_train(rt, ids[4]) == "skipped"


def test_a_job_queued_mid_batch_starts_inside_that_batch(worker_runtime: Runtime,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A job queued while a run trains joins it at the next progress boundary (a slot free: train_batch = 2),
    instead of waiting for the run to end; it gets its own progress, adapter and previews."""
    rt = worker_runtime
    rt.settings.train_batch = 2
    first = make_job(rt, steps=6, seed=1)
    late: list[str] = []
    report = training.TrainingRun.report

    def report_then_queue(run: training.TrainingRun, j: training.JobRun, p: trainer.Progress) -> None:
        report(run, j, p)
        if not late:  # a user submits a style while the first job is at step 2 of 6
            late.append(make_job(rt, steps=4, seed=2, color=(30, 200, 60)))

    monkeypatch.setattr(training.TrainingRun, "report", report_then_queue)
    assert tasks.run_train(rt, first) == "succeeded"
    a, b = get_row(rt, TrainingJob, first), get_row(rt, TrainingJob, late[0])
    assert a.state == b.state == "succeeded" and a.run_id == b.run_id and b.attempts == 1
    assert b.started_at < a.finished_at  # it trained beside the first job, not after it
    # claimed at the first step boundary after it was queued: after the first job's step-2 report, before step 4
    (claimed,) = [e.id for e in _events(rt, b.id, "state") if e.payload["to"] == "running"]
    steps_of_a = {e.payload["step"]: e.id for e in _events(rt, a.id, "progress")}
    assert steps_of_a[2] < claimed < steps_of_a[4]
    assert [e.payload["step"] for e in _events(rt, b.id, "progress")] == [2, 4]
    (adapter,) = _adapters_for(rt, b.id)
    assert trainer.adapter_from_bytes(rt.store.get_bytes(adapter.blob_key)).meta.steps == 4
    assert len(_events(rt, b.id, "preview")) == 2
    assert tasks.run_train(rt, b.id) == "skipped"  # its own wake-up, delivered later, finds it done


def test_cancelling_a_joined_job_ends_only_it_at_once(worker_runtime: Runtime,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime
    rt.settings.train_batch, rt.settings.cancel_poll_seconds = 2, 0  # cancel polled every step: exact stop step
    first = make_job(rt, steps=8, seed=1)
    late: list[str] = []
    report = training.TrainingRun.report

    def report_queue_and_cancel(run: training.TrainingRun, j: training.JobRun, p: trainer.Progress) -> None:
        report(run, j, p)
        if not late:
            late.append(make_job(rt, steps=6, seed=2, color=(30, 200, 60)))
        elif j.id == late[0] and p.step == 2:  # the user cancels the job that joined
            with rt.session_factory() as s:
                s.execute(update(TrainingJob).where(TrainingJob.id == late[0])
                          .values(state="cancelling", cancel_requested_at=utcnow()))
                s.commit()

    monkeypatch.setattr(training.TrainingRun, "report", report_queue_and_cancel)
    assert tasks.run_train(rt, first) == "succeeded"
    a, b = get_row(rt, TrainingJob, first), get_row(rt, TrainingJob, late[0])
    assert b.run_id == a.run_id and b.state == "cancelled" and b.step == 2 and _adapters_for(rt, b.id) == []
    assert b.finished_at < a.finished_at  # ended when it stopped, not when the batch did
    assert a.state == "succeeded" and a.step == 8 and len(_adapters_for(rt, a.id)) == 1
    assert [e.payload["step"] for e in _events(rt, a.id, "progress")] == [2, 4, 6, 8]


def test_a_job_with_a_checkpoint_joins_a_running_batch_and_resumes(worker_runtime: Runtime,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers.engine import checkpoint_at, pattern_image

    rt = worker_runtime
    rt.settings.train_batch = 2
    first = make_job(rt, steps=8, seed=1)
    ckpt = checkpoint_at(rt.parts(), pattern_image(0), 4)  # an earlier attempt's checkpoint (rank, alpha as here)
    late: list[str] = []
    report = training.TrainingRun.report

    def report_then_queue(run: training.TrainingRun, j: training.JobRun, p: trainer.Progress) -> None:
        report(run, j, p)
        if not late:  # a requeued job, with its checkpoint at step 4 of 8, comes back while the first one trains
            rt.store.put_bytes("checkpoints/earlier.safetensors", ckpt.to_bytes())
            late.append(make_job(rt, steps=8, seed=2, color=(30, 200, 60), checkpoint_step=4,
                                 checkpoint_key="checkpoints/earlier.safetensors"))

    monkeypatch.setattr(training.TrainingRun, "report", report_then_queue)
    assert tasks.run_train(rt, first) == "succeeded"
    b = get_row(rt, TrainingJob, late[0])
    assert b.state == "succeeded" and b.run_id == get_row(rt, TrainingJob, first).run_id
    assert [e.payload["step"] for e in _events(rt, b.id, "progress")] == [6, 8]  # resumed at 4, not from 0
    (adapter,) = _adapters_for(rt, b.id)
    assert trainer.adapter_from_bytes(rt.store.get_bytes(adapter.blob_key)).meta.steps == 8
    assert not rt.store.exists("checkpoints/earlier.safetensors")  # done with: deleted on success
