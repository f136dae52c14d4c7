"""A training call that fails, in whichever setup phase, leaves the model exactly as it found it: the serving bank
back in place (its adapters still serve the same tokens), the base frozen, no training bank left on the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image

from tests.helpers.engine import checkpoint_at, random_adapter, serving_tokens
from trainer.bank import LoraBank, find_bank
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.model import AmusedParts
from trainer.train import StyleSpec, TrainConfig, train_styles
from trainer.train_step import TrainStep


def _fail(*_args: Any, **_kwargs: Any) -> None:
    raise RuntimeError("injected failure")


def _serving(parts: AmusedParts) -> tuple[LoraBank, torch.Tensor]:
    bank = LoraBank(parts.transformer, 2, rank=16)
    bank.load(1, random_adapter(parts, seed=11), name="served")
    return bank, serving_tokens(parts)


# Each case: how the call fails (a spec or config that fails in that phase, or a failure injected into it).
Case = Callable[[AmusedParts, Image.Image, pytest.MonkeyPatch], tuple[list[StyleSpec], TrainConfig, type]]


def _rank_zero(_p: AmusedParts, im: Image.Image, _m: pytest.MonkeyPatch) -> tuple[list[StyleSpec], TrainConfig, type]:
    return [StyleSpec([im], "stripes")], TrainConfig(steps=2, rank=0), ValueError


def _image_with_no_pixels(_p: AmusedParts, im: Image.Image,
                          _m: pytest.MonkeyPatch) -> tuple[list[StyleSpec], TrainConfig, type]:
    return [StyleSpec([im, Image.new("RGB", (0, 0))], "stripes")], TrainConfig(steps=2), ValueError


def _bank_init_fails(_p: AmusedParts, im: Image.Image,
                     m: pytest.MonkeyPatch) -> tuple[list[StyleSpec], TrainConfig, type]:
    m.setattr(LoraBank, "init_slot", _fail)
    return [StyleSpec([im], "stripes")], TrainConfig(steps=2), RuntimeError


def _resume_of_other_rank(p: AmusedParts, im: Image.Image,
                          _m: pytest.MonkeyPatch) -> tuple[list[StyleSpec], TrainConfig, type]:
    ckpt = checkpoint_at(p, im, 1, rank=4)
    return [StyleSpec([im], "stripes", resume=ckpt)], TrainConfig(steps=3, rank=8), CheckpointError


def _resume_of_other_weights(p: AmusedParts, im: Image.Image,
                             _m: pytest.MonkeyPatch) -> tuple[list[StyleSpec], TrainConfig, type]:
    ckpt = checkpoint_at(p, im, 1, rank=16)
    other = Checkpoint.from_bytes(ckpt.to_bytes())
    other.base["base_weights"] = "0" * 16  # trained on another set of weights with this config
    return [StyleSpec([im], "stripes", resume=other)], TrainConfig(steps=3), CheckpointError


def _step_build_fails(_p: AmusedParts, im: Image.Image,
                      m: pytest.MonkeyPatch) -> tuple[list[StyleSpec], TrainConfig, type]:
    m.setattr(TrainStep, "__init__", _fail)
    return [StyleSpec([im], "stripes")], TrainConfig(steps=2), RuntimeError


@pytest.mark.parametrize("case", [_rank_zero, _image_with_no_pixels, _bank_init_fails, _resume_of_other_rank,
                                  _resume_of_other_weights, _step_build_fails],
                         ids=lambda c: c.__name__.strip("_"))
def test_a_failed_training_call_leaves_serving_working(engine_parts: AmusedParts, engine_style_image: Image.Image,
                                                       monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    styles, config, error = case(engine_parts, engine_style_image, monkeypatch)
    serving, before = _serving(engine_parts)
    with pytest.raises(error):
        train_styles(engine_parts, styles, config)
    assert find_bank(engine_parts.transformer) is serving
    assert torch.equal(serving_tokens(engine_parts), before)
    assert not any(p.requires_grad for p in engine_parts.transformer.parameters())
    monkeypatch.undo()  # the model trains again afterwards
    (ok,) = train_styles(engine_parts, [StyleSpec([engine_style_image], "stripes")], TrainConfig(steps=1))
    assert ok.adapter is not None and find_bank(engine_parts.transformer) is serving
