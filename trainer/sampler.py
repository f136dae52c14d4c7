"""MaskGIT sampling for aMUSEd with StyleDrop's two-scale guidance, one batch holding many independent requests.

Each request (one row) has its own prompt, negative prompt, seed (its own torch.Generator), adapter, style
strength, guidance scale, step count, and optional init image (image-to-image) or mask (inpainting). A row
comes out exactly as it would alone: rows share forward passes, never random numbers.

Per decoding step the logits of a row are (StyleDrop, arXiv 2306.00983, Eq. 4)

    l = Ĝ(t) + λA·(Ĝ(t) − G(t)) + λB·(G(t) − G(n))

with Ĝ the adapted U-ViT, G the base, t the prompt, n the negative prompt (empty by default), λA the style
strength and λB = guidance_scale − 1 (or `text_guidance`). It is evaluated as
`G(n) + g·(G(t) − G(n)) + (1 + λA)·(Ĝ(t) − G(t))` with g = 1 + λB, whose first part is diffusers' CFG expression
operation for operation, so without an adapter our tokens equal
`AmusedPipeline`'s. The token update (`schedule.MaskGitSchedule`) mirrors `AmusedScheduler.step` (same random
draws in the same order) for all rows at once, with two deliberate fixes from docs/amused-notes.md §4: img2img at
strength 1.0 masks every token (diffusers' index wrap-around masks none), and the inpainting schedule is per row
instead of mutating a shared scheduler. Adapters are applied per row by the model's LoRA bank (`bank.LoraBank`).

Style + subject (paper §3.4): a row may also name a subject adapter Ĝs with weight γ, and its logits are
`(1 − γ)·l_style + γ·l_subject`, each with the two-scale guidance above. Both share G(n) and G(t), so this is
`G(n) + g·(G(t) − G(n)) + (1 + λA)·((1 − γ)·(Ĝ(t) − G(t)) + γ·(Ĝs(t) − G(t)))`: one extra pass, only for the
rows that name a subject. γ = 0 gives the style row's tokens exactly, γ = 1 the subject adapter's alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .bank import find_bank
from .capture import step_forward
from .contracts.images import to_rgb
from .encode import (
    TextEmbedding,
    decode_tokens,
    encode_text,
    encode_tokens,
    micro_conds,
    pil_to_tensor,
    resize_exact,
    tensor_to_pil,
)
from .lora import AdapterError
from .model import AmusedParts
from .requests import GenerationRequest, SamplingError, check_requests, mask_grid
from .schedule import MaskGitSchedule, RowPlan, noise_tokens

__all__ = ["GenerationRequest", "SampleResult", "SamplingError", "cached_text", "sample"]

TEXT_CACHE_SIZE = 256  # prompts whose CLIP embeddings stay on the device (≈120 KB each at amused-256 in bf16)
# Float32 guidance and token-update scratch per chunk of rows: a row needs ≈6 (seq, codebook) float32 planes
# (its passes' logits upcast, the guided logits, the probabilities, the Exp(1) draws), 48 MB at amused-256, so
# a batch runs in chunks of ≈5 rows and a 64-row batch's scratch is ≈4 MB per row instead of ≈80 MB.
SCRATCH_BYTES = 256 * 2**20
SCRATCH_PLANES = 6


def scratch_rows(seq_len: int, codebook: int, batch: int) -> int:
    """Rows per chunk of the sampler's float32 scratch (at least 1, at most the batch)."""
    return max(1, min(batch, SCRATCH_BYTES // (SCRATCH_PLANES * seq_len * codebook * 4)))


@dataclass
class SampleResult:
    tokens: torch.Tensor  # (h, w) int64 codes
    image: Image.Image | None


@dataclass
class _Row:
    """The decoding state of one request before the loop: its plan, generator and starting tokens."""

    req: GenerationRequest
    generator: torch.Generator
    tokens: torch.Tensor  # (1, seq) int64, mask id where unknown
    plan: RowPlan


def _prepare_rows(parts: AmusedParts, requests: Sequence[GenerationRequest], height: int, width: int) -> list[_Row]:
    """Each request's starting tokens and plan; `requests` have passed `check_requests` at this size."""
    f = parts.vae_scale_factor
    h, w = height // f, width // f
    mask_id = parts.mask_token_id
    # Row state and random numbers live on the model's device: on a GPU, sampling 8192-way categoricals on the CPU
    # would copy every row's probabilities (8 MB at 256 px) back each step. On the CPU this is diffusers' setup.
    dev = parts.device
    rows: list[_Row] = []
    for req in requests:
        g = torch.Generator(device=dev).manual_seed(int(req.seed))
        n = req.steps
        start = n - int(n * req.strength) if req.init_image is not None else 0
        if req.init_image is None:
            plan = RowPlan(n, 0, "cosine", 1.0, req.temperature)
            rows.append(_Row(req, g, torch.full((1, h * w), mask_id, dtype=torch.long, device=dev), plan))
            continue
        # Any mode, upright (contracts/images.py), resized to the output size with Lanczos as diffusers does.
        pixels = pil_to_tensor(resize_exact(to_rgb(req.init_image), (width, height)))[None]
        codes = encode_tokens(parts, pixels).reshape(1, h * w).to(dev)  # (1, h, w) -> (1, seq)
        if req.mask is not None:
            # Inpainting: the mask at token resolution (requests.mask_grid: Lanczos, binarised at 0.5, as
            # diffusers), computed on the host (its share of tokens is part of the row's plan).
            mask = torch.tensor(mask_grid(req.mask, (h, w))).reshape(1, h * w)  # (seq,) -> (1, seq)
            codes = torch.where(mask.to(dev), mask_id, codes)
            plan = RowPlan(n, start, "linear", float(mask.sum() / mask.numel()), req.temperature)
            rows.append(_Row(req, g, codes, plan))
        else:
            plan = RowPlan(n, start, "cosine", 1.0, req.temperature)
            noised = noise_tokens(codes.reshape(1, h, w), plan, mask_id, g)  # (1, seq) -> (1, h, w)
            rows.append(_Row(req, g, noised.reshape(1, h * w), plan))  # (1, h, w) -> (1, seq)
    return rows


def cached_text(parts: AmusedParts, texts: Sequence[str]) -> TextEmbedding:
    """CLIP embeddings of `texts` on the model's device and dtype, each prompt encoded once per process.

    One text per encoder call: batching prompts of different lengths changes CLIP's float rounding, and each row
    must come out as it would alone. Repeated prompts (preview prompts, retries, the empty negative prompt) are
    served from `parts.text_cache`, a small LRU.
    """
    cache = parts.text_cache
    hidden, pooled = [], []
    for t in texts:
        emb = cache.get(t)
        if emb is None:
            e = encode_text(parts, [t])
            emb = cache[t] = TextEmbedding(e.hidden.to(parts.device, parts.dtype), e.pooled.to(parts.device,
                                                                                                parts.dtype))
            while len(cache) > TEXT_CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(t)
        hidden.append(emb.hidden)
        pooled.append(emb.pooled)
    return TextEmbedding(torch.cat(hidden), torch.cat(pooled))  # (T, 77, D), (T, P)


def _route(parts: AmusedParts, names: Sequence[str], start: int) -> contextlib.AbstractContextManager[object]:
    """Route the adapted passes (rows `start..`) through the model's LoRA bank; unknown names are an error."""
    bank = find_bank(parts.transformer)
    if not names:
        return contextlib.nullcontext()
    if bank is None:
        raise AdapterError(f"no adapters are loaded, but a request names adapter '{names[0]}'")
    return bank.route([bank.slot_of(n) for n in names], start=start)  # slot_of raises for an unknown name


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
    """Run every request to completion in shared forward passes; results are in request order.

    One forward per round runs three groups of passes, negatives G(n) first, then G(t) for every row, then Ĝ(t)
    for the rows with an adapter (for a single request without an adapter that is diffusers' [uncond, cond] order,
    so the forward is the same computation). The groups, text embeddings, micro-conditions, the U-ViT's
    prompt-only conditioning (`capture.step_forward`) and adapter routes are built once; the loop itself reads
    nothing back from the device. Guidance and token update run in chunks of rows (`scratch_rows`), so their float32
    scratch is bounded by a chunk whatever the batch; more than `MAX_SAMPLE_ROWS`
    (trainer/contracts/limits.py) requests are refused.
    """
    if not requests:
        return []
    # Every request checked before anything runs (requests.py); None sizes: an init image's own, else native.
    height, width = check_requests(requests, height, width, scale=parts.vae_scale_factor, default=parts.resolution)
    f = parts.vae_scale_factor
    h, w = height // f, width // f
    rows = _prepare_rows(parts, requests, height, width)
    device, dtype = parts.device, parts.dtype
    b = len(rows)

    neg = [i for i, r in enumerate(rows) if r.req.cfg_scale > 1.0]
    styled = [i for i, r in enumerate(rows) if r.req.adapter is not None]
    subject = [i for i, r in enumerate(rows) if r.req.subject is not None]
    texts = list(dict.fromkeys(t for r in rows for t in (r.req.prompt, r.req.negative_prompt or "")))
    index = {t: i for i, t in enumerate(texts)}
    emb = cached_text(parts, texts)
    pass_rows = neg + list(range(b)) + styled + subject  # (P,): the row each pass belongs to
    pass_text = ([index[rows[i].req.negative_prompt or ""] for i in neg] + [index[r.req.prompt] for r in rows]
                 + [index[rows[i].req.prompt] for i in styled + subject])
    text_idx = torch.tensor(pass_text, device=device)
    hidden, pooled = emb.hidden[text_idx], emb.pooled[text_idx]  # (P, 77, D), (P, P_dim)
    # Micro-conditions per pass: original size = output size, no crop, the row's aesthetic score.
    conds = torch.tensor([micro_conds(width, height, 0, 0, rows[i].req.aesthetic_score) for i in pass_rows],
                         device=device, dtype=dtype)  # (P, 5)
    pass_idx = torch.tensor(pass_rows, device=device)
    n_neg = len(neg)
    # Guidance per row, as (B, 1, 1, 1) columns: which pass holds its G(n) and Ĝ(t) (its own G(t) if none).
    u_rows, s_rows, j_rows = ([n_neg + i for i in range(b)] for _ in range(3))
    for j, i in enumerate(neg):
        u_rows[i] = j
    for j, i in enumerate(styled):
        s_rows[i] = n_neg + b + j
    for j, i in enumerate(subject):
        j_rows[i] = n_neg + b + len(styled) + j
    u_idx, s_idx, j_idx = (torch.tensor(x, device=device) for x in (u_rows, s_rows, j_rows))
    col = (b, 1, 1, 1)
    has_neg = torch.tensor([r.req.cfg_scale > 1.0 for r in rows], device=device).view(col)
    has_sty = torch.tensor([r.req.adapter is not None or r.req.subject is not None for r in rows],
                           device=device).view(col)
    has_sub = torch.tensor([r.req.subject is not None for r in rows], device=device).view(col)
    g = torch.tensor([r.req.cfg_scale for r in rows], device=device).view(col)
    k = torch.tensor([1.0 + r.req.style_strength for r in rows], device=device).view(col)
    gamma = torch.tensor([r.req.subject_weight for r in rows], device=device).view(col)

    schedule = MaskGitSchedule([r.plan for r in rows], h * w, parts.mask_token_id, device)
    tokens = torch.cat([r.tokens for r in rows])  # (B, seq)
    generators = [r.generator for r in rows]
    c = parts.codebook_size
    n = scratch_rows(h * w, c, b)
    draws = torch.zeros(n, h * w, c, device=device)  # (n, seq, C) scratch for a chunk's Exp(1) draws
    noise = torch.zeros(n, h * w, device=device)  # (n, seq) scratch for a chunk's Gumbel noise
    # The guidance's per-row values, cut once into the chunks of rows the loop runs (views, made here once).
    chunks = [(lo, min(lo + n, b)) for lo in range(0, b, n)]
    cols = [(lo, u_idx[lo:hi], s_idx[lo:hi], j_idx[lo:hi], has_neg[lo:hi], has_sty[lo:hi], has_sub[lo:hi],
             g[lo:hi], k[lo:hi], gamma[lo:hi], draws[:hi - lo], noise[:hi - lo]) for lo, hi in chunks]
    # Prompt-only conditioning (text projections, micro-conditions, every AdaLN / ConvNeXt modulation), computed
    # once for the call's passes instead of in each of the loop's forwards (trainer/uvit_forward.py): the same
    # operations on the same P rows as the model's own forward, so the logits are bitwise those of `transformer`.
    forward = step_forward(parts.transformer, hidden, pooled, conds)

    adapters = [rows[i].req.adapter or "" for i in styled] + [rows[i].req.subject or "" for i in subject]
    with _route(parts, adapters, start=n_neg + b):
        for rnd in range(schedule.rounds):
            ids = tokens.index_select(0, pass_idx).view(len(pass_rows), h, w)  # (P, seq) -> (P, h, w)
            out = forward(ids)  # (P, C, h, w) in the model's dtype
            for lo, ui, si, ji, hn, hs, hj, gi, ki, gm, dr, nz in cols:
                # StyleDrop's two-scale guidance in float32, Eq. 4 as G(n) + g·(G(t) − G(n)) + (1 + λA)·(Ĝ(t) −
                # G(t)), for one chunk of rows: the float32 scratch is a chunk's, whatever the batch.
                hi = lo + gi.shape[0]
                cond = out[n_neg + lo:n_neg + hi].float()
                logits = cond
                if neg:
                    u = out.index_select(0, ui).float()
                    logits = torch.where(hn, u + gi * (cond - u), cond) if len(neg) < b else u + gi * (cond - u)
                    del u
                if styled or subject:
                    delta = out.index_select(0, si).float() - cond  # Ĝ(t) − G(t); 0 for rows without a style
                    if subject:
                        sub = out.index_select(0, ji).float() - cond  # Ĝs(t) − G(t)
                        delta = torch.where(hj, (1 - gm) * delta + gm * sub, delta)
                        del sub
                    logits = torch.where(hs, logits + ki * delta, logits)
                    del delta
                del cond
                tokens[lo:hi] = schedule.step(rnd, logits, tokens[lo:hi], generators, dr, nz, start=lo)
                del logits
            del out
            if on_step is not None:
                on_step(rnd + 1, schedule.rounds)

    tokens = tokens.reshape(b, h, w)  # (B, seq) -> (B, h, w)
    images: list[Image.Image | None] = [None] * b
    if decode:
        # One row at a time: the VQ-GAN's convolutions round differently at another batch size, and a row's
        # image must equal the one it gets alone, as its tokens do (the decoder is a small share of the time).
        images = [tensor_to_pil(decode_tokens(parts, tokens[i:i + 1]))[0] for i in range(b)]
    tokens = tokens.cpu()
    return [SampleResult(tokens=tokens[i], image=images[i]) for i in range(b)]
