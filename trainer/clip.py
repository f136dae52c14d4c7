"""CLIP scoring: the StyleDrop paper's two metrics (arXiv 2306.00983, §4.1 and Tables 1-2).

- text score:  cosine(CLIP image embedding, CLIP embedding of the prompt the image was made from);
- style score: cosine(CLIP image embedding, CLIP embedding of a style reference image), the mean over references.

Both use CLIP ViT-L/14 (`openai/clip-vit-large-patch14`, whose text tower aMUSEd already uses). It is loaded the way
`model.load_base` loads aMUSEd: a preset name, a hub id (with a revision) or a local directory, and a `tiny` preset
built in code with random weights that `ensure_tiny_clip` saves with `save_pretrained` and that is then loaded back
through the same `load_clip` path. A name that is none of these fails at once, before any download is tried.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from .contracts.models import CLIP_PRESETS, DEFAULT_CLIP, HUB_ID, TINY_CLIP
from .model import ModelLoadError, tiny_tokenizer

logger = logging.getLogger(__name__)

TINY_CLIP_VERSION = "1"  # bump when build_tiny_clip changes, so cached copies are rebuilt
TINY_CLIP_IMAGE_SIZE = 64
# The normalisation every OpenAI CLIP checkpoint uses (its preprocessor_config.json).
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class ClipParts:
    """A loaded CLIP: both towers with their projections, the image preprocessing and the tokenizer."""

    model: CLIPModel
    image_processor: CLIPImageProcessorPil
    tokenizer: CLIPTokenizer
    model_id: str  # what the caller asked for: a preset, hub id or path
    revision: str | None = None
    batch_size: int = 16  # images (or prompts) per forward pass

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the hub repository's layout: config, weights, preprocessor_config.json and the tokenizer files."""
        self.model.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def resolve_clip_source(model: str, *, tiny_dir: str | os.PathLike[str] | None = None) -> str:
    """What `from_pretrained` takes for `model`: a local directory or a hub id. Raises ModelLoadError at once for a
    name that is no preset, no existing directory and not shaped like a hub id (`namespace/name`)."""
    if model == TINY_CLIP:
        return str(ensure_tiny_clip(tiny_dir))
    if model in CLIP_PRESETS:
        return CLIP_PRESETS[model]
    if Path(model).is_dir():
        return model
    if HUB_ID.fullmatch(model):  # org/name, as for the base model: a bare word is a typo, not worth a hub retry
        return model
    raise ModelLoadError(
        f"CLIP model '{model}' is neither a preset ({', '.join([TINY_CLIP, *CLIP_PRESETS])}), an existing local "
        f"directory, nor a hub id like '{DEFAULT_CLIP}'"
    )


def load_clip(
    model: str = DEFAULT_CLIP,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tiny_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    batch_size: int = 16,
) -> ClipParts:
    """Load CLIP from a preset (`tiny`, `clip-vit-large-patch14`), a hub id or a local directory, in eval mode."""
    source = resolve_clip_source(model, tiny_dir=tiny_dir)
    is_local = Path(source).is_dir()
    kwargs: dict[str, object] = {"revision": revision}
    if local_files_only is not None or is_local:
        kwargs["local_files_only"] = bool(local_files_only) or is_local
    try:
        clip = CLIPModel.from_pretrained(source, dtype=dtype, **kwargs)
        # The PIL backend explicitly: the default one needs torchvision, and one backend gives one set of numbers.
        processor = CLIPImageProcessorPil.from_pretrained(source, **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:  # hub errors derive from OSError; bad configs raise ValueError
        raise ModelLoadError(
            f"could not load CLIP weights for '{model}' (source '{source}'): {str(exc).rstrip('.')}. "
            f"If this machine cannot reach the Hugging Face hub, download the repository elsewhere "
            f"(`hf download {DEFAULT_CLIP} --local-dir DIR`) and pass that directory (CLI: --clip DIR), "
            "or use --clip tiny for an offline test model."
        ) from exc
    clip.requires_grad_(False)
    clip.eval()
    clip.to(device)
    logger.info("loaded CLIP %s from %s on %s (%s)", model, source, device, dtype)
    return ClipParts(model=clip, image_processor=processor, tokenizer=tokenizer, model_id=model, revision=revision,
                     batch_size=batch_size)


# --------------------------------------------------------------------------------------------------------------
# Embeddings and the two scores.
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def image_embeddings(clip: ClipParts, images: Sequence[Image.Image]) -> torch.Tensor:
    """(N, D) float32 unit-norm image embeddings, `clip.batch_size` images per forward pass, on the CPU."""
    out: list[torch.Tensor] = []
    for i in range(0, len(images), clip.batch_size):
        chunk = [im.convert("RGB") for im in images[i : i + clip.batch_size]]
        pixels = clip.image_processor(images=chunk, return_tensors="pt")["pixel_values"]  # (n, 3, S, S)
        feats = clip.model.get_image_features(pixel_values=pixels.to(clip.device, clip.dtype)).pooler_output
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())  # (n, D)
    if not out:
        return torch.empty(0, clip.model.config.projection_dim)
    return torch.cat(out)


@torch.no_grad()
def text_embeddings(clip: ClipParts, prompts: Sequence[str]) -> torch.Tensor:
    """(N, D) float32 unit-norm prompt embeddings; prompts longer than CLIP's 77 tokens are truncated, as in CLIP."""
    out: list[torch.Tensor] = []
    for i in range(0, len(prompts), clip.batch_size):
        tok = clip.tokenizer(list(prompts[i : i + clip.batch_size]), padding=True, truncation=True,
                             max_length=clip.tokenizer.model_max_length, return_tensors="pt")
        feats = clip.model.get_text_features(input_ids=tok["input_ids"].to(clip.device),
                                             attention_mask=tok["attention_mask"].to(clip.device)).pooler_output
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())  # (n, D)
    if not out:
        return torch.empty(0, clip.model.config.projection_dim)
    return torch.cat(out)


def clip_text_score(clip: ClipParts, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
    """(N,) cosine of each image with its own prompt (images[i] with prompts[i]): the paper's CLIP text score."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: each image needs its prompt")
    return (image_embeddings(clip, images) * text_embeddings(clip, prompts)).sum(dim=-1)


def clip_style_score(
    clip: ClipParts, images: Sequence[Image.Image], reference_images: Sequence[Image.Image]
) -> torch.Tensor:
    """(N,) cosine of each image with each style reference, averaged over the references: the CLIP style score."""
    if not reference_images:
        raise ValueError("the style score needs at least one style reference image")
    return style_score_from_embeddings(image_embeddings(clip, images), image_embeddings(clip, reference_images))


def style_score_from_embeddings(image_emb: torch.Tensor, reference_emb: torch.Tensor) -> torch.Tensor:
    """(N,) mean cosine of unit-norm (N, D) image embeddings with unit-norm (R, D) reference embeddings."""
    return (image_emb @ reference_emb.T).mean(dim=1)  # (N, R) -> (N,)


# --------------------------------------------------------------------------------------------------------------
# The tiny preset: CLIPModel with random weights and the offline tokenizer of the tiny aMUSEd.
# --------------------------------------------------------------------------------------------------------------


def build_tiny_clip(seed: int = 0) -> ClipParts:
    """A random CLIP with the real classes (ViT image tower, text tower, projections), tiny widths, 64 px input."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = tiny_tokenizer()
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
        config = CLIPConfig(
            text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                         "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": TINY_CLIP_IMAGE_SIZE, "patch_size": 16},
            projection_dim=24,
        )
        model = CLIPModel(config)
    finally:
        torch.random.set_rng_state(state)
    model.requires_grad_(False)
    model.eval()
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
        image_mean=_CLIP_MEAN, image_std=_CLIP_STD,
    )
    return ClipParts(model=model, image_processor=processor, tokenizer=tokenizer, model_id=TINY_CLIP)


def default_tiny_clip_dir() -> Path:
    return Path.home() / ".cache" / "styledrop" / f"tiny-clip-v{TINY_CLIP_VERSION}"


def ensure_tiny_clip(directory: str | os.PathLike[str] | None = None) -> Path:
    """Build the tiny CLIP and save it with `save_pretrained`, once; return its directory."""
    d = Path(directory) if directory is not None else default_tiny_clip_dir()
    if not (d / ".complete").exists():
        tmp = d.with_name(d.name + f".tmp-{os.getpid()}")
        build_tiny_clip().save_pretrained(tmp)
        (tmp / ".complete").write_text(TINY_CLIP_VERSION)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, d)  # atomic: two processes building at once both end with a complete copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return d
