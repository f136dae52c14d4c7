"""Upload checking and normalisation: decode by content, bound bytes and pixels, re-encode as a clean PNG.

The file name and Content-Type are never consulted. Only PNG, JPEG, WEBP and GIF are opened; the pixel count
is checked from the header before any pixel is decoded; truncated files are rejected; EXIF orientation is
applied; every mode is turned into 8-bit RGB by the engine's one image rule (trainer/contracts/images.py: 16-bit
and float scaled, transparency composited on white), and masks into 8-bit grey by the same rule (transparent =
keep); animations keep their first frame; and the result is written as a new PNG with no metadata (EXIF, ICC, text
chunks) at all.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from storage.blobs import sha256_hex
from trainer.contracts.images import ALLOWED_FORMATS, NOT_AN_ALLOWED_FORMAT, ImageModeError, to_mask, to_rgb, too_small

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# Pillow warns past this many header pixels and refuses past twice it; `_decode` turns the warning into a
# refusal. Above the largest `max_image_pixels` a deployment should need, far below Pillow's 89 M default.
Image.MAX_IMAGE_PIXELS = 64_000_000


class ImageRejected(ValueError):
    """The upload is not an acceptable image; `reason` is safe to show to the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NormalizedImage:
    png_bytes: bytes
    width: int
    height: int
    sha256: str


def _reduce_or_refuse(opened: Image.Image, budget: int) -> None:
    """Make `opened` decode to at most `budget` pixels, or refuse it, before one pixel is decoded.

    A small file can claim a huge image (a 150 KB single-colour PNG of 6000x6000 decodes to 108 MB, and the
    conversions after it several times that). JPEG can decode at 1/2, 1/4 or 1/8 scale (`draft`), which costs
    nothing in quality for a model that trains at 256 or 512 px; other formats cannot, so they are refused.
    """
    width, height = opened.size
    if opened.format == "JPEG":
        for scale in (2, 4, 8):
            if (width // scale) * (height // scale) <= budget:
                opened.draft("RGB", (width // scale, height // scale))
                if opened.size[0] * opened.size[1] <= budget:
                    return
                break
    raise ImageRejected(
        f"the image is {width}x{height}; at most {budget} pixels are decoded (the model trains at 256 or 512 px): "
        "scale it down and upload it again"
    )


def _decode(data: bytes, *, max_bytes: int, max_pixels: int, max_decode_pixels: int | None = None) -> Image.Image:
    """Open, bound and fully decode the first frame, exif-transposed. Raises ImageRejected.

    `max_pixels` bounds the header; `max_decode_pixels` what is actually decoded (`_reduce_or_refuse`)."""
    if not data:
        raise ImageRejected("the file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"the file is larger than {max_bytes} bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except UnidentifiedImageError as exc:
            raise ImageRejected(NOT_AN_ALLOWED_FORMAT) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("the image has more pixels than can be decoded safely") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected("the image file is corrupt") from exc
        width, height = opened.size
        if width <= 0 or height <= 0:
            raise ImageRejected("the image has no pixels")
        if width * height > max_pixels:
            raise ImageRejected(f"the image has more than {max_pixels} pixels ({width}x{height})")
        if max_decode_pixels is not None and width * height > max_decode_pixels:
            _reduce_or_refuse(opened, max_decode_pixels)
        try:
            if getattr(opened, "n_frames", 1) > 1:
                opened.seek(0)
            opened.load()
            im = ImageOps.exif_transpose(opened)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("the image has more pixels than can be decoded safely") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejected("the image file is truncated or corrupt") from exc
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    try:
        return to_rgb(im)
    except ImageModeError as exc:
        raise ImageRejected(f"unsupported image: {exc}") from exc


def _clean_png(im: Image.Image) -> bytes:
    # A fresh image from raw pixels carries no info dict: no EXIF, ICC profile, text chunks or dpi.
    clean = Image.frombytes(im.mode, im.size, im.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def normalize_upload(
    data: bytes, *, max_pixels: int, min_side: int, max_bytes: int = DEFAULT_MAX_BYTES,
    max_decode_pixels: int | None = None,
) -> NormalizedImage:
    """Check an uploaded image by content and return it as an upright RGB PNG without metadata."""
    im = _decode(data, max_bytes=max_bytes, max_pixels=max_pixels, max_decode_pixels=max_decode_pixels)
    rgb = _to_rgb(im)
    width, height = rgb.size
    if (problem := too_small(width, height, min_side)) is not None:
        raise ImageRejected(problem)
    png = _clean_png(rgb)
    return NormalizedImage(png_bytes=png, width=width, height=height, sha256=sha256_hex(png))


def load_mask(
    data: bytes,
    *,
    max_pixels: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    size: tuple[int, int] | None = None,
    threshold: int | None = 128,
    max_decode_pixels: int | None = None,
) -> Image.Image:
    """An inpainting mask as an "L" image (white = repaint). Transparent pixels count as black (keep).

    `size` resizes (nearest) to the init image's size; `threshold` binarises to 0/255 (None: grey levels).
    """
    im = _decode(data, max_bytes=max_bytes, max_pixels=max_pixels, max_decode_pixels=max_decode_pixels)
    try:
        mask = to_mask(im)
    except ImageModeError as exc:
        raise ImageRejected(f"unsupported mask: {exc}") from exc
    if size is not None and mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    if threshold is not None:
        mask = mask.point(lambda v: 255 if v >= threshold else 0)
    return Image.frombytes("L", mask.size, mask.tobytes())
