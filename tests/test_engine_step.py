"""The GPU-shaped training step, proven on CPU: the per-slot AdamW equals torch's AdamW slot by slot, and a step
between progress intervals reads nothing back to the host, with an op count that does not grow with the styles."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainer.capture import OpCounter
from trainer.model import AmusedParts
from trainer.optim import SlotAdamW
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, train_styles


def test_slot_adamw_equals_torch_adamw_per_slot_and_leaves_idle_slots_alone() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 5), (4, 6, 3)]  # [slots, ...], slot 0 unused as in the bank
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    opt = SlotAdamW(params, 4, weight_decay=0.05)
    lrs = {1: 1e-2, 2: 3e-3, 3: 5e-2}
    refs = {s: [torch.nn.Parameter(p.detach()[s].clone()) for p in params] for s in lrs}
    ref_opts = {s: torch.optim.AdamW(refs[s], lr=lr, weight_decay=0.05) for s, lr in lrs.items()}
    for s, lr in lrs.items():
        opt.reset_slot(s, lr)
    for step in range(6):
        live = [1, 2, 3] if step < 3 else [1, 3]  # slot 2 leaves after 3 steps
        opt.set_active(torch.tensor([1.0 if s in live else 0.0 for s in range(4)]))
        frozen = [p.detach()[2].clone() for p in params] + [opt.state[p]["exp_avg"][2].clone() for p in params]
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, gr in zip(params, grads, strict=True):
            p.grad = gr.clone()
            p.grad[[s for s in range(4) if s not in live]] = 0  # as the bank's routing gives
        opt.step()
        for s in live:
            for ref, gr in zip(refs[s], grads, strict=True):
                ref.grad = gr[s].clone()
            ref_opts[s].step()
        if 2 not in live:  # an idle slot is left bit-for-bit: no moment decay, no weight decay
            after = [p.detach()[2] for p in params] + [opt.state[p]["exp_avg"][2] for p in params]
            assert all(torch.equal(a, b) for a, b in zip(frozen, after, strict=True))
    for s in lrs:
        for p, ref in zip(params, refs[s], strict=True):
            torch.testing.assert_close(p.detach()[s], ref.detach(), atol=1e-6, rtol=1e-5)
    assert opt.steps.tolist() == [0.0, 6.0, 3.0, 6.0]
    assert torch.equal(params[0].detach()[0], torch.randn(shapes[0], generator=torch.Generator().manual_seed(0))[0])


def test_per_slot_clipping_equals_clip_grad_norm_per_style() -> None:
    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.zeros(3, 4, 5)), torch.nn.Parameter(torch.zeros(3, 2, 4))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 10
    want = {s: [p.grad[s].clone() for p in params] for s in (1, 2)}
    for s in (1, 2):
        ref = [torch.nn.Parameter(torch.zeros_like(t)) for t in want[s]]
        for r, t in zip(ref, want[s], strict=True):
            r.grad = t.clone()
        torch.nn.utils.clip_grad_norm_(ref, 1.0)
        want[s] = [r.grad for r in ref if r.grad is not None]
    SlotAdamW(params, 3).clip_slots_(1.0)
    for s in (1, 2):
        for p, w in zip(params, want[s], strict=True):
            torch.testing.assert_close(p.grad[s], w)


def _count_between_reports(parts: AmusedParts, images: list, n_styles: int) -> tuple[list[int], list[int]]:
    """Train n styles for 9 steps, reporting every 4; per interval (steps 5..8): host reads and aten ops."""
    counter = OpCounter()
    marks: list[tuple[int, int]] = []

    def on_progress(i: int, p: Progress) -> None:
        if i == 0:
            marks.append((counter.ops, counter.host_reads))

    specs = [StyleSpec(images, f"style {k}", steps=9, seed=k, learning_rate=1e-3) for k in range(n_styles)]
    with counter:
        train_styles(parts, specs, TrainConfig(progress_every=4), Callbacks(on_progress=on_progress))
    assert len(marks) == 3  # steps 4, 8, 9
    (ops4, reads4), (ops8, reads8), _ = marks
    return [ops8 - ops4], [reads8 - reads4]


@pytest.mark.parametrize("n_styles", [1, 4])
def test_no_host_reads_between_progress_intervals(engine_parts: AmusedParts, engine_style_image: Any,
                                                  n_styles: int) -> None:
    _, reads = _count_between_reports(engine_parts, [engine_style_image], n_styles)
    # four steps (5..8) and the one read-back of their losses at step 8: nothing else reaches the host
    assert reads == [1]


def test_ops_per_step_do_not_grow_with_the_styles(engine_parts: AmusedParts, engine_style_image: Any) -> None:
    (one,), _ = _count_between_reports(engine_parts, [engine_style_image], 1)
    (eight,), _ = _count_between_reports(engine_parts, [engine_style_image], 8)
    # per step per style: one generator draw (the rest is batched); the bar is 1.2x at 16 styles
    assert eight <= one * 1.1, (one, eight)
