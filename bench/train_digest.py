"""Benchmark helper: a digest of what training computes, to compare two engine versions bit for bit.

Trains the tiny model (CPU, fp32, 1 thread) in three runs — one style; three styles with their own seeds and
learning rates; a continuous-batching run where a style finishes, another joins and one is cancelled — and
prints, per run, the sha256 of every style's losses (as float64 bytes) and of its adapter tensors. Run it on two
commits: equal digests mean equal losses and adapters, bit for bit (docs/benchmarks.md §6).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import style_image
from trainer.model import build_tiny
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, TrainResult, train_styles

STEPS = 20


def digest(results: Sequence[TrainResult]) -> str:
    h = hashlib.sha256()
    for r in results:
        h.update(np.asarray(r.losses, dtype=np.float64).tobytes())
        for k, v in sorted((r.adapter.tensors if r.adapter else {}).items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
    return h.hexdigest()[:16]


def spec(k: int, steps: int = STEPS) -> StyleSpec:
    return StyleSpec([style_image(k)], f"style {k}", steps=steps, seed=k + 1, learning_rate=(4e-4, 1e-3, 2e-4)[k % 3])


def main() -> None:
    torch.set_num_threads(1)
    parts = build_tiny(0)
    cfg = TrainConfig(progress_every=1)
    print("| run | digest of losses and adapters |")
    print("| --- | --- |")
    print(f"| S = 1, {STEPS} steps | {digest(train_styles(parts, [spec(0)], cfg))} |", flush=True)
    print(f"| S = 3, {STEPS} steps | {digest(train_styles(parts, [spec(k) for k in range(3)], cfg))} |", flush=True)

    # Continuous batching: style 1 finishes at step 6, style 2 joins at the first boundary after step 8 (its
    # slot), style 0 is cancelled at step 14; style 2 runs to its end.
    step = [0]

    def on_progress(i: int, p: Progress) -> None:
        if i == 0:
            step[0] = p.step

    def join(_free: int) -> list[StyleSpec]:
        if step[0] >= 8 and not joined:
            joined.append(1)
            return [spec(2, 10)]
        return []

    joined: list[int] = []
    runs = train_styles(parts, [spec(0), spec(1, 6)], TrainConfig(progress_every=1, capacity=2),
                        Callbacks(on_progress=on_progress, join=join,
                                  should_stop=lambda i: i == 0 and step[0] >= 14))
    assert [r.step for r in runs] == [14, 6, 10] and runs[0].stopped, [r.step for r in runs]
    print(f"| join, finish, cancel | {digest(runs)} |", flush=True)


if __name__ == "__main__":
    main()
