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


def test_adamw8bit_trains(cuda_parts, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("bitsandbytes")
    from trainer.checkpoint import Checkpoint
    from trainer.train import TrainConfig, train_style

    ckpts: list[Checkpoint] = []
    result = train_style(cuda_parts, [engine_style_image], descriptor="stripes", on_checkpoint=ckpts.append,
                         config=TrainConfig(steps=20, learning_rate=3e-3, optimizer="adamw8bit", checkpoint_every=10))
    assert result.adapter is not None and len(ckpts) == 1
    assert Checkpoint.from_bytes(ckpts[0].to_bytes()).step == 10  # 8-bit optimizer state round-trips


def test_cuda_sampling_with_mixed_adapters(cuda_parts) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.engine import random_adapter
    from trainer.lora import AdapterSlots
    from trainer.sampler import GenerationRequest, sample

    adapters = [random_adapter(cuda_parts, seed=s) for s in (1, 2)]
    slots = AdapterSlots(cuda_parts.transformer, 2)
    for slot, adapter in zip(slots.names, adapters, strict=True):
        slots.load(slot, adapter)
    results = sample(cuda_parts, [GenerationRequest("a cat", seed=1, adapter="slot0"),
                                  GenerationRequest("a dog", seed=2, adapter="slot1"),
                                  GenerationRequest("a tree", seed=3)])
    assert [r.image.size for r in results if r.image is not None] == [(256, 256)] * 3
