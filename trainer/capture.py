"""What a GPU would feel, measured on any device: dispatched aten operations and host reads; the captured forward.

`OpCounter` is a `TorchDispatchMode` that counts every aten operation a block of code dispatches (on a GPU each is
at least one kernel launch, ~5–10 µs of CPU time) and the operations that make the host wait for the device:
reading a value back (`.item()`, `bool(t)`, `int(t)`, an explicit copy to the host), ops whose output shape depends
on data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, `repeat_interleave` without `output_size`),
and copies between
devices (on a CPU-only run, tensors made from Python data, which on a GPU are host→device copies). The counts are
deterministic, so benchmarks and tests can compare them exactly on a shared CPU where timings are noise.

`compile_transformer` compiles the U-ViT forward once per batch shape with `fullgraph=True` (a graph break, i.e.
data-dependent Python control flow or a host read, is an error rather than a silent slow path) and, on CUDA, with
CUDA graphs (`mode="reduce-overhead"`): the LoRA bank's routes live in static buffers, so one captured graph
serves any mix of adapters. The sampler does not go through `transformer.forward` (it runs the U-ViT from its
prompt-only conditioning, computed once per call: `step_forward`), so serving captures with `graph_sampling`:
a plain `torch.cuda.graph` capture of the eager per-round forward, the same kernels replayed at one launch cost,
with no compiler in the way (nothing to compile cold on a fresh machine).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .bank import find_bank
from .uvit_forward import Conditioning, forward_with_conditioning, precompute_conditioning

# Ops that read a value back to the host, or whose output size depends on tensor data (a read in disguise).
HOST_READ_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static", "masked_select", "_unique",
    "_unique2", "unique_dim", "unique_consecutive", "allclose",
})
CREATION_OPS = frozenset({"lift_fresh", "lift_fresh_copy"})  # torch.tensor(python data): a host→device copy on GPU
# Ops that read or write rows picked by an index tensor: a gather forward, its scatter backward.
GATHER_SCATTER_OPS = frozenset({
    "index", "index_select", "index_select_backward", "index_add", "index_add_", "index_copy", "index_copy_",
    "index_put", "index_put_", "_index_put_impl_", "index_fill", "index_fill_", "gather", "scatter", "scatter_",
    "scatter_add", "scatter_add_", "scatter_reduce", "take", "embedding", "embedding_dense_backward",
    "masked_scatter", "put_",
})


def _devices(args: Any) -> set[str]:
    found: set[str] = set()
    for a in args:
        if isinstance(a, torch.Tensor):
            found.add(a.device.type)
        elif isinstance(a, (list, tuple)):
            found |= _devices(a)
    return found


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as c: ...` then `c.ops` (all aten ops), `c.host_reads`, `c.transfers`, `c.by_name`.

    `OpCounter(width=P)` also counts, in `c.gathers_by_name`, the gather/scatter ops (`GATHER_SCATTER_OPS`) that
    read or write a tensor whose last dimension is P: with P a trainable LoRA bank's flat width
    (`FlatLayout.width`, every LoRA weight of one slot — no other tensor of a training step has it), the bank's
    per-step gathers and scatters.
    """

    def __init__(self, width: int | None = None) -> None:
        super().__init__()
        self.ops = 0
        self.host_reads = 0
        self.transfers = 0
        self.by_name: Counter[str] = Counter()
        self.reads_by_name: Counter[str] = Counter()
        self.width = width
        self.gathers_by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops += 1
        self.by_name[name] += 1
        read = name in HOST_READ_OPS
        if name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())
        ):
            read = True  # boolean-mask indexing: its output size is the mask's count, read from the device
        if name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) == 1:
            read = True
        if name == "_to_copy" and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu":
            # an explicit copy to the host (`.to("cpu", copy=True)`): on a GPU, a device→host read. Not a dtype
            # conversion of a tensor already on the CPU: autograd and `.to(dtype)` pass the tensor's own device,
            # which on a GPU is the GPU.
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            read = src is None or src.device.type != "cpu" or kwargs.get("dtype") in (None, src.dtype)
        if read:
            self.host_reads += 1
            self.reads_by_name[name] += 1
        if name in CREATION_OPS:
            self.transfers += 1
        elif name in ("_to_copy", "copy_"):
            devices = _devices(args)
            if kwargs.get("device") is not None:
                devices.add(torch.device(kwargs["device"]).type)
            self.transfers += len(devices) > 1
        out = func(*args, **kwargs)
        if self.width is not None and name in GATHER_SCATTER_OPS and any(
                t.dim() >= 2 and t.shape[-1] == self.width for t in _tensors((args, kwargs, out))):
            self.gathers_by_name[name] += 1
        return out

    def summary(self) -> dict[str, Any]:
        return {"ops": self.ops, "host_reads": self.host_reads, "transfers": self.transfers,
                "reads": dict(self.reads_by_name)}


class MemoryCounter(TorchDispatchMode):
    """`with MemoryCounter() as m: ...` then `m.peak`: the most bytes of tensor storage that ops dispatched inside
    the block had allocated and not yet freed at once (`m.live`: still allocated now). Storage an op writes in
    place or views is not new; a storage is counted until torch frees it. Device-independent and deterministic,
    so a test can measure memory on the CPU (on CUDA, `torch.cuda.max_memory_allocated` is the allocator's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if size and ptr not in inputs and ptr not in self._tracked:
                self._tracked[ptr] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, ptr, size)  # storages keep their Python object while alive
        return out

    def _free(self, ptr: int, size: int) -> None:
        if self._tracked.get(ptr) == size:
            del self._tracked[ptr]
            self.live -= size


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _tensors(x)]
    if isinstance(tree, dict):
        return [t for x in tree.values() for t in _tensors(x)]
    return []


def compile_transformer(transformer: torch.nn.Module, *, backend: str | None = None) -> torch.nn.Module:
    """Compile `transformer.forward` in place (idempotent): fullgraph, static shapes, CUDA graphs on CUDA.

    `backend` overrides the compiler (tests use "aot_eager" on the CPU: the same graph capture, no C++ build).
    Call it after the LoRA bank is installed; bank routes change buffer contents, never the graph.
    """
    if transformer.__dict__.get("_styledrop_compiled"):
        return transformer
    device = next(transformer.parameters()).device
    mode = "reduce-overhead" if device.type == "cuda" and backend in (None, "inductor") else None
    compiled = torch.compile(transformer.forward, fullgraph=True, dynamic=False, backend=backend or "inductor",
                             mode=mode)
    transformer.forward = compiled  # type: ignore[method-assign]
    transformer.__dict__["_styledrop_compiled"] = True
    return transformer


_GRAPHS_ATTR = "_styledrop_sampling_graphs"  # where a model keeps its SamplingGraphs (plain attribute)
Forward = Callable[[torch.Tensor], torch.Tensor]


def step_forward(transformer: torch.nn.Module, hidden: torch.Tensor, pooled: torch.Tensor,
                 micro_conds: torch.Tensor) -> Forward:
    """The sampler's per-round forward `ids (P, h, w) -> logits (P, C, h, w)` for P passes whose CLIP `hidden`
    (P, L, D), `pooled` (P, Pd) and `micro_conds` (P, 5) stay fixed for the call.

    The prompt-only values are computed here, once, over the same P rows the model's own forward would use (so
    the logits are bitwise the model's); a model layout `uvit_forward` does not mirror runs `transformer(...)`
    each round instead. With `graph_sampling` on, the forward replays a captured CUDA graph.
    """
    try:
        cond = precompute_conditioning(transformer, hidden, pooled, micro_conds)  # type: ignore[arg-type]
    except ValueError:
        return lambda ids: transformer(ids, encoder_hidden_states=hidden, pooled_text_emb=pooled,
                                       micro_conds=micro_conds)
    graphs = transformer.__dict__.get(_GRAPHS_ATTR)
    if isinstance(graphs, SamplingGraphs):
        return lambda ids: graphs.run(cond, ids)
    return lambda ids: forward_with_conditioning(transformer, cond, ids)  # type: ignore[arg-type]


def graph_sampling(transformer: torch.nn.Module, enabled: bool = True) -> None:
    """Replay the sampler's per-round forward from CUDA graphs on this model (CUDA only); `enabled=False` undoes it.

    Call it after the LoRA bank is installed. ValueError on a model that is not on a CUDA device.
    """
    if not enabled:
        transformer.__dict__.pop(_GRAPHS_ATTR, None)
        return
    if next(transformer.parameters()).device.type != "cuda":
        raise ValueError("graph_sampling needs a model on a CUDA device")
    if not isinstance(transformer.__dict__.get(_GRAPHS_ATTR), SamplingGraphs):
        transformer.__dict__[_GRAPHS_ATTR] = SamplingGraphs(transformer)


@dataclasses.dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # static input (P, h, w)
    cond: Conditioning  # static conditioning tables, refilled once per sample call
    out: torch.Tensor  # static output (P, C, h, w)
    source: Conditioning | None = None  # the call's tables last copied in


class SamplingGraphs:
    """One captured graph per pass layout (pass count, token grid, LoRA route's start and rows), LRU of `most`.

    A graph bakes in buffer addresses: the route's row indices and gathered adapter buffers are refilled in place
    by the bank (`LoraBank.set_rows`, `load`), so one graph serves any mix of adapters; when the bank reallocates a
    buffer (`buffers_version`) every graph is dropped and recaptured on its next use.
    """

    WARMUP = 2  # eager forwards on a side stream before a capture (lazy cuBLAS set-up happens there)

    def __init__(self, transformer: torch.nn.Module, most: int = 4) -> None:
        self.transformer, self.most = transformer, most
        self.graphs: OrderedDict[tuple[Any, ...], _Captured] = OrderedDict()
        self.version: tuple[int, int] | None = None
        self.captures = 0

    def _key(self, cond: Conditioning, ids: torch.Tensor) -> tuple[Any, ...]:
        bank = find_bank(self.transformer)
        rows = None if bank is None else bank.rows
        route = None if bank is None or rows is None or rows.shape[0] == 0 else (bank.start, rows.shape[0])
        version = None if bank is None else (id(bank), bank.buffers_version)  # another bank: other buffers
        if version != self.version:
            self.graphs.clear()
            self.version = version
        return (tuple(ids.shape), tuple(cond.encoder.shape), tuple(cond.adaln.shape), cond.adaln.dtype, route)

    def run(self, cond: Conditioning, ids: torch.Tensor) -> torch.Tensor:
        key = self._key(cond, ids)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(cond, ids)
            while len(self.graphs) > self.most:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        if entry.source is not cond:  # a new call: its conditioning into the static tables, once
            _copy_conditioning(entry.cond, cond)
            entry.source = cond
        entry.ids.copy_(ids)
        entry.graph.replay()
        return entry.out

    def _capture(self, cond: Conditioning, ids: torch.Tensor) -> _Captured:
        t = self.transformer
        static_ids = ids.clone()
        static = dataclasses.replace(cond, encoder=cond.encoder.clone(), adaln=cond.adaln.clone(),
                                     conv=cond.conv.clone(), kv=[None if k is None else k.clone() for k in cond.kv])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                forward_with_conditioning(t, static, static_ids)  # type: ignore[arg-type]
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward_with_conditioning(t, static, static_ids)  # type: ignore[arg-type]
        self.captures += 1
        return _Captured(graph, static_ids, static, out, source=cond)


def _copy_conditioning(dst: Conditioning, src: Conditioning) -> None:
    dst.encoder.copy_(src.encoder)
    dst.adaln.copy_(src.adaln)
    dst.conv.copy_(src.conv)
    for d, s in zip(dst.kv, src.kv, strict=True):
        if d is not None and s is not None:
            d.copy_(s)
