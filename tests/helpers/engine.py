"""Engine test helpers (the tiny model's fixtures are in tests/conftest.py): random adapters, a peft reference
copy, small pattern images to train on, and the "same training result" check of the multi-style tests."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from peft import set_peft_model_state_dict
from PIL import Image

from testkit.models import random_adapter as random_lora
from trainer.bank import find_bank
from trainer.checkpoint import Checkpoint
from trainer.lora import Adapter, lora_config
from trainer.model import AmusedParts
from trainer.train import TrainResult


def random_adapter(parts: AmusedParts, seed: int, rank: int = 16, alpha: float = 32.0) -> Adapter:
    """An adapter file's content with non-zero A and B (N(0, 0.3²)), for the model's Q/K/V linears."""
    return random_lora(parts.transformer, seed, rank=rank, alpha=alpha, base_model="tiny")


def peft_copy(transformer: torch.nn.Module, adapter: Adapter) -> torch.nn.Module:
    """A deep copy of `transformer` with `adapter` added through peft: the reference the bank is checked against."""
    bank = find_bank(transformer)
    if bank is not None:
        bank.remove()  # not into the copy: its hooks and stacked weights stay with the original
    try:
        t = copy.deepcopy(transformer)
    finally:
        if bank is not None:
            bank.install()
    t.add_adapter(lora_config(adapter.meta.rank, adapter.meta.alpha, adapter.meta.targets), adapter_name="ref")
    result = set_peft_model_state_dict(t, dict(adapter.tensors), adapter_name="ref")
    assert not [k for k in result.unexpected_keys], result.unexpected_keys
    return t.eval()


# --- training results: a style trained in a batch equals itself trained alone, up to fp32 batch rounding ----

RTOL = 1e-4  # losses, elementwise
NORM_RTOL = 2e-3  # adapter tensors: ||batched - alone|| / ||alone||, per tensor
MEASURED: list[float] = []  # every relative difference assert_same_result saw


def pattern_image(kind: int) -> Image.Image:
    a = np.zeros((256, 256, 3), dtype=np.uint8)
    if kind == 0:  # stripes
        a[:, ::32] = [255, 0, 0]
        a[::2] = [0, 0, 255]
    elif kind == 1:  # checkerboard
        a[(np.indices((256, 256)).sum(0) // 32) % 2 == 0] = [240, 220, 30]
    elif kind == 2:  # diagonal gradient
        a[..., 1] = (np.add.outer(np.arange(256), np.arange(256)) // 2).astype(np.uint8)
    else:  # dots
        a[8::24, 8::24] = [255, 255, 255]
        a[..., 2] = 90
    return Image.fromarray(a)


def assert_same_result(got: TrainResult, want: TrainResult) -> None:
    assert got.adapter is not None and want.adapter is not None
    assert got.step == want.step and got.prompt == want.prompt
    assert got.adapter.meta == want.adapter.meta
    np.testing.assert_allclose(got.losses, want.losses, rtol=RTOL)
    for k, v in want.adapter.tensors.items():
        err = float((got.adapter.tensors[k] - v).norm() / v.norm().clamp(min=1e-12))
        MEASURED.append(err)
        assert err <= NORM_RTOL, (k, err)


# --- serving after training, resumable checkpoints, diffusers' pipelines --------------------------------------


def serving_tokens(parts: AmusedParts, adapter: str = "served") -> torch.Tensor:
    """Tokens of one short request through the serving bank's adapter `adapter` (raises if it is not loaded)."""
    from trainer.sampler import GenerationRequest, sample

    (res,) = sample(parts, [GenerationRequest("a cat", seed=3, steps=3, adapter=adapter)], decode=False)
    return res.tokens


def checkpoint_at(parts: AmusedParts, image: Image.Image, step: int, **config: object) -> Checkpoint:
    """The checkpoint a training run of one style hands over at `step` (config: TrainConfig fields)."""
    from trainer.train import TrainConfig, train_style

    got: list[Checkpoint] = []
    train_style(parts, [image], descriptor="stripes", on_checkpoint=got.append,
                config=TrainConfig(**{"steps": step + 1, "checkpoint_every": step, **config}))  # type: ignore[arg-type]
    assert [c.step for c in got] == [step]
    return got[0]


def amused_pipeline(cls: type, parts: AmusedParts) -> Any:
    """diffusers' aMUSEd pipeline `cls` (AmusedPipeline, AmusedImg2ImgPipeline, ...) over `parts`' modules."""
    from diffusers import AmusedScheduler

    pipe = cls(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
               transformer=parts.transformer, scheduler=AmusedScheduler(mask_token_id=parts.mask_token_id))
    pipe.set_progress_bar_config(disable=True)
    return pipe
