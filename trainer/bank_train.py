"""The trainable half of the LoRA bank: every slot's weights in one flat fp32 buffer, fused Q/K/V low-rank maths.

Storage (`FlatLayout`): one `[slots, P]` fp32 buffer holds every targeted linear's A and B for every slot, so the
optimizer updates all of them with a handful of element-wise ops whatever the number of layers (trainer/optim.py),
and a checkpoint or an adapter file reads per-module views of it (`FlatLayout.views`: A (r, in), B (out, r) as in
the files — split on extract, joined on load, by views, without copies).

Within the buffer the linears of one attention that read the same input share one A block stored transposed,
`(in, k·r)`: q, k and v of a self-attention (k = 3), k and v of a cross-attention (k = 2), q of a cross-attention
alone (k = 1). So one `bmm` computes all k low-rank projections of that input (`x @ [A_q; A_k; A_v]ᵀ`), and each
B is stored transposed too, `(r, out)`, so that every matmul's weight gradient comes out in storage order and the
backward writes no transposed copies.

Rows, not slots (`RowPacking`): the buffer's physical rows hold the slots in an order of their own, the slots
routed to the batch first, in batch-row order. So rows 0..n-1 of the storage ARE this batch's n rows: the trainable
leaf `master` is that (n, P) view, the forward reads it as it lies and the backward's gradient lands in it, with no
gather in the forward nor scatter in the backward. Everything else laid out like it — the optimizer's moments and
its per-slot learning rates, step counts and active flags (trainer/optim.py, trainer/optim8bit.py) — is packed the
same way, so the optimizer steps rows 0..n-1 too. The rows are reordered (`RowPacking.pack`: one permutation of
every packed tensor) only when the set of routed slots changes — a style joins, finishes, is cancelled or fails —
never per step. Slot-addressed access (loading, extracting, checkpoints) goes through `RowPacking.row`.

Per forward (`TrainableStore.prepare`, the model's forward pre-hook) the batch's weights are read once for all
layers — α/r folded into the B columns by one multiply, one cast to the model's dtype (bf16 LoRA maths on a bf16
base, fp32 master) — and split into per-group views; the backward is the reverse: one `cat` of every layer's
gradient, one cast, one multiply, straight into the leaf's gradient. Each targeted linear then costs its share of
one `bmm` (A) and one `baddbmm` (B, added into the base output in the same kernel): 4 kernels per self-attention
instead of 15 (LoRA: arXiv 2106.09685; batched per-row adapters: Punica, arXiv 2310.18547).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .lora import AdapterError


@dataclass(frozen=True)
class _Group:
    """Linears of one attention reading the same input: their A's as one (in, k·r) block at `a_piece`."""

    members: tuple[int, ...]  # site indices (into the bank's keys), in block column order
    in_features: int
    a_piece: int  # index of the A block among the layout's pieces


class FlatLayout:
    """Where each targeted linear's A and B live in a flat `[slots, P]` buffer, as pieces of one `split`."""

    def __init__(self, transformer: nn.Module, linears: dict[str, nn.Linear], rank: int) -> None:
        keys = list(linears)
        by_parent: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_parent.setdefault(key.rpartition(".")[0], []).append(i)
        self.rank = rank
        self.sizes: list[int] = []  # piece widths, in buffer order
        self.groups: list[_Group] = []
        self.group_of: list[tuple[int, int]] = [(0, 0)] * len(keys)  # site -> (group, column)
        self.b_piece: list[int] = [0] * len(keys)  # site -> index of its (r, out) B piece
        self.out_features = [m.out_features for m in linears.values()]
        self.in_features = [m.in_features for m in linears.values()]
        for parent, sites in by_parent.items():
            for members in _input_groups(transformer, parent, [keys[i] for i in sites], sites, self.in_features):
                g = len(self.groups)
                self.groups.append(_Group(tuple(members), self.in_features[members[0]], len(self.sizes)))
                self.sizes.append(self.in_features[members[0]] * rank * len(members))
                for col, site in enumerate(members):
                    self.group_of[site] = (g, col)
                for site in members:
                    self.b_piece[site] = len(self.sizes)
                    self.sizes.append(rank * self.out_features[site])
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.width = sum(self.sizes)
        # Where the B columns are (the α/r scale applies to them only): (P,) bool.
        b_cols = torch.zeros(self.width, dtype=torch.bool)
        for piece in self.b_piece:
            b_cols[self.offsets[piece]:self.offsets[piece] + self.sizes[piece]] = True
        self.b_cols = b_cols

    def views(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-site views of any `[slots, P]` tensor laid out like the master (weights, moments, gradients):
        A as (slots, r, in) and B as (slots, out, r), the adapter files' orientation, in site order."""
        s, r = flat.shape[0], self.rank
        a_views, b_views = [], []
        for site in range(len(self.in_features)):
            g, col = self.group_of[site]
            group = self.groups[g]
            off = self.offsets[group.a_piece]
            block = flat[:, off:off + self.sizes[group.a_piece]].view(s, group.in_features, len(group.members) * r)
            a_views.append(block[:, :, col * r:(col + 1) * r].transpose(1, 2))  # (s, in, r) -> (s, r, in)
            off = self.offsets[self.b_piece[site]]
            bt = flat[:, off:off + self.sizes[self.b_piece[site]]].view(s, r, self.out_features[site])
            b_views.append(bt.transpose(1, 2))  # (s, r, out) -> (s, out, r)
        return a_views, b_views


def _input_groups(transformer: nn.Module, parent: str, keys: list[str], sites: list[int],
                  in_features: list[int]) -> list[list[int]]:
    """Partition one module's targeted linears by the input they read: all of q, k, v for a self-attention
    (diffusers' `Attention.is_cross_attention` is False), k with v for a cross-attention; same widths only."""
    names = {key.rpartition(".")[2]: site for key, site in zip(keys, sites, strict=True)}
    try:
        attn = transformer.get_submodule(parent)
    except AttributeError:
        attn = None
    cross = getattr(attn, "is_cross_attention", True)
    together = ("to_q", "to_k", "to_v") if not cross else ("to_k", "to_v")
    joint = [names[n] for n in together if n in names]
    if len(joint) < 2 or len({in_features[s] for s in joint}) != 1:
        joint = []
    groups = [joint] if joint else []
    groups += [[s] for s in sites if s not in joint]
    return sorted(groups, key=lambda g: g[0])


class RowPacking:
    """Which slot each physical row of the trainable bank's `[slots, ...]` tensors holds: the routed slots first,
    in batch-row order (see the module docstring). Every tensor `adopt`ed here is reordered with the others."""

    def __init__(self, slots: int) -> None:
        self.order = list(range(slots))  # physical row -> the slot it holds
        self.rows = 0  # physical rows 0..rows-1 are the batch's rows, in batch order
        self.repacks = 0  # layout changes so far: one per change of the set of routed slots
        self.tensors: list[torch.Tensor] = []  # every [slots, ...] tensor laid out by these rows

    def adopt(self, *tensors: torch.Tensor) -> None:
        """Lay `tensors` ([slots, ...], in the current physical order) out with the others from now on."""
        self.tensors.extend(tensors)

    def row(self, slot: int) -> int:
        """The physical row holding `slot`."""
        return self.order.index(slot)

    @torch.no_grad()
    def pack(self, route: list[int]) -> bool:
        """Put the (distinct) slots of `route` in rows 0..len(route)-1, in its order; False when they already are.

        The other slots keep their relative order behind them. Only the rows up to the last one whose slot
        changes move: one gather and one copy of them per adopted tensor, in place (a captured graph keeps the
        addresses) — the price of a set change, paid once per change. A style leaving from the end moves nothing.
        """
        if self.rows == len(route) and self.order[:len(route)] == route:
            return False
        routed = set(route)
        order = route + [s for s in self.order if s not in routed]
        moved = len(order)
        while moved and order[moved - 1] == self.order[moved - 1]:
            moved -= 1  # from row `moved` on, every row keeps its slot: those rows stay where they are
        if moved and self.tensors:
            index = torch.tensor([self.row(s) for s in order[:moved]], device=self.tensors[0].device)
            for t in self.tensors:
                t[:moved].copy_(t.index_select(0, index))  # (moved, ...): new row -> its slot's old row
        self.order, self.rows = order, len(route)
        self.repacks += 1
        return True


def head(t: torch.Tensor, n: int) -> torch.Tensor:
    """Rows 0..n-1 of a packed tensor: the batch's rows (the tensor itself when it has no others: no view op)."""
    return t if t.shape[0] == n else t[:n]


class TrainableStore:
    """The trainable bank's storage, laid out by batch row, and this forward's view of it (module docstring).

    `storage` ([slots, P] fp32) holds every slot, physical rows in `packing.order`; `master` is the one leaf the
    optimizer steps: the (n, P) view of the routed rows. `pack(route)` lays a new set of routed slots out;
    `prepare(dtype)` builds this forward's pieces.
    """

    def __init__(self, layout: FlatLayout, slots: int, device: torch.device) -> None:
        self.layout = layout
        self.packing = RowPacking(slots)
        self.storage = torch.zeros(slots, layout.width, device=device)
        self.packing.adopt(self.storage)
        # The leaf is a view of the storage's first rows: the same Parameter object for the whole run (the
        # optimizer and autograd hold it), its `.data` re-pointed when the set of rows changes.
        self.master = nn.Parameter(self.storage[:0])
        self.b_cols = layout.b_cols.to(device)
        self.col_scale: torch.Tensor | None = None  # (n, P): each routed row's α/r on its B columns, 1 elsewhere
        self.pieces: tuple[torch.Tensor, ...] | None = None  # this forward's (n, piece) views
        self.sites = [TrainSite(self, i) for i in range(len(layout.in_features))]
        self._cache: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None] = [None] * len(layout.groups)

    def pack(self, route: list[int]) -> bool:
        """Rows 0..n-1 become the slots of `route` (distinct); the leaf is their (n, P) view. False: unchanged."""
        if not self.packing.pack(route):
            return False
        self.master.data = self.storage[:len(route)]
        self.master.grad = None  # a gradient of the old rows means nothing in the new ones
        return True

    def route(self, row_scale: torch.Tensor | None) -> None:
        """New routed rows, `row_scale` (n,) their α/r (None: no route); built once per route, not per step."""
        self.col_scale = None if row_scale is None else torch.where(
            self.b_cols, row_scale[:, None], torch.ones((), device=row_scale.device))  # (n,) -> (n, P)

    def prepare(self, dtype: torch.dtype) -> None:
        """This forward's weights: the routed rows as they lie, one scale and one cast for every layer at once."""
        self._cache = [None] * len(self._cache)
        if self.col_scale is None:
            self.pieces = None
            return
        w = self.master * self.col_scale  # (n, P), α/r folded into B
        if w.dtype != dtype:
            w = w.to(dtype)  # LoRA maths in the model's dtype against the fp32 master
        self.pieces = w.split(self.layout.sizes, dim=1)

    def release(self) -> None:
        """Forget this forward's pieces and cached projections, so nothing outlives the step but autograd's."""
        self.pieces = None
        self._cache = [None] * len(self._cache)

    def project(self, group: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(n, L, r) low-rank projections of `x` (n, L, in) for every member of `group`, from one bmm; cached per
        input object, so q, k and v reading the same tensor share it."""
        cached = self._cache[group]
        if cached is not None and cached[0] is x:
            return cached[1]
        assert self.pieces is not None
        g = self.layout.groups[group]
        n, r = x.shape[0], self.layout.rank
        at = self.pieces[g.a_piece].view(n, g.in_features, len(g.members) * r)  # (n, P_a) -> (n, in, k·r)
        x3 = x if x.dim() == 3 else x.reshape(n, -1, x.shape[-1])  # (n, ..., in) -> (n, L, in)
        if x3.dtype != at.dtype and not torch.is_autocast_enabled(x3.device.type):
            x3 = x3.to(at.dtype)
        h = torch.bmm(x3, at)  # (n, L, k·r)
        hs = h.split(r, dim=2) if len(g.members) > 1 else (h,)
        self._cache[group] = (x, hs)
        return hs


class TrainSite:
    """Forward hook of one targeted linear on a trainable bank: out + (x Aᵀ)(α/r · B)ᵀ for every routed row."""

    def __init__(self, store: TrainableStore, site: int) -> None:
        self.store, self.site = store, site

    def __call__(self, _module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        store = self.store
        if store.pieces is None:
            return None
        x = args[0]
        n = store.pieces[0].shape[0]
        if x.shape[0] != n:
            raise AdapterError(f"the batch has {x.shape[0]} rows but the bank routes {n}")
        layout = store.layout
        group, col = layout.group_of[self.site]
        h = store.project(group, x)[col]  # (n, L, r)
        bt = store.pieces[layout.b_piece[self.site]].view(n, layout.rank, layout.out_features[self.site])
        if out.dim() == 3 and out.dtype == h.dtype:
            return torch.baddbmm(out, h, bt)  # out + h @ (α/r·B)ᵀ in one kernel: (n, L, out)
        delta = torch.bmm(h, bt)  # (n, L, out)
        return out + delta.reshape(out.shape).to(out.dtype)  # (n, L, out) -> out's shape
