"""The StyleDrop engine for aMUSEd: pure torch. No settings, databases or HTTP: dataclass configs and callbacks.

Public API:
- model:      load_base, build_tiny, ensure_tiny, AmusedParts, ModelLoadError
- train:      train_style, train_styles, StyleSpec, Callbacks, TrainConfig, Progress, TrainResult
- sampler:    sample, GenerationRequest, SampleResult, SamplingError
- lora:       Adapter, AdapterMeta, save_adapter, load_adapter, adapter_to_bytes, adapter_from_bytes, AdapterError
- bank:       LoraBank (resident adapters applied per batch row), find_bank, slot_bytes, default_capacity
- capture:    OpCounter (aten ops and host reads per call), compile_transformer (the captured forward)
- checkpoint: Checkpoint, CheckpointError
- clip:       load_clip, ClipParts, clip_text_score, clip_style_score (the paper's two metrics)
- feedback:   select_best, Candidate, ClipScorer (round-2 selection)
- contracts:  training_prompt, feedback_prompts (contracts/prompts.py), the limits (contracts/limits.py): torch-free
- examples:   TrainingExample (image, caption) pairs to train on, subject_prompt (a subject's caption)
- evaluate:   evaluate, EvalSettings, EvalReport (what `styledrop eval` runs), render_candidates

Importing `trainer` loads none of these: each name is imported from its module on first use (PEP 562), so
`import trainer.contracts` (the torch-free leaf the service imports) leaves torch unloaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as mypy and editors see them; at run time `__getattr__` imports them
    from .bank import LoraBank, default_capacity, find_bank, slot_bytes
    from .capture import OpCounter, compile_transformer
    from .checkpoint import Checkpoint, CheckpointError
    from .clip import ClipParts, clip_style_score, clip_text_score, load_clip
    from .contracts.prompts import feedback_prompts, training_prompt
    from .evaluate import EvalReport, EvalSettings, evaluate, render_candidates
    from .examples import TrainingExample, subject_prompt
    from .feedback import Candidate, ClipScorer, select_best
    from .lora import (
        ENGINE_VERSION,
        Adapter,
        AdapterError,
        AdapterMeta,
        adapter_from_bytes,
        adapter_to_bytes,
        load_adapter,
        save_adapter,
    )
    from .model import (
        AmusedParts,
        ModelLoadError,
        build_tiny,
        ensure_tiny,
        load_base,
        resolve_device,
        resolve_dtype,
        resolve_mixed_precision,
    )
    from .sampler import GenerationRequest, SampleResult, SamplingError, sample
    from .train import (
        Callbacks,
        Progress,
        StyleSpec,
        TrainConfig,
        TrainResult,
        train_style,
        train_styles,
    )

_MODULE_OF: dict[str, str] = {
    "Adapter": "lora",
    "AdapterError": "lora",
    "AdapterMeta": "lora",
    "AmusedParts": "model",
    "Callbacks": "train",
    "Candidate": "feedback",
    "Checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "ClipParts": "clip",
    "ClipScorer": "feedback",
    "ENGINE_VERSION": "lora",
    "EvalReport": "evaluate",
    "EvalSettings": "evaluate",
    "GenerationRequest": "sampler",
    "LoraBank": "bank",
    "ModelLoadError": "model",
    "OpCounter": "capture",
    "Progress": "train",
    "SampleResult": "sampler",
    "SamplingError": "sampler",
    "StyleSpec": "train",
    "TrainConfig": "train",
    "TrainResult": "train",
    "TrainingExample": "examples",
    "adapter_from_bytes": "lora",
    "adapter_to_bytes": "lora",
    "build_tiny": "model",
    "clip_style_score": "clip",
    "clip_text_score": "clip",
    "compile_transformer": "capture",
    "default_capacity": "bank",
    "ensure_tiny": "model",
    "evaluate": "evaluate",
    "feedback_prompts": "contracts.prompts",
    "find_bank": "bank",
    "load_adapter": "lora",
    "load_base": "model",
    "load_clip": "clip",
    "render_candidates": "evaluate",
    "resolve_device": "model",
    "resolve_dtype": "model",
    "resolve_mixed_precision": "model",
    "sample": "sampler",
    "save_adapter": "lora",
    "select_best": "feedback",
    "slot_bytes": "bank",
    "subject_prompt": "examples",
    "train_style": "train",
    "train_styles": "train",
    "training_prompt": "contracts.prompts",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (`trainer.lora` after `import trainer`), as the eager imports used to give
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ENGINE_VERSION",
    "Adapter",
    "AdapterError",
    "AdapterMeta",
    "AmusedParts",
    "Callbacks",
    "Candidate",
    "Checkpoint",
    "CheckpointError",
    "ClipParts",
    "ClipScorer",
    "EvalReport",
    "EvalSettings",
    "GenerationRequest",
    "LoraBank",
    "ModelLoadError",
    "OpCounter",
    "Progress",
    "SampleResult",
    "SamplingError",
    "StyleSpec",
    "TrainConfig",
    "TrainResult",
    "TrainingExample",
    "adapter_from_bytes",
    "adapter_to_bytes",
    "build_tiny",
    "clip_style_score",
    "clip_text_score",
    "compile_transformer",
    "default_capacity",
    "ensure_tiny",
    "evaluate",
    "feedback_prompts",
    "find_bank",
    "load_adapter",
    "load_base",
    "load_clip",
    "render_candidates",
    "resolve_device",
    "resolve_dtype",
    "resolve_mixed_precision",
    "sample",
    "save_adapter",
    "select_best",
    "slot_bytes",
    "subject_prompt",
    "train_style",
    "train_styles",
    "training_prompt",
]
