"""The training path as it was before the flat LoRA bank, as an independent reference: one style at a time, peft's
LoRA layers on the model's own diffusers forward (unfused RMSNorm, prompt-side values every step, per-layer LoRA in
fp32 with α/r applied after B), `torch.optim.AdamW` — the same draws (`StyleBatch.draw` from the style's own
generator), the same per-row masked-token loss (`row_losses`) and the same initial adapter (`LoraBank.init_slot`
from the style's seed). `train_styles` must follow it within the tolerances stated in tests/test_engine_fused.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from tests.helpers.engine import peft_copy
from trainer.bank import LoraBank
from trainer.lora import Adapter, AdapterMeta, base_fingerprint
from trainer.model import AmusedParts
from trainer.train import TrainConfig
from trainer.train_data import StyleBatch, prepare_style, row_losses


def initial_adapter(parts: AmusedParts, seed: int, rank: int, alpha: float) -> Adapter:
    """The adapter a style starts from: what the engine's `init_slot` draws from the style's seed."""
    bank = LoraBank(parts.transformer, 1, rank=rank, trainable=True)
    try:
        bank.init_slot(1, torch.Generator().manual_seed(seed), alpha=alpha)
        meta = AdapterMeta(base_model="reference", base_fingerprint=base_fingerprint(parts.transformer), rank=rank,
                           alpha=alpha)
        return bank.extract(1, meta)
    finally:
        bank.remove()


def reference_train(parts: AmusedParts, images: Sequence[Image.Image], prompt: str, *, seed: int, lr: float,
                    steps: int, cfg: TrainConfig) -> tuple[list[float], dict[str, torch.Tensor]]:
    """(loss of every step, final adapter tensors by file key) of one style trained alone, the old way."""
    assert cfg.alpha is not None
    adapter = initial_adapter(parts, seed, cfg.rank, cfg.alpha)
    model = peft_copy(parts.transformer, adapter)
    params = {n: p for n, p in model.named_parameters() if ".ref." in n}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                                  weight_decay=cfg.weight_decay)
    batch = StyleBatch([prepare_style(parts, images, prompt, cfg.aesthetic_score)], parts.mask_token_id)
    ref_parts = AmusedParts(transformer=model, vqvae=parts.vqvae, text_encoder=parts.text_encoder,
                            tokenizer=parts.tokenizer, mask_token_id=parts.mask_token_id, model_id=parts.model_id)
    generator = torch.Generator(parts.device).manual_seed(seed)
    row = torch.zeros(1, dtype=torch.long, device=parts.device)
    losses = []
    for _ in range(steps):
        loss = row_losses(ref_parts, batch, batch.draw(row, [generator]))  # (1,)
        loss.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss[0].detach()))
    return losses, {n.replace(".ref.weight", ".weight"): p.detach().clone() for n, p in params.items()}
