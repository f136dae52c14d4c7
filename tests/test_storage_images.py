"""Upload checking: every accepted and rejected case, with images made here by Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from storage.images import ImageRejected, NormalizedImage, load_mask, normalize_upload

LIMITS = {"max_pixels": 40_000_000, "min_side": 64, "max_bytes": 20 * 1024 * 1024}


def _encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _ok(data: bytes, **kw: int) -> tuple[NormalizedImage, Image.Image]:
    result = normalize_upload(data, **{**LIMITS, **kw})
    out = Image.open(io.BytesIO(result.png_bytes))
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (result.width, result.height)
    return result, out


def _rejected(data: bytes, match: str, **kw: int) -> None:
    with pytest.raises(ImageRejected, match=match) as info:
        normalize_upload(data, **{**LIMITS, **kw})
    assert info.value.reason


def _png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height (a decompression-bomb probe)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_plain_rgb_png_round_trips() -> None:
    im = Image.new("RGB", (128, 96), (10, 200, 30))
    result, out = _ok(_encode(im, "PNG"))
    assert (result.width, result.height) == (128, 96)
    assert out.getpixel((5, 5)) == (10, 200, 30)
    assert len(result.sha256) == 64


def test_text_file_named_png_is_rejected() -> None:
    _rejected(b"hello, I am definitely a PNG\n" * 10, "not a PNG")


def test_other_formats_are_rejected_by_content() -> None:
    _rejected(_encode(Image.new("RGB", (100, 100)), "BMP"), "not a PNG")
    _rejected(_encode(Image.new("RGB", (100, 100)), "TIFF"), "not a PNG")


def test_zero_bytes_rejected() -> None:
    _rejected(b"", "empty")


def test_too_many_bytes_rejected() -> None:
    _rejected(_encode(Image.new("RGB", (100, 100)), "PNG"), "larger than", max_bytes=100)


def test_truncated_png_rejected() -> None:
    im = Image.effect_noise((256, 256), 64).convert("RGB")
    data = _encode(im, "PNG")
    _rejected(data[: len(data) // 2], "truncated|corrupt")


def test_truncated_jpeg_rejected() -> None:
    data = _encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    _rejected(data[: len(data) // 2], "truncated|corrupt")


@pytest.mark.parametrize("side", [20000, 10000])
def test_decompression_bomb_claims_rejected(side: int) -> None:
    data = _png_claiming(side, side)
    assert len(data) < 200
    _rejected(data, "more (than|pixels)")


def test_pixel_limit_is_the_callers() -> None:
    data = _encode(Image.new("RGB", (300, 300)), "PNG")
    _rejected(data, "more than", max_pixels=300 * 300 - 1)
    _ok(data, max_pixels=300 * 300)


def test_too_small_rejected() -> None:
    _rejected(_encode(Image.new("RGB", (63, 500)), "PNG"), "too small")
    _ok(_encode(Image.new("RGB", (64, 500)), "PNG"))


def test_exif_rotated_comes_out_upright() -> None:
    # Stored landscape, red on the left; orientation 6 = "rotate 90° clockwise to display".
    im = Image.new("RGB", (200, 100), (0, 0, 255))
    ImageDraw.Draw(im).rectangle((0, 0, 49, 99), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    result, out = _ok(_encode(im, "JPEG", exif=exif, quality=95))
    assert (result.width, result.height) == (100, 200)
    r, _g, b = out.getpixel((50, 10))  # red ends up on top
    assert r > 200 and b < 60
    assert "exif" not in out.info


def test_cmyk_jpeg() -> None:
    im = Image.new("CMYK", (100, 100), (0, 255, 255, 0))  # pure red in CMYK
    _, out = _ok(_encode(im, "JPEG", quality=95))
    r, g, b = out.getpixel((50, 50))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    im = Image.new("I;16", (100, 100), 32768)
    data = _encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    _, out = _ok(data)
    r, g, b = out.getpixel((10, 10))
    assert r == g == b and 120 <= r <= 135


def test_palette_with_transparency_composited_on_white() -> None:
    im = Image.new("P", (100, 100), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(im).rectangle((50, 0, 99, 99), fill=1)
    data = _encode(im, "PNG", transparency=0)
    _, out = _ok(data)
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((80, 10)) == (255, 0, 0)


def test_rgba_and_la_composited_on_white() -> None:
    _, out = _ok(_encode(Image.new("RGBA", (100, 100), (0, 0, 0, 0)), "PNG"))
    assert out.getpixel((1, 1)) == (255, 255, 255)
    _, out = _ok(_encode(Image.new("LA", (100, 100), (0, 0)), "PNG"))
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_grayscale() -> None:
    _, out = _ok(_encode(Image.new("L", (100, 100), 77), "PNG"))
    assert out.getpixel((3, 3)) == (77, 77, 77)


def test_webp() -> None:
    _, out = _ok(_encode(Image.new("RGB", (100, 80), (0, 0, 255)), "WEBP", lossless=True))
    assert out.size == (100, 80) and out.getpixel((3, 3)) == (0, 0, 255)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (100, 100), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    _, out = _ok(data)
    r, g, b = out.getpixel((50, 50))
    assert r > 200 and g < 50 and b < 50


def test_metadata_is_stripped() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<script>alert(1)</script>")
    exif = Image.Exif()
    exif[0x010E] = "secret description"
    srgb = b"fake-icc-profile" * 8
    png = _encode(
        Image.new("RGB", (100, 100), 5), "PNG", pnginfo=info, exif=exif, icc_profile=srgb, dpi=(300, 300)
    )
    jpg = _encode(Image.new("RGB", (100, 100), 5), "JPEG", exif=exif, icc_profile=srgb, comment=b"hidden")
    for data in (png, jpg):
        result, out = _ok(data)
        assert set(out.info) <= {"dpi", "gamma"} and "dpi" not in out.info
        assert b"secret" not in result.png_bytes and b"script" not in result.png_bytes
        assert b"fake-icc" not in result.png_bytes and b"hidden" not in result.png_bytes
        assert not out.getexif()


def test_same_pixels_same_hash() -> None:
    im = Image.new("RGB", (100, 100), (1, 2, 3))
    a = normalize_upload(_encode(im, "PNG"), **LIMITS)
    b = normalize_upload(_encode(im, "PNG", compress_level=1), **LIMITS)
    assert a.sha256 == b.sha256


def test_load_mask() -> None:
    im = Image.new("RGB", (100, 100), (0, 0, 0))
    ImageDraw.Draw(im).rectangle((0, 0, 49, 99), fill=(255, 255, 255))
    mask = load_mask(_encode(im, "PNG"), max_pixels=LIMITS["max_pixels"], size=(50, 50))
    assert mask.mode == "L" and mask.size == (50, 50)
    assert mask.getpixel((5, 5)) == 255 and mask.getpixel((45, 5)) == 0
    with pytest.raises(ImageRejected):
        load_mask(b"not an image", max_pixels=LIMITS["max_pixels"])


def test_bomb_warning_is_an_error_even_with_a_generous_limit() -> None:
    _rejected(_png_claiming(10000, 10000), "decoded safely", max_pixels=10**10)
