"""GPU-only paths (bf16 autocast, CUDA-graph training step, 8-bit AdamW, CUDA sampling). Opt-in: skipped cleanly
without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def cuda_parts(engine_tiny_dir: Path):  # type: ignore[no-untyped-def]
    from trainer.model import load_base

    return load_base(str(engine_tiny_dir), device="cuda", dtype=torch.bfloat16)


def test_bf16_autocast_training_learns_and_keeps_lora_in_fp32(cuda_parts, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    from trainer.train import TrainConfig, train_style

    result = train_style(cuda_parts, [engine_style_image], descriptor="stripes",
                         config=TrainConfig(steps=60, learning_rate=3e-3, mixed_precision="bf16"))
    assert result.adapter is not None
    assert all(t.dtype == torch.float32 for t in result.adapter.tensors.values())
    assert sum(result.losses[-10:]) / 10 < 0.7 * sum(result.losses[:10]) / 10
    assert next(cuda_parts.vqvae.parameters()).device.type == "cuda"  # encoders came back after offloading


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


# Captured vs eager: the same kernels on the same data, so equal up to kernels that are not run-to-run deterministic
# (e.g. attention backward with atomics). Stated bounds: fp32 weights, no autocast: 1e-5 relative; bf16 weights with
# bf16 autocast: 1e-2 relative (a few bf16 ulps after 16 steps). Losses elementwise, adapters per tensor by norm.
@pytest.mark.parametrize("dtype,mixed,tol", [(torch.float32, "no", 1e-5), (torch.bfloat16, "bf16", 1e-2)])
def test_cuda_graph_training_equals_eager(engine_tiny_dir: Path, engine_style_image: Image.Image,  # type: ignore[no-untyped-def]
                                          monkeypatch, dtype: torch.dtype, mixed: str, tol: float) -> None:
    from trainer.checkpoint import Checkpoint
    from trainer.model import load_base
    from trainer.train import Callbacks, StyleSpec, TrainConfig, train_styles
    from trainer.train_step import TrainStep

    captures: list[int] = []
    real_capture = TrainStep._capture

    def counting_capture(self: TrainStep) -> None:
        captures.append(len(self.generators))
        real_capture(self)

    monkeypatch.setattr(TrainStep, "_capture", counting_capture)
    # 3 styles of 8, 12 and 16 steps: S = 3, 2, 1 in turn, each with its warm-up steps, a capture and replays
    specs = [StyleSpec([engine_style_image.rotate(90 * k)], f"s{k}", steps=8 + 4 * k, seed=k, learning_rate=3e-3)
             for k in range(3)]
    runs = []
    for graph in (False, True):
        parts = load_base(str(engine_tiny_dir), device="cuda", dtype=dtype)
        checkpoints: dict[int, Checkpoint] = {}
        config = TrainConfig(progress_every=3, checkpoint_every=10, mixed_precision=mixed, cuda_graph=graph)
        results = train_styles(parts, specs, config, Callbacks(on_checkpoint=checkpoints.__setitem__))
        runs.append((results, checkpoints))
    assert captures == [3, 2, 1]  # the captured run did replay graphs, one per batch size
    (eager, eager_ckpt), (captured, captured_ckpt) = runs
    for got, want in zip(captured, eager, strict=True):
        assert got.adapter is not None and want.adapter is not None and got.step == want.step
        np.testing.assert_allclose(got.losses, want.losses, rtol=tol)
        for k, v in want.adapter.tensors.items():
            assert _rel(got.adapter.tensors[k], v) <= tol, k
    assert eager_ckpt.keys() == captured_ckpt.keys() == {1, 2}  # step 10 of the 12- and 16-step styles
    for i, want_c in eager_ckpt.items():  # replays advanced each style's generator exactly as eager steps do
        assert torch.equal(captured_ckpt[i].rng_state, want_c.rng_state) and captured_ckpt[i].step == 10


def test_cuda_graph_training_with_a_joining_style_equals_eager(engine_tiny_dir: Path,  # type: ignore[no-untyped-def]
                                                               engine_style_image: Image.Image) -> None:
    """A style joining a captured run at step 5 (new batch, new rows, a new capture; an on_done hand-over between)
    trains as in an eager run: fp32, stated bound 1e-5 relative as above."""
    from trainer.model import load_base
    from trainer.train import Callbacks, StyleSpec, TrainConfig, TrainResult, train_styles

    specs = [StyleSpec([engine_style_image.rotate(90 * k)], f"s{k}", steps=8 + 4 * k, seed=k, learning_rate=3e-3)
             for k in range(3)]
    def run(graph: bool) -> list[TrainResult]:
        parts = load_base(str(engine_tiny_dir), device="cuda", dtype=torch.float32)
        steps: list[int] = []
        queue = [specs[2]]

        def join(_free: int) -> list[StyleSpec]:
            return [queue.pop()] if queue and steps and steps[-1] >= 5 else []

        cb = Callbacks(on_progress=lambda i, p: steps.append(p.step) if i == 0 else None, join=join,
                       on_done=lambda _i, _r: None)
        return train_styles(parts, specs[:2], TrainConfig(progress_every=1, capacity=3, cuda_graph=graph), cb)

    runs = [run(False), run(True)]
    for got, want in zip(runs[1], runs[0], strict=True):
        assert got.adapter is not None and want.adapter is not None and got.step == want.step
        np.testing.assert_allclose(got.losses, want.losses, rtol=1e-5)
        for k, v in want.adapter.tensors.items():
            assert _rel(got.adapter.tensors[k], v) <= 1e-5, k


def test_adamw8bit_trains_checkpoints_and_resumes_exactly(engine_tiny_dir: Path,  # type: ignore[no-untyped-def]
                                                          engine_style_image: Image.Image, monkeypatch) -> None:
    pytest.importorskip("bitsandbytes", reason="8-bit AdamW needs the gpu extra: pip install 'styledrop[gpu]'")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from trainer.checkpoint import Checkpoint
    from trainer.model import load_base
    from trainer.train import Callbacks, StyleSpec, TrainConfig, train_styles

    def specs() -> list[StyleSpec]:
        return [StyleSpec([engine_style_image.rotate(90 * k)], f"s{k}", steps=12 + 2 * k, seed=k,
                          learning_rate=3e-3) for k in range(2)]

    config = TrainConfig(optimizer="adamw8bit", mixed_precision="bf16", checkpoint_every=4, progress_every=2)
    first: dict[int, Checkpoint] = {}
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # conv input gradients without atomics
    with sdpa_kernel(SDPBackend.MATH):  # deterministic attention backward: "equal" can then mean bitwise
        full = train_styles(load_base(str(engine_tiny_dir), device="cuda", dtype=torch.bfloat16), specs(), config,
                            Callbacks(on_checkpoint=lambda i, c: first.setdefault(i, c)))
        resumed_specs = specs()
        for i, spec in enumerate(resumed_specs):  # a new process: fresh model, checkpoints read back from bytes
            spec.resume = Checkpoint.from_bytes(first[i].to_bytes())
        resumed = train_styles(load_base(str(engine_tiny_dir), device="cuda", dtype=torch.bfloat16), resumed_specs,
                               config)
    for ckpt in first.values():
        assert ckpt.step == 4 and ckpt.optimizer == "adamw8bit"
        assert ckpt.state["state1"][0].dtype == torch.uint8 and ckpt.state["absmax1"][0].dtype == torch.float32
        assert any(t.abs().sum() > 0 for t in ckpt.state["absmax2"])  # real moments, not an empty state
    for got, want in zip(resumed, full, strict=True):
        assert got.adapter is not None and want.adapter is not None
        assert got.losses == want.losses[4:]
        for k, v in want.adapter.tensors.items():
            assert torch.equal(got.adapter.tensors[k], v), k
        assert sum(want.losses[-3:]) < sum(want.losses[:3])  # the 8-bit optimizer does train


def test_cuda_styles_together_equal_alone_one_sync_per_interval(cuda_parts, engine_style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    import warnings

    from trainer.train import Callbacks, StyleSpec, TrainConfig, train_styles

    cuda_parts.transformer.float()  # fp32 for the equality; bf16 is covered above
    specs = [StyleSpec([engine_style_image.rotate(90 * k)], f"s{k}", steps=6 + k, seed=k, learning_rate=3e-3)
             for k in range(3)]
    alone = [train_styles(cuda_parts, [spec], TrainConfig(progress_every=3))[0] for spec in specs]
    syncs: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            together = train_styles(cuda_parts, specs, TrainConfig(progress_every=3),
                                    Callbacks(on_progress=lambda i, p: syncs.append(len(caught)) if i == 0 else None))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert syncs[1] - syncs[0] <= 1  # steps 4..6 and their one loss read-back
    for got, want in zip(together, alone, strict=True):
        assert got.adapter is not None and want.adapter is not None
        for k, v in want.adapter.tensors.items():
            assert float((got.adapter.tensors[k] - v).norm() / v.norm().clamp(min=1e-12)) <= 2e-3, k


def test_cuda_sampling_with_mixed_adapters(cuda_parts) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.engine import random_adapter
    from trainer.bank import LoraBank
    from trainer.sampler import GenerationRequest, sample

    adapters = [random_adapter(cuda_parts, seed=s) for s in (1, 2)]
    bank = LoraBank(cuda_parts.transformer, 2)
    for slot, adapter in enumerate(adapters, start=1):
        bank.load(slot, adapter, name=f"slot{slot - 1}")
    results = sample(cuda_parts, [GenerationRequest("a cat", seed=1, adapter="slot0"),
                                  GenerationRequest("a dog", seed=2, adapter="slot1"),
                                  GenerationRequest("a tree", seed=3)])
    assert [r.image.size for r in results if r.image is not None] == [(256, 256)] * 3


def test_cuda_graph_sampling_equals_eager_and_serves_new_routes(cuda_parts) -> None:  # type: ignore[no-untyped-def]
    """The sampler's forward replayed from a plain CUDA graph (trainer.capture.graph_sampling) runs the eager
    forward's own kernels; one graph serves another adapter mix (the bank refills its buffers in place) and a
    hot-loaded slot, and replays are deterministic. Against eager, in bf16: tokens may differ only where two codes'
    scores tie within rounding (should cuBLAS pick another algorithm on the capture stream), so at most 2%."""
    from tests.helpers.engine import random_adapter
    from trainer.bank import LoraBank, find_bank
    from trainer.capture import graph_sampling
    from trainer.sampler import GenerationRequest, sample

    t = cuda_parts.transformer
    bank = LoraBank(t, 3)
    for slot in (1, 2, 3):
        bank.load(slot, random_adapter(cuda_parts, seed=slot), name=f"s{slot}")
    mixes = [["s2", "s2", "s1"], ["s1", "s2", None]]  # the larger route first: the bank's buffers never regrow

    def reqs(mix: list[str | None]) -> list[GenerationRequest]:
        return [GenerationRequest(p, seed=i, adapter=a) for i, (p, a) in enumerate(zip(("a cat", "a dog", "a tree"),
                                                                                      mix, strict=True))]

    def close(got: list, want: list) -> bool:  # type: ignore[type-arg]
        return all(float((g.tokens != w.tokens).float().mean()) <= 0.02 for g, w in zip(got, want, strict=True))

    eager = [sample(cuda_parts, reqs(m), decode=False) for m in mixes]
    graph_sampling(t)
    try:
        first = [sample(cuda_parts, reqs(m), decode=False) for m in mixes]  # captures, then replays
        again = [sample(cuda_parts, reqs(m), decode=False) for m in mixes]  # replays only
        for mix, e, f, a in zip(mixes, eager, first, again, strict=True):
            assert close(f, e), mix
            assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(f, a, strict=True)), mix
        graphs = t.__dict__["_styledrop_sampling_graphs"]
        assert graphs.captures == 2  # one per pass layout (the mixes differ in adapted passes), none per call
        bank.load(1, random_adapter(cuda_parts, seed=9), name="s9")  # in place: no recapture
        got = sample(cuda_parts, reqs(["s9", "s2", None]), decode=False)
        graph_sampling(t, enabled=False)
        want = sample(cuda_parts, reqs(["s9", "s2", None]), decode=False)
        assert close(got, want) and not close(got, first[1])  # the new adapter is what the graph applied
        assert graphs.captures == 2
    finally:
        graph_sampling(t, enabled=False)
        find_bank(t).remove()
