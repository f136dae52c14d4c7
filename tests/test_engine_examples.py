"""Training on (image, caption) pairs (`StyleSpec.examples`, a feedback round's picks): each image is trained under
its own caption, a style with examples trains beside plain styles exactly as alone, and one caption for every
image is the same run as `images` under that prompt."""

from __future__ import annotations

import dataclasses

import numpy as np

from tests.test_engine_multistyle import CONFIG, _image, _specs, assert_same_result
from trainer.examples import TrainingExample
from trainer.model import AmusedParts
from trainer.train import StyleSpec, train_styles, training_prompt


def _examples() -> list[TrainingExample]:
    return [TrainingExample(_image(0), "A chihuahua in stripes style"),
            TrainingExample(_image(1), "A castle in stripes style"),
            TrainingExample(_image(2), "A chihuahua in stripes style")]


def _round2(**kw: object) -> StyleSpec:
    return StyleSpec([], "stripes", steps=5, seed=7, learning_rate=3e-3, examples=_examples(), **kw)  # type: ignore[arg-type]


def test_one_caption_for_every_image_equals_images_under_that_prompt(engine_parts: AmusedParts) -> None:
    prompt = training_prompt("stripes")
    images = [_image(0), _image(1)]
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
    specs = _specs()
    alone = [train_styles(engine_parts, [s], CONFIG)[0] for s in (specs[1], _round2(), specs[3])]
    together = train_styles(engine_parts, [specs[1], _round2(), specs[3]], CONFIG)
    for got, want in zip(together, alone, strict=True):
        assert_same_result(got, want)
    key = next(k for k in alone[1].adapter.tensors if k.endswith("lora_B.weight"))  # type: ignore[union-attr]
    assert alone[1].adapter.tensors[key].abs().sum() > 0  # type: ignore[union-attr]
