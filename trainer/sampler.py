"""MaskGIT sampling for aMUSEd with StyleDrop's two-scale guidance, one batch holding many independent requests.

Each request (one row) has its own prompt, negative prompt, seed (its own torch.Generator), adapter, style
strength, guidance scale, step count, and optional init image (image-to-image) or mask (inpainting). A row
comes out exactly as it would alone: rows share forward passes, never random numbers.

Per decoding step the logits of a row are (StyleDrop, arXiv 2306.00983, Eq. 4)

    l = Ĝ(t) + λA·(Ĝ(t) − G(t)) + λB·(G(t) − G(n))

with Ĝ the adapted U-ViT, G the base, t the prompt, n the negative prompt (empty by default), λA the style
strength and λB = guidance_scale − 1. It is evaluated as `G(n) + g·(G(t) − G(n)) + (1 + λA)·(Ĝ(t) − G(t))`,
whose first part is diffusers' CFG expression operation for operation, so without an adapter our tokens equal
`AmusedPipeline`'s. The token update mirrors `AmusedScheduler.step` (same random draws in the same order), with
two deliberate fixes from docs/amused-notes.md §4: img2img at strength 1.0 masks every token (diffusers' index
wrap-around masks none), and the inpainting schedule is per row instead of mutating a shared scheduler.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from . import limits
from .encode import (
    decode_tokens,
    encode_text,
    encode_tokens,
    micro_conds,
    pil_to_tensor,
    resize_exact,
    tensor_to_pil,
)
from .lora import route_rows
from .model import AmusedParts


class SamplingError(ValueError):
    """A request the sampler cannot run (bad numbers, mask/init mismatch); the message names the field."""


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    adapter: str | None = None  # name of a resident adapter slot (see lora.AdapterSlots), None = base model
    style_strength: float = limits.DEFAULT_STYLE_STRENGTH  # λA; 0 keeps the adapter as trained, larger pushes
    guidance_scale: float = limits.DEFAULT_GUIDANCE_SCALE  # CFG g (λB = g − 1); ≤ 1 disables the negative branch
    steps: int = limits.DEFAULT_STEPS
    init_image: Image.Image | None = None  # image-to-image / inpainting source
    strength: float = 1.0  # share of the schedule re-run from init_image; 1.0 repaints everything
    mask: Image.Image | None = None  # inpainting: white = repaint, black = keep (binarised at 0.5)
    temperature: tuple[float, float] = (2.0, 0.0)  # Gumbel noise on confidences, annealed linearly
    aesthetic_score: float = 6.0

    def validate(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise SamplingError("prompt must not be empty")
        for name, value, lo, hi in (
            ("steps", self.steps, limits.MIN_STEPS, limits.MAX_STEPS),
            ("guidance_scale", self.guidance_scale, limits.MIN_GUIDANCE_SCALE, limits.MAX_GUIDANCE_SCALE),
            ("style_strength", self.style_strength, limits.MIN_STYLE_STRENGTH, limits.MAX_STYLE_STRENGTH),
        ):
            if not lo <= value <= hi:
                raise SamplingError(f"{name} must be between {lo:g} and {hi:g}, got {value}")
        if not 0.0 < self.strength <= 1.0:
            raise SamplingError(f"strength must be in (0, 1], got {self.strength}")
        if (self.init_image is not None or self.mask is not None) and int(self.steps * self.strength) < 1:
            raise SamplingError(f"strength {self.strength} with {self.steps} steps leaves no step to run")
        if self.mask is not None and self.init_image is None:
            raise SamplingError("mask needs an init_image")
        if self.mask is not None and self.init_image is not None and self.mask.size != self.init_image.size:
            raise SamplingError(
                f"mask size {self.mask.size} differs from init_image size {self.init_image.size}"
            )


@dataclass
class SampleResult:
    tokens: torch.Tensor  # (h, w) int64 codes
    image: Image.Image | None


@dataclass
class _Row:
    """The decoding state of one request."""

    req: GenerationRequest
    generator: torch.Generator
    tokens: torch.Tensor  # (1, seq) int64, mask id where unknown
    step: int  # index of the next step to run, in [start, steps)
    schedule: str  # "cosine" or "linear" (inpainting)
    start_ratio: torch.Tensor | float  # share of tokens masked at the start (inpainting), else 1.0
    temperatures: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        t0, t1 = self.req.temperature
        self.temperatures = torch.linspace(t0, t1, self.req.steps, device=self.tokens.device)

    @property
    def done(self) -> bool:
        return self.step >= self.req.steps


def _mask_ratio(schedule: str, ratio: torch.Tensor) -> torch.Tensor:
    if schedule == "cosine":
        return torch.cos(ratio * math.pi / 2)
    return 1 - ratio


def _prepare_rows(parts: AmusedParts, requests: Sequence[GenerationRequest], height: int, width: int) -> list[_Row]:
    f = parts.vae_scale_factor
    h, w = height // f, width // f
    mask_id = parts.mask_token_id
    # Row state and random numbers live on the model's device: on a GPU, sampling 8192-way categoricals on the CPU
    # would copy every row's probabilities (8 MB at 256 px) back each step. On the CPU this is diffusers' setup.
    dev = parts.device
    rows: list[_Row] = []
    for req in requests:
        req.validate()
        g = torch.Generator(device=dev).manual_seed(int(req.seed))
        n = req.steps
        start = n - int(n * req.strength) if req.init_image is not None else 0
        if req.init_image is None:
            rows.append(_Row(req, g, torch.full((1, h * w), mask_id, dtype=torch.long, device=dev), 0, "cosine", 1.0))
            continue
        pixels = pil_to_tensor(resize_exact(req.init_image.convert("RGB"), (width, height)))[None]
        codes = encode_tokens(parts, pixels).reshape(1, h * w).to(dev)  # (1, h, w) -> (1, seq)
        if req.mask is not None:
            # Inpainting: the mask is resized to the token grid (Lanczos) and binarised at 0.5, as diffusers does.
            m = resize_exact(req.mask.convert("L"), (w, h))
            mask = (pil_to_tensor(m.convert("RGB"))[0] >= 0.5).reshape(1, h * w).to(dev)  # (h, w) -> (1, seq)
            if not bool(mask.any()):
                raise SamplingError("mask selects no region to repaint (it is black at token resolution)")
            codes[mask] = mask_id
            start_ratio = mask.sum() / codes.numel()
            rows.append(_Row(req, g, codes, start, "linear", start_ratio))
        else:
            # Image-to-image: mask each token with probability cos(start/N · π/2): 1.0 at strength 1.
            ratio = torch.tensor([[start]], device=dev) / n
            noise_mask = torch.rand((1, h, w), generator=g, device=dev) < _mask_ratio("cosine", ratio)
            codes = codes.reshape(1, h, w).clone()  # (1, seq) -> (1, h, w)
            codes[noise_mask] = mask_id
            rows.append(_Row(req, g, codes.reshape(1, h * w), start, "cosine", 1.0))  # (1, h, w) -> (1, seq)
    return rows


def _step_row(row: _Row, logits: torch.Tensor, mask_id: int) -> None:
    """One MaskGIT update of one row; mirrors AmusedScheduler.step for a batch of one, draw for draw."""
    # logits: (1, C, h, w) -> (1, seq, C)
    c = logits.shape[1]
    logits = logits.reshape(1, c, -1).permute(0, 2, 1)
    sample = row.tokens
    unknown = sample == mask_id
    probs = logits.softmax(dim=-1)
    probs_ = probs.float() if probs.dtype != torch.float32 else probs  # multinomial has no CPU half kernel
    chosen = torch.multinomial(probs_.reshape(-1, c), 1, generator=row.generator)  # (seq, C) -> (seq, 1)
    chosen = chosen[:, 0].view(*probs.shape[:-1])  # (seq,) -> (1, seq)
    chosen = torch.where(unknown, chosen, sample)
    n = row.req.steps
    if row.step == n - 1:
        row.tokens = chosen
        return
    seq_len = sample.shape[1]
    dev = sample.device
    ratio = torch.tensor([[row.step]], device=dev).add(1) / n  # float32, like the scheduler's (step_idx + 1) / N
    mask_len = (seq_len * (row.start_ratio * _mask_ratio(row.schedule, ratio))).floor()
    mask_len = torch.min(unknown.sum(dim=-1, keepdim=True) - 1, mask_len)  # never re-mask more than before
    mask_len = torch.max(torch.tensor([1], device=dev), mask_len)  # always mask at least one
    selected = torch.gather(probs, -1, chosen[:, :, None])[:, :, 0]
    selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)  # known tokens stay
    temperature = row.temperatures[row.step].reshape(1, 1)  # () -> (1, 1), as the scheduler indexes it
    noise = torch.zeros_like(selected).uniform_(0, 1, generator=row.generator)
    gumbel = -torch.log((-torch.log(noise.clamp(1e-20))).clamp(1e-20))
    confidence = torch.log(selected.clamp(1e-20)) + temperature * gumbel
    cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len.long())
    row.tokens = torch.where(confidence < cut_off, mask_id, chosen)


@torch.no_grad()
def sample(
    parts: AmusedParts,
    requests: Sequence[GenerationRequest],
    *,
    height: int | None = None,
    width: int | None = None,
    decode: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> list[SampleResult]:
    """Run every request to completion in shared forward passes; results are in request order."""
    if not requests:
        return []
    height = height or parts.resolution
    width = width or parts.resolution
    f = parts.vae_scale_factor
    h, w = height // f, width // f
    mask_id = parts.mask_token_id
    rows = _prepare_rows(parts, requests, height, width)
    device, dtype = parts.device, parts.dtype

    # Encode each distinct prompt once: conditional prompts and negative prompts ("" = unconditional).
    texts: list[str] = []
    for r in rows:
        for t in (r.req.prompt, r.req.negative_prompt or ""):
            if t not in texts:
                texts.append(t)
    # One text per encoder call: batching prompts of different lengths changes CLIP's float rounding, and each row
    # must come out as it would alone.
    embs = [encode_text(parts, [t]) for t in texts]
    hidden = torch.cat([e.hidden for e in embs]).to(device, dtype)  # (T, 77, D)
    pooled = torch.cat([e.pooled for e in embs]).to(device, dtype)  # (T, P)
    index = {t: i for i, t in enumerate(texts)}
    # Micro-conditions per row, built once: original size = output size, no crop, the row's aesthetic score.
    row_conds = {id(r): torch.tensor(micro_conds(width, height, 0, 0, r.req.aesthetic_score), device=device,
                                     dtype=dtype) for r in rows}
    route = any(r.req.adapter is not None for r in rows) or bool(getattr(parts.transformer, "peft_config", None))

    rounds = 0
    total_rounds = max(r.req.steps - r.step for r in rows)
    while True:
        active = [r for r in rows if not r.done]
        if not active:
            break
        # Build one batch of passes: negatives G(n) first, then G(t), then Ĝ(t) — for a single request without an
        # adapter that is diffusers' [uncond, cond] order, so the forward pass is the same computation.
        neg = [r for r in active if r.req.guidance_scale > 1.0]
        styled = [r for r in active if r.req.adapter is not None]
        passes: list[tuple[_Row, str, str | None]] = (
            [(r, r.req.negative_prompt or "", None) for r in neg]
            + [(r, r.req.prompt, None) for r in active]
            + [(r, r.req.prompt, r.req.adapter) for r in styled]
        )
        ids = torch.cat([r.tokens for r, _, _ in passes]).reshape(len(passes), h, w).to(device)  # (P, h, w)
        text_idx = torch.tensor([index[t] for _, t, _ in passes], device=device)
        conds = torch.stack([row_conds[id(r)] for r, _, _ in passes])  # (P, 5)
        names = [a for _, _, a in passes]
        with route_rows(parts.transformer, names) if route else contextlib.nullcontext():
            out = parts.transformer(
                ids, encoder_hidden_states=hidden[text_idx], pooled_text_emb=pooled[text_idx], micro_conds=conds
            )  # (P, C, h, w)
        out = out.float() if out.dtype != torch.float32 else out
        pos = 0
        neg_out = {id(r): out[pos + i : pos + i + 1] for i, r in enumerate(neg)}
        pos += len(neg)
        cond_out = {id(r): out[pos + i : pos + i + 1] for i, r in enumerate(active)}
        pos += len(active)
        sty_out = {id(r): out[pos + i : pos + i + 1] for i, r in enumerate(styled)}
        for r in active:
            c = cond_out[id(r)]
            if id(r) in neg_out:
                u = neg_out[id(r)]
                logits = u + r.req.guidance_scale * (c - u)
            else:
                logits = c
            if id(r) in sty_out:
                logits = logits + (1.0 + r.req.style_strength) * (sty_out[id(r)] - c)
            _step_row(r, logits, mask_id)
            r.step += 1
        rounds += 1
        if on_step is not None:
            on_step(rounds, total_rounds)

    tokens = torch.cat([r.tokens for r in rows]).reshape(len(rows), h, w)  # (B, seq) -> (B, h, w)
    images: list[Image.Image | None] = [None] * len(rows)
    if decode:
        images = list(tensor_to_pil(decode_tokens(parts, tokens)))
    return [SampleResult(tokens=tokens[i].cpu(), image=images[i]) for i in range(len(rows))]
