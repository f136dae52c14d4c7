"""One style's place in a training run (trainer/train.py `train_styles`): its bank slot, counters, random stream
and result; and the two host-side helpers the loop calls on it (the batched loss read, a checkpoint capture).

A slot is not a style: with continuous batching (`TrainConfig.capacity`, `Callbacks.join`) a style that leaves
gives its slot to the next style that joins, which re-initialises it (bank, optimizer moments, step count).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .checkpoint import Checkpoint, capture_slot
from .contracts.prompts import training_prompt

if TYPE_CHECKING:
    from .bank import LoraBank
    from .optim import SlotAdamW
    from .train import Progress, StyleSpec, TrainConfig, TrainResult


@dataclass(eq=False)
class StyleRun:
    """One style of a run: its index (order of arrival: the fixed styles first, then each joined one), its bank
    slot, counters, random stream and result."""

    index: int
    slot: int  # bank slot (1..capacity; 0 is the base)
    total: int
    seed: int
    lr: float
    generator: torch.Generator  # masking and image choice, on the model's device
    result: TrainResult
    step: int = 0
    first: int = 0  # the step this call started from (after a resume)
    running: bool = True
    created: float = field(default_factory=time.perf_counter)  # when the run took it (its result's seconds)
    t0: float = field(default_factory=time.perf_counter)  # when it started training (its steps per second)

    @classmethod
    def of(cls, index: int, slot: int, spec: StyleSpec, cfg: TrainConfig, device: torch.device) -> StyleRun:
        from .train import TrainResult

        seed = spec.seed if spec.seed is not None else cfg.seed
        lr = spec.learning_rate if spec.learning_rate is not None else cfg.learning_rate
        assert lr is not None
        total = spec.steps if spec.steps is not None else cfg.steps
        prompt = spec.prompt or training_prompt(spec.descriptor, spec.content)
        return cls(index, slot, total, seed, lr, torch.Generator(device).manual_seed(seed),
                   TrainResult(None, [], False, 0, prompt))

    def reports(self, cfg: TrainConfig) -> bool:
        return self.step % max(cfg.progress_every, 1) == 0 or self.step == self.total

    def progress(self) -> Progress:
        from .train import Progress

        elapsed = time.perf_counter() - self.t0
        sps = (self.step - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / sps if sps > 0 else float("inf")
        return Progress(self.step, self.total, self.result.losses[-1], self.lr, sps, eta)


def read_losses(pending: list[tuple[list[StyleRun], torch.Tensor]]) -> None:
    """One host read for every loss since the last one; append each to its style's curve."""
    if not pending:
        return
    # The one device -> host copy per interval (copy=True: a real copy on CPU too, so op counters see the read).
    values = torch.cat([losses for _, losses in pending]).to("cpu", copy=True).tolist()
    k = 0
    for active, _ in pending:
        for r in active:
            r.result.losses.append(values[k])
            k += 1
    pending.clear()


def capture(r: StyleRun, bank: LoraBank, optimizer: SlotAdamW, scaler: torch.amp.GradScaler,
            cfg: TrainConfig) -> Checkpoint:
    assert cfg.alpha is not None
    return capture_slot(r.step, bank, r.slot, optimizer, r.generator, scaler, cfg.optimizer, alpha=cfg.alpha)
