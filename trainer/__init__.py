"""The StyleDrop engine for aMUSEd: pure torch. No settings, databases or HTTP: dataclass configs and callbacks.

Public API:
- model:      load_base, build_tiny, ensure_tiny, AmusedParts, ModelLoadError
- train:      train_style, train_styles, StyleSpec, Callbacks, TrainConfig, Progress, TrainResult, training_prompt
- sampler:    sample, GenerationRequest, SampleResult, SamplingError
- lora:       Adapter, AdapterMeta, save_adapter, load_adapter, adapter_to_bytes, adapter_from_bytes, AdapterError
- bank:       LoraBank (resident adapters applied per batch row), find_bank, slot_bytes, default_capacity
- capture:    OpCounter (aten ops and host reads per call), compile_transformer (the captured forward)
- checkpoint: Checkpoint, CheckpointError
- clip:       load_clip, ClipParts, clip_text_score, clip_style_score (the paper's two metrics)
- feedback:   select_best, feedback_prompts, Candidate, ClipScorer (round-2 selection)
- examples:   TrainingExample (image, caption) pairs to train on, subject_prompt (a subject's caption)
- evaluate:   evaluate, EvalSettings, EvalReport (what `styledrop eval` runs), render_candidates
"""

from .bank import LoraBank, default_capacity, find_bank, slot_bytes
from .capture import OpCounter, compile_transformer
from .checkpoint import Checkpoint, CheckpointError
from .clip import ClipParts, clip_style_score, clip_text_score, load_clip
from .evaluate import EvalReport, EvalSettings, evaluate, render_candidates
from .examples import TrainingExample, subject_prompt
from .feedback import Candidate, ClipScorer, feedback_prompts, select_best
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
    training_prompt,
)

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
