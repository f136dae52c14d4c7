"""Training on (image, caption) examples from the upload side: several references with their own captions, and
a subject's photos under DreamBooth's prompt.

A multi-example style follows its own random stream like any other, so trained beside other styles it equals
itself trained alone (tolerance as tests/test_engine_multistyle.py: fp32 batch-size rounding on CPU); with every
caption equal to the StyleDrop prompt it is exactly the images + descriptor style; and each image trains on its
own caption. (Helpers are local: tests import shared ones from tests/helpers only.)
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engine import assert_same_result, pattern_image
from trainer.examples import TrainingExample, subject_prompt
from trainer.model import AmusedParts
from trainer.train import StyleSpec, TrainConfig, train_styles, training_prompt
from trainer.train_data import prepare_style

CONFIG = TrainConfig(progress_every=2)


def _captioned(steps: int = 5) -> StyleSpec:
    return StyleSpec([], "flat", examples=[TrainingExample(pattern_image(0), "a red fence in flat style"),
                                           TrainingExample(pattern_image(2), "a green hill in flat style"),
                                           TrainingExample(pattern_image(1), "a red fence in flat style")],
                     steps=steps, seed=7, learning_rate=3e-3)


def test_a_multi_example_style_trained_beside_others_equals_it_alone(engine_parts: AmusedParts) -> None:
    (alone,) = train_styles(engine_parts, [_captioned()], CONFIG)
    others = [StyleSpec([pattern_image(0)], "stripes", steps=4, seed=1, learning_rate=3e-3),
              StyleSpec([pattern_image(1), pattern_image(3)], "checkers", content="a board", steps=5, seed=2,
                        learning_rate=2e-3)]
    together = train_styles(engine_parts, [others[0], _captioned(), others[1]], CONFIG)
    assert_same_result(together[1], alone)
    assert alone.prompt == training_prompt("flat")  # the adapter records the style's StyleDrop prompt


def test_examples_captioned_with_the_styledrop_prompt_are_the_images_style(engine_parts: AmusedParts) -> None:
    prompt = training_prompt("checkers", "a board")
    plain = StyleSpec([pattern_image(1), pattern_image(3)], "checkers", content="a board", steps=3, seed=2)
    examples = StyleSpec([], "checkers", content="a board", examples=[TrainingExample(pattern_image(1), prompt),
                                                                      TrainingExample(pattern_image(3), prompt)],
                         steps=3, seed=2)
    a, b = train_styles(engine_parts, [plain, examples], TrainConfig(progress_every=1))
    assert a.losses == b.losses and a.adapter is not None and b.adapter is not None
    assert all(torch.equal(v, b.adapter.tensors[k]) for k, v in a.adapter.tensors.items())


def test_each_image_trains_on_its_own_caption(engine_parts: AmusedParts) -> None:
    data = prepare_style(engine_parts, [pattern_image(0), pattern_image(2), pattern_image(1)], "unused",
                         captions=["fence", "hill", "fence"])
    assert data.text_of_image is not None and data.text_of_image.tolist() == [0, 1, 0]
    assert data.hidden.shape[0] == 2 and not torch.equal(data.hidden[0], data.hidden[1])
    # other captions on the same images and seed: other losses (so captions reach the loss)
    other = StyleSpec([], "flat", examples=[TrainingExample(e.image, e.caption.replace("red", "blue"))
                                            for e in _captioned().examples or []], steps=5, seed=7,
                      learning_rate=3e-3)
    a, b = train_styles(engine_parts, [_captioned(), other], CONFIG)
    assert a.losses != b.losses
    with pytest.raises(ValueError, match="captions"):
        prepare_style(engine_parts, [pattern_image(0)], "unused", captions=["a", "b"])


def test_the_subject_prompt_is_dreambooths_form() -> None:
    assert subject_prompt("dog") == "a photo of sks dog"
    assert subject_prompt("  teddy bear ") == "a photo of sks teddy bear"
    with pytest.raises(ValueError, match="class word"):
        subject_prompt("  ")


def test_a_subject_adapter_trains_on_its_photos_and_records_the_subject_prompt(engine_parts: AmusedParts) -> None:
    prompt = subject_prompt("dog")
    spec = StyleSpec([], "dog", prompt=prompt, examples=[TrainingExample(pattern_image(k), prompt) for k in (0, 3)],
                     steps=2, seed=1)
    (result,) = train_styles(engine_parts, [spec], CONFIG)
    assert result.adapter is not None and result.adapter.meta.train_prompt == "a photo of sks dog"
    # the same photos under one prompt given as `prompt` train the same adapter
    same_photos = StyleSpec([pattern_image(0), pattern_image(3)], "dog", prompt=prompt, steps=2, seed=1)
    (same,) = train_styles(engine_parts, [same_photos], CONFIG)
    assert same.losses == result.losses and same.adapter is not None
    assert all(torch.equal(v, same.adapter.tensors[k]) for k, v in result.adapter.tensors.items())
