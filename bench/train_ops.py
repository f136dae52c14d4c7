"""Benchmark: multi-style training — aten ops and host reads per step for S styles, and styles per hour.

1. OPS (deterministic): `train_styles` with S = 1, 2, 4, 8, 16 styles (different images and seeds), progress
   every 4 steps; a TorchDispatchMode counts every aten op and every op that makes a CUDA host wait (a scalar read,
   a data-dependent shape, a copy to the host) between two progress callbacks: steps 5..8, including the one
   read-back of their losses. Bars: at most 1 host read per interval (the read-back), kernels per step at
   S = 16 ≤ 1.05x S = 1, and on the full layer structure ≤ 4,500 kernels per step at S = 1 in fp32 and bf16.
   `--per-step-conditioning` counts the step as it was before the constant conditioning (the model's own
   forward recomputing the prompt-only values each step).
   Kernels = non-view ops (a view is metadata only; every other op is one launch on a GPU). With `--narrow` and
   `--config full`, the model has the full amused-256 layer STRUCTURE (22 transformer layers, 3+3 ConvNeXt/attention
   blocks, 16/12 heads, LoRA on all 168 to_q/to_k/to_v) at narrow widths: counts depend on structure, not widths.
   `--breakdown` adds, at S = 1, where one step's kernels go (draw, forward + loss, backward, optimizer).
   Also counted: the gathers and scatters on the trainable bank per step (`OpCounter(width=P)`: index ops on a
   tensor as wide as the bank's flat layout), and what one change of the set of styles costs (`TrainStep.set_rows`
   when one of 16 styles finishes: the new route and, since the bank is laid out by batch row, its repack).
2. TIME (`--timed-steps N`, default 6; 0 skips): one `train_styles` call with S styles x N steps vs S
   sequential `train_style` calls of N steps each, same process, after one warm-up step of each; reported as
   styles per hour and their ratio (batched / sequential). On a CPU the batch is compute-bound, so this ratio
   says little about a GPU, where the step is launch-bound (see docs/benchmarks.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import (
    build_parts,
    common_args,
    describe_parts,
    print_environment,
    setup,
    style_image,
    sync,
)
from testkit.models import build_full_narrow
from trainer.bank import LoraBank
from trainer.capture import OpCounter
from trainer.optim import SlotAdamW
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, train_style, train_styles
from trainer.train_step import TrainStep

INTERVAL = 4


def specs(n: int, steps: int) -> list[StyleSpec]:
    return [StyleSpec([style_image(k)], f"style {k}", steps=steps, seed=k, learning_rate=4e-4) for k in range(n)]


MIXED = "no"  # --mixed-precision
CONSTANT = True  # not --per-step-conditioning


def config(**kw: Any) -> TrainConfig:
    return TrainConfig(mixed_precision=MIXED, constant_conditioning=CONSTANT, **kw)




class KernelCounter(OpCounter):
    """OpCounter that also counts kernels: every op that is not a view (views are metadata only)."""

    def __init__(self, width: int | None = None) -> None:
        super().__init__(width)
        self.kernels = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not func.is_view:
            self.kernels += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def bank_width(parts: Any) -> int:
    """P: the width of the trainable bank's flat layout (every LoRA weight of one slot, at the default rank)."""
    bank = LoraBank(parts.transformer, 1, rank=TrainConfig().rank, trainable=True)
    bank.remove()
    assert bank.store is not None
    return bank.store.layout.width


def count(parts: Any, n: int) -> tuple[float, float, int, float]:
    """Ops and kernels per step, host reads in one progress interval (steps 5..8 and the read-back at 8), and
    gathers/scatters on the trainable bank per step."""
    counter = KernelCounter(bank_width(parts))
    marks: list[tuple[int, int, int, int]] = []

    def on_progress(i: int, _p: Progress) -> None:
        if i == 0:
            marks.append((counter.ops, counter.kernels, counter.host_reads, sum(counter.gathers_by_name.values())))

    with counter:
        train_styles(parts, specs(n, 2 * INTERVAL), config(progress_every=INTERVAL), Callbacks(on_progress=on_progress))
    (ops_a, k_a, reads_a, g_a), (ops_b, k_b, reads_b, g_b) = marks[0], marks[1]
    return (ops_b - ops_a) / INTERVAL, (k_b - k_a) / INTERVAL, reads_b - reads_a, (g_b - g_a) / INTERVAL


def set_change(parts: Any, n: int = 16) -> tuple[int, int, dict[str, int]]:
    """(ops, kernels, bank gathers by name) of the one set change in a run of `n` styles where one finishes
    after 2 steps and the others after 4: `TrainStep.set_rows` (the new route, the bank's repack)."""
    counter = KernelCounter(bank_width(parts))
    seen: list[tuple[int, int, dict[str, int]]] = []
    original = TrainStep.set_rows

    def set_rows(self: TrainStep, *a: Any, **kw: Any) -> Any:
        before, kernels, gathers = counter.ops, counter.kernels, dict(counter.gathers_by_name)
        out = original(self, *a, **kw)
        seen.append((counter.ops - before, counter.kernels - kernels,
                     {k: v - gathers.get(k, 0) for k, v in counter.gathers_by_name.items() if v > gathers.get(k, 0)}))
        return out

    runs = specs(n, 4)
    runs[0].steps = 2
    TrainStep.set_rows = set_rows  # type: ignore[method-assign]
    try:
        with counter:
            train_styles(parts, runs, config(progress_every=INTERVAL))
    finally:
        TrainStep.set_rows = original  # type: ignore[method-assign]
    assert len(seen) == 2, seen  # the first route, then the one change
    return seen[1]


def breakdown(parts: Any) -> dict[str, tuple[int, int]]:
    """(ops, kernels) of the 6th step of one style, by part: TrainStep's own methods and the optimizer's step."""
    counter = KernelCounter()
    parts_seen: dict[str, tuple[int, int]] = {}
    step_no = [0]
    originals = {"draw": TrainStep.draw, "forward + loss": TrainStep.forward_loss,
                 "backward + optimizer": TrainStep.backward_update, "optimizer": SlotAdamW.step}

    def wrap(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            before = (counter.ops, counter.kernels)
            out = fn(*a, **kw)
            if step_no[0] == 6:
                parts_seen[name] = (counter.ops - before[0], counter.kernels - before[1])
            return out
        return wrapped

    def draw(*a: Any, **kw: Any) -> Any:
        step_no[0] += 1
        return wrap("draw", originals["draw"])(*a, **kw)

    TrainStep.draw = draw  # type: ignore[method-assign]
    TrainStep.forward_loss = wrap("forward + loss", originals["forward + loss"])  # type: ignore[method-assign]
    TrainStep.backward_update = wrap("backward + optimizer", originals["backward + optimizer"])  # type: ignore
    SlotAdamW.step = wrap("optimizer", originals["optimizer"])  # type: ignore[method-assign]
    try:
        with counter:
            train_styles(parts, specs(1, 8), config(progress_every=INTERVAL))
    finally:
        TrainStep.draw = originals["draw"]  # type: ignore[method-assign]
        TrainStep.forward_loss = originals["forward + loss"]  # type: ignore[method-assign]
        TrainStep.backward_update = originals["backward + optimizer"]  # type: ignore[method-assign]
        SlotAdamW.step = originals["optimizer"]  # type: ignore[method-assign]
    bo, opt = parts_seen.pop("backward + optimizer"), parts_seen["optimizer"]
    parts_seen["backward"] = (bo[0] - opt[0], bo[1] - opt[1])
    return parts_seen


def timed(parts: Any, n: int, steps: int, device: str) -> tuple[float, float]:
    """(batched seconds, sequential seconds) for n styles x `steps` steps, after a one-step warm-up of each."""
    cfg = config(progress_every=steps)
    train_styles(parts, specs(n, 1), cfg)
    sync(device)
    t = time.perf_counter()
    train_styles(parts, specs(n, steps), cfg)
    sync(device)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    for spec in specs(n, steps):
        train_style(parts, spec.images, descriptor=spec.descriptor, config=config(
            steps=steps, seed=spec.seed or 0, learning_rate=spec.learning_rate, progress_every=steps))
    sync(device)
    return batched, time.perf_counter() - t


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--styles", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--timed-steps", type=int, default=6, help="steps per style in the timed part (0 = skip)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="autocast (CUDA only)")
    p.add_argument("--narrow", action="store_true", help="with --config full: narrow widths, same layer structure")
    p.add_argument("--breakdown", action="store_true", help="also where one S = 1 step's kernels go")
    p.add_argument("--set-change", action="store_true", help="also what one change of the set of styles costs")
    p.add_argument("--per-step-conditioning", action="store_true",
                   help="TrainConfig(constant_conditioning=False): the step as before, for comparison")
    args = p.parse_args()
    global MIXED, CONSTANT
    MIXED = args.mixed_precision
    CONSTANT = not args.per_step_conditioning
    dtype = setup(args)
    if args.narrow and args.config == "full":
        parts = build_full_narrow(args.seed)
        for m in (parts.transformer, parts.text_encoder):
            m.to(args.device, dtype)
        parts.vqvae.to(args.device)
    else:
        parts = build_parts(args.config, args.device, dtype, args.seed)
    print_environment(args.device, {"model": describe_parts(parts), "weights dtype": args.dtype,
                                    "progress interval": f"{INTERVAL} steps",
                                    "mixed precision": MIXED,
                                    "conditioning": "once per style" if CONSTANT else "every step"})

    if args.breakdown:
        print("| part of one S = 1 step | aten ops | kernels (non-view ops) |")
        print("| --- | --- | --- |")
        for name, (ops, kernels) in breakdown(parts).items():
            print(f"| {name} | {ops} | {kernels} |", flush=True)
        print()
    print("| styles S | aten ops / step | kernels / step | kernels vs S = 1 | host reads in one interval "
          "(4 steps + read-back) | gathers/scatters on the bank / step |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for n in args.styles:
        ops, kernels, reads, gathers = count(parts, n)
        base = base or kernels
        print(f"| {n} | {ops:.0f} | {kernels:.0f} | {kernels / base:.3f}x | {reads} | {gathers:g} |", flush=True)
    if args.set_change:
        change_ops, change_kernels, change_gathers = set_change(parts)
        print(f"\nOne set change (16 styles -> 15, `TrainStep.set_rows`): {change_ops} aten ops, {change_kernels} "
              f"kernels; gathers/scatters on the bank: {change_gathers or 0}", flush=True)

    if args.timed_steps > 0:
        print("\n| styles S | batched s | sequential s | styles/hour batched | sequential | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for n in args.styles:
            b, s = timed(parts, n, args.timed_steps, args.device)
            print(f"| {n} | {b:.2f} | {s:.2f} | {n * 3600 / b:.0f} | {n * 3600 / s:.0f} | {s / b:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
