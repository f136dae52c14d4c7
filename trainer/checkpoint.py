"""Per-style training checkpoints as safetensors: the style's adapter slice, its optimizer state, its step count,
its random stream and the loss scaler — no pickle.

One checkpoint holds ONE style, whatever else shared its run: a style resumes into whichever bank slot it gets,
alone or beside others. Tensors: `adapter.<module>.lora_A.weight` / `.lora_B.weight` (the adapter file's keys),
`<state>.<i>` (the optimizer's per-slot state named `<state>` for the i-th targeted layer's A, then B: `exp_avg` /
`exp_avg_sq` for AdamW, `state1` / `state2` for 8-bit AdamW; `absmax1` / `absmax2`, 8-bit AdamW's per-block
scales, one tensor over the bank's flat layout), `rng` (the style's generator state). The JSON header holds the
step, the optimizer, the GradScaler state (empty unless fp16) and `base`: what the adapter slice was trained on
(base fingerprint, base weights hash, rank, alpha), which a resume checks against the model it resumes into.

A checkpoint holds one slot's values, whatever row of the bank they lie in (the trainable bank lays its slots out
by batch row, trainer/bank_train.py `RowPacking`; `slot_params` and `slot_state` read a slot at its row), so the
row layout never reaches the file and did not change its format.

Versions: format 3 (the flat bank layout) reads format 2 AdamW checkpoints unchanged (their per-layer moments are
the same numbers, element for element); a format 2 checkpoint of 8-bit AdamW is refused with its version named
(its absmax blocks ran per layer, not over the flat layout).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .lora import Adapter, AdapterError, AdapterMeta, base_fingerprint, read_safetensors_metadata, weights_hash

if TYPE_CHECKING:
    from .bank import LoraBank
    from .optim import SlotAdamW

logger = logging.getLogger(__name__)

FORMAT = "styledrop-checkpoint-3"  # the flat bank layout (8-bit AdamW's absmax blocks over the flat buffer)
_FORMAT_2 = "styledrop-checkpoint-2"  # per-layer bank tensors: AdamW ones still load (the same per-layer moments)
# 1: one peft adapter with a torch AdamW state dict (before batched training): refused
_STATE_KEY = re.compile(r"([a-z_0-9]+)\.(\d+)")


class CheckpointError(ValueError):
    """The bytes are not a checkpoint this engine wrote, or do not match the model being trained."""


@dataclass
class Checkpoint:
    step: int
    adapter: dict[str, torch.Tensor]  # "<module>.lora_A.weight" -> (r, in), "<module>.lora_B.weight" -> (out, r)
    state: dict[str, list[torch.Tensor]]  # optimizer state name -> one tensor per stacked bank parameter (slice)
    rng_state: torch.Tensor  # the style's generator state
    scaler: dict[str, Any] = field(default_factory=dict)  # torch.amp.GradScaler.state_dict() ({} when disabled)
    optimizer: str = "adamw"  # TrainConfig.optimizer that wrote it (headers without one are from AdamW)
    # What the slice was trained on: base_fingerprint, base_weights, rank, alpha ({} in older checkpoints).
    base: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT  # the header's format: FORMAT or _FORMAT_2

    @classmethod
    def capture(cls, step: int, adapter: dict[str, torch.Tensor], state: dict[str, list[torch.Tensor]],
                generator: torch.Generator, scaler: dict[str, Any] | None = None,
                optimizer: str = "adamw", base: dict[str, str] | None = None) -> Checkpoint:
        """Copy device tensors to host memory (pinned on CUDA, one synchronisation for all of them)."""
        tensors = [*adapter.values(), *(t for ts in state.values() for t in ts)]
        on_cuda = any(t.is_cuda for t in tensors)

        def host(t: torch.Tensor) -> torch.Tensor:
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=on_cuda)
            return out.copy_(t.detach(), non_blocking=on_cuda)

        a = {k: host(v) for k, v in adapter.items()}
        s = {name: [host(t) for t in ts] for name, ts in state.items()}
        if on_cuda:
            torch.cuda.synchronize()
        return cls(step, a, s, generator.get_state().clone(), dict(scaler or {}), optimizer, dict(base or {}))

    def to_bytes(self) -> bytes:
        tensors = {f"adapter.{k}": v.contiguous() for k, v in self.adapter.items()}
        for name, ts in self.state.items():
            tensors.update({f"{name}.{i}": t.contiguous() for i, t in enumerate(ts)})
        tensors["rng"] = self.rng_state
        header = {"format": FORMAT, "step": str(self.step), "scaler": json.dumps(self.scaler),
                  "optimizer": self.optimizer, "base": json.dumps(self.base, sort_keys=True)}
        return st_save(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes, model: torch.nn.Module | None = None) -> Checkpoint:
        """Parse a checkpoint; with `model`, also refuse one recorded for another base (`check_base`)."""
        ckpt = cls._parse(data)
        if model is not None:
            ckpt.check_base(model)
        return ckpt

    @classmethod
    def _parse(cls, data: bytes) -> Checkpoint:
        try:
            header = read_safetensors_metadata(data)
            if header.get("format") not in (FORMAT, _FORMAT_2):
                raise CheckpointError(f"not a Styledrop training checkpoint of format {FORMAT} or {_FORMAT_2} "
                                      f"(found {header.get('format')!r})")
            raw = st_load(data)
            step = int(header["step"])
            scaler = json.loads(header.get("scaler", "{}"))
            base = {str(k): str(v) for k, v in json.loads(header.get("base", "{}")).items()}
        except (ValueError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
        adapter = {k.removeprefix("adapter."): v for k, v in raw.items() if k.startswith("adapter.")}
        indexed: dict[str, dict[int, torch.Tensor]] = {}
        for k, v in raw.items():
            m = _STATE_KEY.fullmatch(k)
            if m:
                indexed.setdefault(m[1], {})[int(m[2])] = v
        try:
            state = {name: [ts[i] for i in range(len(ts))] for name, ts in indexed.items()}
            rng = raw["rng"]
        except KeyError as exc:
            raise CheckpointError(f"incomplete checkpoint: no {exc}") from exc
        return cls(step, adapter, state, rng, scaler, header.get("optimizer", "adamw"), base,
                   header["format"])

    def check_base(self, transformer: torch.nn.Module) -> None:
        """Raise CheckpointError when the checkpoint's record names another base (config or weights) than
        `transformer`: a caller can start over instead of failing the run (older checkpoints have no record)."""
        fp, weights = self.base.get("base_fingerprint"), self.base.get("base_weights")
        if (fp and fp != base_fingerprint(transformer)) or (weights and weights != weights_hash(transformer)):
            raise CheckpointError(f"checkpoint was trained on another base model (fingerprint {fp}, weights hash "
                                  f"{weights}) than the one loaded")

    def check_matches(self, adapter_shapes: dict[str, torch.Size], state_shapes: dict[str, list[torch.Size]],
                      optimizer: str) -> None:
        """Raise CheckpointError unless this checkpoint fits the bank and optimizer being trained."""
        if self.optimizer != optimizer:
            raise CheckpointError(f"checkpoint was written with optimizer '{self.optimizer}'; this run uses "
                                  f"'{optimizer}' (resume with the same optimizer)")
        if self.format != FORMAT and self.optimizer != "adamw":
            raise CheckpointError(f"checkpoint format {self.format} with optimizer '{self.optimizer}' cannot resume "
                                  f"on this engine ({FORMAT}: 8-bit state is blocked over the flat bank layout); "
                                  "restart the style, or resume it with an engine of the older format")
        mine = {k: v.shape for k, v in self.adapter.items()}
        states = {name: [t.shape for t in ts] for name, ts in self.state.items()}
        if mine != adapter_shapes or states != state_shapes:
            raise CheckpointError("checkpoint does not match the adapter being trained (other model or rank)")


def _slot_tensors(bank: LoraBank, slot: int) -> dict[str, torch.Tensor]:
    return {f"{key}.lora_{ab}.weight": t for key, (a, b) in bank.slot_params(slot).items()
            for ab, t in (("A", a), ("B", b))}


def capture_slot(step: int, bank: LoraBank, slot: int, optimizer: SlotAdamW, generator: torch.Generator,
                 scaler: torch.amp.GradScaler, optimizer_name: str, *, alpha: float) -> Checkpoint:
    """One style's checkpoint from its bank slot and optimizer slot, with the record of what it trains on."""
    base = {"base_fingerprint": base_fingerprint(bank.transformer), "base_weights": weights_hash(bank.transformer),
            "rank": str(bank.rank), "alpha": repr(float(alpha))}
    return Checkpoint.capture(step, _slot_tensors(bank, slot), optimizer.slot_state(slot), generator,
                              scaler.state_dict(), optimizer_name, base)


def restore_slot(ckpt: Checkpoint, bank: LoraBank, slot: int, optimizer: SlotAdamW, generator: torch.Generator,
                 scaler: torch.amp.GradScaler, *, alpha: float, optimizer_name: str) -> int:
    """Put a style's checkpoint into `slot`; returns its step. The loss scale is shared by the run: the last
    resumed style's wins (it only moves powers of two, which rescale gradients exactly)."""
    shapes = {k: t.shape for k, t in _slot_tensors(bank, slot).items()}
    state_shapes = {name: [t.shape for t in ts] for name, ts in optimizer.slot_state(slot).items()}
    ckpt.check_matches(shapes, state_shapes, optimizer_name)
    # The checkpoint's own record of its base and LoRA scale, not this run's (older checkpoints have none).
    rec = ckpt.base
    if not rec:
        logger.warning("checkpoint at step %d has no record of its base model: resumed on the strength of its "
                       "shapes alone", ckpt.step)
    try:
        meta = AdapterMeta(base_model="", base_fingerprint=rec.get("base_fingerprint", bank.fingerprint),
                           base_weights=rec.get("base_weights", ""), rank=int(rec.get("rank", bank.rank)),
                           alpha=float(rec.get("alpha", alpha)))
    except ValueError as exc:
        raise CheckpointError(f"unreadable checkpoint record {rec}: {exc}") from exc
    if meta.alpha != alpha:
        raise CheckpointError(f"checkpoint was trained with LoRA alpha {meta.alpha:g}; this run uses {alpha:g} "
                              "(resume with the same alpha)")
    try:
        bank.load(slot, Adapter(ckpt.adapter, meta))
    except AdapterError as exc:
        raise CheckpointError(f"checkpoint does not fit this model: {exc}") from exc
    optimizer.load_slot_state(slot, ckpt.state, ckpt.step)
    generator.set_state(ckpt.rng_state)
    if ckpt.scaler and scaler.is_enabled():
        scaler.load_state_dict(ckpt.scaler)
    return ckpt.step
