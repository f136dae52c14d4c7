"""MaskGIT's decoding schedule for aMUSEd, vectorised over the rows of a batch (the maths of `AmusedScheduler`).

The sampler owns batching and guidance; this module owns what diffusers' `AmusedScheduler` does: the mask-ratio
schedule (cosine, or linear for inpainting), the initial noising of an image-to-image source, and the token update
of one step. MaskGIT (Chang et al. 2022, arXiv 2202.04200 §3.2): sample every unknown token, keep the most
confident ones and re-mask the `⌊N · γ(t)⌋` least confident, with Gumbel noise on the confidences annealed to 0.

Every row has its own step count, starting step, schedule and temperature, and its own `torch.Generator`; one
update runs every row at once. Everything that depends only on a row's plan (how many tokens to re-mask at each
step, the temperature, whether the step is the last) is tabulated on the host when the batch is built — with the
same float32 tensor ops the scheduler runs, so a row's tokens equal `AmusedPipeline`'s — and copied to the device
once, so the decoding loop reads nothing back from the device. The only per-row work left in a step is drawing
each row's random numbers from its own generator (filling its slice of a shared buffer, in the scheduler's order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch


def mask_ratio(kind: str, ratio: torch.Tensor) -> torch.Tensor:
    """The share of tokens still masked after a `ratio` of the schedule: cos(r·π/2) (MaskGIT's best) or 1 − r."""
    if kind == "cosine":
        return torch.cos(ratio * math.pi / 2)
    return 1 - ratio


@dataclass(frozen=True)
class RowPlan:
    """One row's schedule: `steps` in all, starting at `start` (img2img / inpainting strength < 1)."""

    steps: int
    start: int = 0
    kind: str = "cosine"  # "linear" for inpainting, as diffusers' inpainting pipeline sets
    start_ratio: float = 1.0  # share of tokens masked at the start (inpainting: the mask's share), else 1
    temperature: tuple[float, float] = (2.0, 0.0)

    @property
    def rounds(self) -> int:
        return self.steps - self.start


@lru_cache(maxsize=256)
def _column(plan: RowPlan, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(re-mask cap per step, temperature per step) of one plan, float32 on the CPU, steps start..steps-1."""
    temperatures = torch.linspace(*plan.temperature, plan.steps)  # as AmusedScheduler.set_timesteps
    caps = []
    for step in range(plan.start, plan.steps):
        ratio = torch.tensor([[step]]).add(1) / plan.steps  # float32, like the scheduler's (step_idx + 1) / N
        caps.append((seq_len * (plan.start_ratio * mask_ratio(plan.kind, ratio))).floor().reshape(()))
    return torch.stack(caps) if caps else torch.zeros(0), temperatures[plan.start:].clone()


def noise_tokens(codes: torch.Tensor, plan: RowPlan, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """Image-to-image: mask each token of `codes` (1, h, w) with probability cos(start/N · π/2), 1.0 at strength 1.

    (diffusers' img2img indexes the timesteps from the end and wraps around at strength 1.0, masking nothing;
    docs/amused-notes.md §4.) One `rand` from the row's generator, as the scheduler's `add_noise` draws.
    """
    ratio = torch.tensor([[plan.start]], device=codes.device) / plan.steps
    noise = torch.rand(codes.shape, generator=generator, device=codes.device)
    return torch.where(noise < mask_ratio("cosine", ratio), mask_id, codes)


class MaskGitSchedule:
    """The per-round tables of a batch of rows, and its token update.

    Round `k` runs step `start + k` of every row; a row whose steps are all run keeps its tokens (it stays in the
    batch, so shapes stay fixed for the whole loop and a captured forward can be replayed).
    """

    def __init__(self, plans: Sequence[RowPlan], seq_len: int, mask_id: int, device: torch.device) -> None:
        self.plans = list(plans)
        self.mask_id = mask_id
        self.rounds = max(p.rounds for p in self.plans)
        b = len(self.plans)
        cap = torch.zeros(self.rounds, b)  # (R, B): how many tokens a row may re-mask at most after each round
        temp = torch.zeros(self.rounds, b)  # (R, B): Gumbel temperature of the row's step
        last = torch.zeros(self.rounds, b, dtype=torch.bool)  # the row's final step: keep every sampled token
        active = torch.zeros(self.rounds, b, dtype=torch.bool)  # the row still has this step to run
        for i, plan in enumerate(self.plans):
            caps, temps = _column(plan, seq_len)
            n = plan.rounds
            cap[:n, i], temp[:n, i], active[:n, i] = caps, temps, True
            last[n - 1, i] = True
        self.cap, self.temp = cap.to(device), temp.to(device)
        self.last, self.active = last.to(device), active.to(device)
        # Host-side copies for choosing which rows draw random numbers: no device read in the loop.
        self._active = [[i for i, p in enumerate(self.plans) if k < p.rounds] for k in range(self.rounds)]
        self._noised = [[i for i, p in enumerate(self.plans) if k < p.rounds - 1] for k in range(self.rounds)]

    def step(self, k: int, logits: torch.Tensor, tokens: torch.Tensor, generators: Sequence[torch.Generator],
             draws: torch.Tensor, noise: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Round `k` for rows `start .. start + n`: `logits` (n, C, h, w) float32, `tokens` (n, seq) → new tokens.

        `draws` (n, seq, C) and `noise` (n, seq) are float32 scratch buffers reused across rounds; `generators`
        holds every row's generator (indexed by batch row). The sampler runs the batch in chunks of rows so that
        this scratch is bounded by the chunk, not the batch; a row's result does not depend on its chunk.
        Mirrors AmusedScheduler.step draw for draw: `multinomial(p, 1)` is computed as torch computes it,
        argmax(p / q) with q ~ Exp(1) (aten's one-sample fast path), each row's q from its own generator.
        """
        b, c = logits.shape[:2]
        end = start + b
        table = slice(start, end)
        probs = logits.reshape(b, c, -1).permute(0, 2, 1).softmax(dim=-1)  # (n, C, h, w) -> (n, seq, C)
        for i in self._active[k]:
            if start <= i < end:
                draws[i - start].exponential_(generator=generators[i])
        chosen = torch.div(probs, draws, out=draws).argmax(dim=-1)  # (n, seq)
        unknown = tokens == self.mask_id
        chosen = torch.where(unknown, chosen, tokens)
        selected = torch.gather(probs, -1, chosen[:, :, None])[:, :, 0]  # (n, seq, 1) -> (n, seq)
        del probs  # the largest scratch of the step: free it before the (small) rest
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)  # known tokens stay
        for i in self._noised[k]:
            if start <= i < end:
                noise[i - start].uniform_(0, 1, generator=generators[i])
        gumbel = -torch.log((-torch.log(noise.clamp(1e-20))).clamp(1e-20))
        confidence = torch.log(selected.clamp(1e-20)) + self.temp[k, table][:, None] * gumbel  # (n,) -> (n, 1)
        mask_len = torch.min(unknown.sum(dim=-1, keepdim=True) - 1, self.cap[k, table][:, None])  # never more
        mask_len = mask_len.clamp(min=1)  # always mask at least one
        cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len.long())  # (n, 1)
        remasked = torch.where(confidence < cut_off, self.mask_id, chosen)
        new = torch.where(self.last[k, table][:, None], chosen, remasked)
        return torch.where(self.active[k, table][:, None], new, tokens)
