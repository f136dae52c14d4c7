"""Engine test helpers (the tiny model's fixtures are in tests/conftest.py)."""

from __future__ import annotations

import copy

import torch
from peft import set_peft_model_state_dict

from bench.common import random_adapter as bench_random_adapter
from trainer.bank import find_bank
from trainer.lora import Adapter, lora_config
from trainer.model import AmusedParts


def random_adapter(parts: AmusedParts, seed: int, rank: int = 16, alpha: float = 32.0) -> Adapter:
    """An adapter file's content with non-zero A and B (N(0, 0.3²)), for the model's Q/K/V linears."""
    return bench_random_adapter(parts.transformer, seed, rank=rank, alpha=alpha, base_model="tiny")


def peft_copy(transformer: torch.nn.Module, adapter: Adapter) -> torch.nn.Module:
    """A deep copy of `transformer` with `adapter` added through peft: the reference the bank is checked against."""
    bank = find_bank(transformer)
    if bank is not None:
        bank.remove()  # not into the copy: its hooks and stacked weights stay with the original
    try:
        t = copy.deepcopy(transformer)
    finally:
        if bank is not None:
            bank.install()
    t.add_adapter(lora_config(adapter.meta.rank, adapter.meta.alpha, adapter.meta.targets), adapter_name="ref")
    result = set_peft_model_state_dict(t, dict(adapter.tensors), adapter_name="ref")
    assert not [k for k in result.unexpected_keys], result.unexpected_keys
    return t.eval()
