"""One training step of a multi-style run — draw, forward, loss, backward, optimizer — eager or as a CUDA graph.

`TrainStep` owns what a step touches: the run's `StyleBatch` (tokens, prompts and, by default, the constant
conditioning computed once), the trainable LoRA bank, the per-slot optimizer and the loss scaler. `set_rows`
routes a new set of styles (only when a style joins or leaves; `set_batch` first when one joins), which lays the
bank's weights and the optimizer's state out by batch row; `__call__` runs one step and returns the (S,) losses as a
device tensor — nothing in it reads back to the host, gathers or scatters the bank's weights.

With `cuda_graph=True` (CUDA only) the whole step is captured once per set of rows and replayed: every kernel of
the step at one launch cost. The capture follows torch's whole-network recipe (docs: CUDA Graphs): a few eager
warm-up steps on a side stream — real training steps, identical to the eager path — then one capture, then
replays. What makes the step capturable: static shapes per S; the bank's row indices, the optimizer's per-slot
learning rates, step counts and active flags are device tensors updated in place; each style's generator is
registered with the graph, so a replay draws exactly what an eager step would (the generator's offset advances
by the graph's total per replay); gradients are set to None before capture so that backward allocates them in
the graph's pool; autocast's weight-cast cache is off inside the graph (cached casts would be freed memory). Not
capturable, so refused by train.py: fp16 (the GradScaler decides skips and scale changes on the host) and 8-bit
AdamW (host-number step counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from .bank import LoraBank
from .model import AmusedParts
from .optim import SlotAdamW
from .train_data import StepInputs, StyleBatch, row_losses

__all__ = ["TrainStep"]


class TrainStep:
    WARMUP = 2  # eager steps on a side stream before each capture (lazy cuBLAS/allocator set-up happens there)

    def __init__(self, parts: AmusedParts, batch: StyleBatch, bank: LoraBank, optimizer: SlotAdamW,
                 scaler: torch.amp.GradScaler, *, autocast_dtype: torch.dtype | None = None,
                 max_grad_norm: float | None = None, constant_conditioning: bool = True,
                 cuda_graph: bool = False) -> None:
        self.parts, self.batch, self.bank, self.optimizer, self.scaler = parts, batch, bank, optimizer, scaler
        self.device = parts.device
        self.autocast_dtype = autocast_dtype
        self.max_grad_norm = max_grad_norm
        self.cuda_graph = cuda_graph
        if cuda_graph and (self.device.type != "cuda" or scaler.is_enabled()):
            raise ValueError("cuda_graph needs a CUDA device and no fp16 loss scaling")
        self.constant_conditioning = constant_conditioning
        self.set_batch(batch)
        self.rows = torch.zeros(0, dtype=torch.long, device=self.device)
        self.generators: list[torch.Generator] = []
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_losses: torch.Tensor | None = None
        self._side: torch.cuda.Stream | None = None
        self._warm = 0

    def _autocast(self, cache: bool = True) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=cache)

    def set_batch(self, batch: StyleBatch) -> None:
        """Train on `batch` from now on (a style joined); `set_rows` must follow before the next step."""
        self.batch = batch
        if self.constant_conditioning:
            with torch.no_grad(), self._autocast():
                batch.precompute(self.parts)  # once per set of styles: prompts and micro-conditions never change
        self._graph = self._graph_losses = None  # the captured graph read the old batch's tensors

    def set_rows(self, styles: Sequence[int], generators: Sequence[torch.Generator]) -> None:
        """Row j of the following steps trains the batch's style `styles[j]` (bank slot styles[j] + 1) with
        `generators[j]`."""
        self.rows = torch.tensor(list(styles), device=self.device)  # (S,) style of each row
        self.generators = list(generators)
        slots = [s + 1 for s in styles]
        self.bank.set_rows(slots)  # a new set of slots: the bank (and the optimizer's state) repacked by row
        active = torch.zeros(self.optimizer.num_slots, device=self.device).index_fill_(0, self.rows + 1, 1.0)
        self.optimizer.set_active(active, slots)
        self._graph = self._graph_losses = None  # a new S: a new capture (after new warm-up steps)
        self._warm = 0
        self.optimizer.zero_grad(set_to_none=True)  # a replayed graph leaves its gradients in .grad

    # --- the step's parts (each free of host reads; the captured graph runs them all) ---------------------------

    def draw(self) -> StepInputs:
        return self.batch.draw(self.rows, self.generators)

    def forward_loss(self, inputs: StepInputs) -> torch.Tensor:
        """(S,) each row's masked-token mean loss."""
        return row_losses(self.parts, self.batch, inputs)

    def backward_update(self, losses: torch.Tensor) -> None:
        """Sum of the rows' losses backward (styles never couple: each slot gets its own row's gradient), per-slot
        clipping if asked, one optimizer step for all slots."""
        self.scaler.scale(losses.sum()).backward()
        if self.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            self.optimizer.clip_slots_(self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _eager(self, cache: bool = True) -> torch.Tensor:
        inputs = self.draw()
        with self._autocast(cache):
            losses = self.forward_loss(inputs)
        self.backward_update(losses)
        return losses.detach()

    # --- running it ---------------------------------------------------------------------------------------------

    def __call__(self) -> torch.Tensor:
        """One step for every routed row; the (S,) losses (a tensor of its own, still on the device)."""
        if not self.cuda_graph:
            losses = self._eager()
            self.optimizer.zero_grad(set_to_none=True)
            return losses
        if self._graph is None and self._warm < self.WARMUP:
            return self._warm_up()
        if self._graph is None:
            self._capture()
        assert self._graph is not None and self._graph_losses is not None
        self._graph.replay()
        return self._graph_losses.clone()

    def _warm_up(self) -> torch.Tensor:
        side = self._side = self._side or torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        self.optimizer.zero_grad(set_to_none=True)  # backward must start from no gradient, as in eager steps
        with torch.cuda.stream(side):
            losses = self._eager(cache=False)
            self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(side)
        self._warm += 1
        return losses

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:  # the default generator is registered by the capture itself; these are not
            graph.register_generator_state(g)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates .grad inside the graph's pool
        with torch.cuda.graph(graph):
            losses = self._eager(cache=False)
        self._graph, self._graph_losses = graph, losses
