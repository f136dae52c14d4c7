"""Loading aMUSEd: the four parts (U-ViT, VQ-GAN, CLIP text tower, tokenizer), from the hub or a local directory.

There is exactly one loading path, `load_base`. The `tiny` preset is a randomly initialised model built in code
with the same classes; `ensure_tiny` saves it with `save_pretrained` into a directory laid out like the hub repo,
and then it is loaded back through `load_base` like the real weights. That keeps the real path under test.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from .contracts.models import HUB_ID, PRESETS, TINY, TINY_512
from .lora import weights_hash

logger = logging.getLogger(__name__)

TINY_VERSION = "2"  # bump when build_tiny changes, so cached copies are rebuilt


TINY_LOGIT_SCALE = 8.0


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message names the model and how to use a local copy."""


@dataclass
class AmusedParts:
    """Everything the trainer and the sampler need from a base model."""

    transformer: UVit2DModel
    vqvae: VQModel
    text_encoder: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    mask_token_id: int
    model_id: str  # what the caller asked for: a preset, hub id or path (recorded in adapter metadata)
    revision: str | None = None
    # The sampler's LRU of CLIP embeddings by prompt (sampler.cached_text), on the model's device.
    text_cache: OrderedDict[str, Any] = field(default_factory=OrderedDict, repr=False, compare=False)

    @property
    def codebook_size(self) -> int:
        return int(self.transformer.config.codebook_size)

    @property
    def vae_scale_factor(self) -> int:
        # 2 ** (number of down blocks - 1): 16 for aMUSEd, a 256 px image becomes 16x16 tokens.
        return int(2 ** (len(self.vqvae.config.block_out_channels) - 1))

    @property
    def resolution(self) -> int:
        """Native image side in pixels: 256 for amused-256 (and tiny), 512 for amused-512."""
        sample = int(self.transformer.config.sample_size)
        return sample * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the hub layout: transformer/, vqvae/, text_encoder/, tokenizer/, scheduler/."""
        d = Path(directory)
        self.transformer.save_pretrained(d / "transformer")
        self.vqvae.save_pretrained(d / "vqvae")
        self.text_encoder.save_pretrained(d / "text_encoder")
        self.tokenizer.save_pretrained(d / "tokenizer")
        AmusedScheduler(mask_token_id=self.mask_token_id).save_pretrained(d / "scheduler")


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> str:
    """'auto' → 'cuda' when a CUDA device is visible, else 'cpu'; any other name as given. Raises ValueError for a
    CUDA device on a machine without CUDA (the CLI and the worker both resolve through here)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available on this machine")
    return name


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """'float32', 'float16' or 'bfloat16' as a torch dtype (ValueError for anything else); 'auto' = bfloat16 on
    CUDA (half the memory of fp32 weights, tensor-core speed), float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: expected auto or one of {', '.join(DTYPES)}") from None


def resolve_mixed_precision(name: str, device: str) -> str:
    """Training autocast: 'auto' = 'bf16' on CUDA, 'no' on CPU (CPU training has no autocast); others as given."""
    if name == "auto":
        return "bf16" if device.startswith("cuda") else "no"
    return name


def resolve_source(model: str, *, tiny_dir: str | os.PathLike[str] | None = None) -> str:
    """Map a preset name to what `from_pretrained` takes: a hub id or a local directory.

    A name that is none of a preset, an existing directory or an `org/name` hub id fails at once, listing the
    presets: a typo such as `tinyy` would otherwise spend most of a minute on hub retries before failing.
    """
    if model not in (TINY, TINY_512, *PRESETS) and not Path(model).is_dir() and not HUB_ID.fullmatch(model):
        presets = ", ".join([*PRESETS, TINY, TINY_512])
        raise ModelLoadError(
            f"unknown model '{model}': not a preset ({presets}), not an existing directory, and not a hub id "
            "of the form org/name"
        )
    if model == TINY:
        return str(ensure_tiny(tiny_dir))
    if model == TINY_512:
        d = Path(tiny_dir).with_name(Path(tiny_dir).name + "-512") if tiny_dir is not None else None
        return str(ensure_tiny(d, resolution=512))
    return PRESETS.get(model, model)


def load_base(
    model: str = "amused-256",
    *,
    revision: str | None = None,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tiny_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> AmusedParts:
    """Load aMUSEd from a preset (`amused-256`, `amused-512`, `tiny`), a hub id or a local directory.

    The VQ-GAN always stays in float32: its config says `force_upcast` and it produces NaNs in fp16.
    """
    source = resolve_source(model, tiny_dir=tiny_dir)
    is_local = Path(source).is_dir()
    kwargs: dict[str, object] = {"revision": revision}
    if local_files_only is not None or is_local:
        kwargs["local_files_only"] = bool(local_files_only) or is_local
    try:
        # Weights from safetensors files only: a pickled .bin can run code when it is read.
        transformer = UVit2DModel.from_pretrained(
            source, subfolder="transformer", variant=variant, torch_dtype=dtype, use_safetensors=True, **kwargs
        )
        vqvae = VQModel.from_pretrained(source, subfolder="vqvae", torch_dtype=torch.float32, use_safetensors=True,
                                        **kwargs)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder", variant=variant, dtype=dtype, use_safetensors=True, **kwargs
        )
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        scheduler = AmusedScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    except (OSError, ValueError) as exc:  # hub errors derive from OSError; bad configs raise ValueError
        raise ModelLoadError(
            f"could not load aMUSEd weights for model '{model}' (source '{source}'): {str(exc).rstrip('.')}. "
            "If this machine cannot reach the Hugging Face hub, download the repository elsewhere "
            "(`hf download amused/amused-256 --local-dir DIR`) and pass that directory as the model "
            "(CLI: --model DIR; service: STYLEDROP_MODEL=DIR), or use --model tiny for an offline test model."
        ) from exc
    for module in (transformer, vqvae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    weights_hash(transformer, recompute=True)  # the base's identity in adapter metadata (lora.check_compatible)
    transformer.to(device)
    vqvae.to(device)
    text_encoder.to(device)
    logger.info("loaded aMUSEd %s from %s on %s (%s)", model, source, device, dtype)
    return AmusedParts(
        transformer=transformer,
        vqvae=vqvae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        mask_token_id=int(scheduler.config.mask_token_id),
        model_id=model,
        revision=revision,
    )


# --------------------------------------------------------------------------------------------------------------
# The tiny preset: same classes, random weights, seconds on a CPU.
# --------------------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer with only the 512 single-character tokens and no merges.

    It needs no download, splits text the way CLIP does (lower-cased words, byte-level characters), and its ids
    (< 514) stay below the tiny text encoder's vocabulary.
    """
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    return tok


def build_tiny(seed: int = 0, resolution: int = 256) -> AmusedParts:
    """A random aMUSEd with the real classes and the real token grids, tiny widths.

    resolution 256 mirrors amused-256 (256 px -> 16x16 tokens); 512 mirrors amused-512 (512 px -> 32x32 tokens,
    which the U-ViT down-samples to 16x16 and up-samples back).
    """
    if resolution not in (256, 512):
        raise ValueError(f"tiny resolution must be 256 or 512, got {resolution}")
    is_512 = resolution == 512
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = tiny_tokenizer()
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
        text_encoder = CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        )
        # The real VQ-GAN has 5 resolution levels (16x down-sampling) and 8192 codes; tiny keeps the levels.
        vqvae = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 5,
            up_block_types=("UpDecoderBlock2D",) * 5,
            block_out_channels=(8, 8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=8,
            num_vq_embeddings=64,
            norm_num_groups=4,
            vq_embed_dim=8,
            mid_block_add_attention=False,
            lookup_from_codebook=True,
            force_upcast=True,
            sample_size=resolution,
        )
        codebook = 64
        # vocab = codebook + mask, padded like the real 8192 + 64 = 8256; the mask id is the last one (8255).
        transformer = UVit2DModel(
            hidden_size=32,
            use_bias=False,
            hidden_dropout=0.0,
            cond_embed_dim=32,
            micro_cond_encode_dim=4,
            micro_cond_embed_dim=20,  # must be 5 x micro_cond_encode_dim (5 micro-conditions)
            encoder_hidden_size=32,
            vocab_size=codebook + 8,
            codebook_size=codebook,
            in_channels=16,
            block_out_channels=32,
            num_res_blocks=1,
            downsample=is_512,
            upsample=is_512,
            block_num_heads=2,
            num_hidden_layers=2,
            num_attention_heads=2,
            attention_dropout=0.0,
            intermediate_size=64,
            layer_norm_eps=1e-6,
            ln_elementwise_affine=True,
            sample_size=resolution // 16,
        )
        # A trained aMUSEd separates code logits by tens of nats; a fresh init's output layer (LayerNorm over 16
        # channels, then a 1x1 conv at Kaiming scale) can only spread them by a few, which would cap how much any
        # adapter could learn. Scale the random output projection so the tiny model can express a learned style.
        with torch.no_grad():
            transformer.mlm_layer.conv2.weight.mul_(TINY_LOGIT_SCALE)
    finally:
        torch.random.set_rng_state(generator_state)
    for module in (transformer, vqvae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    return AmusedParts(
        transformer=transformer,
        vqvae=vqvae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        mask_token_id=codebook + 8 - 1,
        model_id=TINY if not is_512 else TINY_512,
    )


def default_tiny_dir(resolution: int = 256) -> Path:
    suffix = "" if resolution == 256 else f"-{resolution}"
    return Path.home() / ".cache" / "styledrop" / f"tiny{suffix}-v{TINY_VERSION}"


def ensure_tiny(directory: str | os.PathLike[str] | None = None, resolution: int = 256) -> Path:
    """Build the tiny preset and save it with `save_pretrained`, once; return its directory."""
    d = Path(directory) if directory is not None else default_tiny_dir(resolution)
    marker = d / ".complete"
    if not marker.exists():
        tmp = d.with_name(d.name + f".tmp-{os.getpid()}")
        build_tiny(resolution=resolution).save_pretrained(tmp)
        (tmp / ".complete").write_text(TINY_VERSION)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, d)  # atomic: two processes building at once both end with a complete copy
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return d
