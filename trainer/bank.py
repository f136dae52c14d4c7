"""A LoRA bank: many adapters resident at once, applied per batch row with a fixed number of ops per layer.

Per targeted linear (to_q/to_k/to_v of every U-ViT attention): `A: [S, r, in]`, `B: [S, out, r]` and a per-slot
`scale: [S]` (alpha / rank), S = capacity + 1, slot 0 all zeros = the base model. One per-row slot-index buffer on
the model's device, shared by all layers, is set once per batch (`set_rows` / `route`); each linear's forward hook
(`bank_sites.BankSite`) adds `scale[s] · (x_i @ A[s]ᵀ) @ B[s]ᵀ` for row i with slot s, as gather + batched
matmul: no host read, no Python-list indexing, the same ops whatever the mix of adapters, so a fixed-shape forward
can be captured in a CUDA graph. Serving banks (`trainable=False`) gather each distinct routed adapter once per
route (memory per adapter, not per row) and cost four ops per layer per forward; trainable banks keep every slot in
one flat fp32 buffer laid out by batch row (`bank_train.TrainableStore`: the routed slots are its first rows, so a
forward reads them with no gather, repacked only when the set of routed slots changes; fused Q/K/V projections;
one element-wise optimizer over the batch's rows); `init_slot` initialises a slot like peft (A Kaiming-uniform(a=√5),
B = 0) from the given generator, so a style's initial weights depend on its own seed only.

Loading copies an adapter into a slot in place (no new modules, no recompiles); slots are sized by memory
(`slot_bytes`): a thousand amused-256 adapters are ≈10 GB in bf16. `extract` gives back an `Adapter` with the keys
and shapes of `trainer.lora` files (`<module>.lora_A.weight` (r, in), `<module>.lora_B.weight` (out, r)), which
plain diffusers reads.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .bank_sites import BankSite, default_capacity, slot_bytes, target_linears
from .bank_train import FlatLayout, TrainableStore
from .lora import TARGET_MODULES, Adapter, AdapterError, AdapterMeta, base_fingerprint, check_compatible

__all__ = ["LoraBank", "default_capacity", "find_bank", "slot_bytes", "target_linears"]

_BANK_ATTR = "_styledrop_bank"  # where a model keeps its installed bank (plain attribute: not a submodule)


def find_bank(transformer: nn.Module) -> LoraBank | None:
    """The bank installed on this model, if any."""
    bank = transformer.__dict__.get(_BANK_ATTR)
    return bank if isinstance(bank, LoraBank) else None


class LoraBank(nn.Module):
    """`capacity` LoRA slots (1..capacity; slot 0 = base) of one rank and target set, installed on a U-ViT.

    The bank is an `nn.Module` of its own (its `parameters()`: the stacked A/B tensors of a serving bank; for an
    optimizer, the one flat leaf of a trainable bank, the (n, P) view of its routed rows) but is not registered as a
    submodule of the transformer, so the model's state dict and `save_pretrained` are unchanged. One bank per model:
    installing a new one removes the old one.
    """

    def __init__(self, transformer: nn.Module, capacity: int, *, rank: int = 16,
                 targets: Sequence[str] = TARGET_MODULES, trainable: bool = False,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        linears = target_linears(transformer, targets)
        if not linears:
            raise AdapterError(f"the model has no linear layers named {list(targets)}")
        old = find_bank(transformer)
        if old is not None:
            old.remove()
        first = next(iter(linears.values())).weight
        device = first.device
        dtype = dtype or (torch.float32 if trainable else first.dtype)
        self.capacity, self.rank, self.targets, self.trainable = capacity, rank, tuple(targets), trainable
        self.fingerprint = base_fingerprint(transformer)
        self.keys = list(linears)
        s = capacity + 1
        self.store: TrainableStore | None = None
        self.lora_A: nn.ParameterList | list[torch.Tensor]  # per linear: (slots, r, in)
        self.lora_B: nn.ParameterList | list[torch.Tensor]  # per linear: (slots, out, r)
        if trainable:
            self.store = TrainableStore(FlatLayout(transformer, linears, rank), s, device)
            self.master = self.store.master  # registered: the bank's one parameter (the routed rows)
            self.packing = self.store.packing  # slot -> physical row of every [slots, ...] tensor below
            # Views into the storage, by PHYSICAL row: `slot_params` maps a slot to its row.
            self.lora_A, self.lora_B = self.store.layout.views(self.store.storage)
        else:
            self.lora_A = nn.ParameterList(
                nn.Parameter(torch.zeros(s, rank, m.in_features, device=device, dtype=dtype), requires_grad=False)
                for m in linears.values()
            )
            self.lora_B = nn.ParameterList(
                nn.Parameter(torch.zeros(s, m.out_features, rank, device=device, dtype=dtype), requires_grad=False)
                for m in linears.values()
            )
        self.register_buffer("scale", torch.zeros(s, device=device, dtype=dtype))
        self.scale: torch.Tensor
        self._rows_buf = torch.zeros(0, dtype=torch.long, device=device)
        self._rows: torch.Tensor | None = None  # view of _rows_buf while a route is set
        # Serving banks: the route's distinct slots (D,), and each routed row's index into them (a view of a
        # grow-only buffer); `buffers_version` counts buffer reallocations (a captured graph holds their addresses).
        self._distinct = torch.zeros(0, dtype=torch.long, device=device)
        self._index_buf = torch.zeros(0, dtype=torch.long, device=device)
        self._row_index: torch.Tensor | None = None
        self._route_slots: list[int] | None = None  # host copy of the route when it was given as a list
        self.buffers_version = 0
        self._start = 0  # rows before this one are base rows (no LoRA work at all)
        self._loaded: list[str | None] = [None] * s  # host-side: the name of the adapter in each slot
        self._transformer = [transformer]  # a list, so nn.Module does not register the model as a child
        self._sites = [] if trainable else [BankSite(self, a, b) for a, b in zip(self.lora_A, self.lora_B,
                                                                              strict=True)]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._hook(transformer, linears)

    def _hook(self, transformer: nn.Module, linears: dict[str, nn.Linear]) -> None:
        hooks: list[Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor | None]] = (
            list(self.store.sites) if self.store is not None else list(self._sites))
        self._handles = [lin.register_forward_hook(site) for lin, site in zip(linears.values(), hooks, strict=True)]
        if self.store is not None:
            self._handles.append(transformer.register_forward_pre_hook(self.prepare))
            self._handles.append(transformer.register_forward_hook(self._finish))
        transformer.__dict__[_BANK_ATTR] = self

    @property
    def transformer(self) -> nn.Module:
        return self._transformer[0]

    @property
    def device(self) -> torch.device:
        return self.scale.device

    @property
    def rows(self) -> torch.Tensor | None:
        """(m,) the slot of each routed row (a device tensor), or None without a route."""
        return self._rows

    @property
    def row_index(self) -> torch.Tensor | None:
        """Serving banks: (m,) each routed row's place in the route's distinct slots, or None without a route."""
        return self._row_index

    @property
    def start(self) -> int:
        """Rows before this one are base rows (no LoRA work)."""
        return self._start

    def state_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """`site_views` as one list, every A then every B: the order of a checkpoint's per-layer state."""
        a, b = self.site_views(flat)
        return [*a, *b]

    def site_views(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A trainable bank: per-linear (slots, r, in) / (slots, out, r) views of a tensor laid out like its master
        (the master's gradient, an optimizer moment), in `keys` order."""
        assert self.store is not None, "a serving bank has no flat master"
        return self.store.layout.views(flat)

    # --- slots -----------------------------------------------------------------------------------------------

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot <= self.capacity:
            raise AdapterError(f"slot {slot} is out of range 1..{self.capacity} (slot 0 is the base model)")

    def row_of(self, slot: int) -> int:
        """Where `slot` lies in the stacked tensors: itself in a serving bank, its physical row in a trainable one
        (the routed slots first, in batch-row order: row j of the batch is row j of the leaf and its gradient)."""
        return slot if self.store is None else self.packing.row(slot)

    def slot_params(self, slot: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Views of one slot's weights per module path: (A (r, in), B (out, r))."""
        row = self.row_of(slot)
        return {k: (a[row], b[row]) for k, a, b in zip(self.keys, self.lora_A, self.lora_B, strict=True)}

    @torch.no_grad()
    def load(self, slot: int, adapter: Adapter, name: str | None = None) -> None:
        """Copy `adapter` into `slot` in place; `name` (default `slot<k>`) is what requests route by."""
        self._check_slot(slot)
        check_compatible(adapter, self.transformer, rank=self.rank, targets=self.targets)
        expected = {f"{k}.lora_{ab}.weight" for k in self.keys for ab in "AB"}
        if set(adapter.tensors) != expected:
            missing = sorted(expected - set(adapter.tensors))[:3]
            extra = sorted(set(adapter.tensors) - expected)[:3]
            raise AdapterError(f"adapter does not match the model's LoRA layers (missing e.g. {missing}, "
                               f"unexpected e.g. {extra})")
        for key, (a, b) in self.slot_params(slot).items():
            for dst, ab in ((a, "A"), (b, "B")):
                src = adapter.tensors[f"{key}.lora_{ab}.weight"]
                if src.shape != dst.shape:
                    raise AdapterError(f"adapter tensor {key}.lora_{ab}.weight has shape {tuple(src.shape)}, "
                                       f"expected {tuple(dst.shape)}")
        try:
            for key, (a, b) in self.slot_params(slot).items():
                a.copy_(adapter.tensors[f"{key}.lora_A.weight"], non_blocking=True)
                b.copy_(adapter.tensors[f"{key}.lora_B.weight"], non_blocking=True)
        except BaseException:
            self.clear(slot)  # a half-copied slot must never serve
            raise
        self.scale[slot] = adapter.meta.alpha / adapter.meta.rank
        self._name(slot, name or f"slot{slot}")
        self._regather()

    def _name(self, slot: int, name: str) -> None:
        if name in self._loaded and self._loaded.index(name) != slot:
            raise AdapterError(f"adapter name '{name}' is already used by slot {self._loaded.index(name)}")
        self._loaded[slot] = name

    @torch.no_grad()
    def clear(self, slot: int) -> None:
        """Zero a slot (A, B and scale): rows routed to it then get the base model's output."""
        self._check_slot(slot)
        for a, b in self.slot_params(slot).values():
            a.zero_()
            b.zero_()
        self.scale[slot] = 0.0
        self._loaded[slot] = None
        self._regather()

    @torch.no_grad()
    def init_slot(self, slot: int, generator: torch.Generator, *, alpha: float, name: str | None = None) -> None:
        """A fresh trainable adapter in `slot`, initialised like peft's LoRA: A ~ Kaiming-uniform(a=√5), B = 0.

        Draws come from `generator` only (a CPU generator; values are copied to the bank's device), in module
        order, so the initial weights depend on the generator's seed and nothing else.
        """
        self._check_slot(slot)
        for a, b in self.slot_params(slot).values():
            w = torch.empty(a.shape, dtype=torch.float32)  # (r, in): fan_in = in, as for peft's nn.Linear(in, r)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
            a.copy_(w)
            b.zero_()
        self.scale[slot] = alpha / self.rank
        self._name(slot, name or f"slot{slot}")
        self._regather()

    def extract(self, slot: int, meta: AdapterMeta) -> Adapter:
        """The adapter in `slot` as a file-format `Adapter`: fp32 CPU tensors, the keys and shapes of today's files."""
        self._check_slot(slot)
        tensors: dict[str, torch.Tensor] = {}
        for key, (a, b) in self.slot_params(slot).items():
            tensors[f"{key}.lora_A.weight"] = a.detach().to("cpu", torch.float32).clone().contiguous()
            tensors[f"{key}.lora_B.weight"] = b.detach().to("cpu", torch.float32).clone().contiguous()
        return Adapter(tensors, meta)

    def slot_of(self, name: str) -> int:
        """The slot holding the adapter called `name`; AdapterError for an unknown or empty name."""
        if not name:
            raise AdapterError("empty adapter slot name")
        try:
            return self._loaded.index(name, 1)
        except ValueError:
            raise AdapterError(f"no adapter named '{name}' is loaded in the bank") from None

    def loaded(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self._loaded) if n is not None}

    # --- routing ---------------------------------------------------------------------------------------------

    def set_rows(self, slots: Sequence[int] | torch.Tensor, *, start: int = 0) -> torch.Tensor:
        """Route batch row `start + i` to slot `slots[i]` (0 = base) for the following forwards, until `clear_rows`.

        Rows before `start` are base rows and do no LoRA work (the sampler puts its adapted rows last); a forward
        must then have exactly `start + len(slots)` rows. A trainable bank takes a list of distinct slots and lays
        them out as its first rows (`TrainableStore.pack`: a repack when the set differs from the last route's). The
        indices go into one static device buffer (reused while the row count does not grow, so a captured graph sees
        new routes). A list is checked on the host; a device tensor is used as is, without any host read. A serving
        bank then gathers the route's distinct adapters' weights once, for all the forwards of this route (memory:
        one slot's size, ≈10 MB in bf16 on amused-256, per distinct adapter of a list route; per row of a tensor
        route, whose distinct set is not read back).
        """
        if start < 0 or (start and self.trainable):
            raise AdapterError(f"start must be 0 for a trainable bank and >= 0 otherwise, got {start}")
        host: list[int] | None = None
        if self.trainable and isinstance(slots, torch.Tensor):
            raise AdapterError("a trainable bank takes its route as a list of slots (its rows are laid out on the "
                               "host, once per set of styles)")
        if isinstance(slots, torch.Tensor):
            src = slots.to(dtype=torch.long)
        else:
            values = [int(s) for s in slots]
            bad = [s for s in values if not 0 <= s <= self.capacity]
            if bad:
                raise AdapterError(f"slot indices {bad[:3]} are out of range 0..{self.capacity}")
            if self.trainable and len(set(values)) != len(values):
                raise AdapterError(f"a trainable bank routes each slot to one batch row (its weights are laid out "
                                   f"by row), got {values}")
            src = torch.tensor(values, dtype=torch.long)
            if self.device.type == "cuda":
                src = src.pin_memory()  # so the copy below is asynchronous
            host = values
        m = int(src.shape[0])
        if m > self._rows_buf.shape[0]:  # grown geometrically: each growth means recapturing a graph
            self._rows_buf = torch.zeros(max(m, 2 * self._rows_buf.shape[0]), dtype=torch.long, device=self.device)
            self.buffers_version += 1
        rows = self._rows_buf[:m]
        rows.copy_(src, non_blocking=True)
        self._rows, self._start = rows, start
        if self.store is not None:
            assert host is not None
            self._route_slots = host
            self.store.pack(host)
            self._regather()
        else:
            self._route_serving(host)
        return rows

    def _route_serving(self, host: list[int] | None) -> None:
        """Serving banks: each distinct routed slot once, and each row's index into that set (no host read).

        Given a list, the distinct slots are found on the host, so 64 rows of one adapter hold one gathered copy
        of it; given a device tensor (no host read allowed), every row counts as distinct.
        """
        rows = self._rows
        assert rows is not None
        m = rows.shape[0]
        self._route_slots = host
        if host is None:
            self._distinct = rows
            index = torch.arange(m, device=self.device)
        else:
            order: dict[int, int] = {}
            index_list = [order.setdefault(s, len(order)) for s in host]  # row -> its slot's place in `order`
            pin = self.device.type == "cuda"
            self._distinct = torch.tensor(list(order), dtype=torch.long, pin_memory=pin).to(self.device,
                                                                                             non_blocking=True)
            index = torch.tensor(index_list, dtype=torch.long, pin_memory=pin)
        if m > self._index_buf.shape[0]:
            self._index_buf = torch.zeros(max(m, 2 * self._index_buf.shape[0]), dtype=torch.long, device=self.device)
            self.buffers_version += 1
        self._row_index = self._index_buf[:m]
        self._row_index.copy_(index, non_blocking=True)
        self._regather()

    @torch.no_grad()
    def _regather(self) -> None:
        """Refill what a route needs after a route or a load: a trainable bank's per-row α/r, a serving bank's
        buffers of the route's distinct slots."""
        if self.store is not None:  # the routed rows' α/r on their B columns, once per route
            self.store.route(None if self._rows is None else self.scale.index_select(0, self._rows))
            return
        if self._rows is None:
            return
        distinct = self._distinct
        slot_scale = self.scale.index_select(0, distinct).view(-1, 1, 1)  # (D,) -> (D, 1, 1)
        grown = False
        for site in self._sites:
            grown |= site.gather(distinct, slot_scale)
        self.buffers_version += grown

    def clear_rows(self) -> None:
        self._rows = None
        self._row_index = None
        self._route_slots = None
        if self.store is not None:
            self.store.route(None)

    @contextlib.contextmanager
    def route(self, slots: Sequence[int] | torch.Tensor, *, start: int = 0) -> Iterator[torch.Tensor]:
        """`with bank.route(slots):` — `set_rows` for the block, then the previous route (or none) again."""
        previous: tuple[Sequence[int] | torch.Tensor, int] | None = None
        if self._rows is not None:  # the host copy when there is one, so the distinct set is found again
            previous = (self._route_slots or self._rows.clone(), self._start)
        rows = self.set_rows(slots, start=start)
        try:
            yield rows
        finally:
            if previous is None:
                self.clear_rows()
            else:
                self.set_rows(previous[0], start=previous[1])

    def prepare(self, module: nn.Module, _args: tuple[object, ...] = ()) -> None:
        """Trainable banks, before each forward of `module` (the model's pre-hook): the routed rows' weights for
        every layer at once."""
        assert self.store is not None
        device = self.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else next(module.parameters()).dtype)
        self.store.prepare(dtype)

    def _finish(self, _module: nn.Module, _args: tuple[object, ...], _out: object) -> None:
        """After each forward: drop the forward's views and cached projections (autograd keeps what it needs)."""
        assert self.store is not None
        self.store.release()

    def remove(self) -> None:
        """Uninstall every hook and forget the model: it computes exactly what it did before the bank."""
        for h in self._handles:
            h.remove()
        self._handles = []
        t = self.transformer
        if t.__dict__.get(_BANK_ATTR) is self:
            del t.__dict__[_BANK_ATTR]
        self.clear_rows()
        if self.store is not None:
            self.store.pieces = None
        for site in self._sites:
            site.at = site.bt = None

    def install(self) -> None:
        """Put a removed bank back on its model (a training run's own bank replaces a serving bank meanwhile)."""
        if self._handles:
            return
        t = self.transformer
        old = find_bank(t)
        if old is not None:
            old.remove()
        self._hook(t, target_linears(t, self.targets))
