"""Captioned references, subject adapters and style + subject generations through the real train and generate
task bodies (in-process, SQLite, tiny model), as tests/test_worker_tasks.py runs them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

import trainer
import worker.tasks as tasks
import worker.training as training
from storage.blobs import content_key, sha256_hex
from storage.models import Adapter, Generation, JobEvent, Style, TrainingJob
from testkit.images import style_png
from tests.helpers.db import get_row, make_generation, make_job
from tests.helpers.spies import record_calls
from worker import generation
from worker.runtime import Runtime


def _with_references(rt: Runtime, job_id: str, colors: list[tuple[int, int, int]], *, captions: list[str | None],
                     kind: str = "style", class_word: str | None = None) -> None:
    """Turn make_job's style into one with several stored references (as POST /v1/styles makes it)."""
    refs = []
    for color, caption in zip(colors, captions, strict=True):
        data = style_png(color)
        key = content_key("styles", sha256_hex(data), "png")
        rt.store.put_bytes(key, data)
        refs.append({"key": key, "sha256": sha256_hex(data), "bytes": len(data), "width": 256, "height": 256,
                     "caption": caption})
    with rt.session_factory() as s:
        style_id = get_row(rt, TrainingJob, job_id).style_id
        s.execute(update(Style).where(Style.id == style_id).values(
            references=refs, kind=kind, class_word=class_word, image_key=refs[0]["key"]))
        s.commit()


def _adapter(rt: Runtime, job_id: str) -> Adapter:
    with rt.session_factory() as s:
        row = s.scalar(select(Adapter).where(Adapter.job_id == job_id))
        assert row is not None
        return row


def _previews(rt: Runtime, job_id: str) -> list[str]:
    with rt.session_factory() as s:
        return [e.payload["prompt"] for e in s.scalars(select(JobEvent).where(
            JobEvent.job_id == job_id, JobEvent.kind == "preview").order_by(JobEvent.id))]


def test_a_style_trains_on_its_captioned_references(worker_runtime: Runtime,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime
    job_id = make_job(rt, steps=2)
    _with_references(rt, job_id, [(200, 40, 40), (40, 200, 40)], captions=["a red fence in poster style", None])
    seen: list[trainer.StyleSpec] = []
    real = training.train_styles

    def spy(parts: Any, specs: Any, *args: Any, **kw: Any) -> Any:
        seen.extend(specs)
        return real(parts, specs, *args, **kw)

    monkeypatch.setattr(training, "train_styles", spy)
    assert tasks.run_train(rt, job_id) == "succeeded"
    (spec,) = seen
    assert spec.examples is not None and not spec.images  # each image with its caption; none left: the prompt
    assert [e.caption for e in spec.examples] == ["a red fence in poster style", "an image in striped poster style"]
    assert [e.image.getpixel((20, 5)) for e in spec.examples] != [spec.examples[0].image.getpixel((20, 5))] * 2
    meta = trainer.adapter_from_bytes(rt.store.get_bytes(_adapter(rt, job_id).blob_key)).meta
    assert meta.train_prompt == "an image in striped poster style" and meta.descriptor == "striped poster"


def _trained_style_and_subject(rt: Runtime) -> tuple[str, str, str, str]:
    style_job = make_job(rt, steps=2, seed=1)
    owner = get_row(rt, TrainingJob, style_job).owner_id
    subject_job = make_job(rt, steps=2, seed=2, owner=owner, color=(30, 160, 220))
    _with_references(rt, subject_job, [(30, 160, 220), (220, 160, 30)], captions=[None, None], kind="subject",
                     class_word="dog")
    assert tasks.run_train(rt, style_job) == "succeeded"
    assert tasks.run_train(rt, subject_job) == "succeeded"
    return owner, _adapter(rt, style_job).id, _adapter(rt, subject_job).id, subject_job


def test_style_and_subject_mix_in_one_batch_and_gamma_zero_is_the_style_alone(
    worker_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = worker_runtime
    owner, style, subject, subject_job = _trained_style_and_subject(rt)
    meta = trainer.adapter_from_bytes(rt.store.get_bytes(get_row(rt, Adapter, subject).blob_key)).meta
    assert meta.train_prompt == "a photo of sks dog"
    assert _previews(rt, subject_job) == ["a photo of sks dog", "a photo of sks dog on a beach"]

    gen_rt = Runtime(rt.settings, rt.session_factory, rt.store, kind="generate")
    alone = make_generation(gen_rt, owner, style)
    gamma0 = make_generation(gen_rt, owner, style, subject_adapter_id=subject, subject_weight=0.0)
    mixed = make_generation(gen_rt, owner, style, subject_adapter_id=subject, subject_weight=0.6,
                            text_guidance=5.0)
    subject_only = make_generation(gen_rt, owner, None, subject_adapter_id=subject)  # γ: the default
    base = make_generation(gen_rt, owner, None)
    calls = record_calls(monkeypatch, trainer, "sample")
    assert generation.run_generate(gen_rt, alone) == "done"
    assert len(calls) == 1 and len(calls[0]) == 5  # every combination in one sampling loop
    reqs = calls[0]
    assert reqs[0].subject is None and reqs[1].subject is not None and reqs[1].subject == reqs[2].subject
    assert reqs[0].adapter == reqs[1].adapter and reqs[0].adapter != reqs[1].subject
    assert [r.subject_weight for r in reqs[1:4]] == [0.0, 0.6, trainer.contracts.limits.DEFAULT_SUBJECT_WEIGHT]
    assert reqs[2].text_guidance == 5.0 and reqs[0].text_guidance is None
    assert reqs[3].adapter is None and reqs[4].adapter is None and reqs[4].subject is None
    assert gen_rt.cache().stats()["misses"] == 2  # both adapters went through the cache, once each

    gens = {g: get_row(gen_rt, Generation, g) for g in (alone, gamma0, mixed, subject_only, base)}
    assert all(g.state == "succeeded" for g in gens.values()), [(g.state, g.error_message) for g in gens.values()]
    image = {g: gen_rt.store.get_bytes(row.image_keys[0]) for g, row in gens.items()}
    assert image[gamma0] == image[alone]  # γ = 0: exactly the style adapter alone
    assert image[mixed] != image[alone] and image[subject_only] != image[base]


def test_a_missing_subject_adapter_fails_only_its_generation(worker_runtime: Runtime) -> None:
    rt = worker_runtime
    owner, style, subject, _ = _trained_style_and_subject(rt)
    rt.store.delete(get_row(rt, Adapter, subject).blob_key)
    gen_rt = Runtime(rt.settings, rt.session_factory, rt.store, kind="generate")
    bad = make_generation(gen_rt, owner, style, subject_adapter_id=subject, subject_weight=0.5)
    good = make_generation(gen_rt, owner, style)
    generation.run_generate(gen_rt, bad)
    b, g = get_row(gen_rt, Generation, bad), get_row(gen_rt, Generation, good)
    assert b.state == "failed" and b.error_code and "adapter" in b.error_code
    assert g.state == "succeeded"
