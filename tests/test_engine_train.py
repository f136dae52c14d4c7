"""StyleDrop training on the tiny model: it learns, it resumes exactly, it reports, stops and checkpoints."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from trainer.bank import LoraBank
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.model import AmusedParts
from trainer.sampler import GenerationRequest, sample
from trainer.train import Progress, TrainConfig, evaluation_loss, prepare_style, train_style, training_prompt

FAST = dict(learning_rate=3e-3)  # the tiny model learns in tens of steps at a higher rate than the recipe's


def code_histogram(tokens: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(tokens.flatten(), minlength=size).float() / tokens.numel()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def test_prompt_follows_styledrop_form() -> None:
    assert training_prompt("watercolor painting", "a mushroom") == "a mushroom in watercolor painting style"
    assert training_prompt("melting golden 3d rendering style") == "an image in melting golden 3d rendering style"


def test_it_learns_the_style(engine_parts: AmusedParts, engine_style_image: Image.Image) -> None:
    data = prepare_style(engine_parts, [engine_style_image], training_prompt("stripes"))
    before = evaluation_loss(engine_parts, data)
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=100, **FAST))
    assert result.adapter is not None and len(result.losses) == 100
    bank = LoraBank(engine_parts.transformer, 1)
    bank.load(1, result.adapter, name="slot0")
    after = evaluation_loss(engine_parts, data, adapter="slot0")
    # 1) the masked-token loss on the style image falls by at least half
    assert after <= 0.5 * before, (before, after)
    assert evaluation_loss(engine_parts, data) == pytest.approx(before)  # the base model is untouched

    # 2) Measure: total-variation distance between the histogram of VQ codes in sampled images and in the style
    # image. Images sampled with the adapter are closer to the style's code distribution than without it.
    style_hist = code_histogram(data.tokens, engine_parts.codebook_size)
    prompts = ["a cat in stripes style", "a house in stripes style", "a tree in stripes style"]
    reqs = [GenerationRequest(p, seed=i, steps=8) for i, p in enumerate(prompts)]
    base = sample(engine_parts, reqs, decode=False)
    styled = sample(engine_parts, [GenerationRequest(r.prompt, seed=r.seed, steps=8, adapter="slot0")
                                   for r in reqs], decode=False)
    tv_base = total_variation(code_histogram(torch.stack([r.tokens for r in base]), engine_parts.codebook_size),
                              style_hist)
    tv_styled = total_variation(code_histogram(torch.stack([r.tokens for r in styled]),
                                               engine_parts.codebook_size), style_hist)
    assert tv_styled < tv_base - 0.1, (tv_base, tv_styled)


def test_training_is_deterministic_on_cpu(engine_parts: AmusedParts, engine_style_image: Image.Image) -> None:
    runs = [train_style(engine_parts, [engine_style_image], descriptor="stripes",
                        config=TrainConfig(steps=6, seed=3, **FAST)) for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    assert runs[0].adapter is not None and runs[1].adapter is not None
    for k, v in runs[0].adapter.tensors.items():
        assert torch.equal(v, runs[1].adapter.tensors[k])
    other = train_style(engine_parts, [engine_style_image], descriptor="stripes",
                        config=TrainConfig(steps=6, seed=4, **FAST))
    assert other.losses != runs[0].losses


def test_resume_from_checkpoint_continues_exactly(engine_parts: AmusedParts, engine_tiny_dir,  # type: ignore[no-untyped-def]
                                                  engine_style_image: Image.Image) -> None:
    from trainer.model import load_base

    config = TrainConfig(steps=12, checkpoint_every=5, **FAST)
    checkpoints: list[Checkpoint] = []
    full = train_style(engine_parts, [engine_style_image], descriptor="stripes", config=config,
                       on_checkpoint=checkpoints.append)
    assert [c.step for c in checkpoints] == [5, 10]
    # A new process: fresh model, the checkpoint read back from bytes (as from the blob store).
    fresh = load_base(str(engine_tiny_dir))
    resumed = train_style(fresh, [engine_style_image], descriptor="stripes", config=config,
                          resume=Checkpoint.from_bytes(checkpoints[0].to_bytes()))
    assert resumed.step == 12 and len(resumed.losses) == 7
    assert resumed.losses == full.losses[5:]
    assert full.adapter is not None and resumed.adapter is not None
    for k, v in full.adapter.tensors.items():
        assert torch.equal(v, resumed.adapter.tensors[k])


def test_progress_stop_and_checkpoint_callbacks(engine_parts: AmusedParts, engine_style_image: Image.Image) -> None:
    seen: list[Progress] = []
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=50, progress_every=2, **FAST), on_progress=seen.append,
                         should_stop=lambda: bool(seen) and seen[-1].step >= 4)
    assert result.stopped and result.adapter is None and result.step == 4
    assert [p.step for p in seen] == [2, 4]
    assert all(p.total == 50 and p.loss > 0 and p.learning_rate == 3e-3 and p.steps_per_second > 0 for p in seen)
    assert not getattr(engine_parts.transformer, "peft_config", {})  # the training adapter is removed again


def test_recipe_defaults_per_base(engine_parts: AmusedParts, engine_style_image: Image.Image) -> None:
    result = train_style(engine_parts, [engine_style_image, engine_style_image.rotate(90)], descriptor="stripes",
                         content="a grid", config=TrainConfig(steps=1))
    assert result.adapter is not None
    meta = result.adapter.meta
    assert (meta.rank, meta.alpha, meta.steps) == (16, 32.0, 1)  # the 256 recipe: rank 16, alpha 32
    assert meta.train_prompt == "a grid in stripes style" and meta.descriptor == "stripes"
    assert meta.base_model == engine_parts.model_id


@pytest.mark.parametrize("config,match", [
    (TrainConfig(steps=1, optimizer="adamw8bit"), "CUDA"),
    (TrainConfig(steps=1, mixed_precision="bf16"), "CUDA"),
    (TrainConfig(steps=0), "steps"),
])
def test_gpu_only_options_and_bad_steps_are_clear_errors_on_cpu(engine_parts: AmusedParts,
                                                                engine_style_image: Image.Image,
                                                                config: TrainConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_style(engine_parts, [engine_style_image], descriptor="stripes", config=config)


def test_corrupt_checkpoint_is_refused() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")


def test_512_recipe_uses_lr_1e3_and_alpha_1(engine_tiny_dir, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    from trainer.model import load_base

    parts = load_base("tiny-512", tiny_dir=engine_tiny_dir)
    seen: list[Progress] = []
    result = train_style(parts, [engine_style_image], descriptor="stripes", config=TrainConfig(steps=2),
                         on_progress=seen.append)
    assert result.adapter is not None
    assert (result.adapter.meta.rank, result.adapter.meta.alpha) == (16, 1.0)
    assert seen[-1].learning_rate == 1e-3
    assert result.adapter.meta.base_model == "tiny-512"


def test_stop_hands_a_last_checkpoint_at_the_stop_step(engine_parts: AmusedParts,
                                                       engine_style_image: Image.Image) -> None:
    checkpoints: list[Checkpoint] = []
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=50, checkpoint_every=2, **FAST), on_checkpoint=checkpoints.append,
                         should_stop=lambda: len(checkpoints) >= 1 and checkpoints[-1].step >= 2)
    # Step 2 was checkpointed on schedule and the stop came right after it: no second copy of step 2.
    assert result.stopped and result.step == 2 and [c.step for c in checkpoints] == [2]
    checkpoints.clear()
    steps = iter(range(1, 100))
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=50, checkpoint_every=4, **FAST), on_checkpoint=checkpoints.append,
                         should_stop=lambda: next(steps) >= 3)
    assert result.stopped and result.step == 3 and [c.step for c in checkpoints] == [3]
