"""Adapter hot-load latency on the real amused-256 U-ViT shape (random weights), CPU by default.

Measures, in one process:
- cold: blob store -> sha256 check -> safetensors parse -> copy into a resident slot (worker.AdapterCache miss),
  for a full-size adapter (rank 16 on all 168 Q/K/V linears: 5.2 M parameters, 10.4 MB in fp16);
- warm: switching the next batch to another already-resident adapter (cache hit + setting the bank's route);
- baseline: what plain diffusers does for the same two operations — `load_lora_adapter` of the file into a new
  adapter name (cold), and `set_adapter` between resident adapters (warm).
Goals: cold <= 100 ms, warm <= 5 ms on CPU.

    python bench/adapter_hotload.py [--adapters 6] [--repeats 5] [--resident 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import UVit2DModel

from bench.common import random_adapter
from storage.blobs import LocalBlobStore, sha256_hex
from trainer.bank import LoraBank
from trainer.lora import ADAPTER_FILENAME, Adapter, adapter_from_bytes, adapter_to_bytes
from worker.adapter_cache import AdapterCache

AMUSED_256 = dict(
    hidden_size=1024, num_hidden_layers=22, num_attention_heads=16, intermediate_size=2816, block_out_channels=768,
    in_channels=768, num_res_blocks=3, block_num_heads=12, vocab_size=8256, codebook_size=8192, cond_embed_dim=768,
    encoder_hidden_size=768, micro_cond_encode_dim=256, micro_cond_embed_dim=1280, use_bias=False,
    layer_norm_eps=1e-6, downsample=False, upsample=False, sample_size=16,
)


def full_size_model() -> UVit2DModel:
    with torch.device("meta"):
        model = UVit2DModel(**AMUSED_256)
    model = model.to_empty(device="cpu")  # real memory, contents irrelevant for copy latency
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", type=int, default=6, help="distinct adapters loaded cold")
    ap.add_argument("--repeats", type=int, default=5, help="warm switches per adapter")
    ap.add_argument("--resident", type=int, default=8, help="GPU slots / resident adapters")
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = full_size_model()
    bank = LoraBank(model, args.resident, rank=16)
    print(f"# built amused-256 U-ViT ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params, "
          f"{len(bank.keys)} LoRA layers x {args.resident} bank slots) in {time.perf_counter() - t0:.1f} s")

    tmp = Path(tempfile.mkdtemp())
    store = LocalBlobStore(tmp / "blobs")
    rows: dict[str, tuple[str, str]] = {}
    files: dict[str, Path] = {}
    n = args.adapters
    for i in range(n + args.resident):
        data = adapter_to_bytes(random_adapter(model, i, scale=0.01, base_model="amused-256"), dtype=torch.float16)
        key = f"adapters/{i:04d}.safetensors"
        store.put_bytes(key, data)
        rows[f"a{i}"] = (key, sha256_hex(data))
        d = tmp / f"file{i}"
        d.mkdir()
        (d / ADAPTER_FILENAME).write_bytes(data)
        files[f"a{i}"] = d
    size_mb = len(data) / 1e6

    def fetch(adapter_id: str) -> Adapter:
        from storage.blobs import get_verified

        key, sha = rows[adapter_id]
        return adapter_from_bytes(get_verified(store, key, sha))

    cache = AdapterCache(bank, cpu_capacity=0, fetch=fetch)  # cpu_capacity 0: every miss goes to the store

    # Fill every slot, then each cold load evicts the least recently used one (the steady state of a busy worker).
    for i in range(args.resident):
        cache.release(cache.acquire([f"a{n + i}"]))
    cold = []
    for i in range(n):
        t = time.perf_counter()
        cache.release(cache.acquire([f"a{i}"]))
        cold.append(time.perf_counter() - t)

    resident = list(cache.resident())
    warm = []
    for _ in range(args.repeats):
        for adapter_id in resident:
            t = time.perf_counter()
            mapping = cache.acquire([adapter_id])
            with bank.route([bank.slot_of(mapping[adapter_id])]):
                pass  # a batch would run here
            cache.release(mapping)
            warm.append(time.perf_counter() - t)

    # Baseline: plain diffusers on a second copy of the model.
    base_model = full_size_model()
    base_cold = []
    for i in range(min(n, 4)):
        t = time.perf_counter()
        base_model.load_lora_adapter(str(files[f"a{i}"]), weight_name=ADAPTER_FILENAME, use_safetensors=True,
                                     adapter_name=f"b{i}")
        base_cold.append(time.perf_counter() - t)
    names = [f"b{i}" for i in range(min(n, 4))]
    base_warm = []
    for _ in range(args.repeats):
        for name in names:
            t = time.perf_counter()
            base_model.set_adapter(name)
            base_warm.append(time.perf_counter() - t)

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {os.cpu_count()} cores, torch {torch.__version__}; adapter file {size_mb:.1f} MB (fp16)")
    print("| operation | ours (median ms) | diffusers baseline (median ms) | speed-up | goal |")
    print("| --- | --- | --- | --- | --- |")
    c, bc = median_ms(cold), median_ms(base_cold)
    w, bw = median_ms(warm), median_ms(base_warm)
    print(f"| cold load: store -> verified -> slot | {c:.1f} | {bc:.1f} (load_lora_adapter) | {bc / c:.1f}x "
          f"| <= 100 ms: {'met' if c <= 100 else 'NOT met'} |")
    print(f"| warm switch between resident adapters | {w:.2f} | {bw:.2f} (set_adapter, {len(names)} resident) "
          f"| {bw / w:.1f}x | <= 5 ms: {'met' if w <= 5 else 'NOT met'} |")
    print(f"# cold samples ms: {[round(s * 1000, 1) for s in cold]}; cache stats: {cache.stats()}")


if __name__ == "__main__":
    main()
