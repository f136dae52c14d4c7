"""Bad values are refused before any work, each with an error naming its field; a resume at or past its step
count does not train; the default progress interval does not read the loss back every step."""

from __future__ import annotations

import math
from typing import Any

import pytest
from PIL import Image

from tests.helpers.engine import checkpoint_at
from trainer.capture import OpCounter
from trainer.contracts import limits
from trainer.model import AmusedParts
from trainer.sampler import GenerationRequest, SamplingError, sample
from trainer.train import Progress, StyleSpec, TrainConfig, train_style, train_styles


@pytest.mark.parametrize("config,spec,match", [
    ({"learning_rate": math.nan}, {}, "learning_rate"),
    ({"learning_rate": -1e-4}, {}, "learning_rate"),
    ({"learning_rate": 0.0}, {}, "learning_rate"),
    ({}, {"learning_rate": math.inf}, r"styles\[0\].learning_rate"),
    ({"steps": 2.5}, {}, "steps"),
    ({}, {"steps": 0}, r"styles\[0\].steps"),
    ({"rank": 0}, {}, "rank"),
    ({"seed": 2**70}, {}, "seed"),
    ({}, {"seed": -1}, r"styles\[0\].seed"),
    ({"aesthetic_score": math.nan}, {}, "aesthetic_score"),
    ({"alpha": math.nan}, {}, "alpha"),
    ({}, {"descriptor": "  "}, "descriptor"),
])
def test_bad_training_values_name_the_field(engine_parts: AmusedParts, engine_style_image: Image.Image,
                                            config: dict[str, Any], spec: dict[str, Any], match: str) -> None:
    style = StyleSpec(**{"images": [engine_style_image], "descriptor": "stripes", **spec})
    with pytest.raises(ValueError, match=match):
        train_styles(engine_parts, [style], TrainConfig(**{"steps": 2, **config}))


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": (math.nan, 0.0)}, r"temperature\[0\]"),
    ({"temperature": (2.0, -1.0)}, r"temperature\[1\]"),
    ({"aesthetic_score": math.nan}, "aesthetic_score"),
    ({"guidance_scale": math.nan}, "guidance_scale"),
    ({"style_strength": math.inf}, "style_strength"),
    ({"steps": 2.5}, "steps"),
    ({"seed": 2**70}, "seed"),
    ({"strength": math.nan, "init_image": Image.new("RGB", (32, 32))}, "strength"),
    ({"init_image": Image.new("RGB", (8, 8))}, "init_image"),
])
def test_bad_request_values_name_the_field(engine_parts: AmusedParts, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SamplingError, match=match):
        sample(engine_parts, [GenerationRequest(**{"prompt": "a cat", "steps": 2, **kwargs})], decode=False)


@pytest.mark.parametrize("size,match", [
    ({"height": 0}, "height must be between 16"),  # not "the default"
    ({"width": 250}, "width must be a multiple of 16"),  # not rounded down to 240
    ({"height": 1_000_000}, f"height must be between 16 and {limits.MAX_IMAGE_SIDE}"),
    ({"width": 256.0}, "width must be a whole number"),
])
def test_bad_output_sizes_are_refused_not_replaced(engine_parts: AmusedParts, size: dict[str, Any],
                                                   match: str) -> None:
    with pytest.raises(SamplingError, match=match):
        sample(engine_parts, [GenerationRequest("a cat", steps=2)], decode=False, **size)


def test_rows_per_sample_call_are_bounded(engine_parts: AmusedParts) -> None:
    many = [GenerationRequest("a cat", seed=i, steps=1) for i in range(limits.MAX_SAMPLE_ROWS + 1)]
    with pytest.raises(SamplingError, match=f"at most {limits.MAX_SAMPLE_ROWS} requests"):
        sample(engine_parts, many, decode=False)


def test_an_explicit_size_is_used_as_asked(engine_parts: AmusedParts) -> None:
    (res,) = sample(engine_parts, [GenerationRequest("a cat", steps=2)], height=128, width=192)
    assert tuple(res.tokens.shape) == (8, 12) and res.image is not None and res.image.size == (192, 128)


@pytest.mark.parametrize("resume_at,steps", [(3, 3), (3, 2)])
def test_a_resume_at_or_past_its_step_count_does_not_train(engine_parts: AmusedParts,
                                                           engine_style_image: Image.Image,
                                                           resume_at: int, steps: int) -> None:
    ckpt = checkpoint_at(engine_parts, engine_style_image, resume_at)
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes", resume=ckpt,
                         config=TrainConfig(steps=steps))
    assert result.losses == [] and result.step == resume_at
    assert result.adapter is not None and result.adapter.meta.steps == resume_at  # what the adapter has had
    for key, value in ckpt.adapter.items():  # the checkpoint's adapter, as is
        assert result.adapter.tensors[key].equal(value)


def test_default_progress_interval_reads_the_loss_back_rarely(engine_parts: AmusedParts,
                                                               engine_style_image: Image.Image) -> None:
    seen: list[Progress] = []
    steps = 6
    with OpCounter() as counter:
        result = train_style(engine_parts, [engine_style_image], descriptor="stripes", on_progress=seen.append,
                             config=TrainConfig(steps=steps))
    assert len(result.losses) == steps  # every loss still reaches the result
    assert [p.step for p in seen] == [steps]  # the default interval (50) is longer than the run: the last step
    assert counter.host_reads <= 2, counter.summary()  # one loss read-back, not one per step
