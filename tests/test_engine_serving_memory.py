"""Serving memory scales with adapters and a bounded chunk of rows, not with the batch: the LoRA bank's gathered
buffers hold each distinct adapter once, the sampler's float32 scratch runs in chunks of rows (with the same
tokens), and a batch beyond the stated row limit is refused before any work. Memory is measured structurally
(buffer sizes) and with `trainer.capture.MemoryCounter` (bytes of live tensor storage): no timing anywhere."""

from __future__ import annotations

import pytest
import torch

import trainer.sampler as sampler_module
from tests.helpers.engine import random_adapter
from trainer.bank import LoraBank, slot_bytes
from trainer.capture import MemoryCounter
from trainer.contracts import limits
from trainer.encode import encode_text
from trainer.model import AmusedParts
from trainer.sampler import GenerationRequest, SamplingError, sample


def _gathered_bytes(bank: LoraBank) -> int:
    return sum(s.at.nbytes + s.bt.nbytes for s in bank._sites if s.at is not None and s.bt is not None)


def test_serving_buffers_hold_each_distinct_adapter_once_whatever_the_rows(engine_parts: AmusedParts) -> None:
    t = engine_parts.transformer
    bank = LoraBank(t, 4)
    for slot in range(1, 5):
        bank.load(slot, random_adapter(engine_parts, seed=slot), name=f"s{slot}")
    rows = 64
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, engine_parts.codebook_size, (rows, 16, 16), generator=g)
    emb = encode_text(engine_parts, ["a photo in some style"])
    kw = dict(encoder_hidden_states=emb.hidden.expand(rows, -1, -1), pooled_text_emb=emb.pooled.expand(rows, -1),
              micro_conds=torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * rows))
    one_slot = slot_bytes(t, 16, torch.float32)
    with torch.no_grad():
        with bank.route([1] * rows):  # 64 rows of one style: one gathered copy, not 64
            assert {s.at.shape[0] for s in bank._sites if s.at is not None} == {1}
            assert _gathered_bytes(bank) == one_slot
            single = t(ids, **kw)
        mix = [1 + i % 4 for i in range(rows)]
        with bank.route(mix):
            assert _gathered_bytes(bank) == 4 * one_slot
            mixed = t(ids, **kw)
        with bank.route(torch.tensor(mix)):  # a device-tensor route (no host read): every row its own entry
            assert _gathered_bytes(bank) == rows * one_slot
            per_row = t(ids, **kw)
    assert torch.equal(mixed, per_row)  # indexing rows into the distinct set computes what per-row copies did
    assert not torch.equal(single, mixed)
    bank.remove()


def _requests(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"prompt {i}", seed=i, steps=3, adapter="a" if i % 2 else None,
                              negative_prompt="ugly" if i % 3 == 0 else None) for i in range(n)]


def _peak(parts: AmusedParts, requests: list[GenerationRequest]) -> tuple[int, list[torch.Tensor]]:
    with MemoryCounter() as m:
        tokens = [r.tokens for r in sample(parts, requests, decode=False)]
    return m.peak, tokens


def test_sampler_scratch_runs_in_chunks_of_rows_with_the_same_tokens(engine_parts: AmusedParts,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bank = LoraBank(engine_parts.transformer, 1)
    bank.load(1, random_adapter(engine_parts, seed=3), name="a")
    sample(engine_parts, _requests(1), decode=False)  # caches CLIP embeddings and schedule tables for both runs
    whole = {n: _peak(engine_parts, _requests(n)) for n in (4, 8)}
    assert sampler_module.scratch_rows(256, engine_parts.codebook_size, 8) == 8  # tiny: one chunk by default
    monkeypatch.setattr(sampler_module, "SCRATCH_BYTES", 1)  # one row per chunk
    assert sampler_module.scratch_rows(256, engine_parts.codebook_size, 8) == 1
    chunked = {n: _peak(engine_parts, _requests(n)) for n in (4, 8)}
    for n in (4, 8):
        assert all(torch.equal(a, b) for a, b in zip(whole[n][1], chunked[n][1], strict=True))
    # The scratch stops growing with the rows: 4 more rows cost less with chunks of one row than in one chunk.
    assert chunked[8][0] - chunked[4][0] < whole[8][0] - whole[4][0]
    assert chunked[8][0] < whole[8][0]
    bank.remove()


def test_full_size_scratch_fits_the_budget_per_row_at_the_row_limit() -> None:
    seq, codebook = 256, 8192  # amused-256: 16x16 tokens, 8192 codes
    rows = sampler_module.scratch_rows(seq, codebook, limits.MAX_SAMPLE_ROWS)
    per_chunk = sampler_module.SCRATCH_PLANES * rows * seq * codebook * 4
    assert per_chunk <= sampler_module.SCRATCH_BYTES
    assert per_chunk / limits.MAX_SAMPLE_ROWS <= 40 * 2**20  # ≤ 40 MB of float32 scratch per request at 64 rows


def test_a_batch_beyond_the_row_limit_is_refused_naming_the_limit(engine_parts: AmusedParts) -> None:
    too_many = [GenerationRequest(f"p{i}", seed=i) for i in range(limits.MAX_SAMPLE_ROWS + 1)]
    with MemoryCounter() as m, pytest.raises(SamplingError, match=f"at most {limits.MAX_SAMPLE_ROWS} requests"):
        sample(engine_parts, too_many)
    assert m.peak == 0  # refused before any tensor was made


def test_graph_sampling_is_a_clear_error_on_a_cpu_model_and_sampling_stays_eager(engine_parts: AmusedParts) -> None:
    from trainer.capture import graph_sampling

    t = engine_parts.transformer
    with pytest.raises(ValueError, match="needs a model on a CUDA device"):
        graph_sampling(t)
    graph_sampling(t, enabled=False)  # turning it off where it was never on is fine
    assert "_styledrop_sampling_graphs" not in t.__dict__
