"""Many styles trained in one run: each equals itself trained alone; cancel, failure and resume stay per style.

Tolerance (tests/helpers/engine.py: assert_same_result): on CPU in fp32, a style trained in a batch of S rows
differs from the same style trained alone only by the rounding of batched matrix products (different blocking for
different batch sizes). Measured on the tiny model: at most ~1e-6 on adapter weights after 7 steps; asserted with
atol 2e-5 / rtol 1e-4 (losses rtol 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.engine import MEASURED, RTOL, assert_same_result, pattern_image
from trainer.bank import LoraBank, find_bank
from trainer.checkpoint import Checkpoint
from trainer.model import AmusedParts, load_base
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, TrainResult, train_styles


def _specs() -> list[StyleSpec]:
    """Four different styles: images (one has two), prompts, seeds, step counts and learning rates."""
    return [
        StyleSpec([pattern_image(0)], "stripes", steps=4, seed=1, learning_rate=3e-3),
        StyleSpec([pattern_image(1), pattern_image(3)], "checkers", content="a board", steps=5, seed=2,
                  learning_rate=2e-3),
        StyleSpec([pattern_image(2)], "gradient", steps=3, seed=3, learning_rate=4e-3),
        StyleSpec([pattern_image(3)], "dots", steps=4, seed=4, learning_rate=1e-3),
    ]


CONFIG = TrainConfig(progress_every=2)


@pytest.fixture(scope="module")
def alone(engine_tiny_dir) -> list[TrainResult]:  # type: ignore[no-untyped-def]
    parts = load_base(str(engine_tiny_dir))
    return [train_styles(parts, [spec], CONFIG)[0] for spec in _specs()]


@pytest.mark.parametrize("which", [[0], [0, 1, 2], [0, 1, 2, 3], [3, 1]])
def test_styles_trained_together_equal_each_alone(engine_parts: AmusedParts, alone: list[TrainResult],
                                                  which: list[int]) -> None:
    specs = _specs()
    together = train_styles(engine_parts, [specs[i] for i in which], CONFIG)
    for got, i in zip(together, which, strict=True):
        assert len(got.losses) == specs[i].steps and not got.stopped
        assert_same_result(got, alone[i])
    # the styles did learn something different from each other (so equality above is not vacuous)
    a, b = alone[0].adapter, alone[1].adapter
    assert a is not None and b is not None
    key = next(k for k in a.tensors if k.endswith("lora_B.weight"))
    assert a.tensors[key].abs().sum() > 0 and not torch.allclose(a.tensors[key], b.tensors[key])


def test_cancelling_one_style_leaves_the_others_unchanged(engine_parts: AmusedParts,
                                                         alone: list[TrainResult]) -> None:
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def on_progress(i: int, p: Progress) -> None:
        seen[i].append(p.step)

    cb = Callbacks(on_progress=on_progress, should_stop=lambda i: i == 1 and bool(seen[1]) and seen[1][-1] >= 2)
    results = train_styles(engine_parts, _specs()[:3], CONFIG, cb)
    assert results[1].stopped and results[1].adapter is None and results[1].step == 2
    assert len(results[1].losses) == 2
    np.testing.assert_allclose(results[1].losses, alone[1].losses[:2], rtol=RTOL)
    assert_same_result(results[0], alone[0])
    assert_same_result(results[2], alone[2])
    assert seen == {0: [2, 4], 1: [2], 2: [2, 3]}


def test_a_failing_style_callback_ends_only_that_style(engine_parts: AmusedParts,
                                                        alone: list[TrainResult]) -> None:
    def on_checkpoint(i: int, _c: Checkpoint) -> None:
        if i == 0:
            raise OSError("blob store full")

    results = train_styles(engine_parts, _specs()[:2], TrainConfig(progress_every=2, checkpoint_every=3),
                           Callbacks(on_checkpoint=on_checkpoint))
    assert isinstance(results[0].error, OSError) and results[0].adapter is None and results[0].step == 3
    assert results[1].error is None
    assert_same_result(results[1], alone[1])


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so no style handler catches it."""


def test_a_killed_run_resumes_every_style_exactly(engine_parts: AmusedParts, engine_tiny_dir) -> None:  # type: ignore[no-untyped-def]
    specs = _specs()
    config = TrainConfig(progress_every=1, checkpoint_every=2)
    full = train_styles(engine_parts, specs, config)

    latest: dict[int, Checkpoint] = {}

    def on_progress(_i: int, p: Progress) -> None:
        if p.step == 3:
            raise Killed

    with pytest.raises(Killed):
        train_styles(load_base(str(engine_tiny_dir)), specs, config,
                     Callbacks(on_progress=on_progress, on_checkpoint=lambda i, c: latest.__setitem__(i, c)))
    assert {i: c.step for i, c in latest.items()} == {0: 2, 1: 2, 2: 2, 3: 2}

    # A new process: fresh model, each checkpoint read back from bytes (as from the blob store).
    fresh = load_base(str(engine_tiny_dir))
    for i, spec in enumerate(specs):
        spec.resume = Checkpoint.from_bytes(latest[i].to_bytes())
    resumed = train_styles(fresh, specs, config)
    for got, want, spec in zip(resumed, full, specs, strict=True):
        assert got.step == spec.steps and got.losses == want.losses[2:]
        assert got.adapter is not None and want.adapter is not None
        for k, v in want.adapter.tensors.items():
            assert torch.equal(got.adapter.tensors[k], v), k


def test_the_base_model_and_its_serving_bank_are_left_as_they_were(engine_parts: AmusedParts,
                                                                    alone: list[TrainResult]) -> None:
    t = engine_parts.transformer
    serving = LoraBank(t, 2)
    assert alone[0].adapter is not None
    serving.load(1, alone[0].adapter, name="a")
    ids = torch.zeros(2, 16, 16, dtype=torch.long)
    hidden, pooled = torch.zeros(2, 77, 32), torch.zeros(2, 32)
    conds = torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * 2)

    def forward() -> torch.Tensor:
        with torch.no_grad(), serving.route([1, 0]):
            return t(ids, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=conds)

    before_out = forward()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in t.modules())
    train_styles(engine_parts, _specs()[:2], TrainConfig(steps=2))
    after = t.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in t.modules()) == hooks_before
    assert not any(p.requires_grad for p in t.parameters())
    assert find_bank(t) is serving and torch.equal(forward(), before_out)
    assert not torch.equal(before_out[0], before_out[1])  # the adapter row differs from the base row


def teardown_module() -> None:
    if MEASURED:
        print(f"\nlargest relative adapter difference: {max(MEASURED):.2e}")
