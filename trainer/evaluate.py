"""Rendering prompt sets with an adapter: `evaluate` (what `styledrop eval` runs: one image per prompt, scored with
the paper's two CLIP metrics) and `render_candidates` (the images a feedback round selects from).

The images come from the public `sample` API (one call per batch), so this module does not depend on how the sampler
is built inside. Each image is embedded once and used for both scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from .clip import ClipParts, image_embeddings, style_score_from_embeddings, text_embeddings
from .feedback import Candidate
from .model import AmusedParts
from .sampler import GenerationRequest, sample


@dataclass(frozen=True)
class EvalSettings:
    """How the images are made: one per prompt, seeds seed, seed+1, ... in prompt order."""

    adapter: str | None = None  # a resident adapter name as `GenerationRequest.adapter` takes it; None = base
    seed: int = 0
    steps: int = 12
    style_strength: float = 1.0
    guidance_scale: float = 10.0
    batch_size: int = 4  # prompts per `sample` call


@dataclass(frozen=True)
class EvalRow:
    prompt: str
    seed: int
    text_score: float
    style_score: float | None  # None without style references


@dataclass
class EvalReport:
    rows: list[EvalRow]
    images: list[Image.Image] = field(repr=False)

    @property
    def mean_text_score(self) -> float:
        return sum(r.text_score for r in self.rows) / len(self.rows)

    @property
    def mean_style_score(self) -> float | None:
        styles = [r.style_score for r in self.rows if r.style_score is not None]
        return sum(styles) / len(styles) if styles else None

    def to_dict(self, **context: object) -> dict[str, object]:
        """A JSON-ready summary; `context` (model, adapter, clip, ...) is copied in as given."""
        return {
            **context,
            "mean": {"text_score": self.mean_text_score, "style_score": self.mean_style_score},
            "images": [{"prompt": r.prompt, "seed": r.seed, "text_score": r.text_score,
                        "style_score": r.style_score} for r in self.rows],
        }

    def to_json(self, **context: object) -> str:
        return json.dumps(self.to_dict(**context), indent=2)

    def to_table(self) -> str:
        """A fixed-width table, one line per prompt and a mean line; `-` where there is no style score."""

        def fmt(x: float | None) -> str:
            return f"{x:7.4f}" if x is not None else f"{'-':>7}"  # 7: room for a minus sign

        lines = [f"{'#':>4}  {'text':>7}  {'style':>7}  prompt"]
        lines += [f"{i:>4}  {fmt(r.text_score)}  {fmt(r.style_score)}  {r.prompt}" for i, r in enumerate(self.rows, 1)]
        lines.append(f"{'mean':>4}  {fmt(self.mean_text_score)}  {fmt(self.mean_style_score)}  "
                     f"({len(self.rows)} prompts)")
        return "\n".join(lines) + "\n"


def parse_prompts(text: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with `#` are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def render(
    parts: AmusedParts, prompts: Sequence[str], seeds: Sequence[int], settings: EvalSettings
) -> list[Image.Image]:
    """One image per (prompt, seed) in one `sample` call, in order."""
    requests = [GenerationRequest(p, seed=s, adapter=settings.adapter, style_strength=settings.style_strength,
                                  guidance_scale=settings.guidance_scale, steps=settings.steps)
                for p, s in zip(prompts, seeds, strict=True)]
    images: list[Image.Image] = []
    for result in sample(parts, requests):
        assert result.image is not None  # sample decodes unless told not to
        images.append(result.image)
    return images


def render_candidates(
    parts: AmusedParts,
    prompts: Sequence[str],
    *,
    per_prompt: int = 4,
    settings: EvalSettings = EvalSettings(),
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Candidate]:
    """The candidates of a feedback round: `per_prompt` images of each prompt, seeds `settings.seed`, +1, ... over
    the prompts in order, `settings.batch_size` images per `sample` call; hand them to `feedback.select_best`."""
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be at least 1, got {per_prompt}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {settings.batch_size}")
    todo = [p for p in prompts for _ in range(per_prompt)]
    out: list[Candidate] = []
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        seeds = [settings.seed + start + i for i in range(len(chunk))]
        out += [Candidate(im, p) for im, p in zip(render(parts, chunk, seeds, settings), chunk, strict=True)]
        if on_batch is not None:
            on_batch(len(out), len(todo))
    return out


def evaluate(
    parts: AmusedParts,
    clip: ClipParts,
    prompts: Sequence[str],
    *,
    references: Sequence[Image.Image] = (),
    settings: EvalSettings = EvalSettings(),
    on_batch: Callable[[int, int, EvalReport], None] | None = None,
) -> EvalReport:
    """Render one image per prompt and score it: text score against its prompt, style score against `references`
    (mean over them; None when there are none). `on_batch(done, total, report_so_far)` follows every batch."""
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {settings.batch_size}")
    ref_emb = image_embeddings(clip, references) if references else None  # (R, D), once
    report = EvalReport(rows=[], images=[])
    for start in range(0, len(prompts), settings.batch_size):
        chunk = list(prompts[start : start + settings.batch_size])
        seeds = [settings.seed + start + i for i in range(len(chunk))]
        rendered = render(parts, chunk, seeds, settings)
        img_emb = image_embeddings(clip, rendered)  # (n, D), used by both scores
        text = (img_emb * text_embeddings(clip, chunk)).sum(dim=-1).tolist()
        style: list[float | None] = (style_score_from_embeddings(img_emb, ref_emb).tolist() if ref_emb is not None
                                     else [None] * len(chunk))
        report.rows += [EvalRow(p, s, t, st) for p, s, t, st in zip(chunk, seeds, text, style, strict=True)]
        report.images += rendered
        if on_batch is not None:
            on_batch(len(report.rows), len(prompts), report)
    return report

