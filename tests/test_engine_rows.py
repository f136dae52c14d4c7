"""The trainable bank laid out by batch row (trainer/bank_train.py `RowPacking`): between changes of the set of
styles a training step reads and writes the bank's rows as they lie — no gather, no scatter — and the rows are
repacked exactly when the set changes (a style joins, finishes or is cancelled), weights and optimizer state
together, so checkpoints taken after a repack resume bit for bit.

Counted with `OpCounter(width=P)`: gather/scatter ops (by name, `GATHER_SCATTER_OPS`) on a tensor as wide as the
bank's flat layout. The previous engine did 2 of them per step (an `index_select` of the routed rows in the forward,
its `index_select_backward` scatter in the backward: docs/benchmarks.md §6), so the count can fail.
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from typing import Any

import pytest
import torch

from tests.helpers.engine import pattern_image
from trainer.bank import LoraBank, find_bank
from trainer.capture import OpCounter
from trainer.checkpoint import Checkpoint
from trainer.lora import AdapterError
from trainer.model import AmusedParts
from trainer.optim import SlotAdamW
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, train_styles


def _width(parts: AmusedParts) -> int:
    bank = LoraBank(parts.transformer, 1, trainable=True)
    bank.remove()
    assert bank.store is not None
    return bank.store.layout.width


def test_steps_gather_nothing_and_the_rows_repack_exactly_when_the_set_of_styles_changes(
        engine_parts: AmusedParts) -> None:
    """Two slots. A trains 8 steps, B 3; C joins B's slot once A is past step 5; A is cancelled at step 7; C runs
    4 steps. The set changes before iterations 4 (B finished), 6 (C joined) and 8 (A cancelled), nowhere else."""
    counter = OpCounter(width=_width(engine_parts))
    marks: list[tuple[int, dict[str, int]]] = []  # after each iteration: (repacks so far, bank gathers so far)
    last_ops = [-1]
    a_step = [0]

    def on_progress(i: int, p: Progress) -> None:
        if i == 0:
            a_step[0] = p.step
        if counter.ops != last_ops[0]:  # the first report of an iteration (later ones run no ops in between)
            bank = find_bank(engine_parts.transformer)
            assert bank is not None and bank.trainable
            marks.append((bank.packing.repacks, dict(counter.gathers_by_name)))
            last_ops[0] = counter.ops

    joined: list[int] = []

    def join(_free: int) -> list[StyleSpec]:
        if a_step[0] >= 5 and not joined:
            joined.append(1)
            return [StyleSpec([pattern_image(2)], "gradient", steps=4, seed=3, learning_rate=4e-3)]
        return []

    done: list[int] = []
    specs = [StyleSpec([pattern_image(0)], "stripes", steps=8, seed=1, learning_rate=3e-3),
             StyleSpec([pattern_image(1)], "checkers", steps=3, seed=2, learning_rate=2e-3)]
    cb = Callbacks(on_progress=on_progress, join=join, should_stop=lambda i: i == 0 and a_step[0] >= 7,
                   on_done=lambda i, _r: done.append(i))  # hands the model over: the bank leaves and comes back
    with counter:
        results = train_styles(engine_parts, specs, TrainConfig(progress_every=1, capacity=2), cb)
    assert [r.step for r in results] == [7, 3, 4] and results[0].stopped and done == [1, 0, 2]

    assert len(marks) == 9  # iterations 1..9 (C's 4 steps are iterations 6..9)
    assert marks[0][0] == 1  # the first route
    changes = {4, 6, 8}
    for it in range(2, 10):
        (rep_before, g_before), (rep_after, g_after) = marks[it - 2], marks[it - 1]
        gathers = {k: v - g_before.get(k, 0) for k, v in g_after.items() if v != g_before.get(k, 0)}
        assert rep_after - rep_before == (it in changes), f"iteration {it}"
        if it not in changes:
            assert gathers == {}, f"iteration {it}: {gathers}"  # the steady step: no gather, no scatter
    # Iteration 8 moved C from row 1 to row 0: the repack's one gather per packed [slots, P] tensor (the
    # weights and AdamW's two moments), and nothing else.
    (_, g7), (_, g8) = marks[6], marks[7]
    assert {k: v - g7.get(k, 0) for k, v in g8.items()} == {"index_select": 3}


def test_a_checkpoint_taken_after_a_repack_resumes_bit_for_bit(engine_parts: AmusedParts) -> None:
    """B finishes after 2 steps, so A moves from row 1 to row 0; A's checkpoint at step 4 (after the move) resumed
    alone continues exactly like the uninterrupted run (both train A alone from step 3 on). Both runs have two
    slots: the prompt-side values are computed once per run over the batch's styles, and a batch of one rounds
    differently from a batch of two (as before the row layout), which is not what this test is about."""
    a = StyleSpec([pattern_image(0)], "stripes", steps=6, seed=1, learning_rate=3e-3)
    b = StyleSpec([pattern_image(1)], "checkers", steps=2, seed=2, learning_rate=2e-3)
    saved: list[Checkpoint] = []
    cfg = TrainConfig(progress_every=1, checkpoint_every=4)
    _, straight = train_styles(engine_parts, [b, a], cfg,
                               Callbacks(on_checkpoint=lambda i, c: saved.append(c) if i == 1 else None))
    assert [c.step for c in saved] == [4]
    ckpt = Checkpoint.from_bytes(saved[0].to_bytes())
    (resumed,) = train_styles(engine_parts, [StyleSpec(a.images, "stripes", steps=6, seed=1, learning_rate=3e-3,
                                                       resume=ckpt)], replace(cfg, capacity=2))
    assert resumed.losses == straight.losses[4:]
    assert straight.adapter is not None and resumed.adapter is not None
    for k, v in straight.adapter.tensors.items():
        assert torch.equal(v, resumed.adapter.tensors[k]), k


def test_the_optimizer_state_follows_its_slot_through_repacks(engine_parts: AmusedParts) -> None:
    """Slot-addressed state (moments, learning rate, step count) is found at the slot's row after any repack,
    and a slot that is not routed is neither stepped nor moved out of its state."""
    bank = LoraBank(engine_parts.transformer, 3, trainable=True)
    try:
        opt = SlotAdamW(list(bank.parameters()), 4, views=bank.state_views, packing=bank.packing)
        for slot, lr in ((1, 1e-2), (2, 2e-2), (3, 3e-2)):
            bank.init_slot(slot, torch.Generator().manual_seed(slot), alpha=8.0)
            opt.reset_slot(slot, lr)
        g = torch.Generator().manual_seed(0)
        for route in ([1, 2, 3], [3, 1], [2, 3]):
            bank.set_rows(route)
            assert bank.master.shape[0] == len(route)  # the leaf: the routed rows only
            before = {s: [t.clone() for t in opt.slot_state(s)["exp_avg"]] for s in (1, 2, 3)}
            active = torch.zeros(4).index_fill_(0, torch.tensor(route), 1.0)
            opt.set_active(active, route)
            bank.master.grad = torch.randn(bank.master.shape, generator=g)
            grad = bank.site_views(bank.master.grad)[0][0].clone()  # first linear's A gradient, by batch row
            opt.step()
            for s in (1, 2, 3):
                after = opt.slot_state(s)["exp_avg"]
                if s in route:  # the first moment after a step is a convex mix towards this row's gradient
                    assert not torch.equal(after[0], before[s][0])
                    moved = after[0] - before[s][0] * 0.9
                    torch.testing.assert_close(moved, 0.1 * grad[route.index(s)])
                else:
                    assert all(torch.equal(x, y) for x, y in zip(after, before[s], strict=True))
        assert [float(opt.steps[bank.row_of(s)]) for s in (1, 2, 3)] == [2.0, 2.0, 3.0]
        assert [float(opt.lr[bank.row_of(s)]) for s in (1, 2, 3)] == pytest.approx([1e-2, 2e-2, 3e-2])
        assert bank.packing.repacks == 3
        bank.set_rows([2, 3])  # the same set: nothing moves
        assert bank.packing.repacks == 3
    finally:
        bank.remove()


def test_a_trainable_bank_refuses_routes_it_cannot_lay_out_by_row(engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 2, trainable=True)
    try:
        with pytest.raises(AdapterError, match=r"each slot to one batch row .*\[1, 2, 1\]"):
            bank.set_rows([1, 2, 1])
        with pytest.raises(AdapterError, match="list of slots"):
            bank.set_rows(torch.tensor([1, 2]))
        assert bank.packing.repacks == 0 and bank.rows is None  # nothing half-routed
    finally:
        bank.remove()


def _fake_bitsandbytes(calls: list[tuple[int, float, int]]) -> types.ModuleType:
    """bitsandbytes' 8-bit blockwise AdamW is a CUDA kernel: this stand-in records which lr and step count each
    call got and applies `p -= lr · g`, counting its calls in the codes and writing the step into absmax, so a
    test can see which row of each tensor every slot's call touched."""
    functional = types.ModuleType("bitsandbytes.functional")

    def update(_name: str, g: torch.Tensor, p: torch.Tensor, s1: torch.Tensor, _s2: torch.Tensor, *args: Any,
               **_kw: Any) -> None:
        step, lr, absmax1 = args[5], args[6], args[9]  # after beta1, beta2, 0, 0, eps
        calls.append((p.data_ptr(), lr, step))
        p.sub_(lr * g)
        s1.add_(1)
        absmax1.fill_(float(step))

    functional.optimizer_update_8bit_blockwise = update  # type: ignore[attr-defined]
    functional.create_dynamic_map = lambda signed=True: torch.zeros(256)  # type: ignore[attr-defined]
    package = types.ModuleType("bitsandbytes")
    package.functional = functional  # type: ignore[attr-defined]
    return package


def test_8bit_adamw_steps_each_slot_at_its_row_through_repacks(engine_parts: AmusedParts,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, float, int]] = []
    package = _fake_bitsandbytes(calls)
    monkeypatch.setitem(sys.modules, "bitsandbytes", package)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", package.functional)
    from trainer.optim8bit import SlotAdamW8bit

    bank = LoraBank(engine_parts.transformer, 3, trainable=True)
    try:
        opt = SlotAdamW8bit(list(bank.parameters()), 4, views=bank.state_views, packing=bank.packing)
        for slot, lr in ((1, 1.0), (2, 2.0), (3, 3.0)):
            opt.reset_slot(slot, lr)
        for route in ([1, 2, 3], [3, 1]):
            bank.set_rows(route)
            opt.set_active(torch.zeros(4), route)
            bank.master.grad = torch.ones(bank.master.shape)
            before = {s: bank.store.storage[bank.row_of(s)].clone() for s in (1, 2, 3)}  # type: ignore[union-attr]
            calls.clear()
            opt.step()
            assert sorted(lr for _, lr, _ in calls) == sorted(float(s) for s in route)
            for s in (1, 2, 3):
                now = bank.store.storage[bank.row_of(s)]  # type: ignore[union-attr]
                want = before[s] - (float(s) if s in route else 0.0)  # its own lr, at its own row, or untouched
                assert torch.equal(now, want), s
        state = {s: opt.slot_state(s) for s in (1, 2, 3)}
        assert [int(state[s]["state1"][0].flatten()[0]) for s in (1, 2, 3)] == [2, 1, 2]  # calls per slot
        assert [float(state[s]["absmax1"][0][0]) for s in (1, 2, 3)] == [2.0, 1.0, 2.0]  # its own step count
    finally:
        bank.remove()
