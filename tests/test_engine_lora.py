"""Adapter files and the LoRA bank's slots: exactness, diffusers compatibility, clear refusals, no pickle."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from diffusers import UVit2DModel

from tests.helpers.engine import random_adapter
from trainer.bank import LoraBank
from trainer.encode import encode_text
from trainer.lora import (
    Adapter,
    AdapterError,
    AdapterMeta,
    adapter_from_bytes,
    load_adapter,
    lora_config,
    save_adapter,
)
from trainer.model import AmusedParts


def logits(parts: AmusedParts, transformer: torch.nn.Module | None = None, batch: int = 1,
           bank: LoraBank | None = None, names: list[str | None] | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, parts.codebook_size, (batch, 16, 16), generator=g)
    ids[:, ::3] = parts.mask_token_id
    text = encode_text(parts, ["a cat in test style"] * batch)
    kwargs = dict(encoder_hidden_states=text.hidden, pooled_text_emb=text.pooled,
                  micro_conds=torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * batch))
    model = transformer or parts.transformer
    with torch.no_grad():
        if bank is not None:
            with bank.route([bank.slot_of(n) if n else 0 for n in names or [None] * batch]):
                return model(ids, **kwargs)
        return model(ids, **kwargs)


def test_fresh_adapter_leaves_logits_identical_to_base(engine_parts: AmusedParts) -> None:
    base = logits(engine_parts)
    engine_parts.transformer.add_adapter(lora_config(16, 32), adapter_name="fresh")  # LoRA B starts at 0
    assert torch.equal(logits(engine_parts), base)
    bank = LoraBank(engine_parts.transformer, 2)  # empty slots are inert too
    with bank.route([1]):
        assert torch.equal(logits(engine_parts), base)


def test_save_load_gives_identical_logits_and_keeps_alpha(engine_parts: AmusedParts, tmp_path: Path) -> None:
    adapter = random_adapter(engine_parts, seed=1, alpha=8.0)
    path = save_adapter(adapter, tmp_path / "a")
    loaded = load_adapter(path)
    assert loaded.meta == adapter.meta and loaded.meta.alpha == 8.0
    assert all(torch.equal(loaded.tensors[k], v) for k, v in adapter.tensors.items())

    bank = LoraBank(engine_parts.transformer, 2)
    bank.load(1, adapter, name="slot0")
    bank.load(2, loaded, name="slot1")
    a = logits(engine_parts, bank=bank, names=["slot0"])
    b = logits(engine_parts, bank=bank, names=["slot1"])
    base = logits(engine_parts, bank=bank, names=[None])
    assert torch.equal(a, b)
    assert not torch.allclose(a, base)


def test_plain_diffusers_load_lora_adapter_matches_our_engine(engine_parts: AmusedParts, engine_tiny_dir: Path,
                                                              tmp_path: Path) -> None:
    adapter = random_adapter(engine_parts, seed=2, alpha=8.0)  # alpha != rank: a dropped alpha would show
    save_adapter(adapter, tmp_path)
    ours = LoraBank(engine_parts.transformer, 1)
    ours.load(1, adapter, name="slot0")
    expected = logits(engine_parts, bank=ours, names=["slot0"])

    plain = UVit2DModel.from_pretrained(engine_tiny_dir, subfolder="transformer")
    plain.load_lora_adapter(str(tmp_path), weight_name="adapter.safetensors", use_safetensors=True,
                            adapter_name="style")
    got = logits(engine_parts, transformer=plain.eval())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_mixed_adapter_batch_rows_equal_single_runs(engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 3)
    bank.load(1, random_adapter(engine_parts, seed=3), name="slot0")
    bank.load(2, random_adapter(engine_parts, seed=4), name="slot1")
    mixed = logits(engine_parts, batch=3, bank=bank, names=["slot0", "slot1", None])
    for i, name in enumerate(["slot0", "slot1", None]):
        single = logits(engine_parts, batch=3, bank=bank, names=[name] * 3)[i]
        torch.testing.assert_close(mixed[i], single, rtol=0, atol=1e-5)


def test_wrong_base_rank_or_targets_is_refused(engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 1, rank=16)
    adapter = random_adapter(engine_parts, seed=5)
    other_base = Adapter(adapter.tensors, AdapterMeta(**{**adapter.meta.__dict__, "base_fingerprint": "0" * 16,
                                                        "base_model": "amused-512"}))
    with pytest.raises(AdapterError, match="amused-512"):
        bank.load(1, other_base)
    with pytest.raises(AdapterError, match="rank 8"):
        bank.load(1, random_adapter(engine_parts, seed=6, rank=8))
    wrong_targets = Adapter(adapter.tensors, AdapterMeta(**{**adapter.meta.__dict__, "targets": ("to_q",)}))
    with pytest.raises(AdapterError, match="targets"):
        bank.load(1, wrong_targets)


def test_pickle_files_and_garbage_are_refused_without_unpickling(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, buf)  # a pickle-based file: must never be loaded
    with pytest.raises(AdapterError):
        adapter_from_bytes(buf.getvalue())
    with pytest.raises(AdapterError):
        adapter_from_bytes(b"not an adapter")
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "missing")
