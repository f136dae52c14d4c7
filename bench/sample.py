"""Benchmark: MaskGIT sampling, ours (`trainer.sample`) vs diffusers' deprecated `AmusedPipeline`, and
mixed-adapter batching.

1. Base model, 12 steps, guidance 10, 256 px: `AmusedPipeline` (built from the same parts, `AmusedScheduler`)
   vs `trainer.sample`, at batch 1 (one prompt / one request) and batch 8 (8 prompts / 8 requests, distinct
   prompts and seeds). Two rows each: end to end to PIL images (`output_type="pil"` / `decode=True`), and
   tokens only (`output_type="latent"` / `decode=False`), which isolates the sampler from the VQ decode that
   both sides do identically. Goal: ours no slower (speed-up ≥ 1×, within noise).
2. Eight different random rank-16 adapters resident in `LoraBank(transformer, 8, rank=16)`: one `sample`
   call with 8 requests each on its own adapter vs 8 single-request `sample` calls one after another.
   Goal: ≥ 4×. Also checks that each row's tokens equal its single-request run.

Baseline and ours alternate within each repetition (warm-up first), medians reported.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import AmusedPipeline, AmusedScheduler

from bench.common import (
    REPORT_COLUMNS,
    build_parts,
    common_args,
    describe_parts,
    load_average,
    print_environment,
    random_adapter,
    report,
    setup,
    table_header,
    time_pair,
)
from trainer.bank import LoraBank
from trainer.sampler import GenerationRequest, sample

PROMPTS = [
    "a mushroom in watercolor style", "a castle on a hill", "a red bicycle", "portrait of a cat",
    "a lighthouse at night", "a bowl of fruit", "mountains at sunrise", "a city street in the rain",
]
STEPS = 12
GUIDANCE = 10.0


def make_adapters(parts, n: int, rank: int, seed: int) -> list:
    """n random adapters (small values, so outputs change without blowing up)."""
    return [random_adapter(parts.transformer, seed + i, rank=rank, alpha=2.0 * rank, scale=0.05,
                           base_model=parts.model_id) for i in range(n)]


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per side (default 2, quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side before the batch-1 cases; "
                   "larger batches reuse the warmed-up kernels and the adapter case uses its check run")
    p.add_argument("--adapter-decode", action="store_true",
                   help="also time the mixed-adapter case end to end to PIL (the decode is the same work on "
                   "both sides)")
    p.add_argument("--batch", type=int, default=8, help="the large batch size (default 8)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: pipeline,adapters")
    p.add_argument("--pipeline-generator", choices=("cpu", "device"), default="cpu",
                   help="where AmusedPipeline draws its random numbers: a CPU generator (the documented usage; "
                   "on CUDA every step copies probabilities to the host) or one on --device")
    args = p.parse_args()
    dtype = setup(args)
    reps = args.reps if args.reps is not None else (1 if args.quick else 2)
    if args.quick and args.batch == 8:
        args.batch = 4
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    dev = args.device
    gen_device = dev if args.pipeline_generator == "device" else "cpu"

    t = time.perf_counter()
    parts = build_parts(args.config, dev, dtype, args.seed)
    build_s = time.perf_counter() - t
    print(f"## sample — config {args.config}\n")
    print_environment(dev, {"model": describe_parts(parts), "weights dtype": args.dtype,
                            "sampling": f"{STEPS} steps, guidance {GUIDANCE}, {parts.resolution} px",
                            "build_s": f"{build_s:.1f}", "reps": f"{reps} after {args.warmup} warm-up"})
    table_header(REPORT_COLUMNS)

    big = args.batch
    prompts = (PROMPTS * (big // len(PROMPTS) + 1))[:big]

    if "pipeline" not in skip:
        pipe = AmusedPipeline(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
                              transformer=parts.transformer,
                              scheduler=AmusedScheduler(mask_token_id=parts.mask_token_id))
        pipe.set_progress_bar_config(disable=True)

        def pipe_fn(batch: int, output_type: str):
            return lambda: pipe(prompt=prompts[:batch] if batch > 1 else prompts[0], num_inference_steps=STEPS,
                                guidance_scale=GUIDANCE, generator=torch.Generator(gen_device).manual_seed(0),
                                output_type=output_type)

        def ours_fn(batch: int, decode: bool):
            reqs = [GenerationRequest(prompt=prompts[i], seed=i, steps=STEPS, guidance_scale=GUIDANCE)
                    for i in range(batch)]
            return lambda: sample(parts, reqs, decode=decode)

        # Same computation check: batch 1, same seed -> the same image (docs/amused-notes.md §4 semantics).
        ref_img = pipe_fn(1, "pil")().images[0]
        our_img = ours_fn(1, True)()[0].image
        same = ref_img.tobytes() == our_img.tobytes()
        for batch in (1, big):
            for decode in (True, False):
                b, o = time_pair(pipe_fn(batch, "pil" if decode else "latent"), ours_fn(batch, decode),
                                 warmup=args.warmup if batch == 1 else 0, reps=reps, device=dev)
                what = "to PIL" if decode else "tokens only"
                note = f"batch-1 images identical to pipeline: {same}" if batch == 1 and decode else ""
                report(f"base, batch {batch}, {what}: AmusedPipeline vs sample", b, o, goal=1.0, extra=note)
        del pipe

    if "adapters" not in skip:
        adapters = make_adapters(parts, big, 16, args.seed)
        t_slots = time.perf_counter()
        bank = LoraBank(parts.transformer, big, rank=16)
        for slot, ad in enumerate(adapters, start=1):
            bank.load(slot, ad, name=f"style{slot}")
        print(f"<!-- LoraBank({big}) creation + {big} loads: {time.perf_counter() - t_slots:.2f} s -->")
        reqs = [GenerationRequest(prompt=prompts[i], seed=i, steps=STEPS, guidance_scale=GUIDANCE,
                                  adapter=f"style{i + 1}") for i in range(big)]
        for decode in ((False, True) if args.adapter_decode else (False,)):
            def sequential(decode=decode):
                return [sample(parts, [r], decode=decode)[0] for r in reqs]

            def mixed(decode=decode):
                return sample(parts, reqs, decode=decode)

            if not decode:
                alone = sequential()
                together = mixed()
                equal = all(torch.equal(a.tokens, b.tokens) for a, b in zip(alone, together, strict=True))
                diff = sum(int((a.tokens != b.tokens).sum()) for a, b in zip(alone, together, strict=True))
                note = f"rows' tokens equal single runs: {equal} ({diff} of {big * alone[0].tokens.numel()} differ)"
            else:
                note = ""
            # tokens-only: the equality check above was the warm-up; to-PIL reuses the same kernels plus decode.
            b, o = time_pair(sequential, mixed, warmup=0, reps=reps, device=dev)
            what = "to PIL" if decode else "tokens only"
            report(f"{big} requests x {big} different adapters, {what}: {big} sequential calls vs 1 mixed batch",
                   b, o, goal=4.0, extra=note)
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
