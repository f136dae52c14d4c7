"""AdapterCache: LoRA-bank slots → host LRU → store; pinning, eviction order, counters, errors, prefetch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainer
from storage.blobs import BlobIntegrityError
from trainer.lora import AdapterMeta
from worker.adapter_cache import AdapterCache, TooManyAdapters, split_by_slots


def _adapter(slots: trainer.LoraBank, seed: int) -> trainer.Adapter:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, (a, b) in slots.slot_params(1).items():
        tensors[f"{key}.lora_A.weight"] = torch.randn(a.shape, generator=g) * 0.01
        tensors[f"{key}.lora_B.weight"] = torch.randn(b.shape, generator=g) * 0.01
    meta = AdapterMeta(base_model="tiny", base_fingerprint=slots.fingerprint, rank=16, alpha=16.0)
    return trainer.Adapter(tensors, meta)


@pytest.fixture
def slots(worker_tiny_dir: Path) -> trainer.LoraBank:
    parts = trainer.load_base(str(worker_tiny_dir))
    return trainer.LoraBank(parts.transformer, 2, rank=16)


def test_lru_eviction_pinning_and_counters(slots: trainer.LoraBank) -> None:
    store = {name: _adapter(slots, i) for i, name in enumerate("abcd")}
    fetched: list[str] = []

    def fetch(adapter_id: str) -> trainer.Adapter:
        fetched.append(adapter_id)
        if adapter_id == "bad":
            raise BlobIntegrityError("sha256 mismatch")
        return store[adapter_id]

    cache = AdapterCache(slots, cpu_capacity=3, fetch=fetch)
    with cache.batch(["a", "b"]) as m:
        assert m == {"a": "a", "b": "b"} and set(cache.resident().values()) == {1, 2}
        assert slots.loaded() == {"a": cache.resident()["a"], "b": cache.resident()["b"]}
    assert (cache.misses, cache.loads, cache.hits_gpu) == (2, 2, 0)
    with cache.batch(["a"]) as m:  # a is now most recently used; b is the LRU
        assert m == {"a": "a"}
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


def test_loaded_slot_changes_output_and_incompatible_adapter_is_reported(slots: trainer.LoraBank) -> None:
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
    # a style + subject row needs both adapters resident in its chunk
    assert split_by_slots(["a", ("a", "s"), "b", ("b", "s")], 2) == [[0, 1], [2, 3]]
    assert split_by_slots([("a", "s"), "s", None, "a"], 2) == [[0, 1, 2, 3]]


def test_prefetch_fills_the_host_tier_in_the_background_and_acquire_then_hits_it(slots: trainer.LoraBank) -> None:
    store = {name: _adapter(slots, i) for i, name in enumerate("abc")}
    fetched: list[str] = []

    def fetch(adapter_id: str) -> trainer.Adapter:
        fetched.append(adapter_id)
        if adapter_id == "gone":
            raise KeyError(adapter_id)
        return store[adapter_id]

    cache = AdapterCache(slots, cpu_capacity=4, fetch=fetch, prefetch_limit=2)
    with cache.batch(["a"]):
        assert cache.prefetch(["a", "b", "gone", "c"]) == 2  # a is resident; the limit takes b and gone
        cache.wait_prefetched()
    assert sorted(fetched) == ["a", "b", "gone"] and cache.prefetched == 1
    assert slots.loaded() == {"a": cache.resident()["a"]}  # prefetching never writes a bank slot
    with cache.batch(["b"]) as m:
        assert m == {"b": "b"}
    assert cache.stats()["hits_cpu"] == 1 and fetched.count("b") == 1
