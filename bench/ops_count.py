"""Benchmark: what serving many adapters in one batch costs — aten ops and host reads per U-ViT forward and per
sampling call, for 0, 1, 2, 4, 8, 16 and 64 distinct adapters in a batch of 64 rows, LoRA bank vs peft.

Counts are deterministic (`trainer.capture.OpCounter`, a TorchDispatchMode: each aten op is at least one kernel
launch on a GPU; a host read makes the CPU wait for the GPU), so they compare exactly on a shared CPU where
timings are noise. Times are medians of a few runs in the same process, reported as ratios only.

- forward: one `transformer(ids, ...)` on 64 rows; row i routed to adapter i mod k (k = 0: the base model).
  Ours: `LoraBank(transformer, 64)`; baseline: the same adapters added through peft (`add_adapter` + its
  `adapter_names` per-row routing, the pre-bank serving path).
- sampling call: `trainer.sample` of 64 requests (distinct prompts and seeds, guidance 10, `--steps` steps):
  ours routes through the bank; the baseline routes the same adapted passes through peft (the sampler's route is
  swapped for peft's `adapter_names`). Host reads and transfers are counted inside the decoding loop (between
  the first and last step callbacks). A first call caches the prompts' CLIP embeddings and the schedule tables
  (steady state).
- the sampler's per-round forward: ops of the model's own forward vs the forward from the prompt-only
  conditioning the sampler computes once per call, on this config and on amused-256's layer structure.
Bars: forward ops with 64 distinct adapters ≤ 1.1× those with 1; ≤ 1.3× the base forward; 0 host
reads inside the sampling loop.

    python bench/ops_count.py --config tiny        # and --config mid
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import UVit2DModel
from peft import set_peft_model_state_dict

import trainer.sampler as sampler_module
from bench.common import build_parts, common_args, describe_parts, print_environment, random_adapter, setup
from trainer.bank import LoraBank
from trainer.capture import OpCounter
from trainer.encode import encode_text
from trainer.lora import Adapter, lora_config, lora_layers
from trainer.model import AmusedParts
from trainer.sampler import GenerationRequest, sample
from trainer.uvit_forward import forward_with_conditioning, precompute_conditioning

COUNTS = (0, 1, 2, 4, 8, 16, 64)
ROWS = 64


def peft_model(parts: AmusedParts, adapters: Sequence[Adapter]) -> torch.nn.Module:
    """A copy of the U-ViT with each adapter added through peft as `a<i>`, and the per-row router peft needs:
    `UVit2DModel.forward` does not pass `adapter_names` down, so a pre-hook on every LoRA layer injects it."""
    t = copy.deepcopy(parts.transformer)
    for i, a in enumerate(adapters):
        t.add_adapter(lora_config(a.meta.rank, a.meta.alpha), adapter_name=f"a{i}")
        set_peft_model_state_dict(t, dict(a.tensors), adapter_name=f"a{i}")
    t.eval()
    t.__dict__["_names"] = None

    def hook(_m: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if t.__dict__["_names"] is None:
            return None
        kwargs["adapter_names"] = t.__dict__["_names"]
        return args, kwargs

    for layer in lora_layers(t).values():
        layer.register_forward_pre_hook(hook, with_kwargs=True)  # type: ignore[attr-defined]
    return t


@contextlib.contextmanager
def peft_route(t: torch.nn.Module, names: Sequence[str | None]) -> Iterator[None]:
    t.__dict__["_names"] = [n if n is not None else "__base__" for n in names]
    try:
        yield
    finally:
        t.__dict__["_names"] = None


def counted(fn: Callable[[], object]) -> OpCounter:
    with OpCounter() as c:
        fn()
    return c


def median_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def full_depth_uvit() -> torch.nn.Module:
    """amused-256's U-ViT layer structure (22 layers, 3 + 3 ConvNeXt blocks with attention, 16 / 12 heads, a
    kv_mapper per block attention) at narrow widths: op counts depend on the structure, not the widths."""
    torch.manual_seed(0)
    return UVit2DModel(hidden_size=64, use_bias=False, cond_embed_dim=32, micro_cond_encode_dim=8,
                       micro_cond_embed_dim=40, encoder_hidden_size=32, vocab_size=1088, codebook_size=1024,
                       in_channels=16, block_out_channels=48, num_res_blocks=3, block_num_heads=12,
                       num_hidden_layers=22, num_attention_heads=16, intermediate_size=128,
                       sample_size=16).requires_grad_(False).eval()


def hoisting_counts(t: torch.nn.Module, passes: int = 3) -> tuple[int, int, int]:
    """(ops of the model's own forward, of the sampler's per-round forward from precomputed conditioning, of the
    once-per-call precomputation), for `passes` rows (G(n), G(t), Ĝ(t) of one request)."""
    c = t.config  # type: ignore[attr-defined]
    ids = torch.full((passes, c.sample_size, c.sample_size), c.vocab_size - 1)
    hidden = torch.randn(passes, 77, c.encoder_hidden_size)
    pooled = torch.randn(passes, c.cond_embed_dim)
    micro = torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * passes)
    with torch.no_grad():
        own = counted(lambda: t(ids, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=micro))
        pre = counted(lambda: precompute_conditioning(t, hidden, pooled, micro))  # type: ignore[arg-type]
        cond = precompute_conditioning(t, hidden, pooled, micro)  # type: ignore[arg-type]
        hoisted = counted(lambda: forward_with_conditioning(t, cond, ids))  # type: ignore[arg-type]
    return own.ops, hoisted.ops, pre.ops


def sampling_counts(parts: AmusedParts, requests: list[GenerationRequest]) -> tuple[int, int, int]:
    """(ops per call, host reads inside the loop, transfers inside the loop)."""
    marks: list[tuple[int, int, int]] = []
    with OpCounter() as c:
        sample(parts, requests, decode=False, on_step=lambda *_: marks.append((c.ops, c.host_reads, c.transfers)))
        total = c.ops
    return total, marks[-1][1] - marks[0][1], marks[-1][2] - marks[0][2]


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="decoding steps per sampling call (default 4)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per forward (default 3)")
    p.add_argument("--no-sample", action="store_true", help="forward counts only")
    args = p.parse_args()
    dtype = setup(args)
    parts = build_parts(args.config, args.device, dtype, seed=args.seed)
    print_environment(args.device, {"model": f"{args.config}: {describe_parts(parts)}", "rows": str(ROWS)})
    t = parts.transformer
    adapters = [random_adapter(t, 100 + i, alpha=float(16 + 16 * (i % 2)), scale=0.05) for i in range(max(COUNTS))]
    bank = LoraBank(t, max(COUNTS))
    for i, a in enumerate(adapters):
        bank.load(i + 1, a, name=f"a{i}")
    baseline = peft_model(parts, adapters)

    g = torch.Generator().manual_seed(0)
    grid = parts.resolution // parts.vae_scale_factor
    ids = torch.randint(0, parts.codebook_size, (ROWS, grid, grid), generator=g).to(args.device)
    emb = encode_text(parts, ["a photo in some style"])
    kw = dict(encoder_hidden_states=emb.hidden.expand(ROWS, -1, -1).to(args.device, dtype),
              pooled_text_emb=emb.pooled.expand(ROWS, -1).to(args.device, dtype),
              micro_conds=torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]] * ROWS, device=args.device, dtype=dtype))

    def forward(model: torch.nn.Module) -> Callable[[], object]:
        return lambda: torch.no_grad()(model)(ids, **kw)

    base = counted(forward(t))
    base_s = median_time(forward(t), args.reps)
    print(f"\n### U-ViT forward, {ROWS} rows ({args.config}); base model: {base.ops} ops, {base.host_reads} host "
          "reads\n")
    print("| distinct adapters | bank ops | bank / 1 adapter | bank / base | bank host reads + transfers "
          "| peft ops | peft host reads + transfers | peft / bank ops | time peft / bank |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    one_ops = 0
    for k in COUNTS:
        slots = [1 + (i % k) if k else 0 for i in range(ROWS)]
        names = [f"a{i % k}" if k else None for i in range(ROWS)]
        with bank.route(slots) if k else contextlib.nullcontext():  # k = 0: no route, the sampler's base batch
            ours = counted(forward(t))
            ours_s = median_time(forward(t), args.reps)
        with peft_route(baseline, names):
            ref = counted(forward(baseline))
            ref_s = median_time(forward(baseline), args.reps)
        one_ops = ours.ops if k == 1 else one_ops
        per_one = f"{ours.ops / one_ops:.3f}x" if k >= 1 else "-"
        print(f"| {k} | {ours.ops} | {per_one} | {ours.ops / base.ops:.3f}x | {ours.host_reads} + {ours.transfers} "
              f"| {ref.ops} | {ref.host_reads} + {ref.transfers} | {ref.ops / ours.ops:.2f}x | {ref_s / ours_s:.2f}x |")
    print(f"\n<!-- base forward {base_s * 1e3:.1f} ms (timing as ratios only) -->")

    print("\n### The sampler's per-round forward: the model's own vs from the prompt-only conditioning computed once "
          "per call (3 passes)\n")
    print("| U-ViT | model forward ops | per-round forward ops | saved per round | once per call |")
    print("| --- | --- | --- | --- | --- |")
    for name, model in ((args.config, t), ("full amused-256 layer structure, narrow widths", full_depth_uvit())):
        own, hoisted, pre = hoisting_counts(model)
        print(f"| {name} | {own} | {hoisted} | {own - hoisted} | {pre} |")

    if args.no_sample:
        return
    print(f"\n### `sample`, {ROWS} requests, {args.steps} steps, guidance 10 ({args.config})\n")
    print("| distinct adapters | bank ops / call | host reads + transfers in loop | peft ops / call "
          "| peft host reads + transfers in loop | peft / bank ops |")
    print("| --- | --- | --- | --- | --- | --- |")
    real_route = sampler_module._route
    # Warm-up: the prompts' CLIP embeddings and the schedule's tables are computed once per process, then cached.
    sample(parts, [GenerationRequest(f"prompt {i}", seed=i, steps=args.steps) for i in range(ROWS)], decode=False)
    for k in COUNTS:
        reqs = [GenerationRequest(f"prompt {i}", seed=i, steps=args.steps, adapter=f"a{i % k}" if k else None)
                for i in range(ROWS)]
        ours_ops, ours_reads, ours_transfers = sampling_counts(parts, reqs)

        def via_peft(p: AmusedParts, names: Sequence[str], start: int) -> Any:
            return peft_route(baseline, [None] * start + list(names))

        peft_parts = copy.copy(parts)
        peft_parts.transformer = baseline  # type: ignore[assignment]
        sampler_module._route = via_peft  # type: ignore[assignment]
        try:
            ref_ops, ref_reads, ref_transfers = sampling_counts(peft_parts, reqs)
        finally:
            sampler_module._route = real_route
        print(f"| {k} | {ours_ops} | {ours_reads} + {ours_transfers} | {ref_ops} | {ref_reads} + {ref_transfers} "
              f"| {ref_ops / ours_ops:.2f}x |")


if __name__ == "__main__":
    main()
