"""An adapter's identity includes its base's weights, not only its config: a content hash recorded by `load_base`,
written into adapter and checkpoint metadata and checked when either is loaded; weights come from safetensors only."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.engine import checkpoint_at
from trainer.bank import LoraBank
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.lora import AdapterError, adapter_from_bytes, adapter_to_bytes, base_fingerprint, weights_hash
from trainer.model import AmusedParts, ModelLoadError, load_base
from trainer.train import StyleSpec, TrainConfig, train_style, train_styles


@pytest.fixture
def other_weights_dir(engine_tiny_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with one weight changed: the same config, other weights (a fine-tune, another release)."""
    parts = load_base(str(engine_tiny_dir))
    with torch.no_grad():
        next(parts.transformer.parameters()).add_(0.01)
    parts.save_pretrained(tmp_path / "other")
    return tmp_path / "other"


def test_the_hash_is_recorded_at_load_and_in_trained_adapters(engine_parts: AmusedParts, engine_tiny_dir: Path,
                                                              engine_style_image: Image.Image) -> None:
    recorded = weights_hash(engine_parts.transformer)
    assert recorded == weights_hash(engine_parts.transformer, recompute=True)
    assert weights_hash(load_base(str(engine_tiny_dir), dtype=torch.bfloat16).transformer) == recorded  # one base
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes", config=TrainConfig(steps=1))
    assert result.adapter is not None and result.adapter.meta.base_weights == recorded
    assert adapter_from_bytes(adapter_to_bytes(result.adapter)).meta.base_weights == recorded


def test_an_adapter_of_other_weights_with_the_same_config_is_refused(engine_parts: AmusedParts,
                                                                     engine_style_image: Image.Image,
                                                                     other_weights_dir: Path) -> None:
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes", config=TrainConfig(steps=1))
    assert result.adapter is not None
    other = load_base(str(other_weights_dir))
    assert base_fingerprint(other.transformer) == result.adapter.meta.base_fingerprint  # the config can't tell
    with pytest.raises(AdapterError, match="other weights"):
        LoraBank(other.transformer, 1).load(1, result.adapter)


def test_an_older_adapter_without_the_hash_loads_with_a_warning(engine_parts: AmusedParts,
                                                                engine_style_image: Image.Image,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes", config=TrainConfig(steps=1))
    assert result.adapter is not None
    older = replace(result.adapter, meta=replace(result.adapter.meta, base_weights=""))
    with caplog.at_level(logging.WARNING, logger="trainer.lora"):
        LoraBank(engine_parts.transformer, 1).load(1, older, name="old")
    assert "no record of its base's weights" in caplog.text


def test_a_resume_is_checked_against_the_checkpoints_own_record(engine_parts: AmusedParts,
                                                                engine_style_image: Image.Image,
                                                                other_weights_dir: Path) -> None:
    data = checkpoint_at(load_base(str(other_weights_dir)), engine_style_image, 1).to_bytes()
    ckpt = Checkpoint.from_bytes(data)
    assert ckpt.base["base_weights"] != weights_hash(engine_parts.transformer)
    with pytest.raises(CheckpointError, match="another base"):  # what a worker checks before it resumes
        Checkpoint.from_bytes(data, engine_parts.transformer)
    with pytest.raises(CheckpointError, match="other weights"):
        train_styles(engine_parts, [StyleSpec([engine_style_image], "stripes", resume=ckpt)], TrainConfig(steps=3))
    own = checkpoint_at(engine_parts, engine_style_image, 1, alpha=8.0)
    with pytest.raises(CheckpointError, match="alpha 8"):  # resumed at another LoRA scale than it trained at
        train_styles(engine_parts, [StyleSpec([engine_style_image], "stripes", resume=own)],
                     TrainConfig(steps=3, alpha=16.0))


def test_weights_are_read_from_safetensors_only(engine_tiny_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(engine_tiny_dir, pickled)
    from safetensors.torch import load_file

    weights = pickled / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), pickled / "transformer" / "diffusion_pytorch_model.bin")  # a pickle
    weights.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_base(str(pickled))
