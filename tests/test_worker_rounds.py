"""Feedback rounds in the train worker (in-process, tiny model and tiny CLIP): a human round trains the next
version on the picked images with their prompts as captions, an automatic round on the CLIP-best render per
feedback prompt; a round that cannot get its images fails with a reason."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select, update

import trainer
import worker.tasks as tasks
import worker.training as training
from storage.job_params import JobParams
from storage.models import Adapter, Generation, JobEvent, TrainingJob, utcnow
from tests.helpers.db import get_row, make_generation, make_job
from worker import generation
from worker.runtime import Runtime
from worker.shared import open_image


def _v1(rt: Runtime) -> Adapter:
    job_id = make_job(rt, steps=2)
    assert tasks.run_train(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        return s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()


def _round_job(rt: Runtime, v1: Adapter, feedback: dict[str, Any]) -> str:
    """A round's job as the API writes it (api/services/rounds.py)."""
    with rt.session_factory() as s:
        params = JobParams.model_validate({"steps": 3, "seed": 5, "descriptor": v1.descriptor, "round": feedback})
        job = TrainingJob(style_id=v1.style_id, owner_id=v1.owner_id, total_steps=3, params=params.to_json())
        s.add(job)
        s.commit()
        return job.id


@pytest.fixture
def spy_specs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The StyleSpecs the worker hands the engine (which still runs)."""
    seen: list[Any] = []
    real = training.train_styles

    def spy(parts: Any, specs: Any, *a: Any, **kw: Any) -> Any:
        seen.extend(specs)
        return real(parts, specs, *a, **kw)

    monkeypatch.setattr(training, "train_styles", spy)
    return seen


def _adapter_of(rt: Runtime, job_id: str) -> Adapter:
    with rt.session_factory() as s:
        return s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()


def test_human_round_trains_v2_on_the_picked_images_with_their_prompts(worker_runtime: Runtime,
                                                                        spy_specs: list[Any]) -> None:
    rt = worker_runtime
    v1 = _v1(rt)
    gen_id = make_generation(rt, v1.owner_id, v1.id, num_images=2, prompt="A castle in striped poster style")
    assert generation.run_generate(rt, gen_id) == "done"
    gen = get_row(rt, Generation, gen_id)
    job_id = _round_job(rt, v1, {"mode": "human", "selection": [{"generation_id": gen_id, "index": 1}]})
    assert tasks.run_train(rt, job_id) == "succeeded"
    (spec,) = spy_specs[-1:]
    (example,) = spec.examples
    assert example.caption == "A castle in striped poster style"
    picked = open_image(rt.store.get_bytes(gen.image_keys[1])).convert("RGB")
    assert example.image.tobytes() == picked.tobytes()
    v2 = _adapter_of(rt, job_id)
    assert v2.version == 2 and v2.style_id == v1.style_id and v2.text_score is not None
    a1, a2 = (trainer.adapter_from_bytes(rt.store.get_bytes(a.blob_key)) for a in (v1, v2))
    assert any(not torch.equal(a1.tensors[k], a2.tensors[k]) for k in a1.tensors)


def test_automatic_round_trains_on_the_clip_best_render_per_prompt(worker_runtime: Runtime,
                                                                   spy_specs: list[Any]) -> None:
    rt = worker_runtime
    v1 = _v1(rt)
    job_id = _round_job(rt, v1, {"mode": "automatic", "adapter_id": v1.id, "version": 1, "prompts": 2,
                                 "per_prompt": 3})
    assert tasks.run_train(rt, job_id) == "succeeded"
    examples = spy_specs[-1].examples
    prompts = trainer.feedback_prompts("striped poster")[:2]
    assert [e.caption for e in examples] == prompts
    with rt.session_factory() as s:
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        job = s.get(TrainingJob, job_id)
        assert job is not None
        stored = job.picks or []
    (pick_event,) = [e for e in events if e.kind == "picks"]
    picks = pick_event.payload["picks"]
    assert [p["prompt"] for p in picks] == prompts and {p["candidate"] // 3 for p in picks} == {0, 1}
    assert [p["image_url"] for p in picks] == [f"/v1/jobs/{job_id}/picks/{n}" for n in range(2)]
    assert all("image_key" not in p for p in picks)
    # One pick from each prompt's 3 candidates, and the scores are those of the images trained on, which are the
    # stored PNGs the picks' URLs serve.
    clip = rt.clip()
    assert clip is not None
    text = trainer.clip_text_score(clip, [e.image for e in examples], prompts)
    assert text.tolist() == pytest.approx([p["text_score"] for p in picks], abs=1e-6)
    for row, example in zip(stored, examples, strict=True):
        data = rt.store.get_bytes(row["image_key"])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert open_image(data).convert("RGB").tobytes() == example.image.tobytes()
    assert _adapter_of(rt, job_id).version == 2

    # Every phase the user waits on, in order, before the first training step: candidates rendered (done rising
    # to 6 of 6, with an ETA once one batch is done), then scored, then training; previews after the last step.
    phases = [(e.payload["phase"], e.payload["done"], e.payload["total"], e.payload["eta_seconds"])
              for e in events if e.kind == "phase"]
    rendering = [p for p in phases if p[0] == "rendering_candidates"]
    assert [d for _, d, _, _ in rendering] == sorted({d for _, d, _, _ in rendering}) and rendering[0][1:3] == (0, 6)
    assert rendering[-1][1:3] == (6, 6) and len(rendering) >= 2 and rendering[0][3] is None
    assert all(eta is not None for _, done, _, eta in rendering if done)
    assert [p[0] for p in phases] == (["rendering_candidates"] * len(rendering) + ["scoring"] * 2
                                      + ["training"] + ["rendering_previews"] * 2)
    assert phases[len(rendering):len(rendering) + 3] == [("scoring", 0, 6, None), ("scoring", 6, 6, phases[
        len(rendering) + 1][3]), ("training", 0, 3, None)]
    first_progress = next(i for i, e in enumerate(events) if e.kind == "progress")
    last_render = max(i for i, e in enumerate(events) if e.kind == "phase" and e.payload["phase"] != "training"
                      and e.payload["phase"] != "rendering_previews")
    assert last_render < first_progress
    assert [e.kind for e in events].index("picks") < first_progress


def test_rounds_that_cannot_get_their_images_fail_with_a_reason(worker_runtime: Runtime, tmp_path: Path) -> None:
    rt = worker_runtime
    v1 = _v1(rt)
    gone = _round_job(rt, v1, {"mode": "human", "selection": [{"generation_id": "0" * 32, "index": 0}]})
    assert tasks.run_train(rt, gone) == "failed"
    assert get_row(rt, TrainingJob, gone).error_code == "selection_missing"
    no_clip = Runtime(rt.settings.model_copy(update={"clip_model": str(tmp_path / "none")}), rt.session_factory,
                      rt.store, kind="train")
    auto = _round_job(rt, v1, {"mode": "automatic", "adapter_id": v1.id, "version": 1, "prompts": 1,
                               "per_prompt": 1})
    assert tasks.run_train(no_clip, auto) == "failed"
    job = get_row(rt, TrainingJob, auto)
    assert job.error_code == "clip_unavailable" and "STYLEDROP_CLIP_MODEL" in job.error_message


class _Crash(BaseException):
    """Stands in for SIGKILL: nothing in the task catches it."""


def test_an_automatic_round_resumed_after_a_crash_equals_one_run_through(
    worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints and resume hold for rounds too: the resumed run re-renders the same candidates (seeds from the
    job's seed), keeps the same picks and ends with the adapter an uninterrupted round makes."""
    rt = worker_runtime
    v1 = _v1(rt)
    feedback = {"mode": "automatic", "adapter_id": v1.id, "version": 1, "prompts": 2, "per_prompt": 2}
    straight = _round_job(rt, v1, feedback)
    with rt.session_factory() as s:
        s.get(TrainingJob, straight).total_steps = 8  # type: ignore[union-attr]
        s.commit()
    assert tasks.run_train(rt, straight) == "succeeded"

    crashed = _round_job(rt, v1, feedback)
    with rt.session_factory() as s:
        s.get(TrainingJob, crashed).total_steps = 8  # type: ignore[union-attr]
        s.commit()
    real = training.train_styles

    def crashing(parts: Any, specs: Any, config: Any, callbacks: Any) -> Any:
        steps = iter(range(1, 100))

        def stop(i: int) -> bool:
            if next(steps) >= 6:  # after step 6; the last checkpoint is step 4
                raise _Crash
            return bool(callbacks.should_stop(i))

        return real(parts, specs, config, dataclasses.replace(callbacks, should_stop=stop))

    monkeypatch.setattr(training, "train_styles", crashing)
    with pytest.raises(_Crash):
        tasks.run_train(rt, crashed)
    assert get_row(rt, TrainingJob, crashed).checkpoint_step == 4
    monkeypatch.setattr(training, "train_styles", real)
    with rt.session_factory() as s:
        s.execute(update(TrainingJob).where(TrainingJob.id == crashed)
                  .values(heartbeat_at=utcnow() - timedelta(hours=1)))
        s.commit()
    rt2 = Runtime(rt.settings, rt.session_factory, rt.store, kind="train")
    rt2.worker_host = "other-host:4242"
    assert tasks.run_train(rt2, crashed) == "succeeded"
    a, b = (trainer.adapter_from_bytes(rt.store.get_bytes(_adapter_of(rt, j).blob_key)) for j in (straight, crashed))
    for k, v in a.tensors.items():
        torch.testing.assert_close(b.tensors[k], v)
    assert [_adapter_of(rt, j).version for j in (straight, crashed)] == [2, 3]


def test_an_automatic_round_cancelled_while_rendering_candidates_stops_there(
    worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel reaches a round before its first step: the rendered batch's phase report stops it, and it ends
    cancelled without scoring, training or a version."""
    rt = worker_runtime
    v1 = _v1(rt)
    job_id = _round_job(rt, v1, {"mode": "automatic", "adapter_id": v1.id, "version": 1, "prompts": 3,
                                 "per_prompt": 4})
    real = trainer.render_candidates

    def cancelled_after_first_batch(*a: Any, on_batch: Any, **kw: Any) -> Any:
        def batch(done: int, total: int) -> None:
            with rt.session_factory() as s:  # what POST /v1/jobs/{id}/cancel does to a running job
                s.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                          .values(state="cancelling", cancel_requested_at=utcnow()))
                s.commit()
            on_batch(done, total)

        return real(*a, on_batch=batch, **kw)

    monkeypatch.setattr(trainer, "render_candidates", cancelled_after_first_batch)
    assert tasks.run_train(rt, job_id) == "cancelled"
    with rt.session_factory() as s:
        kinds = [e.kind for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        phases = [e.payload for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                                     JobEvent.kind == "phase"))]
        assert s.scalars(select(Adapter).where(Adapter.job_id == job_id)).first() is None
    # Recorded up to the first batch of 4 (the batch it was cancelled in), and stopped there.
    assert [(p["phase"], p["done"], p["total"]) for p in phases] == [("rendering_candidates", 0, 12),
                                                                      ("rendering_candidates", 4, 12)]
    assert "picks" not in kinds and "progress" not in kinds
    assert get_row(rt, TrainingJob, job_id).state == "cancelled"
