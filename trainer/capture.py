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
serves any mix of adapters.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a value back to the host, or whose output size depends on tensor data (a read in disguise).
HOST_READ_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static", "masked_select", "_unique",
    "_unique2", "unique_dim", "unique_consecutive", "allclose",
})
CREATION_OPS = frozenset({"lift_fresh", "lift_fresh_copy"})  # torch.tensor(python data): a host→device copy on GPU


def _devices(args: Any) -> set[str]:
    found: set[str] = set()
    for a in args:
        if isinstance(a, torch.Tensor):
            found.add(a.device.type)
        elif isinstance(a, (list, tuple)):
            found |= _devices(a)
    return found


class OpCounter(TorchDispatchMode):
    """`with OpCounter() as c: ...` then `c.ops` (all aten ops), `c.host_reads`, `c.transfers`, `c.by_name`."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host_reads = 0
        self.transfers = 0
        self.by_name: Counter[str] = Counter()
        self.reads_by_name: Counter[str] = Counter()

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
        return func(*args, **kwargs)

    def summary(self) -> dict[str, Any]:
        return {"ops": self.ops, "host_reads": self.host_reads, "transfers": self.transfers,
                "reads": dict(self.reads_by_name)}


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
