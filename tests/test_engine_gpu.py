"""GPU-only paths (bf16 autocast, 8-bit AdamW, CUDA sampling). Opt-in: skipped cleanly without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def cuda_parts(engine_tiny_dir: Path):  # type: ignore[no-untyped-def]
    from trainer.model import load_base

    return load_base(str(engine_tiny_dir), device="cuda", dtype=torch.bfloat16)


def test_bf16_autocast_training_learns_and_keeps_lora_in_fp32(cuda_parts, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    from trainer.train import TrainConfig, train_style

    result = train_style(cuda_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=60, learning_rate=3e-3, mixed_precision="bf16"))
    assert result.adapter is not None
    assert all(t.dtype == torch.float32 for t in result.adapter.tensors.values())
    assert sum(result.losses[-10:]) / 10 < 0.7 * sum(result.losses[:10]) / 10
    assert next(cuda_parts.vqvae.parameters()).device.type == "cuda"  # encoders came back after offloading


def test_adamw8bit_is_a_clear_error_in_the_batched_trainer(cuda_parts, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    # bitsandbytes quantises moments in blocks that would span the bank's style slots (not supported yet)
    from trainer.train import TrainConfig, train_style

    with pytest.raises(ValueError, match="adamw8bit"):
        train_style(cuda_parts, [engine_style_image], descriptor="stripes",
                    config=TrainConfig(steps=2, optimizer="adamw8bit"))


def test_cuda_styles_together_equal_alone_one_sync_per_interval(cuda_parts, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    import warnings

    from trainer.train import Callbacks, StyleSpec, TrainConfig, train_styles

    cuda_parts.transformer.float()  # fp32 for the equality; bf16 is covered above
    specs = [StyleSpec([engine_style_image.rotate(90 * k)], f"s{k}", steps=6 + k, seed=k, learning_rate=3e-3)
             for k in range(3)]
    alone = [train_styles(cuda_parts, [spec], TrainConfig(progress_every=3))[0] for spec in specs]
    syncs: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            together = train_styles(cuda_parts, specs, TrainConfig(progress_every=3),
                                    Callbacks(on_progress=lambda i, p: syncs.append(len(caught)) if i == 0 else None))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert syncs[1] - syncs[0] <= 1  # steps 4..6 and their one loss read-back
    for got, want in zip(together, alone, strict=True):
        assert got.adapter is not None and want.adapter is not None
        for k, v in want.adapter.tensors.items():
            assert float((got.adapter.tensors[k] - v).norm() / v.norm().clamp(min=1e-12)) <= 2e-3, k


def test_cuda_sampling_with_mixed_adapters(cuda_parts) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.engine import random_adapter
    from trainer.bank import LoraBank
    from trainer.sampler import GenerationRequest, sample

    adapters = [random_adapter(cuda_parts, seed=s) for s in (1, 2)]
    bank = LoraBank(cuda_parts.transformer, 2)
    for slot, adapter in enumerate(adapters, start=1):
        bank.load(slot, adapter, name=f"slot{slot - 1}")
    results = sample(cuda_parts, [GenerationRequest("a cat", seed=1, adapter="slot0"),
                                  GenerationRequest("a dog", seed=2, adapter="slot1"),
                                  GenerationRequest("a tree", seed=3)])
    assert [r.image.size for r in results if r.image is not None] == [(256, 256)] * 3


def test_cuda_compiled_forward_samples_like_eager(cuda_parts) -> None:  # type: ignore[no-untyped-def]
    """The captured path (torch.compile + CUDA graphs over the LoRA bank's static buffers) against eager, in bf16:
    tokens may differ where two codes' scores tie within bf16 rounding, so at most 2% of them."""
    from tests.helpers.engine import random_adapter
    from trainer.bank import LoraBank
    from trainer.capture import compile_transformer
    from trainer.sampler import GenerationRequest, sample

    bank = LoraBank(cuda_parts.transformer, 2)
    for slot in (1, 2):
        bank.load(slot, random_adapter(cuda_parts, seed=slot), name=f"s{slot}")
    reqs = [GenerationRequest("a cat", seed=1, adapter="s1"), GenerationRequest("a dog", seed=2, adapter="s2"),
            GenerationRequest("a tree", seed=3)]
    eager = sample(cuda_parts, reqs, decode=False)
    compile_transformer(cuda_parts.transformer)
    captured = sample(cuda_parts, reqs, decode=False)
    captured_again = sample(cuda_parts, reqs, decode=False)  # a replay
    for e, c, c2 in zip(eager, captured, captured_again, strict=True):
        assert float((e.tokens != c.tokens).float().mean()) <= 0.02
        assert torch.equal(c.tokens, c2.tokens)
