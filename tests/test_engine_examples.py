"""Training on (image, caption) examples: several references with their own captions, and subject photos.

A multi-example style follows its own random stream like any other, so trained beside other styles it equals
itself trained alone (same tolerance as tests/test_engine_multistyle.py); with every caption equal to the
StyleDrop prompt it is exactly the images + descriptor style; and each image trains on its own caption.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engine import assert_same_training, pattern_image
from trainer.examples import TrainingExample, subject_prompt
from trainer.model import AmusedParts
from trainer.train import StyleSpec, TrainConfig, train_styles, training_prompt
from trainer.train_data import prepare_style

CONFIG = TrainConfig(progress_every=2)
_image = pattern_image


def _specs() -> list[StyleSpec]:
    return [StyleSpec([_image(0)], "stripes", steps=4, seed=1, learning_rate=3e-3),
            StyleSpec([_image(1), _image(3)], "checkers", content="a board", steps=5, seed=2, learning_rate=2e-3)]


def _captioned(steps: int = 5) -> StyleSpec:
    return StyleSpec([], "flat", examples=[TrainingExample(_image(0), "a red fence in flat style"),
                                           TrainingExample(_image(2), "a green hill in flat style"),
                                           TrainingExample(_image(1), "a red fence in flat style")],
                     steps=steps, seed=7, learning_rate=3e-3)


def test_a_multi_example_style_trained_beside_others_equals_it_alone(engine_parts: AmusedParts) -> None:
    (alone,) = train_styles(engine_parts, [_captioned()], CONFIG)
    specs = _specs()
    together = train_styles(engine_parts, [specs[0], _captioned(), specs[1]], CONFIG)
    assert_same_training(together[1], alone)
    assert alone.prompt == "a red fence in flat style"  # the adapter records the first caption
    assert alone.adapter is not None and alone.adapter.meta.train_prompt == "a red fence in flat style"


def test_examples_captioned_with_the_styledrop_prompt_are_the_images_style(engine_parts: AmusedParts) -> None:
    prompt = training_prompt("checkers", "a board")
    plain = StyleSpec([_image(1), _image(3)], "checkers", content="a board", steps=3, seed=2)
    examples = StyleSpec([], "checkers", examples=[TrainingExample(_image(1), prompt),
                                                   TrainingExample(_image(3), prompt)], steps=3, seed=2)
    a, b = train_styles(engine_parts, [plain, examples], TrainConfig(progress_every=1))
    assert a.losses == b.losses and a.adapter is not None and b.adapter is not None
    assert all(torch.equal(v, b.adapter.tensors[k]) for k, v in a.adapter.tensors.items())


def test_each_image_trains_on_its_own_caption(engine_parts: AmusedParts) -> None:
    data = prepare_style(engine_parts, [_image(0), _image(2), _image(1)], ["fence", "hill", "fence"])
    assert data.text_of_image is not None and data.text_of_image.tolist() == [0, 1, 0]
    assert data.hidden.shape[0] == 2 and not torch.equal(data.hidden[0], data.hidden[1])
    # other captions on the same images and seed: another adapter (so captions reach the loss)
    other = StyleSpec([], "flat", examples=[TrainingExample(e.image, e.caption.replace("red", "blue"))
                                            for e in _captioned().examples or []], steps=5, seed=7,
                      learning_rate=3e-3)
    a, b = train_styles(engine_parts, [_captioned(), other], CONFIG)
    assert a.losses[0] != b.losses[0] or a.losses[1] != b.losses[1]


def test_a_style_takes_images_or_examples_not_both(engine_parts: AmusedParts) -> None:
    both = StyleSpec([_image(0)], "x", examples=[TrainingExample(_image(1), "a photo of sks dog")], steps=1)
    with pytest.raises(ValueError, match="not both"):
        train_styles(engine_parts, [both], CONFIG)
    with pytest.raises(ValueError, match="at least one"):
        train_styles(engine_parts, [StyleSpec([], "x", examples=[], steps=1)], CONFIG)
    with pytest.raises(ValueError, match="captions"):
        prepare_style(engine_parts, [_image(0)], ["a", "b"])


def test_the_subject_prompt_is_dreambooths_form() -> None:
    assert subject_prompt("dog") == "a photo of sks dog"
    assert subject_prompt("  teddy bear ") == "a photo of sks teddy bear"
    with pytest.raises(ValueError, match="class word"):
        subject_prompt("  ")


def test_a_subject_adapter_trains_on_its_photos_with_the_subject_prompt(engine_parts: AmusedParts) -> None:
    spec = StyleSpec([], "sks dog", examples=[TrainingExample(_image(k), subject_prompt("dog")) for k in (0, 3)],
                     steps=2, seed=1)
    (result,) = train_styles(engine_parts, [spec], CONFIG)
    assert result.adapter is not None and result.adapter.meta.train_prompt == "a photo of sks dog"
