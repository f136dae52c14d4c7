"""Training on (image, caption) pairs (`StyleSpec.examples`, a feedback round's picks): each image is trained under
its own caption, a style with examples trains beside plain styles exactly as alone, and one caption for every
image is the same run as `images` under that prompt."""

from __future__ import annotations

import dataclasses

import numpy as np

from tests.helpers.engine import assert_same_result, pattern_image
from trainer.examples import TrainingExample
from trainer.model import AmusedParts
from trainer.train import StyleSpec, TrainConfig, train_styles, training_prompt

CONFIG = TrainConfig(progress_every=2)


def _examples() -> list[TrainingExample]:
    return [TrainingExample(pattern_image(0), "A chihuahua in stripes style"),
            TrainingExample(pattern_image(1), "A castle in stripes style"),
            TrainingExample(pattern_image(2), "A chihuahua in stripes style")]


def _round2(**kw: object) -> StyleSpec:
    return StyleSpec([], "stripes", steps=5, seed=7, learning_rate=3e-3, examples=_examples(), **kw)  # type: ignore[arg-type]


def test_one_caption_for_every_image_equals_images_under_that_prompt(engine_parts: AmusedParts) -> None:
    prompt = training_prompt("stripes")
    images = [pattern_image(0), pattern_image(1)]
    plain = train_styles(engine_parts, [StyleSpec(images, "stripes", steps=4, seed=1)], CONFIG)[0]
    pairs = [TrainingExample(im, prompt) for im in images]
    paired = train_styles(engine_parts, [StyleSpec([], "stripes", steps=4, seed=1, examples=pairs)], CONFIG)[0]
    assert_same_result(paired, plain)


def test_captions_change_what_is_learned_and_both_forward_paths_agree(engine_parts: AmusedParts) -> None:
    got = train_styles(engine_parts, [_round2()], CONFIG)[0]
    one_prompt = train_styles(engine_parts, [StyleSpec([e.image for e in _examples()], "stripes", steps=5, seed=7,
                                                       learning_rate=3e-3)], CONFIG)[0]
    assert got.adapter is not None and one_prompt.adapter is not None
    assert not np.allclose(got.losses, one_prompt.losses)  # same images and masks, other captions
    # The precomputed conditioning routes each row's caption exactly as the model's own forward does.
    eager = train_styles(engine_parts, [_round2()], dataclasses.replace(CONFIG, constant_conditioning=False))[0]
    assert_same_result(got, eager)


def test_a_round_trained_beside_other_styles_equals_it_alone(engine_parts: AmusedParts) -> None:
    checkers = StyleSpec([pattern_image(1), pattern_image(3)], "checkers", content="a board", steps=5, seed=2,
                         learning_rate=2e-3)
    dots = StyleSpec([pattern_image(3)], "dots", steps=4, seed=4, learning_rate=1e-3)
    alone = [train_styles(engine_parts, [s], CONFIG)[0] for s in (checkers, _round2(), dots)]
    together = train_styles(engine_parts, [checkers, _round2(), dots], CONFIG)
    for got, want in zip(together, alone, strict=True):
        assert_same_result(got, want)
    key = next(k for k in alone[1].adapter.tensors if k.endswith("lora_B.weight"))  # type: ignore[union-attr]
    assert alone[1].adapter.tensors[key].abs().sum() > 0  # type: ignore[union-attr]
