"""Small images to upload or train on (Pillow)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def png_bytes(size: tuple[int, int] = (96, 96), color: tuple[int, int, int] = (200, 30, 30),
              mode: str = "RGB") -> bytes:
    """A plain PNG of one colour (mode "L": white, e.g. a mask that repaints everything)."""
    buf = io.BytesIO()
    Image.new(mode, size, 255 if mode == "L" else color).save(buf, format="PNG")
    return buf.getvalue()


def style_png(color: tuple[int, int, int] = (200, 40, 40), size: int = 256) -> bytes:
    """A striped PNG to train on: its VQ tokens differ clearly from plain colours."""
    image = Image.new("RGB", (size, size), color)
    draw = ImageDraw.Draw(image)
    for x in range(0, size, 32):
        draw.rectangle([x, 0, x + 12, size], fill=(color[2], color[0], color[1]))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_bomb(fmt: str, side: int = 6000) -> bytes:
    """A small file (one colour compresses well) that decodes to `side` x `side` pixels: PNG or JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()
