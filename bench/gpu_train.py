"""GPU training benchmark, amused-256 shape, bf16, eager vs CUDA graph (its `train` runs bench/gpu_all.py's training).

Builds the U-ViT, VQ-GAN and CLIP text tower of amused-256 with random weights (bench/common.py `full`: the hub
configs, no hub access; built directly on the device) and trains with `trainer.train_styles` as the worker does:
bf16 weights, bf16 autocast, TF32 on, progress (one loss read-back) every 50 steps.

- LONG runs: 1500 steps at S = 1, eager and captured (`TrainConfig.cuda_graph`): wall time of the whole call
  (encoding, encoder offload, warm-up and capture included), the loop's own time, and peak memory
  (`torch.cuda.max_memory_allocated`). Goals: 1500 steps <= 15 s on an H100 (moonshot <= 10 s), peak <= 3 GB.
- RATE runs, styles per GPU-hour for S = 1, 4, 8, 16, eager and captured: `--rate-steps` steps of S styles; the
  steady-state time per step between the first and the last progress report (after warm-up and capture) gives
  S x 3600 / (1500 x step time): styles of 1500 steps each per GPU-hour. Goal: >= 1,000 at S = 16.
One markdown table, a row as each run ends, most telling runs first; a run whose estimate (from the S = 1 rate
of its mode) would overrun `--budget-s` is skipped and says so, so that the script keeps to its time box
(the default budget is 180 s, model build included).

Smoke runs: `--quick` (300 long steps, 30 rate steps, S = 1 and 4); on a machine without CUDA,
`--device cpu --preset tiny --steps 3` runs every CPU-side path (captured rows are reported as not run).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import CONFIGS, build_parts, describe_parts, print_environment, style_image
from trainer.model import AmusedParts, resolve_dtype, resolve_mixed_precision
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, train_styles

STEPS_PER_STYLE = 1500  # the StyleDrop recipe: styles per GPU-hour count styles of this many steps
GOAL_SECONDS, MOONSHOT_SECONDS, GOAL_PEAK_GB, GOAL_STYLES_PER_HOUR = 15.0, 10.0, 3.0, 1000.0
MODES = ("eager", "captured")


@dataclass
class Run:
    styles: int
    steps: int
    mode: str
    wall_s: float  # the whole train_styles call
    loop_s: float  # the training loop (from the last progress report's rate)
    step_ms: float  # steady state: between the first and the last progress report
    peak_gb: float
    last_loss: float

    @property
    def styles_per_hour(self) -> float:
        return self.styles * 3600 / (STEPS_PER_STYLE * self.step_ms / 1000)


def train(parts: AmusedParts, n: int, steps: int, mode: str, mixed: str, progress_every: int) -> Run:
    cuda = parts.device.type == "cuda"
    specs = [StyleSpec([style_image(k)], f"style {k}", steps=steps, seed=k, learning_rate=4e-4) for k in range(n)]
    marks: list[tuple[int, float]] = []
    last: list[Progress] = []

    def on_progress(i: int, p: Progress) -> None:
        if i == 0:  # every style reports at the same steps: style 0's reports time the batch
            marks.append((p.step, time.perf_counter()))
            last[:] = [p]

    config = TrainConfig(progress_every=progress_every, mixed_precision=mixed, cuda_graph=mode == "captured")  # type: ignore[arg-type]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    results = train_styles(parts, specs, config, Callbacks(on_progress=on_progress))
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"{mode} S={n}: a style failed") from failed[0]
    losses = [r.losses[-1] for r in results]
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"{mode} S={n}: non-finite loss {losses}")
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    step_ms = (t1 - t0) / (s1 - s0) * 1000 if s1 > s0 else wall / steps * 1000
    p = last[0]
    return Run(n, steps, mode, wall, p.step / p.steps_per_second, step_ms,
               torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"), sum(losses) / len(losses))


def gb(r: Run) -> str:
    return "-" if math.isnan(r.peak_gb) else f"{r.peak_gb:.2f}"


def goals(r: Run, long: bool) -> str:
    if not long:
        return "met" if r.styles_per_hour >= GOAL_STYLES_PER_HOUR else "NOT met"
    t = "moonshot met" if r.loop_s <= MOONSHOT_SECONDS else ("met" if r.loop_s <= GOAL_SECONDS else "NOT met")
    return t if math.isnan(r.peak_gb) else f"{t}; peak {'met' if r.peak_gb <= GOAL_PEAK_GB else 'NOT met'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (smoke run of the code paths)")
    ap.add_argument("--preset", choices=CONFIGS, default="full", help="model shape (full = amused-256)")
    ap.add_argument("--dtype", default="auto", help="weights: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--mixed-precision", default="auto", help="autocast: auto (bf16 on CUDA, no on CPU), no, bf16")
    ap.add_argument("--steps", type=int, default=STEPS_PER_STYLE, help="steps of the long S = 1 runs")
    ap.add_argument("--rate-steps", type=int, default=100, help="steps of each styles-per-hour run")
    ap.add_argument("--styles", type=int, nargs="+", default=[1, 4, 8, 16], help="S values of the rate runs")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--budget-s", type=float, default=180.0,
                    help="total time box: runs estimated to overrun it are skipped")
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 + 30 steps, S = 1 and 4")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.quick:
        args.steps, args.rate_steps, args.styles = min(args.steps, 300), min(args.rate_steps, 30), [1, 4]
    rate_steps = min(args.rate_steps, args.steps)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available (smoke run: --device cpu --preset tiny)")
    dtype = resolve_dtype(args.dtype, device.type)
    mixed = resolve_mixed_precision(args.mixed_precision, device.type)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the worker: fp32 LoRA/optimizer maths on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    modes = [m for m in args.modes if m == "eager" or device.type == "cuda"]  # a CUDA graph needs CUDA
    with device:  # random init on the device itself: seconds instead of a minute of CPU init for 870 M params
        parts = build_parts(args.preset, args.device, dtype)
    print_environment(args.device, {"model": describe_parts(parts), "weights": str(dtype), "autocast": mixed,
                                    "build s": f"{time.perf_counter() - t_start:.1f}"})
    if len(modes) < len(args.modes):
        print("captured runs: not run (a CUDA graph needs a CUDA device)\n")

    # Most telling first, so that a time box cuts the least useful runs: S = 1 rates (which also give the
    # estimates), the captured long run, the other S, the eager long run.
    plan = [("rate", 1, rate_steps, m) for m in modes] + [("long", 1, args.steps, m) for m in modes if m != "eager"]
    plan += [("rate", n, rate_steps, m) for n in args.styles if n != 1 for m in modes]
    plan += [("long", 1, args.steps, m) for m in modes if m == "eager"]
    for mode in modes:  # one untimed short run per mode first: lazy CUDA/cuBLAS set-up is not a training cost
        train(parts, 1, min(rate_steps, 3), mode, mixed, 1)
    print(f"Styles per GPU-hour: S styles x {rate_steps} steps, steady-state step time extrapolated to "
          f"{STEPS_PER_STYLE}-step styles (goal >= {GOAL_STYLES_PER_HOUR:g}). Long runs: S = 1 x {args.steps} "
          f"steps, loop time (goals <= {GOAL_SECONDS:g} s, moonshot <= {MOONSHOT_SECONDS:g} s; peak <= "
          f"{GOAL_PEAK_GB:g} GB).\n")
    print("| run | S | mode | steps | ms / step | styles / GPU-hour | wall s (whole call) | loop s | peak GB | "
          "last loss | goals |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    done: dict[tuple[str, int, str], Run] = {}
    for kind, n, steps, mode in plan:
        long = kind == "long"
        left = args.budget_s - (time.perf_counter() - t_start)
        ref = done.get(("rate", 1, mode))
        estimate = 0.0 if ref is None else (ref.wall_s - ref.loop_s) * n + ref.step_ms * n * steps / 1000
        if estimate > left:  # step time grows at most linearly with S: a safe upper estimate
            print(f"| {kind} | {n} | {mode} | {steps} | skipped: estimated {estimate:.0f} s > {left:.0f} s left "
                  "of --budget-s | | | | | | |", flush=True)
            continue
        r = done[(kind, n, mode)] = train(parts, n, steps, mode, mixed, 50 if long else max(1, steps // 5))
        print(f"| {kind} | {n} | {mode} | {steps} | {r.step_ms:.2f} | {r.styles_per_hour:.0f} | {r.wall_s:.1f} | "
              f"{r.loop_s:.1f} | {gb(r)} | {r.last_loss:.3f} | {goals(r, long)} |", flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
