"""A shared batch never lets one request hurt another: an invalid request is found before the batch is assembled
(so a worker drops it alone), and a row's tokens and decoded image equal those it gets alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.engine import random_adapter
from trainer.bank import LoraBank
from trainer.model import AmusedParts
from trainer.requests import check_request
from trainer.sampler import GenerationRequest, SamplingError, sample

INIT = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
STRIPE = Image.new("L", (256, 256))
STRIPE.paste(255, (0, 0, 4, 256))  # white 4 px wide: black at token resolution (16 px a token), nothing to repaint


def _mixed(parts: AmusedParts) -> list[GenerationRequest]:
    bank = LoraBank(parts.transformer, 2)
    bank.load(1, random_adapter(parts, seed=7), name="a")
    bank.load(2, random_adapter(parts, seed=8), name="b")
    return [
        GenerationRequest("a cat", seed=1, steps=4, adapter="a"),
        GenerationRequest("a house", seed=2, steps=4, adapter="b", negative_prompt="ugly", style_strength=2.0),
        GenerationRequest("a tree", seed=3, steps=4),
        GenerationRequest("a boat", seed=4, steps=4, adapter="a", init_image=INIT, strength=0.5),
    ]


@pytest.mark.parametrize("bad", [
    GenerationRequest("a dog", seed=5, steps=4, init_image=INIT, mask=STRIPE),  # sample() found this mid-batch
    GenerationRequest("a dog", seed=5, steps=4, temperature=(math.nan, 0.0)),  # ... and this not at all
])
def test_one_invalid_request_is_found_alone_and_the_others_run_as_alone(engine_parts: AmusedParts,
                                                                        bad: GenerationRequest) -> None:
    batch = _mixed(engine_parts)
    batch.insert(2, bad)
    verdicts: list[SamplingError | None] = []
    for req in batch:  # what a worker does before it assembles the batch
        try:
            check_request(req, scale=engine_parts.vae_scale_factor, default=engine_parts.resolution)
            verdicts.append(None)
        except SamplingError as exc:
            verdicts.append(exc)
    assert [v is not None for v in verdicts] == [False, False, True, False, False]
    with pytest.raises(SamplingError, match="request 2"):  # sample() itself refuses, naming the row
        sample(engine_parts, batch, decode=False)
    good = [r for r, v in zip(batch, verdicts, strict=True) if v is None]
    together = sample(engine_parts, good, decode=False)
    for i, (req, res) in enumerate(zip(good, together, strict=True)):
        assert torch.equal(res.tokens, sample(engine_parts, [req], decode=False)[0].tokens), f"row {i}"


def test_decoded_images_of_a_mixed_batch_equal_each_alone(engine_parts: AmusedParts) -> None:
    batch = _mixed(engine_parts)
    together = sample(engine_parts, batch)
    for i, (req, res) in enumerate(zip(batch, together, strict=True)):
        (alone,) = sample(engine_parts, [req])
        assert torch.equal(res.tokens, alone.tokens)
        assert res.image is not None and alone.image is not None
        assert np.array_equal(np.asarray(res.image), np.asarray(alone.image)), f"row {i}: decoded differently"
