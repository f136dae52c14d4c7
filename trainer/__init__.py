"""The StyleDrop engine for aMUSEd: pure torch. No settings, databases or HTTP: dataclass configs and callbacks.

Public API:
- model:      load_base, build_tiny, ensure_tiny, AmusedParts, ModelLoadError
- train:      train_style, TrainConfig, Progress, TrainResult, training_prompt
- sampler:    sample, GenerationRequest, SampleResult, SamplingError
- lora:       Adapter, AdapterMeta, AdapterSlots, save_adapter, load_adapter, adapter_to_bytes,
              adapter_from_bytes, AdapterError
- checkpoint: Checkpoint, CheckpointError
"""

from .checkpoint import Checkpoint, CheckpointError
from .lora import (
    ENGINE_VERSION,
    Adapter,
    AdapterError,
    AdapterMeta,
    AdapterSlots,
    adapter_from_bytes,
    adapter_to_bytes,
    load_adapter,
    save_adapter,
)
from .model import AmusedParts, ModelLoadError, build_tiny, ensure_tiny, load_base, resolve_device, resolve_dtype
from .sampler import GenerationRequest, SampleResult, SamplingError, sample
from .train import Progress, TrainConfig, TrainResult, train_style, training_prompt

__all__ = [
    "ENGINE_VERSION",
    "Adapter",
    "AdapterError",
    "AdapterMeta",
    "AdapterSlots",
    "AmusedParts",
    "Checkpoint",
    "CheckpointError",
    "GenerationRequest",
    "ModelLoadError",
    "Progress",
    "SampleResult",
    "SamplingError",
    "TrainConfig",
    "TrainResult",
    "adapter_from_bytes",
    "adapter_to_bytes",
    "build_tiny",
    "ensure_tiny",
    "load_adapter",
    "load_base",
    "resolve_device",
    "resolve_dtype",
    "sample",
    "save_adapter",
    "train_style",
    "training_prompt",
]
