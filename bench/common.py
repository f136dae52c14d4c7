"""Shared helpers for the engine benchmarks: model configs, timing, and the report format.

Every benchmark builds its models in-process with the same classes as `trainer.model.build_tiny` (no hub
download), times a baseline and our engine in the same process with warm-up and repetitions, and prints median
times, their ratio, and where it ran (command, CPU model, cores, torch/diffusers versions, git commit).

Configs (`--config`):
- `tiny`: `trainer.model.build_tiny()` (smoke runs of the scripts themselves; numbers mean nothing).
- `mid`: a "mid-size" random aMUSEd, wide enough that the U-ViT, the VQ-GAN and CLIP each cost real time on a
  CPU: U-ViT hidden 256, 4 layers, 4 heads, codebook 1024; VQ-GAN 5 levels (32, 32, 64, 64, 128); CLIP 256 wide.
- `full`: the real amused-256 architecture (docs/amused-notes.md §1), random weights: U-ViT 603.5 M parameters,
  VQ-GAN 146.2 M, CLIP-L text tower 123.7 M. The tokenizer is the tiny offline one (ids < 514 fit CLIP's 49408).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testkit.models import build_full, build_mid  # noqa: E402
from testkit.models import random_adapter as random_adapter  # noqa: E402 - the bench scripts import it from here
from trainer.model import AmusedParts, build_tiny  # noqa: E402

CONFIGS = ("tiny", "mid", "full")


# --------------------------------------------------------------------------------------------------------------
# Models (the random-weight configs are testkit/models.py: the tests build `mid` too)
# --------------------------------------------------------------------------------------------------------------


def build_parts(config: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> AmusedParts:
    """Build a config and move it like `trainer.load_base` does (VQ-GAN always fp32)."""
    parts = {"tiny": build_tiny, "mid": build_mid, "full": build_full}[config](seed)
    for m in (parts.transformer, parts.text_encoder):
        m.to(device)
        if dtype != torch.float32:
            m.to(dtype)
    parts.vqvae.to(device)
    return parts


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_parts(parts: AmusedParts) -> str:
    return (f"U-ViT {count_params(parts.transformer) / 1e6:.1f} M params, "
            f"VQ-GAN {count_params(parts.vqvae) / 1e6:.1f} M, "
            f"text {count_params(parts.text_encoder) / 1e6:.1f} M, codebook {parts.codebook_size}, "
            f"{parts.resolution} px -> {parts.resolution // parts.vae_scale_factor}^2 tokens")


def style_image(seed: int = 0, size: tuple[int, int] = (320, 256)) -> Image.Image:
    """A seeded non-square RGB image (exercises resize + crop), smooth enough to look like a picture."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, size=(h // 16, w // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, warmup: int, reps: int, device: str | torch.device = "cpu") -> list[float]:
    """Run `fn` warm-up times untimed, then `reps` timed times; return the timed seconds."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def time_pair(baseline: Callable[[], object], ours: Callable[[], object], *, warmup: int, reps: int,
              device: str | torch.device = "cpu") -> tuple[list[float], list[float]]:
    """Warm both up, then alternate baseline/ours `reps` times (so machine load hits both alike)."""
    for _ in range(warmup):
        baseline()
        ours()
        sync(device)
    b_times: list[float] = []
    o_times: list[float] = []
    for _ in range(reps):
        b_times += time_fn(baseline, warmup=0, reps=1, device=device)
        o_times += time_fn(ours, warmup=0, reps=1, device=device)
    return b_times, o_times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """min-max of the repetitions, for the table."""
    return f"{min(xs):.3f}-{max(xs):.3f}"


def peak_rss_mb() -> float:
    """Process peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_cuda_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20


# --------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def load_average() -> str:
    """1/5/15-minute load average: other processes on a shared machine make CPU timings noisy."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def environment(device: str) -> dict[str, str]:
    import diffusers
    import peft
    import transformers

    env = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} (torch threads {torch.get_num_threads()})",
        "device": device,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "git": git_commit(),
        "load average at start": load_average(),
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def print_environment(device: str, extra: dict[str, str] | None = None) -> None:
    for k, v in {**environment(device), **(extra or {})}.items():
        print(f"- {k}: {v}")
    print()


def table_header(columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")


def report(case: str, baseline: list[float], ours: list[float], *, unit: str = "s", goal: float | None = None,
           extra: str = "") -> float:
    """One markdown table row: case, baseline and our median (min-max), speed-up = baseline / ours, goal check."""
    b, o = median(baseline), median(ours)
    ratio = b / o if o > 0 else float("inf")
    verdict = "" if goal is None else ("met" if ratio >= goal else "NOT met")
    goal_s = "" if goal is None else f"≥ {goal:g}×"
    print(f"| {case} | {b:.3f} {unit} ({spread(baseline)}) | {o:.3f} {unit} ({spread(ours)}) | {ratio:.2f}× | "
          f"{goal_s} {verdict} | {extra} |")
    sys.stdout.flush()
    return ratio


REPORT_COLUMNS = ["case", "baseline median (min-max)", "ours median (min-max)", "speed-up", "goal", "notes"]


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", choices=CONFIGS, default="mid", help="model size (default: mid)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="U-ViT and text-encoder weights (the VQ-GAN stays fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)")
    return p


def setup(args: argparse.Namespace) -> torch.dtype:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
