"""The fewer-kernel training step against what it replaces.

- `fused_norm.norm` equals diffusers' RMSNorm (values and input gradient) within fp32 rounding, as ONE op each way.
- The trainable bank's fused Q/K/V projection (one bmm for every linear reading the same input) equals the unfused
  per-linear LoRA `out + α/r · (x Aᵀ) Bᵀ`, and its layout is the adapter files' (views, no copies).
- Training (flat master, fused projections, fused norms, precomputed cross-attention keys/values, per-slot AdamW
  over one buffer) follows the old path — peft on the model's own forward, `torch.optim.AdamW`, one style at a time
  (tests/helpers/reference_train.py) — at S = 1 and S = 3, tiny and mid: losses within LOSS_RTOL elementwise,
  adapter tensors within NORM_RTOL (‖new − old‖ / ‖old‖). Measured at 200 steps: docs/benchmarks.md §6.
- Checkpoints: format 2 AdamW checkpoints still load; format 2 8-bit ones are refused, naming the version.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.normalization import RMSNorm
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from testkit.models import build_mid
from tests.helpers.engine import pattern_image, random_adapter
from tests.helpers.reference_train import reference_train
from trainer.bank import LoraBank
from trainer.capture import OpCounter
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.fused_norm import norm
from trainer.lora import read_safetensors_metadata
from trainer.model import AmusedParts
from trainer.train import Callbacks, StyleSpec, TrainConfig, recipe_for, train_styles

LOSS_RTOL = 1e-4  # measured ≤ 1.7e-5 over 20 steps (tiny, S = 3)
NORM_RTOL = 5e-3  # measured ≤ 1.2e-3 (a style with a small learning rate: its B is still small)


@pytest.mark.parametrize("affine", [True, False])
def test_fused_rms_norm_equals_diffusers(affine: bool) -> None:
    g = torch.Generator().manual_seed(0)
    module = RMSNorm(48, 1e-6, affine)
    if affine:
        with torch.no_grad():
            module.weight.normal_(generator=g)
        module.weight.requires_grad_(False)
    x = (torch.randn(3, 10, 48, generator=g) * 3).requires_grad_()
    grad = torch.randn(3, 10, 48, generator=g)
    want = module(x)
    (want_grad,) = torch.autograd.grad(want, x, grad)
    with OpCounter() as counter:
        got = norm(module, x)
        (got_grad,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    assert counter.by_name["rms_norm"] == 1 and counter.by_name["rms_norm_backward"] == 1
    assert counter.ops - counter.by_name["detach"] == 2  # nothing else but saving the inputs
    xb = x.detach().bfloat16()
    if affine:
        module.to(torch.bfloat16)
    torch.testing.assert_close(norm(module, xb).float(), module(xb).float(), rtol=1e-2, atol=1e-2)


def test_fused_qkv_projection_equals_the_unfused_lora(engine_parts: AmusedParts) -> None:
    t = engine_parts.transformer
    bank = LoraBank(t, 2, trainable=True)
    try:
        bank.load(1, random_adapter(engine_parts, seed=3, alpha=8.0))
        bank.load(2, random_adapter(engine_parts, seed=4, alpha=32.0))
        layer = t.transformer_layers[0]
        x = torch.randn(3, 16, layer.attn1.to_q.in_features, generator=torch.Generator().manual_seed(1))
        enc = torch.randn(3, 7, layer.attn2.to_k.in_features, generator=torch.Generator().manual_seed(2))
        slots = [2, 0, 1]
        bank.set_rows(slots)
        bank.prepare(t)  # what the model's forward pre-hook does: this forward's weights
        params = bank.slot_params
        with torch.no_grad():
            for attn, src in ((layer.attn1, {"to_q": x, "to_k": x, "to_v": x}),
                              (layer.attn2, {"to_k": enc, "to_v": enc})):
                for name, inp in src.items():
                    lin = getattr(attn, name)
                    key = next(k for k in bank.keys if t.get_submodule(k) is lin)
                    got = lin(inp)
                    for row, s in enumerate(slots):
                        want = inp[row] @ lin.weight.T  # slot 0: the base
                        if s:
                            a, b = params(s)[key]  # (r, in), (out, r): the adapter file's layout
                            want = want + float(bank.scale[s]) * (inp[row] @ a.T) @ b.T
                        torch.testing.assert_close(got[row], want, rtol=1e-5, atol=1e-5)
        assert bank.store is not None
        groups = [len(g.members) for g in bank.store.layout.groups]
        assert groups.count(3) == len(t.transformer_layers)  # every self-attention: q, k, v in one matmul
        assert bank.master.data_ptr() == bank.store.storage.data_ptr()  # the leaf: the storage's first rows
        assert all(a.data_ptr() >= bank.master.data_ptr() for a in bank.lora_A)  # views of the one buffer
    finally:
        bank.remove()


def _compare(parts: AmusedParts, styles: int, steps: int) -> None:
    cfg = recipe_for(parts, TrainConfig(steps=steps, progress_every=steps))
    lrs = [4e-4, 1e-3, 2e-4]
    specs = [StyleSpec([pattern_image(k)], f"style {k}", seed=k + 1, learning_rate=lrs[k]) for k in range(styles)]
    for spec, result in zip(specs, train_styles(parts, specs, cfg), strict=True):
        assert result.adapter is not None and spec.seed is not None and spec.learning_rate is not None
        losses, tensors = reference_train(parts, spec.images, result.prompt, seed=spec.seed,
                                          lr=spec.learning_rate, steps=steps, cfg=cfg)
        new, old = torch.tensor(result.losses), torch.tensor(losses)
        torch.testing.assert_close(new, old, rtol=LOSS_RTOL, atol=0)
        assert set(tensors) == set(result.adapter.tensors)
        for k, v in tensors.items():
            err = float((result.adapter.tensors[k] - v).norm() / v.norm())
            assert err <= NORM_RTOL, (k, err)
        assert losses[-1] < losses[0]  # it trained


@pytest.mark.parametrize("styles", [1, 3])
def test_training_follows_the_old_path_on_tiny(engine_parts: AmusedParts, styles: int) -> None:
    _compare(engine_parts, styles, steps=12)


@pytest.mark.parametrize("styles", [1, 3])
def test_training_follows_the_old_path_on_mid(styles: int) -> None:
    _compare(build_mid(), styles, steps=4)


def test_format_2_checkpoints_load_for_adamw_and_are_refused_for_8bit() -> None:
    state = {"exp_avg.0": torch.ones(2, 3), "rng": torch.zeros(4, dtype=torch.uint8),
             "adapter.m.lora_A.weight": torch.ones(2, 3)}
    for optimizer in ("adamw", "adamw8bit"):
        data = st_save(state, metadata={"format": "styledrop-checkpoint-2", "step": "5", "scaler": "{}",
                                        "optimizer": optimizer})
        ckpt = Checkpoint.from_bytes(data)
        assert ckpt.step == 5 and ckpt.format == "styledrop-checkpoint-2"
        shapes = {"m.lora_A.weight": torch.Size([2, 3])}
        if optimizer == "adamw":
            ckpt.check_matches(shapes, {"exp_avg": [torch.Size([2, 3])]}, optimizer)
        else:
            with pytest.raises(CheckpointError, match="styledrop-checkpoint-2"):
                ckpt.check_matches(shapes, {"exp_avg": [torch.Size([2, 3])]}, optimizer)
    with pytest.raises(CheckpointError, match="styledrop-checkpoint-1"):
        Checkpoint.from_bytes(st_save(state, metadata={"format": "styledrop-checkpoint-1", "step": "5"}))


def test_a_format_2_adamw_checkpoint_resumes_exactly_like_format_3(engine_parts: AmusedParts) -> None:
    """Format 2 wrote the same keys and per-layer shapes (one tensor per layer's A, then B): relabelled, a format 3
    checkpoint is one; resuming from it continues bit for bit like resuming from the format 3 bytes."""
    cfg = TrainConfig(steps=4, checkpoint_every=2, progress_every=1)
    spec = StyleSpec([pattern_image(1)], "dots", seed=3)
    saved: list[Checkpoint] = []
    train_styles(engine_parts, [spec], cfg, Callbacks(on_checkpoint=lambda _i, c: saved.append(c)))
    raw = saved[0].to_bytes()
    tensors, header = st_load(raw), read_safetensors_metadata(raw)
    old = st_save(tensors, metadata={**header, "format": "styledrop-checkpoint-2"})
    runs = []
    for data in (raw, old):
        ckpt = Checkpoint.from_bytes(data)
        (result,) = train_styles(engine_parts, [StyleSpec(spec.images, "dots", seed=3, resume=ckpt)], cfg)
        assert result.adapter is not None and result.step == 4
        runs.append(result)
    assert runs[0].losses == runs[1].losses
    for k, v in runs[0].adapter.tensors.items():  # type: ignore[union-attr]
        assert torch.equal(v, runs[1].adapter.tensors[k])  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_on_cuda_is_one_kernel_each_way_and_equals_diffusers(dtype: torch.dtype) -> None:
    module = RMSNorm(64, 1e-6, True).to("cuda", dtype)
    module.weight.requires_grad_(False)
    x = torch.randn(4, 33, 64, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    want = module(x)
    (want_grad,) = torch.autograd.grad(want, x, grad)
    with OpCounter() as counter:
        got = norm(module, x)
        (got_grad,) = torch.autograd.grad(got, x, grad)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(got_grad, want_grad, rtol=tol, atol=tol)
    assert counter.by_name["_fused_rms_norm"] == 1 and counter.by_name["_fused_rms_norm_backward"] == 1
