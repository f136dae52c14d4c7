"""AdapterCache: GPU slots → CPU LRU → store; pinning, eviction order, counters, per-adapter errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainer
from storage.blobs import BlobIntegrityError
from trainer.lora import AdapterMeta
from worker.adapter_cache import AdapterCache, TooManyAdapters, split_by_slots


def _adapter(slots: trainer.AdapterSlots, seed: int) -> trainer.Adapter:
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(p.shape, generator=g) * 0.01 for k, p in slots._param_by_key["slot0"].items()}
    meta = AdapterMeta(base_model="tiny", base_fingerprint=slots.fingerprint, rank=16, alpha=16.0)
    return trainer.Adapter(tensors, meta)


@pytest.fixture
def slots(worker_tiny_dir: Path) -> trainer.AdapterSlots:
    parts = trainer.load_base(str(worker_tiny_dir))
    return trainer.AdapterSlots(parts.transformer, 2, rank=16)  # type: ignore[arg-type]


def test_lru_eviction_pinning_and_counters(slots: trainer.AdapterSlots) -> None:
    store = {name: _adapter(slots, i) for i, name in enumerate("abcd")}
    fetched: list[str] = []

    def fetch(adapter_id: str) -> trainer.Adapter:
        fetched.append(adapter_id)
        if adapter_id == "bad":
            raise BlobIntegrityError("sha256 mismatch")
        return store[adapter_id]

    cache = AdapterCache(slots, cpu_capacity=3, fetch=fetch)
    with cache.batch(["a", "b"]) as m:
        assert set(m) == {"a", "b"} and set(m.values()) == {"slot0", "slot1"}
    assert (cache.misses, cache.loads, cache.hits_gpu) == (2, 2, 0)
    with cache.batch(["a"]) as m:  # a is now most recently used; b is the LRU
        assert m == {"a": cache.resident()["a"]}
    assert cache.hits_gpu == 1
    with cache.batch(["c"]):
        pass
    assert set(cache.resident()) == {"a", "c"} and cache.evictions == 1
    # b left the GPU but is still in the CPU tier: no new fetch
    pinned = cache.acquire(["a"])
    with cache.batch(["b"]):  # a is pinned, so c (unpinned) is evicted even though a is older now
        pass
    assert set(cache.resident()) == {"a", "b"}
    assert cache.hits_cpu == 1 and fetched == ["a", "b", "c"]
    with pytest.raises(TooManyAdapters):  # a pinned + two more cannot fit in 2 slots
        cache.acquire(["c", "d"])
    cache.release(pinned)
    with pytest.raises(TooManyAdapters):
        cache.acquire(["a", "b", "c"])
    errors: dict[str, Exception] = {}
    with cache.batch(["d", "bad"], errors) as m:
        assert set(m) == {"d"}
    assert isinstance(errors["bad"], BlobIntegrityError)
    stats = cache.stats()
    # misses: a b c d bad; CPU hits: b, c (the failed acquire), d; loads: a b c b c d
    assert (stats["slots"], stats["misses"], stats["hits_cpu"], stats["loads"]) == (2, 5, 3, 6)
    assert stats["cpu_cached"] <= 3 and stats["load_seconds"] >= 0
    assert cache._pins == {}


def test_loaded_slot_changes_output_and_incompatible_adapter_is_reported(slots: trainer.AdapterSlots) -> None:
    good = _adapter(slots, 0)
    wrong = trainer.Adapter(dict(good.tensors), AdapterMeta(base_model="x", base_fingerprint="0" * 16, rank=16,
                                                            alpha=16.0))
    cache = AdapterCache(slots, cpu_capacity=2, fetch={"good": good, "wrong": wrong}.__getitem__)
    errors: dict[str, Exception] = {}
    with cache.batch(["wrong", "good"], errors) as m:
        assert list(m) == ["good"]
    assert isinstance(errors["wrong"], trainer.AdapterError)
    assert len(cache.resident()) == 1  # the failed load gave its slot back


def test_split_by_slots() -> None:
    assert split_by_slots(["a", None, "b", "a", "c", "c", None, "d"], 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_by_slots([None, None], 1) == [[0, 1]]
    assert split_by_slots([], 3) == []
