"""Iterative training with feedback, the engine half (StyleDrop, arXiv 2306.00983, §3.3 and Table 2).

Round 2 of StyleDrop: render the round-1 adapter over a fixed prompt set, keep the best images, and train a fresh
adapter on them, each with the prompt it was made from as its caption. This module holds the selection rule (the
prompt set is in `trainer/contracts/prompts.py`, which the service shares); the (image, caption) pairs the training
step takes are `examples.TrainingExample`.

Selection rule. The paper's CLIP feedback keeps, per prompt, the image with the highest CLIP *text* score: that is
what cuts the reference's content leaking into every image (Table 2: text score 0.313 → 0.329). It costs style
(style score 0.705 → 0.673), more than the human-picked set does (0.694), because text alignment alone cannot tell
an image that lost the style from one that kept it. We therefore rank by

    combined = text_score + style_weight · style_score,   style_weight = 0.25 by default (0 = the paper's rule)

Under CLIP feedback the style score moved twice as far as the text score (−0.032 vs +0.016), i.e. style
differences between candidates are about twice the text differences; weighting style by 0.25 makes its spread about
half the text term's, so the text score still decides and the style score breaks near-ties and vetoes images that
lost the style. The weight is our choice, not the paper's. Ties go to the earlier candidate.

Progress. A round renders and scores its candidates before any training step, which takes minutes at full size;
`PhaseClock` turns the counts those steps report (`evaluate.render_candidates`' `on_batch`, `select_best`'s
`on_phase`) into `PhaseProgress` (phase, done, total, ETA from the phase's own pace) for the caller's callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from .clip import ClipParts, image_embeddings, style_score_from_embeddings, text_embeddings
from .contracts.phases import Phase
from .contracts.prompts import FEEDBACK_CONTENTS as FEEDBACK_CONTENTS  # the prompt set lives with the prompt rule
from .contracts.prompts import feedback_prompts as feedback_prompts
from .examples import TrainingExample

STYLE_WEIGHT = 0.25


@dataclass(frozen=True)
class PhaseProgress:
    """Where a phase stands: `done` of `total` units, and the seconds left at its pace so far (None before the
    first unit is done)."""

    phase: Phase
    done: int
    total: int
    eta_seconds: float | None


OnPhase = Callable[[PhaseProgress], None]


class PhaseClock:
    """Reports one phase to `on_phase`: `start(total)` at 0, then each `(done, total)` it is called with (the
    `on_batch` signature of `evaluate.render_candidates`) with an ETA from the time since `start`."""

    def __init__(self, phase: Phase, on_phase: OnPhase | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.phase, self.on_phase, self.clock = phase, on_phase, clock
        self.t0: float | None = None

    def start(self, total: int) -> None:
        self.t0 = self.clock()
        self(0, total)

    def __call__(self, done: int, total: int) -> None:
        if self.t0 is None:
            self.t0 = self.clock()
        if self.on_phase is None:
            return
        elapsed = self.clock() - self.t0
        eta = round(elapsed / done * max(total - done, 0), 1) if done > 0 else None
        self.on_phase(PhaseProgress(self.phase, done, total, eta))


@dataclass(frozen=True)
class Candidate:
    """A rendered image and the prompt it was rendered from."""

    image: Image.Image
    prompt: str


@dataclass(frozen=True)
class ScoredCandidate:
    candidate: Candidate
    index: int  # position in the list handed to select_best
    text_score: float
    style_score: float
    score: float  # text_score + style_weight · style_score

    def example(self) -> TrainingExample:
        """The candidate as a round-2 training pair: its own prompt is its caption."""
        return TrainingExample(self.candidate.image, self.candidate.prompt)


class Scorer(Protocol):
    """Scores candidates; a higher score is better. `ClipScorer` is the CLIP one; tests pass their own."""

    def text_scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Sequence[float]: ...

    def style_scores(self, images: Sequence[Image.Image]) -> Sequence[float]: ...


class ClipScorer:
    """The paper's CLIP scores against fixed style references (their embeddings are computed once)."""

    def __init__(self, clip: ClipParts, references: Sequence[Image.Image]) -> None:
        if not references:
            raise ValueError("the style score needs at least one style reference image")
        self.clip = clip
        self.reference_embeddings = image_embeddings(clip, references)  # (R, D)

    def text_scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts: each image needs its prompt")
        emb = image_embeddings(self.clip, images)  # (N, D)
        return (emb * text_embeddings(self.clip, prompts)).sum(dim=-1).tolist()

    def style_scores(self, images: Sequence[Image.Image]) -> list[float]:
        return style_score_from_embeddings(image_embeddings(self.clip, images), self.reference_embeddings).tolist()


def score_candidates(
    candidates: Sequence[Candidate], scorer: Scorer, *, style_weight: float = STYLE_WEIGHT
) -> list[ScoredCandidate]:
    """Every candidate with its two scores and the combined one, in input order."""
    images = [c.image for c in candidates]
    text = list(scorer.text_scores(images, [c.prompt for c in candidates]))
    style = list(scorer.style_scores(images))
    if len(text) != len(candidates) or len(style) != len(candidates):
        raise ValueError(f"the scorer returned {len(text)} text and {len(style)} style scores "
                         f"for {len(candidates)} candidates")
    scored = []
    for i, (c, t, s) in enumerate(zip(candidates, text, style, strict=True)):
        if not (math.isfinite(t) and math.isfinite(s)):
            raise ValueError(f"candidate {i} ({c.prompt!r}) has a non-finite score (text {t}, style {s})")
        scored.append(ScoredCandidate(c, i, float(t), float(s), float(t) + style_weight * float(s)))
    return scored


def _rank(scored: Sequence[ScoredCandidate]) -> list[ScoredCandidate]:
    return sorted(scored, key=lambda s: (-s.score, s.index))  # best first; ties to the earlier candidate


def select_best(
    candidates: Sequence[Candidate],
    scorer: Scorer,
    *,
    per_prompt: int = 1,
    k: int | None = None,
    style_weight: float = STYLE_WEIGHT,
    on_phase: OnPhase | None = None,
) -> list[ScoredCandidate]:
    """Keep the `per_prompt` best candidates of each prompt by the combined score; with `k`, then only the `k` best
    of those overall (the paper's human round keeps ≈10). Returned grouped by prompt in first-seen order, best
    first within a prompt. `on_phase` hears `Phase.SCORING` at 0 and at every candidate scored."""
    if not candidates:
        raise ValueError("no candidates to select from")
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be at least 1, got {per_prompt}")
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not math.isfinite(style_weight) or style_weight < 0:
        raise ValueError(f"style_weight must be a finite number >= 0, got {style_weight}")
    clock = PhaseClock(Phase.SCORING, on_phase)
    clock.start(len(candidates))
    scored = score_candidates(candidates, scorer, style_weight=style_weight)
    clock(len(scored), len(candidates))
    groups: dict[str, list[ScoredCandidate]] = {}
    for s in scored:
        groups.setdefault(s.candidate.prompt, []).append(s)
    kept = [s for group in groups.values() for s in _rank(group)[:per_prompt]]
    if k is not None:
        chosen = {s.index for s in _rank(kept)[:k]}
        kept = [s for s in kept if s.index in chosen]
    return kept
