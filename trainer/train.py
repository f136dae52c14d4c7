"""StyleDrop training: one LoRA adapter on the U-ViT's attention Q/K/V, learned from one (or a few) style images.

Read `train_style` top to bottom: it is the whole loop. What differs from diffusers' examples/amused/
train_amused.py, and why:
- the style image is VQ-encoded and the prompt CLIP-encoded ONCE before the loop (the script re-encodes every
  step, ≈3 s of waste per step on a CPU); the VQ-GAN and text encoder then leave the accelerator;
- resuming restores the adapter, the optimizer state and the RNG, so the losses after a resume equal those of an
  uninterrupted run (the script's resume adds a second adapter and trains the wrong one);
- the adapter is saved with its alpha (the script's file drops it, see lora.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import Checkpoint
from .encode import encode_text, encode_tokens, micro_conds, prepare_image
from .lora import ENGINE_VERSION, Adapter, AdapterMeta, base_fingerprint, extract_adapter, lora_config, route_rows
from .model import AmusedParts

logger = logging.getLogger(__name__)

TRAIN_ADAPTER = "styledrop_train"


@dataclass
class TrainConfig:
    """Flat defaults: the aMUSEd StyleDrop recipe (aMUSEd report Table 4 and its README "Styledrop" section)."""

    steps: int = 1500  # recipe: 1500-2000 steps at batch 1
    learning_rate: float | None = None  # None = recipe per base: 4e-4 (256) / 1e-3 (512)
    rank: int = 16  # LoRA rank on every to_q/to_k/to_v
    alpha: float | None = None  # None = recipe per base: 32 (256) / 1 (512); scale = alpha / rank
    weight_decay: float = 1e-2  # AdamW, betas below, constant learning rate (as train_amused.py)
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float | None = None  # the recipe does not clip
    seed: int = 0  # drives image choice and masking; training is deterministic on CPU
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit: bitsandbytes, CUDA only
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast on CUDA only
    aesthetic_score: float = 6.0  # micro-conditioning value aMUSEd uses at sampling time
    checkpoint_every: int = 0  # hand a Checkpoint to on_checkpoint every N steps (0 = never)
    progress_every: int = 1  # call on_progress every N steps (and on the last one)
    offload_encoders: bool = True  # move VQ-GAN and text encoder to CPU while training on an accelerator


def recipe_for(parts: AmusedParts, config: TrainConfig) -> TrainConfig:
    """Fill learning rate and alpha from the base's recipe: 512 px uses lr 1e-3 with alpha 1, 256 lr 4e-4, alpha 32."""
    is_512 = parts.resolution >= 512
    lr = config.learning_rate if config.learning_rate is not None else (1e-3 if is_512 else 4e-4)
    alpha = config.alpha if config.alpha is not None else (1.0 if is_512 else 32.0)
    return replace(config, learning_rate=lr, alpha=alpha)


def training_prompt(descriptor: str, content: str | None = None) -> str:
    """StyleDrop's prompt form "⟨content⟩ in ⟨style descriptor⟩ style" (arXiv 2306.00983, §3)."""
    descriptor = descriptor.strip()
    if descriptor.lower().endswith(" style"):
        descriptor = descriptor[: -len(" style")].rstrip()
    subject = (content or "").strip() or "an image"
    return f"{subject} in {descriptor} style"


@dataclass(frozen=True)
class Progress:
    step: int  # steps done
    total: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float


@dataclass
class TrainResult:
    adapter: Adapter | None  # None when stopped early
    losses: list[float]  # one per step run in this call
    stopped: bool
    step: int  # steps done in total (including those before a resume)
    prompt: str
    seconds: float = 0.0


@dataclass
class StyleData:
    """What the loop trains on, computed once: token grids and their micro-conditions, and the prompt."""

    tokens: torch.Tensor  # (N, seq) int64 codes of each style image
    conds: torch.Tensor  # (N, 5) micro-conditions of each image
    hidden: torch.Tensor  # (1, 77, D) prompt hidden states
    pooled: torch.Tensor  # (1, P) pooled prompt embedding
    grid: tuple[int, int]  # (h, w) token grid
    prompt: str


def prepare_style(parts: AmusedParts, images: Sequence[Image.Image], prompt: str,
                  aesthetic_score: float = 6.0) -> StyleData:
    """VQ-encode each style image and CLIP-encode the prompt, once."""
    if not images:
        raise ValueError("at least one style image is needed")
    res = parts.resolution
    prepared = [prepare_image(im, res) for im in images]
    pixels = torch.stack([p.pixels for p in prepared])  # (N, 3, R, R)
    codes = encode_tokens(parts, pixels)  # (N, h, w)
    n, h, w = codes.shape
    conds = torch.tensor(
        [micro_conds(p.orig_width, p.orig_height, p.crop_top, p.crop_left, aesthetic_score) for p in prepared]
    )
    text = encode_text(parts, [prompt])
    tokens = codes.reshape(n, h * w).cpu()  # (N, h, w) -> (N, seq)
    return StyleData(tokens, conds, text.hidden.cpu(), text.pooled.cpu(), (h, w), prompt)


def mask_tokens(tokens: torch.Tensor, mask_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MUSE/aMUSEd masking: r = cos(u·π/2), u ~ U(0, 1); mask round(r·seq) random tokens (at least one).

    Returns the model input and the labels (codes at masked positions, -100 elsewhere). tokens: (1, seq).
    """
    seq = tokens.shape[1]
    u = torch.rand(1, generator=generator)
    k = max(1, int(torch.round(seq * torch.cos(u * math.pi / 2)).item()))
    order = torch.rand(seq, generator=generator).argsort()
    masked = torch.zeros(seq, dtype=torch.bool)
    masked[order[:k]] = True
    masked = masked[None]  # (seq,) -> (1, seq)
    inputs = torch.where(masked, mask_id, tokens)
    labels = torch.where(masked, tokens, -100)
    return inputs, labels


def masked_loss(parts: AmusedParts, inputs: torch.Tensor, labels: torch.Tensor, data: StyleData,
                conds: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the U-ViT's logits on masked positions only. inputs/labels: (B, seq)."""
    h, w = data.grid
    b = inputs.shape[0]
    device = parts.device
    logits = parts.transformer(
        inputs.reshape(b, h, w).to(device),  # (B, seq) -> (B, h, w)
        encoder_hidden_states=data.hidden.expand(b, -1, -1).to(device, parts.dtype),
        pooled_text_emb=data.pooled.expand(b, -1).to(device, parts.dtype),
        micro_conds=conds.to(device, parts.dtype),
    )  # (B, C, h, w)
    c = logits.shape[1]
    logits = logits.reshape(b, c, h * w).permute(0, 2, 1).reshape(b * h * w, c)  # (B·seq, C)
    return F.cross_entropy(logits.float(), labels.reshape(-1).to(device), ignore_index=-100)  # labels (B·seq,)


def _make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    assert cfg.learning_rate is not None
    kwargs: dict[str, Any] = {
        "lr": cfg.learning_rate, "betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.weight_decay,
    }
    if cfg.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise ValueError("optimizer 'adamw8bit' needs a CUDA device (bitsandbytes); use 'adamw' on CPU")
        import bitsandbytes as bnb  # optional dependency: the `gpu` extra

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def train_style(
    parts: AmusedParts,
    images: Sequence[Image.Image],
    *,
    descriptor: str,
    content: str | None = None,
    config: TrainConfig | None = None,
    resume: Checkpoint | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> TrainResult:
    """Train a StyleDrop adapter. Callbacks report progress, ask whether to stop, and receive checkpoints."""
    cfg = recipe_for(parts, config or TrainConfig())
    assert cfg.learning_rate is not None and cfg.alpha is not None
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    device = parts.device
    if cfg.mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed_precision '{cfg.mixed_precision}' needs a CUDA device; use 'no' on CPU")
    prompt = training_prompt(descriptor, content)
    t_start = time.perf_counter()

    # 1. Encode the style images and the prompt once, then free the accelerator of the encoders.
    data = prepare_style(parts, images, prompt, cfg.aesthetic_score)
    encoders_home = next(parts.vqvae.parameters()).device
    if cfg.offload_encoders and device.type != "cpu":
        parts.vqvae.to("cpu")
        parts.text_encoder.to("cpu")
        torch.cuda.empty_cache()

    # 2. A fresh LoRA (B = 0: the adapted model starts exactly at the base model) on every attention Q/K/V.
    transformer = parts.transformer
    if TRAIN_ADAPTER in getattr(transformer, "peft_config", {}):
        transformer.delete_adapters(TRAIN_ADAPTER)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # LoRA A's Kaiming init draws from the global RNG: seed it for determinism
        transformer.add_adapter(lora_config(cfg.rank, cfg.alpha), adapter_name=TRAIN_ADAPTER)
    transformer.set_adapter(TRAIN_ADAPTER)
    params = [p for n, p in transformer.named_parameters() if f".{TRAIN_ADAPTER}." in n]
    for p in params:
        p.data = p.data.float()  # LoRA weights train in fp32 even when the base is bf16/fp16
        p.requires_grad_(True)
    optimizer = _make_optimizer(params, cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0

    # 3. Resume: adapter weights, optimizer moments and RNG state, so the run continues exactly.
    if resume is not None:
        named = {n: p for n, p in transformer.named_parameters() if f".{TRAIN_ADAPTER}." in n}
        resume.restore(named, optimizer, generator, TRAIN_ADAPTER)
        step = resume.step
        logger.info("resumed from step %d", step)

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
    transformer.train()
    losses: list[float] = []
    stopped = False
    t_loop = time.perf_counter()
    first_step = step
    try:
        while step < cfg.steps:
            # 4. One step: pick an image, mask a cosine-scheduled share of its tokens, predict them.
            i = int(torch.randint(len(data.tokens), (1,), generator=generator).item())
            inputs, labels = mask_tokens(data.tokens[i : i + 1], parts.mask_token_id, generator)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = masked_loss(parts, inputs, labels, data, data.conds[i : i + 1])
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))

            # 5. Report, checkpoint, and stop cooperatively when asked.
            if on_progress is not None and (step % max(cfg.progress_every, 1) == 0 or step == cfg.steps):
                elapsed = time.perf_counter() - t_loop
                sps = (step - first_step) / elapsed if elapsed > 0 else 0.0
                on_progress(Progress(step, cfg.steps, losses[-1], cfg.learning_rate, sps,
                                     (cfg.steps - step) / sps if sps > 0 else float("inf")))
            checkpointed = False
            if on_checkpoint is not None and cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 \
                    and step < cfg.steps:
                named = {n: p for n, p in transformer.named_parameters() if f".{TRAIN_ADAPTER}." in n}
                on_checkpoint(Checkpoint.capture(step, named, optimizer, generator, TRAIN_ADAPTER))
                checkpointed = True
            if should_stop is not None and step < cfg.steps and should_stop():
                stopped = True
                # A last checkpoint where we stopped, so a job stopped for a shutdown loses no steps.
                if on_checkpoint is not None and cfg.checkpoint_every > 0 and not checkpointed:
                    named = {n: p for n, p in transformer.named_parameters() if f".{TRAIN_ADAPTER}." in n}
                    on_checkpoint(Checkpoint.capture(step, named, optimizer, generator, TRAIN_ADAPTER))
                break
    finally:
        transformer.eval()
        for p in params:
            p.requires_grad_(False)
        if cfg.offload_encoders and device.type != "cpu":
            parts.vqvae.to(encoders_home)
            parts.text_encoder.to(encoders_home)

    adapter = None
    if not stopped:
        meta = AdapterMeta(
            base_model=parts.model_id, base_fingerprint=base_fingerprint(transformer), rank=cfg.rank,
            alpha=float(cfg.alpha), base_revision=parts.revision, descriptor=descriptor, train_prompt=prompt,
            steps=cfg.steps, seed=cfg.seed, engine_version=ENGINE_VERSION,
        )
        adapter = extract_adapter(transformer, TRAIN_ADAPTER, meta)
    transformer.delete_adapters(TRAIN_ADAPTER)  # leave the base model as we found it
    return TrainResult(adapter, losses, stopped, step, prompt, time.perf_counter() - t_start)


@torch.no_grad()
def evaluation_loss(parts: AmusedParts, data: StyleData, *, adapter: str | None = None, seed: int = 1234,
                    samples: int = 16) -> float:
    """Mean masked-token loss on the style tokens over fixed random masks: the measure that training lowers."""
    g = torch.Generator().manual_seed(seed)
    has_lora = bool(getattr(parts.transformer, "peft_config", None))
    total = 0.0
    for k in range(samples):
        i = k % len(data.tokens)
        inputs, labels = mask_tokens(data.tokens[i : i + 1], parts.mask_token_id, g)
        with route_rows(parts.transformer, [adapter]) if has_lora else contextlib.nullcontext():
            total += float(masked_loss(parts, inputs, labels, data, data.conds[i : i + 1]))
    return total / samples
