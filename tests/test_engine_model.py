"""Loading aMUSEd: the tiny preset goes through the same loading path as the hub weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UVit2DModel

from trainer.lora import lora_config, lora_layers
from trainer.model import ModelLoadError, build_tiny, load_base

# amused/amused-256 transformer config (docs/amused-notes.md §1)
AMUSED_256 = dict(
    hidden_size=1024, num_hidden_layers=22, num_attention_heads=16, intermediate_size=2816, block_out_channels=768,
    in_channels=768, num_res_blocks=3, block_num_heads=12, vocab_size=8256, codebook_size=8192, cond_embed_dim=768,
    encoder_hidden_size=768, micro_cond_encode_dim=256, micro_cond_embed_dim=1280, use_bias=False,
    layer_norm_eps=1e-6, downsample=False, upsample=False, sample_size=16,
)


def test_tiny_saved_and_loaded_back_equals_built(engine_tiny_dir: Path) -> None:
    built = build_tiny()
    loaded = load_base(str(engine_tiny_dir))
    assert {p.name for p in engine_tiny_dir.iterdir()} >= {"transformer", "vqvae", "text_encoder", "tokenizer",
                                                         "scheduler"}
    for a, b in zip(built.transformer.state_dict().values(), loaded.transformer.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(built.vqvae.state_dict().values(), loaded.vqvae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert loaded.mask_token_id == built.mask_token_id == 71
    assert loaded.resolution == 256 and loaded.vae_scale_factor == 16
    ids = loaded.tokenizer("a cat in watercolor style", padding="max_length", max_length=77).input_ids
    assert ids == built.tokenizer("a cat in watercolor style", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and max(ids) < loaded.text_encoder.config.vocab_size


def test_dtype_applies_to_transformer_but_vqgan_stays_fp32(engine_tiny_dir: Path) -> None:
    parts = load_base(str(engine_tiny_dir), dtype=torch.bfloat16)
    assert parts.dtype == torch.bfloat16
    assert next(parts.vqvae.parameters()).dtype == torch.float32  # force_upcast: fp16 VQ-GAN gives NaNs


def test_unreachable_model_names_the_id_and_the_local_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_base("amused-512", local_files_only=True)
    message = str(err.value)
    assert "amused-512" in message and "amused/amused-512" in message
    assert "--model DIR" in message and "STYLEDROP_MODEL" in message


def test_missing_local_directory_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "transformer").mkdir()  # a directory that is not a model
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_base(str(tmp_path))


def test_real_config_gets_168_lora_layers_and_5_2m_parameters() -> None:
    # Built on the meta device: the real 603M-parameter U-ViT's structure, no memory.
    with torch.device("meta"):
        model = UVit2DModel(**AMUSED_256)
        model.add_adapter(lora_config(16, 32))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) == 603_537_664
    assert len(lora_layers(model)) == 168
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 5_210_112


@pytest.mark.parametrize("name", ["tinyy", "amused256", "no/such/dir/x"])
def test_a_name_that_is_no_preset_hub_id_or_directory_fails_at_once(name: str) -> None:
    with pytest.raises(ModelLoadError, match=f"unknown model '{name}'.*amused-256.*tiny"):
        load_base(name)
