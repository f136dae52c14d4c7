"""8-bit AdamW over a LoRA bank (bitsandbytes, CUDA only): each style's moments quantised in its own blocks.

bitsandbytes' AdamW8bit keeps each moment as uint8 codes of a dynamic quantisation map plus one fp32 absmax per
block of 256 values, and its kernel updates one tensor with one learning rate and one step count. Run over the
bank's slot-first stacks as is, it would couple the styles: one step count and learning rate for all, moment decay
and weight decay on slots that are not training, and blocks that could span two slots. So the update runs per slot:
bitsandbytes' `optimizer_update_8bit_blockwise` on each active slot's contiguous slice of every stacked parameter,
with that slot's own learning rate, step count, codes and absmax blocks (a slice starts its own blocks). Idle slots
are not touched. Over a trainable bank's one flat `[slots, P]` buffer (trainer/bank_train.py) that is ONE kernel per
active slot per step, whatever the number of layers, on the slot's row of the leaf as it lies (the codes and absmax
blocks are laid out by the bank's rows like the weights, reordered with them when the set of styles changes); the
blocks run over the flat layout, so a checkpoint stores each slot's absmax as one tensor (format 3: an 8-bit
checkpoint of format 2, whose blocks were per layer, is refused by trainer/checkpoint.py). The step counts and
learning rates are host numbers, known without reading anything back.

The price: one kernel per (active slot, parameter) instead of SlotAdamW's fixed count, for 2 bytes of optimizer
state per LoRA weight instead of 8; and the host-number step counts mean a CUDA graph cannot capture it
(train.py refuses that combination, and fp16, whose per-slot overflow skip this kernel cannot do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .bank_train import RowPacking
from .optim import SlotAdamW, check_stacked

BLOCK = 256  # bitsandbytes' blockwise 8-bit optimizer block size (values per absmax)


class SlotAdamW8bit(SlotAdamW):
    _step_supports_amp_scaling = False

    def __init__(self, params: Sequence[torch.Tensor], num_slots: int, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                 packing: RowPacking | None = None) -> None:
        try:
            import bitsandbytes.functional as bnbf
        except ImportError as exc:  # an optional dependency: the `gpu` extra
            raise ValueError("optimizer 'adamw8bit' needs bitsandbytes (pip install 'styledrop[gpu]')") from exc
        params = list(params)
        check_stacked(params, num_slots, packing)
        if any(p.dtype != torch.float32 for p in params):
            raise ValueError("8-bit AdamW updates fp32 LoRA weights (the bank's trainable dtype)")
        torch.optim.Optimizer.__init__(self, params, {"betas": betas, "eps": eps, "weight_decay": weight_decay})
        device = params[0].device
        self.num_slots = num_slots
        self.packing = packing
        self.views = views or (lambda t: [t])
        self._update = bnbf.optimizer_update_8bit_blockwise
        self.qmap1 = bnbf.create_dynamic_map(signed=True).to(device)  # first moment: signed
        self.qmap2 = bnbf.create_dynamic_map(signed=False).to(device)  # second moment: non-negative
        self.lrs = [0.0] * num_slots  # by slot, on the host (the kernel takes numbers)
        self.slot_steps = [0] * num_slots
        self.active_slots: list[int] = []
        for p in params:
            blocks = -(-math.prod(p.shape[1:]) // BLOCK)  # per slot: a slot's slice never shares a block with another's
            self.state[p] = {  # by row (`row`), like the weights
                "state1": p.new_zeros(num_slots, *p.shape[1:], dtype=torch.uint8),
                "state2": p.new_zeros(num_slots, *p.shape[1:], dtype=torch.uint8),
                "absmax1": torch.zeros(num_slots, blocks, device=device),
                "absmax2": torch.zeros(num_slots, blocks, device=device),
            }
        if packing is not None:
            packing.adopt(*(t for p in params for t in self.state[p].values()))

    @torch.no_grad()
    def reset_slot(self, slot: int, lr: float, step: int = 0) -> None:
        row = self.row(slot)
        for p in self.params:
            for t in self.state[p].values():
                t[row].zero_()
        self.lrs[slot] = lr
        self._set_step(slot, step)

    def _set_step(self, slot: int, step: int) -> None:
        self.slot_steps[slot] = step  # on the host: bitsandbytes' kernel takes the step as a number

    def set_active(self, active: torch.Tensor, slots: Sequence[int] = ()) -> None:
        self.active_slots = sorted(slots)

    def slot_state(self, slot: int) -> dict[str, list[torch.Tensor]]:
        """uint8 codes of both moments, one tensor per layer's A or B (views, element for element like the
        weights), and their per-block fp32 absmax, one tensor per parameter (blocks run over the flat layout)."""
        ps, row = self.params, self.row(slot)
        state = {name: [v[row] for p in ps for v in self.views(self.state[p][name])] for name in ("state1", "state2")}
        state.update({name: [self.state[p][name][row] for p in ps] for name in ("absmax1", "absmax2")})
        return state

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        for slot in self.active_slots:
            self.slot_steps[slot] += 1
            row = self.row(slot)  # its row of the leaf, its gradient and its state (a routed slot: row < n)
            for p in params:
                st = self.state[p]
                self._update("adam", p.grad[row], p.detach()[row], st["state1"][row], st["state2"][row],
                             beta1, beta2, 0.0, 0.0, eps, self.slot_steps[slot], self.lrs[slot], self.qmap1,
                             self.qmap2, st["absmax1"][row], st["absmax2"][row], weight_decay=wd,
                             gnorm_scale=1.0, skip_zeros=False)
