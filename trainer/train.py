"""StyleDrop training: LoRA adapters on the U-ViT's attention Q/K/V, many styles at once over one frozen base.

Read `train_styles` top to bottom: it is the whole loop. One run trains S styles, each its own image(s), prompt,
seed, step count and learning rate, as S rows of one batch; row j goes through its own slot of a LoRA bank, the
loss is the sum of each row's own masked-token mean and the optimizer treats every slot on its own, so a style
trained beside others follows the arithmetic of the same style trained alone (fp32 batch-size rounding aside).
`train_style` is the S = 1 case. The set of styles is not fixed: with room in the bank (`TrainConfig.capacity`) a
style that `Callbacks.join` hands in at a step boundary takes a free slot (re-initialised from its own seed or
checkpoint) and one that finishes, stops or fails leaves with its adapter (`Callbacks.on_done`): continuous
batching, each style still trained as it would be alone.
What differs from diffusers' examples/amused/train_amused.py, and why:
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
from dataclasses import dataclass, replace
from typing import Literal

import torch
from PIL import Image

from .bank import LoraBank, find_bank
from .checkpoint import Checkpoint, restore_slot
from .checks import check_training
from .contracts import limits
from .contracts.prompts import training_prompt
from .examples import TrainingExample
from .lora import ENGINE_VERSION, AdapterMeta, base_fingerprint, weights_hash
from .model import AmusedParts
from .optim import SlotAdamW
from .optim8bit import SlotAdamW8bit
from .train_data import StyleData, evaluation_loss, prepare_style
from .train_runs import Progress, StyleRun, TrainResult, ask_join, capture, prepare, read_losses, stack
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
    # Bank slots: 0 = one per given style. More leaves room for styles that `Callbacks.join` adds while the run
    # trains (continuous batching: a style joins at a step boundary instead of waiting for the whole run).
    capacity: int = 0
    join_every: int = 1  # ask `Callbacks.join` (when a slot is free) every N steps of the run


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


@dataclass
class Callbacks:
    """Per-style hooks; each gets the style's index: its place in `styles`, or for a style `join` added, the next
    index in the order they joined. An exception raised by one ends that style only (its result carries the
    error), never the others; one raised by `join` or `on_done` is logged and ends nothing."""

    on_progress: Callable[[int, Progress], None] | None = None
    should_stop: Callable[[int], bool] | None = None  # polled every step: make it cheap (a flag, not a query)
    on_checkpoint: Callable[[int, Checkpoint], None] | None = None
    # Continuous batching: asked at a step boundary (every TrainConfig.join_every steps) whenever a slot is free
    # (TrainConfig.capacity) for up to that many more styles; each joined style trains exactly as it would alone.
    join: Callable[[int], Sequence[StyleSpec]] | None = None
    # Each style's result the moment it leaves the run (finished, stopped or failed), adapter included; called
    # with the model as it was found (training bank aside, serving bank back), so it may sample with the adapter.
    on_done: Callable[[int, TrainResult], None] | None = None


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
    """Train one adapter per style in shared batches; one TrainResult per style, in order: the given styles,
    then each style `callbacks.join` added, in the order it joined."""
    cfg = recipe_for(parts, config or TrainConfig())
    cb = callbacks or Callbacks()
    device = parts.device
    check_training(cfg, styles, device)  # every value and option, before the model is touched
    assert cfg.learning_rate is not None and cfg.alpha is not None
    capacity = max(len(styles), cfg.capacity)  # bank slots: the given styles, or more for styles that join
    runs = [StyleRun.of(i, i + 1, spec, cfg, device) for i, spec in enumerate(styles)]
    t_start = time.perf_counter()
    transformer = parts.transformer
    serving = find_bank(transformer)  # one bank per model: a serving bank steps aside and comes back after
    encoders_home = next(parts.vqvae.parameters()).device
    fingerprint, weights = base_fingerprint(transformer), weights_hash(transformer)  # what each adapter records
    bank: LoraBank | None = None
    # From here on the model is changed (encoders offloaded, the training bank installed): whatever any phase
    # raises, the `finally` below leaves it as it was found, serving bank included.
    try:
        # 1. Encode every style's images and prompt once, onto the device; then free the accelerator of the
        #    encoders. `data[slot - 1]` is what the style in that slot trains on (a style joining later is
        #    encoded where the encoders are then).
        data: list[StyleData | None] = [None] * capacity
        for r, spec in zip(runs, styles, strict=True):
            data[r.slot - 1] = prepare(parts, spec, r.result.prompt, cfg.aesthetic_score)
        batch = stack(data, parts.mask_token_id)
        if cfg.offload_encoders and device.type != "cpu":
            parts.vqvae.to("cpu")
            parts.text_encoder.to("cpu")
            torch.cuda.empty_cache()

        # 2. A LoRA bank with one trainable slot per style (slot 0 is the base: zeros). Style i trains slot i + 1,
        #    initialised like peft (B = 0: it starts exactly at the base model) from the style's own seed.
        bank = LoraBank(transformer, capacity, rank=cfg.rank, trainable=True)
        optimizer_cls = SlotAdamW8bit if cfg.optimizer == "adamw8bit" else SlotAdamW
        # Its state is laid out by the bank's rows (`bank.packing`): repacked with the weights when the set changes.
        optimizer = optimizer_cls(list(bank.parameters()), capacity + 1, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay, views=bank.state_views, packing=bank.packing)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")  # no-op unless fp16
        reroute = False  # whether the bank's routes were cleared (on_done's hand-over) and must be set again

        # 3. Each style's start: a fresh slot from its own seed, or its resume checkpoint (adapter slice,
        #    optimizer moments, step count, RNG state and loss scale). A style whose checkpoint is already at (or
        #    past) its step count does not train: its adapter is the checkpoint's, with the checkpoint's steps.
        def start(r: StyleRun, spec: StyleSpec) -> None:
            assert cfg.alpha is not None
            bank.init_slot(r.slot, torch.Generator().manual_seed(r.seed), alpha=cfg.alpha)
            optimizer.reset_slot(r.slot, r.lr)
            if spec.resume is not None:
                r.step = r.first = restore_slot(spec.resume, bank, r.slot, optimizer, r.generator, scaler,
                                                alpha=cfg.alpha, optimizer_name=cfg.optimizer)
                r.running = r.step < r.total
                logger.info("style %d resumed from step %d of %d", r.index, r.step, r.total)
            r.t0 = time.perf_counter()

        # A style leaves: its adapter (when it reached its step count) is taken out of its slot now, before a
        # joining style re-initialises the slot; `on_done` hears of it at once.
        def leave(r: StyleRun) -> None:
            r.result.step, r.result.seconds = r.step, time.perf_counter() - r.created
            if r.step >= r.total and r.result.error is None:
                meta = AdapterMeta(
                    base_model=parts.model_id, base_fingerprint=fingerprint, rank=cfg.rank,
                    alpha=float(cfg.alpha or 0), base_revision=parts.revision, base_weights=weights,
                    descriptor=specs[r.index].descriptor, train_prompt=r.result.prompt, steps=r.step, seed=r.seed,
                    engine_version=ENGINE_VERSION)
                r.result.adapter = bank.extract(r.slot, meta)
            if cb.on_done is not None:
                hand_over(r)

        # `on_done` runs with the model as it was found (the training bank aside, the serving bank and the
        # encoders back), so the listener may sample with the adapter it was just given (a job's previews).
        def hand_over(r: StyleRun) -> None:
            nonlocal serving, reroute
            assert bank is not None and cb.on_done is not None
            bank.remove()
            if serving is not None:
                serving.install()
            offloaded = cfg.offload_encoders and device.type != "cpu"
            if offloaded:
                parts.vqvae.to(encoders_home)
                parts.text_encoder.to(encoders_home)
            try:
                cb.on_done(r.index, r.result)
            except Exception:  # the result stands (it is also returned); a listener's bug ends nothing
                logger.exception("on_done failed for style %d", r.index)
            finally:
                if offloaded:
                    parts.vqvae.to("cpu")
                    parts.text_encoder.to("cpu")
                serving = find_bank(transformer) or serving  # a bank the listener installed is put back at the end
                bank.install()
                reroute = True  # removing the bank cleared its routes

        specs = list(styles)
        for r, spec in zip(runs, styles, strict=True):
            start(r, spec)
        for r in runs:
            if not r.running:
                leave(r)

        pending: list[tuple[list[StyleRun], torch.Tensor]] = []  # (rows, their losses) since the last read
        active: list[StyleRun] = []
        steps_run = 0
        transformer.eval()  # frozen base: no dropout while training adapters, so a resume has no dropout RNG
        # 4. The step: prompt-only conditioning computed here, once per set of styles; eager or captured.
        step = TrainStep(parts, batch, bank, optimizer, scaler, max_grad_norm=cfg.max_grad_norm,
                         autocast_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision),
                         constant_conditioning=cfg.constant_conditioning, cuda_graph=cfg.cuda_graph)
        while True:
            # 5. Continuous batching, at the step boundary: styles that `join` asks in take the free slots (a
            #    slot a finished, stopped or failed style left), each from its own seed or checkpoint.
            free = sorted(set(range(1, capacity + 1)) - {r.slot for r in runs if r.running})
            asks = cb.join is not None and bool(free) and steps_run % cfg.join_every == 0
            joined = ask_join(cb.join, len(free)) if asks and cb.join is not None else []
            for spec, slot in zip(joined, free, strict=False):
                r = StyleRun.of(len(runs), slot, spec, cfg, device)
                runs.append(r)
                specs.append(spec)
                try:  # a joiner that cannot start (bad values, unreadable checkpoint) ends alone
                    check_training(cfg, [spec], device)
                    data[slot - 1] = prepare(parts, spec, r.result.prompt, cfg.aesthetic_score)
                    start(r, spec)
                    logger.info("style %d joined in slot %d", r.index, slot)
                except Exception as exc:
                    logger.warning("style %d could not join: %r", r.index, exc)
                    r.result.error, r.running = exc, False
                if not r.running:
                    leave(r)
            if joined:
                step.set_batch(stack(data, parts.mask_token_id))
            if not any(r.running for r in runs):
                break
            # 6. The batch: one row per running style. Routes (and a captured graph) change only when the set
            #    of styles does; so does the bank's row layout (weights and optimizer state repacked so that row
            #    j of the batch is row j of every trainable tensor: no gather or scatter in the steps between).
            if active != [r for r in runs if r.running] or joined or reroute:
                reroute = False
                active = [r for r in runs if r.running]
                step.set_rows([r.slot - 1 for r in active], [r.generator for r in active])
            # One step: draw each row's masks, predict, sum each style's own loss, one optimizer step for all.
            pending.append((active, step()))
            steps_run += 1
            for r in active:
                r.step += 1

            # 7. Per style: report (reading the losses back once for everyone), checkpoint, finish or stop.
            if any(r.reports(cfg) for r in active):
                read_losses(pending)
            for r in active:
                try:
                    if r.step >= r.total:
                        r.running = False  # leaves the batch, with its adapter (below)
                    if cb.on_progress is not None and r.reports(cfg):
                        cb.on_progress(r.index, r.progress())
                    checkpoints = cb.on_checkpoint is not None and cfg.checkpoint_every > 0 and r.step < r.total
                    on_schedule = checkpoints and r.step % cfg.checkpoint_every == 0
                    if on_schedule:
                        cb.on_checkpoint(r.index, capture(r, bank, optimizer, scaler, cfg))  # type: ignore[misc]
                    if cb.should_stop is not None and r.step < r.total and cb.should_stop(r.index):
                        logger.info("style %d stopped at step %d", r.index, r.step)
                        r.result.stopped, r.running = True, False
                        if checkpoints and not on_schedule:  # a last one where it stopped: a shutdown loses no steps
                            cb.on_checkpoint(r.index, capture(r, bank, optimizer, scaler, cfg))  # type: ignore[misc]
                except Exception as exc:  # this style's callback failed: it ends; the others go on
                    logger.warning("style %d failed at step %d: %r", r.index, r.step, exc)
                    r.result.error, r.running = exc, False
            leaving = [r for r in active if not r.running]
            if leaving:
                read_losses(pending)  # its curve is complete when it leaves
                for r in leaving:
                    leave(r)
        read_losses(pending)
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
    logger.debug("run of %d styles took %.1f s", len(runs), time.perf_counter() - t_start)
    return [r.result for r in runs]
