"""Feedback selection: with a scorer whose preferences are known, `select_best` picks exactly the expected images;
with the tiny CLIP it picks the argmax of the directly computed combined score; the prompt set has the paper's form."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.clip import clip_style_score, clip_text_score, load_clip
from trainer.contracts.phases import Phase
from trainer.examples import TrainingExample
from trainer.feedback import (
    FEEDBACK_CONTENTS,
    STYLE_WEIGHT,
    Candidate,
    ClipScorer,
    PhaseClock,
    PhaseProgress,
    feedback_prompts,
    select_best,
)


class KnownScorer:
    """Scores by the grey level of a solid image: text and style score tables chosen by the test."""

    def __init__(self, text: dict[int, float], style: dict[int, float]) -> None:
        self.text, self.style = text, style
        self.calls = 0

    def text_scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        self.calls += 1
        return [self.text[int(im.getpixel((0, 0)))] for im in images]  # type: ignore[arg-type]

    def style_scores(self, images: Sequence[Image.Image]) -> list[float]:
        return [self.style[int(im.getpixel((0, 0)))] for im in images]  # type: ignore[arg-type]


def grey(level: int) -> Image.Image:
    return Image.new("L", (8, 8), level)


# Three prompts, candidates identified by grey level. In "a cat", 2 wins on text alone but 1 keeps far more style.
CANDIDATES = [Candidate(grey(lv), p) for lv, p in [
    (1, "a cat"), (2, "a cat"), (3, "a cat"),
    (10, "a house"), (11, "a house"),
    (20, "a boat"), (21, "a boat"), (22, "a boat"),
]]
TEXT = {1: 0.30, 2: 0.31, 3: 0.20, 10: 0.25, 11: 0.28, 20: 0.33, 21: 0.29, 22: 0.33}
STYLE = {1: 0.70, 2: 0.30, 3: 0.90, 10: 0.60, 11: 0.60, 20: 0.50, 21: 0.95, 22: 0.50}


def levels(selected: Sequence[object]) -> list[int]:
    return [int(s.candidate.image.getpixel((0, 0))) for s in selected]  # type: ignore[attr-defined]


def test_best_per_prompt_by_the_combined_score() -> None:
    scorer = KnownScorer(TEXT, STYLE)
    chosen = select_best(CANDIDATES, scorer)
    # a cat: 1 → 0.475, 2 → 0.385, 3 → 0.425; a house: 11; a boat: 21 → 0.5275 beats 20 and 22 (0.455, a tie).
    assert levels(chosen) == [1, 11, 21]
    assert [s.index for s in chosen] == [0, 4, 6]
    assert chosen[0].score == pytest.approx(0.30 + STYLE_WEIGHT * 0.70)
    assert (chosen[0].text_score, chosen[0].style_score) == (0.30, 0.70)
    assert scorer.calls == 1  # one batched call, not one per candidate


def test_style_weight_zero_is_the_papers_text_only_rule() -> None:
    chosen = select_best(CANDIDATES, KnownScorer(TEXT, STYLE), style_weight=0.0)
    assert levels(chosen) == [2, 11, 20]  # boat: 20 and 22 tie on text; the earlier one wins


def test_several_per_prompt_and_a_global_cap() -> None:
    scorer = KnownScorer(TEXT, STYLE)
    assert levels(select_best(CANDIDATES, scorer, per_prompt=2)) == [1, 3, 11, 10, 21, 20]
    # The 3 best of those six overall (0.5275, 0.475, 0.455 (20, before 0.43 of 11)), still grouped by prompt.
    assert levels(select_best(CANDIDATES, scorer, per_prompt=2, k=3)) == [1, 21, 20]
    assert levels(select_best(CANDIDATES, scorer, per_prompt=5)) == [1, 3, 2, 11, 10, 21, 20, 22]


def test_selected_candidates_become_training_pairs_with_their_prompt_as_caption() -> None:
    best = select_best(CANDIDATES, KnownScorer(TEXT, STYLE))[1]
    example = best.example()
    assert example.caption == "a house" and example.image is CANDIDATES[4].image
    with pytest.raises(ValueError, match="caption must not be empty"):
        TrainingExample(grey(0), "  ")
    with pytest.raises(TypeError, match="PIL image"):
        TrainingExample("style.png", "a cat")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,message", [
    ({"per_prompt": 0}, "per_prompt must be at least 1, got 0"),
    ({"k": 0}, "k must be at least 1, got 0"),
    ({"style_weight": -1.0}, "style_weight must be a finite number >= 0, got -1.0"),
])
def test_bad_selection_arguments_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_best(CANDIDATES, KnownScorer(TEXT, STYLE), **kwargs)  # type: ignore[arg-type]


def test_empty_or_broken_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        select_best([], KnownScorer(TEXT, STYLE))
    with pytest.raises(ValueError, match=r"candidate 1 \('a cat'\) has a non-finite score"):
        select_best(CANDIDATES, KnownScorer({**TEXT, 2: float("nan")}, STYLE))

    class Short(KnownScorer):
        def style_scores(self, images: Sequence[Image.Image]) -> list[float]:
            return super().style_scores(images)[:-1]

    with pytest.raises(ValueError, match="returned 8 text and 7 style scores for 8 candidates"):
        select_best(CANDIDATES, Short(TEXT, STYLE))


def test_clip_scorer_picks_the_argmax_of_the_direct_clip_scores(engine_tiny_clip_dir: Path) -> None:
    clip = load_clip(str(engine_tiny_clip_dir), batch_size=4)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(9)]
    prompts = [p for p in ("a cat", "a red house", "a boat at sea") for _ in range(3)]
    references = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]

    for weight in (0.0, STYLE_WEIGHT, 4.0):
        combined = (clip_text_score(clip, images, prompts)
                    + weight * clip_style_score(clip, images, references)).reshape(3, 3)  # (9,) -> (prompt, image)
        expected = [3 * p + int(combined[p].argmax()) for p in range(3)]
        chosen = select_best([Candidate(im, p) for im, p in zip(images, prompts, strict=True)],
                             ClipScorer(clip, references), style_weight=weight)
        assert [s.index for s in chosen] == expected
        assert [s.score for s in chosen] == pytest.approx([float(combined.flatten()[i]) for i in expected],
                                                          abs=1e-5)


def test_feedback_prompt_set_has_the_papers_pattern() -> None:
    prompts = feedback_prompts("watercolor painting")
    assert len(prompts) == len(FEEDBACK_CONTENTS) == 30 and len(set(prompts)) == 30
    assert prompts[:2] == ["A chihuahua in watercolor painting style",
                           "A tabby cat walking on the street in watercolor painting style"]
    assert all(p.endswith(" in watercolor painting style") for p in prompts)
    assert feedback_prompts("watercolor painting style") == prompts  # a trailing "style" is not doubled
    with pytest.raises(ValueError, match="descriptor must not be empty"):
        feedback_prompts(" ")


def test_phase_clock_reports_done_of_total_with_an_eta_from_its_own_pace() -> None:
    """0 without an ETA at start; then seconds left = elapsed / done × (total − done); scoring reports 0 and all."""
    seen: list[PhaseProgress] = []
    now = iter([100.0, 100.0, 104.0, 110.0]).__next__  # start; the 0 report; 1 done after 4 s; 3 done after 10 s
    clock = PhaseClock(Phase.RENDERING_CANDIDATES, seen.append, clock=now)
    clock.start(4)
    clock(1, 4)
    clock(3, 4)
    assert seen == [PhaseProgress(Phase.RENDERING_CANDIDATES, 0, 4, None),
                    PhaseProgress(Phase.RENDERING_CANDIDATES, 1, 4, 12.0),
                    PhaseProgress(Phase.RENDERING_CANDIDATES, 3, 4, round(10 / 3, 1))]
    scoring: list[PhaseProgress] = []
    select_best(CANDIDATES, KnownScorer(TEXT, STYLE), on_phase=scoring.append)
    assert [(p.phase, p.done, p.total) for p in scoring] == [(Phase.SCORING, 0, 8), (Phase.SCORING, 8, 8)]
    assert scoring[0].eta_seconds is None and scoring[1].eta_seconds == 0.0
