"""StyleDrop training: LoRA adapters on the U-ViT's attention Q/K/V, many styles at once over one frozen base.

Read `train_styles` top to bottom: it is the whole loop. One run trains S styles, each its own image(s), prompt,
seed, step count and learning rate, as S rows of one batch; row j goes through its own slot of a LoRA bank, the
loss is the sum of each row's own masked-token mean and the optimizer treats every slot on its own, so a style
trained beside others follows the arithmetic of the same style trained alone (fp32 batch-size rounding aside).
`train_style` is the S = 1 case. What differs from diffusers' examples/amused/train_amused.py, and why:
- images are VQ-encoded and prompts CLIP-encoded ONCE before the loop, and stay on the device; masks are drawn on
  the device from each style's own generator; the loss is read back once per progress interval, not every step;
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
from .checkpoint import Checkpoint
from .lora import ENGINE_VERSION, Adapter, AdapterMeta, base_fingerprint
from .model import AmusedParts
from .optim import SlotAdamW
from .train_data import StyleBatch, StyleData, evaluation_loss, prepare_style, row_losses

logger = logging.getLogger(__name__)

__all__ = ["Callbacks", "Progress", "StyleData", "StyleSpec", "TrainConfig", "TrainResult", "evaluation_loss",
           "prepare_style", "recipe_for", "train_style", "train_styles", "training_prompt"]


@dataclass
class TrainConfig:
    """Flat defaults: the aMUSEd StyleDrop recipe (aMUSEd report Table 4 and its README "Styledrop" section)."""

    steps: int = 1500  # recipe: 1500-2000 steps at batch 1 (per style: a StyleSpec may set its own)
    learning_rate: float | None = None  # None = recipe per base: 4e-4 (256) / 1e-3 (512)
    rank: int = 16  # LoRA rank on every to_q/to_k/to_v
    alpha: float | None = None  # None = recipe per base: 32 (256) / 1 (512); scale = alpha / rank
    weight_decay: float = 1e-2  # AdamW, betas below, constant learning rate (as train_amused.py)
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float | None = None  # per style, never across styles; the recipe does not clip
    seed: int = 0  # drives LoRA init, image choice and masking; training is deterministic on CPU
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # per-slot AdamW over the bank (trainer/optim.py)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast on CUDA only
    aesthetic_score: float = 6.0  # micro-conditioning value aMUSEd uses at sampling time
    checkpoint_every: int = 0  # hand a Checkpoint to on_checkpoint every N steps of a style (0 = never)
    progress_every: int = 1  # losses are read back and on_progress called every N steps (and on the last one)
    offload_encoders: bool = True  # move VQ-GAN and text encoder to CPU while training on an accelerator


@dataclass
class StyleSpec:
    """One style of a run. None fields take the TrainConfig's value (steps, seed, learning rate)."""

    images: Sequence[Image.Image]
    descriptor: str
    content: str | None = None
    steps: int | None = None
    seed: int | None = None
    learning_rate: float | None = None
    resume: Checkpoint | None = None


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


def training_prompt(descriptor: str, content: str | None = None) -> str:
    """StyleDrop's prompt form "⟨content⟩ in ⟨style descriptor⟩ style" (arXiv 2306.00983, §3)."""
    descriptor = descriptor.strip()
    if descriptor.lower().endswith(" style"):
        descriptor = descriptor[: -len(" style")].rstrip()
    subject = (content or "").strip() or "an image"
    return f"{subject} in {descriptor} style"


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
    assert cfg.learning_rate is not None and cfg.alpha is not None
    if not styles:
        raise ValueError("at least one style is needed")
    device = parts.device
    if cfg.mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed_precision '{cfg.mixed_precision}' needs a CUDA device; use 'no' on CPU")
    if cfg.optimizer != "adamw":  # bitsandbytes quantises moments in blocks that would span styles' slots
        raise ValueError(f"optimizer '{cfg.optimizer}' needs a CUDA device (bitsandbytes) and is not supported by "
                         "the batched trainer; use 'adamw'")
    if min((s.steps if s.steps is not None else cfg.steps) for s in styles) < 1:
        raise ValueError("steps must be >= 1")
    n = len(styles)
    runs = [_StyleRun.of(i, spec, cfg, device) for i, spec in enumerate(styles)]
    t_start = time.perf_counter()

    # 1. Encode every style's images and prompt once, onto the device; then free the accelerator of the encoders.
    batch = StyleBatch([prepare_style(parts, s.images, r.result.prompt, cfg.aesthetic_score)
                        for s, r in zip(styles, runs, strict=True)], parts.mask_token_id)
    encoders_home = next(parts.vqvae.parameters()).device
    if cfg.offload_encoders and device.type != "cpu":
        parts.vqvae.to("cpu")
        parts.text_encoder.to("cpu")
        torch.cuda.empty_cache()

    # 2. A LoRA bank with one trainable slot per style (slot 0 is the base: zeros). Style i trains slot i + 1,
    #    initialised like peft (B = 0: it starts exactly at the base model) from the style's own seed.
    transformer = parts.transformer
    serving = find_bank(transformer)  # one bank per model: a serving bank steps aside and comes back after
    bank = LoraBank(transformer, n, rank=cfg.rank, trainable=True)
    optimizer = SlotAdamW(list(bank.parameters()), n + 1, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")  # a no-op unless fp16
    for r in runs:
        bank.init_slot(r.slot, torch.Generator().manual_seed(r.seed), alpha=cfg.alpha)
        optimizer.reset_slot(r.slot, r.lr)

    # 3. Resume: per style, adapter slice, optimizer moments, step count, RNG state (and loss scale).
    for r, spec in zip(runs, styles, strict=True):
        if spec.resume is not None:
            r.step = r.first = _restore(spec.resume, r.slot, bank, optimizer, r.generator, scaler, cfg.alpha)
            logger.info("style %d resumed from step %d", r.index, r.step)

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    pending: list[tuple[list[_StyleRun], torch.Tensor]] = []  # (rows, their losses) since the last read-back
    active: list[_StyleRun] = []
    rows = torch.empty(0)
    t_loop = time.perf_counter()
    transformer.eval()  # frozen base: no dropout while training adapters, so a resume has no dropout RNG to restore
    try:
        while any(r.running for r in runs):
            # 4. The batch: one row per running style. Device index tensors change only when a style leaves.
            if active != [r for r in runs if r.running]:
                active = [r for r in runs if r.running]
                rows = torch.tensor([r.index for r in active], device=device)  # (S,) style of each row
                bank.set_rows(rows + 1)
                optimizer.set_active(torch.zeros(n + 1, device=device).index_fill_(0, rows + 1, 1.0))
            # 5. One step: draw each row's masks, predict, sum each style's own loss, one optimizer step for all.
            step_inputs = batch.draw(rows, [r.generator for r in active])
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses = row_losses(parts, step_inputs, batch.grid)  # (S,)
            scaler.scale(losses.sum()).backward()
            if cfg.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                optimizer.clip_slots_(cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            pending.append((active, losses.detach()))
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
                        cb.on_checkpoint(r.index, _capture(r, bank, optimizer, scaler))  # type: ignore[misc]
                    if cb.should_stop is not None and r.step < r.total and cb.should_stop(r.index):
                        logger.info("style %d stopped at step %d", r.index, r.step)
                        r.result.stopped, r.running = True, False
                        if checkpoints and not on_schedule:  # a last one where it stopped: a shutdown loses no steps
                            cb.on_checkpoint(r.index, _capture(r, bank, optimizer, scaler))  # type: ignore[misc]
                except Exception as exc:  # this style's callback failed: it ends; the others go on
                    logger.warning("style %d failed at step %d: %r", r.index, r.step, exc)
                    r.result.error, r.running = exc, False
        _read_losses(pending)
    finally:
        bank.remove()  # leave the base model as we found it
        if serving is not None:
            serving.install()
        for p in bank.parameters():
            p.requires_grad_(False)
        if cfg.offload_encoders and device.type != "cpu":
            parts.vqvae.to(encoders_home)
            parts.text_encoder.to(encoders_home)

    # 7. The adapters of the styles that reached their step count.
    fingerprint = base_fingerprint(transformer)
    for r, spec in zip(runs, styles, strict=True):
        r.result.step, r.result.seconds = r.step, time.perf_counter() - t_start
        if r.step >= r.total and r.result.error is None:
            meta = AdapterMeta(
                base_model=parts.model_id, base_fingerprint=fingerprint, rank=cfg.rank, alpha=float(cfg.alpha),
                base_revision=parts.revision, descriptor=spec.descriptor, train_prompt=r.result.prompt,
                steps=r.total, seed=r.seed, engine_version=ENGINE_VERSION,
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
        prompt = training_prompt(spec.descriptor, spec.content)
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


def _slot_meta(bank: LoraBank, rank: int, alpha: float) -> AdapterMeta:
    """The metadata a checkpoint's adapter slice is loaded with (only rank, alpha and the base are checked)."""
    return AdapterMeta(base_model="", base_fingerprint=base_fingerprint(bank.transformer), rank=rank, alpha=alpha)


def _capture(r: _StyleRun, bank: LoraBank, optimizer: SlotAdamW, scaler: torch.amp.GradScaler) -> Checkpoint:
    weights = {f"{key}.lora_{ab}.weight": t for key, (a, b) in bank.slot_params(r.slot).items()
               for ab, t in (("A", a), ("B", b))}
    exp_avg, exp_avg_sq = optimizer.slot_state(r.slot)
    return Checkpoint.capture(r.step, weights, exp_avg, exp_avg_sq, r.generator, scaler.state_dict())


def _restore(ckpt: Checkpoint, slot: int, bank: LoraBank, optimizer: SlotAdamW, generator: torch.Generator,
             scaler: torch.amp.GradScaler, alpha: float) -> int:
    """Put a style's checkpoint into `slot`; returns its step. The loss scale is shared by the run: the last
    resumed style's wins (it only moves powers of two, which rescale gradients exactly)."""
    exp_avg, _ = optimizer.slot_state(slot)
    shapes = {f"{key}.lora_{ab}.weight": t.shape for key, (a, b) in bank.slot_params(slot).items()
              for ab, t in (("A", a), ("B", b))}
    ckpt.check_matches(shapes, [t.shape for t in exp_avg])
    bank.load(slot, Adapter(ckpt.adapter, _slot_meta(bank, bank.rank, alpha)))
    optimizer.load_slot_state(slot, ckpt.exp_avg, ckpt.exp_avg_sq)
    optimizer.steps[slot] = float(ckpt.step)
    generator.set_state(ckpt.rng_state)
    if ckpt.scaler and scaler.is_enabled():
        scaler.load_state_dict(ckpt.scaler)
    return ckpt.step
