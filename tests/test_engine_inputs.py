"""One image rule (trainer/contracts/images.py) everywhere an image enters: 16-bit, float, transparent and CMYK
images train and img2img to the same tokens as their 8-bit RGB equivalents; an RGBA mask's alpha counts; inputs are
EXIF-upright; an init image keeps its own aspect and size, as diffusers does."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from storage.images import load_mask, normalize_upload
from tests.helpers.engine import amused_pipeline
from trainer.cli_args import read_image
from trainer.contracts import limits
from trainer.contracts.images import to_mask, to_rgb
from trainer.encode import encode_tokens, pil_to_tensor
from trainer.model import AmusedParts
from trainer.requests import output_size
from trainer.sampler import GenerationRequest, sample
from trainer.train import prepare_style

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import AmusedImg2ImgPipeline, AmusedInpaintPipeline

W, H = 96, 64  # not square: the init image's own size is kept (6x4 tokens)
RNG = np.random.default_rng(0)
GREY = (np.add.outer(np.arange(H) * 3, np.arange(W) * 2) % 256).astype(np.uint8)  # (H, W) a grey ramp
COLOUR = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)  # (H, W, 3)
HOLE = (slice(16, 48), slice(24, 72))  # where the RGBA image is transparent


def _file(im: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# Each case: a file's bytes and the 8-bit RGB image it stands for.


def _png_16_bit() -> tuple[bytes, Image.Image]:
    wide = _file(Image.fromarray(GREY.astype(np.uint16) * 257), "PNG")  # the usual 8 -> 16 bit widening
    assert _open(wide).mode.startswith("I")
    return wide, Image.fromarray(GREY).convert("RGB")


def _tiff_float() -> tuple[bytes, Image.Image]:
    f = _file(Image.fromarray((GREY / 255.0).astype(np.float32), "F"), "TIFF")  # 0..1 floats
    assert _open(f).mode == "F"
    return f, Image.fromarray(GREY).convert("RGB")


def _rgba_with_holes() -> tuple[bytes, Image.Image]:
    rgba = np.dstack([COLOUR, np.full((H, W), 255, np.uint8)])
    rgba[HOLE] = [*RNG.integers(0, 256, 3), 0]  # whatever colour lies under a transparent pixel must not matter
    white = COLOUR.copy()
    white[HOLE] = 255  # stated policy: transparency composited over white
    return _file(Image.fromarray(rgba, "RGBA"), "PNG"), Image.fromarray(white)


def _cmyk_jpeg() -> tuple[bytes, Image.Image]:
    data = _file(Image.fromarray(COLOUR).convert("CMYK"), "JPEG", quality=95)
    cmyk = _open(data)
    assert cmyk.mode == "CMYK"
    c = np.asarray(cmyk).astype(np.int32)  # (H, W, 4)
    rgb = 255 - np.minimum(c[..., :3] + c[..., 3:], 255)  # naive CMYK -> RGB (no colour profile)
    return data, Image.fromarray(rgb.astype(np.uint8))


def _exif_rotated() -> tuple[bytes, Image.Image]:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored = _file(Image.fromarray(COLOUR).transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    assert _open(stored).size == (H, W)
    return stored, Image.fromarray(COLOUR)


CASES: dict[str, Callable[[], tuple[bytes, Image.Image]]] = {
    "png-16-bit": _png_16_bit, "tiff-float": _tiff_float, "rgba-transparent": _rgba_with_holes,
    "cmyk-jpeg": _cmyk_jpeg, "exif-rotated": _exif_rotated,
}


@pytest.mark.parametrize("case", CASES)
def test_any_mode_trains_and_img2imgs_to_the_tokens_of_its_8_bit_rgb_equivalent(engine_parts: AmusedParts,
                                                                                case: str) -> None:
    data, rgb = CASES[case]()
    image = _open(data)
    assert rgb.mode == "RGB"
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(rgb))
    trained = [prepare_style(engine_parts, [im], "an image in x style") for im in (image, rgb)]
    assert torch.equal(trained[0].tokens, trained[1].tokens) and torch.equal(trained[0].conds, trained[1].conds)
    edited = [sample(engine_parts, [GenerationRequest("a cat", seed=2, steps=4, strength=0.5, init_image=im)],
                     decode=False)[0].tokens for im in (image, rgb)]
    assert tuple(edited[0].shape) == (H // 16, W // 16) and torch.equal(edited[0], edited[1])


@pytest.mark.parametrize("case", [c for c in CASES if c != "tiff-float"])  # uploads: PNG, JPEG, WebP, GIF
def test_the_cli_and_the_service_read_images_by_the_same_rule(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    data, rgb = CASES[case]()
    path = tmp_path / "image"
    path.write_bytes(data)
    via_cli = read_image(str(path))
    via_service = Image.open(io.BytesIO(normalize_upload(data, max_pixels=10**6, min_side=8).png_bytes))
    assert np.array_equal(np.asarray(via_cli), np.asarray(rgb))
    assert np.array_equal(np.asarray(via_service.convert("RGB")), np.asarray(rgb))


def _rgba_mask() -> tuple[Image.Image, Image.Image]:
    """A mask drawn in white on a transparent layer (what a paint tool exports), and its L equivalent."""
    region = np.zeros((H, W), np.uint8)
    region[HOLE] = 255
    rgba = np.dstack([np.full((H, W, 3), 255, np.uint8), region])  # white everywhere; alpha says where
    return Image.fromarray(rgba, "RGBA"), Image.fromarray(region, "L")


def test_an_rgba_mask_repaints_only_where_it_is_opaque(engine_parts: AmusedParts) -> None:
    rgba, grey = _rgba_mask()
    assert np.array_equal(np.asarray(to_mask(rgba)), np.asarray(grey))
    assert np.array_equal(np.asarray(load_mask(_file(rgba, "PNG"), max_pixels=10**6)), np.asarray(grey))  # service
    init = Image.fromarray(COLOUR)
    a, b = (sample(engine_parts, [GenerationRequest("a cat", seed=4, steps=4, init_image=init, mask=m)],
                   decode=False)[0].tokens for m in (rgba, grey))
    assert torch.equal(a, b)


def test_a_non_square_init_image_keeps_its_size_as_in_diffusers(engine_parts: AmusedParts) -> None:
    init = Image.fromarray(RNG.integers(0, 256, (200, 330, 3), dtype=np.uint8))  # 330x200 -> 320x192: 12x20
    ref = amused_pipeline(AmusedImg2ImgPipeline, engine_parts)(
        prompt="a cat", image=init, strength=0.5, generator=torch.Generator().manual_seed(3),
        output_type="latent").images[0]
    (ours,) = sample(engine_parts, [GenerationRequest("a cat", seed=3, init_image=init, strength=0.5)])
    assert tuple(ref.shape) == (12, 20) and torch.equal(ours.tokens, ref)
    assert ours.image is not None and ours.image.size == (320, 192)
    # Inpainting: diffusers' mask processor floors the token grid itself to multiples of 16 (a 12x20 grid fails
    # there), so the comparison runs at 520x260 -> 512x256: 16x32 tokens.
    init = Image.fromarray(RNG.integers(0, 256, (260, 520, 3), dtype=np.uint8))
    mask = Image.new("L", init.size)
    mask.paste(255, (40, 40, 300, 200))
    ref = amused_pipeline(AmusedInpaintPipeline, engine_parts)(
        prompt="a cat", image=init, mask_image=mask, generator=torch.Generator().manual_seed(4),
        output_type="latent").images[0]
    (ours,) = sample(engine_parts, [GenerationRequest("a cat", seed=4, init_image=init, mask=mask)], decode=False)
    assert tuple(ref.shape) == (16, 32) and torch.equal(ours.tokens, ref)


def test_inpainting_runs_at_a_size_diffusers_mask_processor_cannot(engine_parts: AmusedParts) -> None:
    init = Image.fromarray(RNG.integers(0, 256, (192, 320, 3), dtype=np.uint8))  # 12x20 tokens
    mask = Image.new("L", init.size)
    mask.paste(255, (64, 48, 192, 144))  # token columns 4..11, rows 3..8
    (ours,) = sample(engine_parts, [GenerationRequest("a cat", seed=4, init_image=init, mask=mask)], decode=False)
    original = encode_tokens(engine_parts, pil_to_tensor(init)[None])[0]  # (12, 20)
    keep = torch.ones(12, 20, dtype=torch.bool)
    keep[3:9, 4:12] = False
    assert tuple(ours.tokens.shape) == (12, 20)
    assert torch.equal(ours.tokens[keep], original[keep]) and not torch.equal(ours.tokens[~keep], original[~keep])


def test_an_init_image_beyond_the_largest_side_is_scaled_down_keeping_its_aspect() -> None:
    side = limits.MAX_IMAGE_SIDE
    big = GenerationRequest("a cat", init_image=Image.new("RGB", (4 * side, 2 * side)))  # (width, height)
    assert output_size(big, None, None, scale=16, default=256) == (side // 2, side)  # (height, width)
    assert output_size(big, 256, 256, scale=16, default=256) == (256, 256)  # an explicit size wins, as in diffusers
