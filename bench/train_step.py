"""Benchmark: one StyleDrop LoRA training step, ours (`trainer.train_style`) vs diffusers' train_amused.py loop.

OURS: the real `train_style` call. Its `on_progress` callback (progress_every=1) timestamps every step; the
per-step time is the difference between consecutive callbacks, the first `--warmup` steps are dropped, and the
median of the rest is reported. This times exactly the engine's loop (mask, forward, loss, backward, AdamW,
loss read-back); the VQ encode and CLIP encode happen once before the loop and are reported separately.

REFERENCE: per step what examples/amused/train_amused.py (diffusers 0.42.1) does with `--use_lora` on one
instance image: the dataset transform (resize + crop + to-tensor) and prompt tokenization, VQ-encode + quantize
(no grad), CLIP-encode (no grad), cosine masking with `argsort` of random numbers, U-ViT forward, cross-entropy,
backward, AdamW step. Same model, same LoRA (rank 16, alpha 32 on to_q/to_k/to_v via
`transformer.add_adapter(lora_config(16, 32))`), same optimizer settings, same process. The optimizer gets the
LoRA parameters only on both sides (the script hands AdamW the whole model, whose frozen parameters it skips),
so the difference measured is the per-step re-encoding.

`--steps N` (e.g. 1500 on CUDA with `--mixed-precision bf16`) instead runs one full `train_style` and reports
its wall-clock time and peak memory against the goal "1500 steps ≤ 60 s, peak ≤ 3 GB" (full config on a GPU).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

import torch
import torch.nn.functional as F

from bench.common import (
    REPORT_COLUMNS,
    build_parts,
    common_args,
    describe_parts,
    load_average,
    median,
    peak_cuda_mb,
    peak_rss_mb,
    print_environment,
    report,
    setup,
    spread,
    style_image,
    sync,
    table_header,
)
from trainer.encode import micro_conds, prepare_image
from trainer.lora import lora_config
from trainer.train import TrainConfig, train_style, training_prompt

DESCRIPTOR = "watercolor painting"
REF_ADAPTER = "reference_lora"


def run_ours(parts, image, steps: int, warmup: int, device: str, mixed_precision: str) -> dict:
    """One `train_style` call; per-step times from the progress callback."""
    stamps: list[float] = []

    def on_progress(_p) -> None:
        sync(device)  # on CUDA the engine already syncs (float(loss)); this makes CPU/GPU timing the same
        stamps.append(time.perf_counter())

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    result = train_style(parts, [image], descriptor=DESCRIPTOR,
                         config=TrainConfig(steps=steps, seed=0, progress_every=1, mixed_precision=mixed_precision),
                         on_progress=on_progress)
    sync(device)
    total = time.perf_counter() - t0
    per_step = [b - a for a, b in itertools.pairwise(stamps)]  # per_step[i] = duration of step i+2
    timed = per_step[max(warmup - 1, 0):]
    out = {
        "total_s": total,
        "first_step_s": stamps[0] - t0,  # includes prepare (VQ + CLIP once), adapter setup and step 1
        "loop_s": stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0,
        "per_step": timed,
        "losses": result.losses,
    }
    if torch.device(device).type == "cuda":
        out["peak_cuda_mb"] = peak_cuda_mb()
    return out


def run_reference(parts, image, steps: int, warmup: int, device: str, mixed_precision: str) -> list[float]:
    """train_amused.py's loop body, step by step; returns the timed per-step seconds after warm-up."""
    transformer, vq, text_encoder, tokenizer = parts.transformer, parts.vqvae, parts.text_encoder, parts.tokenizer
    dev = torch.device(device)
    transformer.add_adapter(lora_config(16, 32.0), adapter_name=REF_ADAPTER)
    transformer.set_adapter(REF_ADAPTER)
    params = [p for n, p in transformer.named_parameters() if f".{REF_ADAPTER}." in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    prompt = training_prompt(DESCRIPTOR)
    res = parts.resolution
    mask_id = transformer.config.vocab_size - 1  # as the script does
    codebook = transformer.config.codebook_size
    transformer.train()
    times: list[float] = []
    try:
        for step in range(warmup + steps):
            sync(device)
            t = time.perf_counter()
            # Dataset __getitem__: image transform and prompt tokenization.
            prep = prepare_image(image, res)
            prompt_ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length",
                                   truncation=True, return_tensors="pt").input_ids
            mc = torch.tensor([micro_conds(prep.orig_width, prep.orig_height, prep.crop_top, prep.crop_left, 6.0)])
            pixel_values = prep.pixels[None].to(dev)
            with torch.no_grad():
                image_tokens = vq.quantize(vq.encode(pixel_values).latents)[2][2].reshape(1, -1)
                bsz, seq_len = image_tokens.shape
                timesteps = torch.rand(bsz, device=dev)
                mask_prob = torch.cos(timesteps * math.pi * 0.5).clip(0.0)
                num_token_masked = (seq_len * mask_prob).round().clamp(min=1)
                batch_randperm = torch.rand(bsz, seq_len, device=dev).argsort(dim=-1)
                mask = batch_randperm < num_token_masked.unsqueeze(-1)
                input_ids = torch.where(mask, mask_id, image_tokens)
                labels = torch.where(mask, image_tokens, -100)
                out = text_encoder(prompt_ids.to(dev), return_dict=True, output_hidden_states=True)
                encoder_hidden_states, cond_embeds = out.hidden_states[-2], out.text_embeds
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                side = int(seq_len ** 0.5)
                logits = transformer(
                    input_ids=input_ids.reshape(bsz, side, side),
                    encoder_hidden_states=encoder_hidden_states,
                    micro_conds=mc.to(dev, encoder_hidden_states.dtype),
                    pooled_text_emb=cond_embeds,
                ).reshape(bsz, codebook, -1).permute(0, 2, 1).reshape(-1, codebook)
                loss = F.cross_entropy(logits.float(), labels.view(-1), ignore_index=-100, reduction="mean")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss.detach())  # the script logs the loss every step (accelerator.log)
            sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - t)
    finally:
        transformer.eval()
        transformer.delete_adapters(REF_ADAPTER)
    return times


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="timed steps per side (default 12, quick 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 3, quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved ours/reference rounds (default 3, quick 1)")
    p.add_argument("--steps", type=int, default=0,
                   help="wall-clock mode: one train_style run of this many steps (e.g. 1500 on CUDA)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="TrainConfig.mixed_precision (default: bf16 on CUDA, no on CPU)")
    args = p.parse_args()
    dtype = setup(args)
    reps = args.reps if args.reps is not None else (4 if args.quick else 12)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.rounds = args.rounds or (1 if args.quick else 3)
    is_cuda = torch.device(args.device).type == "cuda"
    mp = args.mixed_precision or ("bf16" if is_cuda else "no")

    t = time.perf_counter()
    parts = build_parts(args.config, args.device, dtype, args.seed)
    build_s = time.perf_counter() - t
    image = style_image(args.seed)
    rss_built = peak_rss_mb()
    print(f"## train_step — config {args.config}\n")
    print_environment(args.device, {
        "model": describe_parts(parts), "weights dtype": args.dtype, "mixed precision": mp,
        "LoRA": "rank 16, alpha 32, to_q/to_k/to_v", "build_s": f"{build_s:.1f}",
    })

    if args.steps:
        res = run_ours(parts, image, args.steps, 1, args.device, mp)
        print("| steps | wall-clock total (s) | loop after step 1 (s) | median s/step | peak memory | goal |")
        print("| --- | --- | --- | --- | --- | --- |")
        mem = (f"{res['peak_cuda_mb']:.0f} MB CUDA max_memory_allocated" if is_cuda
               else f"{peak_rss_mb():.0f} MB peak RSS")
        ok_t = "met" if res["total_s"] <= 60 else "NOT met"
        ok_m = "" if not is_cuda else ("met" if res["peak_cuda_mb"] <= 3 * 1024 else "NOT met")
        print(f"| {args.steps} | {res['total_s']:.1f} | {res['loop_s']:.1f} | {median(res['per_step']):.4f} | "
              f"{mem} | ≤ 60 s: {ok_t}; ≤ 3 GB: {ok_m or 'n/a on CPU'} |")
        print(f"\nloss first/last: {res['losses'][0]:.3f} / {res['losses'][-1]:.3f}")
        return

    # Interleaved rounds (ours block, reference block, ...) so that load from other processes on a shared machine
    # hits both sides alike. Each ours block is one train_style call; its first `warmup` steps are dropped.
    rounds = args.rounds
    per_round = max(1, math.ceil(reps / rounds))
    ours_times: list[float] = []
    ref_times: list[float] = []
    first_steps: list[float] = []
    losses: list[float] = []
    rss_ours = rss_ref = 0.0
    for r in range(rounds):
        res = run_ours(parts, image, warmup + per_round + 1, warmup, args.device, mp)
        ours_times += res["per_step"]
        first_steps.append(res["first_step_s"])
        losses = res["losses"]
        peak_gpu = res.get("peak_cuda_mb")
        if r == 0:
            rss_ours = peak_rss_mb()
        ref_times += run_reference(parts, image, per_round, warmup if r == 0 else 1, args.device, mp)
        if r == 0:
            rss_ref = peak_rss_mb()

    print(f"{rounds} interleaved rounds x {per_round} timed steps per side (after warm-up); "
          "times are seconds per training step.\n")
    table_header(REPORT_COLUMNS)
    mem = (f"ours peak CUDA {peak_gpu:.0f} MB" if is_cuda
           else f"peak RSS: after build {rss_built:.0f} MB, after ours {rss_ours:.0f} MB, after ref {rss_ref:.0f} MB")
    report("train step (s/step): train_amused.py loop vs train_style", ref_times, ours_times, goal=2.0, extra=mem)
    print(f"\nours: first step of each train_style call (one-off VQ+CLIP encode, adapter setup, step 1): "
          f"median {median(first_steps):.3f} s; per-step min-max {spread(ours_times)}")
    print(f"ours losses (last round): first {losses[0]:.3f}, last {losses[-1]:.3f} (finite: "
          f"{all(math.isfinite(x) for x in losses)})")
    print(f"load average at end: {load_average()}")

if __name__ == "__main__":
    main()
