"""The LoRA bank against peft, row by row; its routing rules and capacity; the sampler's op and host-read budget;
the compiled (capturable) forward."""

from __future__ import annotations

import itertools

import pytest
import torch

from testkit.models import build_mid
from tests.helpers.engine import peft_copy, random_adapter
from trainer.bank import LoraBank, find_bank, target_linears
from trainer.capture import OpCounter, compile_transformer
from trainer.encode import encode_text
from trainer.lora import AdapterError, lora_layers
from trainer.model import AmusedParts, build_tiny
from trainer.sampler import GenerationRequest, sample
from trainer.train import TrainConfig, train_style

# fp32 on the CPU. The bank adds scale·(x·Aᵀ)·Bᵀ with the scale folded into B; peft computes B(A(x))·scale: the
# same maths in another order, so rows agree to float rounding, not bit for bit. Each reference runs the same
# batch shape (the base model's own matmuls round differently for a batch of 1 and of 8: up to 4e-4 on these
# logits, a property of the base model, not of the bank).
ATOL, RTOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def mid_parts() -> AmusedParts:
    return build_mid(seed=0)


@pytest.fixture(params=["tiny", "mid"])
def parts(request: pytest.FixtureRequest, engine_parts: AmusedParts, mid_parts: AmusedParts) -> AmusedParts:
    p = engine_parts if request.param == "tiny" else mid_parts
    bank = find_bank(p.transformer)
    if bank is not None:
        bank.remove()
    return p


def inputs(parts: AmusedParts, batch: int, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, parts.codebook_size, (batch, 16, 16), generator=g)
    ids[:, ::3] = parts.mask_token_id
    prompts = [f"prompt {i} in test style" for i in range(batch)]
    hidden = torch.cat([encode_text(parts, [p]).hidden for p in prompts])
    pooled = torch.cat([encode_text(parts, [p]).pooled for p in prompts])
    conds = torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * batch)
    return ids, dict(encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=conds)


def row(kwargs: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i:i + 1] for k, v in kwargs.items()}


def test_bank_rows_equal_peft_per_adapter_for_a_random_row_map(parts: AmusedParts) -> None:
    t = parts.transformer
    adapters = [random_adapter(parts, seed=s, alpha=a) for s, a in ((1, 32.0), (2, 8.0), (3, 16.0))]  # mixed α/r
    refs = [peft_copy(t, a) for a in adapters]
    bank = LoraBank(t, 3)
    for slot, a in enumerate(adapters, start=1):
        bank.load(slot, a, name=f"a{slot}")
    g = torch.Generator().manual_seed(4)
    slots = [0, 1, 2, 3, *torch.randint(0, 4, (4,), generator=g).tolist()]
    slots = [slots[i] for i in torch.randperm(8, generator=g).tolist()]
    ids, kw = inputs(parts, 8)
    with torch.no_grad():
        with bank.route(slots):
            mixed = t(ids, **kw)
        whole = [t(ids, **kw)] + [ref(ids, **kw) for ref in refs]  # every row through one adapter, per adapter
        for i, s in enumerate(slots):
            torch.testing.assert_close(mixed[i], whole[s][i], rtol=RTOL, atol=ATOL, msg=f"row {i} (slot {s})")
        # Rows before `start` are base rows and do no LoRA work; routed rows are as before.
        with bank.route(slots[3:], start=3):
            offset = t(ids, **kw)
        base = t(ids[:3], **{k: v[:3] for k, v in kw.items()})
    torch.testing.assert_close(offset[:3], base, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(offset[3:], mixed[3:], rtol=RTOL, atol=ATOL)
    bank.remove()


def test_trainable_bank_logits_and_gradients_equal_peft(parts: AmusedParts) -> None:
    t = parts.transformer
    adapters = [random_adapter(parts, seed=s, alpha=a) for s, a in ((5, 32.0), (6, 4.0))]
    bank = LoraBank(t, 2, trainable=True)
    for slot, a in enumerate(adapters, start=1):
        bank.load(slot, a)
    slots = [2, 0, 1]  # distinct: a trainable bank lays its routed slots out by batch row
    ids, kw = inputs(parts, 3, seed=1)
    weights = torch.randn(t(ids[:1], **row(kw, 0)).shape[1:], generator=torch.Generator().manual_seed(2))
    with bank.route(slots):
        out = t(ids, **kw)
        (out * weights).sum().backward()
    bank.remove()
    for s, adapter in enumerate(adapters, start=1):
        ref = peft_copy(t, adapter)
        for name, p in ref.named_parameters():
            p.requires_grad_(".ref." in name)
        rows = [i for i, x in enumerate(slots) if x == s]
        ref_out = ref(ids, **kw)[rows]  # the whole batch (same shape, same base rounding), this adapter's rows
        torch.testing.assert_close(out[rows].detach(), ref_out.detach(), rtol=RTOL, atol=ATOL)
        (ref_out * weights).sum().backward()
        params = dict(ref.named_parameters())
        assert bank.master.grad is not None
        grad_a, grad_b = bank.site_views(bank.master.grad)  # per-layer views of the leaf's gradient, by batch row
        for k, a_grad, b_grad in zip(bank.keys, grad_a, grad_b, strict=True):
            for ab, got in (("A", a_grad[slots.index(s)]), ("B", b_grad[slots.index(s)])):
                want = params[f"{k}.lora_{ab}.ref.weight"].grad
                assert want is not None and float(want.abs().max()) > 0
                # Sums over rows and positions: compared to the gradient's scale. The bank projects q, k and v with
                # one fused matmul, which BLAS sums in another order than peft's three; on the random mid model
                # that rounding is amplified to 4.7e-5 .. 1.3e-4 depending on the BLAS thread count (its fp32
                # gradient is 0.28 away from its own fp64 value, while in fp64 the bank and peft agree to 4e-8:
                # the maths is the same).
                err = float((got - want).abs().max() / want.abs().max())
                assert err <= 5e-4, f"{k} lora_{ab} slot {s}: relative error {err:.1e}"
    assert bank.master.grad.shape[0] == len(slots)  # the leaf is the batch's rows, no others
    assert float(bank.master.grad[slots.index(0)].abs().sum()) == 0.0  # slot 0 (base) learns nothing


def test_unknown_or_empty_adapter_names_and_bad_slots_raise(engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 2)
    bank.load(1, random_adapter(engine_parts, seed=1), name="known")
    for name in ("slot7", ""):
        with pytest.raises(AdapterError, match=r"no adapter named|empty adapter"):
            sample(engine_parts, [GenerationRequest("a cat", steps=2, adapter=name)], decode=False)
    with pytest.raises(AdapterError, match="out of range"):
        bank.set_rows([0, 3])
    with pytest.raises(AdapterError, match="slot 5 is out of range"):
        bank.clear(5)
    with pytest.raises(AdapterError, match="already used"):
        bank.load(2, random_adapter(engine_parts, seed=2), name="known")
    bank.remove()
    with pytest.raises(AdapterError, match="no adapters are loaded"):
        sample(engine_parts, [GenerationRequest("a cat", steps=2, adapter="known")], decode=False)


def test_300_resident_adapters_load_in_place_and_serve(engine_parts: AmusedParts) -> None:
    t = engine_parts.transformer
    modules, params = len(list(t.modules())), len(list(t.parameters()))
    bank = LoraBank(t, 300)
    storage = [a.data_ptr() for a in bank.lora_A]
    picked = {1: None, 150: None, 300: None}
    for slot in range(1, 301):
        adapter = random_adapter(engine_parts, seed=1000 + slot, alpha=float(8 + slot % 3 * 8))
        bank.load(slot, adapter, name=f"style-{slot}")
        if slot in picked:
            picked[slot] = adapter
    assert (len(list(t.modules())), len(list(t.parameters()))) == (modules, params)  # no new modules
    assert [a.data_ptr() for a in bank.lora_A] == storage  # copied into the stacked tensors in place
    ids, kw = inputs(engine_parts, 4, seed=3)
    slots = [300, 0, 1, 150]
    with torch.no_grad():
        with bank.route(slots):
            mixed = t(ids, **kw)
        for i, s in enumerate(slots):
            ref = peft_copy(t, picked[s]) if s else t  # type: ignore[arg-type]
            torch.testing.assert_close(mixed[i], ref(ids, **kw)[i], rtol=RTOL, atol=ATOL)
    bank.remove()


def test_training_leaves_no_peft_wrappers_or_hooks(engine_parts: AmusedParts, engine_style_image) -> None:  # type: ignore[no-untyped-def]
    t = engine_parts.transformer
    serving = LoraBank(t, 1)
    hooks = {k: len(m._forward_hooks) for k, m in target_linears(t).items()}
    result = train_style(engine_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=2, learning_rate=1e-3, alpha=32.0, progress_every=1))
    assert result.adapter is not None
    assert lora_layers(t) == {}  # no peft modules were ever added
    assert {k: len(m._forward_hooks) for k, m in target_linears(t).items()} == hooks
    assert find_bank(t) is serving  # the serving bank is back, alone
    serving.remove()


def _round_counts(parts: AmusedParts, requests: list[GenerationRequest]) -> list[tuple[int, int, int]]:
    """(ops, host reads, transfers) dispatched between consecutive `on_step` calls of one `sample`."""
    marks: list[tuple[int, int, int]] = []
    with OpCounter() as c:
        sample(parts, requests, decode=False,
               on_step=lambda *_: marks.append((c.ops, c.host_reads, c.transfers)))
    return [(b[0] - a[0], b[1] - a[1], b[2] - a[2]) for a, b in itertools.pairwise(marks)]


def test_sampling_loop_reads_nothing_back_and_costs_the_same_for_any_adapter_mix(engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 4)
    for slot in range(1, 5):
        bank.load(slot, random_adapter(engine_parts, seed=slot), name=f"s{slot}")
    one = [GenerationRequest(f"p{i}", seed=i, steps=4, adapter="s1") for i in range(4)]
    four = [GenerationRequest(f"p{i}", seed=i, steps=4, adapter=f"s{i + 1}") for i in range(4)]
    counts_one, counts_four = _round_counts(engine_parts, one), _round_counts(engine_parts, four)
    assert len(counts_one) == 3
    assert all(reads == 0 and transfers == 0 for _, reads, transfers in counts_one + counts_four)
    assert counts_one == counts_four  # distinct adapters cost no extra op
    bank.remove()


def test_compiled_forward_equals_eager_and_serves_new_routes_without_recompiling() -> None:
    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # a process-wide counter
    parts = build_tiny(seed=3)
    t = parts.transformer
    bank = LoraBank(t, 3)
    for slot in range(1, 4):
        bank.load(slot, random_adapter(parts, seed=slot), name=f"s{slot}")
    ids, kw = inputs(parts, 4, seed=5)
    with torch.no_grad():
        eager = {}
        for slots in ([1, 2, 3, 0], [3, 3, 1, 2]):
            with bank.route(slots):
                eager[tuple(slots)] = t(ids, **kw)
        compile_transformer(t, backend="aot_eager")  # fullgraph: a host read or graph break would raise
        for slots, want in eager.items():
            with bank.route(list(slots)):
                got = t(ids, **kw)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        bank.load(3, random_adapter(parts, seed=9), name="s9")  # hot-load into a slot: a copy, not a new graph
        with bank.route([3, 0, 0, 3]):
            changed = t(ids, **kw)
        assert not torch.allclose(changed[0], eager[(3, 3, 1, 2)][0])  # slot 3 now holds the new adapter
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    assert frames == 1, f"{frames} graphs: a new route or a hot-loaded slot recompiled"


def test_mixed_batch_rows_equal_the_same_requests_alone_on_a_bigger_config(mid_parts: AmusedParts) -> None:
    """Bitwise on the CPU in fp32 for `mid` (U-ViT 4x wider than tiny, 1024 codes) as for tiny: a row's base
    computation is the same for any batch, and its LoRA term is its own batched matmul."""
    from PIL import Image

    bank = LoraBank(mid_parts.transformer, 2)
    bank.load(1, random_adapter(mid_parts, seed=1), name="a")
    bank.load(2, random_adapter(mid_parts, seed=2), name="b")
    g = torch.Generator().manual_seed(0)
    init = Image.fromarray(torch.randint(0, 255, (256, 256, 3), generator=g, dtype=torch.uint8).numpy())
    requests = [GenerationRequest("a cat", seed=1, adapter="a", steps=4),
                GenerationRequest("a house", seed=2, adapter="b", negative_prompt="ugly", steps=4),
                GenerationRequest("a tree", seed=3, steps=4),
                GenerationRequest("a boat", seed=4, adapter="a", init_image=init, strength=0.5, steps=4)]
    together = sample(mid_parts, requests, decode=False)
    for i, (req, got) in enumerate(zip(requests, together, strict=True)):
        assert torch.equal(got.tokens, sample(mid_parts, [req], decode=False)[0].tokens), f"row {i}"
    bank.remove()
