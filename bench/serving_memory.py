"""Benchmark: serving memory per request — the sampler's scratch and the LoRA bank's gathered adapters, ours vs the
previous layout, measured on the CPU with `trainer.capture.MemoryCounter` (bytes of live tensor storage; exact and
deterministic, so it compares on a shared machine).

The model is the tiny U-ViT with amused-256's real output size (16x16 tokens, 8192 codes) in bf16, as served on a
GPU: the sampler's memory is dominated by (rows, 256, 8192) planes, whose size does not depend on the model's
widths. Every request has guidance 10 (a negative pass) and an adapter (an adapted pass): 3 passes per row.
- ours: float32 scratch in chunks of rows (`trainer.sampler.SCRATCH_BYTES`), the bank holding each distinct
  adapter once (a list route);
- baseline, same process: one chunk for the whole batch (`SCRATCH_BYTES` unlimited: every temporary of the
  guidance and the token update for every row at once, as before chunking) and the bank's per-row copies (a
  device-tensor route: every row its own entry). The sampler before chunking also upcast every pass at once;
  it measured 92 MB per request here (docs/benchmarks.md §7).
Per request = (peak at 2n rows − peak at n rows) / n, and ours also at the row limit (64 rows); the bank's
gathered bytes are measured for a route of 64 rows of one adapter, and scaled to amused-256's slot size
(`slot_bytes` of the full U-ViT, built on the meta device).

    python bench/serving_memory.py --rows 8 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import UVit2DModel

import trainer.sampler as sampler_module
from bench.common import build_full, print_environment, random_adapter
from trainer.bank import LoraBank, find_bank, slot_bytes
from trainer.capture import MemoryCounter
from trainer.contracts import limits
from trainer.model import AmusedParts, build_tiny
from trainer.sampler import GenerationRequest, sample

CODES = 8192


def parts_8192() -> AmusedParts:
    """build_tiny's parts with a U-ViT of the same widths but amused-256's 8192 codes (+ 64 special tokens)."""
    parts = build_tiny()
    c = dict(parts.transformer.config)
    c.update(vocab_size=CODES + 64, codebook_size=CODES)
    torch.manual_seed(0)
    t = UVit2DModel(**{k: v for k, v in c.items() if not k.startswith("_")}).requires_grad_(False).eval()
    parts.transformer = t.to(torch.bfloat16)
    parts.text_encoder.to(torch.bfloat16)
    parts.mask_token_id = CODES + 64 - 1
    return parts


@contextlib.contextmanager
def previous_layout() -> Iterator[None]:
    """One scratch chunk for the batch, and the bank's per-row copies (a tensor route has no distinct set)."""
    real_route, real_bytes = sampler_module._route, sampler_module.SCRATCH_BYTES

    def per_row(parts: AmusedParts, names: Sequence[str], start: int) -> Any:
        bank = find_bank(parts.transformer)
        assert bank is not None
        return bank.route(torch.tensor([bank.slot_of(n) for n in names]), start=start)

    sampler_module._route, sampler_module.SCRATCH_BYTES = per_row, 2**62  # type: ignore[assignment]
    try:
        yield
    finally:
        sampler_module._route, sampler_module.SCRATCH_BYTES = real_route, real_bytes


def peak(parts: AmusedParts, n: int, steps: int) -> int:
    """Peak live bytes of one sample call of n requests, every one on adapter "a"."""
    reqs = [GenerationRequest(f"prompt {i}", seed=i, steps=steps, adapter="a") for i in range(n)]
    sample(parts, reqs[:8], decode=False)  # CLIP embeddings cached: they are not the sampler's memory
    with MemoryCounter() as m:
        sample(parts, reqs, decode=False)
    return m.peak


def gathered(bank: LoraBank, route: list[int] | torch.Tensor) -> int:
    """Bytes of the bank's gathered adapter buffers after routing `route` (on a fresh bank: no earlier route)."""
    with bank.route(route):
        return sum(s.at.nbytes + s.bt.nbytes for s in bank._sites if s.at is not None and s.bt is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8, help="n: per request = (peak at 2n − peak at n) / n")
    ap.add_argument("--steps", type=int, default=2, help="decoding steps (memory does not depend on them)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = parts_8192()
    with torch.device("meta"):
        full_slot = slot_bytes(build_full().transformer, 16, torch.bfloat16)
    print_environment("cpu", {"model": f"tiny U-ViT widths, {CODES} codes, 16x16 tokens, bf16",
                              "requests": "guidance 10 + one adapter: 3 passes per row"})
    mb = 2**20
    plane = 256 * CODES
    print(f"- model output per pass (bf16): {plane * 2 / mb:.1f} MB; a float32 (seq, codes) plane: "
          f"{plane * 4 / mb:.1f} MB; scratch chunk: {sampler_module.scratch_rows(256, CODES, 64)} rows "
          f"(SCRATCH_BYTES {sampler_module.SCRATCH_BYTES / mb:.0f} MB)\n")
    print("| layout | peak, n rows (MB) | peak, 2n rows (MB) | per request (MB) | of which model output (MB) | "
          f"peak at {limits.MAX_SAMPLE_ROWS} rows, per request (MB) | bank gathered, {limits.MAX_SAMPLE_ROWS} rows "
          "of one adapter (MB) | same at amused-256 (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    n, rows = args.rows, limits.MAX_SAMPLE_ROWS
    out_per_row = 3 * plane * 2
    one = [1] * rows
    for name, ctx, route in (("one chunk for the batch, per-row adapter copies", previous_layout, torch.tensor(one)),
                             ("ours: chunks of rows, distinct adapters", contextlib.nullcontext, one)):
        bank = LoraBank(parts.transformer, 1)
        bank.load(1, random_adapter(parts.transformer, 1, scale=0.05), name="a")
        held = gathered(bank, route)
        copies = held // slot_bytes(parts.transformer, 16, bank.scale.dtype)
        with ctx():
            small, large = peak(parts, n, args.steps), peak(parts, 2 * n, args.steps)
            at_limit = f"{peak(parts, rows, 1) / rows / mb:.1f}" if "ours" in name else "(not run: ≈6 GB)"
        print(f"| {name} | {small / mb:.1f} | {large / mb:.1f} | {(large - small) / n / mb:.1f} | "
              f"{out_per_row / mb:.1f} | {at_limit} | {held / mb:.2f} ({copies} copies) | "
              f"{copies * full_slot / mb:.0f} |", flush=True)
        bank.remove()

if __name__ == "__main__":
    main()
