"""One style's place in a training run (trainer/train.py `train_styles`): its bank slot, counters, random stream
and result (`Progress`, `TrainResult`: what the callbacks and the caller get); and the host-side helpers the loop
calls on it (the batched loss read, a checkpoint capture, a joining style's data).

A slot is not a style: with continuous batching (`TrainConfig.capacity`, `Callbacks.join`) a style that leaves
gives its slot to the next style that joins, which re-initialises it (bank, optimizer moments, step count).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .checkpoint import Checkpoint, capture_slot
from .contracts.prompts import training_prompt
from .lora import Adapter
from .train_data import StyleBatch, StyleData, prepare_style

if TYPE_CHECKING:
    from .bank import LoraBank
    from .model import AmusedParts
    from .optim import SlotAdamW
    from .train import StyleSpec, TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    step: int  # steps done
    total: int
    loss: float  # the last step's loss (one random mask: noisy)
    learning_rate: float
    steps_per_second: float
    eta_seconds: float
    # The mean loss of the steps since the previous report (steps interval_start..step): the steadier figure
    # `styledrop train` prints, during the run and as its final loss.
    interval_loss: float = float("nan")
    interval_start: int = 0


@dataclass
class TrainResult:
    adapter: Adapter | None  # None when stopped early or failed
    losses: list[float]  # one per step run in this call
    stopped: bool
    step: int  # steps done in total (including those before a resume)
    prompt: str
    seconds: float = 0.0
    error: BaseException | None = field(default=None, repr=False)  # what ended this style, if it failed


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
    reported: int = 0  # len(result.losses) at the last report: where the next report's interval starts

    @classmethod
    def of(cls, index: int, slot: int, spec: StyleSpec, cfg: TrainConfig, device: torch.device) -> StyleRun:
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
        elapsed = time.perf_counter() - self.t0
        sps = (self.step - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / sps if sps > 0 else float("inf")
        losses = self.result.losses
        recent = losses[self.reported:] or losses[-1:]
        start = self.step - len(recent) + 1
        self.reported = len(losses)
        return Progress(self.step, self.total, losses[-1], self.lr, sps, eta, sum(recent) / len(recent), start)


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


def ask_join(join: Callable[[int], Sequence[StyleSpec]], free: int) -> list[StyleSpec]:
    """Up to `free` styles from the `join` callback; a callback that raises adds none (the batch goes on)."""
    try:
        return list(join(free))[:free]
    except Exception:
        logger.exception("join callback failed; no style joins at this step")
        return []


def prepare(parts: AmusedParts, spec: StyleSpec, prompt: str, aesthetic_score: float) -> StyleData:
    """A style's images (or picks with their captions) and prompt, encoded once onto the device."""
    if spec.examples:
        return prepare_style(parts, [e.image for e in spec.examples], prompt, aesthetic_score,
                             captions=[e.caption for e in spec.examples])
    return prepare_style(parts, spec.images, prompt, aesthetic_score)


def stack(data: list[StyleData | None], mask_id: int) -> StyleBatch:
    """The batch by slot (row index slot - 1). A slot no style has taken yet holds a copy of another's data:
    no row is routed to it, it only keeps the indices dense."""
    filler = next(d for d in data if d is not None)
    return StyleBatch([d if d is not None else filler for d in data], mask_id)
