"""Benchmark: the queue wait, in steps, of a style that arrives while a multi-style batch trains.

Deterministic (counted in steps of the running batch, not seconds): a batch of 2 styles trains `--steps` steps
(the second one `--short` steps, so one slot frees early); a third style arrives after `--arrive` steps.
- before (no continuous batching: the run's styles are fixed when it starts): the arrival waits for the rest of
  the batch, `steps - arrive` steps;
- after, a slot free (STYLEDROP_TRAIN_BATCH = 3): it joins at the next step boundary at which the run asks
  (`TrainConfig.join_every`: 1 = every step; the worker asks every `progress_every` steps);
- after, the batch full (STYLEDROP_TRAIN_BATCH = 2): it joins when the short style leaves.
Each case also checks that the joined style's adapter equals the same style trained alone (largest relative
difference over the LoRA tensors).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import build_parts, common_args, describe_parts, print_environment, setup, style_image
from trainer.model import AmusedParts
from trainer.train import Callbacks, Progress, StyleSpec, TrainConfig, TrainResult, train_styles


def spec(k: int, steps: int) -> StyleSpec:
    return StyleSpec([style_image(k)], f"style {k}", steps=steps, seed=k, learning_rate=4e-4)


def run(parts: AmusedParts, *, steps: int, short: int, arrive: int, capacity: int,
        join_every: int) -> tuple[int, TrainResult | None]:
    """(steps the arrival waited, its result when it joined the batch)."""
    done = [0]  # steps the batch has run (style 0 reports every step)

    def on_progress(i: int, p: Progress) -> None:
        if i == 0:
            done[0] = p.step

    joined_at: list[int] = []

    def join(free: int) -> list[StyleSpec]:
        if joined_at or done[0] < arrive:
            return []
        joined_at.append(done[0])
        return [spec(2, steps)]

    # before (capacity 0): no joining; the arrival is trained once the whole batch is over
    cb = Callbacks(on_progress=on_progress, join=join if capacity else None)
    cfg = TrainConfig(progress_every=1, capacity=max(capacity, 2), join_every=join_every)
    results = train_styles(parts, [spec(0, steps), spec(1, short)], cfg, cb)
    if not joined_at:
        return steps - arrive, None
    return joined_at[0] - arrive, results[2]


def rel_diff(a: TrainResult, b: TrainResult) -> float:
    assert a.adapter is not None and b.adapter is not None
    return max(float((a.adapter.tensors[k] - v).norm() / v.norm().clamp(min=1e-12))
               for k, v in b.adapter.tensors.items())


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps of the batch's long style (and of the arrival)")
    p.add_argument("--short", type=int, default=20, help="steps of the batch's short style")
    p.add_argument("--arrive", type=int, default=12, help="the third style arrives after this many batch steps")
    args = p.parse_args()
    dtype = setup(args)
    parts = build_parts(args.config, args.device, dtype, args.seed)
    print_environment(args.device, {"model": describe_parts(parts), "batch": f"2 styles of {args.steps} and "
                                    f"{args.short} steps; a third arrives after {args.arrive} steps"})
    alone = train_styles(parts, [spec(2, args.steps)], TrainConfig(progress_every=1))[0]
    before, _ = run(parts, steps=args.steps, short=args.short, arrive=args.arrive, capacity=0, join_every=1)
    print("| case | queue wait (steps of the running batch) | vs before | joined adapter vs alone (max rel. diff) |")
    print("| --- | --- | --- | --- |")
    print(f"| before: styles fixed when the run starts | {before} | 1.00x | (trains after the batch) |")
    cases = [("slot free (batch 3), asked every step", 3, 1),
             ("slot free (batch 3), asked every 5 steps (worker default progress_every)", 3, 5),
             ("batch full (batch 2): joins when the short style leaves", 2, 1)]
    for name, capacity, every in cases:
        wait, got = run(parts, steps=args.steps, short=args.short, arrive=args.arrive, capacity=capacity,
                        join_every=every)
        diff = f"{rel_diff(got, alone):.1e}" if got is not None else "-"
        print(f"| after: {name} | {wait} | {wait / before:.2f}x | {diff} |", flush=True)


if __name__ == "__main__":
    main()
