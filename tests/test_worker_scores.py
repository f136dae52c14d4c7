"""Scores: every adapter version gets the mean CLIP text and style score of its previews, every generation one
of each per image, equal to a direct `trainer.clip` computation; without CLIP the work still succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

import trainer
import worker.tasks as tasks
from storage.job_params import JobParams
from storage.models import Adapter, Generation, JobEvent, Style, TrainingJob
from tests.helpers.db import get_row, make_generation, make_job
from worker import generation
from worker.runtime import Runtime
from worker.shared import open_image


def _image(rt: Runtime, key: str) -> object:
    return open_image(rt.store.get_bytes(key)).convert("RGB")


def test_adapter_and_generation_scores_match_a_direct_clip_computation(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    assert rt.settings.resolved_clip_model == "tiny"  # the tiny demo model brings the tiny CLIP
    job_id = make_job(rt, steps=2)
    assert tasks.run_train(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        style = s.get(Style, get_row(rt, TrainingJob, job_id).style_id)
        previews = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "preview")
                                  .order_by(JobEvent.id)))
    assert adapter.version == 1 and style is not None and len(previews) == 2
    clip = trainer.load_clip("tiny", tiny_dir=rt.settings.data_dir / "models" / "tiny-clip")
    images = [_image(rt, e.payload["image_key"]) for e in previews]
    reference = _image(rt, style.image_key)
    text = trainer.clip_text_score(clip, images, [e.payload["prompt"] for e in previews])  # type: ignore[arg-type]
    style_s = trainer.clip_style_score(clip, images, [reference])  # type: ignore[list-item, arg-type]
    assert adapter.text_score == pytest.approx(float(text.mean()), abs=1e-6)
    assert adapter.style_score == pytest.approx(float(style_s.mean()), abs=1e-6)

    # A second version of the same style gets v2 and its own scores.
    with rt.session_factory() as s:
        again = TrainingJob(style_id=style.id, owner_id=style.owner_id, total_steps=2,
                            params=JobParams(steps=2, seed=9, descriptor=style.descriptor).to_json())
        s.add(again)
        s.commit()
        again_id = again.id
    assert tasks.run_train(rt, again_id) == "succeeded"
    with rt.session_factory() as s:
        v2 = s.scalars(select(Adapter).where(Adapter.job_id == again_id)).one()
    assert v2.version == 2 and v2.text_score is not None and v2.text_score != adapter.text_score

    with_adapter = make_generation(rt, style.owner_id, adapter.id, num_images=2)
    plain = make_generation(rt, style.owner_id, None)
    assert generation.run_generate(rt, with_adapter) == "done"
    for gen_id, has_style in ((with_adapter, True), (plain, False)):
        gen = get_row(rt, Generation, gen_id)
        assert gen.state == "succeeded"
        images = [_image(rt, k) for k in gen.image_keys]
        expected = trainer.clip_text_score(clip, images, [gen.prompt] * len(images))  # type: ignore[arg-type]
        assert gen.text_scores == pytest.approx(expected.tolist(), abs=1e-6)
        if has_style:
            exp_style = trainer.clip_style_score(clip, images, [reference])  # type: ignore[list-item, arg-type]
            assert gen.style_scores == pytest.approx(exp_style.tolist(), abs=1e-6)
        else:
            assert gen.style_scores is None


def test_missing_clip_leaves_scores_empty_and_the_work_succeeds(worker_runtime: Runtime, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime(worker_runtime.settings.model_copy(update={"clip_model": str(tmp_path / "no-such-clip")}),
                 worker_runtime.session_factory, worker_runtime.store, kind="train")
    job_id = make_job(rt, steps=2)
    assert tasks.run_train(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
    assert adapter.text_score is None and adapter.style_score is None
    assert "scores disabled" in caplog.text and "no-such-clip" in caplog.text
    gen_id = make_generation(rt, adapter.owner_id, adapter.id)
    assert generation.run_generate(rt, gen_id) == "done"
    gen = get_row(rt, Generation, gen_id)
    assert gen.state == "succeeded" and gen.text_scores is None and gen.style_scores is None


def test_the_style_score_compares_with_every_reference_image(worker_runtime: Runtime) -> None:
    from storage.blobs import content_key, sha256_hex
    from testkit.images import style_png

    rt = worker_runtime
    job_id = make_job(rt, steps=2)
    second = style_png((20, 200, 60))
    key2 = content_key("styles", sha256_hex(second), "png")
    rt.store.put_bytes(key2, second)
    with rt.session_factory() as s:
        style = s.get(Style, get_row(rt, TrainingJob, job_id).style_id)
        assert style is not None
        style.references = [{"key": style.image_key, "caption": None}, {"key": key2, "caption": None}]
        s.commit()
        keys, owner = [style.image_key, key2], style.owner_id
    assert tasks.run_train(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        previews = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "preview")
                                  .order_by(JobEvent.id)))
    clip = trainer.load_clip("tiny", tiny_dir=rt.settings.data_dir / "models" / "tiny-clip")
    references = [_image(rt, k) for k in keys]
    shown = [_image(rt, e.payload["image_key"]) for e in previews]
    expected = trainer.clip_style_score(clip, shown, references)  # type: ignore[arg-type]
    assert adapter.style_score == pytest.approx(float(expected.mean()), abs=1e-6)
    gen_id = make_generation(rt, owner, adapter.id)
    assert generation.run_generate(rt, gen_id) == "done"
    gen = get_row(rt, Generation, gen_id)
    images = [_image(rt, k) for k in gen.image_keys]
    assert gen.style_scores == pytest.approx(
        trainer.clip_style_score(clip, images, references).tolist(), abs=1e-6)  # type: ignore[arg-type]
