"""Per-style training checkpoints as safetensors: the style's adapter slice, its AdamW moments, its step count,
its random stream and the loss scaler — no pickle.

One checkpoint holds ONE style, whatever else shared its run: a style resumes into whichever bank slot it gets,
alone or beside others. Tensors: `adapter.<module>.lora_A.weight` / `.lora_B.weight` (the adapter file's keys),
`exp_avg.<i>` / `exp_avg_sq.<i>` (the i-th stacked bank parameter's moments for this slot), `rng` (the style's
generator state). The JSON header holds the step and the GradScaler state (empty unless fp16).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .lora import read_safetensors_metadata

FORMAT = "styledrop-checkpoint-2"  # 1: one peft adapter with a torch AdamW state dict (before batched training)


class CheckpointError(ValueError):
    """The bytes are not a checkpoint this engine wrote, or do not match the model being trained."""


@dataclass
class Checkpoint:
    step: int
    adapter: dict[str, torch.Tensor]  # "<module>.lora_A.weight" -> (r, in), "<module>.lora_B.weight" -> (out, r)
    exp_avg: list[torch.Tensor]  # one per stacked bank parameter, this slot's slice
    exp_avg_sq: list[torch.Tensor]
    rng_state: torch.Tensor  # the style's generator state
    scaler: dict[str, Any] = field(default_factory=dict)  # torch.amp.GradScaler.state_dict() ({} when disabled)

    @classmethod
    def capture(cls, step: int, adapter: dict[str, torch.Tensor], exp_avg: list[torch.Tensor],
                exp_avg_sq: list[torch.Tensor], generator: torch.Generator,
                scaler: dict[str, Any] | None = None) -> Checkpoint:
        """Copy device tensors to host memory (pinned on CUDA, one synchronisation for all of them)."""
        tensors = [*adapter.values(), *exp_avg, *exp_avg_sq]
        on_cuda = any(t.is_cuda for t in tensors)

        def host(t: torch.Tensor) -> torch.Tensor:
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=on_cuda)
            return out.copy_(t.detach(), non_blocking=on_cuda)

        a = {k: host(v) for k, v in adapter.items()}
        m, v = [host(t) for t in exp_avg], [host(t) for t in exp_avg_sq]
        if on_cuda:
            torch.cuda.synchronize()
        return cls(step, a, m, v, generator.get_state().clone(), dict(scaler or {}))

    def to_bytes(self) -> bytes:
        tensors = {f"adapter.{k}": v.contiguous() for k, v in self.adapter.items()}
        tensors.update({f"exp_avg.{i}": t.contiguous() for i, t in enumerate(self.exp_avg)})
        tensors.update({f"exp_avg_sq.{i}": t.contiguous() for i, t in enumerate(self.exp_avg_sq)})
        tensors["rng"] = self.rng_state
        header = {"format": FORMAT, "step": str(self.step), "scaler": json.dumps(self.scaler)}
        return st_save(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        try:
            header = read_safetensors_metadata(data)
            if header.get("format") != FORMAT:
                raise CheckpointError(f"not a Styledrop training checkpoint of format {FORMAT} "
                                      f"(found {header.get('format')!r})")
            raw = st_load(data)
            step = int(header["step"])
            scaler = json.loads(header.get("scaler", "{}"))
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
        adapter = {k.removeprefix("adapter."): v for k, v in raw.items() if k.startswith("adapter.")}
        n = sum(1 for k in raw if k.startswith("exp_avg."))
        try:
            m = [raw[f"exp_avg.{i}"] for i in range(n)]
            v = [raw[f"exp_avg_sq.{i}"] for i in range(n)]
            rng = raw["rng"]
        except KeyError as exc:
            raise CheckpointError(f"incomplete checkpoint: no {exc}") from exc
        return cls(step, adapter, m, v, rng, scaler)

    def check_matches(self, adapter_shapes: dict[str, torch.Size], moment_shapes: list[torch.Size]) -> None:
        """Raise CheckpointError unless this checkpoint fits the bank being trained (same layers, rank)."""
        mine = {k: v.shape for k, v in self.adapter.items()}
        if mine != adapter_shapes or [t.shape for t in self.exp_avg] != moment_shapes:
            raise CheckpointError("checkpoint does not match the adapter being trained (other model or rank)")
