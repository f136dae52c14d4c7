"""Constant conditioning (trainer/uvit_forward.py): the U-ViT run from prompt-only values computed once gives the
logits of the model's own forward, with a trainable LoRA bank routed, and trains the same adapters.

Bound (CPU, fp32): the prompt-side products run over a different number of rows (once per prompt or image instead
of once per batch row), and BLAS may block them differently: the modulations then differ in the last bit (1.2e-7)
and the logits by at most 7.5e-7 of the largest logit (measured, all three models). Asserted: max |difference|
<= RTOL · max |logit| for logits and LoRA gradients; trained adapters within TRAIN_RTOL (measured 3.3e-8).
The full-batch form (one row per prompt and image) too: the fused RMSNorm and AdaLN `addcmul` round once where
diffusers rounds twice, so it is no longer bitwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UVit2DModel
from PIL import Image

from trainer.bank import LoraBank
from trainer.model import load_base
from trainer.train import StyleSpec, TrainConfig, train_styles
from trainer.uvit_forward import forward_with_conditioning, precompute_conditioning

RTOL = 1e-5
TRAIN_RTOL = 1e-4  # training: losses elementwise, adapter tensors ||once - every|| / ||every||
TRAINED: list[float] = []
MEASURED: list[float] = []  # relative logit differences seen (largest printed at the end of the module)


def assert_close_rel(got: torch.Tensor, want: torch.Tensor) -> None:
    err = float((got - want).detach().abs().max() / want.detach().abs().max())
    MEASURED.append(err)
    assert err <= RTOL, err


def _wider() -> UVit2DModel:
    """Bigger than tiny and shaped like amused-512: hidden 64 over 48 channels (so every U-ViT attention block has
    its own kv_mapper, as amused-256's 1024 over 768 does), 3 layers, 2 ConvNeXt blocks per side, down/up-sampling."""
    torch.manual_seed(3)
    model = UVit2DModel(hidden_size=64, use_bias=False, cond_embed_dim=40, micro_cond_encode_dim=8,
                        micro_cond_embed_dim=40, encoder_hidden_size=40, vocab_size=136, codebook_size=128,
                        in_channels=24, block_out_channels=48, num_res_blocks=2, downsample=True, upsample=True,
                        block_num_heads=4, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                        sample_size=8)
    return model.requires_grad_(False).eval()


@pytest.fixture(params=["tiny", "tiny-512", "wider"])
def model(request: pytest.FixtureRequest, engine_tiny_dir: Path) -> UVit2DModel:
    if request.param == "wider":
        return _wider()
    return load_base(request.param, tiny_dir=engine_tiny_dir).transformer


def test_logits_and_lora_gradients_equal_the_models_own_forward(model: UVit2DModel) -> None:
    c = model.config
    side = c.sample_size * (2 if c.downsample else 1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (4, side, side), generator=g)
    hidden = torch.randn(2, 77, c.encoder_hidden_size, generator=g)  # two prompts
    pooled = torch.randn(2, c.cond_embed_dim, generator=g)
    micro = torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0], [320.0, 256.0, 0.0, 32.0, 6.0],
                          [1023.0, 700.0, 3.0, 5.0, 5.0]])
    prompt_of_cond = torch.tensor([0, 1, 1])  # three image rows: prompt 0's one image, prompt 1's two
    text_rows, cond_rows = torch.tensor([1, 0, 1, 1]), torch.tensor([2, 0, 1, 2])  # four batch rows

    bank = LoraBank(model, 3, rank=4, trainable=True)
    try:
        for slot in (1, 2, 3):
            bank.init_slot(slot, torch.Generator().manual_seed(slot), alpha=8.0)
            with torch.no_grad():
                for b in bank.lora_B:  # nonzero B (a trained adapter's size): B = 0 would test nothing
                    b[slot].normal_(std=0.05, generator=g)
        bank.set_rows([1, 2, 0, 3])
        want = model(ids, encoder_hidden_states=hidden[text_rows], pooled_text_emb=pooled[text_rows],
                     micro_conds=micro[cond_rows])
        cond = precompute_conditioning(model, hidden, pooled[prompt_of_cond], micro)
        got = forward_with_conditioning(model, cond, ids, text_rows, cond_rows)
        assert got.shape == want.shape == (4, c.codebook_size, side, side)
        assert_close_rel(got, want)
        params = list(bank.parameters())
        for a, b in zip(torch.autograd.grad(want.square().mean(), params),
                        torch.autograd.grad(got.square().mean(), params), strict=True):
            assert a.abs().sum() > 0  # the gradient reaches the routed slots through every path
            assert float((b - a).abs().max()) <= RTOL * float(a.abs().max())
        bank.clear_rows()  # without routes: the base model, and the full-batch form (no row indices)
        with torch.no_grad():
            base = model(ids[:3], encoder_hidden_states=hidden[prompt_of_cond], pooled_text_emb=pooled[prompt_of_cond],
                         micro_conds=micro)
            full = precompute_conditioning(model, hidden[prompt_of_cond], pooled[prompt_of_cond], micro)
            assert_close_rel(forward_with_conditioning(model, full, ids[:3]), base)
        assert not torch.allclose(base[0], want[3])  # routed rows differ from the base (row 3 uses slot 3)
    finally:
        bank.remove()


def test_gradient_checkpointing_is_refused() -> None:
    model = _wider()
    model.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient checkpointing"):
        precompute_conditioning(model, torch.zeros(1, 77, 40), torch.zeros(1, 40), torch.zeros(1, 5))


def test_training_from_constant_conditioning_gives_the_same_adapters(engine_tiny_dir: Path,
                                                                     engine_style_image: Image.Image) -> None:
    specs = [StyleSpec([engine_style_image], "stripes", steps=4, seed=1, learning_rate=3e-3),
             StyleSpec([engine_style_image.rotate(90), engine_style_image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)],
                       "turned", content="a board", steps=5, seed=2, learning_rate=2e-3)]
    parts = load_base(str(engine_tiny_dir))
    once, every = (train_styles(parts, specs, TrainConfig(progress_every=2, constant_conditioning=flag))
                   for flag in (True, False))
    for a, b in zip(once, every, strict=True):
        assert a.adapter is not None and b.adapter is not None
        assert len(a.losses) == a.step
        np.testing.assert_allclose(a.losses, b.losses, rtol=TRAIN_RTOL)
        assert a.adapter.tensors.keys() == b.adapter.tensors.keys()
        for k, v in b.adapter.tensors.items():
            err = float((a.adapter.tensors[k] - v).norm() / v.norm().clamp(min=1e-12))
            TRAINED.append(err)
            assert err <= TRAIN_RTOL, (k, err)
    assert once[0].losses != once[1].losses


def teardown_module() -> None:
    if MEASURED:
        print(f"\nlargest relative logit difference: {max(MEASURED):.2e}")
    if TRAINED:
        print(f"largest relative adapter difference after training: {max(TRAINED):.2e}")
