"""Engine test helpers (the tiny model's fixtures are in tests/conftest.py)."""

from __future__ import annotations

import torch

from trainer.lora import Adapter, AdapterMeta, base_fingerprint, extract_adapter, lora_config
from trainer.model import AmusedParts


def random_adapter(parts: AmusedParts, seed: int, rank: int = 16, alpha: float = 32.0) -> Adapter:
    """An adapter with non-zero A and B, made the way training makes one (peft layers, then extracted)."""
    t = parts.transformer
    t.add_adapter(lora_config(rank, alpha), adapter_name="tmp")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if ".tmp." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    meta = AdapterMeta(base_model="tiny", base_fingerprint=base_fingerprint(t), rank=rank, alpha=alpha,
                       descriptor="test", train_prompt="an image in test style", steps=1, seed=seed)
    adapter = extract_adapter(t, "tmp", meta)
    t.delete_adapters("tmp")
    return adapter
