"""Image and text encoding shared by training and sampling: pixels <-> VQ tokens, prompts -> CLIP embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .contracts.images import to_rgb
from .model import AmusedParts


@dataclass(frozen=True)
class PreparedImage:
    """A square crop at the model's resolution plus what aMUSEd's micro-conditioning records about it."""

    pixels: torch.Tensor  # (3, R, R) in [0, 1]: aMUSEd's VQ-GAN takes [0, 1] pixels, not [-1, 1]
    orig_width: int
    orig_height: int
    crop_top: int
    crop_left: int


def prepare_image(image: Image.Image, resolution: int) -> PreparedImage:
    """Upright 8-bit RGB from any mode (contracts/images.py: 16-bit, float and alpha included), shorter side
    resized to `resolution` (bilinear), centre square crop (train_amused.py)."""
    image = to_rgb(image)
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return PreparedImage(pil_to_tensor(image), w, h, top, left)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1], the same arithmetic as diffusers' VaeImageProcessor."""
    arr = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def resize_exact(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to (width, height) with Lanczos, as the deprecated aMUSEd img2img/inpaint pipelines do."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


@torch.no_grad()
def encode_tokens(parts: AmusedParts, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 1] -> (B, H/16, W/16) int64 VQ codes."""
    vq = parts.vqvae
    x = pixels.to(device=next(vq.parameters()).device, dtype=torch.float32)
    latents = vq.encode(x).latents  # (B, C, h, w)
    b, _, h, w = latents.shape
    codes = vq.quantize(latents)[2][2]  # flat (B*h*w,)
    return codes.reshape(b, h, w)  # (B*h*w,) -> (B, h, w)


@torch.no_grad()
def decode_tokens(parts: AmusedParts, tokens: torch.Tensor) -> torch.Tensor:
    """(B, h, w) codes -> (B, 3, 16h, 16w) pixels in [0, 1] (VQ-GAN in float32)."""
    vq = parts.vqvae
    b, h, w = tokens.shape
    dim = vq.config.vq_embed_dim or vq.config.latent_channels
    device = next(vq.parameters()).device
    out = vq.decode(tokens.to(device), force_not_quantize=True, shape=(b, h, w, dim)).sample
    return out.clip(0, 1)


def tensor_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images (round like diffusers' numpy_to_pil)."""
    arr = (pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")  # -> (B, H, W, 3)
    return [Image.fromarray(a) for a in arr]


@dataclass(frozen=True)
class TextEmbedding:
    hidden: torch.Tensor  # (B, 77, D): penultimate CLIP layer, aMUSEd's cross-attention input
    pooled: torch.Tensor  # (B, P): projected pooled embedding, aMUSEd's global conditioning


@torch.no_grad()
def encode_text(parts: AmusedParts, prompts: Sequence[str]) -> TextEmbedding:
    ids = parts.tokenizer(
        list(prompts), return_tensors="pt", padding="max_length", truncation=True,
        max_length=parts.tokenizer.model_max_length,
    ).input_ids
    enc = parts.text_encoder
    out = enc(ids.to(next(enc.parameters()).device), return_dict=True, output_hidden_states=True)
    return TextEmbedding(hidden=out.hidden_states[-2], pooled=out.text_embeds)


def micro_conds(width: int, height: int, crop_top: int = 0, crop_left: int = 0,
                aesthetic: float = 6.0) -> list[float]:
    """aMUSEd's micro-conditioning vector: original size, crop offset and aesthetic score (SDXL-style)."""
    return [float(width), float(height), float(crop_top), float(crop_left), float(aesthetic)]
