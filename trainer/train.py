"""StyleDrop training: LoRA adapters on the U-ViT's attention Q/K/V, many styles at once over one frozen base.

Read `train_styles` top to bottom: it is the whole loop. One run trains S styles, each its own image(s), prompt,
seed, step count and learning rate, as S rows of one batch; row j goes through its own slot of a LoRA bank, the
loss is the sum of each row's own masked-token mean and the optimizer treats every slot on its own, so a style
trained beside others follows the arithmetic of the same style trained alone (fp32 batch-size rounding aside).
`train_style` is the S = 1 case. What differs from diffusers' examples/amused/train_amused.py, and why:
- images are VQ-encoded and prompts CLIP-encoded ONCE before the loop, and stay on the device, and so does the
  U-ViT's prompt-only conditioning (trainer/uvit_forward.py); masks are drawn on the device from each style's
  own generator; the loss is read back once per progress interval, not every step; the step itself
  (trainer/train_step.py) can be captured as one CUDA graph;
- resuming restores the adapter, the optimizer state, the RNG and the loss scale per style, so the losses after
  a resume equal those of an uninterrupted run (the script's resume adds a second adapter and trains the wrong one);
- the frozen base stays in eval mode (no dropout while training adapters), so there is no dropout RNG to resume;
- the adapter is saved with its alpha (the script's file drops it, see lora.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from PIL import Image

from .bank import LoraBank, find_bank
from .checkpoint import Checkpoint, capture_slot, restore_slot
from .checks import check_training
from .contracts import limits
from .contracts.prompts import training_prompt
from .examples import TrainingExample
from .lora import ENGINE_VERSION, Adapter, AdapterMeta, base_fingerprint, weights_hash
from .model import AmusedParts
from .optim import SlotAdamW
from .optim8bit import SlotAdamW8bit
from .train_data import StyleBatch, StyleData, evaluation_loss, prepare_style
from .train_step import TrainStep

logger = logging.getLogger(__name__)

__all__ = ["Callbacks", "Progress", "StyleData", "StyleSpec", "TrainConfig", "TrainResult", "evaluation_loss",
           "prepare_style", "recipe_for", "train_style", "train_styles", "training_prompt"]


@dataclass
class TrainConfig:
    """Flat defaults: the aMUSEd StyleDrop recipe (aMUSEd report Table 4 and its README "Styledrop" section)."""

    steps: int = limits.DEFAULT_TRAIN_STEPS  # recipe: 1500-2000 steps at batch 1 (a StyleSpec may set its own)
    learning_rate: float | None = None  # None = recipe per base: 4e-4 (256) / 1e-3 (512)
    rank: int = 16  # LoRA rank on every to_q/to_k/to_v
    alpha: float | None = None  # None = recipe per base: 32 (256) / 1 (512); scale = alpha / rank
    weight_decay: float = 1e-2  # AdamW, betas below, constant learning rate (as train_amused.py)
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float | None = None  # per style, never across styles; the recipe does not clip
    seed: int = 0  # drives LoRA init, image choice and masking; training is deterministic on CPU
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # per-slot AdamW (optim.py); 8-bit: CUDA (optim8bit.py)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast on CUDA only
    aesthetic_score: float = 6.0  # micro-conditioning value aMUSEd uses at sampling time
    checkpoint_every: int = 0  # hand a Checkpoint to on_checkpoint every N steps of a style (0 = never)
    # Losses are read back and on_progress called every N steps (and on the last one). Each read waits for the
    # device (a host synchronisation on a GPU), so the default reads rarely; every loss still reaches the result.
    progress_every: int = 50
    offload_encoders: bool = True  # move VQ-GAN and text encoder to CPU while training on an accelerator
    constant_conditioning: bool = True  # prompt-only U-ViT values once per style, not every step (uvit_forward.py)
    cuda_graph: bool = False  # capture the whole step as a CUDA graph, once per batch size (train_step.py)


@dataclass
class StyleSpec:
    """One style of a run. None fields take the TrainConfig's value (steps, seed, learning rate)."""

    images: Sequence[Image.Image]
    descriptor: str
    content: str | None = None
    prompt: str | None = None  # None = training_prompt(descriptor, content); a subject's: subject_prompt(class)
    steps: int | None = None
    seed: int | None = None
    learning_rate: float | None = None
    resume: Checkpoint | None = None
    # (image, caption) pairs to train on instead of `images` under one prompt: a feedback round's picks. Each
    # step picks one of them from the style's own generator, as it picks one of `images`.
    examples: Sequence[TrainingExample] | None = None


@dataclass(frozen=True)
class Progress:
    step: int  # steps done
    total: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float


@dataclass
class Callbacks:
    """Per-style hooks; each gets the style's index in the `styles` list. An exception raised by one ends that
    style only (its result carries the error), never the others."""

    on_progress: Callable[[int, Progress], None] | None = None
    should_stop: Callable[[int], bool] | None = None  # polled every step: make it cheap (a flag, not a query)
    on_checkpoint: Callable[[int, Checkpoint], None] | None = None


@dataclass
class TrainResult:
    adapter: Adapter | None  # None when stopped early or failed
    losses: list[float]  # one per step run in this call
    stopped: bool
    step: int  # steps done in total (including those before a resume)
    prompt: str
    seconds: float = 0.0
    error: BaseException | None = field(default=None, repr=False)  # what ended this style, if it failed


def recipe_for(parts: AmusedParts, config: TrainConfig) -> TrainConfig:
    """Fill learning rate and alpha from the base's recipe: 512 px uses lr 1e-3 with alpha 1, 256 lr 4e-4, alpha 32."""
    is_512 = parts.resolution >= 512
    lr = config.learning_rate if config.learning_rate is not None else (1e-3 if is_512 else 4e-4)
    alpha = config.alpha if config.alpha is not None else (1.0 if is_512 else 32.0)
    return replace(config, learning_rate=lr, alpha=alpha)


def train_style(
    parts: AmusedParts,
    images: Sequence[Image.Image],
    *,
    descriptor: str,
    content: str | None = None,
    config: TrainConfig | None = None,
    resume: Checkpoint | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> TrainResult:
    """Train one StyleDrop adapter: `train_styles` with S = 1. A callback's exception propagates."""
    callbacks = Callbacks(
        on_progress=(lambda _i, p: on_progress(p)) if on_progress else None,
        should_stop=(lambda _i: should_stop()) if should_stop else None,
        on_checkpoint=(lambda _i, c: on_checkpoint(c)) if on_checkpoint else None,
    )
    (result,) = train_styles(parts, [StyleSpec(images, descriptor, content, resume=resume)], config, callbacks)
    if result.error is not None:
        raise result.error
    return result


def train_styles(parts: AmusedParts, styles: Sequence[StyleSpec], config: TrainConfig | None = None,
                 callbacks: Callbacks | None = None) -> list[TrainResult]:
    """Train one adapter per style in shared batches; one TrainResult per style, in order."""
    cfg = recipe_for(parts, config or TrainConfig())
    cb = callbacks or Callbacks()
    device = parts.device
    check_training(cfg, styles, device)  # every value and option, before the model is touched
    assert cfg.learning_rate is not None and cfg.alpha is not None
    n = len(styles)
    runs = [_StyleRun.of(i, spec, cfg, device) for i, spec in enumerate(styles)]
    t_start = time.perf_counter()
    transformer = parts.transformer
    serving = find_bank(transformer)  # one bank per model: a serving bank steps aside and comes back after
    encoders_home = next(parts.vqvae.parameters()).device
    bank: LoraBank | None = None
    # From here on the model is changed (encoders offloaded, the training bank installed): whatever any phase
    # raises, the `finally` below leaves it as it was found, serving bank included.
    try:
        # 1. Encode every style's images and prompt once, onto the device; then free the accelerator of the
        #    encoders.
        batch = StyleBatch([
            prepare_style(parts, [e.image for e in s.examples], r.result.prompt, cfg.aesthetic_score,
                          captions=[e.caption for e in s.examples]) if s.examples
            else prepare_style(parts, s.images, r.result.prompt, cfg.aesthetic_score)
            for s, r in zip(styles, runs, strict=True)], parts.mask_token_id)
        if cfg.offload_encoders and device.type != "cpu":
            parts.vqvae.to("cpu")
            parts.text_encoder.to("cpu")
            torch.cuda.empty_cache()

        # 2. A LoRA bank with one trainable slot per style (slot 0 is the base: zeros). Style i trains slot i + 1,
        #    initialised like peft (B = 0: it starts exactly at the base model) from the style's own seed.
        bank = LoraBank(transformer, n, rank=cfg.rank, trainable=True)
        optimizer_cls = SlotAdamW8bit if cfg.optimizer == "adamw8bit" else SlotAdamW
        optimizer = optimizer_cls(list(bank.parameters()), n + 1, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay, views=bank.state_views)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")  # no-op unless fp16
        for r in runs:
            bank.init_slot(r.slot, torch.Generator().manual_seed(r.seed), alpha=cfg.alpha)
            optimizer.reset_slot(r.slot, r.lr)

        # 3. Resume: per style, adapter slice, optimizer moments, step count, RNG state (and loss scale). A style
        #    whose checkpoint is already at (or past) its step count does not train: its adapter is the
        #    checkpoint's, recorded with the checkpoint's step count.
        for r, spec in zip(runs, styles, strict=True):
            if spec.resume is not None:
                r.step = r.first = restore_slot(spec.resume, bank, r.slot, optimizer, r.generator, scaler,
                                                alpha=cfg.alpha, optimizer_name=cfg.optimizer)
                r.running = r.step < r.total
                logger.info("style %d resumed from step %d of %d", r.index, r.step, r.total)

        pending: list[tuple[list[_StyleRun], torch.Tensor]] = []  # (rows, their losses) since the last read
        active: list[_StyleRun] = []
        t_loop = time.perf_counter()
        transformer.eval()  # frozen base: no dropout while training adapters, so a resume has no dropout RNG
        # 4. The step: prompt-only conditioning computed here, once; eager or captured (train_step.py).
        step = TrainStep(parts, batch, bank, optimizer, scaler, max_grad_norm=cfg.max_grad_norm,
                         autocast_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision),
                         constant_conditioning=cfg.constant_conditioning, cuda_graph=cfg.cuda_graph)
        while any(r.running for r in runs):
            # 5. The batch: one row per running style. Routes (and a captured graph) change only when one leaves.
            if active != [r for r in runs if r.running]:
                active = [r for r in runs if r.running]
                step.set_rows([r.index for r in active], [r.generator for r in active])
            # One step: draw each row's masks, predict, sum each style's own loss, one optimizer step for all.
            pending.append((active, step()))
            for r in active:
                r.step += 1

            # 6. Per style: report (reading the losses back once for everyone), checkpoint, finish or stop.
            if any(r.reports(cfg) for r in active):
                _read_losses(pending)
            for r in active:
                try:
                    if r.step >= r.total:
                        r.running = False  # leaves the batch; its adapter is extracted after the loop
                    if cb.on_progress is not None and r.reports(cfg):
                        cb.on_progress(r.index, r.progress(t_loop))
                    checkpoints = cb.on_checkpoint is not None and cfg.checkpoint_every > 0 and r.step < r.total
                    on_schedule = checkpoints and r.step % cfg.checkpoint_every == 0
                    if on_schedule:
                        cb.on_checkpoint(r.index, _capture(r, bank, optimizer, scaler, cfg))  # type: ignore[misc]
                    if cb.should_stop is not None and r.step < r.total and cb.should_stop(r.index):
                        logger.info("style %d stopped at step %d", r.index, r.step)
                        r.result.stopped, r.running = True, False
                        if checkpoints and not on_schedule:  # a last one where it stopped: a shutdown loses no steps
                            cb.on_checkpoint(r.index, _capture(r, bank, optimizer, scaler, cfg))  # type: ignore[misc]
                except Exception as exc:  # this style's callback failed: it ends; the others go on
                    logger.warning("style %d failed at step %d: %r", r.index, r.step, exc)
                    r.result.error, r.running = exc, False
        _read_losses(pending)
    finally:
        if bank is not None:
            bank.remove()  # leave the base model as we found it
            for p in bank.parameters():
                p.requires_grad_(False)
        if serving is not None:
            serving.install()
        if cfg.offload_encoders and device.type != "cpu":
            parts.vqvae.to(encoders_home)
            parts.text_encoder.to(encoders_home)

    # 7. The adapters of the styles that reached their step count (steps recorded: what the adapter has had).
    assert bank is not None
    fingerprint, weights = base_fingerprint(transformer), weights_hash(transformer)
    for r, spec in zip(runs, styles, strict=True):
        r.result.step, r.result.seconds = r.step, time.perf_counter() - t_start
        if r.step >= r.total and r.result.error is None:
            meta = AdapterMeta(
                base_model=parts.model_id, base_fingerprint=fingerprint, rank=cfg.rank, alpha=float(cfg.alpha),
                base_revision=parts.revision, base_weights=weights, descriptor=spec.descriptor,
                train_prompt=r.result.prompt, steps=r.step, seed=r.seed, engine_version=ENGINE_VERSION,
            )
            r.result.adapter = bank.extract(r.slot, meta)
    return [r.result for r in runs]


@dataclass(eq=False)
class _StyleRun:
    """One style's place in a run: its bank slot (index + 1), counters, random stream and result."""

    index: int
    total: int
    seed: int
    lr: float
    generator: torch.Generator  # masking and image choice, on the model's device
    result: TrainResult
    step: int = 0
    first: int = 0  # the step this call started from (after a resume)
    running: bool = True

    @classmethod
    def of(cls, index: int, spec: StyleSpec, cfg: TrainConfig, device: torch.device) -> _StyleRun:
        seed = spec.seed if spec.seed is not None else cfg.seed
        lr = spec.learning_rate if spec.learning_rate is not None else cfg.learning_rate
        assert lr is not None
        total = spec.steps if spec.steps is not None else cfg.steps
        prompt = spec.prompt or training_prompt(spec.descriptor, spec.content)
        return cls(index, total, seed, lr, torch.Generator(device).manual_seed(seed),
                   TrainResult(None, [], False, 0, prompt))

    @property
    def slot(self) -> int:
        return self.index + 1

    def reports(self, cfg: TrainConfig) -> bool:
        return self.step % max(cfg.progress_every, 1) == 0 or self.step == self.total

    def progress(self, t_loop: float) -> Progress:
        elapsed = time.perf_counter() - t_loop
        sps = (self.step - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / sps if sps > 0 else float("inf")
        return Progress(self.step, self.total, self.result.losses[-1], self.lr, sps, eta)


def _read_losses(pending: list[tuple[list[_StyleRun], torch.Tensor]]) -> None:
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


def _capture(r: _StyleRun, bank: LoraBank, optimizer: SlotAdamW, scaler: torch.amp.GradScaler,
             cfg: TrainConfig) -> Checkpoint:
    assert cfg.alpha is not None
    return capture_slot(r.step, bank, r.slot, optimizer, r.generator, scaler, cfg.optimizer, alpha=cfg.alpha)
