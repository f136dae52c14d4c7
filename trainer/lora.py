"""StyleDrop adapters: LoRA on the U-ViT's attention Q/K/V, the adapter file, and resident adapter slots.

File format (safetensors, never pickle):
- tensors `transformer.<module>.lora_A.weight` / `.lora_B.weight`, the layout diffusers' aMUSEd LoRA loader reads;
- header metadata `lora_adapter_metadata`: JSON `{"transformer.r": .., "transformer.lora_alpha": ..,
  "transformer.target_modules": [..]}`, so that plain diffusers rebuilds the exact LoraConfig (alpha included:
  train_amused.py's files drop it and reload at the wrong strength, docs/amused-notes.md §2);
- header metadata `styledrop`: JSON of `AdapterMeta` (base model, fingerprint, rank, alpha, prompt, steps, ...).

A plain diffusers user loads one with
`UVit2DModel.load_lora_adapter(dir, weight_name="adapter.safetensors", use_safetensors=True)`.

Serving and training do not use peft's modules: `bank.LoraBank` holds many adapters stacked per layer and applies
them per batch row. peft stays where it earns its place: `LoraConfig` for the file's metadata, and the reference
that the bank's output and diffusers' `load_lora_adapter` are checked against in the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

logger = logging.getLogger(__name__)

ENGINE_VERSION = "0.1.0"
TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v")
PREFIX = "transformer"
META_KEY = "styledrop"
DIFFUSERS_META_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
ADAPTER_FILENAME = "adapter.safetensors"


class AdapterError(ValueError):
    """An adapter file is unreadable, or made for another base model, rank or target set."""


@dataclass(frozen=True)
class AdapterMeta:
    base_model: str
    base_fingerprint: str
    rank: int
    alpha: float
    targets: tuple[str, ...] = TARGET_MODULES
    base_revision: str | None = None
    base_weights: str = ""  # weights_hash of the base it was trained on; "" in files older than the check
    descriptor: str = ""
    train_prompt: str = ""
    steps: int = 0
    seed: int = 0
    engine_version: str = ENGINE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterMeta:
        data = json.loads(text)
        data["targets"] = tuple(data.get("targets", TARGET_MODULES))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Adapter:
    """LoRA tensors keyed `<module>.lora_A.weight` (no prefix) plus their metadata."""

    tensors: dict[str, torch.Tensor]
    meta: AdapterMeta
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def to(self, dtype: torch.dtype) -> Adapter:
        return Adapter({k: v.to(dtype) for k, v in self.tensors.items()}, self.meta, dict(self.extra))


def lora_config(rank: int, alpha: float, targets: Sequence[str] = TARGET_MODULES) -> LoraConfig:
    """The StyleDrop adapter of the aMUSEd port: LoRA on every attention Q/K/V (168 linears on the real U-ViT)."""
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")


def base_fingerprint(transformer: torch.nn.Module) -> str:
    """A short hash of the U-ViT config: 256 and 512 have LoRA layers of identical shapes, so shapes can't tell."""
    config: dict[str, Any] = dict(getattr(transformer, "config", {}))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


_WEIGHTS_ATTR = "_styledrop_weights_hash"  # where a model keeps its weights' hash (plain attribute, not state)


def weights_hash(transformer: torch.nn.Module, *, recompute: bool = False) -> str:
    """A content hash of the U-ViT's weights: sha256 over every state-dict entry (name, shape, values rounded to
    bfloat16), first 16 hex digits. Two bases with the same config but other weights (a fine-tune, another
    release) differ here, where `base_fingerprint` cannot tell them apart.

    Values are hashed at bfloat16 precision so that one set of weights loaded in float32 or bfloat16 has one
    identity (a bfloat16 load rounds exactly as `.to(torch.bfloat16)` does); a float16 copy is other weights.
    `load_base` records it once at load time (`recompute=True`; ≈1 s per GB of weights on a CPU) and later calls
    read the record: the engine never changes a base's weights (adapters live in a LoRA bank beside them).
    """
    cached = transformer.__dict__.get(_WEIGHTS_ATTR)
    if isinstance(cached, str) and not recompute:
        return cached
    h = hashlib.sha256()
    for name, t in sorted(transformer.state_dict().items()):
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.bfloat16).view(torch.int16)  # its bits: numpy has no bfloat16
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
    digest = h.hexdigest()[:16]
    transformer.__dict__[_WEIGHTS_ATTR] = digest
    return digest


def extract_adapter(transformer: torch.nn.Module, adapter_name: str, meta: AdapterMeta) -> Adapter:
    """Copy one named adapter's LoRA weights out of a model (detached, on CPU, float32)."""
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    tensors = {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in state.items()}
    return Adapter(tensors, meta)


# --- the file ------------------------------------------------------------------------------------------------


def adapter_to_bytes(adapter: Adapter, dtype: torch.dtype | None = None) -> bytes:
    tensors = {f"{PREFIX}.{k}": (v.to(dtype) if dtype else v).contiguous() for k, v in adapter.tensors.items()}
    peft_meta = {
        f"{PREFIX}.r": adapter.meta.rank,
        f"{PREFIX}.lora_alpha": adapter.meta.alpha,
        f"{PREFIX}.target_modules": list(adapter.meta.targets),
        f"{PREFIX}.lora_dropout": 0.0,
        f"{PREFIX}.bias": "none",
    }
    metadata = {
        "format": "pt",
        DIFFUSERS_META_KEY: json.dumps(peft_meta, sort_keys=True),
        META_KEY: adapter.meta.to_json(),
        **adapter.extra,
    }
    return st_save(tensors, metadata=metadata)


def save_adapter(adapter: Adapter, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Write the adapter file atomically. A directory path gets `adapter.safetensors` inside it."""
    p = Path(path)
    if p.is_dir() or p.suffix != ".safetensors":
        p.mkdir(parents=True, exist_ok=True)
        p = p / ADAPTER_FILENAME
    data = adapter_to_bytes(adapter, dtype)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its JSON header without loading any tensor.

    Raises ValueError when `data` is not a safetensors file.
    """
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("not a safetensors file: bad header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise ValueError("not a safetensors file: unreadable header") from exc
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    return {str(k): str(v) for k, v in meta.items()}


def adapter_from_bytes(data: bytes) -> Adapter:
    """Parse an adapter file (safetensors only; pickle is never an option)."""
    try:
        meta_text = read_safetensors_metadata(data)
    except ValueError as exc:
        raise AdapterError(str(exc)) from exc
    if META_KEY not in meta_text:
        raise AdapterError("not a Styledrop adapter: the file has no 'styledrop' metadata")
    try:
        meta = AdapterMeta.from_json(meta_text[META_KEY])
        raw = st_load(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise AdapterError(f"unreadable adapter file: {exc}") from exc
    prefix = PREFIX + "."
    tensors = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
    if not tensors or len(tensors) != len(raw):
        raise AdapterError("unexpected tensor names in adapter file (expected 'transformer.*.lora_A/B.weight')")
    extra = {k: v for k, v in meta_text.items() if k not in {"format", META_KEY, DIFFUSERS_META_KEY}}
    return Adapter(tensors, meta, extra)


def load_adapter(path: str | os.PathLike[str]) -> Adapter:
    p = Path(path)
    if p.is_dir():
        p = p / ADAPTER_FILENAME
    if not p.is_file():
        raise AdapterError(f"adapter file not found: {p}")
    return adapter_from_bytes(p.read_bytes())


def check_compatible(adapter: Adapter, transformer: torch.nn.Module, *, rank: int | None = None,
                     targets: Sequence[str] | None = None) -> None:
    """Raise AdapterError unless `adapter` was made for this base model (and this slot layout, if given)."""
    meta = adapter.meta
    fp = base_fingerprint(transformer)
    if meta.base_fingerprint != fp:
        raise AdapterError(
            f"adapter was trained for base model '{meta.base_model}' (fingerprint {meta.base_fingerprint}), "
            f"but the loaded base model has fingerprint {fp}"
        )
    if meta.base_weights and meta.base_weights != weights_hash(transformer):
        raise AdapterError(
            f"adapter was trained on other weights of base model '{meta.base_model}' (weights hash "
            f"{meta.base_weights}), but the loaded base model's weights hash to {weights_hash(transformer)}"
        )
    if not meta.base_weights:
        logger.warning("adapter for '%s' (engine %s) has no record of its base's weights: loaded on the strength of "
                       "its config alone; retrain it to have its base checked", meta.base_model, meta.engine_version)
    if rank is not None and meta.rank != rank:
        raise AdapterError(f"adapter has LoRA rank {meta.rank}, but the slots hold rank {rank}")
    if targets is not None and tuple(sorted(meta.targets)) != tuple(sorted(targets)):
        raise AdapterError(f"adapter targets {list(meta.targets)}, but the slots target {list(targets)}")


def lora_layers(transformer: torch.nn.Module) -> dict[str, LoraLayer]:
    """peft's LoRA layers in a model (after `add_adapter`): the reference implementation in tests and benchmarks."""
    return {name: m for name, m in transformer.named_modules() if isinstance(m, LoraLayer)}
