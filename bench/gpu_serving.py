"""GPU serving probe: a distinct-adapter sweep, eager and captured, and the batch-of-8 goals.

For k distinct adapters in a batch of `--rows` requests (k = 0 is the base model), one `trainer.sample` call of
12 steps at guidance 10 on the full amused-256 shape in bf16, eager and then with `trainer.compile_transformer`
(torch.compile, CUDA graphs). Prints median seconds and the ratios the goals are stated in:
- 8 requests on 8 different adapters vs 8 requests on the base model (goal ≤ 1.2×),
- 8 single-request calls vs one batch of 8 on 8 adapters (goal ≥ 4×).
Runs on CUDA only; `--device cpu --config tiny --steps 2` is a smoke test of the script itself.

    python bench/gpu_serving.py --device cuda --config full --dtype bf16
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import build_parts, common_args, describe_parts, print_environment, random_adapter, setup, time_fn
from trainer.bank import LoraBank
from trainer.capture import compile_transformer
from trainer.sampler import GenerationRequest, sample


def timed(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median seconds after one warm-up (and, compiled, the capture)."""
    return statistics.median(time_fn(fn, warmup=1, reps=reps, device=device))


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8, help="requests per batch (default 8)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sweep", default="0,1,2,4,8", help="distinct adapter counts (each ≤ --rows)")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    args = p.parse_args()
    dtype = setup(args)
    parts = build_parts(args.config, args.device, dtype, seed=args.seed)
    print_environment(args.device, {"model": describe_parts(parts), "rows": str(args.rows), "steps": str(args.steps)})
    counts = [int(k) for k in args.sweep.split(",")]
    bank = LoraBank(parts.transformer, max(*counts, args.rows, 1))
    for i in range(bank.capacity):
        bank.load(i + 1, random_adapter(parts.transformer, 100 + i, scale=0.05), name=f"a{i}")

    def batch(k: int) -> list[GenerationRequest]:
        return [GenerationRequest(f"prompt {i}", seed=i, steps=args.steps, adapter=f"a{i % k}" if k else None)
                for i in range(args.rows)]

    modes = ["eager"] if args.no_compile else ["eager", "captured"]
    results: dict[tuple[str, int], float] = {}
    singles: dict[str, float] = {}
    for mode in modes:
        if mode == "captured":
            compile_transformer(parts.transformer)
        for k in counts:
            reqs = batch(k)
            results[mode, k] = timed(lambda reqs=reqs: sample(parts, reqs, decode=False), args.device, args.reps)
            print(f"{mode}: {args.rows} requests, {k} distinct adapters: {results[mode, k]:.3f} s", flush=True)
        reqs = batch(args.rows)
        singles[mode] = timed(lambda reqs=reqs: [sample(parts, [r], decode=False) for r in reqs], args.device,
                              max(1, args.reps - 1))
        print(f"{mode}: {args.rows} single-request calls on {args.rows} adapters: {singles[mode]:.3f} s", flush=True)

    print(f"\n| mode | k distinct adapters | s per batch of {args.rows} | vs base batch |")
    print("| --- | --- | --- | --- |")
    for (mode, k), s in results.items():
        print(f"| {mode} | {k} | {s:.3f} | {s / results[mode, 0]:.2f}x |" if (mode, 0) in results else
              f"| {mode} | {k} | {s:.3f} | - |")
    for mode in modes:
        k = args.rows if (mode, args.rows) in results else max(counts)
        print(f"\n{mode}: {args.rows} calls / one batch on {k} adapters = {singles[mode] / results[mode, k]:.2f}x "
              f"(goal ≥ 4x); batch on {k} adapters / base batch = "
              f"{results[mode, k] / results.get((mode, 0), float('nan')):.2f}x (goal ≤ 1.2x)")


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    main()
