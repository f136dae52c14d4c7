"""Continuous batching: styles join a running multi-style run at a step boundary and leave it when they finish,
stop or fail; each still trains as it would alone, with its own checkpoints, cancel and resume.

Tolerance: as tests/test_engine_multistyle.py (tests/helpers/engine.py: assert_same_result): a style's rows only
meet other styles' rows in batched matrix products, whose blocking differs with the batch size, so a joined style
equals itself alone up to fp32 rounding (losses rtol 1e-4, adapter tensors relative norm 2e-3). Measured on the
tiny model (printed at the end of the module): at most 3.7e-4 relative norm, the same order as a fixed batch of
styles (2.4e-4 in tests/test_engine_multistyle.py): joining adds no error of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from tests.helpers.engine import MEASURED, RTOL, assert_same_result, pattern_image
from trainer.checkpoint import Checkpoint
from trainer.model import AmusedParts, load_base
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, TrainResult, train_styles


def _specs() -> list[StyleSpec]:
    return [
        StyleSpec([pattern_image(0)], "stripes", steps=6, seed=1, learning_rate=3e-3),
        StyleSpec([pattern_image(1), pattern_image(3)], "checkers", content="a board", steps=4, seed=2,
                  learning_rate=2e-3),
        StyleSpec([pattern_image(2)], "gradient", steps=3, seed=3, learning_rate=4e-3),
    ]


CONFIG = TrainConfig(progress_every=1)


@pytest.fixture(scope="module")
def alone(engine_tiny_dir) -> list[TrainResult]:  # type: ignore[no-untyped-def]
    parts = load_base(str(engine_tiny_dir))
    return [train_styles(parts, [spec], CONFIG)[0] for spec in _specs()]


class Joiner:
    """A join callback that hands in `specs[i]` at the `at[i]`-th step boundary (0 = before the first step) or at
    the first boundary after that with a free slot; records the boundaries it was asked at."""

    def __init__(self, specs: Sequence[StyleSpec], at: Sequence[int], progress: dict[int, list[int]]) -> None:
        self.queue = list(zip(at, specs, strict=True))
        self.progress = progress
        self.asked: list[tuple[int, int]] = []  # (steps the first style had done, free slots)
        self.joined_after: list[int] = []  # steps of style 0 when each joined

    def __call__(self, free: int) -> list[StyleSpec]:
        done = (self.progress.get(0) or [0])[-1]
        self.asked.append((done, free))
        ready = [spec for at, spec in self.queue if at <= done][:free]
        self.queue = self.queue[len(ready):]
        self.joined_after += [done] * len(ready)
        return ready


def _progress_log() -> tuple[dict[int, list[int]], Callbacks]:
    seen: dict[int, list[int]] = {}

    def on_progress(i: int, p: Progress) -> None:
        seen.setdefault(i, []).append(p.step)

    return seen, Callbacks(on_progress=on_progress)


@pytest.mark.parametrize("k", [1, 3])
def test_a_style_joining_at_step_k_trains_as_it_would_alone(engine_parts: AmusedParts, alone: list[TrainResult],
                                                            k: int) -> None:
    specs = _specs()
    seen, cb = _progress_log()
    cb.join = joiner = Joiner([specs[1]], [k], seen)
    done: list[tuple[int, int]] = []
    cb.on_done = lambda i, r: done.append((i, r.step))
    results = train_styles(engine_parts, [specs[0]], TrainConfig(progress_every=1, capacity=2), cb)
    assert len(results) == 2
    assert joiner.joined_after == [k]  # it joined at the first step boundary after it was queued: no wait
    assert seen[1] == [1, 2, 3, 4] and seen[0] == [1, 2, 3, 4, 5, 6]
    assert_same_result(results[0], alone[0])
    assert_same_result(results[1], alone[1])
    # each result is handed over the moment its style leaves: the joined one (4 steps from k) before the first
    assert done == sorted(done, key=lambda d: (d[1] + (k if d[0] == 1 else 0)))
    assert {i for i, _ in done} == {0, 1}


def test_a_finished_styles_slot_is_reused_by_a_joiner(engine_parts: AmusedParts, alone: list[TrainResult]) -> None:
    specs = _specs()
    seen, cb = _progress_log()
    cb.join = joiner = Joiner([specs[2]], [0], seen)
    # capacity 2, two styles given: the third can only take the slot that "checkers" (4 steps) leaves
    results = train_styles(engine_parts, [specs[0], specs[1]], TrainConfig(progress_every=1, capacity=2), cb)
    assert joiner.joined_after == [4]
    assert all(free == 0 for done, free in joiner.asked if done < 4)  # it was never asked while the bank was full
    for got, want in zip(results, alone, strict=True):
        assert_same_result(got, want)


def test_a_joiner_resumes_from_its_checkpoint(engine_parts: AmusedParts, engine_tiny_dir,  # type: ignore[no-untyped-def]
                                             alone: list[TrainResult]) -> None:
    specs = _specs()
    saved: list[Checkpoint] = []
    train_styles(load_base(str(engine_tiny_dir)), [specs[1]], TrainConfig(progress_every=1, checkpoint_every=2),
                 Callbacks(on_checkpoint=lambda _i, c: saved.append(c),
                           should_stop=lambda _i: len(saved) > 0))
    assert [c.step for c in saved] == [2]
    resumed = _specs()[1]
    resumed.resume = Checkpoint.from_bytes(saved[0].to_bytes())
    seen, cb = _progress_log()
    cb.join = Joiner([resumed], [2], seen)
    results = train_styles(engine_parts, [specs[0]], TrainConfig(progress_every=1, capacity=3), cb)
    assert seen[1] == [3, 4]
    got, want = results[1], alone[1]
    assert got.step == 4 and got.adapter is not None
    np.testing.assert_allclose(got.losses, want.losses[2:], rtol=RTOL)
    got.losses = want.losses  # the adapter and its record against the uninterrupted run
    assert_same_result(got, want)
    assert_same_result(results[0], alone[0])


def test_cancelling_a_joined_style_ends_only_it(engine_parts: AmusedParts, alone: list[TrainResult]) -> None:
    specs = _specs()
    seen, cb = _progress_log()
    cb.join = Joiner([specs[1], specs[2]], [1, 1], seen)
    cb.should_stop = lambda i: i == 1 and seen.get(1, [0])[-1] >= 2
    results = train_styles(engine_parts, [specs[0]], TrainConfig(progress_every=1, capacity=3), cb)
    assert results[1].stopped and results[1].adapter is None and results[1].step == 2
    np.testing.assert_allclose(results[1].losses, alone[1].losses[:2], rtol=RTOL)
    assert_same_result(results[0], alone[0])
    assert_same_result(results[2], alone[2])


def test_a_joiner_that_cannot_start_fails_alone(engine_parts: AmusedParts, alone: list[TrainResult]) -> None:
    specs = _specs()
    seen, cb = _progress_log()
    bad = StyleSpec([], "nothing", steps=2)  # no images: refused by check_training
    cb.join = Joiner([bad, specs[2]], [1, 1], seen)
    results = train_styles(engine_parts, [specs[0]], TrainConfig(progress_every=1, capacity=2), cb)
    assert isinstance(results[1].error, ValueError) and results[1].adapter is None and results[1].step == 0
    assert_same_result(results[0], alone[0])
    assert_same_result(results[2], alone[2])  # the slot the failed joiner never used went to the next


def test_on_done_may_sample_with_the_new_adapter_while_the_others_train(engine_parts: AmusedParts,
                                                                        alone: list[TrainResult]) -> None:
    from trainer.bank import LoraBank, find_bank
    from trainer.sampler import GenerationRequest, sample

    served: dict[int, object] = {}

    def on_done(i: int, r: TrainResult) -> None:  # what a worker does: previews with the adapter just trained
        assert r.adapter is not None
        bank = find_bank(engine_parts.transformer) or LoraBank(engine_parts.transformer, 1)
        bank.load(1, r.adapter, name=f"style{i}")
        (res,) = sample(engine_parts, [GenerationRequest("a cat", seed=3, steps=2, adapter=f"style{i}")],
                        decode=False)
        served[i] = res.tokens

    specs = _specs()
    results = train_styles(engine_parts, specs, TrainConfig(progress_every=1), Callbacks(on_done=on_done))
    assert sorted(served) == [0, 1, 2]  # "gradient" (3 steps) sampled while the other two still trained
    for got, want in zip(results, alone, strict=True):
        assert_same_result(got, want)
    serving = find_bank(engine_parts.transformer)
    assert serving is not None and not serving.trainable  # the bank on_done installed is back after the run
    serving.remove()


def teardown_module() -> None:
    if MEASURED:
        print(f"\nlargest relative adapter difference: {max(MEASURED):.2e}")
