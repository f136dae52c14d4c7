"""The training step is capturable, proven on CPU: no host reads and no data-dependent Python control flow.

A CUDA graph replays a fixed sequence of kernels, so the step must neither read a device value on the host nor
choose its operations from one. Checked two ways without a GPU:
- torch.compile(fullgraph=True, backend="aot_eager") of the step's forward + loss (whose backward AOTAutograd
  traces too) and of the optimizer step: a host read or a branch on a tensor value would break the graph, which
  fullgraph turns into an error; the compiled step trains exactly like the eager one (aot_eager runs the same
  aten ops). The draw is not compiled: dynamo cannot take a torch.Generator argument;
- a TorchDispatchMode over whole steps, the draw included: the same operations in the same order every step,
  whatever the random masks, and none of them reads back to the host.
The capture itself (tests/test_engine_gpu.py) needs a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.bank import LoraBank
from trainer.model import load_base
from trainer.optim import SlotAdamW
from trainer.train import StyleSpec, TrainConfig, train_styles
from trainer.train_data import StyleBatch, prepare_style
from trainer.train_step import TrainStep

HOST_READS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.masked_select", "aten.equal",
              "aten.is_nonzero", "aten.unique", "aten._unique2", "aten.unique_consecutive", "aten.repeat_interleave"}


@pytest.fixture
def make_step(engine_tiny_dir: Path, engine_style_image: Image.Image) -> Iterator[Any]:
    """A fresh model and a 2-style TrainStep (different images, prompts, seeds, learning rates) per call."""
    banks: list[LoraBank] = []

    def make(max_grad_norm: float | None = None) -> tuple[TrainStep, LoraBank]:
        parts = load_base(str(engine_tiny_dir))
        images = [[engine_style_image], [engine_style_image.rotate(90), engine_style_image.rotate(180)]]
        batch = StyleBatch([prepare_style(parts, im, f"style {k}") for k, im in enumerate(images)],
                           parts.mask_token_id)
        bank = LoraBank(parts.transformer, 2, trainable=True)
        banks.append(bank)
        optimizer = SlotAdamW(list(bank.parameters()), 3, packing=bank.packing)
        for slot, lr in ((1, 3e-3), (2, 1e-3)):
            bank.init_slot(slot, torch.Generator().manual_seed(slot), alpha=32.0)
            optimizer.reset_slot(slot, lr)
        step = TrainStep(parts, batch, bank, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                         max_grad_norm=max_grad_norm)
        step.set_rows([0, 1], [torch.Generator().manual_seed(s) for s in (5, 6)])
        return step, bank

    yield make
    for bank in banks:
        bank.remove()


def test_compiled_full_graphs_train_exactly_like_eager(make_step: Any) -> None:
    runs = []
    for compiled in (False, True):
        step, bank = make_step(max_grad_norm=0.5)  # per-slot clipping inside the step too
        if compiled:
            step.forward_loss = torch.compile(step.forward_loss, fullgraph=True, backend="aot_eager")
            step.optimizer.step = torch.compile(step.optimizer.step, fullgraph=True, backend="aot_eager")
        losses = torch.stack([step() for _ in range(3)])  # (steps, S)
        runs.append((losses, [p.detach().clone() for p in bank.parameters()]))
    (eager_losses, eager_params), (compiled_losses, compiled_params) = runs
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-6, atol=0)
    for got, want in zip(compiled_params, eager_params, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert not torch.equal(eager_losses[0], eager_losses[2])  # it trained (losses moved)


class OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name == "aten._to_copy" and str(kwargs.get("device")) == "cpu":
            name = "to_cpu"
        self.ops.append(name)
        return func(*args, **kwargs)


def test_every_step_runs_the_same_ops_and_none_reads_the_host(make_step: Any) -> None:
    step, _ = make_step()
    step()  # the first step may differ (lazy state); the steady state is what a graph replays
    per_step = []
    for _ in range(3):
        with OpLog() as log:
            step()
        per_step.append(log.ops)
    assert per_step[0] == per_step[1] == per_step[2]
    assert not HOST_READS.intersection(per_step[0]) and "to_cpu" not in per_step[0]
    assert {"aten.index_select", "aten.bmm", "aten.sort"} <= set(per_step[0])  # routed LoRA, device masks


def test_cuda_graph_is_a_clear_error_on_cpu(make_step: Any, engine_tiny_dir: Path,
                                            engine_style_image: Image.Image) -> None:
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        train_styles(load_base(str(engine_tiny_dir)), [StyleSpec([engine_style_image], "stripes", steps=1)],
                     TrainConfig(cuda_graph=True))
    step, bank = make_step()
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        TrainStep(step.parts, step.batch, bank, step.optimizer, step.scaler, cuda_graph=True)
