"""What one training step feeds the U-ViT, computed on the device without reading anything back to the host.

`StyleData` holds one style's VQ tokens, micro-conditions and prompt embeddings, encoded once. `StyleBatch`
stacks the styles of a run on the device; `StyleBatch.draw` builds the inputs of one step for a set of styles
(one row each) from each style's own device generator, and `row_losses` returns each row's masked-token mean —
from the batch's precomputed constant conditioning (`StyleBatch.precompute`, trainer/uvit_forward.py) when there
is one, else through the model's own forward.
Every size that decides a shape is known on the host (number of rows, sequence length), every random choice
stays a device tensor (which image, how many tokens, which tokens), so a step has no host synchronisation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from .bank import find_bank
from .encode import encode_text, encode_tokens, micro_conds, prepare_image
from .lora import AdapterError
from .model import AmusedParts
from .uvit_forward import Conditioning, forward_with_conditioning, precompute_conditioning


@dataclass
class StyleData:
    """What the loop trains on, computed once: token grids and their micro-conditions, and the prompts (one for
    every image, or each image its own caption: the (image, caption) pairs of a feedback round)."""

    tokens: torch.Tensor  # (N, seq) int64 codes of each style image, on the model's device
    conds: torch.Tensor  # (N, 5) float32 micro-conditions of each image (fp32: sizes like 1023 are not bf16)
    hidden: torch.Tensor  # (T, 77, D) hidden states of each distinct prompt, model dtype
    pooled: torch.Tensor  # (T, P) pooled embedding of each distinct prompt, model dtype
    grid: tuple[int, int]  # (h, w) token grid
    prompt: str
    text_of_image: torch.Tensor | None = None  # (N,) each image's prompt row; None = row 0 for every image


def prepare_style(parts: AmusedParts, images: Sequence[Image.Image], prompt: str,
                  aesthetic_score: float = 6.0, captions: Sequence[str] | None = None) -> StyleData:
    """VQ-encode each style image and CLIP-encode the prompt (or with `captions`, each image's own caption; each
    distinct caption once), once, and leave the results on the model's device."""
    if not images:
        raise ValueError("at least one style image is needed")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions: each image needs its caption")
    res, device, dtype = parts.resolution, parts.device, parts.dtype
    prepared = [prepare_image(im, res) for im in images]
    pixels = torch.stack([p.pixels for p in prepared])  # (N, 3, R, R)
    codes = encode_tokens(parts, pixels)  # (N, h, w)
    n, h, w = codes.shape
    conds = torch.tensor(
        [micro_conds(p.orig_width, p.orig_height, p.crop_top, p.crop_left, aesthetic_score) for p in prepared],
        dtype=torch.float32,
    )
    distinct = list(dict.fromkeys(captions)) if captions is not None else [prompt]
    text = encode_text(parts, distinct)
    text_of_image = (torch.tensor([distinct.index(c) for c in captions], device=device)
                     if captions is not None else None)
    tokens = codes.reshape(n, h * w)  # (N, h, w) -> (N, seq)
    return StyleData(tokens.to(device), conds.to(device), text.hidden.to(device, dtype),
                     text.pooled.to(device, dtype), (h, w), prompt, text_of_image)


@dataclass(frozen=True)
class StepInputs:
    inputs: torch.Tensor  # (S, seq) token ids with the masked positions set to the mask id
    labels: torch.Tensor  # (S, seq) the codes at masked positions, -100 elsewhere
    rows: torch.Tensor  # (S,) the style of each row
    image: torch.Tensor  # (S,) the image of each row (into the batch's images): its micro-conditions
    text: torch.Tensor  # (S,) the prompt of each row (into the batch's prompts): its image's caption


class StyleBatch:
    """Every style of a run stacked on the device: all images' tokens in one tensor, all styles' prompts in
    another, and for each image the row of its prompt."""

    def __init__(self, styles: Sequence[StyleData], mask_id: int) -> None:
        self.grid = styles[0].grid
        if any(s.grid != self.grid for s in styles):
            raise ValueError("every style of a run must have the same token grid")
        self.seq = self.grid[0] * self.grid[1]
        self.mask_id = mask_id
        device = styles[0].tokens.device
        counts = [len(s.tokens) for s in styles]
        self.tokens = torch.cat([s.tokens for s in styles])  # (sum N, seq)
        self.conds = torch.cat([s.conds for s in styles])  # (sum N, 5)
        self.hidden = torch.cat([s.hidden for s in styles])  # (sum T, 77, D)
        self.pooled = torch.cat([s.pooled for s in styles])  # (sum T, P)
        self.first = torch.tensor([sum(counts[:i]) for i in range(len(counts))], device=device)  # (styles,)
        self.count = torch.tensor(counts, device=device)  # (styles,)
        owner = [i for i, c in enumerate(counts) for _ in range(c)]
        self.style_of_image = torch.tensor(owner, device=device)  # (sum N,) the style of each image
        text_first = [sum(len(t.hidden) for t in styles[:i]) for i in range(len(styles))]
        self.text_of_image = torch.cat([  # (sum N,) each image's prompt row; one prompt per style: its style
            (s.text_of_image if s.text_of_image is not None else torch.zeros(len(s.tokens), dtype=torch.long,
                                                                               device=device)) + text_first[i]
            for i, s in enumerate(styles)])
        self.conditioning: Conditioning | None = None

    def precompute(self, parts: AmusedParts) -> None:
        """Compute the prompt-only part of the model once (per style, and per image for the micro-conditions);
        `row_losses` then runs every step from it. Call under the autocast the steps run under."""
        self.conditioning = precompute_conditioning(parts.transformer, self.hidden,
                                                    self.pooled[self.text_of_image], self.conds)

    def draw(self, rows: torch.Tensor, generators: Sequence[torch.Generator]) -> StepInputs:
        """Inputs of one step: row j trains style `rows[j]` (a device index) with noise from `generators[j]`.

        Per row, ONE draw of seq + 2 uniforms from the style's own generator: u (the cosine schedule's time),
        the image pick (with its caption, when the style has one per image), and one key per token whose rank
        order is a random permutation (MUSE/aMUSEd masking: mask round(seq·cos(u·π/2)) tokens, at least one).
        A style's stream depends on nothing but its seed and how many steps it has taken, whatever else shares
        the batch.
        """
        noise = torch.stack([torch.rand(self.seq + 2, generator=g, device=self.tokens.device)
                             for g in generators])  # (S, seq + 2)
        u, pick, keys = noise[:, 0], noise[:, 1], noise[:, 2:]
        count = self.count[rows]
        image = self.first[rows] + torch.minimum((pick * count).long(), count - 1)  # (S,) row into self.tokens
        tokens = self.tokens[image]  # (S, seq)
        k = (self.seq * torch.cos(u * (math.pi / 2))).round().clamp(min=1)  # (S,) tokens to mask
        masked = keys.argsort(dim=1) < k[:, None]  # (S, seq): a uniformly random set of k positions per row
        return StepInputs(
            inputs=torch.where(masked, self.mask_id, tokens),
            labels=torch.where(masked, tokens, -100),
            rows=rows,
            image=image,
            text=self.text_of_image[image],
        )


def row_losses(parts: AmusedParts, batch: StyleBatch, step: StepInputs) -> torch.Tensor:
    """Each row's cross-entropy over its masked tokens, averaged per row: (S,). Rows never mix."""
    h, w = batch.grid
    s = step.inputs.shape[0]
    ids = step.inputs.reshape(s, h, w)  # (S, seq) -> (S, h, w)
    if batch.conditioning is not None:
        logits = forward_with_conditioning(parts.transformer, batch.conditioning, ids, step.text, step.image)
    else:
        logits = parts.transformer(ids, encoder_hidden_states=batch.hidden[step.text],
                                   pooled_text_emb=batch.pooled[step.text],
                                   micro_conds=batch.conds[step.image])  # (S, C, h, w)
    logits = logits.reshape(s, logits.shape[1], h * w)  # (S, C, h, w) -> (S, C, seq)
    ce = F.cross_entropy(logits.float(), step.labels, ignore_index=-100, reduction="none")  # (S, seq), 0 unmasked
    return ce.sum(1) / (step.labels != -100).sum(1)


@torch.no_grad()
def evaluation_loss(parts: AmusedParts, data: StyleData, *, adapter: str | None = None, seed: int = 1234,
                    samples: int = 16) -> float:
    """Mean masked-token loss on the style tokens over fixed random masks: the measure that training lowers.

    `adapter` names an adapter loaded in the model's LoraBank, every row is routed through; None = the base model.
    """
    g = torch.Generator(parts.device).manual_seed(seed)
    batch = StyleBatch([data], parts.mask_token_id)
    row = torch.zeros(1, dtype=torch.long, device=parts.device)
    bank = find_bank(parts.transformer)
    if adapter is not None and bank is None:
        raise AdapterError(f"no adapters are loaded, but adapter '{adapter}' was asked for")
    route: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if bank is not None and adapter is not None:
        route = bank.route([bank.slot_of(adapter)])
    total = 0.0
    with route:
        for _ in range(samples):
            step_inputs = batch.draw(row, [g])
            total += float(row_losses(parts, batch, step_inputs)[0])
    return total / samples
