"""Training checkpoints as safetensors: adapter weights, optimizer state, RNG state and step — no pickle.

The optimizer's state dict is flattened: tensors become named tensors (`opt.<param index>.<key>`), everything
else (step counts that are plain numbers, param groups) goes into the JSON header. Works for torch's AdamW and
bitsandbytes' AdamW8bit alike, since both keep only tensors and numbers in their state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .lora import read_safetensors_metadata

FORMAT = "styledrop-checkpoint-1"


class CheckpointError(ValueError):
    """The bytes are not a checkpoint this engine wrote, or do not match the model being trained."""


@dataclass
class Checkpoint:
    step: int
    adapter: dict[str, torch.Tensor]  # parameter name (adapter name replaced by "{a}") -> tensor
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    rng_state: torch.Tensor

    @classmethod
    def capture(cls, step: int, named_params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                generator: torch.Generator, adapter_name: str) -> Checkpoint:
        adapter = {n.replace(f".{adapter_name}.", ".{a}."): p.detach().to("cpu").clone()
                   for n, p in named_params.items()}
        sd = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{idx}.{key}"] = value.detach().to("cpu").clone().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        meta = {"param_groups": sd["param_groups"], "scalars": scalars, "param_names": list(adapter)}
        return cls(step, adapter, tensors, meta, generator.get_state().clone())

    def to_bytes(self) -> bytes:
        tensors = {f"adapter.{k}": v.contiguous() for k, v in self.adapter.items()}
        tensors.update(self.optimizer_tensors)
        tensors["rng"] = self.rng_state
        header = {"format": FORMAT, "step": str(self.step), "optimizer": json.dumps(self.optimizer_meta)}
        return st_save(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        try:
            header = read_safetensors_metadata(data)
            if header.get("format") != FORMAT:
                raise CheckpointError("not a Styledrop training checkpoint")
            raw = st_load(data)
            meta = json.loads(header["optimizer"])
            step = int(header["step"])
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
        adapter = {k.removeprefix("adapter."): v for k, v in raw.items() if k.startswith("adapter.")}
        opt = {k: v for k, v in raw.items() if k.startswith("opt.")}
        return cls(step, adapter, opt, meta, raw["rng"])

    def restore(self, named_params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                generator: torch.Generator, adapter_name: str) -> None:
        with torch.no_grad():
            for n, p in named_params.items():
                key = n.replace(f".{adapter_name}.", ".{a}.")
                if key not in self.adapter or self.adapter[key].shape != p.shape:
                    raise CheckpointError(f"checkpoint does not match the adapter being trained ({key})")
                p.copy_(self.adapter[key])
        state: dict[int, dict[str, Any]] = {}
        for name, value in self.optimizer_tensors.items():
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
        for idx, values in self.optimizer_meta.get("scalars", {}).items():
            state.setdefault(int(idx), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": self.optimizer_meta["param_groups"]})
        generator.set_state(self.rng_state)
