"""The one GPU call: every figure of the GPU check from ONE process (one CUDA start), training first, in a time box.

`bench/gpu_check.sh` runs it on the device machine (an H100 by default) after installing the carried wheels. It
builds the full amused-256 shape (random weights, bench/common.py `full`) once, on the device, in bf16, then:

1. training (bench/gpu_train.py's `train`, i.e. `trainer.train_styles` as the worker runs it, bf16 autocast):
   S = 1 rates eager and captured (`TrainConfig.cuda_graph`: a plain `torch.cuda.graph` capture of the eager
   step, no compiler), the 1500-step S = 1 run captured, styles per GPU-hour at S = 4, 8, 16, then the 1500-step
   eager run in the time left (fewer steps if it does not fit: then the 1500-step time is extrapolated and says so);
   peak memory at S = 1. Goals: 1500 steps ≤ 15 s captured (H100), ≥ 1,000 styles / GPU-hour at S = 16, ≤ 3 GB.
2. serving: `trainer.sample` vs `AmusedPipeline` (a generator on the device, tokens only) at batch 1 and 8; 8
   requests on 8 adapters in one batch vs 8 calls; 0/1/2/4/8 distinct adapters in a batch of 8; each eager and
   captured (`trainer.capture.graph_sampling`: the sampler's forward replayed from a plain CUDA graph); serving
   memory per request at the row limit (64 rows) and the bank's gathered bytes.
3. the GPU engine tests (tests/test_engine_gpu.py, in this process, with only the engine's fixtures).

Each part gets the time left minus what the later parts are guaranteed (`--budget-s` in all), and skips a run
whose estimate would overrun it; every figure is printed (and written to $OUT/gpu_figures.json) as soon as it is
measured. The commit comes from bench/COMMIT (written before the call: the device gets no .git).

    python bench/gpu_all.py                                       # on a CUDA device (bench/gpu_check.sh)
    python bench/gpu_all.py --device cpu --config tiny --quick    # dry run of every section (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import CONFIGS, build_parts, describe_parts, random_adapter, sync, time_fn  # noqa: E402
from bench.gpu_train import STEPS_PER_STYLE, Run, train  # noqa: E402
from trainer.bank import LoraBank, find_bank, slot_bytes  # noqa: E402
from trainer.capture import MemoryCounter, graph_sampling  # noqa: E402
from trainer.contracts import limits  # noqa: E402
from trainer.model import AmusedParts  # noqa: E402
from trainer.sampler import GenerationRequest, sample  # noqa: E402

SECTIONS = ("environment", "build", "training", "serving", "gpu tests", "summary")
GOAL_LONG_S, GOAL_STYLES_PER_HOUR, GOAL_PEAK_GB = 15.0, 1000.0, 3.0
RESERVE_SERVING_S, RESERVE_TESTS_S = 90.0, 60.0  # what the later parts are guaranteed out of the budget
PROMPTS = ["a mushroom in watercolor style", "a castle on a hill", "a red bicycle", "portrait of a cat",
           "a lighthouse at night", "a bowl of fruit", "mountains at sunrise", "a city street in the rain"]


class Report:
    """Prints each figure at once (flushed) and keeps $OUT/gpu_figures.json up to date, so a cut run keeps them."""

    def __init__(self, out_dir: str | None) -> None:
        self.figures: dict[str, Any] = {}
        self.path = Path(out_dir) / "gpu_figures.json" if out_dir else None

    def section(self, name: str, t0: float) -> None:
        print(f"\n## {name} [{time.perf_counter() - t0:.0f} s]", flush=True)

    def fig(self, key: str, value: Any, note: str = "") -> None:
        self.figures[key] = value
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"- {key}: {shown}{f'  ({note})' if note else ''}", flush=True)
        if self.path is not None:
            self.path.write_text(json.dumps(self.figures, indent=1, default=str))


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.total = time.perf_counter(), seconds

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def part(self, reserve_after: float) -> float:
        """This part's seconds: the time left minus what the later parts are guaranteed."""
        return max(0.0, self.left() - reserve_after)


def commit() -> str:
    f = ROOT / "bench" / "COMMIT"
    if f.is_file():
        return f.read_text().strip()
    from bench.common import git_commit

    return f"{git_commit()} (no bench/COMMIT: read from .git)"


def timed(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median seconds of `reps` runs after one warm-up."""
    return statistics.median(time_fn(fn, warmup=1, reps=reps, device=device))


# --- training ----------------------------------------------------------------------------------------------------


def training(parts: AmusedParts, args: argparse.Namespace, rep: Report, seconds: float) -> None:
    end = time.perf_counter() + seconds
    cuda = parts.device.type == "cuda"
    modes = ["captured", "eager"] if cuda else ["eager"]
    if not cuda:
        print("captured runs: not run (a CUDA graph needs a CUDA device)")
    mixed = "bf16" if cuda else "no"

    def run(n: int, steps: int, mode: str, every: int) -> Run:
        r = train(parts, n, steps, mode, mixed, every)
        rep.fig(f"train {mode} S={n} x {steps} steps",
                {"ms_per_step": round(r.step_ms, 3), "styles_per_gpu_hour": round(r.styles_per_hour),
                 "wall_s": round(r.wall_s, 2), "loop_s": round(r.loop_s, 2), "peak_gb": round(r.peak_gb, 3),
                 "last_loss": round(r.last_loss, 4)})
        return r

    def fits(estimate: float) -> bool:
        return time.perf_counter() + estimate <= end

    for mode in modes:  # lazy CUDA / cuBLAS set-up and the first capture are not training costs
        train(parts, 1, 3, mode, mixed, 1)
    rate = {m: run(1, args.rate_steps, m, max(1, args.rate_steps // 5)) for m in modes}
    overhead = {m: max(0.0, r.wall_s - r.step_ms * r.steps / 1000) for m, r in rate.items()}

    def long_run(mode: str) -> None:
        per_step = rate[mode].step_ms / 1000
        steps = min(args.steps, int((end - time.perf_counter() - overhead[mode]) / per_step))
        if steps < 50 and steps < args.steps:
            rep.fig(f"train {mode} S=1 x {args.steps} steps", "skipped: no time left in the training part")
            return
        r = run(1, steps, mode, min(50, max(1, steps // 5)))
        full = r.wall_s if steps == args.steps else r.wall_s + (args.steps - steps) * r.step_ms / 1000
        note = "measured" if steps == args.steps else f"extrapolated from {steps} steps"
        rep.fig(f"{args.steps}-step wall time, {mode}, S=1 (s)", round(full, 2), note)
        if mode == "captured":
            rep.fig("peak memory at S=1 (GB)", round(r.peak_gb, 3), f"goal ≤ {GOAL_PEAK_GB:g} GB")

    long_run(modes[0])
    for n in args.styles:
        if n == 1:
            continue
        for mode in modes:
            if mode == "eager" and cuda and n != max(args.styles):
                continue  # eager at the largest S only: the eager/captured ratio, not the whole sweep
            estimate = overhead[mode] * n + rate[mode].step_ms * n * args.rate_steps / 1000
            if not fits(estimate):
                rep.fig(f"train {mode} S={n}", f"skipped: estimated {estimate:.0f} s > time left")
                continue
            run(n, args.rate_steps, mode, max(1, args.rate_steps // 5))
    if cuda:
        long_run("eager")
        rep.fig("eager / captured step time at S=1", round(rate["eager"].step_ms / rate["captured"].step_ms, 2))


# --- serving -----------------------------------------------------------------------------------------------------


def serving(parts: AmusedParts, args: argparse.Namespace, rep: Report, seconds: float) -> None:
    end = time.perf_counter() + seconds
    dev, steps, reps = str(parts.device), args.sample_steps, args.reps
    cuda = parts.device.type == "cuda"
    t = parts.transformer

    def reqs(n: int, adapters: int = 0) -> list[GenerationRequest]:
        return [GenerationRequest(PROMPTS[i % 8], seed=i, steps=steps,
                                  adapter=f"a{i % adapters}" if adapters else None) for i in range(n)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the aMUSEd pipelines are deprecated in diffusers: the baseline, on purpose
        from diffusers import AmusedPipeline, AmusedScheduler
    pipe = AmusedPipeline(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
                          transformer=t, scheduler=AmusedScheduler(mask_token_id=parts.mask_token_id))
    pipe.set_progress_bar_config(disable=True)
    for b in (1, 8):
        def ref(b: int = b) -> object:
            return pipe(prompt=PROMPTS[:b], num_inference_steps=steps, guidance_scale=10.0, output_type="latent",
                        generator=torch.Generator(dev).manual_seed(0))
        theirs = timed(ref, dev, reps)
        ours = timed(lambda b=b: sample(parts, reqs(b), decode=False), dev, reps)
        rep.fig(f"sampling batch {b}, tokens: AmusedPipeline / ours", round(theirs / ours, 2),
                f"{theirs:.3f} s vs {ours:.3f} s, {steps} steps, guidance 10; goal ≥ 1.5x")

    bank = LoraBank(t, 8)
    for i in range(8):
        bank.load(i + 1, random_adapter(t, 100 + i, scale=0.05), name=f"a{i}")
    eight: dict[str, float] = {}
    for mode in ("eager", "captured") if cuda else ("eager",):
        graph_sampling(t, enabled=mode == "captured")
        batch = {k: timed(lambda k=k: sample(parts, reqs(8, k), decode=False), dev, reps) for k in (0, 1, 2, 4, 8)}
        for k, s in batch.items():
            rep.fig(f"{mode}: batch of 8 on {k} distinct adapters (s)", round(s, 4), f"{s / batch[0]:.2f}x base")
        calls = timed(lambda: [sample(parts, [r], decode=False) for r in reqs(8, 8)], dev, max(1, reps - 1))
        rep.fig(f"{mode}: 8 calls / one batch on 8 adapters", round(calls / batch[8], 2), "goal ≥ 4x")
        rep.fig(f"{mode}: batch on 8 adapters / base batch", round(batch[8] / batch[0], 2), "goal ≤ 1.2x")
        eight[mode] = batch[8]
        if time.perf_counter() > end:
            break
    graph_sampling(t, enabled=False)
    if "captured" in eight:
        rep.fig("serving eager / captured, batch of 8 on 8 adapters", round(eight["eager"] / eight["captured"], 2))
    memory(parts, rep, bank)
    bank.remove()


def memory(parts: AmusedParts, rep: Report, bank: LoraBank) -> None:
    """Peak memory of a sampling call per request, at 8 rows and at the row limit, every row on one adapter."""
    cuda = parts.device.type == "cuda"
    peaks = {}
    for n in (8, limits.MAX_SAMPLE_ROWS):
        rs = [GenerationRequest(PROMPTS[i % 8], seed=i, steps=2, adapter="a0") for i in range(n)]
        sample(parts, rs[:8], decode=False)  # the prompts' CLIP embeddings are cached: not the sampler's memory
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            sample(parts, rs, decode=False)
            peaks[n] = torch.cuda.max_memory_allocated() - base
        else:
            with MemoryCounter() as m:
                sample(parts, rs, decode=False)
            peaks[n] = m.peak
        rep.fig(f"sampling memory per request at {n} rows (MB)", round(peaks[n] / n / 2**20, 2),
                "peak above the resident model, 2 passes + 1 adapted pass per row")
    gathered = sum(s.at.nbytes + s.bt.nbytes for s in bank._sites if s.at is not None and s.bt is not None)
    one = slot_bytes(parts.transformer, bank.rank, bank.scale.dtype)
    rep.fig("bank gathered buffers (MB)", round(gathered / 2**20, 2),
            f"{gathered // one} adapters of {one / 2**20:.2f} MB: the most distinct adapters a route has had; "
            f"copies per row would be {limits.MAX_SAMPLE_ROWS * one / 2**20:.0f} MB at {limits.MAX_SAMPLE_ROWS} rows")


def gpu_tests(rep: Report, seconds: float) -> None:
    import pytest

    code = pytest.main(["-q", "-p", "no:cacheprovider", "--noconftest", "-p", "tests.helpers.engine_fixtures",
                        "-o", f"timeout={max(10, int(seconds))}", str(ROOT / "tests" / "test_engine_gpu.py")])
    rep.fig("GPU engine tests exit code", int(code), "0 = all passed; 5 = none ran")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", choices=CONFIGS, default="full")
    ap.add_argument("--budget-s", type=float, default=380.0, help="the whole script's time box (default 380)")
    ap.add_argument("--steps", type=int, default=STEPS_PER_STYLE, help="steps of the S = 1 long runs")
    ap.add_argument("--rate-steps", type=int, default=60, help="steps of each styles-per-hour run")
    ap.add_argument("--styles", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--sample-steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="dry run: 3 long steps, 2 rate steps, 2 sampling steps")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rate_steps, args.sample_steps, args.reps = 3, 2, 2, 1
    t0 = time.perf_counter()
    budget = Budget(args.budget_s)
    rep = Report(os.environ.get("OUT"))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but CUDA is not available (dry run: --device cpu --config tiny --quick)")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the worker: fp32 LoRA / optimizer maths on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if cuda else torch.float32

    rep.section("environment", t0)
    import diffusers
    import peft
    import transformers

    rep.fig("commit", commit())
    rep.fig("device", torch.cuda.get_device_name() if cuda else "cpu")
    rep.fig("versions", f"torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, "
                        f"transformers {transformers.__version__}, peft {peft.__version__}")
    rep.fig("budget_s", args.budget_s)

    rep.section("build", t0)
    t = time.perf_counter()
    with device:  # random init on the device itself: seconds instead of a minute of CPU init for 870 M params
        parts = build_parts(args.config, args.device, dtype)
    sync(args.device)
    rep.fig("model", f"{args.config}: {describe_parts(parts)}, weights {dtype}")
    rep.fig("build_s", round(time.perf_counter() - t, 1))

    rep.section("training", t0)
    training(parts, args, rep, budget.part(RESERVE_SERVING_S + RESERVE_TESTS_S))
    rep.section("serving", t0)
    serving(parts, args, rep, budget.part(RESERVE_TESTS_S))
    if find_bank(parts.transformer) is not None:
        find_bank(parts.transformer).remove()  # type: ignore[union-attr]
    del parts
    if cuda:
        torch.cuda.empty_cache()
    rep.section("gpu tests", t0)
    gpu_tests(rep, budget.left())

    rep.section("summary", t0)
    f = rep.figures
    long_key = "captured" if cuda else "eager"
    long_s = f.get(f"{args.steps}-step wall time, {long_key}, S=1 (s)", "not run")
    print(f"- {args.steps} steps at S=1, {long_key}: {long_s} s (goal: 1500 steps ≤ {GOAL_LONG_S:g} s captured on "
          "an H100)")
    s16 = f.get(f"train {long_key} S={max(args.styles)} x {args.rate_steps} steps", {})
    print(f"- styles per GPU-hour at S={max(args.styles)}: {s16.get('styles_per_gpu_hour', 'not run')} "
          f"(goal ≥ {GOAL_STYLES_PER_HOUR:g})")
    print(f"- peak memory at S=1: {f.get('peak memory at S=1 (GB)', 'not measured (CUDA only)')} GB (goal ≤ "
          f"{GOAL_PEAK_GB:g} GB)")
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
