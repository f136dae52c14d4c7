"""RMSNorm as one kernel forward and one backward: torch's fused RMSNorm, wrapped as an opaque op.

diffusers' `RMSNorm.forward` is six to eight element-wise ops (cast to fp32, pow, mean, add, rsqrt, mul, cast,
mul by the weight) and its autograd backward about fifteen more; the U-ViT runs ≈90 of them per training step.
On CUDA torch has the fused forward and backward (`aten::_fused_rms_norm` / `_fused_rms_norm_backward`, what
`F.rms_norm` dispatches to there); on the CPU `F.rms_norm` is a composite of the same small ops. `norm` calls the
fused op directly on CUDA (its own autograd formula is the fused backward: one kernel each way, no Python in
between) and, on the CPU, `styledrop::rms_norm`, a `torch.library` custom op doing the same maths, so that the
dispatcher — and the op counts of bench/train_ops.py, which run on the CPU — see ONE op each way there too (a
custom op costs ≈0.1 ms of Python per call, which on the CPU, whose "launches" cost nothing, is noise).
Numerics: normalised in fp32 and rounded to the input's dtype once, as the fused kernel does; equal to
diffusers' RMSNorm within fp32 rounding (tests/test_engine_fused.py).
"""

from __future__ import annotations

import torch
from diffusers.models.normalization import RMSNorm
from torch import nn

__all__ = ["norm"]


@torch.library.custom_op("styledrop::rms_norm", mutates_args=())
def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised x, rstd (..., 1) fp32) over the last dimension."""
    if x.is_cuda:
        return torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    out = x.float() * rstd
    if weight is not None:
        out = out * weight.float()
    return out.to(x.dtype), rstd


@_rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("styledrop::rms_norm_backward", mutates_args=())
def _rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor,
                       weight: torch.Tensor | None) -> torch.Tensor:
    """d loss / d x; the weight is frozen (the base model), so no weight gradient."""
    if x.is_cuda:
        return torch.ops.aten._fused_rms_norm_backward(grad, x, [x.shape[-1]], rstd, weight, [True, False])[0]
    g = grad.float() if weight is None else grad.float() * weight.float()
    xhat = x.float() * rstd  # (..., D)
    return (rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))).to(x.dtype)


@_rms_norm_backward.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return torch.empty_like(x)


def _setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...],
           output: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, weight, _eps = inputs
    ctx.save_for_backward(x, output[1], weight)  # type: ignore[arg-type]
    ctx.set_materialize_grads(False)  # rstd never gets a gradient: no zeros kernel for it in the backward


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor,
              _grad_rstd: torch.Tensor | None) -> tuple[torch.Tensor, None, None]:
    x, rstd, weight = ctx.saved_tensors  # type: ignore[attr-defined]
    if weight is not None and weight.requires_grad:
        raise NotImplementedError("the fused RMSNorm trains no weight (the base model is frozen)")
    return _rms_norm_backward(grad, x, rstd, weight), None, None


_rms_norm.register_autograd(_backward, setup_context=_setup)


def norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`, with a diffusers `RMSNorm` (frozen, no bias) as one fused op; any other module as is."""
    if type(module) is not RMSNorm or module.bias is not None or (
            module.weight is not None and module.weight.requires_grad):
        return module(x)
    weight = module.weight
    if weight is not None and x.dtype != weight.dtype:
        return module(x)  # mixed dtypes (autocast over fp32 weights): diffusers' own promotion rules decide
    if x.is_cuda:
        return torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, float(module.eps))[0]
    return _rms_norm(x, weight, float(module.eps))[0]
