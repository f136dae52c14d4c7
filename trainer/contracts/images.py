"""The one rule that turns any Pillow image into what the models take: upright 8-bit RGB, or an 8-bit "L" mask.

Training images, img2img init images and inpainting masks go through here in the engine (trainer/encode.py,
trainer/sampler.py), in the CLI (trainer/cli.py) and in the service's upload checks (storage/images.py), so one
file gives one set of pixels wherever it enters. Pillow and numpy only (no torch): the service imports it.

Policy, mode by mode:
- EXIF orientation is applied first (a phone photo is trained and edited upright).
- 16-bit grey (`I;16`, `I;16L`, `I;16B`, `I;16N`) and 32-bit integer grey (`I`, what Pillow makes of many 16-bit
  PNGs) hold 0..65535: each value v becomes round(v / 257), so a 16-bit copy of an 8-bit image (v = 257·x, the
  usual widening) comes back exactly; values outside 0..65535 are clipped. (Pillow's own `convert("L")` clips at
  255, which turns a real 16-bit image almost pure white.)
- Float grey (`F`, e.g. a float TIFF) holds 0.0..1.0: v becomes round(255·v), clipped; NaN is 0. (Pillow's
  `convert("L")` reads 0..255, which turns a 0..1 image black.)
- Transparency (`RGBA`, `LA`, `La`, `RGBa`, `PA`, or a palette / grey / RGB image with a transparent colour) is
  composited over `ALPHA_BACKGROUND`, white: the colour stored under a transparent pixel is never seen.
- Everything else (`1`, `L`, `P`, `RGB`, `CMYK`, `YCbCr`, ...) is Pillow's `convert("RGB")`; a mode Pillow cannot
  convert is refused with `ImageModeError` naming it.
Masks (`to_mask`): the same, except that transparency is composited over black: a transparent pixel is "keep"
(white = repaint), so an RGBA mask's alpha is honoured; the result is its luminance.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .limits import MIN_IMAGE_SIDE

__all__ = ["ALPHA_BACKGROUND", "MASK_ALPHA_BACKGROUND", "ImageModeError", "to_mask", "to_rgb", "too_small",
           "upright_size"]

ALPHA_BACKGROUND = (255, 255, 255)  # what shows through a transparent pixel of an image
MASK_ALPHA_BACKGROUND = (0, 0, 0)  # ... and of a mask: black, "keep"
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_INT_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # the EXIF orientations that rotate by 90 or 270 degrees


class ImageModeError(ValueError):
    """An image the models cannot take (no pixels, or a mode Pillow cannot turn into RGB); names the mode."""


# The file formats an image may come in: the service opens uploads with only these (storage/images.py) and the
# CLI reads its files the same way (trainer/cli_args.py), so a file one refuses the other refuses too.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
NOT_AN_ALLOWED_FORMAT = "not a PNG, JPEG, WebP or GIF image"


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer grey (0..65535) and float grey (0..1) -> "L" (see the module's policy)."""
    if image.mode == "F":
        a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0) * 255.0
    else:
        a = np.asarray(image).astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _upright(image: Image.Image) -> Image.Image:
    if image.width <= 0 or image.height <= 0:
        raise ImageModeError(f"the image has no pixels ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image) or image
    if image.mode in _INT_GREY_MODES or image.mode == "F":
        image = _grey_to_8bit(image)
    return image


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB with any transparency composited over `background`."""
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    try:
        if not has_alpha:
            return image.convert("RGB")
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")  # no direct La -> RGBA
    except (ValueError, OSError) as exc:
        raise ImageModeError(f"images of mode {image.mode} cannot be used: {exc}") from exc
    under = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(under, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> upright 8-bit RGB under the module's policy (a new image; `image` is not changed)."""
    return _flatten(_upright(image), ALPHA_BACKGROUND)


def to_mask(image: Image.Image) -> Image.Image:
    """Any Pillow image as an inpainting mask -> upright 8-bit "L" (white = repaint; transparent = keep)."""
    return _flatten(_upright(image), MASK_ALPHA_BACKGROUND).convert("L")


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) the image has once EXIF-upright (as `to_rgb` returns it), read without converting it."""
    w, h = image.size
    return (h, w) if image.getexif().get(_EXIF_ORIENTATION) in _SWAPS_SIDES else (w, h)


def too_small(width: int, height: int, min_side: int = MIN_IMAGE_SIDE) -> str | None:
    """Why an upright `width` x `height` image is refused for training or as an init image, or None: the size rule
    of the service's uploads (storage/images.py) and of `styledrop train/generate`."""
    if min(width, height) < min_side:
        return f"the image is too small ({width}x{height}); the shorter side must be ≥ {min_side}"
    return None
