"""AdamW over a LoRA bank: one update for every style in the batch, each slot with its own lr and step count.

A trainable bank keeps every layer's A and B of every slot in ONE flat `[slots, P]` buffer laid out by batch row
(trainer/bank_train.py): its leaf is the (n, P) view of the n routed rows, so one element-wise AdamW over it —
about 25 ops in all — updates every layer of every style at once: the number of operations grows neither with the
number of styles nor with the number of layers. Given the bank's `RowPacking`, this optimizer lays its own state
out the same way (moments, learning rates, step counts, active flags: `[slots, ...]` tensors the packing reorders
with the bank's, only when the set of styles changes), steps rows 0..n-1 as they lie — no gather, no scatter — and
maps a slot to its row for the per-slot calls. Any slot-first stacks work too (no packing: row = slot, one set of
element-wise ops per tensor). `views` maps a slot-first tensor to the
per-layer views a checkpoint stores, so checkpoints keep the per-layer layout (trainer/checkpoint.py). Per-slot
values (learning rate, step count, "is this slot training now") are small device tensors broadcast over the slot
dimension, so the step reads nothing back to the host and can be captured.

Slot independence (the point of it): a slot whose `active` flag is 0 is left bit-for-bit as it is — no moment
decay, no weight decay (every change is multiplied by the flag, and x·0 adds exactly 0 to finite values) — and
nothing is shared across slots (no global gradient norm, no global inf check), so a style trained in a batch
follows the same arithmetic as the same style trained alone. `torch.optim.AdamW`'s update is reproduced
exactly: decoupled weight decay `p·(1 − lr·wd)`, then `p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)`.

With fp16 mixed precision a `GradScaler` hands this optimizer its scale (`_step_supports_amp_scaling`): the
gradients are unscaled here, and a slot whose gradients are not finite skips its step alone.

Capturable: the learning rates, step counts and active flags are device tensors updated in place, and `step`
makes no host decision from device values, so a CUDA graph of the whole training step (trainer/train_step.py)
replays it as is — what torch's `AdamW(capturable=True)` offers, per slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .bank_train import RowPacking, head


class SlotAdamW(torch.optim.Optimizer):
    _step_supports_amp_scaling = True  # GradScaler sets .grad_scale / .found_inf instead of syncing to check

    def __init__(self, params: Sequence[torch.Tensor], num_slots: int, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                 packing: RowPacking | None = None) -> None:
        params = list(params)
        check_stacked(params, num_slots, packing)
        super().__init__(params, {"betas": betas, "eps": eps, "weight_decay": weight_decay})
        device = params[0].device
        self.num_slots = num_slots
        self.packing = packing  # the bank's row layout; None: row = slot
        self.views = views or (lambda t: [t])  # slot-first state -> the per-layer views a checkpoint stores
        # Per slot, by row (`row`): learning rate, step count (float: it goes into pow), 1.0 = takes the next step.
        self.lr = torch.zeros(num_slots, device=device)
        self.steps = torch.zeros(num_slots, device=device)
        self.active = torch.zeros(num_slots, device=device)
        for p in params:
            self.state[p] = {"exp_avg": p.new_zeros(num_slots, *p.shape[1:], dtype=torch.float32),
                             "exp_avg_sq": p.new_zeros(num_slots, *p.shape[1:], dtype=torch.float32)}
        if packing is not None:
            packing.adopt(self.lr, self.steps, self.active, *(t for p in params for t in self.state[p].values()))

    @property
    def params(self) -> list[torch.Tensor]:
        return list(self.param_groups[0]["params"])

    def row(self, slot: int) -> int:
        """Where `slot`'s state lies in every [slots, ...] tensor of this optimizer."""
        return slot if self.packing is None else self.packing.row(slot)

    # --- per-slot control (host-side decisions, device-side values) -----------------------------------------------

    @torch.no_grad()
    def reset_slot(self, slot: int, lr: float, step: int = 0) -> None:
        """Fresh moments for `slot`, its learning rate and step count (a new or resumed style takes the slot)."""
        row = self.row(slot)
        for p in self.params:
            self.state[p]["exp_avg"][row].zero_()
            self.state[p]["exp_avg_sq"][row].zero_()
        self.lr[row] = lr
        self._set_step(slot, step)

    def _set_step(self, slot: int, step: int) -> None:
        self.steps[self.row(slot)] = float(step)

    def set_active(self, active: torch.Tensor, slots: Sequence[int] = ()) -> None:
        """`active`: (slots,) 0/1 float on the device in SLOT order, which slots the next `step` updates (`slots`,
        the same on the host, is for optimizers that launch per slot). Set after the route (its row layout)."""
        if self.packing is not None:
            active = active[self.packing.order]  # slot order -> row order, once per set of styles
        self.active.copy_(active)

    def slot_state(self, slot: int) -> dict[str, list[torch.Tensor]]:
        """The slot's optimizer state by name, one tensor per layer's A or B (views into the stacked state): what a
        checkpoint stores. Here the fp32 first and second moments."""
        row = self.row(slot)
        return {name: [v[row] for p in self.params for v in self.views(self.state[p][name])]
                for name in ("exp_avg", "exp_avg_sq")}

    @torch.no_grad()
    def load_slot_state(self, slot: int, state: dict[str, list[torch.Tensor]], step: int) -> None:
        """Put a checkpoint's `slot_state` back, with the slot's step count."""
        for name, views in self.slot_state(slot).items():
            for dst, src in zip(views, state[name], strict=True):
                dst.copy_(src)
        self._set_step(slot, step)

    @torch.no_grad()
    def clip_slots_(self, max_norm: float) -> None:
        """Clip each slot's gradient to `max_norm` on its own (torch.nn.utils.clip_grad_norm_ per style, never
        one norm across styles, which would couple them)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        sq = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # (params, slots) -> (slots,)
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # (slots,)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))  # (slots,) -> (slots, 1, ...)

    # --- the step ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        n = params[0].shape[0]  # the rows being trained: every slot, or a bank's routed rows (rows 0..n-1)
        lr, steps, m = head(self.lr, n), head(self.steps, n), head(self.active, n)
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:  # fp16, not unscaled yet: unscale here
            inv = grad_scale.double().reciprocal().float()
            grads = [g.float() * inv for g in grads]
        if getattr(self, "found_inf", None) is not None:  # fp16: a slot with an inf/nan gradient skips alone
            finite = torch.stack([g.isfinite().flatten(1).all(1) for g in grads]).all(0)  # (params, slots) -> (slots,)
            m = m * finite
            grads = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
        steps.add_(m)
        t = steps.clamp(min=1.0)  # slots that never stepped have m = 0 below; avoid 0/0 in their factors
        bias1 = 1 - beta1**t
        bias2_sqrt = (1 - beta2**t).sqrt()
        decay = 1 - lr * wd * m  # (n,) each
        step_size = lr * m / bias1
        w1 = (1 - beta1) * m
        w2 = (1 - beta2) * m
        keep2 = 1 - w2
        denom_scale = bias2_sqrt
        for p, g in zip(params, grads, strict=True):
            shape = (n, *[1] * (p.dim() - 1))  # (n,) -> (n, 1, ...): over each [n, ...]
            st = self.state[p]
            exp_avg, exp_avg_sq = head(st["exp_avg"], n), head(st["exp_avg_sq"], n)
            g = g.float()
            p.mul_(decay.view(shape))
            exp_avg.lerp_(g, w1.view(shape))
            exp_avg_sq.mul_(keep2.view(shape)).addcmul_(g * w2.view(shape), g)
            denom = (exp_avg_sq.sqrt() / denom_scale.view(shape)).add_(eps)
            p.addcdiv_(exp_avg * step_size.view(shape), denom, value=-1.0)

    # --- checkpoints: the per-slot tensors travel with each style's checkpoint, not through state_dict ---------------

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("SlotAdamW state is checkpointed per slot (trainer.checkpoint)")


def check_stacked(params: list[torch.Tensor], num_slots: int, packing: RowPacking | None) -> None:
    """Each parameter holds every slot (no packing) or a bank's routed rows (with its packing)."""
    rows = num_slots if packing is None else packing.rows
    if not params or any(p.shape[0] != rows for p in params):
        raise ValueError(f"every parameter must be stacked with {rows} rows first (slots: {num_slots})")
    if packing is not None and len(packing.order) != num_slots:
        raise ValueError(f"the packing lays out {len(packing.order)} slots, not {num_slots}")
