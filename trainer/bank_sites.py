"""The per-layer half of the LoRA bank: which linears it targets, and the forward hook that adds their LoRA terms.

Each targeted linear gets one `BankSite`, a forward hook reading the bank's per-row slot indices. Rows
`start .. start + m` of the batch are routed (`LoraBank.set_rows(slots, start=...)`); rows before `start` are
base rows and cost nothing. The sampler puts its adapted rows last, so only they pay for LoRA.
- Serving banks gather each DISTINCT routed adapter's A and scale·B once per route into static buffers (`at`,
  `bt`: memory per adapter, not per row), and each forward picks every row's pair from them and applies it:
  four ops per layer (two `index_select`, `bmm`, in-place `baddbmm_`) whatever the mix of adapters (Punica's
  BGMV form, arXiv 2310.18547, written as gather + batched matmul).
- Trainable banks use `bank_train.TrainSite` instead: one flat master, taken once per forward for every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .lora import TARGET_MODULES, AdapterError

if TYPE_CHECKING:
    from .bank import LoraBank


def target_linears(transformer: nn.Module, targets: Sequence[str] = TARGET_MODULES) -> dict[str, nn.Linear]:
    """The linears a StyleDrop adapter targets, keyed by the module path used in adapter files.

    A linear already wrapped by peft (`<path>.base_layer`) is keyed by the wrapper's path, as peft names it.
    """
    found: dict[str, nn.Linear] = {}
    for name, module in transformer.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        path = name.removesuffix(".base_layer")
        if path.rpartition(".")[2] in targets:
            found[path] = module
    return found


def slot_bytes(transformer: nn.Module, rank: int = 16, dtype: torch.dtype = torch.bfloat16,
               targets: Sequence[str] = TARGET_MODULES) -> int:
    """Bytes one bank slot takes: r·(in + out) per targeted linear (≈10 MB in bf16 on amused-256 at rank 16)."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(rank * (m.in_features + m.out_features) for m in target_linears(transformer, targets).values()) * size


def default_capacity(transformer: nn.Module, *, rank: int = 16, share: float = 0.1, cpu_slots: int = 16,
                     most: int = 1024) -> int:
    """Bank slots for `share` of the CUDA device's free memory (slots are sized by memory, not module count), or
    `cpu_slots` on a CPU, whose memory the host shares with everything else."""
    weight = next(transformer.parameters())
    if weight.device.type != "cuda":
        return cpu_slots
    free, _total = torch.cuda.mem_get_info(weight.device)
    return max(1, min(most, int(free * share) // slot_bytes(transformer, rank, weight.dtype)))


class BankSite:
    """The forward hook of one targeted linear: adds the routed rows' LoRA terms to its output."""

    def __init__(self, bank: LoraBank, a: torch.Tensor, b: torch.Tensor) -> None:
        self.bank = bank
        self.a = a  # [S, r, in]
        self.b = b  # [S, out, r]
        self.at: torch.Tensor | None = None  # [D, in, r] the route's distinct slots' A (serving banks)
        self.bt: torch.Tensor | None = None  # [D, r, out], the slot's scale folded in

    def gather(self, distinct: torch.Tensor, slot_scale: torch.Tensor) -> bool:
        """Fill the static buffers with the `distinct` (D,) slots' weights, B scaled by `slot_scale` (D, 1, 1).

        No host read. The buffers only grow (a captured graph holds their addresses): True when they were
        reallocated. Their size is the most distinct adapters a route has had, never the number of rows.
        """
        d = distinct.shape[0]
        grown = self.at is None or self.at.shape[0] < d or self.at.dtype != self.a.dtype
        if grown:
            self.at = self.a.new_zeros(max(d, 1), self.a.shape[2], self.a.shape[1])
            self.bt = self.b.new_zeros(max(d, 1), self.b.shape[2], self.b.shape[1])
        assert self.at is not None and self.bt is not None
        at, bt = self.at[:d], self.bt[:d]
        at.copy_(self.a.index_select(0, distinct).transpose(1, 2))  # (D, r, in) -> (D, in, r)
        torch.mul(self.b.index_select(0, distinct).transpose(1, 2), slot_scale, out=bt)  # (D, out, r) -> (D, r, out)
        return grown

    def __call__(self, _module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        bank = self.bank
        rows = bank.rows
        if rows is None or rows.shape[0] == 0:
            return None  # no route, or no routed row: the base model
        x = args[0]
        start, m = bank.start, rows.shape[0]  # routed rows: start .. start + m
        if x.shape[0] != start + m:
            raise AdapterError(f"the batch has {x.shape[0]} rows but the bank routes {start} + {m}")
        self._serve(x, out, start, m)
        return None

    def _serve(self, x: torch.Tensor, out: torch.Tensor, start: int, m: int) -> None:
        """Serving: each routed row's A and scale·B picked from the distinct set (a transient, one layer at a
        time), then `out += (x @ A) @ (scale·B)` in place."""
        index = self.bank.row_index
        assert self.at is not None and self.bt is not None and index is not None
        at = self.at.index_select(0, index)  # (m, in, r)
        bt = self.bt.index_select(0, index)  # (m, r, out)
        o = out
        if start:
            x, o = x[start:], o[start:]  # the routed rows: a view, written in place below
        if x.dim() != 3:
            x = x.reshape(m, -1, x.shape[-1])  # (m, ..., in) -> (m, L, in)
            o = o.view(m, -1, o.shape[-1])  # (m, ..., out) -> (m, L, out), the same storage
        if x.dtype != at.dtype:
            x = x.to(at.dtype)
        h = torch.bmm(x, at)  # (m, L, r)
        if o.dtype == h.dtype:
            o.baddbmm_(h, bt)  # out += h @ (scale·B)ᵀ in place: (m, L, out)
        else:
            o.add_(torch.bmm(h, bt).to(o.dtype))
