"""Field checks that run before any work: each bad value is refused with a message naming its field.

The sampler's `GenerationRequest.validate` and `train_styles` both call these, before a batch is assembled or a
model is touched, so one bad value never becomes garbage tokens (NaN temperature), a NaN adapter (NaN learning
rate), an obscure error deep inside torch (`steps=2.5`, `rank=0`, `seed=2**70`) or a silent substitution
(`height=0`, `height=250`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .contracts import limits

if TYPE_CHECKING:
    import torch

    from .train import StyleSpec, TrainConfig

__all__ = ["check_device_options", "check_finite", "check_int", "check_seed", "check_side", "check_training"]


def check_int(name: str, value: object, lo: int, hi: int | None = None,
              error: Callable[[str], Exception] = ValueError) -> int:
    """A whole number (an int or a numpy integer; not a bool, not 2.5) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise error(f"{name} must be {bound}, got {value}")
    return value


def check_finite(name: str, value: object, *, lo: float | None = None, hi: float | None = None,
                 positive: bool = False, error: Callable[[str], Exception] = ValueError) -> float:
    """A finite real number (NaN and ±inf refused), > 0 when `positive`, within [lo, hi] when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise error(f"{name} must be > 0, got {value}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise error(f"{name} must be between {lo:g} and {hi:g}, got {value}")
    if lo is not None and value < lo:
        raise error(f"{name} must be >= {lo:g}, got {value}")
    if hi is not None and value > hi:
        raise error(f"{name} must be <= {hi:g}, got {value}")
    return float(value)


def check_seed(name: str, value: object, error: Callable[[str], Exception] = ValueError) -> int:
    """A seed `torch.Generator.manual_seed` takes as is (limits.MIN_SEED..MAX_SEED)."""
    return check_int(name, value, limits.MIN_SEED, limits.MAX_SEED, error)


def check_side(name: str, value: object, multiple: int, error: Callable[[str], Exception] = ValueError) -> int:
    """An output side in pixels: a multiple of the VQ-GAN's scale factor, at most limits.MAX_IMAGE_SIDE. Never 0 for
    "the default" (None is the default) and never rounded down in silence."""
    side = check_int(name, value, multiple, limits.MAX_IMAGE_SIDE, error)
    if side % multiple:
        raise error(f"{name} must be a multiple of {multiple} (one VQ token per {multiple} px), got {side}")
    return side


def check_training(cfg: TrainConfig, styles: Sequence[StyleSpec], device: torch.device) -> None:
    """Refuse, before any encoding or any change to the model, the config and style values training cannot use
    (and the options `device` cannot run). `cfg` has had `recipe_for` applied (learning rate and alpha filled in)."""
    check_device_options(cfg, device)
    if not styles:
        raise ValueError("at least one style is needed")
    check_int("steps", cfg.steps, 1)
    check_finite("learning_rate", cfg.learning_rate, positive=True)
    check_int("rank", cfg.rank, 1, limits.MAX_RANK)
    check_finite("alpha", cfg.alpha, positive=True)
    check_finite("weight_decay", cfg.weight_decay, lo=0.0, hi=1.0)
    check_finite("beta1", cfg.beta1, lo=0.0, hi=1.0)
    check_finite("beta2", cfg.beta2, lo=0.0, hi=1.0)
    if cfg.max_grad_norm is not None:
        check_finite("max_grad_norm", cfg.max_grad_norm, positive=True)
    check_seed("seed", cfg.seed)
    check_finite("aesthetic_score", cfg.aesthetic_score)
    check_int("checkpoint_every", cfg.checkpoint_every, 0)
    check_int("progress_every", cfg.progress_every, 1)
    check_int("capacity", cfg.capacity, 0)
    check_int("join_every", cfg.join_every, 1)
    for i, s in enumerate(styles):
        where = f"styles[{i}]"
        if s.prompt is None and not (s.descriptor or "").strip():
            raise ValueError(f"{where}.descriptor must not be empty (it names the style in the prompt "
                             "'<content> in <descriptor> style')")
        if s.prompt is not None and not s.prompt.strip():
            raise ValueError(f"{where}.prompt must not be empty")
        if not s.images and not s.examples:
            raise ValueError(f"{where} has no images to train on")
        if s.steps is not None:
            check_int(f"{where}.steps", s.steps, 1)
        if s.seed is not None:
            check_seed(f"{where}.seed", s.seed)
        if s.learning_rate is not None:
            check_finite(f"{where}.learning_rate", s.learning_rate, positive=True)


def check_device_options(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before any work, the options this device or their combination cannot run."""
    if cfg.mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed_precision '{cfg.mixed_precision}' needs a CUDA device; use 'no' on CPU")
    if cfg.optimizer == "adamw8bit" and device.type != "cuda":
        raise ValueError("optimizer 'adamw8bit' needs a CUDA device (bitsandbytes); use 'adamw' on CPU")
    if cfg.optimizer == "adamw8bit" and cfg.mixed_precision == "fp16":  # no per-style overflow skip in its kernel
        raise ValueError("optimizer 'adamw8bit' supports mixed_precision 'no' or 'bf16', not 'fp16'")
    if cfg.cuda_graph:
        if device.type != "cuda":
            raise ValueError("cuda_graph needs a CUDA device; use cuda_graph=False on CPU")
        if cfg.mixed_precision == "fp16" or cfg.optimizer != "adamw":
            raise ValueError("cuda_graph captures the step with optimizer 'adamw' and mixed_precision 'no' or "
                             "'bf16' only (fp16 loss scaling and 8-bit AdamW decide on the host)")
